"""SCRAM and PLAIN on the server side, checked against the RFC test vectors."""

import base64
import hashlib

from twisted.trial.unittest import SynchronousTestCase

from bridge.core import sasl
from tests.unit.helpers import result_of


SECRET = b"k" * 32


def decoy(username):
    """The made-up credentials of an unknown name on host 'localhost'."""
    return sasl.Decoys(SECRET).credentials("localhost", username)


def record(hash_name, password, salt_b64, iterations):
    stored, server = sasl.scram_keys(hash_name, password, base64.b64decode(salt_b64), iterations)
    return {"salt": salt_b64, "iterations": iterations, "stored_key": base64.b64encode(stored).decode(),
            "server_key": base64.b64encode(server).decode()}


class VectorTests(SynchronousTestCase):
    def run_vector(self, mechanism, hash_name, user, client_first, salt, server_nonce_suffix, client_final,
                   server_final):
        credentials = {mechanism: record(hash_name, "pencil", salt, 4096)}
        exchange = sasl.ScramExchange(mechanism, lambda name: credentials if name == user else None,
                                      decoy=decoy)
        exchange.server_nonce = lambda: server_nonce_suffix
        first, done = result_of(exchange.receive(client_first.encode()))
        self.assertFalse(done)
        self.assertIn(f"s={salt},i=4096", first.decode())
        final, done = result_of(exchange.receive(client_final.encode()))
        self.assertTrue(done)
        self.assertEqual(final.decode(), server_final)

    def test_rfc5802_sha1(self):
        """RFC 5802 section 5: the SCRAM-SHA-1 example exchange."""
        self.run_vector(
            "SCRAM-SHA-1", "sha1", "user", "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL", "QSXCR+Q6sek8bf92",
            "3rfcNHYJY1ZVvWVs7j",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")

    def test_rfc7677_sha256(self):
        """RFC 7677 section 3: the SCRAM-SHA-256 example exchange."""
        self.run_vector(
            "SCRAM-SHA-256", "sha256", "user", "n,,n=user,r=rOprNGfwEbeRWgbNEkqO", "W22ZaJ0SNY7soEsUEjb6gQ==",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


class FailureTests(SynchronousTestCase):
    def setUp(self):
        self.credentials = sasl.make_credentials("right", iterations=64)

    def lookup(self, name):
        return self.credentials if name == "alice" else None

    def check(self, name, password):
        return sasl.password_matches(self.lookup(name), password, decoy(name))

    def test_wrong_proof(self):
        """A proof from the wrong password is not-authorized."""
        exchange = sasl.ScramExchange("SCRAM-SHA-256", self.lookup, decoy=decoy)
        first, _ = result_of(exchange.receive(b"n,,n=alice,r=abc"))
        nonce = first.decode().split(",")[0][2:]
        bogus = base64.b64encode(b"\0" * 32).decode()
        failure = exchange.receive(f"c=biws,r={nonce},p={bogus}".encode())
        self.assertEqual(self.failureResultOf(failure, sasl.SASLFailure).value.condition, "not-authorized")

    def test_unknown_user_looks_like_wrong_password(self):
        """An unknown user gets a challenge too, and fails only at the end."""
        exchange = sasl.ScramExchange("SCRAM-SHA-1", self.lookup, decoy=decoy)
        first, done = result_of(exchange.receive(b"n,,n=mallory,r=abc"))
        self.assertFalse(done)
        nonce = first.decode().split(",")[0][2:]
        failure = exchange.receive(f"c=biws,r={nonce},p={base64.b64encode(bytes(20)).decode()}".encode())
        self.assertEqual(self.failureResultOf(failure, sasl.SASLFailure).value.condition, "not-authorized")

    def test_nonce_must_match(self):
        """A client-final with another nonce is refused."""
        exchange = sasl.ScramExchange("SCRAM-SHA-256", self.lookup, decoy=decoy)
        result_of(exchange.receive(b"n,,n=alice,r=abc"))
        failure = exchange.receive(b"c=biws,r=abcdef,p=AAAA")
        self.failureResultOf(failure, sasl.SASLFailure)

    def test_downgrade_detected(self):
        """'y' (client could bind) while the server offered -PLUS is a downgrade."""
        exchange = sasl.ScramExchange("SCRAM-SHA-256", self.lookup, channel_binding=b"x", plus_offered=True,
                                          decoy=decoy)
        self.failureResultOf(exchange.receive(b"y,,n=alice,r=abc"), sasl.SASLFailure)

    def test_malformed(self):
        """Garbage is malformed-request, not an exception."""
        exchange = sasl.ScramExchange("SCRAM-SHA-256", self.lookup, decoy=decoy)
        failure = self.failureResultOf(exchange.receive(b"garbage"), sasl.SASLFailure)
        self.assertEqual(failure.value.condition, "malformed-request")

    def test_plain(self):
        """PLAIN is checked against the SCRAM record; the password itself is not stored."""
        self.assertNotIn("right", repr(self.credentials))
        ok = sasl.PlainExchange(self.check)
        self.assertEqual(result_of(ok.receive(b"\0alice\0right")), (b"", True))
        bad = sasl.PlainExchange(self.check)
        self.failureResultOf(bad.receive(b"\0alice\0wrong"), sasl.SASLFailure)


class UnknownUserTests(SynchronousTestCase):
    """An unknown name must look like an existing one (no user enumeration)."""

    def setUp(self):
        self.credentials = sasl.make_credentials("right")

    def lookup(self, name):
        return self.credentials if name == "alice" else None

    def check(self, name, password):
        return sasl.password_matches(self.lookup(name), password, decoy(name))

    def server_first(self, name, mechanism="SCRAM-SHA-256", decoys=None):
        decoys = decoys or sasl.Decoys(SECRET)
        exchange = sasl.ScramExchange(mechanism, self.lookup,
                                      decoy=lambda username: decoys.credentials("localhost", username))
        first, _ = result_of(exchange.receive(f"n,,n={name},r=abc".encode()))
        return dict(part.split("=", 1) for part in first.decode().split(","))

    def test_same_salt_at_every_try(self):
        """Two SCRAM tries for one unknown name get the same salt and count, also after a restart
        (the same secret); another name, mechanism or secret gets another salt."""
        first = self.server_first("mallory")
        self.assertEqual((self.server_first("mallory")["s"], self.server_first("mallory")["i"]),
                         (first["s"], first["i"]))
        self.assertNotEqual(self.server_first("mallory", "SCRAM-SHA-1")["s"], first["s"])
        self.assertNotEqual(self.server_first("trudy")["s"], first["s"])
        self.assertNotEqual(self.server_first("mallory", decoys=sasl.Decoys(b"j" * 32))["s"], first["s"])

    def test_made_up_record_looks_real(self):
        """The salt and iteration count of an unknown name have the shape of an account's."""
        real, made_up = self.server_first("alice"), self.server_first("mallory")
        self.assertEqual(made_up["i"], real["i"])
        self.assertEqual(len(base64.b64decode(made_up["s"])), len(base64.b64decode(real["s"])))
        for mechanism, hash_name in sasl.SCRAM_HASHES.items():
            record = decoy("mallory")[mechanism]
            self.assertEqual(set(record), set(self.credentials[mechanism]))
            self.assertEqual(len(base64.b64decode(record["stored_key"])), hashlib.new(hash_name).digest_size)

    def test_plain_derives_the_key_for_an_unknown_user(self):
        """PLAIN for an unknown name runs the same key derivation (PBKDF2 with the made-up salt and
        count) as for a wrong password, then fails."""
        derivations = []
        real_pbkdf2 = hashlib.pbkdf2_hmac

        def counting(hash_name, password, salt, iterations):
            derivations.append((hash_name, salt, iterations))
            return real_pbkdf2(hash_name, password, salt, iterations)

        self.patch(hashlib, "pbkdf2_hmac", counting)
        exchange = sasl.PlainExchange(self.check)
        failure = self.failureResultOf(exchange.receive(b"\0mallory\0guess"), sasl.SASLFailure)
        self.assertEqual(failure.value.condition, "not-authorized")
        record = decoy("mallory")["SCRAM-SHA-256"]
        self.assertEqual(derivations, [("sha256", base64.b64decode(record["salt"]), record["iterations"])])


class ClientTests(SynchronousTestCase):
    """The client side, against the RFC examples and against the server's exchange."""

    def run_vector(self, mechanism, nonce, server_first, client_final, server_final):
        client = sasl.ScramClient(mechanism, "user", "pencil", nonce=nonce)
        self.assertEqual(client.first(), f"n,,n=user,r={nonce}".encode())
        self.assertEqual(client.answer(server_first.encode()).decode(), client_final)
        client.check(server_final.encode())
        self.assertRaises(sasl.SASLFailure, client.check, b"v=" + base64.b64encode(bytes(32)))

    def test_rfc5802_sha1(self):
        """RFC 5802 section 5: the client's proof, and the server's signature accepted, a wrong one not."""
        self.run_vector(
            "SCRAM-SHA-1", "fyko+d2lbbFgONRv9qkxdawL",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")

    def test_rfc7677_sha256(self):
        """RFC 7677 section 3: the same from the client's side for SCRAM-SHA-256."""
        self.run_vector(
            "SCRAM-SHA-256", "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")

    def exchange(self, client, server):
        challenge, _ = result_of(server.receive(client.first()))
        return server.receive(client.answer(challenge))

    def test_channel_binding_with_the_server(self):
        """-PLUS: a client bound to the server's channel data logs in, one bound to other data is refused."""
        credentials = sasl.make_credentials("right", iterations=64)

        def server():
            return sasl.ScramExchange("SCRAM-SHA-256-PLUS", lambda name: credentials, channel_binding=b"c" * 32,
                                      plus_offered=True, decoy=decoy)

        bound = sasl.ScramClient("SCRAM-SHA-256-PLUS", "alice", "right", channel_binding=b"c" * 32)
        final, done = result_of(self.exchange(bound, server()))
        self.assertTrue(done)
        bound.check(final)
        other = sasl.ScramClient("SCRAM-SHA-256-PLUS", "alice", "right", channel_binding=b"m" * 32)
        self.failureResultOf(self.exchange(other, server()), sasl.SASLFailure)

    def test_server_first_with_another_nonce(self):
        """A server-first-message that does not extend the client's nonce is refused before any proof."""
        client = sasl.ScramClient("SCRAM-SHA-1", "alice", "right", nonce="abc")
        self.assertRaises(sasl.SASLFailure, client.answer, b"r=xyz123,s=QSXCR+Q6sek8bf92,i=4096")

    def test_names_are_escaped(self):
        """',' and '=' in a username go as =2C and =3D, and the server reads the name back."""
        client = sasl.ScramClient("SCRAM-SHA-1", "a,b=c", "right", nonce="abc")
        self.assertEqual(client.first(), b"n,,n=a=2Cb=3Dc,r=abc")
        seen = []
        result_of(sasl.ScramExchange("SCRAM-SHA-1", lambda name: seen.append(name), decoy=decoy).receive(client.first()))
        self.assertEqual(seen, ["a,b=c"])

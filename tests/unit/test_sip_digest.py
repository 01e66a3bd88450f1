"""Tests for bridge.gateways.sip.digest: RFC 7616 values, nonces on a fake clock, replay and staleness."""

import hashlib

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.gateways.sip.digest import (
    INVALID, OK, REPLAYED, STALE, DigestAuthenticator, DigestError, ha1,
    parse_authorization, response_value,
)

REALM = "localhost"
SECRET = b"server secret for tests"


def client_authorization(challenge, user, password, method, uri, nc=1, cnonce="0a4f113b",
                         response=None):
    """What a client computes from a challenge, written independently of the module under test."""
    params = {}
    for part in challenge[len("Digest "):].split(", "):
        name, _, value = part.partition("=")
        params[name] = value.strip('"')
    algorithm = params["algorithm"]
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]

    def hexdigest(text):
        return h(text.encode()).hexdigest()

    nc_text = f"{nc:08x}"
    a1 = hexdigest(f"{user}:{params['realm']}:{password}")
    a2 = hexdigest(f"{method}:{uri}")
    digest = response or hexdigest(f"{a1}:{params['nonce']}:{nc_text}:{cnonce}:auth:{a2}")
    return (f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
            f'uri="{uri}", response="{digest}", algorithm={algorithm}, cnonce="{cnonce}", '
            f'qop=auth, nc={nc_text}')


class RFC7616ExampleTests(SynchronousTestCase):
    """The example of RFC 7616 section 3.9.1 (user Mufasa, password "Circle of Life")."""

    NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    REALM = "http-auth@example.org"

    def compute(self, algorithm):
        stored = ha1(algorithm, "Mufasa", self.REALM, "Circle of Life")
        return response_value(algorithm, stored, "GET", "/dir/index.html", self.NONCE,
                              "00000001", self.CNONCE, "auth")

    def test_md5_response(self):
        """The MD5 response matches the value published in RFC 7616."""
        self.assertEqual(self.compute("MD5"), "8ca523f5e9506fed4657c9700eebdbec")

    def test_sha256_response(self):
        """The SHA-256 response matches the value published in RFC 7616."""
        self.assertEqual(self.compute("SHA-256"),
                         "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")

    def test_parse_example_header(self):
        """The example's Authorization header parses into its parameters, quotes removed."""
        header = (f'Digest username="Mufasa", realm="{self.REALM}", uri="/dir/index.html", '
                  f'algorithm=SHA-256, nonce="{self.NONCE}", nc=00000001, cnonce="{self.CNONCE}", '
                  f'qop=auth, response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
                  f'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
        credentials = parse_authorization(header)
        self.assertEqual((credentials.username, credentials.algorithm, credentials.nc, credentials.qop),
                         ("Mufasa", "SHA-256", "00000001", "auth"))
        self.assertEqual(credentials.opaque, "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")


class ParseTests(SynchronousTestCase):
    def test_malformed_headers(self):
        """Non-Digest schemes, missing parameters, duplicates and garbage raise DigestError."""
        for value in ('Basic dXNlcjpwYXNz',
                      'Digest username="a", realm="r", nonce="n", uri="u"',
                      'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="x"',
                      'Digest username="a, realm="r"',
                      'Digest ,,,'):
            self.assertRaises(DigestError, parse_authorization, value)

    def test_escapes_and_default_algorithm(self):
        """Quoted-pair escapes are resolved and the algorithm defaults to MD5."""
        credentials = parse_authorization(
            'digest username="a\\"b", realm="r", nonce="n", uri="sip:x", response="00"')
        self.assertEqual((credentials.username, credentials.algorithm, credentials.qop), ('a"b', "MD5", None))


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.auth = DigestAuthenticator(REALM, SECRET, self.clock, nonce_lifetime_seconds=300)

    def answer(self, algorithm="SHA-256", password="wonderland", stored_password="wonderland",
               method="REGISTER", uri="sip:localhost", request_uri=None, **kwargs):
        challenge = [c for c in self.auth.challenges() if f"algorithm={algorithm}," in c][0]
        header = client_authorization(challenge, "alice", password, method, uri, **kwargs)
        credentials = parse_authorization(header)
        stored = ha1(credentials.algorithm, "alice", REALM, stored_password)
        return credentials, self.auth.check(credentials, method, stored, request_uri=request_uri)

    def test_challenges(self):
        """The challenges offer SHA-256 then MD5 with qop=auth and the same fresh nonce; stale=true on request."""
        values = self.auth.challenges()
        self.assertEqual(len(values), 2)
        self.assertIn("algorithm=SHA-256", values[0])
        self.assertIn("algorithm=MD5", values[1])
        self.assertIn('qop="auth"', values[0])
        self.assertNotIn("stale", values[0])
        self.assertIn("stale=true", self.auth.challenges(stale=True)[1])

    def test_correct_password_both_algorithms(self):
        """A client answer computed with the right password is accepted for SHA-256 and MD5."""
        for algorithm in ("SHA-256", "MD5"):
            _, verdict = self.answer(algorithm)
            self.assertEqual(verdict.outcome, OK, algorithm)

    def test_wrong_password(self):
        """An answer computed with another password is invalid."""
        _, verdict = self.answer(password="guess")
        self.assertEqual((verdict.outcome, verdict.reason), (INVALID, "wrong response"))

    def test_replay_refused(self):
        """The same nonce and nc a second time is a replay; the next nc is accepted."""
        credentials, verdict = self.answer()
        self.assertTrue(verdict.ok)
        stored = ha1("SHA-256", "alice", REALM, "wonderland")
        self.assertEqual(self.auth.check(credentials, "REGISTER", stored).outcome, REPLAYED)
        nonce = credentials.nonce
        challenge = f'Digest realm="{REALM}", nonce="{nonce}", algorithm=SHA-256, qop="auth"'
        again = parse_authorization(client_authorization(challenge, "alice", "wonderland", "REGISTER",
                                                         "sip:localhost", nc=2))
        self.assertEqual(self.auth.check(again, "REGISTER", stored).outcome, OK)

    def test_expired_nonce_is_stale_only_when_correct(self):
        """After the nonce lifetime a correct answer is STALE and a wrong one INVALID."""
        stored = ha1("MD5", "alice", REALM, "wonderland")
        challenge = self.auth.challenges()[1]
        good = parse_authorization(client_authorization(challenge, "alice", "wonderland", "REGISTER", "sip:localhost"))
        bad = parse_authorization(client_authorization(challenge, "alice", "nope", "REGISTER", "sip:localhost"))
        self.clock.advance(299)
        self.assertEqual(self.auth.nonce_status(good.nonce), OK)
        self.clock.advance(2)
        self.assertEqual(self.auth.check(good, "REGISTER", stored).outcome, STALE)
        self.assertEqual(self.auth.check(bad, "REGISTER", stored).outcome, INVALID)

    def test_forged_or_foreign_nonce(self):
        """A nonce not authenticated by this server's secret and realm is invalid."""
        other = DigestAuthenticator("other.example", SECRET, self.clock)
        self.assertEqual(self.auth.nonce_status(other.make_nonce()), INVALID)
        stranger = DigestAuthenticator(REALM, b"another secret", self.clock)
        self.assertEqual(self.auth.nonce_status(stranger.make_nonce()), INVALID)
        self.assertEqual(self.auth.nonce_status("not base64 at all!"), INVALID)
        self.assertEqual(self.auth.nonce_status("AAAA"), INVALID)

    def test_nonce_carries_time(self):
        """A nonce issued in the future of the checking clock is refused."""
        future = Clock()
        future.advance(self.clock.seconds() + 100)
        nonce = DigestAuthenticator(REALM, SECRET, future).make_nonce()
        self.assertEqual(self.auth.nonce_status(nonce), INVALID)

    def test_method_and_uri_bound(self):
        """The response covers the method, and the uri must match the Request-URI when given."""
        credentials, _ = self.answer(request_uri="sip:localhost")
        stored = ha1("SHA-256", "alice", REALM, "wonderland")
        self.assertEqual(self.auth.check(credentials, "INVITE", stored).outcome, INVALID)
        _, verdict = self.answer(request_uri="sip:elsewhere")
        self.assertEqual(verdict.reason, "uri differs from the Request-URI")

    def test_qop_required(self):
        """An answer without qop (RFC 2069 style) or with qop=auth-int is refused."""
        nonce = self.auth.make_nonce()
        stored = ha1("MD5", "alice", REALM, "wonderland")
        digest = response_value("MD5", stored, "REGISTER", "sip:localhost", nonce)
        legacy = parse_authorization(f'Digest username="alice", realm="{REALM}", nonce="{nonce}", '
                                     f'uri="sip:localhost", response="{digest}"')
        self.assertEqual(self.auth.check(legacy, "REGISTER", stored).reason, "qop=auth required")
        authint = parse_authorization(f'Digest username="alice", realm="{REALM}", nonce="{nonce}", '
                                      f'uri="sip:localhost", response="{digest}", qop=auth-int, '
                                      f'nc=00000001, cnonce="x"')
        self.assertEqual(self.auth.check(authint, "REGISTER", stored).outcome, INVALID)

    def test_wrong_realm_and_algorithm(self):
        """Credentials for another realm or an algorithm not offered are invalid."""
        auth = DigestAuthenticator(REALM, SECRET, self.clock, algorithms=("SHA-256",))
        nonce = auth.make_nonce()
        for realm, algorithm in (("elsewhere", "SHA-256"), (REALM, "MD5")):
            credentials = parse_authorization(
                f'Digest username="alice", realm="{realm}", nonce="{nonce}", uri="sip:localhost", '
                f'response="00", algorithm={algorithm}, qop=auth, nc=00000001, cnonce="c"')
            self.assertEqual(auth.check(credentials, "REGISTER", "00").outcome, INVALID)

    def test_sess_variant(self):
        """MD5-sess is checked from the same stored HA1, keyed per nonce and cnonce."""
        nonce = self.auth.make_nonce()
        stored = ha1("MD5", "alice", REALM, "wonderland")
        session_key = hashlib.md5(f"{stored}:{nonce}:c1".encode()).hexdigest()
        a2 = hashlib.md5(b"REGISTER:sip:localhost").hexdigest()
        digest = hashlib.md5(f"{session_key}:{nonce}:00000001:c1:auth:{a2}".encode()).hexdigest()
        credentials = parse_authorization(
            f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="sip:localhost", '
            f'response="{digest}", algorithm=MD5-sess, qop=auth, nc=00000001, cnonce="c1"')
        self.assertEqual(self.auth.check(credentials, "REGISTER", stored).outcome, OK)

    def test_ha1_per_realm_and_algorithm(self):
        """ha1 differs per realm and algorithm and is H(user:realm:password)."""
        self.assertEqual(ha1("MD5", "u", "r", "p"), hashlib.md5(b"u:r:p").hexdigest())
        self.assertEqual(ha1("SHA-256", "u", "r", "p"), hashlib.sha256(b"u:r:p").hexdigest())
        self.assertNotEqual(ha1("MD5", "u", "r2", "p"), ha1("MD5", "u", "r", "p"))
        self.assertRaises(DigestError, ha1, "SHA-1", "u", "r", "p")

    def test_seen_counts_pruned(self):
        """Nonce counts of expired nonces are forgotten, so memory does not grow without bound."""
        self.answer()
        self.assertEqual(len(self.auth._seen), 1)
        self.clock.advance(700)
        self.answer()
        self.assertEqual(len(self.auth._seen), 1)

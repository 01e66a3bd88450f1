"""SASL mechanisms of the server side, SCRAM (RFC 5802, RFC 7677) and PLAIN, and SCRAM's client side.

Passwords are never stored: an account keeps, per SCRAM hash, the salt, the
iteration count, StoredKey and ServerKey.  SCRAM needs nothing more, and PLAIN
is checked by deriving StoredKey from the offered password with the stored
salt.  The exchanges do no I/O: they take the client's bytes and return the
server's, and ask for the credentials through a callable that may return a
Deferred.  The client side (``ScramClient``) serves the tests and the
benchmark's load generator, so that SCRAM's arithmetic exists once.
"""

import base64
import hashlib
import hmac
import os
import unicodedata

from twisted.internet import defer

from bridge.core.storage import StorageUnavailable

SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}
DEFAULT_ITERATIONS = 4096


class SASLFailure(Exception):
    """Authentication failed; ``condition`` is the RFC 6120 section 6.5 condition."""

    def __init__(self, condition, text=None):
        super().__init__(condition)
        self.condition = condition
        self.text = text


@defer.inlineCallbacks
def _from_storage(ask, *args):
    """The answer of ``ask(*args)`` (stored credentials, a password check); a database that cannot answer now
    fails the exchange with temporary-auth-failure (RFC 6120 section 6.5.9): the client tries again later."""
    try:
        return (yield ask(*args))
    except StorageUnavailable:
        raise SASLFailure("temporary-auth-failure", "the account database cannot be reached")


def saslprep(text):
    """A simplified SASLprep (RFC 4013): NFKC, mapped spaces, prohibited controls."""
    mapped = "".join(" " if unicodedata.category(c) == "Zs" else c for c in text if c not in "\u00ad\u200b\u2060\ufeff")
    normalised = unicodedata.normalize("NFKC", mapped)
    if any(unicodedata.category(c) in ("Cc", "Cs", "Co") for c in normalised):
        raise SASLFailure("malformed-request", "prohibited character")
    return normalised


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _hmac(hash_name, key, message):
    return hmac.new(key, message, hash_name).digest()


def salted_password(hash_name, password, salt, iterations):
    """SaltedPassword := Hi(Normalize(password), salt, i), RFC 5802 section 3."""
    return hashlib.pbkdf2_hmac(hash_name, saslprep(password).encode("utf-8"), salt, iterations)


def derived_keys(hash_name, salted):
    """(ClientKey, StoredKey, ServerKey) of a SaltedPassword, RFC 5802 section 3."""
    client_key = _hmac(hash_name, salted, b"Client Key")
    return client_key, hashlib.new(hash_name, client_key).digest(), _hmac(hash_name, salted, b"Server Key")


def scram_keys(hash_name, password, salt, iterations):
    """(StoredKey, ServerKey) for a password, as RFC 5802 section 3 defines them."""
    _, stored_key, server_key = derived_keys(hash_name, salted_password(hash_name, password, salt, iterations))
    return stored_key, server_key


def _xor(left, right):
    return bytes(a ^ b for a, b in zip(left, right))


def _auth_message(client_first_bare, server_first, client_final_without_proof):
    return f"{client_first_bare},{server_first},{client_final_without_proof}".encode("utf-8")


def _channel_binding(gs2_header, data):
    """The c= attribute: the GS2 header, then the channel's data for -PLUS."""
    return _b64(gs2_header.encode("utf-8") + data)


def make_credentials(password, iterations=DEFAULT_ITERATIONS):
    """The stored form of a password: one salted record per SCRAM mechanism."""
    credentials = {}
    for mechanism, hash_name in SCRAM_HASHES.items():
        salt = os.urandom(16)
        stored_key, server_key = scram_keys(hash_name, password, salt, iterations)
        credentials[mechanism] = {
            "salt": _b64(salt),
            "iterations": iterations,
            "stored_key": _b64(stored_key),
            "server_key": _b64(server_key),
        }
    return credentials


def check_password(credentials, password):
    """True when ``password`` matches the strongest stored SCRAM record (SCRAM-SHA-256, else SCRAM-SHA-1:
    an account imported from a server that kept only that one)."""
    mechanism = next((name for name in SCRAM_HASHES if name in credentials), None)
    if mechanism is None:
        return False
    record = credentials[mechanism]
    stored_key, _ = scram_keys(SCRAM_HASHES[mechanism], password, base64.b64decode(record["salt"]),
                               record["iterations"])
    return hmac.compare_digest(stored_key, base64.b64decode(record["stored_key"]))


def password_matches(credentials, password, decoy_credentials):
    """True when there are ``credentials`` and ``password`` matches them.  Without credentials the
    key is derived all the same, against ``decoy_credentials`` (``Decoys``), so that an unknown
    name costs what a wrong password costs."""
    matches = check_password(credentials or decoy_credentials, password)
    return bool(credentials) and matches


class Decoys:
    """Made-up credentials for user names that have no account, the same at every try.

    A fresh random salt per try, or no key derivation for PLAIN, would tell an
    attacker which names exist.  Each record is derived from a server secret
    (kept across restarts), the realm and the name, shaped as a real
    account's (salt size, the default iteration count, key sizes); no
    password matches it.
    """

    def __init__(self, secret):
        self.secret = secret

    def credentials(self, realm, username):
        """{mechanism: record}, as ``make_credentials`` makes them."""
        credentials = {}
        for mechanism, hash_name in SCRAM_HASHES.items():
            size = hashlib.new(hash_name).digest_size
            credentials[mechanism] = {
                "salt": _b64(self._derive("salt", mechanism, realm, username)[:16]),
                "iterations": DEFAULT_ITERATIONS,
                "stored_key": _b64(self._derive("stored key", mechanism, realm, username)[:size]),
                "server_key": _b64(self._derive("server key", mechanism, realm, username)[:size]),
            }
        return credentials

    def _derive(self, *parts):
        return _hmac("sha256", self.secret, "\0".join(parts).encode("utf-8"))


def _parse_attributes(text):
    attributes = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise SASLFailure("malformed-request", f"bad attribute {part!r}")
        attributes[part[0]] = part[2:]
    return attributes


def _escape_username(name):
    return name.replace("=", "=3D").replace(",", "=2C")


def _unescape_username(name):
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise SASLFailure("malformed-request", "bad escape in username")
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramExchange:
    """One SCRAM authentication, server side.

    ``lookup(username)`` returns (a Deferred of) the user's credentials dict
    or None; ``decoy(username)`` the made-up credentials (``Decoys``) an
    unknown name is answered with.  ``channel_binding`` is the data of the TLS
    channel (for the -PLUS variants) or None when the connection offers none.
    """

    def __init__(self, mechanism, lookup, channel_binding=None, plus_offered=False, *, decoy):
        self.mechanism = mechanism
        self.plus = mechanism.endswith("-PLUS")
        self.hash_name = SCRAM_HASHES[mechanism.removesuffix("-PLUS")]
        self.lookup = lookup
        self.decoy = decoy
        self.channel_binding = channel_binding
        self.plus_offered = plus_offered
        self.username = None
        self._step = 0

    @defer.inlineCallbacks
    def receive(self, data):
        """Fires with (server bytes, finished) or fails with ``SASLFailure``."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLFailure("malformed-request", "not UTF-8")
        self._step += 1
        if self._step == 1:
            result = yield self._client_first(text)
            return result, False
        if self._step == 2:
            return self._client_final(text), True
        raise SASLFailure("malformed-request", "unexpected data")

    @defer.inlineCallbacks
    def _client_first(self, text):
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise SASLFailure("malformed-request", "bad client-first-message")
        gs2_flag, authzid, bare = parts
        if self.plus:
            if gs2_flag != "p=tls-exporter" or self.channel_binding is None:
                raise SASLFailure("malformed-request", "only the tls-exporter channel binding is supported")
        elif gs2_flag == "y" and self.plus_offered:
            raise SASLFailure("not-authorized", "channel binding downgrade")
        elif gs2_flag not in ("n", "y"):
            raise SASLFailure("malformed-request", "channel binding not offered")
        self.gs2_header = f"{gs2_flag},{authzid},"
        attributes = _parse_attributes(bare)
        if "m" in attributes or "n" not in attributes or "r" not in attributes:
            raise SASLFailure("malformed-request", "bad client-first-message")
        self.username = saslprep(_unescape_username(attributes["n"]))
        self.client_first_bare = bare
        credentials = yield _from_storage(self.lookup, self.username)
        record = (credentials or {}).get(self.mechanism.removesuffix("-PLUS"))
        if record is None:
            # Go on with made-up values, the same at every try, so that an
            # unknown user is indistinguishable from a wrong password until the end.
            record = self.decoy(self.username)[self.mechanism.removesuffix("-PLUS")]
            self.username_known = False
        else:
            self.username_known = True
        self.record = record
        self.nonce = attributes["r"] + self.server_nonce()
        self.server_first = f"r={self.nonce},s={record['salt']},i={record['iterations']}"
        return self.server_first.encode("ascii")

    @staticmethod
    def server_nonce():
        """The server's part of the nonce: 18 random bytes, base64."""
        return _b64(os.urandom(18))

    def _client_final(self, text):
        without_proof, _, proof_part = text.rpartition(",")
        if not proof_part.startswith("p="):
            raise SASLFailure("malformed-request", "no proof")
        attributes = _parse_attributes(without_proof)
        binding = _channel_binding(self.gs2_header, self.channel_binding if self.plus else b"")
        if attributes.get("c") != binding or attributes.get("r") != self.nonce:
            raise SASLFailure("not-authorized", "channel binding or nonce mismatch")
        auth_message = _auth_message(self.client_first_bare, self.server_first, without_proof)
        stored_key = base64.b64decode(self.record["stored_key"])
        signature = _hmac(self.hash_name, stored_key, auth_message)
        try:
            proof = base64.b64decode(proof_part[2:], validate=True)
        except ValueError:
            raise SASLFailure("malformed-request", "bad proof encoding")
        if len(proof) != len(signature):
            raise SASLFailure("not-authorized")
        client_key = _xor(proof, signature)
        valid = hmac.compare_digest(hashlib.new(self.hash_name, client_key).digest(), stored_key)
        if not (valid and self.username_known):
            raise SASLFailure("not-authorized")
        server_signature = _hmac(self.hash_name, base64.b64decode(self.record["server_key"]), auth_message)
        return f"v={_b64(server_signature)}".encode("ascii")


class ScramClient:
    """One SCRAM authentication, client side, with no I/O: for the tests and the benchmark.

    ``first()`` is the client-first-message; ``answer(server_first)`` the
    client-final-message with the proof; ``check(server_final)`` raises
    ``SASLFailure`` unless the server proved that it knows the password too.
    A -PLUS mechanism binds to ``channel_binding``, the tls-exporter data.
    ``salt_password`` replaces ``salted_password`` (a load generator caches it).
    """

    def __init__(self, mechanism, username, password, channel_binding=b"", nonce=None,
                 salt_password=salted_password):
        plus = mechanism.endswith("-PLUS")
        self.hash_name = SCRAM_HASHES[mechanism.removesuffix("-PLUS")]
        self.gs2_header = "p=tls-exporter,," if plus else "n,,"
        self.channel_binding = channel_binding if plus else b""
        self.password = password
        self.salt_password = salt_password
        self.nonce = nonce or _b64(os.urandom(18))
        self.client_first_bare = f"n={_escape_username(saslprep(username))},r={self.nonce}"
        self.server_signature = None

    def first(self):
        return (self.gs2_header + self.client_first_bare).encode("utf-8")

    def answer(self, server_first):
        text = server_first.decode("utf-8")
        attributes = _parse_attributes(text)
        if not (attributes.get("r", "").startswith(self.nonce) and "s" in attributes
                and attributes.get("i", "").isdigit()):
            raise SASLFailure("malformed-request", f"bad server-first-message {text!r}")
        salted = self.salt_password(self.hash_name, self.password, base64.b64decode(attributes["s"]),
                                    int(attributes["i"]))
        client_key, stored_key, server_key = derived_keys(self.hash_name, salted)
        without_proof = f"c={_channel_binding(self.gs2_header, self.channel_binding)},r={attributes['r']}"
        auth_message = _auth_message(self.client_first_bare, text, without_proof)
        proof = _xor(client_key, _hmac(self.hash_name, stored_key, auth_message))
        self.server_signature = _b64(_hmac(self.hash_name, server_key, auth_message))
        return f"{without_proof},p={_b64(proof)}".encode("utf-8")

    def check(self, server_final):
        attributes = _parse_attributes(server_final.decode("utf-8"))
        if "e" in attributes:
            raise SASLFailure("not-authorized", attributes["e"])
        signature = attributes.get("v", "").encode("utf-8")
        if self.server_signature is None or not hmac.compare_digest(signature, self.server_signature.encode()):
            raise SASLFailure("not-authorized", "the server's signature does not match")


class PlainExchange:
    """PLAIN (RFC 4616): ``check(username, password)`` (or a Deferred of it) says whether the
    password is the user's (``Accounts.check_password``: the stored SCRAM record, or a bind to
    the host's directory).  A failure of ``check`` other than ``SASLFailure`` is the caller's."""

    mechanism = "PLAIN"

    def __init__(self, check):
        self.check = check
        self.username = None

    @defer.inlineCallbacks
    def receive(self, data):
        try:
            authzid, username, password = data.decode("utf-8").split("\0")
        except (UnicodeDecodeError, ValueError):
            raise SASLFailure("malformed-request", "bad PLAIN message")
        self.username = saslprep(username)
        if not (yield _from_storage(self.check, self.username, password)):
            raise SASLFailure("not-authorized")
        return b"", True

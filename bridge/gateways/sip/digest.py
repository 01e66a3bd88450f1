"""Digest authentication, server side (RFC 7616, RFC 2617; SHA-256 in SIP by RFC 8760).

The registrar challenges with ``DigestAuthenticator.challenges()`` (one
WWW-Authenticate value per algorithm, SHA-256 first), reads the answer with
``parse_authorization`` and, after looking up the account's stored HA1 for
the credentials' realm and algorithm, calls ``check``.

Passwords are stored as SCRAM keys only, from which no digest can be
computed, so the account keeps ``ha1(algorithm, user, realm, password)``
per realm and algorithm beside them, written whenever the password is set.

Nonces are stateless: issue time and random bytes, authenticated by an
HMAC-SHA-256 with a server secret and the realm, so a nonce cannot be
forged or moved to another realm, and its age is read from the nonce
itself.  A correct answer with an expired nonce is ``STALE`` (challenge
again with ``stale=true``: the client retries without asking the user).
The nonce counts seen for each live nonce are kept in memory, so a replayed
request (same nonce and nc) is refused; qop=auth is required, because
without it there is no nc to track.
"""

import base64
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass

HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
ALGORITHMS = ("SHA-256", "MD5", "SHA-256-sess", "MD5-sess")

OK = "ok"
STALE = "stale"
REPLAYED = "replayed"
INVALID = "invalid"

_NONCE_RANDOM_BYTES = 8
_NONCE_MAC_BYTES = 16
_NC = re.compile(r"[0-9a-fA-F]{8}")


class DigestError(ValueError):
    """An Authorization header that cannot be read as Digest credentials."""


def base_algorithm(algorithm):
    """The algorithm without its -sess (whose HA1 is the base's); DigestError for an unknown one."""
    base = algorithm[:-5] if algorithm.endswith("-sess") else algorithm
    if base not in HASHES:
        raise DigestError(f"unsupported algorithm {algorithm!r}")
    return base


def _hex(algorithm, text):
    return HASHES[base_algorithm(algorithm)](text.encode("utf-8")).hexdigest()


def ha1(algorithm, user, realm, password):
    """H(user:realm:password), the secret the registrar stores per realm and algorithm.

    The -sess variants use the same stored value (the session key is
    derived from it per nonce), so store it under the base algorithm.
    """
    return _hex(algorithm, f"{user}:{realm}:{password}")


def response_value(algorithm, stored_ha1, method, uri, nonce, nc=None, cnonce=None, qop=None):
    """The request-digest of RFC 7616 3.4.1 (without qop: RFC 2069's form)."""
    key = stored_ha1
    if algorithm.endswith("-sess"):
        key = _hex(algorithm, f"{stored_ha1}:{nonce}:{cnonce}")
    ha2 = _hex(algorithm, f"{method}:{uri}")
    if qop:
        return _hex(algorithm, f"{key}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _hex(algorithm, f"{key}:{nonce}:{ha2}")


@dataclass
class Credentials:
    """The parameters of a Digest Authorization header (values unquoted)."""

    params: dict

    def __getattr__(self, name):
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        if name in ("username", "realm", "nonce", "uri", "response", "cnonce", "qop",
                    "nc", "opaque", "userhash"):
            return None
        raise AttributeError(name)

    @property
    def algorithm(self):
        return self.params.get("algorithm", "MD5")


_AUTH_PARAM = re.compile(
    r'\s*([A-Za-z0-9_\-]+\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]+)\s*(?:,|$)', re.DOTALL)


def parse_authorization(value):
    """Parse ``Digest name=value, ...`` (Authorization or Proxy-Authorization)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest credential: {scheme!r}")
    params, position = {}, 0
    rest = rest.strip()
    while position < len(rest):
        match = _AUTH_PARAM.match(rest, position)
        if not match or match.end() == position:
            raise DigestError(f"malformed parameters at {rest[position:position + 20]!r}")
        name, raw = match.group(1).lower(), match.group(2)
        if name in params:
            raise DigestError(f"parameter {name!r} twice")
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
        position = match.end()
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in params:
            raise DigestError(f"missing {name}")
    return Credentials(params)


def _quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Verdict:
    outcome: str
    reason: str = ""

    @property
    def ok(self):
        return self.outcome == OK


class DigestAuthenticator:
    """Issues and checks digest challenges for one realm, on the clock given."""

    def __init__(self, realm, secret, clock, nonce_lifetime_seconds=300,
                 algorithms=("SHA-256", "MD5"), max_nc_per_nonce=1024):
        if not secret:
            raise ValueError("a server secret is required")
        for algorithm in algorithms:
            base_algorithm(algorithm)
        self.realm = realm
        self.secret = secret if isinstance(secret, bytes) else secret.encode("utf-8")
        self.clock = clock
        self.nonce_lifetime_seconds = nonce_lifetime_seconds
        self.algorithms = tuple(algorithms)
        self.max_nc_per_nonce = max_nc_per_nonce
        self._seen = {}  # nonce -> (issued, set of nc)
        self._last_prune = clock.seconds()

    # nonces

    def _mac(self, payload):
        return hmac.new(self.secret, self.realm.encode("utf-8") + b"\0" + payload,
                        hashlib.sha256).digest()[:_NONCE_MAC_BYTES]

    def make_nonce(self):
        issued = int(self.clock.seconds() * 1000)
        payload = struct.pack(">Q", issued) + os.urandom(_NONCE_RANDOM_BYTES)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode("ascii")

    def _issued(self, nonce):
        """The nonce's issue time in seconds, or None if it is not ours."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
        if len(raw) != 8 + _NONCE_RANDOM_BYTES + _NONCE_MAC_BYTES:
            return None
        payload, mac = raw[:-_NONCE_MAC_BYTES], raw[-_NONCE_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        return struct.unpack(">Q", payload[:8])[0] / 1000

    def nonce_status(self, nonce):
        """OK, STALE (ours but expired) or INVALID (forged, garbled, from the future)."""
        issued = self._issued(nonce)
        now = self.clock.seconds()
        if issued is None or issued > now + 1:
            return INVALID
        if now - issued > self.nonce_lifetime_seconds:
            return STALE
        return OK

    # challenges

    def challenges(self, stale=False, algorithms=None):
        """WWW-Authenticate values, one per algorithm (``algorithms``, else those configured, in their
        order), with one fresh nonce."""
        nonce = self.make_nonce()
        values = []
        for algorithm in algorithms or self.algorithms:
            value = (f"Digest realm={_quote(self.realm)}, nonce={_quote(nonce)}, "
                     f"algorithm={algorithm}, qop=\"auth\"")
            if stale:
                value += ", stale=true"
            values.append(value)
        return values

    # checking

    def check(self, credentials, method, stored_ha1, request_uri=None):
        """Check credentials against the stored HA1 for their realm and algorithm.

        ``request_uri``, when given, must equal the credentials' uri.  Only a
        correct answer reports STALE or REPLAYED, so neither reveals anything
        to a guesser; OK records the nc.
        """
        if credentials.realm != self.realm:
            return Verdict(INVALID, "wrong realm")
        algorithm = credentials.algorithm
        if algorithm not in self.algorithms and not (
                algorithm.endswith("-sess") and algorithm[:-5] in self.algorithms):
            return Verdict(INVALID, f"algorithm {algorithm} not offered")
        if credentials.userhash and credentials.userhash.lower() == "true":
            return Verdict(INVALID, "userhash not supported")
        if credentials.qop is None:
            return Verdict(INVALID, "qop=auth required")
        if credentials.qop != "auth":
            return Verdict(INVALID, f"qop {credentials.qop} not supported")
        if not credentials.cnonce or not credentials.nc or not _NC.fullmatch(credentials.nc):
            return Verdict(INVALID, "cnonce and an 8-digit nc are required with qop")
        if request_uri is not None and credentials.uri != str(request_uri):
            return Verdict(INVALID, "uri differs from the Request-URI")
        status = self.nonce_status(credentials.nonce)
        if status == INVALID:
            return Verdict(INVALID, "nonce not issued here")
        expected = response_value(algorithm, stored_ha1, method, credentials.uri,
                                  credentials.nonce, credentials.nc, credentials.cnonce,
                                  credentials.qop)
        if not hmac.compare_digest(expected.encode("ascii"), credentials.response.lower().encode("ascii", "replace")):
            return Verdict(INVALID, "wrong response")
        if status == STALE:
            return Verdict(STALE, "nonce expired")
        return self._count(credentials.nonce, int(credentials.nc, 16))

    def _count(self, nonce, nc):
        now = self.clock.seconds()
        if now - self._last_prune > self.nonce_lifetime_seconds:
            self._prune(now)
        issued, seen = self._seen.setdefault(nonce, (self._issued(nonce), set()))
        if nc in seen:
            return Verdict(REPLAYED, "nonce count already used")
        if len(seen) >= self.max_nc_per_nonce:
            return Verdict(STALE, "nonce used too often")
        seen.add(nc)
        return Verdict(OK)

    def _prune(self, now):
        self._last_prune = now
        limit = now - self.nonce_lifetime_seconds
        self._seen = {n: v for n, v in self._seen.items() if v[0] >= limit}

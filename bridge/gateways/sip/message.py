"""SIP messages (RFC 3261 sections 7, 18.3, 19, 20, 25): model, parser, serializer.

Sans-IO: bytes in, ``Request``/``Response`` out, and back.  A datagram
carries one message (``parse_datagram``); a stream (TCP, TLS) is cut into
messages by Content-Length (``StreamFramer``, which may be fed one byte at a
time).  Header names are case-insensitive and compact forms are expanded;
headers that may hold a comma-separated list (Via, Contact, Route, ...) are
split on commas outside quotes and angle brackets, so each element is one
entry; folded header lines are joined.

Malformed input raises ``SIPParseError``.  Its ``code`` is the status to
answer (400, 413, 505) or ``DROP`` when no response can be formed: a
malformed response, or a request without a usable top Via.  ``message`` is
what could be parsed, so ``error_response(error)`` can copy Via, From, To,
Call-ID and CSeq into the answer.  On a stream, ``fatal`` means the framing
is lost and the connection must be closed (after the answer, if any).

The grammar helpers (``parse_uri``, ``parse_address``, ``parse_via``,
``parse_cseq``, ``parse_params``, ``split_list``) are public: the registrar
and the translation functions read Contact, From and To through them.
"""

import functools
import re
from dataclasses import dataclass, field

DROP = "drop"
KEEPALIVE = "keepalive"
SIP_VERSION = "SIP/2.0"
MAX_CSEQ = 2**31 - 1

COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_SPECIAL_SPELLINGS = {
    name.lower(): name
    for name in (
        "Call-ID", "CSeq", "WWW-Authenticate", "MIME-Version", "RAck", "RSeq",
        "SIP-ETag", "SIP-If-Match", "Content-ID", "P-Asserted-Identity",
    )
}

# Headers whose grammar is a comma-separated list (RFC 3261 section 7.3.1).
LIST_HEADERS = frozenset((
    "Via", "Contact", "Route", "Record-Route", "Path", "Service-Route",
    "Allow", "Supported", "Require", "Proxy-Require", "Unsupported",
    "Accept", "Accept-Encoding", "Accept-Language", "Allow-Events",
    "Content-Encoding", "Content-Language", "In-Reply-To", "Alert-Info",
    "Call-Info", "Error-Info", "Warning", "P-Asserted-Identity",
))

# Headers that may appear at most once.
SINGLE_HEADERS = frozenset((
    "To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length",
    "Content-Type", "Expires",
))

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 183: "Session Progress",
    200: "OK", 202: "Accepted",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 407: "Proxy Authentication Required",
    408: "Request Timeout", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event",
    500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    603: "Decline",
}

_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9.])?$")
_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+\]$")
_VERSION = re.compile(r"^SIP/(\d+)\.(\d+)$", re.IGNORECASE)
_STATUS = re.compile(r"^[1-6]\d\d$")
_DIGITS = re.compile(r"\d+", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# The most digits a number in a header may have: every limit a number is
# compared with fits, and no conversion fails (Python converts at most 4300
# digits) or takes long.
MAX_DIGITS = 18


class SIPParseError(Exception):
    """Malformed SIP input.

    ``code`` is the status to answer with (400, 413, 505) or ``DROP``;
    ``message`` is the partly parsed message (or None); ``fatal`` is true
    when a stream has lost its framing and must be closed.
    """

    def __init__(self, code, reason, message=None, fatal=False):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.message = message
        self.fatal = fatal

    @property
    def drop(self):
        return self.code == DROP


@dataclass(frozen=True)
class Limits:
    """Size limits; the header section excludes the blank line."""

    max_header_bytes: int = 16384
    max_body_bytes: int = 65536


DEFAULT_LIMITS = Limits()


class GrammarError(ValueError):
    """A header value or URI does not follow the RFC 3261 grammar."""


# --- lexical helpers -------------------------------------------------------

def is_token(text):
    return bool(_TOKEN.match(text))


def number(text):
    """The value of 1 to ``MAX_DIGITS`` ASCII digits, or None for anything else (a malformed number)."""
    if text is None or len(text) > MAX_DIGITS or not _DIGITS.fullmatch(text):
        return None
    return int(text)


@functools.lru_cache(maxsize=1024)
def canonical_name(name):
    """The canonical spelling of a header name, compact forms expanded (remembered: the same few names
    come in every request, and this was 6 % of the CPU of a MESSAGE)."""
    lower = name.lower()
    if lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    if lower in _SPECIAL_SPELLINGS:
        return _SPECIAL_SPELLINGS[lower]
    return "-".join(part.capitalize() for part in lower.split("-"))


def _split_outside(text, separator):
    """Split on ``separator`` outside quoted strings and angle brackets."""
    if '"' not in text and "<" not in text and ">" not in text:
        return text.split(separator)  # nothing to be outside of: most values, and every Via
    parts, current = [], []
    quoted = escaped = False
    depth = 0
    for char in text:
        if quoted:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            continue
        if char == '"':
            quoted = True
        elif char == "<":
            depth += 1
        elif char == ">":
            depth = max(0, depth - 1)
        elif char == separator and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise GrammarError("unterminated quoted string")
    parts.append("".join(current))
    return parts


def split_list(value):
    """Split a list header's value into its elements (empty ones dropped)."""
    return [part.strip() for part in _split_outside(value, ",") if part.strip()]


def unquote(text):
    """The content of a quoted-string (escapes resolved), or ``text`` as is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text):
    """``;name=value;flag`` into an ordered dict (names lowercased, values raw).

    A flag without value maps to None; a quoted value keeps its quotes so it
    serializes unchanged (use ``unquote`` to read it).
    """
    params = {}
    text = text.strip()
    if not text:
        return params
    if text[0] != ";":
        raise GrammarError(f"parameters must start with ';': {text!r}")
    for piece in _split_outside(text[1:], ";"):
        name, sep, value = piece.partition("=")
        name, value = name.strip(), value.strip()
        if not is_token(name):
            raise GrammarError(f"bad parameter name {name!r}")
        if sep:
            if not value:
                raise GrammarError(f"empty value for parameter {name!r}")
            if value[0] == '"':
                if len(value) < 2 or value[-1] != '"':
                    raise GrammarError("unterminated quoted parameter")
            elif any(c in value for c in ' \t"<>'):
                raise GrammarError(f"bad value for parameter {name!r}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def format_params(params):
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _check_host(host):
    if _IPV6.match(host) or _HOSTNAME.match(host):
        return host
    raise GrammarError(f"bad host {host!r}")


def _parse_hostport(text):
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise GrammarError(f"bad IPv6 reference {text!r}")
        host, rest = text[:end + 1], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise GrammarError(f"bad host and port {text!r}")
        port = rest[1:] if rest else None
    else:
        host, sep, port = text.partition(":")
        port = port if sep else None
    _check_host(host)
    if port is None:
        return host, None
    value = number(port)
    if value is None or not 0 < value <= 65535:
        raise GrammarError(f"bad port {port!r}")
    return host, value


def _format_hostport(host, port):
    return host if port is None else f"{host}:{port}"


# --- URIs, addresses, Via, CSeq --------------------------------------------

@dataclass
class URI:
    """A sip: or sips: URI (RFC 3261 19.1); other schemes keep ``opaque``."""

    scheme: str
    host: str = ""
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict = field(default_factory=dict)
    headers: str | None = None
    opaque: str | None = None

    def __str__(self):
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        text = f"{self.scheme}:{userinfo}{_format_hostport(self.host, self.port)}"
        text += format_params(self.params)
        if self.headers is not None:
            text += "?" + self.headers
        return text

    @property
    def secure(self):
        return self.scheme == "sips"

    @property
    def aor(self):
        """The address of record: scheme, user and host, lowercased host."""
        user = f"{self.user}@" if self.user is not None else ""
        return f"{self.scheme}:{user}{self.host.lower()}"


def parse_uri(text):
    """Parse a URI; sip and sips in full, any other scheme as opaque text."""
    if any(c in text for c in " \t\r\n<>"):
        raise GrammarError(f"bad URI {text!r}")
    scheme, sep, rest = text.partition(":")
    if not sep or not re.match(r"^[A-Za-z][A-Za-z0-9+\-.]*$", scheme) or not rest:
        raise GrammarError(f"bad URI {text!r}")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        return URI(scheme=scheme, opaque=rest)
    user = password = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        user, sep, pw = userinfo.partition(":")
        password = pw if sep else None
        if not user:
            raise GrammarError(f"empty user in {text!r}")
    rest, sep, headers = rest.partition("?")
    headers = headers if sep else None
    hostport, sep, params = rest.partition(";")
    host, port = _parse_hostport(hostport)
    return URI(scheme=scheme, host=host, user=user, password=password, port=port,
               params=parse_params(";" + params) if sep else {}, headers=headers)


@dataclass
class Address:
    """A name-addr or addr-spec with header parameters (From, To, Contact...)."""

    uri: URI
    display_name: str | None = None
    params: dict = field(default_factory=dict)

    def __str__(self):
        name = f"{quote(self.display_name)} " if self.display_name else ""
        return f"{name}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self):
        return self.params.get("tag")

    @property
    def expires(self):
        value = self.params.get("expires")
        return number(value)

    @property
    def q(self):
        value = self.params.get("q")
        return float(value) if value is not None else None


def parse_address(text):
    """Parse name-addr (``"Bob" <sip:bob@x>;tag=1``) or addr-spec (``sip:bob@x;tag=1``)."""
    text = text.strip()
    display = None
    if text.startswith('"'):
        i, escaped = 1, False
        while i < len(text):
            if escaped:
                escaped = False
            elif text[i] == "\\":
                escaped = True
            elif text[i] == '"':
                break
            i += 1
        else:
            raise GrammarError("unterminated display name")
        display = unquote(text[:i + 1])
        text = text[i + 1:].lstrip()
        if not text.startswith("<"):
            raise GrammarError("display name without <URI>")
    if "<" in text:
        start = text.index("<")
        if display is None:
            words = text[:start].split()
            if not all(is_token(word) for word in words):
                raise GrammarError(f"display name must be tokens or quoted: {text!r}")
            display = " ".join(words) or None
        end = text.find(">", start)
        if end < 0:
            raise GrammarError("unterminated <URI>")
        uri = parse_uri(text[start + 1:end])
        params = text[end + 1:]
    else:
        spec, sep, params = text.partition(";")
        spec = spec.strip()
        if any(c in spec for c in ",?") or not spec:
            raise GrammarError(f"addr-spec needs <> around {spec!r}")
        uri = parse_uri(spec)
        params = sep + params
    params = parse_params(params)
    for name in ("expires",):
        if name in params and number(params[name]) is None:
            raise GrammarError(f"bad {name} parameter")
    if "q" in params and (params["q"] is None or not re.match(r"^(0(\.\d{0,3})?|1(\.0{0,3})?)$", params["q"])):
        raise GrammarError("bad q parameter")
    return Address(uri=uri, display_name=display, params=params)


@dataclass
class Via:
    """One Via element (RFC 3261 20.42, rport from RFC 3581)."""

    transport: str
    host: str
    port: int | None = None
    params: dict = field(default_factory=dict)

    def __str__(self):
        return f"SIP/2.0/{self.transport} {_format_hostport(self.host, self.port)}{format_params(self.params)}"

    @property
    def branch(self):
        return self.params.get("branch")

    @property
    def received(self):
        return self.params.get("received")

    @property
    def rport(self):
        """None if absent, True if requested without a value, else the port."""
        if "rport" not in self.params:
            return None
        value = self.params["rport"]
        return True if value is None else number(value)

    @property
    def sent_by(self):
        return (self.host.lower(), self.port or (5061 if self.transport.upper() == "TLS" else 5060))


_VIA = re.compile(
    r"^([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/]+)\s+([^\s;]+)\s*(;.*)?$", re.DOTALL)


def parse_via(text):
    match = _VIA.match(text.strip())
    if not match:
        raise GrammarError(f"bad Via {text!r}")
    name, version, transport, sent_by, params = match.groups()
    if name.upper() != "SIP" or version != "2.0" or not is_token(transport):
        raise GrammarError(f"bad Via protocol {text!r}")
    host, port = _parse_hostport(sent_by)
    params = parse_params(params or "")
    if "rport" in params and params["rport"] is not None:
        if not 0 < (number(params["rport"]) or 0) <= 65535:
            raise GrammarError("bad rport")
    if "branch" in params and not params["branch"]:
        raise GrammarError("empty branch")
    if "ttl" in params and (number(params["ttl"] or "") is None or number(params["ttl"]) > 255):
        raise GrammarError("bad ttl")
    return Via(transport=transport.upper(), host=host, port=port, params=params)


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    def __str__(self):
        return f"{self.number} {self.method}"


def parse_cseq(text):
    parts = text.split()
    value = number(parts[0]) if len(parts) == 2 else None
    if value is None or not is_token(parts[1]):
        raise GrammarError(f"bad CSeq {text!r}")
    if value > MAX_CSEQ:
        raise GrammarError("CSeq number too large")
    return CSeq(value, parts[1])


# --- the message model -----------------------------------------------------

class Headers:
    """Ordered header entries; names canonical, one entry per list element."""

    def __init__(self, entries=()):
        self._entries = []
        for name, value in entries:
            self.add(name, value)

    def add(self, name, value):
        self._entries.append((canonical_name(name), str(value)))

    def get(self, name, default=None):
        name = canonical_name(name)
        for key, value in self._entries:
            if key == name:
                return value
        return default

    def get_all(self, name):
        name = canonical_name(name)
        return [value for key, value in self._entries if key == name]

    def set(self, name, value):
        """Replace every entry of ``name`` with one, at the first one's place."""
        name = canonical_name(name)
        entries, placed = [], False
        for key, old in self._entries:
            if key != name:
                entries.append((key, old))
            elif not placed:
                entries.append((name, str(value)))
                placed = True
        if not placed:
            entries.append((name, str(value)))
        self._entries = entries

    def remove(self, name):
        name = canonical_name(name)
        self._entries = [e for e in self._entries if e[0] != name]

    def prepend(self, name, value):
        self._entries.insert(0, (canonical_name(name), str(value)))

    def replace_first(self, name, value):
        name = canonical_name(name)
        for index, (key, _) in enumerate(self._entries):
            if key == name:
                self._entries[index] = (name, str(value))
                return
        raise KeyError(name)

    def __contains__(self, name):
        return self.get(name) is not None

    def __iter__(self):
        return iter(list(self._entries))

    def __len__(self):
        return len(self._entries)

    def copy(self):
        return Headers(self._entries)


class Message:
    """What requests and responses share: headers, body, parsed accessors.

    ``size`` is the number of bytes the message took on the wire when it was
    parsed (the whole datagram for UDP), None for one made here.
    """

    def __init__(self, headers=None, body=b""):
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.size = None
        self._top_via = (None, None)  # (the top Via's text, its parse): the transaction layer reads it thrice

    def start_line(self):
        raise NotImplementedError

    def to_bytes(self):
        """Serialize; Content-Length always states the body's length."""
        lines = [self.start_line()]
        lines.extend(f"{name}: {value}" for name, value in self.headers
                     if name != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    @property
    def vias(self):
        return [parse_via(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self):
        """The top Via, parsed once for as long as its text stays the same (``stamp_via`` rewrites it)."""
        value = self.headers.get("Via")
        if value is None:
            return None
        text, via = self._top_via
        if text is not value:
            via = parse_via(value)
            self._top_via = (value, via)
        return via

    @property
    def cseq(self):
        return parse_cseq(self.headers.get("CSeq", ""))

    @property
    def call_id(self):
        return self.headers.get("Call-ID")

    @property
    def from_address(self):
        return parse_address(self.headers.get("From", ""))

    @property
    def to_address(self):
        return parse_address(self.headers.get("To", ""))

    @property
    def contacts(self):
        """Contact addresses; a ``*`` Contact yields the string ``"*"``."""
        return [value if value == "*" else parse_address(value)
                for value in self.headers.get_all("Contact")]


class Request(Message):
    """A request; ``verified`` once its sender proved who it is (digest), so that its answers need not
    be kept as small as the request (``fit_response``)."""

    def __init__(self, method, uri, headers=None, body=b"", version=SIP_VERSION):
        super().__init__(headers, body)
        self.method = method
        self.uri = parse_uri(uri) if isinstance(uri, str) else uri
        self.version = version
        self.verified = False

    def start_line(self):
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self):
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    def __init__(self, status, reason=None, headers=None, body=b"", version=SIP_VERSION):
        super().__init__(headers, body)
        self.status = status
        self.reason = REASON_PHRASES.get(status, "") if reason is None else reason
        self.version = version

    def start_line(self):
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self):
        return f"<Response {self.status} {self.reason}>"


def make_response(request, status, reason=None, to_tag=None, headers=None, body=b""):
    """A response to ``request`` (RFC 3261 8.2.6.2): Via, From, To, Call-ID, CSeq copied."""
    response = Response(status, reason)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request.headers.get_all(name):
            if name == "To" and to_tag is not None:
                try:
                    address = parse_address(value)
                except GrammarError:
                    pass
                else:
                    if address.tag is None:
                        value = f"{value};tag={to_tag}"
            response.headers.add(name, value)
    for name, value in (headers or ()):
        response.headers.add(name, value)
    response.body = body
    return response


# What a response keeps when it must shrink: the headers every response copies from its
# request (RFC 3261 8.2.6.2) and those its status cannot go without.
_RESPONSE_CORE = ("Via", "From", "To", "Call-ID", "CSeq")
_REQUIRED_BY_STATUS = {401: ("WWW-Authenticate",), 405: ("Allow",), 407: ("Proxy-Authenticate",),
                       420: ("Unsupported",), 423: ("Min-Expires",), 503: ("Retry-After",)}
_OPTIONS_ANSWER = ("Allow", "Accept")  # what a 2xx to OPTIONS is for (RFC 3261 11.2)
_CHALLENGES = ("WWW-Authenticate", "Proxy-Authenticate")


def fit_response(response, limit):
    """``response`` cut down towards ``limit`` bytes: itself when it fits, else its smallest form that
    does, else its smallest form (which the caller then weighs).

    For an unverified UDP source, which is not to be answered with more
    bytes than it sent (a spoofed source must not make the gateway an
    amplifier).  Each step is taken only while the response is still too
    long: keep only the headers of ``_RESPONSE_CORE`` and those the status
    requires (a 2xx to OPTIONS: Allow and Accept), without a body; keep the first challenge only; use the
    standard reason phrase.  Even the smallest form echoes the request's
    own headers and adds a status line and a To tag, so it can exceed a
    short request by a few dozen bytes (a challenge by one header more).
    """
    if len(response.to_bytes()) <= limit:
        return response
    kept = set(_RESPONSE_CORE) | set(_REQUIRED_BY_STATUS.get(response.status, ()))
    if 200 <= response.status < 300 and (response.headers.get("CSeq") or "").split()[-1:] == ["OPTIONS"]:
        kept |= set(_OPTIONS_ANSWER)
    smaller = Response(response.status, response.reason,
                       Headers([(name, value) for name, value in response.headers if name in kept]))
    if len(smaller.to_bytes()) <= limit:
        return smaller
    for name in _CHALLENGES:
        first = smaller.headers.get(name)
        if first is not None:
            smaller.headers.set(name, first)
    if len(smaller.to_bytes()) <= limit:
        return smaller
    smaller.reason = REASON_PHRASES.get(smaller.status, "")
    return smaller


def error_response(error):
    """The response a ``SIPParseError`` calls for, or None if it is dropped."""
    if error.drop or not isinstance(error.message, Request):
        return None
    return make_response(error.message, error.code)


# --- parsing -----------------------------------------------------------------

def _header_lines(text):
    """Logical header lines (folding undone), and the first problem found."""
    lines, problem = [], None
    for line in text.split("\r\n"):
        if _CONTROL.search(line):
            problem = problem or "control character in the header section"
            continue
        if line[:1] in (" ", "\t"):
            if not lines:
                problem = problem or "continuation line before any header"
                continue
            name, value = lines[-1]
            lines[-1] = (name, (value + " " + line.strip(" \t")).strip())
            continue
        name, sep, value = line.partition(":")
        name = name.rstrip(" \t")
        if not sep or not is_token(name):
            problem = problem or f"malformed header line {line[:40]!r}"
            continue
        lines.append((name, value.strip(" \t")))
    return lines, problem


class _Problems:
    def __init__(self):
        self.first = None

    def add(self, code, reason):
        if self.first is None:
            self.first = (code, reason)


def _parse_frame(head, body, stream, limits):
    """Parse a header section (without its blank line) and the bytes after it."""
    problems = _Problems()
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("utf-8", "replace")
        problems.add(400, "header section is not UTF-8")
    start, _, rest = text.partition("\r\n")
    lines, problem = _header_lines(rest) if rest else ([], None)
    if problem:
        problems.add(400, problem)

    if start.upper().startswith("SIP/"):
        message = _response_from_line(start)
    else:
        message = _request_from_line(start, problems)
    for name, value in lines:
        name = canonical_name(name)
        if name in LIST_HEADERS:
            try:
                elements = split_list(value)
            except GrammarError as e:
                problems.add(400, f"{name}: {e}")
                elements = [value]
            for element in elements or [""]:
                message.headers.add(name, element)
        else:
            message.headers.add(name, value)

    respondable = _validate(message, problems)

    length = number(message.headers.get("Content-Length"))
    if length is not None:
        if length > limits.max_body_bytes:
            problems.add(413, "body larger than the limit")
        elif not stream:
            if length > len(body):
                problems.add(400, "Content-Length larger than the datagram")
            body = body[:length]
    elif len(body) > limits.max_body_bytes:
        problems.add(413, "body larger than the limit")
    message.body = body

    if problems.first is not None:
        code, reason = problems.first
        if not respondable:
            code = DROP
        raise SIPParseError(code, reason, message)
    return message


def _response_from_line(line):
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0] != SIP_VERSION or not _STATUS.match(parts[1]):
        raise SIPParseError(DROP, f"bad status line {line[:60]!r}")
    return Response(int(parts[1]), parts[2] if len(parts) == 3 else "")


class _BadRequestLine:
    """Stands in for the Request-URI of a request whose line is malformed."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


def _request_from_line(line, problems):
    method = line.split(" ", 1)[0]
    if not method or not is_token(method):
        raise SIPParseError(DROP, f"bad request line {line[:60]!r}")
    parts = line.split(" ")
    request = Request(method, _BadRequestLine(""))
    if len(parts) != 3:
        problems.add(400, "request line must be method SP Request-URI SP version")
        return request
    try:
        request.uri = parse_uri(parts[1])
    except GrammarError as e:
        problems.add(400, f"bad Request-URI: {e}")
    match = _VERSION.match(parts[2])
    if not match:
        problems.add(400, f"bad version {parts[2][:20]!r}")
    elif (match.group(1), match.group(2)) != ("2", "0"):
        problems.add(505, f"version {parts[2]} not supported")
    return request


def _validate(message, problems):
    """Check the headers the transaction layer relies on; True if answerable."""
    headers = message.headers
    vias = headers.get_all("Via")
    respondable = isinstance(message, Request)
    if not vias:
        problems.add(400, "no Via")
        respondable = False
    for index, value in enumerate(vias):
        try:
            via = parse_via(value)
            if index == 0:
                message._top_via = (value, via)  # what ``top_via`` would parse again
        except GrammarError as e:
            problems.add(400, f"Via: {e}")
            if index == 0:
                respondable = False
    for name in SINGLE_HEADERS:
        if len(headers.get_all(name)) > 1:
            problems.add(400, f"more than one {name}")
    for name in ("From", "To", "Call-ID", "CSeq"):
        if headers.get(name) is None:
            problems.add(400, f"no {name}")
    for name in ("From", "To"):
        value = headers.get(name)
        if value is not None:
            try:
                parse_address(value)
            except GrammarError as e:
                problems.add(400, f"{name}: {e}")
    call_id = headers.get("Call-ID")
    if call_id is not None and (not call_id or any(c.isspace() for c in call_id)):
        problems.add(400, "bad Call-ID")
    cseq = headers.get("CSeq")
    if cseq is not None:
        try:
            parsed = parse_cseq(cseq)
        except GrammarError as e:
            problems.add(400, str(e))
        else:
            if isinstance(message, Request) and parsed.method != message.method:
                problems.add(400, "CSeq method differs from the request method")
    for name, limit in (("Max-Forwards", 255), ("Expires", 2**32 - 1), ("Content-Length", None)):
        value = headers.get(name)
        if value is not None and (number(value) is None or (limit is not None and number(value) > limit)):
            problems.add(400, f"bad {name}")
    contacts = headers.get_all("Contact")
    for value in contacts:
        if value == "*":
            if len(contacts) > 1:
                problems.add(400, "Contact * with other contacts")
            continue
        try:
            parse_address(value)
        except GrammarError as e:
            problems.add(400, f"Contact: {e}")
    return respondable


def _skip_leading_crlf(data):
    while data.startswith(b"\r\n"):
        data = data[2:]
    return data


def parse_datagram(data, limits=DEFAULT_LIMITS):
    """Parse one UDP datagram: a message, or None for a CRLF keep-alive.

    Without Content-Length the body runs to the end of the datagram; with
    it, bytes beyond it are discarded (RFC 3261 18.3).
    """
    size = len(data)
    data = _skip_leading_crlf(data)
    if not data.strip(b"\r\n \t"):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        head, body = data, b""
        head_end = len(data)
    else:
        head, body = data[:end], data[end + 4:]
        head_end = end
    if head_end > limits.max_header_bytes:
        raise SIPParseError(DROP, "header section larger than the limit")
    if end < 0:
        message = _parse_frame(head, b"", False, limits)
        code = 400 if isinstance(message, Request) else DROP
        raise SIPParseError(code, "no blank line after the headers", message)
    message = _parse_frame(head, body, False, limits)
    message.size = size
    return message


_CONTENT_LENGTH_NAME = re.compile(rb"^(content-length|l)[ \t]*:(.*)$", re.IGNORECASE | re.DOTALL)


class StreamFramer:
    """Cuts a TCP or TLS byte stream into messages by Content-Length.

    ``receive_data(bytes)`` buffers; ``next_message()`` returns a message,
    ``KEEPALIVE`` for a CRLFCRLF ping (RFC 5626 3.5.1, answer with CRLF), or
    None when more bytes are needed.  It raises ``SIPParseError``; when the
    error is ``fatal`` the stream is unusable and every later call raises it
    again.
    """

    def __init__(self, limits=DEFAULT_LIMITS):
        self.limits = limits
        self._buffer = b""
        self._scan = 0
        self._frame = None  # (header bytes, body length) once the head is complete
        self._failure = None

    def receive_data(self, data):
        if self._failure is None:
            self._buffer += data

    def _fail(self, code, reason, head=None):
        message = None
        if head is not None:
            try:
                message = _parse_frame(head, b"", True, self.limits)
            except SIPParseError as e:
                message = e.message
        if not isinstance(message, Request) or code == DROP:
            code = DROP
        else:
            try:
                if message.top_via is None:
                    code = DROP
            except GrammarError:
                code = DROP
        self._failure = SIPParseError(code, reason, message, fatal=True)
        self._buffer = b""
        raise self._failure

    def next_message(self):
        if self._failure is not None:
            raise self._failure
        if self._frame is None:
            while self._buffer.startswith(b"\r\n"):
                if self._buffer.startswith(b"\r\n\r\n"):
                    self._buffer = self._buffer[4:]
                    self._scan = 0
                    return KEEPALIVE
                if len(self._buffer) < 4 and b"\r\n\r\n".startswith(self._buffer):
                    return None
                self._buffer = self._buffer[2:]
            end = self._buffer.find(b"\r\n\r\n", self._scan)
            if end < 0:
                if len(self._buffer) > self.limits.max_header_bytes + 3:
                    self._fail(DROP, "header section larger than the limit")
                self._scan = max(0, len(self._buffer) - 3)
                return None
            if end > self.limits.max_header_bytes:
                self._fail(DROP, "header section larger than the limit")
            head = self._buffer[:end]
            length = self._content_length(head)
            self._buffer = self._buffer[end + 4:]
            self._scan = 0
            self._frame = (head, length)
        head, length = self._frame
        if len(self._buffer) < length:
            return None
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        self._frame = None
        message = _parse_frame(head, body, True, self.limits)
        message.size = len(head) + 4 + length
        return message

    def _content_length(self, head):
        values = []
        for line in re.split(rb"\r\n(?![ \t])", head)[1:]:
            match = _CONTENT_LENGTH_NAME.match(line)
            if match:
                values.append(re.sub(rb"\r\n[ \t]+", b" ", match.group(2)).strip())
        if not values:
            self._fail(400, "no Content-Length on a stream", head)
        length = number(values[0].decode("latin-1"))
        if len(set(values)) > 1 or length is None:
            self._fail(400, "bad Content-Length", head)
        if length > self.limits.max_body_bytes:
            self._fail(413, "body larger than the limit", head)
        return length

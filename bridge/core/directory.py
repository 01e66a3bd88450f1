"""The parts of the LDAP directory that do no I/O: filters, the attribute map, the server list.

A host may keep its users in an LDAP directory instead of bridge's own
accounts (``[ldap.NAME]`` tables, docs/directory.md).  Every value that goes
into a search filter passes through ``escape_filter_value`` (RFC 4515 section
3), so a login name or a search field such as ``*)(uid=*`` matches only
itself.  Entries are read through ``map_entry``, which bounds every value
(a directory may hold a 5 MB photo or a cn that is not UTF-8) before the
rest of the server sees it.  ``ServerList`` holds the failover policy: the
first server of the configured list that is not marked down is used, and a
failed server is skipped for ``retry_seconds`` or until a health check
finds it back.
"""

from dataclasses import dataclass, field
from urllib.parse import urlsplit

# RFC 4515 section 3: the characters a value must carry as \HH, NUL included.
_FILTER_SPECIALS = {ord("\\"): "\\5c", ord("*"): "\\2a", ord("("): "\\28", ord(")"): "\\29", 0: "\\00"}

# The largest text value (cn, mail, ...) read from an entry; a longer one is left out.
MAX_TEXT_VALUE_BYTES = 1024


class DirectoryUnavailable(Exception):
    """No server of the directory answered: the question has no answer now (not a "no")."""


def parse_uri(uri):
    """(tls_from_start, host, port) of an ``ldap://`` or ``ldaps://`` URI (ValueError otherwise)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"must be ldap://HOST[:PORT] or ldaps://HOST[:PORT], not {uri!r}")
    port = parts.port or (636 if parts.scheme == "ldaps" else 389)
    return parts.scheme == "ldaps", parts.hostname, port


def escape_filter_value(value):
    """``value`` as an RFC 4515 assertion value: \\ * ( ) and NUL as \\HH, the rest UTF-8 as is."""
    return value.translate(_FILTER_SPECIALS)


def equality_filter(attribute, value):
    """``(attribute=value)`` with ``value`` escaped."""
    return f"({attribute}={escape_filter_value(value)})"


def substring_filter(attribute, value):
    """``(attribute=*value*)``: entries whose ``attribute`` contains ``value``, escaped."""
    return f"({attribute}=*{escape_filter_value(value)}*)"


def restrict(base_filter, *conditions):
    """``base_filter`` and every one of ``conditions`` (already escaped filters)."""
    return f"(&{base_filter}{''.join(conditions)})"


def text_value(values):
    """The first value that fits ``MAX_TEXT_VALUE_BYTES``, decoded (bytes that are not UTF-8
    become U+FFFD), or None."""
    for value in values:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        if len(raw) <= MAX_TEXT_VALUE_BYTES:
            return raw.decode("utf-8", errors="replace")
    return None


@dataclass(frozen=True)
class AttributeMap:
    """Which directory attribute holds each thing bridge reads from a user's entry."""

    uid: str = "uid"
    name: str = "cn"
    mail: str = "mail"
    mobile: str = "mobile"
    photo: str = "jpegPhoto"
    changed: str = "modifyTimestamp"

    def names(self, photo=False):
        """The attributes to ask for in a search; the photo only when it is wanted (it may be large)."""
        return [self.uid, self.name, self.mail, self.mobile, self.changed] + ([self.photo] if photo else [])


@dataclass(frozen=True)
class DirectoryEntry:
    """A user's entry, bounded: text values of at most ``MAX_TEXT_VALUE_BYTES``, a photo of at
    most the configured size (a larger one is left out)."""

    dn: str
    uid: str
    name: str = None
    mail: str = None
    mobile: str = None
    photo: bytes = field(default=None, repr=False)
    changed: str = None


def map_entry(dn, attributes, attribute_map, max_photo_bytes):
    """A ``DirectoryEntry`` from ``attributes`` ({name: [bytes or str]}, names compared without
    case), or None when the entry has no usable uid."""
    by_name = {name.lower(): list(values) for name, values in attributes.items()}

    def values(name):
        return by_name.get(name.lower(), [])

    uid = text_value(values(attribute_map.uid))
    if not uid:
        return None
    photos = [value for value in values(attribute_map.photo) if isinstance(value, bytes)]
    photo = photos[0] if photos and len(photos[0]) <= max_photo_bytes else None
    return DirectoryEntry(dn=dn, uid=uid, name=text_value(values(attribute_map.name)),
                          mail=text_value(values(attribute_map.mail)), mobile=text_value(values(attribute_map.mobile)),
                          photo=photo, changed=text_value(values(attribute_map.changed)))


class ServerList:
    """The directory's servers in order of preference, and which are down, on a clock.

    ``candidates()`` are the servers to try now, best first: those not marked
    down.  ``failed(uri)`` marks one down for ``retry_seconds``;
    ``succeeded(uri)`` (a health check or a request that went through) marks
    it up at once.
    """

    def __init__(self, uris, clock, retry_seconds):
        self.uris = list(uris)
        self.clock = clock
        self.retry_seconds = retry_seconds
        self._down_until = {}  # uri -> time it may be tried again

    def candidates(self):
        now = self.clock.seconds()
        return [uri for uri in self.uris if self._down_until.get(uri, 0) <= now]

    def preferred(self):
        """The server to use now, or None when every one is down."""
        candidates = self.candidates()
        return candidates[0] if candidates else None

    def failed(self, uri):
        self._down_until[uri] = self.clock.seconds() + self.retry_seconds

    def succeeded(self, uri):
        self._down_until.pop(uri, None)

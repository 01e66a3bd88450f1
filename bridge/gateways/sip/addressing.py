"""Addresses across the SIP gateway: JIDs and sip:/tel: URIs (pure functions).

Three kinds of address meet at the gateway (docs/sip-mapping.md):

* a local user is one identity on both sides: ``sip:alice@localhost`` is
  ``alice@localhost`` (the SIP user part goes through nodeprep, so it is
  matched without regard to case);
* a foreign SIP address appears to XMPP users as a JID of the gateway's
  domain whose localpart is the SIP ``user@host[:port]``, escaped as XEP-0106
  says: ``sip:carol@pbx.example`` is ``carol\\40pbx.example@sip.localhost``;
* a global telephone number (``tel:+15551234567``) is
  ``+15551234567@sip.localhost``;
* a chat room of a service of this server (``room_domains``) is its own
  SIP address, the room's name (the JID's localpart, XEP-0106 unescaped)
  as the user part: ``sip:my%20room@conference.localhost`` is
  ``my\\20room@conference.localhost``.

A full JID's resource becomes a ``gr`` URI parameter (a GRUU-like parameter,
RFC 5627) and back, so that an answer reaches the same resource.

Every refusal raises ``AddressError`` with a message naming the problem.
The gateway's own domain never appears as the host of a SIP URI and a
gateway JID never names a local user: either would send a message out of
the gateway and straight back in.
"""

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from bridge.core.stanza import parse_jid
from bridge.gateways.sip.message import URI, GrammarError, parse_uri

# XEP-0106 section 3: the ten characters that a localpart may not hold, and
# their escape sequences (lowercase hexadecimal, as the XEP writes them).
ESCAPES = {
    " ": "\\20", '"': "\\22", "&": "\\26", "'": "\\27", "/": "\\2f",
    ":": "\\3a", "<": "\\3c", ">": "\\3e", "@": "\\40", "\\": "\\5c",
}
_UNESCAPES = {sequence[1:]: char for char, sequence in ESCAPES.items()}

# RFC 3261 section 25.1: characters a SIP user part carries unescaped
# (besides letters and digits): unreserved marks and user-unreserved.
_SIP_USER_SAFE = "-_.!~*'()&=+$,;?/"
# RFC 3261 param-unreserved and unreserved marks, for a gr parameter value.
_SIP_PARAM_SAFE = "-_.!~*'()[]/:&+$"

MAX_LOCALPART_BYTES = 1023  # RFC 7622 section 3.3.1
MAX_E164_DIGITS = 15
_VISUAL_SEPARATORS = re.compile(r"[-.() ]")
_GLOBAL_NUMBER = re.compile(r"^\+[0-9]+$", re.ASCII)


class AddressError(ValueError):
    """An address that cannot be mapped; the message names the problem."""


# --- XEP-0106 ----------------------------------------------------------------

def escape_node(text):
    """Escape ``text`` into a JID localpart (XEP-0106).

    A backslash is escaped only when it begins one of the ten escape
    sequences, so ``c:\\net`` becomes ``c\\3a\\net`` and ``c:\\5cx`` becomes
    ``c\\3a\\5c5cx``.  A localpart may not begin or end with a space.
    """
    if not text:
        raise AddressError("empty localpart")
    if text[0] == " " or text[-1] == " ":
        raise AddressError("a localpart may not begin or end with a space (XEP-0106)")
    out = []
    for index, char in enumerate(text):
        if char == "\\":
            out.append("\\5c" if text[index + 1:index + 3] in _UNESCAPES else "\\")
        else:
            out.append(ESCAPES.get(char, char))
    return "".join(out)


def unescape_node(node):
    """Undo XEP-0106 escaping in one left-to-right pass.

    Only the ten escape sequences are unescaped (``\\2g`` and ``\\ab`` stay as
    they are); an escaped localpart that begins or ends with ``\\20`` is
    refused, since no escaping produces it.
    """
    if not node:
        raise AddressError("empty localpart")
    if node.startswith("\\20") or node.endswith("\\20"):
        raise AddressError("an escaped localpart may not begin or end with \\20 (XEP-0106)")
    out = []
    index = 0
    while index < len(node):
        code = node[index + 1:index + 3] if node[index] == "\\" else None
        if code in _UNESCAPES:
            out.append(_UNESCAPES[code])
            index += 3
        else:
            out.append(node[index])
            index += 1
    return "".join(out)


def is_canonical_escape(node):
    """True when ``node`` is exactly what ``escape_node`` makes of its unescaped form."""
    try:
        return escape_node(unescape_node(node)) == node
    except AddressError:
        return False


# --- telephone numbers -------------------------------------------------------

def normalize_number(text):
    """A global number (``+`` and digits) from a tel: URI or a dialled string.

    Visual separators (``-``, ``.``, ``(``, ``)``, space) are dropped and
    parameters (``;ext=``...) ignored.  A local number (no ``+``) would need
    its phone-context, which the gateway does not interpret.
    """
    text = text.strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    number = _VISUAL_SEPARATORS.sub("", text.split(";", 1)[0])
    if not number.startswith("+"):
        raise AddressError(f"{text!r} is not a global number (+ and digits); local numbers are not supported")
    if not _GLOBAL_NUMBER.match(number):
        raise AddressError(f"{text!r} is not a telephone number")
    if len(number) - 1 > MAX_E164_DIGITS:
        raise AddressError(f"{text!r} has more than {MAX_E164_DIGITS} digits")
    return number


def is_number_node(node):
    return bool(_GLOBAL_NUMBER.match(node)) and len(node) - 1 <= MAX_E164_DIGITS


# --- the map between the two sides -----------------------------------------

def _decode_user(user):
    try:
        return unquote(user, errors="strict")
    except UnicodeDecodeError:
        raise AddressError(f"the user part {user!r} is not UTF-8 once unescaped") from None


def local_user(uri):
    """The account name that a SIP URI of one of our domains names, or None.

    Every reader of a local user's SIP address uses it (the registrar's
    address of record, a sender's From, a SUBSCRIBE's target), and decodes
    the %-escapes exactly as ``jid_for_uri`` does: once, since RFC 3261
    19.1.4 compares them as the characters they stand for.  The name is then
    prepared with nodeprep as every account name is; None when that fails or
    nothing is left.  No new account may hold ``%`` (accounts.py), so a
    name is never decoded into another.
    """
    if not uri.user:
        return None
    try:
        return _nodeprep(_decode_user(uri.user)) or None
    except (AddressError, UnicodeError):
        return None


# ASCII that nodeprep leaves as it is (RFC 3920 appendix A: no upper case to fold, none of
# "&'/:<>@, no space or control character): what nearly every name is, and every spoofed one.
_NODEPREP_SAME = re.compile(r"[a-z0-9!#$%()*+,\-.;=?\[\\\]^_`{|}~]+")


def _nodeprep(name):
    """``nodeprep.prepare(name)``, without its per-character tables for a name it would not change."""
    if _NODEPREP_SAME.fullmatch(name):
        return name
    return nodeprep.prepare(name)


def _jid(node, domain, resource=None):
    text = f"{node}@{domain}" + (f"/{resource}" if resource else "")
    if len(node.encode("utf-8")) > MAX_LOCALPART_BYTES:
        raise AddressError(f"the localpart of {text!r} is longer than {MAX_LOCALPART_BYTES} bytes")
    jid = parse_jid(text)
    if jid is None:
        raise AddressError(f"{text!r} is not a valid JID")
    return jid


def as_uri(value):
    """A ``URI`` from a URI or its text; GrammarError becomes AddressError."""
    if isinstance(value, URI):
        return value
    try:
        return parse_uri(value.strip())
    except GrammarError as e:
        raise AddressError(f"malformed URI: {e}") from None


@dataclass(frozen=True)
class AddressMap:
    """Maps addresses given the hosted domains and the gateway's own domain."""

    local_domains: frozenset
    gateway_domain: str
    room_domains: frozenset = frozenset()  # the chat services served here (conference.localhost)

    def __post_init__(self):
        object.__setattr__(self, "local_domains", frozenset(d.lower() for d in self.local_domains))
        object.__setattr__(self, "gateway_domain", self.gateway_domain.lower())
        object.__setattr__(self, "room_domains", frozenset(d.lower() for d in self.room_domains))

    def is_local(self, domain):
        return domain.lower() in self.local_domains

    # SIP -> XMPP

    def jid_for_uri(self, value):
        """The JID that stands for a sip:, sips: or tel: URI (a JID object)."""
        uri = as_uri(value)
        if uri.scheme == "tel":
            return _jid(normalize_number(uri.opaque), self.gateway_domain)
        if uri.scheme not in ("sip", "sips"):
            raise AddressError(f"unsupported URI scheme {uri.scheme!r}")
        host = uri.host.lower()
        if uri.user is None:
            raise AddressError(f"{uri} has no user part")
        if host == self.gateway_domain:
            raise AddressError(f"{uri} names the gateway's own domain; address the SIP user directly")
        user = _decode_user(uri.user)
        resource = uri.params.get("gr")
        resource = _decode_user(resource) if resource else None
        if host in self.local_domains:
            return _jid(user, host, resource)
        if host in self.room_domains:
            return _jid(escape_node(user), host, resource)
        if uri.params.get("user") == "phone":
            user = normalize_number(user)
        hostport = host if uri.port is None else f"{host}:{uri.port}"
        return _jid(escape_node(f"{user}@{hostport}"), self.gateway_domain, resource)

    # XMPP -> SIP

    def uri_for_jid(self, value):
        """The SIP (or tel:) URI that stands for a JID (a ``URI`` object)."""
        jid = parse_jid(value) if isinstance(value, str) else value
        if jid is None:
            raise AddressError(f"malformed JID {value!r}")
        domain = jid.host.lower()
        if not jid.user:
            raise AddressError(f"{jid.full()} has no localpart, so no SIP user")
        if domain == self.gateway_domain:
            uri = self._foreign_uri(jid.user)
        elif domain in self.room_domains:
            uri = URI(scheme="sip", user=quote(unescape_node(jid.user), safe=_SIP_USER_SAFE), host=domain)
        else:
            # A local user, or a remote XMPP user mapped as its own domain's
            # SIP address (whether to let it through is the caller's policy).
            uri = URI(scheme="sip", user=quote(jid.user, safe=_SIP_USER_SAFE), host=domain)
        if jid.resource:
            if uri.scheme == "tel":
                raise AddressError(f"{jid.full()}: a telephone number has no resources")
            uri.params["gr"] = quote(jid.resource, safe=_SIP_PARAM_SAFE)
        return uri

    def _foreign_uri(self, node):
        if not is_canonical_escape(node):
            raise AddressError(f"the localpart {node!r} is not in canonical XEP-0106 form")
        if is_number_node(node):
            return URI(scheme="tel", opaque=node)
        address = unescape_node(node)
        user, at, hostport = address.rpartition("@")
        if not at or not user:
            raise AddressError(f"{address!r} is not user@host: "
                               f"write sip:user@host as user\\40host@{self.gateway_domain}")
        try:
            uri = parse_uri(f"sip:{quote(user, safe=_SIP_USER_SAFE)}@{hostport}")
        except GrammarError as e:
            raise AddressError(f"{address!r} is not a SIP address: {e}") from None
        host = uri.host.lower()
        if host in self.local_domains:
            raise AddressError(f"{address!r} is a local user: write to {unquote(uri.user)}@{host}")
        if host == self.gateway_domain:
            raise AddressError(f"{address!r} names the gateway's own domain")
        uri.host = host
        if is_number_node(user):
            uri.params["user"] = "phone"
        return uri

    def jid_for_prompt(self, text):
        """The JID for what a user typed in the XEP-0100 prompt.

        Accepts ``sip:carol@pbx.example``, ``carol@pbx.example``,
        ``tel:+1 555 123 4567`` or ``+15551234567``; returns a bare JID.
        """
        text = text.strip()
        if not text:
            raise AddressError("empty address")
        lowered = text.lower()
        if lowered.startswith(("sip:", "sips:", "tel:")):
            uri = as_uri(text)
        elif text.startswith("+"):
            uri = URI(scheme="tel", opaque=normalize_number(text))
        else:
            uri = as_uri("sip:" + text)
        return self.jid_for_uri(uri).userhostJID()

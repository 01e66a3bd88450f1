"""Building stanzas and their error replies (RFC 6120 section 8.3)."""

import re

from twisted.words.protocols.jabber.jid import InvalidFormat, JID, parse as stringprep_parse
from twisted.words.xish import domish

from bridge.core.xmlstream import share_children

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"
NS_CLIENT = "jabber:client"
NS_DATA = "jabber:x:data"

ERROR_TYPES = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "undefined-condition": "cancel",
}


# RFC 7622 section 3: a localpart, domainpart or resourcepart of more than
# 1023 bytes is malformed.  Whatever keeps JIDs (rosters, block lists,
# subscription requests) counts on it to bound its bytes.
MAX_JID_PART_BYTES = 1023


# The JIDs parsed lately, by their text (see ``parse_jid``): at most
# PARSED_JIDS_KEPT texts of at most PARSED_JID_KEPT_CHARS characters each,
# some 50 MB at worst.
_parsed_jids = {}
PARSED_JIDS_KEPT = 65536
PARSED_JID_KEPT_CHARS = 256


def same_account(one, other):
    """Whether two JIDs have the same bare JID, without building either's text."""
    return one.user == other.user and one.host == other.host


class ParsedJID(JID):
    """A JID whose texts are written once: routing asks a parsed JID for them several times a stanza."""

    def __init__(self, user, host, resource):
        # The parts as stringprep made them (``prepared_parts``): JID's own constructor would prepare them again.
        self.user = user
        self.host = host
        self.resource = resource
        self._userhost = JID.userhost(self)
        self._full = JID.full(self)

    def userhost(self):
        return self._userhost

    def full(self):
        return self._full

    def userhostJID(self):
        # JID's own keeps every bare JID it was asked for, without bound.
        return parse_jid(self._userhost) if self.resource else self


# What stringprep's profiles leave of an ASCII part, or refuse (RFC 3920 appendixes A and B, RFC 3491 and
# the STD 3 rules for domain labels): a localpart is lower-cased and must not hold a space, a control
# character or "&'/:<>@; a domain is lower-cased, in labels of letters, digits and inner hyphens; a
# resource is kept as it is, without control characters.
_ASCII_LOCALPART = re.compile(r"""[^\x00-\x20"&'/:<>@\x7f]+\Z""")
_ASCII_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.?\Z")
_ASCII_RESOURCE = re.compile(r"[^\x00-\x1f\x7f]+\Z")


def prepared_parts(text):
    """(user, host, resource) of ``text`` as Twisted's ``jid.parse`` makes them, which raises InvalidFormat
    (or UnicodeError, IndexError) for a malformed one.  Addresses in ASCII, nearly all of them, skip
    stringprep's tables: its cost is most of what parsing a new address costs."""
    if not text.isascii():
        return stringprep_parse(text)
    bare, _, resource = text.partition("/")
    user, at, host = bare.partition("@")
    if not at:
        user, host = "", bare
    host = host.lower()
    user = user.lower()
    if (not _ASCII_DOMAIN.match(host) or (user and not _ASCII_LOCALPART.match(user))
            or (resource and not _ASCII_RESOURCE.match(resource))):
        raise InvalidFormat(f"malformed address {text!r}")
    return user or None, host, resource or None


def parse_jid(text):
    """A JID, or None when ``text`` is missing or malformed (a part longer than RFC 7622 allows too).

    Well-formed ones are kept: stringprep is the dearest step of routing,
    and the same addresses recur on every stanza of a conversation.  A plain
    dict, because this runs several times per stanza; past
    ``PARSED_JIDS_KEPT`` the oldest goes.  Longer texts than any usual
    address are parsed each time, so that what is kept stays bounded in
    bytes too.
    """
    jid = _parsed_jids.get(text)
    if jid is not None:
        return jid
    if not text or len(text) > 3 * MAX_JID_PART_BYTES + 2:
        return None
    try:
        jid = ParsedJID(*prepared_parts(text))
    except (InvalidFormat, UnicodeError, IndexError):
        # IndexError: Twisted's nameprep on an empty label ("a..b").
        return None
    if any(part and len(part.encode("utf-8")) > MAX_JID_PART_BYTES for part in (jid.user, jid.host, jid.resource)):
        return None
    if len(text) <= PARSED_JID_KEPT_CHARS:
        if len(_parsed_jids) >= PARSED_JIDS_KEPT:
            del _parsed_jids[next(iter(_parsed_jids))]
        _parsed_jids[text] = jid
    return jid


def make(kind, to=None, sender=None, type=None, id=None):
    """A new stanza element with the given addressing attributes."""
    element = domish.Element((None, kind))
    for name, value in (("to", to), ("from", sender), ("type", type), ("id", id)):
        if value is not None:
            element[name] = value.full() if isinstance(value, JID) else value
    return element


def is_error_or_result(stanza):
    """Stanzas that must never be answered with an error."""
    return stanza.getAttribute("type") == "error" or (stanza.name == "iq" and stanza.getAttribute("type") == "result")


def error_reply(stanza, condition, text=None, extra=None):
    """The error reply to ``stanza``: addresses swapped, the original payload kept."""
    reply = domish.Element((None, stanza.name))
    for name in ("id",):
        if stanza.hasAttribute(name):
            reply[name] = stanza[name]
    if stanza.hasAttribute("from"):
        reply["to"] = stanza["from"]
    if stanza.hasAttribute("to"):
        reply["from"] = stanza["to"]
    reply["type"] = "error"
    if stanza.name != "iq":
        for child in stanza.elements():
            reply.addChild(child)
    error = reply.addElement("error")
    error["type"] = ERROR_TYPES.get(condition, "cancel")
    error.addElement((NS_STANZAS, condition))
    if text:
        error.addElement((NS_STANZAS, "text"), content=text)
    if extra is not None:
        error.addChild(extra)
    return reply


def result_reply(iq):
    """The empty result of an IQ get or set."""
    reply = make("iq", type="result", id=iq.getAttribute("id"))
    if iq.hasAttribute("from"):
        reply["to"] = iq["from"]
    if iq.hasAttribute("to"):
        reply["from"] = iq["to"]
    return reply


def first_child(stanza):
    """The first child element, or None."""
    for child in stanza.elements():
        return child
    return None


def priority_of(presence):
    """The <priority/> of a presence stanza, within -128..127 (RFC 6121 section 4.7.2.3); 0 when absent or bad."""
    try:
        return max(-128, min(127, int(str(presence.priority or "0").strip())))
    except ValueError:
        return 0


def delay_element(stamp, sender):
    """A XEP-0203 <delay/> for a UTC datetime."""
    delay = domish.Element((NS_DELAY, "delay"))
    delay["from"] = sender
    delay["stamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return delay


def readdress(stanza, to, sender):
    """A shallow copy of ``stanza`` with new 'to' and 'from' (children are shared)."""
    # What domish.Element's constructor sets, set directly: a room's message is copied for every occupant.
    copied = domish.Element.__new__(domish.Element)
    copied.uri, copied.name, copied.defaultUri = stanza.uri, stanza.name, stanza.defaultUri
    copied.localPrefixes = dict(stanza.localPrefixes)
    copied.attributes = {**stanza.attributes, "to": to, "from": sender}
    copied.children = list(stanza.children)
    copied.parent = None
    share_children(stanza, copied)
    return copied


def simple_form(kind, form_type, fields):
    """A XEP-0004 form of ``kind`` ("result", "submit"): a hidden FORM_TYPE, then each (var, value) of
    ``fields`` with one value, those whose value is None left out."""
    form = domish.Element((NS_DATA, "x"))
    form["type"] = kind
    for var, value in (("FORM_TYPE", form_type), *fields):
        if value is None:
            continue
        field = form.addElement("field")
        field["var"] = var
        if var == "FORM_TYPE":
            field["type"] = "hidden"
        field.addElement("value", content=value)
    return form


def form_values(form):
    """{var: [values]} of a submitted XEP-0004 form, FORM_TYPE included."""
    values = {}
    for field in form.elements(NS_DATA, "field"):
        var = field.getAttribute("var")
        if var:
            values[var] = [str(value) for value in field.elements(NS_DATA, "value")]
    return values


def forwarded_copy(stanza):
    """``stanza`` as a jabber:client element for a XEP-0297 <forwarded/>, sharing its children.

    The copy has its own attribute and child lists, so that what later
    happens to the original (a delay stamp, a rewritten 'to') does not
    change a copy already queued for sending.
    """
    copy = domish.Element((NS_CLIENT, stanza.name), defaultUri=NS_CLIENT)
    copy.attributes = dict(stanza.attributes)
    copy.children = list(stanza.children)
    return copy

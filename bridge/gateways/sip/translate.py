"""SIP MESSAGE <-> XMPP chat messages, and SIP status codes <-> stanza errors.

Pure functions at the gateway's one boundary: no I/O, no clock, no
randomness (Call-ID, tag and CSeq of a new request are passed in).  The
mapping follows RFC 7572 (which builds on RFC 3428):

====================  ==========================================
XMPP                  SIP
====================  ==========================================
from                  From (URI; our tag passed in)
to                    Request-URI and To
<body/>               text/plain body (charset)
<subject/>            Subject
<thread/>             Call-ID
id                    no field; made from Call-ID and CSeq inbound
xml:lang              Content-Language
type                  no field; inbound messages are type chat
====================  ==========================================

Other content types: ``message/cpim`` wrapping text/plain is unwrapped,
``application/im-iscomposing+xml`` (RFC 3994) becomes a chat state
(XEP-0085) and back; anything else is refused with 415 Unsupported Media
Type and an Accept header listing what is taken (``Refusal``).

Loop guard: a message that no person wrote (a failure notice, an
auto-reply) carries ``Auto-Submitted`` (the RFC 3834 vocabulary) in SIP and
an ``<auto-submitted/>`` element in XMPP; translation carries the marker
across, and the gateway never produces a failure notice for a marked
message or for an error (``may_notify_failure``).
"""

import codecs
import re
from dataclasses import dataclass, field

from bridge.core.stanza import ERROR_TYPES, NS_STANZAS, error_reply, make, parse_jid
from bridge.core.xmlstream import NS_XML
from bridge.gateways.sip.addressing import AddressError, as_uri
from bridge.gateways.sip.message import (
    REASON_PHRASES, URI, GrammarError, Headers, Request, make_response, parse_params, unquote,
)
from bridge.gateways.sip.presence import PresenceDocumentError, clean_text, parse_xml_body

NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_ISCOMPOSING = "urn:ietf:params:xml:ns:im-iscomposing"
NS_AUTO_SUBMITTED = "urn:x-bridge:auto-submitted"
AUTO_SUBMITTED = "Auto-Submitted"

TEXT_PLAIN = "text/plain"
CPIM = "message/cpim"
ISCOMPOSING = "application/im-iscomposing+xml"
ACCEPTED_TYPES = (TEXT_PLAIN, CPIM, ISCOMPOSING)
ACCEPT = ", ".join(ACCEPTED_TYPES)
MAX_FORWARDS = 70
ACCEPTED = 202  # RFC 3428: the gateway stores the message before it answers

# Charsets a text/plain body may declare, by Python codec name.
CHARSETS = frozenset(
    ["utf-8", "ascii", "utf-16", "utf-16-be", "utf-16-le", "koi8-r"]
    + [f"iso8859-{n}" for n in range(1, 16) if n != 12]
    + [f"cp125{n}" for n in range(9)]
)

_CALL_ID = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?$")
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")
_MAX_CALL_ID = 256
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")

# SIP final status -> XMPP stanza error condition (RFC 7572 section 7 points
# to this kind of table; the choices are ours, docs/sip-mapping.md).
STATUS_TO_CONDITION = {
    301: "gone", 400: "bad-request", 401: "not-authorized", 402: "bad-request",
    403: "forbidden", 404: "item-not-found", 405: "feature-not-implemented",
    406: "not-acceptable", 407: "not-authorized", 408: "remote-server-timeout",
    410: "gone", 413: "policy-violation", 414: "jid-malformed", 415: "not-acceptable",
    416: "jid-malformed", 420: "feature-not-implemented", 421: "feature-not-implemented",
    423: "bad-request", 480: "recipient-unavailable", 481: "item-not-found",
    482: "service-unavailable", 483: "service-unavailable", 484: "jid-malformed",
    485: "item-not-found", 486: "recipient-unavailable", 488: "not-acceptable",
    489: "bad-request", 491: "unexpected-request", 493: "bad-request",
    500: "internal-server-error", 501: "feature-not-implemented",
    502: "remote-server-not-found", 503: "service-unavailable", 504: "remote-server-timeout",
    505: "feature-not-implemented", 513: "policy-violation",
    600: "recipient-unavailable", 603: "forbidden", 604: "item-not-found", 606: "not-acceptable",
}
# An unlisted code is read as the x00 of its class (RFC 3261 section 8.1.3.2).
_CLASS_CONDITION = {3: "redirect", 4: "bad-request", 5: "internal-server-error", 6: "service-unavailable"}

# XMPP stanza error condition -> SIP status.
CONDITION_TO_STATUS = {
    "bad-request": 400, "conflict": 400, "feature-not-implemented": 501, "forbidden": 403,
    "gone": 410, "internal-server-error": 500, "item-not-found": 404, "jid-malformed": 400,
    "not-acceptable": 406, "not-allowed": 403, "not-authorized": 403, "policy-violation": 403,
    "recipient-unavailable": 480, "redirect": 480, "registration-required": 403,
    "remote-server-not-found": 404, "remote-server-timeout": 504, "resource-constraint": 503,
    "service-unavailable": 503, "subscription-required": 403, "undefined-condition": 500,
    "unexpected-request": 400,
}

# Error types of the conditions that bridge.core.stanza does not list.
_EXTRA_TYPES = {"gone": "cancel", "redirect": "modify", "unexpected-request": "wait",
                "subscription-required": "auth"}


class Refusal(Exception):
    """A SIP request that is answered with an error status instead of translated."""

    def __init__(self, status, reason, headers=()):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.headers = list(headers)

    def response(self, request, to_tag=None):
        """The response to send for ``request``."""
        return make_response(request, self.status, to_tag=to_tag, headers=self.headers)


class StanzaRefused(Exception):
    """An XMPP stanza that is answered with a stanza error instead of translated."""

    def __init__(self, condition, text=None):
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text

    def reply(self, stanza):
        return stanza_error(stanza, self.condition, self.text)


@dataclass
class ContentType:
    media: str  # type/subtype, lowercase
    params: dict = field(default_factory=dict)

    @property
    def charset(self):
        value = self.params.get("charset")
        return unquote(value) if value else None


def parse_content_type(value):
    """``text/plain;charset=UTF-8`` into a ``ContentType``; Refusal 400 when malformed."""
    media, sep, rest = (value or "").partition(";")
    media = media.strip().lower()
    if not re.match(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$", media):
        raise Refusal(400, f"malformed Content-Type {value!r}")
    try:
        params = parse_params(sep + rest)
    except GrammarError as e:
        raise Refusal(400, f"malformed Content-Type parameters: {e}") from None
    return ContentType(media, params)


def decode_text(body, charset):
    """Decode a text body; Refusal 415 for an unknown charset, 400 for bad bytes."""
    name = (charset or "utf-8").strip().lower()
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        codec = None
    if codec not in CHARSETS:
        raise Refusal(415, f"charset {name!r} is not supported",
                      [("Accept", f"{TEXT_PLAIN};charset=UTF-8")])
    try:
        text = body.decode(codec)
    except UnicodeDecodeError:
        raise Refusal(400, f"body is not valid {name}") from None
    return clean_text(text.lstrip("\ufeff").replace("\r\n", "\n"))


# --- the loop guard -------------------------------------------------------------

def is_automatic_request(request):
    """True when a SIP request says that no person wrote it."""
    value = request.headers.get(AUTO_SUBMITTED)
    return value is not None and value.split(";", 1)[0].strip().lower() != "no"


def is_automatic_stanza(stanza):
    """True for an error stanza or one marked auto-submitted."""
    if stanza.getAttribute("type") == "error":
        return True
    return any(c.uri == NS_AUTO_SUBMITTED and c.name == "auto-submitted" for c in stanza.elements())


def may_notify_failure(original):
    """Whether a failure to deliver ``original`` (a Request or a stanza) may be reported.

    Never for errors, nor for anything marked automatic: a notice about a
    notice is how two auto-responders bounce forever.
    """
    if isinstance(original, Request):
        return not is_automatic_request(original)
    return not is_automatic_stanza(original)


def _mark_stanza(stanza, value):
    stanza.addElement((NS_AUTO_SUBMITTED, "auto-submitted"), content=value)


def _stanza_mark(stanza):
    for child in stanza.elements():
        if child.uri == NS_AUTO_SUBMITTED and child.name == "auto-submitted":
            return str(child).strip() or "auto-generated"
    return None


# --- SIP -> XMPP ----------------------------------------------------------------

def _unwrap_cpim(body):
    """The content type and body inside a message/cpim wrapper (RFC 3862)."""
    normalized = body.replace(b"\r\n", b"\n")
    parts = normalized.split(b"\n\n", 2)
    if len(parts) < 3:
        raise Refusal(400, "malformed message/cpim body")
    content_headers = parts[1].decode("utf-8", "replace")
    content_type = None
    for line in content_headers.split("\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            content_type = value.strip()
    inner = parse_content_type(content_type or TEXT_PLAIN)
    if inner.media != TEXT_PLAIN:
        raise Refusal(415, f"message/cpim wrapping {inner.media} is not supported", [("Accept", ACCEPT)])
    return inner, parts[2]


def _composing_state(body, charset):
    try:
        root = parse_xml_body(body, charset)
    except PresenceDocumentError as e:
        raise Refusal(400, str(e)) from None
    if (root.uri, root.name) != (NS_ISCOMPOSING, "isComposing"):
        raise Refusal(400, "not an isComposing document")
    for child in root.elements():
        if child.uri == NS_ISCOMPOSING and child.name == "state":
            state = str(child).strip().lower()
            return "composing" if state == "active" else "active"
    raise Refusal(400, "isComposing without a state")


def message_from_sip(request, addresses, id=None):
    """The XMPP <message/> for a SIP MESSAGE, or None when there is nothing to deliver.

    Raises ``Refusal`` with the status to answer: 400 for a malformed or
    unmappable request, 404 for a recipient that no JID stands for, 415
    (with Accept) for content that cannot be carried, 416 for a URI scheme
    other than sip, sips or tel.
    """
    if request.method != "MESSAGE":
        raise ValueError(f"{request.method} is not a MESSAGE")
    try:
        sender = addresses.jid_for_uri(request.from_address.uri)
    except (AddressError, GrammarError) as e:
        raise Refusal(400, f"From cannot be mapped to a JID: {e}") from None
    try:
        target = as_uri(request.uri if isinstance(request.uri, URI) else str(request.uri))
    except AddressError as e:
        raise Refusal(400, f"bad Request-URI: {e}") from None
    if target.scheme not in ("sip", "sips", "tel"):
        raise Refusal(416, f"URI scheme {target.scheme!r} is not supported")
    try:
        recipient = addresses.jid_for_uri(target)
    except AddressError as e:
        raise Refusal(404, f"no such recipient: {e}") from None
    if request.headers.get("Content-Encoding") not in (None, "identity"):
        raise Refusal(415, "content codings are not supported", [("Accept-Encoding", "identity")])
    if not request.body:
        return None
    content = parse_content_type(request.headers.get("Content-Type") or TEXT_PLAIN)
    body = request.body
    chat_state = None
    text = None
    if content.media == CPIM:
        content, body = _unwrap_cpim(body)
    if content.media == TEXT_PLAIN:
        text = decode_text(body, content.charset)
    elif content.media == ISCOMPOSING:
        chat_state = _composing_state(body, content.charset)
    else:
        raise Refusal(415, f"{content.media} is not supported", [("Accept", ACCEPT)])

    call_id = request.call_id
    try:
        cseq = request.cseq.number
    except GrammarError:
        raise Refusal(400, "malformed CSeq") from None
    message = make("message", to=recipient.full(), sender=sender.full(), type="chat",
                   id=id if id is not None else f"{call_id}-{cseq}")
    language = request.headers.get("Content-Language")
    if language:
        language = language.split(",")[0].strip()
        if _LANGUAGE_TAG.match(language):
            message[(NS_XML, "lang")] = language
    subject = request.headers.get("Subject")
    if subject and text is not None:
        message.addElement("subject", content=clean_text(subject))
    if text is not None:
        message.addElement("body", content=text)
    if chat_state is not None:
        message.addElement((NS_CHATSTATES, chat_state))
    if call_id:
        message.addElement("thread", content=clean_text(call_id))
    if is_automatic_request(request):
        _mark_stanza(message, request.headers.get(AUTO_SUBMITTED).split(";", 1)[0].strip().lower())
    return message


# --- XMPP -> SIP ----------------------------------------------------------------

def _child_text(stanza, name, lang):
    """The text of the child ``name`` in the stanza's language, else the first."""
    first = None
    for child in stanza.elements():
        if child.uri not in (None, stanza.uri) or child.name != name:
            continue
        child_lang = child.attributes.get((NS_XML, "lang"))
        if child_lang in (None, lang):
            return str(child)
        if first is None:
            first = str(child)
    return first


def _chat_state(stanza):
    for child in stanza.elements():
        if child.uri == NS_CHATSTATES:
            return child.name
    return None


def _iscomposing_body(active):
    state = "active" if active else "idle"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<isComposing xmlns="{NS_ISCOMPOSING}"><state>{state}</state>'
            f"<contenttype>{TEXT_PLAIN}</contenttype></isComposing>\n").encode("utf-8")


def header_safe(text):
    """``text`` with control characters (CR, LF...) folded to spaces, for a header value."""
    return _HEADER_UNSAFE.sub(" ", text).strip()


def display_name_of(name):
    """``name`` as the quoted display name before an address (RFC 3261 quoted-string), or nothing."""
    if not name:
        return ""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" '


def message_to_sip(stanza, addresses, call_id, from_tag, cseq=1, max_body_bytes=None):
    """The SIP MESSAGE for an XMPP <message/>, or None when SIP has no use for it.

    ``call_id``, ``from_tag`` and ``cseq`` are the caller's (Call-ID is the
    stanza's <thread/> instead when that is a valid Call-ID, RFC 7572).
    Errors give None (they are never translated nor answered).  Groupchat
    crosses only from a room of this server (``addresses.room_domains``, to
    a phone that takes part): it comes from the room's address, with the
    occupant's nick as the display name, so that an answer goes to the room.
    Other groupchat raises ``StanzaRefused``, as do addresses without a SIP
    form and bodies over ``max_body_bytes``.  Via is left to the transport.
    """
    kind = stanza.getAttribute("type") or "normal"
    if kind == "error":
        return None
    sender_text = stanza.getAttribute("from") or ""
    display_name = None
    if kind == "groupchat":
        occupant = parse_jid(sender_text)
        if occupant is None or occupant.host not in addresses.room_domains:
            raise StanzaRefused("service-unavailable", "groupchat does not cross the SIP gateway")
        display_name = header_safe(occupant.resource or "")
        sender_text = occupant.userhost()
    try:
        sender = addresses.uri_for_jid(sender_text)
    except AddressError as e:
        raise StanzaRefused("jid-malformed", f"sender: {e}") from None
    try:
        target = addresses.uri_for_jid(stanza.getAttribute("to") or "")
    except AddressError as e:
        raise StanzaRefused("jid-malformed", str(e)) from None

    lang = stanza.getAttribute((NS_XML, "lang"))
    text = _child_text(stanza, "body", lang)
    if text is not None:
        body = text.replace("\r\n", "\n").encode("utf-8")
        content_type = f"{TEXT_PLAIN};charset=UTF-8"
    else:
        state = _chat_state(stanza)
        if state not in ("composing", "paused", "active"):
            return None
        body = _iscomposing_body(state == "composing")
        content_type = ISCOMPOSING
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise StanzaRefused("policy-violation", f"SIP messages are limited to {max_body_bytes} bytes here")

    thread = _child_text(stanza, "thread", None)
    if thread and len(thread) <= _MAX_CALL_ID and _CALL_ID.match(thread.strip()):
        call_id = thread.strip()
    headers = Headers()
    headers.add("Max-Forwards", MAX_FORWARDS)
    headers.add("From", f"{display_name_of(display_name)}<{sender}>;tag={from_tag}")
    to_uri = str(target)
    headers.add("To", f"<{to_uri}>")
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} MESSAGE")
    headers.add("Content-Type", content_type)
    if lang and _LANGUAGE_TAG.match(lang):
        headers.add("Content-Language", lang)
    subject = _child_text(stanza, "subject", lang) if text is not None else None
    if subject and header_safe(subject):
        headers.add("Subject", header_safe(subject))
    mark = _stanza_mark(stanza)
    if mark:
        headers.add(AUTO_SUBMITTED, header_safe(mark))
    return Request("MESSAGE", target, headers, body)


# --- errors both ways ----------------------------------------------------------

def condition_for_status(status):
    """The XMPP error condition for a SIP final error status (3xx-6xx)."""
    if status in STATUS_TO_CONDITION:
        return STATUS_TO_CONDITION[status]
    if status // 100 in _CLASS_CONDITION and 300 <= status < 700:
        return _CLASS_CONDITION[status // 100]
    raise ValueError(f"{status} is not an error status")


def status_for_condition(condition):
    """The SIP status for an XMPP error condition (500 for unknown ones)."""
    return CONDITION_TO_STATUS.get(condition, 500)


def stanza_error(stanza, condition, text=None):
    """The error reply to ``stanza`` with ``condition`` and its RFC 6120 type."""
    reply = error_reply(stanza, condition, text)
    if condition not in ERROR_TYPES and condition in _EXTRA_TYPES:
        reply.error["type"] = _EXTRA_TYPES[condition]
    return reply


def condition_of(error_stanza):
    """The defined condition of an error stanza, or undefined-condition."""
    for child in error_stanza.elements():
        if child.name == "error":
            for condition in child.elements():
                if condition.uri == NS_STANZAS and condition.name != "text":
                    return condition.name
    return "undefined-condition"


def error_for_response(stanza, response):
    """The XMPP error for ``stanza`` after its MESSAGE got ``response``.

    None for 1xx and 2xx, and None when ``stanza`` is itself an error
    (errors are never answered).  The error text names the SIP status.
    """
    if response.status < 300 or stanza.getAttribute("type") == "error":
        return None
    condition = condition_for_status(response.status)
    reason = response.reason or REASON_PHRASES.get(response.status, "")
    return stanza_error(stanza, condition, f"SIP {response.status} {reason}".strip())


def response_for_error(request, error_stanza, to_tag=None):
    """The SIP response to ``request`` when XMPP refused it before it was accepted."""
    return make_response(request, status_for_condition(condition_of(error_stanza)), to_tag=to_tag)


def failure_notice(error_stanza, addresses, call_id, from_tag, cseq=1):
    """A MESSAGE telling a SIP sender that a message it sent, already answered 202, was not delivered.

    ``error_stanza`` is the XMPP error that came back for it (from the
    original recipient, to the sender's JID, carrying the original payload).
    The notice goes from the original recipient to the sender's address
    (for a local user, the caller sets the Request-URI of each phone), marked
    ``Auto-Submitted: auto-generated``.  None when the original was itself
    automatic, so that a notice about a notice is never sent, or when either
    address has no SIP form.
    """
    if _stanza_mark(error_stanza) is not None:
        return None
    try:
        sender = addresses.uri_for_jid(parse_jid(error_stanza.getAttribute("from") or "").userhostJID())
        target = addresses.uri_for_jid(parse_jid(error_stanza.getAttribute("to") or "").userhostJID())
    except (AddressError, AttributeError):
        return None
    condition = condition_of(error_stanza)
    headers = Headers()
    headers.add("Max-Forwards", MAX_FORWARDS)
    headers.add("From", f"<{sender}>;tag={from_tag}")
    headers.add("To", f"<{target}>")
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} MESSAGE")
    headers.add("Content-Type", f"{TEXT_PLAIN};charset=UTF-8")
    headers.add(AUTO_SUBMITTED, "auto-generated")
    body = f"Your message was not delivered ({condition.replace('-', ' ')}).".encode("utf-8")
    return Request("MESSAGE", target, headers, body)

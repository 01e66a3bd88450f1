"""SIMPLE presence <-> XMPP presence (pure functions).

PIDF documents (RFC 3863) with RPID activities (RFC 4480) are read and
written here, and mapped to XMPP presence as RFC 8048 describes: PIDF
``basic`` open/closed is available/unavailable, a ``note`` is the status
text.  RFC 8048 leaves the finer availability states to RPID; the table of
``SHOW_TO_ACTIVITIES`` and ``ACTIVITY_TO_SHOW`` is bridge's choice, written
out in docs/sip-mapping.md.

Documents are parsed with the XMPP stream's restricted parser
(``bridge.core.xmlstream``): no DTD, no entity declarations, no comments or
processing instructions, a size limit and a depth limit.  Building a PIDF
body needs no clock: the caller supplies the tuple id (``tuple_id_for``
derives a stable one from a resource).

RPID activities and moods also become the user's PEP activity (XEP-0108)
and mood (XEP-0107), the note their text: ``ACTIVITY_TO_XEP0108`` is
bridge's table, XEP-0107's moods include all of RFC 4480's.

The subscription helpers translate between roster subscriptions (RFC 6121)
and the Subscription-State, Event and Accept headers of SUBSCRIBE and
NOTIFY (RFC 6665, RFC 3856).
"""

import hashlib
import re
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from twisted.words.xish import domish

from bridge.core.stanza import make
from bridge.core.xmlstream import NS_STREAMS, NS_XML, StreamError, parse_document
from bridge.gateways.sip.message import GrammarError, number, parse_params, unquote

NS_PIDF = "urn:ietf:params:xml:ns:pidf"
NS_DM = "urn:ietf:params:xml:ns:pidf:data-model"
NS_RPID = "urn:ietf:params:xml:ns:pidf:rpid"
PIDF_CONTENT_TYPE = "application/pidf+xml"
PRESENCE_EVENT = "presence"
MAX_DOCUMENT_BYTES = 65536

SHOWS = ("away", "chat", "dnd", "xa")
# The text of <rpid:other/> that carries "extended away", which RPID lacks.
EXTENDED_AWAY = "extended-away"

# XMPP <show/> -> RPID activities (an empty tuple: no <rpid:activities/>).
SHOW_TO_ACTIVITIES = {
    None: (),
    "chat": (),
    "away": ("away",),
    "xa": ("away", ("other", EXTENDED_AWAY)),
    "dnd": ("busy",),
}

# RPID activity -> XMPP <show/>; activities not listed (working, unknown,
# other) leave the person available.
ACTIVITY_TO_SHOW = {
    "busy": "dnd", "on-the-phone": "dnd", "meeting": "dnd", "appointment": "dnd",
    "performance": "dnd", "presentation": "dnd", "steering": "dnd", "worship": "dnd",
    "away": "away", "breakfast": "away", "dinner": "away", "meal": "away",
    "in-transit": "away", "travel": "away", "shopping": "away", "playing": "away",
    "spectator": "away", "tv": "away", "looking-for-work": "away",
    "holiday": "xa", "vacation": "xa", "sleeping": "xa", "permanent-absence": "xa",
}
# When several activities are given, the strongest wins.
_SHOW_RANK = {"dnd": 3, "xa": 2, "away": 1}

NS_ACTIVITY = "http://jabber.org/protocol/activity"
NS_MOOD = "http://jabber.org/protocol/mood"
# RPID activity -> XEP-0108 (general, specific or None).  Not listed (busy, unknown, other,
# looking-for-work, performance): no activity; busy is <show>dnd</show> already.
ACTIVITY_TO_XEP0108 = {
    "appointment": ("having_appointment", None),
    "away": ("inactive", None),
    "breakfast": ("eating", "having_breakfast"),
    "dinner": ("eating", "having_dinner"),
    "holiday": ("inactive", "scheduled_holiday"),
    "in-transit": ("traveling", None),
    "meal": ("eating", None),
    "meeting": ("working", "in_a_meeting"),
    "on-the-phone": ("talking", "on_the_phone"),
    "permanent-absence": ("inactive", None),
    "playing": ("relaxing", "gaming"),
    "presentation": ("working", None),
    "shopping": ("relaxing", "shopping"),
    "sleeping": ("inactive", "sleeping"),
    "spectator": ("relaxing", None),
    "steering": ("traveling", "driving"),
    "travel": ("traveling", None),
    "tv": ("relaxing", "watching_tv"),
    "vacation": ("inactive", "on_vacation"),
    "working": ("working", None),
    "worship": ("inactive", "praying"),
}
# The moods of RFC 4480 section 3.2 (its "unknown" and "other" aside): each is one of XEP-0107's too.
MOODS = frozenset((
    "afraid amazed angry annoyed anxious ashamed bored brave calm cold confused contented cranky curious "
    "depressed disappointed disgusted distracted embarrassed excited flirtatious frustrated grumpy guilty "
    "happy hot humbled humiliated hungry hurt impressed in_awe in_love indignant interested invincible "
    "jealous lonely mean moody nervous neutral offended playful proud relieved remorseful restless sad "
    "sarcastic serious shocked shy sick sleepy stressed surprised thirsty worried").split())
# A note longer than this is cut in the PEP payloads (the presence status keeps it whole).
MAX_PEP_TEXT_CHARS = 1024

_XML_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")
_XML_DECL = re.compile(r"^<\?xml\s[^?]*\?>")
_DECL_ENCODING = re.compile(r"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class PresenceDocumentError(ValueError):
    """A body that is not an acceptable XML, PIDF or Subscription-State value."""


@dataclass(frozen=True)
class Availability:
    """The least common denominator of both sides' presence."""

    available: bool
    show: str | None = None  # away, chat, dnd, xa; None when plainly available
    status: str | None = None
    lang: str | None = None


@dataclass(frozen=True)
class PresenceDocument:
    """A parsed PIDF document: its entity, its tuples and the aggregate."""

    entity: str
    availability: Availability
    tuples: tuple = ()  # (id, basic "open"/"closed"/None, note)
    activities: tuple = ()  # RPID activity names (other as "other:<text>")
    moods: tuple = ()  # RPID mood names (other as "other:<text>")


# --- XML bodies --------------------------------------------------------------

def clean_text(text):
    """``text`` without characters XML 1.0 cannot carry."""
    return _INVALID_XML_CHARS.sub("", text)


def parse_xml_body(body, charset=None, max_bytes=MAX_DOCUMENT_BYTES):
    """The root element of an XML body (bytes), with the restricted parser.

    The XML declaration is checked and removed (its encoding, else
    ``charset``, else UTF-8, decodes the bytes); a DTD, entity, comment or
    processing instruction, a second root or trailing text is refused.
    """
    if len(body) > max_bytes:
        raise PresenceDocumentError(f"XML body larger than {max_bytes} bytes")
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    head = body[:200].decode("latin-1")
    declared = None
    match = _XML_DECL.match(head)
    if match:
        found = _DECL_ENCODING.search(match.group(0))
        declared = found.group(1) if found else None
    encoding = declared or charset or "utf-8"
    try:
        text = body.decode(encoding)
    except (LookupError, UnicodeDecodeError) as e:
        raise PresenceDocumentError(f"XML body cannot be decoded as {encoding}: {e}") from None
    text = _XML_DECL.sub("", text.lstrip("\ufeff"), count=1)
    try:
        found, _ = parse_document([f"<s:stream xmlns:s='{NS_STREAMS}'>".encode() + text.encode("utf-8")],
                                  max_bytes + 1024)
    except StreamError as e:
        raise PresenceDocumentError(f"XML body refused: {e}") from None
    if len(found) != 1:
        raise PresenceDocumentError("XML body must hold exactly one complete root element")
    return found[0]


def _children(element, uri, name):
    return [c for c in element.elements() if c.uri == uri and c.name == name]


def _text(element):
    text = str(element).strip()
    return text or None


# --- PIDF -> Availability ---------------------------------------------------

def _activities(element, container="activities"):
    names = []
    for activities in _descendants(element, NS_RPID, container):
        for child in activities.elements():
            if child.uri != NS_RPID or child.name == "note":
                continue
            if child.name == "other":
                names.append(f"other:{(_text(child) or '').lower()}")
            else:
                names.append(child.name)
    return names


def _descendants(element, uri, name):
    for child in element.elements():
        if child.uri == uri and child.name == name:
            yield child
        else:
            yield from _descendants(child, uri, name)


def show_for_activities(activities, idle=False):
    """The XMPP <show/> for RPID activity names (``other:<text>`` for <other/>)."""
    best = None
    for name in activities:
        show = "xa" if name == f"other:{EXTENDED_AWAY}" else ACTIVITY_TO_SHOW.get(name)
        if show is not None and (best is None or _SHOW_RANK[show] > _SHOW_RANK[best]):
            best = show
    if best is None and idle:
        best = "away"
    return best


def _note(element, uri):
    """(text, lang) of the first non-empty note child in namespace ``uri``."""
    for note in _children(element, uri, "note"):
        text = _text(note)
        if text:
            return text, note.attributes.get((NS_XML, "lang"))
    return None, None


def parse_pidf(body, charset=None):
    """Parse a PIDF body into a ``PresenceDocument``.

    Available when any tuple's basic status is open; the status text is the
    note of the first open tuple that has one, else of the person, else of
    the document, else of any tuple.  Activities are read from the person
    (RFC 4479) and, for older clients, from anywhere else in the document.
    """
    root = parse_xml_body(body, charset)
    if (root.uri, root.name) != (NS_PIDF, "presence"):
        raise PresenceDocumentError("not a PIDF document: the root must be <presence/> in " + NS_PIDF)
    entity = root.getAttribute("entity")
    if not entity:
        raise PresenceDocumentError("PIDF <presence/> without an entity")
    tuples = []
    for element in _children(root, NS_PIDF, "tuple"):
        basic = None
        for status in _children(element, NS_PIDF, "status"):
            for value in _children(status, NS_PIDF, "basic"):
                basic = (_text(value) or "").lower()
        if basic not in (None, "open", "closed"):
            raise PresenceDocumentError(f"PIDF basic status {basic!r} is neither open nor closed")
        note, lang = _note(element, NS_PIDF)
        tuples.append((element.getAttribute("id"), basic, note, lang))
    persons = _children(root, NS_DM, "person")
    activities = _activities(root)
    idle = any(_text(e) == "idle" for e in _descendants(root, NS_RPID, "user-input"))
    available = any(basic == "open" for _, basic, _, _ in tuples)
    candidates = [(n, l) for _, b, n, l in tuples if b == "open" and n]
    for person in persons:
        candidates.append(_note(person, NS_DM))
    candidates.append(_note(root, NS_PIDF))
    candidates.extend((n, l) for _, _, n, l in tuples if n)
    status, lang = next(((n, l) for n, l in candidates if n), (None, None))
    show = show_for_activities(activities, idle) if available else None
    return PresenceDocument(
        entity=entity,
        availability=Availability(available, show, status, lang),
        tuples=tuple((i, b, n) for i, b, n, _ in tuples),
        activities=tuple(activities),
        moods=tuple(_activities(root, "mood")))


# --- PIDF -> PEP activity and mood --------------------------------------------

def _with_text(element, text):
    if text:
        element.addElement("text", content=clean_text(text)[:MAX_PEP_TEXT_CHARS])
    return element


def activity_payload(document):
    """The XEP-0108 <activity/> for the first RPID activity it knows, the note as its text; an empty
    <activity/> (no activity) when none is known, the person is unavailable or ``document`` is None."""
    activity = domish.Element((NS_ACTIVITY, "activity"))
    if document is None:
        return activity
    state = document.availability
    known = [ACTIVITY_TO_XEP0108[name] for name in document.activities if name in ACTIVITY_TO_XEP0108]
    if not state.available or not known:
        return activity
    general, specific = known[0]
    category = activity.addElement(general)
    if specific:
        category.addElement(specific)
    return _with_text(activity, state.status)


def mood_payload(document):
    """The XEP-0107 <mood/> for the first RPID mood, the note as its text; an empty <mood/> when
    there is none, the person is unavailable or ``document`` is None."""
    mood = domish.Element((NS_MOOD, "mood"))
    if document is None:
        return mood
    state = document.availability
    known = [name for name in document.moods if name in MOODS]
    if not state.available or not known:
        return mood
    mood.addElement(known[0])
    return _with_text(mood, state.status)


# --- Availability -> PIDF ---------------------------------------------------

def tuple_id_for(resource):
    """A stable, valid XML id for the tuple of an XMPP resource."""
    return "t" + hashlib.sha256((resource or "").encode("utf-8")).hexdigest()[:16]


def build_pidf(entity, tuples):
    """A PIDF body (bytes) for ``entity`` from ``[(tuple_id, Availability), ...]``.

    Each tuple carries basic open/closed and the status text as its note;
    the person element carries the RPID activities of the first available
    tuple (the caller lists the most relevant resource first).
    """
    if not tuples:
        raise ValueError("a PIDF document needs at least one tuple")
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<presence xmlns="{NS_PIDF}" xmlns:dm="{NS_DM}" xmlns:rpid="{NS_RPID}" entity={quoteattr(entity)}>']
    shown = None
    for tuple_id, state in tuples:
        if not _XML_ID.match(tuple_id):
            raise ValueError(f"tuple id {tuple_id!r} is not an XML id")
        basic = "open" if state.available else "closed"
        lines.append(f'<tuple id="{tuple_id}"><status><basic>{basic}</basic></status>')
        if state.status:
            lang = f" xml:lang={quoteattr(state.lang)}" if state.lang else ""
            lines.append(f"<note{lang}>{escape(clean_text(state.status))}</note>")
        lines.append("</tuple>")
        if shown is None and state.available:
            shown = (tuple_id, state)
    if shown is not None:
        activities = SHOW_TO_ACTIVITIES.get(shown[1].show, ())
        if activities:
            items = "".join(f"<rpid:{a[0]}>{escape(a[1])}</rpid:{a[0]}>" if isinstance(a, tuple)
                            else f"<rpid:{a}/>" for a in activities)
            lines.append(f'<dm:person id="p{shown[0]}"><rpid:activities>{items}</rpid:activities></dm:person>')
    lines.append("</presence>")
    return ("\n".join(lines) + "\n").encode("utf-8")


# --- XMPP presence <-> Availability -----------------------------------------

def availability_from_stanza(presence):
    """The ``Availability`` of an XMPP presence stanza (available or unavailable).

    An unknown <show/> counts as plainly available; the status is the
    first <status/> without xml:lang, else the first one.
    """
    kind = presence.getAttribute("type")
    if kind not in (None, "unavailable"):
        raise ValueError(f"presence of type {kind!r} carries no availability")
    show = None
    statuses = []
    for child in presence.elements():
        if child.uri not in (None, presence.uri):
            continue
        if child.name == "show" and kind is None:
            value = str(child).strip()
            show = value if value in SHOWS else None
        elif child.name == "status" and _text(child):
            statuses.append((_text(child), child.attributes.get((NS_XML, "lang"))))
    plain = [s for s in statuses if s[1] is None]
    status, lang = (plain or statuses or [(None, None)])[0]
    return Availability(kind is None, show, status, lang)


def presence_stanza(state, sender, to=None):
    """An XMPP <presence/> for ``state`` from ``sender`` (to ``to``, if given)."""
    presence = make("presence", to=to, sender=sender, type=None if state.available else "unavailable")
    if state.available and state.show in SHOWS:
        presence.addElement("show", content=state.show)
    if state.status:
        status = presence.addElement("status", content=clean_text(state.status))
        if state.lang:
            status[(NS_XML, "lang")] = state.lang
    return presence


# --- subscriptions -----------------------------------------------------------

@dataclass(frozen=True)
class SubscriptionState:
    """A parsed Subscription-State header value (RFC 6665 section 8.2.3)."""

    state: str  # active, pending, terminated
    expires: int | None = None
    reason: str | None = None
    retry_after: int | None = None
    params: dict = field(default_factory=dict)


def parse_subscription_state(value):
    """Parse a Subscription-State value such as ``terminated;reason=rejected``."""
    text = (value or "").strip()
    name, sep, rest = text.partition(";")
    name = name.strip().lower()
    if name not in ("active", "pending", "terminated"):
        raise PresenceDocumentError(f"unknown subscription state {name!r}")
    try:
        params = parse_params(sep + rest)
    except GrammarError as e:
        raise PresenceDocumentError(f"Subscription-State: {e}") from None
    numbers = {}
    for key in ("expires", "retry-after"):
        raw = params.get(key)
        if raw is not None:
            numbers[key] = number(raw)
            if numbers[key] is None:
                raise PresenceDocumentError(f"Subscription-State: bad {key} {raw!r}")
    reason = params.get("reason")
    return SubscriptionState(name, numbers.get("expires"), unquote(reason).lower() if reason else None,
                             numbers.get("retry-after"), params)


def subscription_state(subscription, pending=False, expires=3600):
    """The Subscription-State to send a SIP watcher, from the presentity's roster.

    ``subscription`` is the roster item's subscription for the watcher's JID
    (none, to, from, both); ``pending`` is true when the watcher's request
    awaits the user's decision.  Only ``from`` and ``both`` authorise the
    watcher, exactly as for an XMPP contact.
    """
    if subscription in ("from", "both"):
        return f"active;expires={expires}"
    if pending:
        return f"pending;expires={expires}"
    return "terminated;reason=rejected"


def presence_type_for_state(value):
    """The XMPP presence type a NOTIFY's Subscription-State means for the XMPP watcher.

    ``active`` is ``subscribed``; ``terminated`` with reason rejected or
    noresource is ``unsubscribed``; anything else (pending, a timeout, a
    deactivation to retry) changes nothing in XMPP and gives None.
    """
    state = parse_subscription_state(value) if isinstance(value, str) else value
    if state.state == "active":
        return "subscribed"
    if state.state == "terminated" and state.reason in ("rejected", "noresource"):
        return "unsubscribed"
    return None


def state_for_presence_type(kind, expires=3600):
    """The Subscription-State for a NOTIFY sent when the user answers a SIP watcher."""
    if kind == "subscribed":
        return f"active;expires={expires}"
    if kind == "unsubscribed":
        return "terminated;reason=rejected"
    raise ValueError(f"presence type {kind!r} does not answer a subscription")


def is_presence_event(value):
    """True when an Event header value names the presence package."""
    return (value or "").split(";", 1)[0].strip().lower() == PRESENCE_EVENT


def accepts_pidf(accept_values):
    """True when a SUBSCRIBE's Accept values allow PIDF (no Accept: the default)."""
    if not accept_values:
        return True
    for value in accept_values:
        media = value.split(";", 1)[0].strip().lower()
        if media in (PIDF_CONTENT_TYPE, "*/*", "application/*"):
            return True
    return False


def negotiate_expires(requested, default=3600, minimum=60, maximum=86400):
    """The granted expiry of a SUBSCRIBE (seconds), or raise ``IntervalTooBrief``.

    None takes the default; 0 stays 0 (a fetch or the end of the
    subscription, RFC 6665 section 4.2.1.4); above the maximum is lowered.
    """
    if requested is None:
        return default
    if requested == 0:
        return 0
    if requested < minimum:
        raise IntervalTooBrief(minimum)
    return min(requested, maximum)


class IntervalTooBrief(Exception):
    """Answer 423 Interval Too Brief with ``Min-Expires: minimum``."""

    def __init__(self, minimum):
        super().__init__(f"expiry below the minimum of {minimum} seconds")
        self.minimum = minimum


"""Tests for bridge.gateways.sip.presence: PIDF/RPID <-> XMPP presence, subscription helpers."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.xmlstream import parse_element
from bridge.gateways.sip.presence import (
    ACTIVITY_TO_XEP0108, MAX_PEP_TEXT_CHARS, NS_ACTIVITY, Availability, IntervalTooBrief, PresenceDocumentError,
    accepts_pidf, activity_payload, availability_from_stanza, mood_payload,
    build_pidf, is_presence_event, negotiate_expires, parse_pidf, parse_subscription_state,
    presence_stanza, presence_type_for_state, state_for_presence_type, subscription_state,
    tuple_id_for,
)

HEAD = ('<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
        'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:carol@pbx.example">')


def pidf(*parts, declaration=True):
    text = ('<?xml version="1.0" encoding="UTF-8"?>\n' if declaration else "") + HEAD + "".join(parts) + "</presence>"
    return text.encode("utf-8")


def tup(basic, note=None, tid="a1"):
    note = f"<note>{note}</note>" if note else ""
    return f'<tuple id="{tid}"><status><basic>{basic}</basic></status>{note}</tuple>'


def person(*activities, note=None):
    items = "".join(f"<rpid:{a}/>" if ":" not in a else f"<rpid:other>{a.split(':', 1)[1]}</rpid:other>"
                    for a in activities)
    note = f"<dm:note>{note}</dm:note>" if note else ""
    return f'<dm:person id="p1"><rpid:activities>{items}</rpid:activities>{note}</dm:person>'


# (name, body, expected Availability)
PARSE_CASES = [
    ("open", pidf(tup("open")), Availability(True)),
    ("closed", pidf(tup("closed")), Availability(False)),
    ("open with a note", pidf(tup("open", "at lunch")), Availability(True, None, "at lunch")),
    ("away", pidf(tup("open"), person("away")), Availability(True, "away")),
    ("busy is dnd", pidf(tup("open"), person("busy")), Availability(True, "dnd")),
    ("on the phone is dnd", pidf(tup("open"), person("on-the-phone")), Availability(True, "dnd")),
    ("meeting is dnd", pidf(tup("open"), person("meeting")), Availability(True, "dnd")),
    ("vacation is xa", pidf(tup("open"), person("vacation")), Availability(True, "xa")),
    ("away with extended-away is xa", pidf(tup("open"), person("away", "other:extended-away")),
     Availability(True, "xa")),
    ("meal is away", pidf(tup("open"), person("meal")), Availability(True, "away")),
    ("busy beats away", pidf(tup("open"), person("away", "busy")), Availability(True, "dnd")),
    ("unknown activity is available", pidf(tup("open"), person("unknown")), Availability(True)),
    ("free text other is available", pidf(tup("open"), person("other:gardening")), Availability(True)),
    ("closed ignores activities", pidf(tup("closed"), person("busy")), Availability(False)),
    ("closed keeps its note", pidf(tup("closed", "gone home")), Availability(False, None, "gone home")),
    ("person note", pidf(tup("open"), person("away", note="back soon")), Availability(True, "away", "back soon")),
    ("open tuple note wins", pidf(tup("closed", "old", "a"), tup("open", "new", "b"), person(note="p")),
     Availability(True, None, "new")),
    ("any open tuple makes available", pidf(tup("closed", tid="a"), tup("open", tid="b")), Availability(True)),
    ("idle user input is away", pidf(tup("open"), '<dm:person id="p"><rpid:user-input>idle</rpid:user-input></dm:person>'),
     Availability(True, "away")),
    ("activities inside status (older clients)",
     pidf('<tuple id="t"><status><basic>open</basic><rpid:activities><rpid:busy/></rpid:activities></status></tuple>'),
     Availability(True, "dnd")),
    ("no tuples", pidf(), Availability(False)),
    ("no declaration", pidf(tup("open"), declaration=False), Availability(True)),
    ("basic in mixed case", pidf(tup("Open")), Availability(True)),
    ("note language", pidf('<tuple id="t"><status><basic>open</basic></status><note xml:lang="fr">là</note></tuple>'),
     Availability(True, None, "là", "fr")),
    ("Latin-1 declared", ('<?xml version="1.0" encoding="ISO-8859-1"?>' + HEAD + tup("open", "café") + "</presence>")
     .encode("latin-1"), Availability(True, None, "café")),
    ("BOM", b"\xef\xbb\xbf" + pidf(tup("open")), Availability(True)),
]

# (name, body, words of the error)
BAD_DOCUMENTS = [
    ("DTD with an entity", b'<?xml version="1.0"?><!DOCTYPE presence [<!ENTITY x "y">]><presence/>', "refused"),
    ("comment", pidf(tup("open"), "<!-- hi -->"), "refused"),
    ("processing instruction", pidf(tup("open"), "<?pi x?>"), "refused"),
    ("not XML", b"open", "refused"),
    ("truncated", pidf(tup("open"))[:-5], "exactly one"),
    ("two roots", pidf(tup("open")) + HEAD.encode() + b"</presence>", "exactly one"),
    ("wrong root", b'<presence xmlns="jabber:client"/>', "not a PIDF"),
    ("no entity", b'<presence xmlns="urn:ietf:params:xml:ns:pidf"/>', "entity"),
    ("bad basic", pidf(tup("maybe")), "neither open nor closed"),
    ("bad encoding", b'<?xml version="1.0" encoding="nope"?><presence/>', "decoded"),
    ("invalid UTF-8", pidf(tup("open")).replace(b"open", b"\xff\xfe", 1), "decoded"),
    ("too large", pidf(tup("open", "x" * 70000)), "larger"),
    ("too deep", pidf("<a>" * 70 + "</a>" * 70), "refused"),
]


class ParsePIDFTests(SynchronousTestCase):
    def test_table(self):
        """Each PIDF document maps to the availability of the table."""
        for name, body, expected in PARSE_CASES:
            self.assertEqual(parse_pidf(body).availability, expected, name)

    def test_entity_and_tuples(self):
        """The entity, the tuples and the activity names are kept for the caller."""
        document = parse_pidf(pidf(tup("open", "hi", "t1"), person("away", "other:Extended-Away")))
        self.assertEqual(document.entity, "sip:carol@pbx.example")
        self.assertEqual(document.tuples, (("t1", "open", "hi"),))
        self.assertEqual(document.activities, ("away", "other:extended-away"))

    def test_refused(self):
        """Documents the restricted parser or PIDF refuses raise PresenceDocumentError naming why."""
        for name, body, words in BAD_DOCUMENTS:
            with self.assertRaises(PresenceDocumentError, msg=name) as caught:
                parse_pidf(body)
            self.assertIn(words, str(caught.exception), name)

    def test_charset_parameter(self):
        """Without a declaration, the Content-Type charset decodes the body."""
        body = (HEAD + tup("open", "été") + "</presence>").encode("latin-1")
        self.assertEqual(parse_pidf(body, "iso-8859-1").availability.status, "été")


# (show, status, expected activities in the built document)
BUILD_CASES = [
    (None, None, ()),
    ("chat", None, ()),
    ("away", "lunch", ("away",)),
    ("xa", None, ("away", "other:extended-away")),
    ("dnd", "meeting", ("busy",)),
]


class BuildPIDFTests(SynchronousTestCase):
    def test_round_trip(self):
        """Every XMPP state survives PIDF and back (chat is read back as plain available)."""
        for show in (None, "chat", "away", "xa", "dnd"):
            state = Availability(True, show, "note <&>", "en")
            parsed = parse_pidf(build_pidf("sip:alice@localhost", [("t1", state)])).availability
            self.assertEqual(parsed, Availability(True, None if show == "chat" else show, "note <&>", "en"), show)

    def test_activities(self):
        """Each show is published as the RPID activities of the table."""
        for show, status, activities in BUILD_CASES:
            document = parse_pidf(build_pidf("sip:alice@localhost", [("t1", Availability(True, show, status))]))
            self.assertEqual(document.activities, activities, show)

    def test_unavailable(self):
        """Unavailable is basic closed with the status as note and no person activities."""
        body = build_pidf("sip:alice@localhost", [("t1", Availability(False, "away", "bye"))])
        document = parse_pidf(body)
        self.assertEqual(document.availability, Availability(False, None, "bye"))
        self.assertEqual(document.activities, ())
        self.assertIn(b"<basic>closed</basic>", body)

    def test_document_shape(self):
        """The body declares UTF-8, names the entity and the tuple id, escapes text."""
        body = build_pidf('sip:a"b@localhost', [("t1", Availability(True, None, "a\x01b"))])
        self.assertTrue(body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>'))
        root = parse_element(body.decode().split("?>", 1)[1])
        self.assertEqual(root["entity"], 'sip:a"b@localhost')
        self.assertEqual(parse_pidf(body).tuples, (("t1", "open", "ab"),))

    def test_several_tuples(self):
        """Several resources become several tuples; the first available one gives the activities."""
        body = build_pidf("sip:alice@localhost", [("a", Availability(False)), ("b", Availability(True, "dnd")),
                                                  ("c", Availability(True, "away"))])
        document = parse_pidf(body)
        self.assertEqual([t[1] for t in document.tuples], ["closed", "open", "open"])
        self.assertEqual(document.availability.show, "dnd")

    def test_bad_arguments(self):
        """No tuples, or a tuple id that is not an XML id, is a programming error."""
        self.assertRaises(ValueError, build_pidf, "sip:a@b", [])
        self.assertRaises(ValueError, build_pidf, "sip:a@b", [("1x", Availability(True))])

    def test_tuple_ids(self):
        """Tuple ids derived from resources are stable, distinct and valid."""
        self.assertEqual(tuple_id_for("phone"), tuple_id_for("phone"))
        self.assertNotEqual(tuple_id_for("phone"), tuple_id_for("pc"))
        build_pidf("sip:a@b", [(tuple_id_for("ünï/x y"), Availability(True))])


# (stanza, expected Availability)
STANZA_CASES = [
    ("<presence/>", Availability(True)),
    ("<presence><show>away</show><status>lunch</status></presence>", Availability(True, "away", "lunch")),
    ("<presence><show>chat</show></presence>", Availability(True, "chat")),
    ("<presence><show>dnd</show></presence>", Availability(True, "dnd")),
    ("<presence><show>xa</show></presence>", Availability(True, "xa")),
    ("<presence><show>bogus</show></presence>", Availability(True)),
    ("<presence type='unavailable'><status>bye</status></presence>", Availability(False, None, "bye")),
    ("<presence type='unavailable'><show>away</show></presence>", Availability(False)),
    ("<presence><status xml:lang='de'>weg</status><status>away</status></presence>", Availability(True, None, "away")),
    ("<presence><status xml:lang='de'>weg</status></presence>", Availability(True, None, "weg", "de")),
]


class StanzaTests(SynchronousTestCase):
    def test_from_stanza(self):
        """Each XMPP presence gives the availability of the table."""
        for xml, expected in STANZA_CASES:
            self.assertEqual(availability_from_stanza(parse_element(xml)), expected, xml)

    def test_other_types(self):
        """Subscription and probe presences carry no availability."""
        for kind in ("subscribe", "probe", "error"):
            self.assertRaises(ValueError, availability_from_stanza, parse_element(f"<presence type='{kind}'/>"))

    def test_to_stanza(self):
        """Availability becomes presence with show and status; unavailable drops show."""
        for state, xml in [
            (Availability(True), "<presence from='a@b'/>"),
            (Availability(True, "dnd", "busy"), "<presence from='a@b'><show>dnd</show><status>busy</status></presence>"),
            (Availability(False, "away", "bye"), "<presence from='a@b' type='unavailable'><status>bye</status></presence>"),
        ]:
            self.assertEqual(presence_stanza(state, "a@b").toXml(), parse_element(xml).toXml())

    def test_round_trip(self):
        """XMPP presence -> PIDF -> XMPP presence keeps show (but chat), status and language."""
        for xml, _ in STANZA_CASES:
            state = availability_from_stanza(parse_element(xml))
            back = parse_pidf(build_pidf("sip:a@b", [("t", state)])).availability
            expected = state if state.available else Availability(False, None, state.status, state.lang)
            if expected.show == "chat":
                expected = Availability(True, None, expected.status, expected.lang)
            self.assertEqual(back, expected, xml)
            presence = presence_stanza(back, "a@b", "c@d")
            self.assertEqual(presence["to"], "c@d")


class SubscriptionTests(SynchronousTestCase):
    def test_state_from_roster(self):
        """Only from and both authorise a SIP watcher; a pending request is pending."""
        for subscription, pending, expected in [
            ("from", False, "active;expires=600"), ("both", False, "active;expires=600"),
            ("none", True, "pending;expires=600"), ("to", True, "pending;expires=600"),
            ("none", False, "terminated;reason=rejected"), ("to", False, "terminated;reason=rejected"),
        ]:
            self.assertEqual(subscription_state(subscription, pending, 600), expected, subscription)

    def test_parse_state(self):
        """Subscription-State values are parsed with their parameters."""
        state = parse_subscription_state("Terminated;reason=Rejected;retry-after=30")
        self.assertEqual((state.state, state.reason, state.retry_after), ("terminated", "rejected", 30))
        self.assertEqual(parse_subscription_state("active;expires=3600").expires, 3600)
        for bad in ("", "open", "active;expires=soon", "active;;"):
            self.assertRaises(PresenceDocumentError, parse_subscription_state, bad)

    def test_notify_to_xmpp(self):
        """A NOTIFY's state tells the XMPP watcher subscribed, unsubscribed or nothing."""
        for value, kind in [("active;expires=60", "subscribed"), ("pending", None),
                            ("terminated;reason=rejected", "unsubscribed"),
                            ("terminated;reason=noresource", "unsubscribed"),
                            ("terminated;reason=timeout", None), ("terminated;reason=deactivated", None),
                            ("terminated", None)]:
            self.assertEqual(presence_type_for_state(value), kind, value)

    def test_xmpp_answer_to_state(self):
        """The user's subscribed/unsubscribed answer becomes the NOTIFY's state."""
        self.assertEqual(state_for_presence_type("subscribed", 60), "active;expires=60")
        self.assertEqual(state_for_presence_type("unsubscribed"), "terminated;reason=rejected")
        self.assertRaises(ValueError, state_for_presence_type, "subscribe")

    def test_event_and_accept(self):
        """Only the presence package is served, and PIDF must be acceptable."""
        self.assertTrue(is_presence_event("presence"))
        self.assertTrue(is_presence_event("Presence;id=1"))
        self.assertFalse(is_presence_event("dialog"))
        self.assertFalse(is_presence_event(None))
        self.assertTrue(accepts_pidf([]))
        self.assertTrue(accepts_pidf(["application/pidf+xml;q=1", "text/plain"]))
        self.assertTrue(accepts_pidf(["*/*"]))
        self.assertFalse(accepts_pidf(["application/xpidf+xml"]))

    def test_expires(self):
        """Expires is defaulted, capped, kept at zero, and refused below the minimum."""
        self.assertEqual(negotiate_expires(None), 3600)
        self.assertEqual(negotiate_expires(0), 0)
        self.assertEqual(negotiate_expires(10 ** 6), 86400)
        self.assertEqual(negotiate_expires(120), 120)
        with self.assertRaises(IntervalTooBrief) as caught:
            negotiate_expires(5)
        self.assertEqual(caught.exception.minimum, 60)


def with_mood(*moods):
    return '<dm:person id="m1"><rpid:mood>' + "".join(f"<rpid:{m}/>" for m in moods) + "</rpid:mood></dm:person>"


class PEPPayloadTests(SynchronousTestCase):
    # (name, body, expected <activity/>, expected <mood/>), compared as XML
    CASES = [
        ("meeting with a note", pidf(tup("open"), person("meeting", note="Budget review")),
         "<activity xmlns='http://jabber.org/protocol/activity'><working><in_a_meeting/></working>"
         "<text>Budget review</text></activity>",
         "<mood xmlns='http://jabber.org/protocol/mood'/>"),
        ("general only", pidf(tup("open"), person("travel")),
         "<activity xmlns='http://jabber.org/protocol/activity'><traveling/></activity>",
         "<mood xmlns='http://jabber.org/protocol/mood'/>"),
        ("busy has no XEP-0108 value; the next activity counts", pidf(tup("open"), person("busy", "on-the-phone")),
         "<activity xmlns='http://jabber.org/protocol/activity'><talking><on_the_phone/></talking></activity>",
         "<mood xmlns='http://jabber.org/protocol/mood'/>"),
        ("busy alone", pidf(tup("open", "call me later"), person("busy")),
         "<activity xmlns='http://jabber.org/protocol/activity'/>",
         "<mood xmlns='http://jabber.org/protocol/mood'/>"),
        ("mood with the tuple's note", pidf(tup("open", "sunny day"), with_mood("unknown", "happy")),
         "<activity xmlns='http://jabber.org/protocol/activity'/>",
         "<mood xmlns='http://jabber.org/protocol/mood'><happy/><text>sunny day</text></mood>"),
        ("an unknown mood", pidf(tup("open"), with_mood("ecstatic")),
         "<activity xmlns='http://jabber.org/protocol/activity'/>",
         "<mood xmlns='http://jabber.org/protocol/mood'/>"),
        ("closed withdraws both", pidf(tup("closed"), person("sleeping"), with_mood("sleepy")),
         "<activity xmlns='http://jabber.org/protocol/activity'/>",
         "<mood xmlns='http://jabber.org/protocol/mood'/>"),
    ]

    def test_rpid_to_activity_and_mood(self):
        """RPID activities map to XEP-0108 (general and specific) by the first one known, RPID moods to
        XEP-0107 by the first one XEP-0107 has, each with the note as its text; none known, or an
        unavailable person, gives the empty payload that withdraws it."""
        for name, body, activity, mood in self.CASES:
            document = parse_pidf(body)
            self.assertEqual(activity_payload(document).toXml(), parse_element(activity).toXml(), name)
            self.assertEqual(mood_payload(document).toXml(), parse_element(mood).toXml(), name)

    def test_every_mapped_activity_is_an_rpid_activity(self):
        """The table's keys are RFC 4480 activities the parser reads, and each maps to a general category
        of XEP-0108."""
        generals = {"doing_chores", "drinking", "eating", "exercising", "grooming", "having_appointment",
                    "inactive", "relaxing", "talking", "traveling", "undefined", "working"}
        for rpid, (general, _) in ACTIVITY_TO_XEP0108.items():
            document = parse_pidf(pidf(tup("open"), person(rpid)))
            self.assertEqual(document.activities, (rpid,))
            self.assertIn(general, generals)
            self.assertTrue(activity_payload(document).children)

    def test_long_note_is_cut(self):
        """The payload's text is at most MAX_PEP_TEXT_CHARS characters."""
        document = parse_pidf(pidf(tup("open"), person("meeting", note="x" * 5000)))
        self.assertEqual(len(str(next(activity_payload(document).elements(NS_ACTIVITY, "text")))), MAX_PEP_TEXT_CHARS)

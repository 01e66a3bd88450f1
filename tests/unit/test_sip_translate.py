"""Tests for bridge.gateways.sip.translate: MESSAGE <-> <message/>, errors, the loop guard."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.stanza import NS_STANZAS
from bridge.core.xmlstream import NS_XML, parse_element
from bridge.gateways.sip.addressing import AddressMap
from bridge.gateways.sip.message import Response, parse_datagram
from bridge.gateways.sip.translate import (
    ACCEPT, CONDITION_TO_STATUS, NS_AUTO_SUBMITTED, NS_CHATSTATES, STATUS_TO_CONDITION, Refusal,
    StanzaRefused, condition_for_status, condition_of, error_for_response, failure_notice,
    is_automatic_request, is_automatic_stanza, may_notify_failure, message_from_sip, message_to_sip,
    response_for_error, stanza_error, status_for_condition,
)

MAP = AddressMap({"localhost"}, "sip.localhost")
CAROL = "carol\\40pbx.example@sip.localhost"


def sip_message(body=b"hello", content_type="text/plain;charset=UTF-8", uri="sip:bob@localhost",
                sender="<sip:carol@pbx.example>;tag=f1", extra=()):
    lines = [f"MESSAGE {uri} SIP/2.0", "Via: SIP/2.0/UDP pbx.example;branch=z9hG4bK1",
             "Max-Forwards: 70", f"From: {sender}", "To: <sip:bob@localhost>",
             "Call-ID: c1@pbx.example", "CSeq: 5 MESSAGE", *extra]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return parse_datagram(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def child_text(stanza, name):
    for child in stanza.elements():
        if child.name == name:
            return str(child)
    return None


CPIM = (b"From: <sip:carol@pbx.example>\r\nTo: <sip:bob@localhost>\r\n\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nwrapped")
COMPOSING = (b'<?xml version="1.0" encoding="UTF-8"?>\n<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">'
             b"<state>%s</state></isComposing>")

# (name, request, expected body text, expected chat state)
INBOUND = [
    ("UTF-8 text", sip_message("grüße".encode()), "grüße", None),
    ("no charset is UTF-8", sip_message("é".encode(), "text/plain"), "é", None),
    ("Latin-1", sip_message("é".encode("latin-1"), "text/plain; charset=\"ISO-8859-1\""), "é", None),
    ("US-ASCII", sip_message(b"hi", "Text/Plain;charset=us-ascii"), "hi", None),
    ("UTF-16 with BOM", sip_message("hé".encode("utf-16"), "text/plain;charset=utf-16"), "hé", None),
    ("CRLF becomes LF", sip_message(b"a\r\nb"), "a\nb", None),
    ("control characters dropped", sip_message(b"a\x00\x07b"), "ab", None),
    ("no Content-Type is text/plain", sip_message(b"hi", None), "hi", None),
    ("CPIM unwrapped", sip_message(CPIM, "message/cpim"), "wrapped", None),
    ("composing", sip_message(COMPOSING % b"active", "application/im-iscomposing+xml"), None, "composing"),
    ("idle", sip_message(COMPOSING % b"idle", "application/im-iscomposing+xml"), None, "active"),
]

# (name, request, status, header that must be present)
REFUSED = [
    ("HTML", sip_message(b"<b>x</b>", "text/html"), 415, ("Accept", ACCEPT)),
    ("unknown charset", sip_message(b"x", "text/plain;charset=klingon"), 415, ("Accept", "text/plain;charset=UTF-8")),
    ("codec that is no charset", sip_message(b"x", "text/plain;charset=base64"), 415, None),
    ("bad UTF-8", sip_message(b"\xff\xfe\xfd"), 400, None),
    ("malformed Content-Type", sip_message(b"x", "text"), 400, None),
    ("gzip", sip_message(b"x", extra=("Content-Encoding: gzip",)), 415, ("Accept-Encoding", "identity")),
    ("CPIM of HTML", sip_message(CPIM.replace(b"text/plain", b"text/html"), "message/cpim"), 415, ("Accept", ACCEPT)),
    ("truncated CPIM", sip_message(b"From: x\r\n\r\n", "message/cpim"), 400, None),
    ("bad isComposing", sip_message(b"<x/>", "application/im-iscomposing+xml"), 400, None),
    ("isComposing with a DTD", sip_message(b'<!DOCTYPE x [<!ENTITY a "b">]><x/>', "application/im-iscomposing+xml"),
     400, None),
    ("recipient is the gateway domain", sip_message(uri="sip:x@sip.localhost"), 404, None),
    ("recipient scheme", sip_message(uri="im:bob@localhost"), 416, None),
    ("sender without user", sip_message(sender="<sip:pbx.example>;tag=1"), 400, None),
    ("sender in the gateway domain", sip_message(sender="<sip:a@sip.localhost>;tag=1"), 400, None),
]


class InboundTests(SynchronousTestCase):
    def test_fields(self):
        """From, Request-URI, Call-ID, CSeq, Subject and Content-Language map as RFC 7572 says."""
        request = sip_message(extra=("Subject: greetings", "Content-Language: en-GB"))
        message = message_from_sip(request, MAP)
        self.assertEqual(message["from"], CAROL)
        self.assertEqual(message["to"], "bob@localhost")
        self.assertEqual(message["type"], "chat")
        self.assertEqual(message["id"], "c1@pbx.example-5")
        self.assertEqual(message[(NS_XML, "lang")], "en-GB")
        self.assertEqual(child_text(message, "thread"), "c1@pbx.example")
        self.assertEqual(child_text(message, "subject"), "greetings")
        self.assertEqual(child_text(message, "body"), "hello")

    def test_given_id(self):
        """The caller may choose the stanza id (for instance the stored message's key)."""
        self.assertEqual(message_from_sip(sip_message(), MAP, id="m42")["id"], "m42")

    def test_local_sender_and_tel(self):
        """A local SIP user writes as her own JID; a tel: Request-URI is a gateway JID."""
        message = message_from_sip(sip_message(sender="<sip:Alice@localhost>;tag=2"), MAP)
        self.assertEqual(message["from"], "alice@localhost")
        message = message_from_sip(sip_message(uri="tel:+15551234567"), MAP)
        self.assertEqual(message["to"], "+15551234567@sip.localhost")

    def test_bodies(self):
        """Each body of the table becomes the expected text or chat state."""
        for name, request, text, state in INBOUND:
            message = message_from_sip(request, MAP)
            self.assertEqual(child_text(message, "body"), text, name)
            states = [c.name for c in message.elements() if c.uri == NS_CHATSTATES]
            self.assertEqual(states, [state] if state else [], name)

    def test_refused(self):
        """Untranslatable requests raise Refusal with the status (and Accept) to answer."""
        for name, request, status, header in REFUSED:
            with self.assertRaises(Refusal, msg=name) as caught:
                message_from_sip(request, MAP)
            self.assertEqual(caught.exception.status, status, name)
            response = caught.exception.response(request, to_tag="gw")
            self.assertEqual(response.status, status, name)
            self.assertIn("tag=gw", response.headers.get("To"), name)
            if header is not None:
                self.assertEqual(response.headers.get(header[0]), header[1], name)

    def test_empty_body(self):
        """A MESSAGE without a body has nothing to deliver."""
        self.assertIsNone(message_from_sip(sip_message(b"", None), MAP))

    def test_not_a_message(self):
        """Only MESSAGE requests are translated."""
        request = sip_message()
        request.method = "OPTIONS"
        self.assertRaises(ValueError, message_from_sip, request, MAP)


def xmpp(xml):
    return parse_element(xml)


class OutboundTests(SynchronousTestCase):
    def test_fields(self):
        """from/to/body/subject/thread/xml:lang become From/To/body/Subject/Call-ID/Content-Language."""
        stanza = xmpp(f"<message from='bob@localhost/pc' to='{CAROL}' type='chat' id='m1' xml:lang='en'>"
                      "<subject>s</subject><body>hi there</body><thread>th-9</thread></message>")
        request = message_to_sip(stanza, MAP, call_id="gen", from_tag="t1", cseq=3)
        self.assertEqual(request.method, "MESSAGE")
        self.assertEqual(str(request.uri), "sip:carol@pbx.example")
        self.assertEqual(request.headers.get("From"), "<sip:bob@localhost;gr=pc>;tag=t1")
        self.assertEqual(request.headers.get("To"), "<sip:carol@pbx.example>")
        self.assertEqual(request.call_id, "th-9")
        self.assertEqual(request.headers.get("CSeq"), "3 MESSAGE")
        self.assertEqual(request.headers.get("Max-Forwards"), "70")
        self.assertEqual(request.headers.get("Content-Type"), "text/plain;charset=UTF-8")
        self.assertEqual(request.headers.get("Content-Language"), "en")
        self.assertEqual(request.headers.get("Subject"), "s")
        self.assertEqual(request.body, b"hi there")
        self.assertIsNone(request.headers.get("Via"))

    def test_serializes_and_parses(self):
        """The request serializes to bytes our own parser accepts once a Via is added."""
        stanza = xmpp(f"<message from='bob@localhost' to='{CAROL}'><body>é</body></message>")
        request = message_to_sip(stanza, MAP, call_id="c9", from_tag="t")
        request.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx")
        parsed = parse_datagram(request.to_bytes())
        self.assertEqual(parsed.body.decode(), "é")
        back = message_from_sip(parsed, MAP, id="x")
        self.assertEqual((back["from"], back["to"]), ("bob@localhost", CAROL))

    def test_call_id(self):
        """The thread is the Call-ID when it is a valid one, else the caller's Call-ID is used."""
        for thread, call_id in [("abc@def", "abc@def"), ("has space", "gen"), ("x" * 300, "gen"), (None, "gen")]:
            thread_xml = f"<thread>{thread}</thread>" if thread else ""
            stanza = xmpp(f"<message from='bob@localhost' to='{CAROL}'><body>x</body>{thread_xml}</message>")
            self.assertEqual(message_to_sip(stanza, MAP, call_id="gen", from_tag="t").call_id, call_id, thread)

    def test_header_injection(self):
        """CR and LF in the subject cannot start a new SIP header."""
        stanza = xmpp(f"<message from='bob@localhost' to='{CAROL}'><subject>a&#13;&#10;Via: evil</subject>"
                      "<body>x</body></message>")
        request = message_to_sip(stanza, MAP, call_id="c", from_tag="t")
        self.assertEqual(request.headers.get("Subject"), "a Via: evil")
        self.assertEqual(len(request.headers.get_all("Via")), 0)

    def test_language_choice(self):
        """The body in the stanza's language is chosen among several."""
        stanza = xmpp(f"<message from='bob@localhost' to='{CAROL}' xml:lang='de'>"
                      "<body xml:lang='en'>hello</body><body>hallo</body></message>")
        self.assertEqual(message_to_sip(stanza, MAP, call_id="c", from_tag="t").body, "hallo".encode())

    def test_chat_states(self):
        """Composing becomes isComposing active; paused and active become idle; others nothing."""
        for state, expected in [("composing", b"<state>active</state>"), ("paused", b"<state>idle</state>"),
                                ("active", b"<state>idle</state>"), ("inactive", None), ("gone", None)]:
            stanza = xmpp(f"<message from='bob@localhost' to='{CAROL}' type='chat'>"
                          f"<{state} xmlns='{NS_CHATSTATES}'/></message>")
            request = message_to_sip(stanza, MAP, call_id="c", from_tag="t")
            if expected is None:
                self.assertIsNone(request, state)
            else:
                self.assertIn(expected, request.body, state)
                self.assertEqual(request.headers.get("Content-Type"), "application/im-iscomposing+xml")
                back = message_from_sip(_with_via(request), MAP)
                self.assertEqual([c.name for c in back.elements() if c.uri == NS_CHATSTATES],
                                 ["composing" if state == "composing" else "active"], state)

    def test_nothing_to_send(self):
        """Errors and body-less messages without a chat state give None."""
        for xml in (f"<message type='error' from='bob@localhost' to='{CAROL}'><body>x</body></message>",
                    f"<message from='bob@localhost' to='{CAROL}'><x xmlns='urn:example'/></message>"):
            self.assertIsNone(message_to_sip(xmpp(xml), MAP, call_id="c", from_tag="t"), xml)

    def test_refused(self):
        """Groupchat, unmappable addresses and oversized bodies raise StanzaRefused."""
        for xml, condition, limit in [
            (f"<message type='groupchat' from='bob@localhost' to='{CAROL}'><body>x</body></message>",
             "service-unavailable", None),
            ("<message from='bob@localhost' to='carol@sip.localhost'><body>x</body></message>", "jid-malformed", None),
            ("<message from='bob@localhost' to='carol\\40localhost@sip.localhost'><body>x</body></message>",
             "jid-malformed", None),
            (f"<message to='{CAROL}'><body>x</body></message>", "jid-malformed", None),
            (f"<message from='bob@localhost' to='{CAROL}'><body>{'x' * 2000}</body></message>",
             "policy-violation", 1300),
        ]:
            stanza = xmpp(xml)
            with self.assertRaises(StanzaRefused, msg=xml) as caught:
                message_to_sip(stanza, MAP, call_id="c", from_tag="t", max_body_bytes=limit)
            self.assertEqual(caught.exception.condition, condition, xml)
            reply = caught.exception.reply(stanza)
            self.assertEqual(reply["type"], "error")
            self.assertEqual(condition_of(reply), condition)


def _with_via(request):
    request.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKv")
    return parse_datagram(request.to_bytes())


# The pairs the issue names, checked both ways.
ERROR_PAIRS = [
    (403, "forbidden"), (404, "item-not-found"), (480, "recipient-unavailable"),
    (503, "service-unavailable"), (400, "bad-request"), (500, "internal-server-error"),
    (501, "feature-not-implemented"), (410, "gone"),
]


class ErrorTests(SynchronousTestCase):
    def test_pairs(self):
        """The main statuses and conditions map to each other both ways."""
        for status, condition in ERROR_PAIRS:
            self.assertEqual(condition_for_status(status), condition, status)
            self.assertEqual(status_for_condition(condition), status, condition)

    def test_sip_to_xmpp(self):
        """Busy, timeouts and unlisted codes map to the conditions of the table."""
        for status, condition in [(486, "recipient-unavailable"), (408, "remote-server-timeout"),
                                  (504, "remote-server-timeout"), (600, "recipient-unavailable"),
                                  (603, "forbidden"), (415, "not-acceptable"), (302, "redirect"),
                                  (499, "bad-request"), (599, "internal-server-error"),
                                  (699, "service-unavailable"), (399, "redirect")]:
            self.assertEqual(condition_for_status(status), condition, status)
        for status in (100, 200, 202, 299, 700):
            self.assertRaises(ValueError, condition_for_status, status)

    def test_xmpp_to_sip(self):
        """Every RFC 6120 condition has a status; an unknown one is 500."""
        for condition, status in [("remote-server-timeout", 504), ("not-authorized", 403),
                                  ("jid-malformed", 400), ("remote-server-not-found", 404),
                                  ("whatever", 500)]:
            self.assertEqual(status_for_condition(condition), status, condition)

    def test_tables_are_consistent(self):
        """Every condition of either table is one RFC 6120 defines, every status a final error."""
        conditions = set(CONDITION_TO_STATUS)
        for status, condition in STATUS_TO_CONDITION.items():
            self.assertTrue(300 <= status < 700, status)
            self.assertIn(condition, conditions, status)
        for status in CONDITION_TO_STATUS.values():
            self.assertTrue(400 <= status < 600)

    def test_error_for_response(self):
        """A SIP error answers the XMPP message with the mapped condition and type; 2xx does not."""
        stanza = xmpp(f"<message id='m1' from='bob@localhost/pc' to='{CAROL}'><body>x</body></message>")
        error = error_for_response(stanza, Response(486))
        self.assertEqual(error["to"], "bob@localhost/pc")
        self.assertEqual(error["from"], CAROL)
        self.assertEqual(error["id"], "m1")
        self.assertEqual(condition_of(error), "recipient-unavailable")
        self.assertEqual(error.error["type"], "wait")
        texts = [str(c) for c in error.error.elements() if c.uri == NS_STANZAS and c.name == "text"]
        self.assertEqual(texts, ["SIP 486 Busy Here"])
        self.assertIsNone(error_for_response(stanza, Response(202)))
        self.assertIsNone(error_for_response(stanza, Response(180)))
        self.assertIsNone(error_for_response(error, Response(404)))

    def test_condition_types(self):
        """Conditions outside the core table still get their RFC 6120 error type."""
        stanza = xmpp("<message from='a@localhost' to='b@localhost'/>")
        self.assertEqual(stanza_error(stanza, "gone").error["type"], "cancel")
        self.assertEqual(stanza_error(stanza, "redirect").error["type"], "modify")
        self.assertEqual(stanza_error(stanza, "unexpected-request").error["type"], "wait")

    def test_response_for_error(self):
        """An XMPP error known before the 202 becomes the SIP final response."""
        request = sip_message()
        stanza = message_from_sip(request, MAP)
        response = response_for_error(request, stanza_error(stanza, "item-not-found"), to_tag="x")
        self.assertEqual(response.status, 404)
        self.assertEqual(response.call_id, "c1@pbx.example")
        self.assertEqual(condition_of(xmpp("<message type='error'/>")), "undefined-condition")


class LoopGuardTests(SynchronousTestCase):
    def test_marker_crosses_inbound(self):
        """Auto-Submitted on a MESSAGE becomes the <auto-submitted/> marker on the stanza."""
        request = sip_message(extra=("Auto-Submitted: auto-replied",))
        self.assertTrue(is_automatic_request(request))
        message = message_from_sip(request, MAP)
        self.assertTrue(is_automatic_stanza(message))
        marks = [str(c) for c in message.elements() if c.uri == NS_AUTO_SUBMITTED]
        self.assertEqual(marks, ["auto-replied"])

    def test_marker_crosses_outbound(self):
        """The stanza marker becomes Auto-Submitted on the MESSAGE."""
        stanza = xmpp(f"<message from='bob@localhost' to='{CAROL}'><body>away</body>"
                      f"<auto-submitted xmlns='{NS_AUTO_SUBMITTED}'>auto-replied</auto-submitted></message>")
        request = message_to_sip(stanza, MAP, call_id="c", from_tag="t")
        self.assertEqual(request.headers.get("Auto-Submitted"), "auto-replied")
        self.assertTrue(is_automatic_request(request))

    def test_no_marker(self):
        """Ordinary messages, and Auto-Submitted: no, are not automatic."""
        self.assertFalse(is_automatic_request(sip_message()))
        self.assertFalse(is_automatic_request(sip_message(extra=("Auto-Submitted: no",))))
        self.assertFalse(is_automatic_stanza(xmpp("<message><body>x</body></message>")))
        self.assertTrue(is_automatic_stanza(xmpp("<message type='error'/>")))

    def test_failure_notice(self):
        """A failed delivery is reported, marked, from the original recipient to the sender."""
        request = sip_message()
        error = stanza_error(message_from_sip(request, MAP), "recipient-unavailable")
        notice = failure_notice(error, MAP, call_id="n1", from_tag="t9")
        self.assertEqual(str(notice.uri), "sip:carol@pbx.example")
        self.assertEqual(notice.headers.get("From"), "<sip:bob@localhost>;tag=t9")
        self.assertEqual(notice.headers.get("To"), "<sip:carol@pbx.example>")
        self.assertEqual(notice.headers.get("Auto-Submitted"), "auto-generated")
        self.assertIn(b"recipient unavailable", notice.body)

    def test_no_notice_about_a_notice(self):
        """The bounce of a notice produces no notice: the loop ends at the second hop."""
        request = sip_message()
        error = stanza_error(message_from_sip(request, MAP), "recipient-unavailable")
        notice = _with_via(failure_notice(error, MAP, call_id="n1", from_tag="t9"))
        self.assertFalse(may_notify_failure(notice))
        bounced = message_from_sip(notice, MAP, id="n")
        self.assertFalse(may_notify_failure(bounced))
        self.assertIsNone(failure_notice(stanza_error(bounced, "recipient-unavailable"), MAP, call_id="n2",
                                         from_tag="t"))
        self.assertFalse(may_notify_failure(error))
        self.assertTrue(may_notify_failure(request))


class RoomMessageTests(SynchronousTestCase):
    ROOMS = AddressMap({"localhost"}, "sip.localhost", {"conference.localhost"})

    def test_room_groupchat_comes_from_the_room_with_the_nick(self):
        """A room's groupchat to a phone's session is a MESSAGE from the room's address, the speaker's nick
        as display name (quoted, its quotes escaped), so that the phone's answer goes to the room."""
        stanza = xmpp("<message type='groupchat' from='room@conference.localhost/Bob \"B\"' to='dave@localhost/sip'>"
                      "<body>hi all</body></message>")
        request = message_to_sip(stanza, self.ROOMS, call_id="c", from_tag="t")
        self.assertEqual(request.headers.get("From"), '"Bob \\"B\\"" <sip:room@conference.localhost>;tag=t')
        self.assertEqual(str(request.from_address.uri), "sip:room@conference.localhost")
        self.assertEqual(request.body, b"hi all")

    def test_other_groupchat_is_still_refused(self):
        """Groupchat from anywhere but a room of this server is refused as before."""
        stanza = xmpp("<message type='groupchat' from='room@muc.remote.example/Bob' to='dave@localhost/sip'>"
                      "<body>x</body></message>")
        with self.assertRaises(StanzaRefused):
            message_to_sip(stanza, self.ROOMS, call_id="c", from_tag="t")

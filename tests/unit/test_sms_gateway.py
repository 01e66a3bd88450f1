"""The SMS gateway in a whole in-memory server: offline users, phone JIDs, MO replies, limits."""

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.notifications import NotificationPreferences
from bridge.gateways.sms.gateway import SMSGateway, normalize_number

from tests.unit.helpers import Harness, gateway_context, result_of
from tests.unit.test_sms_esme import FakeSMSC

SMSC = {"main": {"system_id": "bridge", "password": "pw", "source_addr": "1000", "window": 10,
                 "submit_rate_per_second": 1000.0}}


def sms_config(**sms):
    document = {"c2s": {"require_encryption": False, "ping_interval_seconds": 0}, "hosts": {"localhost": {"offline_notification": "sms"}},
                "sms": {"enabled": True, **sms}, "smsc": SMSC}
    return configuration.parse(document, "test.toml")


class GatewayRig:
    def __init__(self, **sms):
        self.harness = Harness(sms_config(**sms))
        self.server = self.harness.server
        self.clock = self.harness.clock
        self.smsc = FakeSMSC()
        self.context = gateway_context(self.server, "sms", self.server.config.sms)
        self.gateway = SMSGateway(self.context, lambda name, smsc: self.smsc.connect)
        result_of(self.gateway.start())
        self.smsc.bind()
        for jid in ("alice@localhost", "bob@localhost", "carol@localhost"):
            self.harness.add_user(jid)
        self.preferences = NotificationPreferences(self.server.storage, self.server.config.hosts.__getitem__)
        result_of(self.preferences.update("localhost", "bob", mobile="+1 555 123 4567"))
        self.alice = self.harness.login("alice@localhost/desk")
        self.alice.send("<presence/>")
        self.alice.received()

        self.backlog = []

    def wait(self, seconds):
        """Let time pass, answering the link's enquire_link as an SMSC does."""
        for _ in range(int(seconds)):
            self.clock.advance(1)
            for received in self.smsc.received():
                if received.command == "enquire_link":
                    self.smsc.answer(received)
                else:
                    self.backlog.append(received)

    def submits(self):
        for _ in range(50):
            self.clock.advance(0.001)
        found, self.backlog = self.backlog + self.smsc.received(), []
        return [p for p in found if p.command == "submit_sm"]

    def write(self, to, body, extra="", id="m1", type="chat"):
        self.alice.send(f"<message to='{to}' id='{id}' type='{type}'><body>{body}</body>{extra}</message>")

    def mo(self, number, text, sequence=90):
        self.smsc.send("deliver_sm", sequence, source_addr=number, destination_addr="1000",
                       short_message=text.encode())

    def receipt(self, message_id, stat="DELIVRD", sequence=91):
        self.smsc.send("deliver_sm", sequence, source_addr="15551234567", destination_addr="1000", esm_class=4,
                       short_message=f"id:{message_id} sub:001 dlvr:001 stat:{stat} err:000".encode())


class OfflineSMSTests(SynchronousTestCase):
    def test_offline_user_gets_sms_with_sender_name(self):
        """Alice writes to Bob, who is offline: Bob's mobile gets "Alice: are you coming?"."""
        rig = GatewayRig()
        rig.write("bob@localhost", "are you coming?")
        (submit,) = rig.submits()
        self.assertEqual((submit.destination_addr, submit.short_message, submit.data_coding),
                         (b"15551234567", b"Alice: are you coming?", 0))

    def test_receipt_and_mo_reply(self):
        """The delivery receipt becomes a XEP-0184 receipt; Bob's SMS answer reaches Alice from bob@localhost/sms, the session of his mobile phone."""
        rig = GatewayRig()
        rig.write("bob@localhost", "are you coming?", "<request xmlns='urn:xmpp:receipts'/>", id="q1")
        (submit,) = rig.submits()
        rig.smsc.answer(submit, message_id="7f")
        rig.receipt("127")
        (received,) = rig.alice.received()
        self.assertEqual((received["from"], received.received["id"]), ("bob@localhost", "q1"))
        rig.mo("+15551234567", "yes, in 5")
        (answer,) = rig.alice.received()
        self.assertEqual((answer["from"], answer["type"], str(answer.body)), ("bob@localhost/sms", "chat", "yes, in 5"))

    def test_quiet_window_and_daily_cap(self):
        """One SMS per conversation per quiet window; the daily cap counts every sender."""
        rig = GatewayRig(quiet_window_minutes=10, daily_cap_per_user=2)
        rig.write("bob@localhost", "one")
        rig.write("bob@localhost", "two", id="m2")
        (first,) = rig.submits()
        rig.smsc.answer(first, message_id="1")
        rig.wait(600)
        rig.write("bob@localhost", "three", id="m3")
        (third,) = rig.submits()
        self.assertEqual(third.short_message, b"Alice: three")
        rig.smsc.answer(third, message_id="3")
        rig.wait(600)
        rig.write("bob@localhost", "four", id="m4")
        self.assertEqual(rig.submits(), [])

    def test_policy_and_number_required(self):
        """No SMS when the user's policy is not sms, or when they have no mobile number."""
        rig = GatewayRig()
        result_of(rig.preferences.update("localhost", "bob", policy="email"))
        rig.write("bob@localhost", "hello")
        rig.write("carol@localhost", "hello")
        self.assertEqual(rig.submits(), [])

    def test_stop_opts_out(self):
        """"STOP" from Bob's number sets his policy to none: no more SMS."""
        rig = GatewayRig(quiet_window_minutes=0)
        rig.mo("15551234567", "stop")
        self.assertEqual(result_of(rig.preferences.get("localhost", "bob"))["policy"], "none")
        rig.write("bob@localhost", "hello")
        self.assertEqual(rig.submits(), [])

    def test_headline_alert_goes_out(self):
        """A headline (an alert) to an offline user is sent by SMS too."""
        rig = GatewayRig()
        rig.write("bob@localhost", "server down", type="headline")
        (submit,) = rig.submits()
        self.assertEqual(submit.short_message, b"Alice: server down")

    def test_long_unicode_message_parts(self):
        """A long non-GSM text goes out as UCS-2 parts with one UDH reference."""
        rig = GatewayRig()
        rig.write("bob@localhost", "ж" * 150)
        parts = rig.submits()
        self.assertEqual(len(parts), 3)
        self.assertEqual({(p.data_coding, p.esm_class, p.short_message[3]) for p in parts}, {(8, 0x40, 1)})


class NumberRouteTests(SynchronousTestCase):
    def test_the_sms_domain_is_served_by_the_ordinary_features(self):
        """sms.localhost is listed in the host's disco#items; its disco#info shows gateway/sms and
        XEP-0100, whose prompt turns a written number into its JID; a wrong number is not-acceptable."""
        rig = GatewayRig()
        items = rig.alice.iq("<iq type='get' id='i' to='localhost'>"
                             "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        self.assertIn("sms.localhost", [item["jid"] for item in items.query.elements()])
        info = rig.alice.iq("<iq type='get' id='d' to='sms.localhost'>"
                            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        [identity] = [e for e in info.query.elements() if e.name == "identity"]
        self.assertEqual((identity["category"], identity["type"]), ("gateway", "sms"))
        self.assertIn("jabber:iq:gateway", [e.getAttribute("var") for e in info.query.elements() if e.name == "feature"])
        translated = rig.alice.iq("<iq type='set' id='g' to='sms.localhost'><query xmlns='jabber:iq:gateway'>"
                                  "<prompt>+1 (555) 765-4321</prompt></query></iq>")
        self.assertEqual([str(e) for e in translated.query.elements() if e.name == "jid"], ["+15557654321@sms.localhost"])
        refused = rig.alice.iq("<iq type='set' id='h' to='sms.localhost'><query xmlns='jabber:iq:gateway'>"
                               "<prompt>call me</prompt></query></iq>")
        self.assertEqual(refused.error.firstChildElement().name, "not-acceptable")

    def test_message_to_a_number_and_the_reply(self):
        """Alice writes to +15557654321@sms.localhost; the reply comes back from that JID."""
        rig = GatewayRig()
        rig.write("+15557654321@sms.localhost", "hi there")
        (submit,) = rig.submits()
        self.assertEqual((submit.destination_addr, submit.short_message), (b"15557654321", b"Alice: hi there"))
        rig.mo("15557654321", "who is this?")
        (answer,) = rig.alice.received()
        self.assertEqual((answer["from"], answer["to"], str(answer.body)),
                         ("+15557654321@sms.localhost", "alice@localhost", "who is this?"))

    def test_unknown_number_is_dropped(self):
        """An SMS from a number nobody wrote to is dropped (and still acknowledged)."""
        rig = GatewayRig()
        rig.mo("15550000000", "spam")
        self.assertEqual(rig.alice.received(), [])
        (resp,) = rig.smsc.received()
        self.assertEqual((resp.command, resp.status), ("deliver_sm_resp", 0))

    def test_bad_number_is_an_error(self):
        """A JID that is not a phone number is answered jid-malformed."""
        rig = GatewayRig()
        rig.write("bob@sms.localhost", "hello")
        (error,) = rig.alice.received()
        self.assertEqual(error["type"], "error")
        self.assertEqual(error.error.firstChildElement().name, "jid-malformed")

    def test_failure_reported_as_message_error(self):
        """A final failure comes back to the XMPP sender as a message error with the original id."""
        rig = GatewayRig()
        rig.write("+15557654321@sms.localhost", "hello", id="x9")
        (submit,) = rig.submits()
        rig.smsc.answer(submit, message_id="5")
        rig.receipt("5", stat="UNDELIV")
        (error,) = rig.alice.received()
        self.assertEqual((error["type"], error["id"], error["from"]), ("error", "x9", "+15557654321@sms.localhost"))
        self.assertEqual(error.error.firstChildElement().name, "recipient-unavailable")

    def test_concatenated_mo_is_reassembled(self):
        """A concatenated MO SMS arrives as one message."""
        rig = GatewayRig()
        rig.write("+15557654321@sms.localhost", "hello")
        rig.submits()
        for number, piece in ((2, b"world"), (1, b"hello ")):
            rig.smsc.send("deliver_sm", 100 + number, source_addr="15557654321", destination_addr="1000",
                          esm_class=0x40, short_message=bytes([5, 0, 3, 9, 2, number]) + piece)
        (answer,) = rig.alice.received()
        self.assertEqual(str(answer.body), "hello world")


class NumberTests(SynchronousTestCase):
    def test_normalize(self):
        """Numbers in their usual spellings become +digits; anything else is None."""
        table = [("+1 555 123-4567", "+15551234567"), ("0044 20 7946 0000", "+442079460000"),
                 ("15551234567", "+15551234567"), ("(555) 1234", "+5551234"), ("bob", None), ("", None),
                 ("+12", None)]
        for value, expected in table:
            self.assertEqual(normalize_number(value), expected, value)


class ConfigTests(SynchronousTestCase):
    def test_sms_sections(self):
        """[sms] and [smsc.NAME] parse; unknown keys, a host's domain or no SMSC are errors."""
        config = sms_config(domain="sms.example")
        self.assertEqual((config.sms.domain, config.smsc["main"].source_addr), ("sms.example", "1000"))
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.parse({"sms": {"enabled": True, "domain": "localhost"},
                                 "smsc": {"a": {"colour": "red"}}}, "t.toml")
        problems = "\n".join(caught.exception.problems)
        self.assertIn("smsc.a.colour: unknown key", problems)
        self.assertIn("sms.domain", problems)
        with self.assertRaises(configuration.ConfigError):
            configuration.parse({"sms": {"enabled": True}}, "t.toml")

"""The SMS gateway in a whole in-memory server: offline users, phone JIDs, MO replies, limits."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.notifications import NotificationPreferences
from bridge.core.storage.cache import StaleDocument
from bridge.gateways.sms.gateway import SMSGateway, password_in_clear
from bridge.core.xmlstream import parse_element
from bridge.gateways.sms.queue import COUNTER_STORE, SERIAL_BLOCK, OutboundQueue
from bridge.gateways.sms.text import gsm_decode, normalize_number

from tests.unit.helpers import Harness, LateStorage, gateway_context, result_of
from tests.unit.test_sms_esme import FakeSMSC

SMSC = {"main": {"system_id": "bridge", "password": "pw", "source_addr": "1000", "window": 10,
                 "submit_rate_per_second": 1000.0}}


def sms_config(smsc=SMSC, **sms):
    document = {"c2s": {"require_encryption": False, "ping_interval_seconds": 0}, "hosts": {"localhost": {"offline_notification": "sms"}},
                "sms": {"enabled": True, **sms}, "smsc": smsc}
    return configuration.parse(document, "test.toml")


class GatewayRig:
    def __init__(self, smsc=SMSC, storage=None, **sms):
        self.harness = Harness(sms_config(smsc, **sms), storage)
        self.server = self.harness.server
        self.clock = self.harness.clock
        self.smsc = FakeSMSC()
        self.context = gateway_context(self.server, "sms", self.server.config.sms)
        self.gateway = SMSGateway(self.context, lambda name, smsc: self.smsc.connect)
        result_of(self.gateway.start())
        self.smsc.bind()
        for jid in ("alice@localhost", "bob@localhost", "carol@localhost"):
            if not result_of(self.server.accounts.exists("localhost", jid.split("@")[0])):  # a restart
                self.harness.add_user(jid)
        self.preferences = NotificationPreferences(self.server.storage, self.server.config.hosts.__getitem__)
        result_of(self.preferences.update("localhost", "bob", mobile="+1 555 123 4567"))
        self.alice = self.harness.login("alice@localhost/desk")
        self.alice.send("<presence/>")
        self.alice.received()

        self.backlog = []

    def command(self, client, body, id="c1"):
        """Send ``body`` to the SMS domain from ``client``; the gateway's answers."""
        client.send(f"<message to='sms.localhost' id='{id}' type='chat'><body>{body}</body></message>")
        for _ in range(50):
            self.clock.advance(0.001)
        return [str(message.body) for message in client.received() if message.name == "message"]

    def verify(self, jid="bob@localhost/phone", request="verify"):
        """``jid`` asks for a code and sends it back, then goes offline; the SMS with the code
        and the gateway's last answer."""
        client = self.harness.login(jid)
        self.command(client, request)
        (code_sms,) = self.submits()
        self.smsc.answer(code_sms, message_id=f"code{code_sms.sequence}")
        code = code_sms.short_message.decode()[:6]
        (answer,) = self.command(client, code, id="c2")
        client.drop()
        return code_sms, answer

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
        rig.verify()
        rig.write("bob@localhost", "are you coming?")
        (submit,) = rig.submits()
        self.assertEqual((submit.destination_addr, submit.short_message, submit.data_coding),
                         (b"15551234567", b"Alice: are you coming?", 0))

    def test_receipt_and_mo_reply(self):
        """The delivery receipt becomes a XEP-0184 receipt; Bob's SMS answer reaches Alice from bob@localhost/sms, the session of his mobile phone."""
        rig = GatewayRig()
        rig.verify()
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
        rig.verify()
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
        rig.verify()
        rig.mo("15551234567", "stop")
        self.assertEqual(result_of(rig.preferences.get("localhost", "bob"))["policy"], "none")
        rig.write("bob@localhost", "hello")
        self.assertEqual(rig.submits(), [])

    def test_headline_alert_goes_out(self):
        """A headline (an alert) to an offline user is sent by SMS too."""
        rig = GatewayRig()
        rig.verify()
        rig.write("bob@localhost", "server down", type="headline")
        (submit,) = rig.submits()
        self.assertEqual(submit.short_message, b"Alice: server down")

    def test_long_unicode_message_parts(self):
        """A long non-GSM text goes out as UCS-2 parts with one UDH reference."""
        rig = GatewayRig()
        rig.verify()
        rig.write("bob@localhost", "ж" * 150)
        parts = rig.submits()
        self.assertEqual(len(parts), 3)
        self.assertEqual({(p.data_coding, p.esm_class) for p in parts}, {(8, 0x40)})
        self.assertEqual(len({p.short_message[3] for p in parts}), 1)


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


    def part(self, rig, number, reference, total, index, piece, sequence):
        rig.smsc.send("deliver_sm", sequence, source_addr=number, destination_addr="1000", esm_class=0x40,
                      short_message=bytes([5, 0, 3, reference, total, index]) + piece)

    def test_a_part_left_waiting_expires(self):
        """The first part of a concatenated SMS waits at most mo_fragment_timeout_seconds (600 by
        default): a second part coming later completes nothing and waits alone."""
        rig = GatewayRig()
        rig.write("+15557654321@sms.localhost", "hello")
        (submit,) = rig.submits()
        rig.smsc.answer(submit, message_id="1")
        self.part(rig, "15557654321", 9, 2, 1, b"hello ", 101)
        rig.wait(601)
        self.part(rig, "15557654321", 9, 2, 2, b"world", 102)
        self.assertEqual(rig.alice.received(), [])
        self.assertEqual((rig.gateway.fragments.parts, rig.gateway.fragments.bytes), (1, 5))

    def test_first_parts_from_many_numbers_stay_within_the_total_bound(self):
        """First parts from 500 numbers, 124 octets of text each: no more than mo_fragment_bytes_total
        octets wait, and each is still acknowledged."""
        rig = GatewayRig(mo_fragment_bytes_total=4096)
        for n in range(500):
            self.part(rig, f"1555000{n:04d}", 1, 2, 1, b"x" * 124, 200 + n)
        self.assertLessEqual(rig.gateway.fragments.bytes, 4096)
        self.assertEqual(rig.gateway.fragments.parts, 4096 // 124)
        answers = [p for p in rig.smsc.received() if p.command == "deliver_sm_resp"]
        self.assertEqual((len(answers), {p.status for p in answers}), (500, {0}))


class SendingLimitTests(SynchronousTestCase):
    def errors(self, rig):
        return [(e["id"], e.error.firstChildElement().name, str(e.error.text))
                for e in rig.alice.received() if e["type"] == "error"]

    def accepted(self, rig):
        """Every submit_sm the SMSC gets, each answered, until no more come."""
        accepted = []
        while submits := rig.submits():
            for submit in submits:
                rig.smsc.answer(submit, message_id=str(submit.sequence))
            accepted += submits
        return accepted

    def test_the_defaults_stop_a_script(self):
        """25 one-part SMS to numbers in one minute: 20 go out (the default per-user minute limit),
        the others are refused policy-violation with a text naming the limit."""
        rig = GatewayRig()
        for n in range(25):
            rig.write(f"+1555000{n:04d}@sms.localhost", f"buy now {n}", id=f"s{n}")
        self.assertEqual(len(self.accepted(rig)), 20)
        self.assertEqual(self.errors(rig), [(f"s{n}", "policy-violation",
                                             "SMS limit reached: 20 SMS a minute per user: wait a minute")
                                            for n in range(20, 25)])

    def test_minute_limit_passes_with_the_minute(self):
        """Past the per-minute limit a user waits for the next minute, then may send again."""
        rig = GatewayRig(outbound_sms_per_minute_per_user=2)
        for n in range(3):
            rig.write("+15557654321@sms.localhost", f"m{n}", id=f"m{n}")
        for submit in rig.submits():
            rig.smsc.answer(submit, message_id=str(submit.sequence))
        self.assertEqual([e[0] for e in self.errors(rig)], ["m2"])
        rig.wait(60)
        rig.write("+15557654321@sms.localhost", "again", id="m3")
        (submit,) = rig.submits()
        self.assertEqual(submit.short_message, b"Alice: again")

    def test_daily_limit_counts_parts_and_ends_with_the_day(self):
        """The daily limit counts SMS parts: a three-part message and a two-part one fill a limit of
        five, a one-part message is then refused; the next UTC day it goes out."""
        rig = GatewayRig(outbound_sms_per_day_per_user=5)
        rig.write("+15557654321@sms.localhost", "long " * 80, id="three")
        rig.write("+15557654321@sms.localhost", "long " * 50, id="two")
        rig.write("+15557654321@sms.localhost", "short", id="one")
        submits = rig.submits()
        self.assertEqual(len(submits), 5)
        self.assertEqual(self.errors(rig), [("one", "policy-violation", "SMS limit reached: 5 SMS a day per user "
                                                                        "(the day ends at 00:00 UTC)")])
        for submit in submits:
            rig.smsc.answer(submit, message_id=str(submit.sequence))
        rig.wait(86400)
        rig.write("+15557654321@sms.localhost", "short", id="tomorrow")
        self.assertEqual(len(rig.submits()), 1)

    def test_host_limit_counts_every_user(self):
        """Two users each within their own limits share the host's: past it, resource-constraint."""
        rig = GatewayRig(outbound_sms_per_day_per_host=3)
        carol = rig.harness.login("carol@localhost/desk")
        for n in range(2):
            rig.write("+15557654321@sms.localhost", f"a{n}", id=f"a{n}")
            carol.send(f"<message to='+15557654321@sms.localhost' id='c{n}'><body>c{n}</body></message>")
        self.assertEqual(len(rig.submits()), 3)
        (error,) = [e for e in rig.alice.received() + carol.received() if e["type"] == "error"]
        self.assertEqual((error["id"], error.error.firstChildElement().name, str(error.error.text)),
                         ("c1", "resource-constraint", "SMS limit reached: 3 SMS a day for all users of "
                                                       "localhost (the day ends at 00:00 UTC)"))

    def test_an_sms_that_could_not_be_charged_is_refused_not_dropped(self):
        """When the charge fails (here: other nodes kept changing the host's counts), the sender gets
        resource-constraint, to send it again later, and nothing is queued."""
        rig = GatewayRig()
        rig.gateway.sending.charge = lambda host, user, parts: defer.fail(StaleDocument("sms-sent of @localhost"))
        rig.write("+15557654321@sms.localhost", "lost?", id="x")
        self.assertEqual(self.errors(rig), [("x", "resource-constraint",
                                             "the SMS could not be queued: send it again later")])
        self.assertEqual(rig.submits(), [])
        self.assertEqual(len(self.flushLoggedErrors(StaleDocument)), 1)

    def test_counts_survive_a_restart(self):
        """The day's count is in storage: a gateway started again on the same storage refuses what
        the limit no longer allows."""
        first = GatewayRig(outbound_sms_per_day_per_user=1)
        first.write("+15557654321@sms.localhost", "one")
        self.assertEqual(len(self.accepted(first)), 1)
        second = GatewayRig(storage=first.harness.storage, outbound_sms_per_day_per_user=1)
        second.write("+15557654321@sms.localhost", "two", id="again")
        self.assertEqual(second.submits(), [])
        self.assertEqual([e[:2] for e in self.errors(second)], [("again", "policy-violation")])

    def test_two_sms_at_once_with_late_storage(self):
        """Storage answers late: two SMS sent before it answers are counted one after the other,
        so a limit of one lets exactly one through."""
        late = LateStorage()
        rig = GatewayRig(storage=late, outbound_sms_per_minute_per_user=1)
        late.late = True
        rig.write("+15557654321@sms.localhost", "first", id="m1")
        rig.write("+15557654321@sms.localhost", "second", id="m2")
        while late.waiting:  # one round of answers at a time, as the database thread gives them
            late.answer()
        late.late = False
        self.assertEqual([p.short_message for p in rig.submits()], [b"Alice: first"])
        self.assertEqual([e[:2] for e in self.errors(rig)], [("m2", "policy-violation")])


class VerificationTests(SynchronousTestCase):
    def test_an_unverified_number_gets_no_notification(self):
        """Bob's number was set (as bridgectl does) but never verified: a message stored for him
        sends no SMS."""
        rig = GatewayRig()
        rig.write("bob@localhost", "are you coming?")
        self.assertEqual(rig.submits(), [])

    def test_a_vcard_number_is_unverified_until_verified(self):
        """A number Bob put in his vCard (TEL/CELL) gets nothing until Bob verifies it with 'verify'."""
        rig = GatewayRig()
        result_of(rig.preferences.update("localhost", "bob", mobile=None))
        bob = rig.harness.login("bob@localhost/phone")
        bob.iq("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><TEL><CELL/><NUMBER>+1 555 765 0000</NUMBER>"
               "</TEL></vCard></iq>")
        bob.drop()
        rig.write("bob@localhost", "one")
        self.assertEqual(rig.submits(), [])
        code_sms, answer = rig.verify()
        self.assertEqual(code_sms.destination_addr, b"15557650000")
        self.assertTrue(answer.startswith("+15557650000 is verified"), answer)
        rig.write("bob@localhost", "two", id="m2")
        (submit,) = rig.submits()
        self.assertEqual((submit.destination_addr, submit.short_message), (b"15557650000", b"Alice: two"))

    def test_the_whole_flow(self):
        """Bob sends 'verify' to sms.localhost: a six-digit code goes by SMS to his number and the
        gateway says so; a wrong code is refused with the tries left; the right one verifies the
        number, and only then does an SMS from it speak as Bob."""
        rig = GatewayRig()
        rig.write("+15551234567@sms.localhost", "hi Bob's phone", id="w1")
        rig.smsc.answer(rig.submits()[0], message_id="w1")
        bob = rig.harness.login("bob@localhost/phone")
        (sent,) = rig.command(bob, "verify")
        self.assertEqual(sent, "A code was sent by SMS to +15551234567: send it here within 10 minutes.")
        (code_sms,) = rig.submits()
        rig.smsc.answer(code_sms, message_id="c1")
        code = code_sms.short_message.decode()[:6]
        self.assertEqual(code_sms.destination_addr, b"15551234567")
        self.assertEqual(gsm_decode(code_sms.short_message),
                         f"{code} is the code that links this number to bob@localhost: send it to "
                         "sms.localhost from that account. Not you? Ignore this SMS.")
        self.assertTrue(code.isdigit() and len(code) == 6, code)
        rig.mo("15551234567", "before")
        (before,) = rig.alice.received()
        self.assertEqual(before["from"], "+15551234567@sms.localhost")
        wrong = f"{(int(code) + 1) % 1000000:06d}"
        self.assertEqual(rig.command(bob, wrong), ["Wrong code: 4 tries left."])
        (done,) = rig.command(bob, code)
        self.assertTrue(done.startswith("+15551234567 is verified"), done)
        bob.drop()
        rig.write("bob@localhost", "call me", id="m2")
        rig.smsc.answer(rig.submits()[0], message_id="n1")
        rig.mo("15551234567", "after")
        (after,) = rig.alice.received()
        self.assertEqual((after["from"], str(after.body)), ("bob@localhost/sms", "after"))

    def test_mo_from_an_unverified_number_is_not_the_user(self):
        """Bob's number is unverified: an SMS from it comes from +15551234567@sms.localhost to the
        user who last wrote to the number, never as bob@localhost."""
        rig = GatewayRig()
        rig.write("+15551234567@sms.localhost", "hello", id="w1")
        rig.submits()
        rig.mo("15551234567", "it is me, Bob")
        (message,) = rig.alice.received()
        self.assertEqual((message["from"], str(message.body)), ("+15551234567@sms.localhost", "it is me, Bob"))

    def test_stop_from_an_unverified_number_changes_nothing(self):
        """A STOP whose sender ID is Bob's unverified number leaves his policy alone."""
        rig = GatewayRig()
        rig.mo("15551234567", "STOP")
        self.assertIsNone(result_of(rig.preferences.get("localhost", "bob"))["policy"])

    def test_verify_a_new_number_sets_it_once_proved(self):
        """'verify +15557654321' sends the code there; Bob's number changes only when the code comes
        back, and the old number is no longer his."""
        rig = GatewayRig()
        bob = rig.harness.login("bob@localhost/phone")
        rig.command(bob, "verify +1 555 765 4321")
        (code_sms,) = rig.submits()
        self.assertEqual(code_sms.destination_addr, b"15557654321")
        self.assertEqual(result_of(rig.preferences.mobile("localhost", "bob")), "+1 555 123 4567")
        rig.command(bob, code_sms.short_message.decode()[:6])
        self.assertEqual(result_of(rig.preferences.mobile("localhost", "bob")), "+15557654321")
        bob.drop()
        rig.mo("15551234567", "STOP")
        rig.mo("15557654321", "STOP", sequence=91)
        self.assertEqual(result_of(rig.preferences.get("localhost", "bob"))["policy"], "none")

    def test_changing_the_number_unverifies(self):
        """A verified number replaced by another (bridgectl, the vCard) is unverified: no SMS goes out."""
        rig = GatewayRig()
        rig.verify()
        result_of(rig.preferences.update("localhost", "bob", mobile="+15550001111"))
        rig.write("bob@localhost", "hello")
        self.assertEqual(rig.submits(), [])

    def test_codes_expire(self):
        """A code sent back after its lifetime verifies nothing."""
        rig = GatewayRig(verification_code_lifetime_minutes=5)
        bob = rig.harness.login("bob@localhost/phone")
        rig.command(bob, "verify")
        (code_sms,) = rig.submits()
        rig.smsc.answer(code_sms, message_id="c1")
        rig.wait(300)
        self.assertEqual(rig.command(bob, code_sms.short_message.decode()[:6]),
                         ["No code is waiting: send 'verify' for one."])

    def test_wrong_tries_void_the_code(self):
        """After verification_tries_per_code wrong codes the right one no longer works."""
        rig = GatewayRig(verification_tries_per_code=2)
        bob = rig.harness.login("bob@localhost/phone")
        rig.command(bob, "verify")
        code = rig.submits()[0].short_message.decode()[:6]
        wrong = f"{(int(code) + 1) % 1000000:06d}"
        self.assertEqual(rig.command(bob, wrong), ["Wrong code: 1 try left."])
        self.assertEqual(rig.command(bob, wrong), ["Wrong code, and no tries left: send 'verify' for a new code."])
        self.assertEqual(rig.command(bob, code), ["No code is waiting: send 'verify' for one."])

    def test_codes_a_day(self):
        """A user gets verification_codes_per_day_per_user codes a day, then none until the next day."""
        rig = GatewayRig(verification_codes_per_day_per_user=2)
        bob = rig.harness.login("bob@localhost/phone")
        rig.command(bob, "verify")
        rig.command(bob, "verify")
        self.assertEqual(rig.command(bob, "verify"), ["No more codes today (2 a day): try again after 00:00 UTC."])
        self.assertEqual(len(rig.submits()), 2)

    def test_codes_are_charged_to_the_sending_limits(self):
        """A code is an SMS the user asked for: past the user's sending limit none is sent."""
        rig = GatewayRig(outbound_sms_per_day_per_user=0)
        bob = rig.harness.login("bob@localhost/phone")
        self.assertEqual(rig.command(bob, "verify"),
                         ["SMS limit reached: 0 SMS a day per user (the day ends at 00:00 UTC)"])
        self.assertEqual(rig.submits(), [])

    def test_other_words_get_the_help_and_strangers_are_refused(self):
        """Anything else to the domain gets the help text; a remote sender gets forbidden."""
        rig = GatewayRig()
        bob = rig.harness.login("bob@localhost/phone")
        (help_text,) = rig.command(bob, "hello?")
        self.assertIn("'verify'", help_text)
        rig.server.router.route(parse_element(
            "<message from='mallory@evil.example/x' to='sms.localhost' id='e1'><body>verify</body></message>"))
        self.assertEqual(rig.submits(), [])

    def test_verify_without_a_number(self):
        """'verify' from a user with no number, or with something that is not one, explains what to send."""
        rig = GatewayRig()
        carol = rig.harness.login("carol@localhost/desk")
        self.assertEqual(rig.command(carol, "verify"),
                         ["You have no mobile number: send 'verify +15551234567' with yours."])
        self.assertEqual(rig.command(carol, "verify soon"),
                         ["'soon' is not a number in international form (+15551234567)."])


class NumberTests(SynchronousTestCase):
    def test_normalize(self):
        """Numbers in their usual spellings become +digits; anything else is None."""
        table = [("+1 555 123-4567", "+15551234567"), ("0044 20 7946 0000", "+442079460000"),
                 ("15551234567", "+15551234567"), ("(555) 1234", "+5551234"), ("bob", None), ("", None),
                 ("+12", None)]
        for value, expected in table:
            self.assertEqual(normalize_number(value), expected, value)


class ClearPasswordTests(SynchronousTestCase):
    def test_which_links_send_the_password_in_clear(self):
        """A bind password without TLS to an address other than loopback goes in clear; TLS, no
        password, or an SMSC on 127.0.0.0/8, ::1 or localhost does not."""
        table = [({"host": "smsc.example.net", "password": "pw"}, True),
                 ({"host": "192.0.2.7", "password_file": "/etc/bridge/smsc.pw"}, True),
                 ({"host": "smsc.example.net", "password": "pw", "tls": True}, False),
                 ({"host": "smsc.example.net"}, False),
                 ({"host": "127.0.0.2", "password": "pw"}, False),
                 ({"host": "::1", "password": "pw"}, False),
                 ({"host": "LocalHost", "password": "pw"}, False)]
        for options, expected in table:
            smsc = sms_config({"main": options}).smsc["main"]
            self.assertEqual(password_in_clear(smsc), expected, options)

    def test_start_warns_of_a_password_in_clear(self):
        """Starting with a remote SMSC, a password and no TLS logs a warning naming the link and TLS."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        GatewayRig(smsc={"local": {"password": "pw"}, "remote": {"host": "smsc.example.net", "password": "pw"}})
        warnings = [event for event in events if event.get("log_level") is not None
                    and event["log_level"].name == "warn" and "in clear" in event.get("log_format", "")]
        self.assertEqual([event["name"] for event in warnings], ["remote"])


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


class QueueSerialTests(SynchronousTestCase):
    def test_serials_are_reserved_in_blocks(self):
        """The queue's counter is written once for a block of serials, not once a message; a queue started
        again on the same storage numbers its messages after every key the first one gave."""
        rig = GatewayRig()
        queue, storage = rig.gateway.queue, rig.harness.storage
        keys = [result_of(queue.add("+15557654321", f"m{n}", {})) for n in range(5)]
        self.assertEqual(keys, sorted(set(keys)))
        self.assertEqual(result_of(storage.get(queue.domain, "", COUNTER_STORE)),
                         {"next": int(keys[0]) + SERIAL_BLOCK})
        again = OutboundQueue(storage, queue.domain, rig.clock, queue.config, lambda *args: None)
        self.assertGreater(result_of(again.add("+15557654321", "after", {})), keys[-1])

    def test_many_messages_while_storage_is_late(self):
        """Thousands of messages that arrive while the counter is being written, more than a block of
        them, each get their own serial once storage answers (at the end of each turn, as SQLite's thread
        does): none is left waiting (handed out one from another's callback, they nested past Python's
        recursion limit and the rest never got one)."""
        rig = GatewayRig()
        queue, storage = rig.gateway.queue, rig.harness.storage
        commits = Clock()
        storage.clock = commits
        added = [queue.add("+15557654321", f"m{n}", {}) for n in range(3000)]
        for _ in range(50):
            commits.advance(0)
        keys = [result_of(d) for d in added]
        self.assertEqual(len(set(keys)), 3000)
        storage.clock = None
        self.assertGreater(result_of(storage.get(queue.domain, "", COUNTER_STORE))["next"], int(max(keys)))

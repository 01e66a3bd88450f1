"""The email gateway: offline digests, the archive, the persisted outbox and its retries.

The gateway runs on a MemoryReactorClock: its timers are driven by
``advance`` and the connections it asks for (``connectTCP``) are answered by
``FakeRelay``, which plugs each one into Twisted's own ESMTP server protocol
over ``twisted.test.iosim`` or refuses it as a relay that is down would.
"""

import email
import email.policy
import os
import tempfile

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.mail import smtp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from bridge import config as configuration
from bridge.core.notifications import NotificationPreferences
from bridge.core.ownership import Ownership
from bridge.core.server import Server
from bridge.core.storage.memory import MemoryStorage
from bridge.core.streams.c2s import ClientFactory
from bridge.gateways import smtp as gateway_module
from bridge.gateways.smtp import DIGEST_DUE, OUTBOX, EmailGateway
from bridge.tap import load_features
from bridge.gateways.sip.gateway import SIPGateway
from bridge.gateways.sip.message import parse_datagram
from tests.unit.helpers import FakeClient, gateway_context, result_of
from tests.unit.test_sip_messaging import sip_message
from tests.unit.test_ownership import FakeLink, FakeRedis
from tests.unit.test_sip_registrar import FakeUDP, authorization

SMTP_DEFAULTS = {"relay": "relay.test:2525", "starttls": "off", "from_address": "im@example.com",
                 "digest_seconds": 60, "retry_initial_seconds": 10, "retry_max_seconds": 100}


def email_config(sip=None, **smtp_options):
    """``sip``: a [sip] table, for the tests of what phones say; else the gateway's defaults."""
    document = {"c2s": {"require_encryption": False},
                "hosts": {"localhost": {"offline_notification": "email"}},
                "smtp": {**SMTP_DEFAULTS, **smtp_options}}
    if sip is not None:
        document["sip"] = sip
    return configuration.parse(document, "test.toml")


@implementer(smtp.IMessage)
class CapturedMessage:
    def __init__(self, relay, envelope):
        self.relay = relay
        self.envelope = envelope
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        self.relay.received.append((*self.envelope, b"\n".join(self.lines)))
        return defer.succeed(None)

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class Delivery:
    def __init__(self, relay):
        self.relay = relay
        self.sender = None

    def receivedHeader(self, helo, origin, recipients):
        self.relay.helos.append(helo[0])
        return None

    def validateFrom(self, helo, origin):
        self.sender = str(origin)
        return origin

    def validateTo(self, user):
        address = str(user.dest)
        refusal = self.relay.refusals.get(address)
        if refusal:
            code = refusal.pop(0) if isinstance(refusal, list) else refusal
            if code:
                raise smtp.SMTPServerError(code, f"{code} refused by the test relay")
        return lambda: CapturedMessage(self.relay, (self.sender, address))


class FakeRelay:
    """Answers the connections a MemoryReactorClock was asked for, with Twisted's ESMTP server."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.down = False
        self.received = []     # (MAIL FROM, RCPT TO, data)
        self.helos = []
        self.refusals = {}     # address -> code, or a list of codes (0: accept) used in turn
        self.extensions = None
        self.attempts = 0

    def answer(self):
        """Serve (or refuse, when down) every pending connection; how many there were."""
        served = 0
        while self.reactor.tcpClients:
            host, port, factory, _, _ = self.reactor.tcpClients.pop(0)
            served += 1
            self.attempts += 1
            if self.down:
                factory.clientConnectionFailed(None, Failure(ConnectionRefusedError(host, port)))
                continue
            client = factory.buildProtocol(IPv4Address("TCP", host, port))
            server = smtp.ESMTP()
            server.delivery = Delivery(self)
            server.timeout = None
            if self.extensions is not None:
                server.extensions = lambda: dict(self.extensions)
            relay_address = IPv4Address("TCP", "192.0.2.25", port)
            bridge_address = IPv4Address("TCP", "192.0.2.1", 40000)
            pump = iosim.connect(server, iosim.FakeTransport(server, True, relay_address, bridge_address), client,
                                 iosim.FakeTransport(client, False, bridge_address, relay_address))
            pump.flush()
        return served

    def mails(self):
        return [email.message_from_bytes(data, policy=email.policy.default) for _, _, data in self.received]


class GatewayTestBase(SynchronousTestCase):
    """A server (in memory unless told a file) with alice and bob, bob offline with an address."""

    smtp_options = {}

    sip_options = None

    def setUp(self):
        self.config = email_config(self.sip_options, **self.smtp_options)
        self.storage = MemoryStorage()
        self.server_clock = Clock()
        self.server = Server(self.config, self.storage, self.server_clock)
        load_features(self.server)
        self.factory = ClientFactory(self.server, self.config.c2s, None)
        for user in ("alice", "bob", "carol"):
            if not result_of(self.server.accounts.exists("localhost", user)):
                result_of(self.server.accounts.create("localhost", user, "secret"))
        self.preferences = NotificationPreferences(self.storage, self.config.hosts.__getitem__)
        result_of(self.preferences.update("localhost", "bob", email="bob@example.org"))
        self.reactor = MemoryReactorClock()
        self.relay = FakeRelay(self.reactor)
        self.gateway = self.start_gateway()

    def start_gateway(self):
        self.context = gateway_context(self.server, "email", self.config.smtp)
        gateway = EmailGateway(self.context, self.reactor)
        gateway.start()
        self.addCleanup(lambda: gateway.running and gateway.stop())
        return gateway

    def login(self, jid, available=True):
        """A bound client; with ``available``, it sent its initial presence."""
        client = FakeClient(self, "127.0.0.1")
        client.login(jid)
        if available:
            client.send("<presence/>")
        client.received()
        return client

    def say(self, client, to, text, kind="chat"):
        client.send(f"<message to='{to}' type='{kind}'><body>{text}</body></message>")

    def outbox(self):
        return result_of(self.storage.items("", "", OUTBOX))


class OfflineEmailTests(GatewayTestBase):
    def test_one_message_is_a_proper_mime_mail(self):
        """One offline message becomes, after digest_seconds, a UTF-8 mail with every header set."""
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "Ça va? Tu viens ce soir?")
        self.reactor.advance(59)
        self.assertEqual(self.relay.answer(), 0, "nothing is sent before digest_seconds")
        self.reactor.advance(1)
        self.assertEqual(self.relay.answer(), 1)
        [(mail_from, rcpt, _)] = self.relay.received
        self.assertEqual((mail_from, rcpt), ("im@example.com", "bob@example.org"))
        [mail] = self.relay.mails()
        self.assertEqual(mail["From"], "im@example.com")
        self.assertEqual(mail["To"], "bob@example.org")
        self.assertEqual(mail["Subject"], "Message from alice@localhost")
        self.assertTrue(mail["Date"] and mail["Message-ID"].startswith("<"))
        self.assertEqual(mail.get_content_type(), "text/plain")
        self.assertEqual(mail.get_content_charset(), "utf-8")
        body = mail.get_content()
        self.assertIn("Ça va? Tu viens ce soir?", body)
        self.assertIn("alice@localhost", body)
        self.assertEqual(self.outbox(), [], "the relay accepted it: it left the queue")
        self.assertEqual(self.relay.helos, [b"localhost"])

    def test_messages_within_digest_seconds_are_one_digest(self):
        """Several messages to one offline user in the window go out as one mail, each with its sender."""
        alice = self.login("alice@localhost/a")
        carol = self.login("carol@localhost/c")
        self.say(alice, "bob@localhost", "first")
        self.reactor.advance(20)
        self.say(carol, "bob@localhost", "second")
        self.reactor.advance(20)
        self.say(alice, "bob@localhost", "third")
        self.reactor.advance(20)
        self.relay.answer()
        [mail] = self.relay.mails()
        self.assertEqual(mail["Subject"], "3 messages from alice@localhost, carol@localhost")
        body = mail.get_content()
        self.assertTrue(body.index("first") < body.index("second") < body.index("third"))
        self.assertIn("carol@localhost, 1970-01-01 00:00:20 UTC:\nsecond", body)
        # A later message starts a new digest.
        self.say(alice, "bob@localhost", "fourth")
        self.reactor.advance(60)
        self.relay.answer()
        self.assertEqual(len(self.relay.mails()), 2)
        self.assertIn("fourth", self.relay.mails()[1].get_content())

    def test_no_mail_without_the_email_channel_or_an_address(self):
        """A user who opted out, or who has no address, is not mailed; bodiless messages neither."""
        result_of(self.preferences.update("localhost", "bob", policy="sms"))
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "not by email")
        self.say(alice, "carol@localhost", "carol has no address")
        alice.send("<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/>"
                   "</message>")
        self.reactor.advance(600)
        self.assertEqual(self.relay.answer(), 0)
        self.assertEqual(self.outbox(), [])

    def test_alert_to_an_offline_user_is_mailed(self):
        """A headline (an alert, not stored) to a user with no available resource is mailed as a stored
        message is; one to a user who is online is not."""
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "meeting moved to 3pm", kind="headline")
        self.reactor.advance(60)
        self.assertEqual(self.relay.answer(), 1)
        self.assertIn("meeting moved to 3pm", self.relay.mails()[0].get_content())
        self.login("bob@localhost/b")
        self.say(alice, "bob@localhost", "you are here", kind="headline")
        self.reactor.advance(600)
        self.assertEqual(self.relay.answer(), 0)

    def test_other_offline_handlers_still_run(self):
        """The gateway never claims offline/stored, so the SMS gateway hooked after it still hears it."""
        seen = []
        self.server.hosts["localhost"].hooks.add("offline/stored", lambda payload: seen.append(payload[1]),
                                                 priority=-10)
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "hello")
        self.assertEqual(seen, ["bob"])


class RetryTests(GatewayTestBase):
    def queue_one(self):
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "are you coming?")
        self.reactor.advance(60)

    def test_connection_failure_retries_with_backoff(self):
        """A relay that is down is tried again after 10, 20, 40 s...; once up it gets the mail once."""
        self.relay.down = True
        self.queue_one()
        self.assertEqual(self.relay.answer(), 1)
        for delay in (10, 20, 40, 80, 100, 100):
            self.reactor.advance(delay - 0.5)
            self.assertEqual(self.relay.answer(), 0, f"too early in the {delay}s backoff")
            self.reactor.advance(0.5)
            self.assertEqual(self.relay.answer(), 1)
        self.assertEqual(len(self.outbox()), 1, "still queued while the relay is down")
        self.relay.down = False
        self.reactor.advance(100)
        self.relay.answer()
        self.assertEqual(len(self.relay.received), 1)
        self.assertEqual(self.outbox(), [])
        self.reactor.advance(1000)
        self.assertEqual(self.relay.answer(), 0, "nothing is sent twice")
        # Success reset the backoff: the next failure waits the first delay again.
        self.relay.down = True
        self.queue_one()
        self.relay.answer()
        self.reactor.advance(10)
        self.assertEqual(self.relay.answer(), 1)

    def test_4xx_for_the_recipient_retries(self):
        """A 451 at RCPT keeps the mail queued; the next attempt delivers it exactly once."""
        self.relay.refusals["bob@example.org"] = [451, 0]
        self.queue_one()
        self.relay.answer()
        self.assertEqual(self.relay.received, [])
        self.assertEqual(len(self.outbox()), 1)
        self.reactor.advance(10)
        self.relay.answer()
        self.assertEqual(len(self.relay.received), 1)
        self.assertEqual(self.outbox(), [])
        self.assertEqual(self.gateway.delivered, 1)

    def test_5xx_for_the_recipient_drops_that_mail_only(self):
        """A 550 at RCPT drops that mail (logged as an error); the queue goes on with the next."""
        self.relay.refusals["bob@example.org"] = [550, 0]
        self.queue_one()
        alice = self.login("alice@localhost/a2")
        self.say(alice, "bob@localhost", "second try")
        self.reactor.advance(60)
        self.relay.answer()
        self.assertEqual(self.gateway.dropped, 1)
        self.assertEqual(len(self.relay.received), 1)
        self.assertIn("second try", self.relay.mails()[0].get_content())
        self.assertEqual(self.outbox(), [])
        errors = self.flushLoggedErrors()
        self.assertEqual(errors, [])

    def test_refusal_before_recipients_is_not_final(self):
        """A refused MAIL FROM (a 5xx before any recipient) is the relay's policy, not the mail's: retry."""
        self.queue_one()
        original = Delivery.validateFrom

        def refuse(delivery, helo, origin):
            raise smtp.SMTPBadSender(origin, 553, "not allowed")

        Delivery.validateFrom = refuse
        try:
            self.relay.answer()
        finally:
            Delivery.validateFrom = original
        self.assertEqual(len(self.outbox()), 1)
        self.reactor.advance(10)
        self.relay.answer()
        self.assertEqual(len(self.relay.received), 1)


class TransportSecurityTests(GatewayTestBase):
    smtp_options = {"starttls": "required"}

    def test_required_starttls_not_offered_retries(self):
        """With starttls = "required", a relay without STARTTLS gets nothing and the mail stays queued."""
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "secret plans")
        self.reactor.advance(60)
        self.relay.answer()
        self.assertEqual(self.relay.received, [])
        self.assertEqual(len(self.outbox()), 1)
        self.reactor.advance(10)
        self.assertEqual(self.relay.answer(), 1, "tried again after the backoff")


class AuthenticationTests(GatewayTestBase):
    def setUp(self):
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "password")
        with open(path, "w") as handle:
            handle.write("s3cret\n")
        self.smtp_options = {"username": "bridge", "password_file": path}
        super().setUp()

    def test_password_file_read_and_auth_required(self):
        """The password comes from the file's first line; a relay offering no AUTH is not used."""
        self.assertEqual(self.gateway.password, "s3cret")
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "hello")
        self.reactor.advance(60)
        self.relay.answer()
        self.assertEqual(self.relay.received, [])
        self.assertEqual(len(self.outbox()), 1)


class ReloadTests(GatewayTestBase):
    def test_a_reload_changes_the_relay_and_sender_of_the_next_mail(self):
        """A reloaded [smtp] section (bridgectl reload) applies to the next mail: its relay, its sender."""
        changed = email_config(relay="other.test:2526", from_address="ops@example.com").smtp
        self.gateway.prepare_reload(changed)()
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "hello")
        self.reactor.advance(60)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("other.test", 2526))
        self.relay.answer()
        self.assertEqual([mail_from for mail_from, _, _ in self.relay.received], ["ops@example.com"])
        self.assertIs(self.context.config, changed)

    def test_a_password_file_that_cannot_be_read_refuses_the_reload(self):
        """The password file is read when the reload is prepared: one that is gone raises there, before
        anything changed."""
        missing = email_config(password_file=os.path.join(tempfile.mkdtemp(), "gone")).smtp
        with self.assertRaises(OSError):
            self.gateway.prepare_reload(missing)
        self.assertEqual((self.gateway.relay_host, self.gateway.mailer.from_address), ("relay.test", "im@example.com"))


class RestartTests(GatewayTestBase):
    def restart(self, advance_by=0):
        """Stop everything and build a new server and gateway on the same storage."""
        self.gateway.stop()
        self.context.unload()
        self.server = Server(self.config, self.storage, self.server_clock)
        load_features(self.server)
        self.factory = ClientFactory(self.server, self.config.c2s, None)
        self.preferences = NotificationPreferences(self.storage, self.config.hosts.__getitem__)
        reactor = MemoryReactorClock()
        reactor.advance(self.reactor.seconds() + advance_by)
        self.reactor = reactor
        self.relay.reactor = reactor
        self.gateway = self.start_gateway()

    def test_outbox_survives_a_restart_and_is_sent_once(self):
        """A mail queued while the relay is down is sent after a restart, once, and never again."""
        self.relay.down = True
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "kept across restarts")
        self.reactor.advance(60)
        self.relay.answer()
        self.relay.down = False
        self.restart()
        self.relay.answer()
        self.assertEqual(len(self.relay.received), 1)
        self.assertIn("kept across restarts", self.relay.mails()[0].get_content())
        self.restart()
        self.reactor.advance(1000)
        self.assertEqual(self.relay.answer(), 0)
        self.assertEqual(len(self.relay.received), 1)

    def test_pending_digest_resumes_after_a_restart(self):
        """Messages collected for a digest before a restart go out when the digest falls due after it."""
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "one")
        self.reactor.advance(30)
        self.say(alice, "bob@localhost", "two")
        self.restart(advance_by=10)
        self.reactor.advance(19)
        self.assertEqual(self.relay.answer(), 0, "the digest is not due yet (40 of 60 s)")
        self.reactor.advance(1)
        self.relay.answer()
        [mail] = self.relay.mails()
        self.assertEqual(mail["Subject"], "2 messages from alice@localhost")


class OwnershipTests(GatewayTestBase):
    """This server is node1 of a cluster whose node2 owns the outbox (a fake Redis, test_ownership.py)."""

    def start_gateway(self):
        self.redis = FakeRedis(self.reactor)
        self.redis.keys["lease:node1"] = ("a", 10 ** 9)
        self.redis.keys["owner:email:outbox"] = ("node2 b", self.reactor.seconds() + 9)
        self.server.ownership = Ownership(FakeLink(self.redis, "node1"), self.reactor, "node1", 9)
        gateway = super().start_gateway()
        self.server.ownership.refresh(self.reactor.seconds())
        return gateway

    def test_a_node_that_does_not_own_the_outbox_collects_and_the_owner_mails(self):
        """While node2 owns the outbox, node1 collects an offline message and writes when its digest is due,
        but mails nothing; once node2's key expired and node1 takes the outbox over, the digest, due long
        ago, is mailed at once."""
        alice = self.login("alice@localhost/a")
        self.say(alice, "bob@localhost", "while node2 sends")
        self.reactor.advance(60)
        self.assertEqual(self.relay.answer(), 0)
        self.assertEqual(self.outbox(), [])
        self.assertIsNotNone(result_of(self.storage.get("localhost", "bob", DIGEST_DUE)))
        self.server.ownership.refresh(self.reactor.seconds())
        self.reactor.advance(0)
        self.assertEqual(self.relay.answer(), 1)
        self.assertIn("while node2 sends", self.relay.mails()[0].get_content())


class SIPPhoneTests(GatewayTestBase):
    """What a user's SIP phone says enters as the user's client does, so email sees it too."""

    smtp_options = {"archive_recipients": ["audit@example.com"], "archive_interval_seconds": 300}
    sip_options = {"enabled": True}

    def setUp(self):
        super().setUp()
        self.sip_context = gateway_context(self.server, "sip", self.config.sip)
        self.sip = SIPGateway(self.sip_context)
        self.addCleanup(self.sip_context.unload)
        self.addCleanup(self.sip.stop)
        self.udp = FakeUDP()

    def phone_says(self, text, to="bob@localhost"):
        """alice's phone sends ``text`` by MESSAGE, answering the digest challenge; the final status."""
        statuses = []
        for cseq, auth in ((1, None), (2, "answer")):
            if auth is not None:
                challenge = self.udp.sent[-1][0]
                value = next(v for v in challenge.headers.get_all("WWW-Authenticate") if "algorithm=MD5" in v)
                auth = authorization(value, "alice", "secret", uri=f"sip:{to}", method="MESSAGE")
            request = sip_message(uri=f"sip:{to}", body=text, cseq=cseq, auth=auth, call_id="email@192.0.2.7")
            self.sip.message_received(parse_datagram(request.to_bytes()), self.udp, ("192.0.2.7", 5062))
            statuses.append(self.udp.sent[-1][0].status)
        self.assertEqual(statuses[0], 401)
        return statuses[-1]

    def test_phone_message_archived(self):
        """A MESSAGE from alice's phone to bob is in the conversation archive, from alice@localhost."""
        self.login("bob@localhost/b")
        self.assertEqual(self.phone_says("from the phone"), 202)
        self.reactor.advance(300)
        self.relay.answer()
        [mail] = self.relay.mails()
        self.assertEqual(mail["X-Bridge-Conversation"], "alice@localhost bob@localhost")
        self.assertIn("alice@localhost to bob@localhost", mail.get_content())
        self.assertIn("from the phone", mail.get_content())

    def test_phone_message_to_offline_user_notified_by_email(self):
        """A MESSAGE from alice's phone to bob, who is offline, is stored and announced to bob's address."""
        self.assertEqual(self.phone_says("while you were out"), 202)
        self.reactor.advance(60)
        self.relay.answer()
        digests = [mail for mail in self.relay.mails() if mail["To"] == "bob@example.org"]
        self.assertEqual([mail["Subject"] for mail in digests], ["Message from alice@localhost"])
        self.assertIn("while you were out", digests[0].get_content())


class ArchiveTests(GatewayTestBase):
    smtp_options = {"archive_recipients": ["audit@example.com", "boss@example.com"],
                    "archive_interval_seconds": 300}

    def test_conversation_archived_with_filter_headers(self):
        """A conversation goes, interval seconds after its first message, to every archive recipient."""
        alice = self.login("alice@localhost/a")
        bob = self.login("bob@localhost/b")
        self.say(alice, "bob@localhost", "hi bob")
        delivered = [stanza for stanza in bob.received() if stanza.name == "message"]
        self.assertEqual([str(stanza.body) for stanza in delivered], ["hi bob"], "routing went on")
        self.reactor.advance(100)
        self.say(bob, "alice@localhost/a", "hi alice")
        self.reactor.advance(199)
        self.assertEqual(self.relay.answer(), 0)
        self.reactor.advance(1)
        self.relay.answer()
        self.assertEqual(sorted(rcpt for _, rcpt, _ in self.relay.received),
                         ["audit@example.com", "boss@example.com"])
        mail = self.relay.mails()[0]
        self.assertEqual(mail["X-Bridge-Sender"], "alice@localhost, bob@localhost")
        self.assertEqual(mail["X-Bridge-Recipients"], "bob@localhost, alice@localhost")
        self.assertEqual(mail["X-Bridge-Conversation"], "alice@localhost bob@localhost")
        self.assertEqual(mail["To"], "audit@example.com, boss@example.com")
        body = mail.get_content()
        self.assertTrue(body.index("hi bob") < body.index("hi alice"))
        self.assertIn("alice@localhost to bob@localhost, 1970-01-01 00:00:00 UTC:", body)
        self.assertEqual(self.outbox(), [])

    def test_conversations_are_separate_and_blocked_messages_absent(self):
        """Each pair of users is its own mail; a message the blocking module refused is not archived."""
        alice = self.login("alice@localhost/a")
        carol = self.login("carol@localhost/c")
        self.login("bob@localhost/b")
        self.say(alice, "bob@localhost", "to bob")
        self.say(carol, "alice@localhost", "to alice")
        carol.iq("<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>")
        self.say(carol, "bob@localhost", "blocked")
        self.say(alice, "bob@localhost", "groupchat is not chat", kind="groupchat")
        self.reactor.advance(300)
        self.relay.answer()
        conversations = sorted({mail["X-Bridge-Conversation"] for mail in self.relay.mails()})
        self.assertEqual(conversations, ["alice@localhost bob@localhost", "alice@localhost carol@localhost"])
        text = "".join(mail.get_content() for mail in self.relay.mails())
        self.assertNotIn("blocked", text)
        self.assertNotIn("groupchat", text)

    def test_archive_survives_a_refusal_for_one_recipient(self):
        """A 4xx for one archive recipient re-queues the mail for that recipient alone."""
        self.relay.refusals["boss@example.com"] = [451, 0]
        alice = self.login("alice@localhost/a")
        self.login("bob@localhost/b")
        self.say(alice, "bob@localhost", "minutes")
        self.reactor.advance(300)
        self.relay.answer()
        self.assertEqual([rcpt for _, rcpt, _ in self.relay.received], ["audit@example.com"])
        [(_, item)] = self.outbox()
        self.assertEqual(item["to"], ["boss@example.com"])
        self.reactor.advance(60)
        self.relay.answer()
        self.assertEqual(sorted(rcpt for _, rcpt, _ in self.relay.received),
                         ["audit@example.com", "boss@example.com"])
        self.assertEqual(self.outbox(), [])


class ConfigTests(SynchronousTestCase):
    def test_smtp_section(self):
        """[smtp] is checked like every section: unknown keys and bad choices are errors."""
        config = email_config(relay="[::1]:587")
        self.assertEqual(config.smtp.relay_address(), ("::1", 587))
        self.assertEqual(email_config(relay="mail.example.com").smtp.relay_address(), ("mail.example.com", 25))
        with self.assertRaises(configuration.ConfigError) as caught:
            email_config(relais="x", starttls="sometimes")
        problems = "\n".join(caught.exception.problems)
        self.assertIn("smtp.relais: unknown key", problems)
        self.assertIn("smtp.starttls: must be one of", problems)

    def test_no_relay_no_gateway(self):
        """Without a relay, no gateway is built."""
        config = configuration.parse({}, "test.toml")
        server = Server(config, MemoryStorage(), Clock())
        context = gateway_context(server, "email", config.smtp)
        self.assertIsNone(gateway_module.attach(context, MemoryReactorClock(), None))

"""Fuzzing the client stream state machine: arbitrary elements after a stream header, before and after login.

Every generated element goes through the whole server (SASL, binding,
stream management, routing, every feature).  Whatever a client sends, the
server must answer with well-formed XML, log no internal failure and never
give up with <internal-server-error/>.
"""

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.xmlstream import parse_element

from tests.unit.fuzzing import (
    ATTRIBUTE_TEXT, TARGETS, XML_TEXT, Vocabulary, add_users, elements, no_logged_failures, target,
)
from tests.unit.helpers import Harness, LateStorage, make_config

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_SM = "urn:xmpp:sm:3"
NAMESPACES = (
    "jabber:iq:roster", "vcard-temp", "jabber:iq:private", "urn:xmpp:blocking", "urn:xmpp:ping",
    "http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items", "jabber:iq:register",
    "jabber:iq:version", "urn:ietf:params:xml:ns:xmpp-bind", "urn:ietf:params:xml:ns:xmpp-session",
    "urn:ietf:params:xml:ns:xmpp-stanzas", "urn:xmpp:delay", "vcard-temp:x:update", "storage:bookmarks",
    NS_SM, "urn:x",
)
ROOTS = (
    (None, "message"), (None, "presence"), (None, "iq"), (None, "iq"), (None, "iq"),
    (NS_SASL, "auth"), (NS_SASL, "response"), (NS_SASL, "abort"), ("urn:ietf:params:xml:ns:xmpp-tls", "starttls"),
    (NS_SM, "enable"), (NS_SM, "resume"), (NS_SM, "r"), (NS_SM, "a"), ("urn:x", "x"), (None, "junk"),
)
NAMES = (
    "body", "subject", "thread", "query", "item", "group", "vCard", "FN", "PHOTO", "BINVAL", "TYPE", "blocklist",
    "block", "unblock", "ping", "bind", "resource", "session", "username", "password", "remove", "email",
    "storage", "show", "status", "priority", "error", "x", "delay", "feature", "identity",
)
ATTRIBUTES = ("to", "from", "type", "id", "jid", "name", "subscription", "ask", "node", "var", "h", "previd",
              "resume", "mechanism", "ver", "approved", "code")
WORDS = (
    "", "localhost", "alice@localhost", "alice@localhost/fuzz", "bob@localhost", "bob@localhost/b",
    "carol@localhost", "nobody@elsewhere.test", "elsewhere.test", "@", "a@b@c", "alice@localhost/", "é@localhost",
    "x" * 1100 + "@localhost", "get", "set", "result", "error", "chat", "groupchat", "normal", "headline",
    "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "unavailable", "both", "from", "none",
    "remove", "true", "1", "0", "-1", "4294967296", "SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN", "SCRAM-SHA-1-PLUS",
    "=", "biws", "AGFsaWNlAHNlY3JldA==", "bixuPWFsaWNlLHI9eHl6",
)
C2S = Vocabulary(names=NAMES, namespaces=NAMESPACES, attributes=ATTRIBUTES, roots=ROOTS,
                 values=st.sampled_from(WORDS) | ATTRIBUTE_TEXT, text=st.sampled_from(WORDS[1:]) | XML_TEXT)
STANZAS = st.lists(elements(C2S, max_depth=3), min_size=1, max_size=6)


def stream_errors(elements):
    return [next(element.elements()).name for element in elements
            if element.name == "error" and element.uri == "http://etherx.jabber.org/streams"]


def feed_client_stream(stanzas, logged_in):
    """Send ``stanzas`` on a client stream (a logged-in one if ``logged_in``), with bob online to receive."""
    with no_logged_failures():
        harness = Harness(make_config(hosts={"localhost": {"registration": True}}))
        add_users(harness, "alice", "bob")
        bob = harness.login("bob@localhost/b")
        bob.send("<presence/>")
        if logged_in:
            client = harness.login("alice@localhost/fuzz")
            client.send("<presence/>")
        else:
            client = harness.connect()
            client.open_stream()
        answers = []
        for stanza in stanzas:
            client.send(stanza.toXml().encode("utf-8"))
            harness.clock.advance(1)
            # Both parse what the server wrote: it must be well-formed.
            answers += client.received()
            bob.received()
        harness.clock.advance(3600)
        answers += client.received()
        bob.received()
        client.drop()
        bob.drop()
    assert "internal-server-error" not in stream_errors(answers)


# Requests that wait for storage, with and without a payload the server accepts.
STORAGE_REQUESTS = st.sampled_from((
    "<iq type='get' id='v'><vCard xmlns='vcard-temp'/></iq>",
    "<iq type='set' id='v'><vCard xmlns='vcard-temp'><FN>A</FN></vCard></iq>",
    "<iq type='get' id='v' to='bob@localhost'><vCard xmlns='vcard-temp'/></iq>",
    "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
    "<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>",
    "<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/>"
    "</query></iq>",
    "<iq type='get' id='p'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>",
    "<iq type='set' id='p'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>",
    "<iq type='get' id='b'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
    "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='carol@localhost'/></block></iq>",
    "<iq type='set' id='b'><unblock xmlns='urn:xmpp:blocking'/></iq>",
    "<presence to='bob@localhost' type='subscribe'/>", "<presence to='bob@localhost' type='subscribed'/>",
    "<message to='carol@localhost'><body>offline</body></message>",
)).map(parse_element)


def requests_to_server(stanza):
    """The id of an iq request the server itself must answer (to the account or the host), else None."""
    if stanza.name != "iq" or stanza.getAttribute("type") not in ("get", "set") or not stanza.hasAttribute("id"):
        return None
    return stanza["id"] if stanza.getAttribute("to") in (None, "localhost", "alice@localhost") else None


def answers_by_id(elements):
    """The ids of the iq results and errors among ``elements``."""
    return [element["id"] for element in elements if element.name == "iq"
            and element.getAttribute("type") in ("result", "error") and element.hasAttribute("id")]


@target("c2s-late-storage", st.lists(st.tuples(STORAGE_REQUESTS | elements(C2S, max_depth=3), st.booleans()),
                                      min_size=1, max_size=8), examples=30)
def late_storage(steps):
    """Stanzas from a bound session while storage answers late (after some stanzas, or only at the end): no
    logged failure or internal error, and once storage has answered everything, every request to the
    server is answered, unless a stream error ended the stream."""
    with no_logged_failures():
        storage = LateStorage()
        harness = Harness(make_config(hosts={"localhost": {"registration": True}}), storage=storage)
        add_users(harness, "alice", "bob")
        bob = harness.login("bob@localhost/b")
        bob.send("<presence/>")
        client = harness.login("alice@localhost/fuzz")
        client.send("<presence/>")
        client.received()
        storage.late = True
        requests, answers = [], []
        for stanza, answer_now in steps:
            if client.transport.producerState != "paused":  # a paused transport delivers nothing
                requests.append(requests_to_server(stanza))
                client.send(stanza.toXml().encode("utf-8"))
            if answer_now:
                storage.answer()
            answers += client.received()
            bob.received()
        storage.late = False
        while storage.waiting:
            storage.answer()
        harness.clock.advance(3600)
        answers += client.received()
        client.drop()
        bob.drop()
    assert "internal-server-error" not in stream_errors(answers)
    if not stream_errors(answers):
        unanswered = [key for key in requests if key is not None]
        for key in answers_by_id(answers):
            if key in unanswered:
                unanswered.remove(key)
        assert not unanswered, f"requests never answered: {unanswered}"


@target("c2s-before-login", STANZAS, examples=30)
def before_login(stanzas):
    """Elements on a fresh stream: well-formed answers, no logged failure, no internal-server-error."""
    feed_client_stream(stanzas, logged_in=False)


@target("c2s-session", STANZAS, examples=40)
def in_session(stanzas):
    """Stanzas from a bound session, bob online: well-formed answers, no logged failure or internal error."""
    feed_client_stream(stanzas, logged_in=True)


class ClientStreamFuzzTests(SynchronousTestCase):
    def test_elements_before_login(self):
        """Arbitrary elements after a stream header are refused with a stream or SASL error, never a crash."""
        TARGETS["c2s-before-login"].run()

    def test_elements_in_a_session(self):
        """Arbitrary stanzas from a bound session are answered or refused, never a crash."""
        TARGETS["c2s-session"].run()

    def test_elements_while_storage_answers_late(self):
        """With storage answering late, every request to the server is answered in the end, never a crash."""
        TARGETS["c2s-late-storage"].run()

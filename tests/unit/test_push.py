"""Push Notifications (XEP-0357): registrations, when a push is sent, what it says, and its bounds."""

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.xmlstream import parse_element
from tests.unit.helpers import Harness, result_of

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
SM = "urn:xmpp:sm:3"
APP = "push.example"
SECRET_FORM = (f"<x xmlns='{NS_DATA}' type='submit'>"
               "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
               "<field var='secret'><value>s3cr3t</value></field></x>")


def push_config(push=None, quotas=None):
    document = {"c2s": {"require_encryption": False, "resumption_timeout_seconds": 300},
                "hosts": {"localhost": {}}, "push": push or {}, "quotas": quotas or {}}
    return configuration.parse(document, "test.toml")


class AppServer:
    """A route for the app server's domain: what the server publishes to it."""

    def __init__(self):
        self.received = []

    def deliver(self, stanza):
        self.received.append(stanza)


def form_fields(form):
    return {field["var"]: [str(value) for value in field.elements(NS_DATA, "value")]
            for field in form.elements(NS_DATA, "field")}


def summary(push):
    """The fields of a push's summary form, and the fields of its publish-options (or None)."""
    pubsub = next(push.elements(NS_PUBSUB, "pubsub"))
    publish = next(pubsub.elements(NS_PUBSUB, "publish"))
    notification = next(next(publish.elements(NS_PUBSUB, "item")).elements(NS_PUSH, "notification"))
    options = [form_fields(next(child.elements(NS_DATA, "x")))
               for child in pubsub.elements(NS_PUBSUB, "publish-options")]
    return publish["node"], form_fields(next(notification.elements(NS_DATA, "x"))), (options or [None])[0]


class PushTestCase(SynchronousTestCase):
    config = None

    def setUp(self):
        self.harness = Harness(self.config or push_config())
        for user in ("alice", "bob"):
            self.harness.add_user(f"{user}@localhost")
        self.app = AppServer()
        self.harness.server.router.addRoute(APP, self.app)
        self.bob = self.harness.login("bob@localhost/b")

    def enable(self, client, node="n1", jid=APP, form="", to="", iq_id="p1"):
        return client.iq(f"<iq type='set' id='{iq_id}'{to}><enable xmlns='{NS_PUSH}' jid='{jid}' node='{node}'>"
                         f"{form}</enable></iq>")

    def online(self, jid="alice@localhost/phone", push=True, sm=True):
        client = self.harness.login(jid)
        if push:
            reply = self.enable(client)
            self.assertEqual(reply["type"], "result", reply.toXml())
        if sm:
            client.send(f"<enable xmlns='{SM}' resume='true'/>")
        client.send("<presence/>")
        client.received()
        return client

    def held(self, jid="alice@localhost/phone", push=True):
        """A session of alice whose connection dropped, held for resumption."""
        client = self.online(jid, push)
        client.drop()
        session = self.harness.server.sessions.get(jid)
        self.assertTrue(session.sm.awaiting_resumption)
        return session

    def offline(self):
        """alice enabled push, then left cleanly: no session at all."""
        client = self.online(sm=False)
        client.send("</stream:stream>")
        client.drop()
        self.assertEqual(self.harness.server.sessions.resources("alice@localhost"), [])

    def say(self, payload="<body>hello</body>", to="alice@localhost", kind="chat"):
        self.bob.send(f"<message to='{to}' type='{kind}' id='m'>{payload}</message>")

    def pushes(self):
        found, self.app.received[:] = list(self.app.received), []
        return found

    def registrations(self):
        return result_of(self.harness.storage.get("localhost", "alice", "push")) or []

    def answer(self, push, error=None):
        """The app server answers a push: a result, or an error of this (type, condition)."""
        if error is None:
            text = f"<iq type='result' id='{push['id']}' from='{APP}' to='alice@localhost'/>"
        else:
            kind, condition = error
            text = (f"<iq type='error' id='{push['id']}' from='{APP}' to='alice@localhost'><error type='{kind}'>"
                    f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        self.harness.server.router.route(parse_element(text))


class WhenTests(PushTestCase):
    def test_held_session_is_pushed_the_summary(self):
        """A message with a body for a session held for resumption publishes, from alice's bare JID to
        the app server, a summary with the count and the sender and, by default, no body."""
        self.held()
        self.say()
        [push] = self.pushes()
        self.assertEqual((push["type"], push["from"], push["to"]), ("set", "alice@localhost", APP))
        node, fields, options = summary(push)
        self.assertEqual(node, "n1")
        self.assertEqual(fields, {"FORM_TYPE": ["urn:xmpp:push:summary"], "message-count": ["1"],
                                  "last-message-sender": ["bob@localhost/b"]})
        self.assertIsNone(options)

    def test_connected_session_is_not_pushed(self):
        """A session whose connection is up gets the message itself and no push is sent."""
        self.online()
        self.say()
        self.assertEqual(self.pushes(), [])

    def test_offline_account_is_pushed(self):
        """A message stored offline for an account with push enabled and no session is pushed."""
        self.offline()
        self.say()
        [push] = self.pushes()
        self.assertEqual(summary(push)[1]["message-count"], ["1"])
        self.assertEqual(len(result_of(self.harness.storage.items("localhost", "alice", "offline"))), 1)

    def test_offline_account_without_push_is_not_pushed(self):
        """An offline account that never enabled push causes no publish."""
        self.online(push=False, sm=False).drop()
        self.say()
        self.assertEqual(self.pushes(), [])

    def test_chat_states_receipts_markers_are_not_pushed(self):
        """Chat states, receipts and markers alone wake nobody, held or offline; an encrypted message
        without a body does."""
        self.held()
        for payload in ("<composing xmlns='http://jabber.org/protocol/chatstates'/>",
                        "<received xmlns='urn:xmpp:receipts' id='x'/>",
                        "<displayed xmlns='urn:xmpp:chat-markers:0' id='x'/>"):
            self.say(payload)
        self.say("<body>error</body>", kind="error")
        self.assertEqual(self.pushes(), [])
        self.say("<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'/></encrypted>")
        self.assertEqual(len(self.pushes()), 1)

    def test_stored_chat_state_is_not_pushed(self):
        """A chat state its sender asked to be stored (the <store/> hint) is kept offline but pushes nothing."""
        self.offline()
        self.say("<composing xmlns='http://jabber.org/protocol/chatstates'/><store xmlns='urn:xmpp:hints'/>")
        self.assertEqual(len(result_of(self.harness.storage.items("localhost", "alice", "offline"))), 1)
        self.assertEqual(self.pushes(), [])

    def test_only_the_enabling_resource_is_pushed_when_held(self):
        """A registration belongs to the client that made it: a held session of another resource of
        the account that enabled nothing does not use it."""
        self.online("alice@localhost/laptop", push=True, sm=False).drop()
        self.held("alice@localhost/phone", push=False)
        self.say()
        self.assertEqual(self.pushes(), [])

    def test_publish_options_are_sent_with_each_push(self):
        """The form given at enable (a secret) comes as publish-options with the push."""
        client = self.harness.login("alice@localhost/phone")
        self.assertEqual(self.enable(client, form=SECRET_FORM)["type"], "result")
        client.send("</stream:stream>")
        client.drop()
        self.say()
        [push] = self.pushes()
        self.assertEqual(summary(push)[2]["secret"], ["s3cr3t"])

    def test_one_message_one_push_even_when_the_held_session_ends(self):
        """A message pushed for a held session that expires unresumed goes to offline storage and is
        not pushed a second time."""
        self.held()
        self.say()
        self.assertEqual(len(self.pushes()), 1)
        self.harness.clock.advance(301)
        self.assertEqual(len(result_of(self.harness.storage.items("localhost", "alice", "offline"))), 1)
        self.harness.clock.advance(60)
        self.assertEqual(self.pushes(), [])

    def test_registrations_outlive_a_restart(self):
        """A registration is in storage: a new server on the same storage pushes with it."""
        self.offline()
        harness = Harness(self.harness.config, self.harness.storage)
        app = AppServer()
        harness.server.router.addRoute(APP, app)
        harness.login("bob@localhost/b").send("<message to='alice@localhost' type='chat'><body>x</body></message>")
        self.assertEqual(len(app.received), 1)

    def test_disco_of_the_account_lists_push(self):
        """disco#info of the account's bare JID announces urn:xmpp:push:0."""
        client = self.harness.login("alice@localhost/phone")
        reply = client.iq("<iq type='get' id='d' to='alice@localhost'>"
                          "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertIn(NS_PUSH, [feature["var"] for feature in reply.query.elements(None, "feature")]
                      + [feature["var"] for feature in reply.query.elements(
                          "http://jabber.org/protocol/disco#info", "feature")])


class BodyTests(PushTestCase):
    config = push_config(push={"include_body": True})

    def test_body_when_configured(self):
        """With include_body on, the push carries the last message's text."""
        self.held()
        self.say()
        self.assertEqual(summary(self.pushes()[0])[1]["last-message-body"], ["hello"])


class RateTests(PushTestCase):
    config = push_config(push={"min_interval_seconds": 10})

    def test_pushes_are_spaced_and_coalesced(self):
        """One push per registration per min_interval_seconds: the messages in between are told in one
        push at its end, with their count and the last sender; then nothing until the next message."""
        self.held()
        self.say()
        self.assertEqual(len(self.pushes()), 1)
        for _ in range(3):
            self.say()
        self.assertEqual(self.pushes(), [])
        self.harness.clock.advance(10)
        [push] = self.pushes()
        self.assertEqual(summary(push)[1]["message-count"], ["3"])
        self.harness.clock.advance(10)
        self.assertEqual(self.pushes(), [])
        self.say()
        self.assertEqual(len(self.pushes()), 1)


class AnswerTests(PushTestCase):
    def test_error_disables_the_registration(self):
        """An app server answering item-not-found loses the registration: no further push."""
        self.held()
        self.say()
        self.answer(self.pushes()[0], ("cancel", "item-not-found"))
        self.assertEqual(self.registrations(), [])
        self.harness.clock.advance(60)
        self.say()
        self.assertEqual(self.pushes(), [])

    def test_errors_of_pushes_in_flight_are_logged_once(self):
        """Two pushes in flight both answered with errors remove the registration once and log it once."""
        logged = []
        observer = lambda event: logged.append(event) if "disabled" in event.get("log_format", "") else None
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.held()
        self.say()
        self.say()
        self.harness.clock.advance(10)
        first, second = self.pushes()
        for push in (first, second):
            self.answer(push, ("auth", "not-authorized"))
        self.assertEqual(self.registrations(), [])
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["condition"], "not-authorized")

    def test_wait_error_and_timeout_keep_the_registration(self):
        """An error of type wait, or no answer at all, leaves the registration in place."""
        self.held()
        self.say()
        self.answer(self.pushes()[0], ("wait", "resource-constraint"))
        self.harness.clock.advance(60)
        self.say()
        self.assertEqual(len(self.pushes()), 1)
        self.harness.clock.advance(120)
        self.assertEqual(len(self.registrations()), 1)

    def test_an_answer_from_elsewhere_is_ignored(self):
        """An error that names a push's id but comes from another JID disables nothing."""
        self.held()
        self.say()
        push = self.pushes()[0]
        self.harness.server.router.route(parse_element(
            f"<iq type='error' id='{push['id']}' from='bob@localhost/b' to='alice@localhost'>"
            "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"))
        self.assertEqual(len(self.registrations()), 1)


class EnableTests(PushTestCase):
    config = push_config(quotas={"max_push_registrations_per_user": 2, "max_push_bytes_per_user": 1024})

    def test_only_own_resources_may_enable(self):
        """bob cannot register an app server for alice: forbidden, and nothing is stored."""
        reply = self.enable(self.bob, to=" to='alice@localhost'")
        self.assertEqual(reply["type"], "error")
        self.assertEqual(reply.error.firstChildElement().name, "forbidden")
        self.assertEqual(self.registrations(), [])

    def test_enable_needs_jid_and_node(self):
        """An enable without a node, or with a malformed jid, is bad-request."""
        client = self.harness.login("alice@localhost/phone")
        for text in (f"<enable xmlns='{NS_PUSH}' jid='{APP}'/>", f"<enable xmlns='{NS_PUSH}' jid='a@@b' node='n'/>"):
            reply = client.iq(f"<iq type='set' id='x'>{text}</iq>")
            self.assertEqual(reply.error.firstChildElement().name, "bad-request")
        self.assertEqual(self.registrations(), [])

    def test_reenable_replaces_and_count_is_bounded(self):
        """Enabling the same jid and node again replaces the registration; a third distinct one
        passes max_push_registrations_per_user and gets resource-constraint."""
        client = self.harness.login("alice@localhost/phone")
        for node in ("n1", "n1", "n2"):
            self.assertEqual(self.enable(client, node=node)["type"], "result")
        self.assertEqual(sorted(r["node"] for r in self.registrations()), ["n1", "n2"])
        reply = self.enable(client, node="n3")
        self.assertEqual(reply.error.firstChildElement().name, "resource-constraint")
        self.assertEqual(len(self.registrations()), 2)

    def test_bytes_are_bounded(self):
        """A registration whose form passes max_push_bytes_per_user is refused with resource-constraint."""
        client = self.harness.login("alice@localhost/phone")
        form = f"<x xmlns='{NS_DATA}' type='submit'><field var='secret'><value>{'s' * 1200}</value></field></x>"
        reply = self.enable(client, form=form)
        self.assertEqual(reply.error.firstChildElement().name, "resource-constraint")
        self.assertEqual(self.registrations(), [])

    def test_disable(self):
        """<disable/> with a node removes that registration; without one, every node at the app server."""
        client = self.harness.login("alice@localhost/phone")
        for node in ("n1", "n2"):
            self.enable(client, node=node)
        client.iq(f"<iq type='set' id='d1'><disable xmlns='{NS_PUSH}' jid='{APP}' node='n1'/></iq>")
        self.assertEqual([r["node"] for r in self.registrations()], ["n2"])
        reply = client.iq(f"<iq type='set' id='d2'><disable xmlns='{NS_PUSH}' jid='{APP}'/></iq>")
        self.assertEqual(reply["type"], "result")
        self.assertEqual(self.registrations(), [])

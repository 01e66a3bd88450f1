"""Personal eventing (XEP-0163) on the pubsub core (XEP-0060, XEP-0223) and the caps filter (XEP-0115),
on the in-memory server."""

import base64
import hashlib

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.caps import CapsCache, verified
from bridge.core.xmlstream import parse_element
from tests.unit.helpers import Harness, result_of

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = NS_PUBSUB + "#owner"
NS_EVENT = NS_PUBSUB + "#event"
NS_ERRORS = NS_PUBSUB + "#errors"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_CAPS = "http://jabber.org/protocol/caps"
NS_TUNE = "http://jabber.org/protocol/tune"


def conditions(reply):
    """(the stanza error condition, the pubsub#errors condition or None) of an error reply."""
    error = reply.error
    stanza = next(child.name for child in error.elements() if child.uri == "urn:ietf:params:xml:ns:xmpp-stanzas")
    app = next((child.name for child in error.elements() if child.uri == NS_ERRORS), None)
    return stanza, app


def caps_ver(features):
    """The XEP-0115 'ver' of a client with identity client/pc 'test' and ``features`` (section 5.1, done by hand)."""
    text = "client/pc//test<" + "".join(f"{feature}<" for feature in sorted(features))
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def options_form(**options):
    fields = "".join(f"<field var='pubsub#{name}'><value>{value}</value></field>" for name, value in options.items())
    return (f"<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{NS_PUBSUB}#publish-options</value></field>{fields}</x></publish-options>")


class PepTestCase(SynchronousTestCase):
    pep = {}

    def setUp(self):
        document = {"c2s": {"require_encryption": False}, "hosts": {"localhost": {}}, "pep": self.pep}
        self.harness = Harness(configuration.parse(document, "test.toml"))
        for user in ("alice", "bob", "carol"):
            self.harness.add_user(f"{user}@localhost")
        self.ids = 0

    def online(self, jid, features=None):
        """A logged-in client with available presence; with ``features``, caps announcing them."""
        client = self.harness.login(jid)
        caps = ""
        if features is not None:
            caps = f"<c xmlns='{NS_CAPS}' hash='sha-1' node='https://example.org/test' ver='{caps_ver(features)}'/>"
        client.send(f"<presence>{caps}</presence>")
        return client

    def answer_caps(self, client, features, ver=None):
        """Answer the server's disco#info question about the client's caps; the stanzas received besides."""
        received = client.received()
        questions = [s for s in received if s.name == "iq" and s.getAttribute("type") == "get"
                     and s.query is not None and s.query.uri == NS_INFO]
        self.assertEqual(len(questions), 1, [s.toXml() for s in received])
        question = questions[0]
        self.assertEqual(question["from"], "localhost")
        self.assertEqual(question.query["node"], f"https://example.org/test#{ver or caps_ver(features)}")
        body = "<identity category='client' type='pc' name='test'/>" + "".join(
            f"<feature var='{feature}'/>" for feature in features)
        client.send(f"<iq type='result' id='{question['id']}' to='localhost'>"
                    f"<query xmlns='{NS_INFO}' node='{question.query['node']}'>{body}</query></iq>")
        return [s for s in received if s is not question] + client.received()

    def befriend(self, one, other, one_jid, other_jid):
        """Mutual presence subscription between two online clients (what they received is kept for later)."""
        for asker, answerer, asked_jid, asker_jid in ((one, other, other_jid, one_jid), (other, one, one_jid, other_jid)):
            asker.send(f"<presence type='subscribe' to='{asked_jid}'/>")
            answerer.send(f"<presence type='subscribed' to='{asker_jid}'/>")
        one.backlog = one.received()
        other.backlog = other.received()

    def iq(self, client, kind, payload, to="alice@localhost", uri=NS_PUBSUB):
        self.ids += 1
        return client.iq(f"<iq type='{kind}' id='p{self.ids}' to='{to}'><pubsub xmlns='{uri}'>{payload}</pubsub></iq>")

    def publish(self, client, node, payload="<tune xmlns='http://jabber.org/protocol/tune'><title>a</title></tune>",
                item_id="i1", options="", to="alice@localhost"):
        id_attribute = f" id='{item_id}'" if item_id else ""
        return self.iq(client, "set", f"<publish node='{node}'><item{id_attribute}>{payload}</item></publish>{options}",
                       to=to)

    def items(self, client, node, to="alice@localhost", extra="", attributes=""):
        return self.iq(client, "get", f"<items node='{node}'{attributes}>{extra}</items>", to=to)

    @staticmethod
    def item_ids(reply):
        return [item["id"] for item in reply.pubsub.items.elements(NS_PUBSUB, "item")]

    @staticmethod
    def events(stanzas):
        return [s for s in stanzas if s.name == "message" and s.event is not None and s.event.uri == NS_EVENT]


class PublishTests(PepTestCase):
    pep = {"max_nodes_per_user": 2, "max_item_bytes": 1024, "max_bytes_per_user": 2048}

    def test_first_publish_creates_the_node_and_the_owner_reads_it(self):
        """A publish to a node that does not exist creates it; the reply names the item id the server chose;
        the owner reads the item back."""
        alice = self.online("alice@localhost/a")
        reply = self.publish(alice, NS_TUNE, item_id=None)
        self.assertEqual(reply["type"], "result", reply.toXml())
        item_id = reply.pubsub.publish.item["id"]
        self.assertTrue(item_id)
        found = self.items(alice, NS_TUNE)
        self.assertEqual(self.item_ids(found), [item_id])
        self.assertEqual(str(found.pubsub.items.item.tune.title), "a")

    def test_publish_to_another_users_node_is_forbidden(self):
        """bob may not publish to alice's node: forbidden, and nothing is created."""
        self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        reply = self.publish(bob, NS_TUNE)
        self.assertEqual(conditions(reply)[0], "forbidden")
        self.assertIsNone(result_of(self.harness.storage.get("localhost", "alice", "pep")))

    def test_item_over_the_size_limit(self):
        """An item payload over max_item_bytes is refused not-acceptable with payload-too-big."""
        alice = self.online("alice@localhost/a")
        reply = self.publish(alice, NS_TUNE, payload=f"<tune xmlns='{NS_TUNE}'><title>{'x' * 1100}</title></tune>")
        self.assertEqual(conditions(reply), ("not-acceptable", "payload-too-big"))

    def test_node_count_past_the_cap(self):
        """A third node past max_nodes_per_user 2 is refused policy-violation with max-nodes-exceeded;
        publishing to an existing node still works."""
        alice = self.online("alice@localhost/a")
        self.assertEqual(self.publish(alice, "n1")["type"], "result")
        self.assertEqual(self.publish(alice, "n2")["type"], "result")
        self.assertEqual(conditions(self.publish(alice, "n3")), ("policy-violation", "max-nodes-exceeded"))
        self.assertEqual(self.publish(alice, "n1", item_id="i2")["type"], "result")

    def test_total_bytes_per_account(self):
        """An item that would take the account's items past max_bytes_per_user is refused
        policy-violation; replacing a big item by a small one is allowed."""
        alice = self.online("alice@localhost/a")
        big = f"<tune xmlns='{NS_TUNE}'><title>{'x' * 900}</title></tune>"
        three = options_form(max_items=3)
        self.assertEqual(self.publish(alice, "n", payload=big, item_id="i1", options=three)["type"], "result")
        self.assertEqual(self.publish(alice, "n", payload=big, item_id="i2", options=three)["type"], "result")
        self.assertEqual(conditions(self.publish(alice, "n", payload=big, item_id="i3", options=three)),
                         ("policy-violation", None))
        self.assertEqual(self.publish(alice, "n", item_id="i1", options=three)["type"], "result")
        self.assertEqual(self.item_ids(self.items(alice, "n")), ["i2", "i1"])

    def test_bad_publishes(self):
        """A publish without an item, or with two payloads, is a bad-request with XEP-0060's condition."""
        alice = self.online("alice@localhost/a")
        reply = self.iq(alice, "set", f"<publish node='{NS_TUNE}'/>")
        self.assertEqual(conditions(reply), ("bad-request", "item-required"))
        reply = self.publish(alice, NS_TUNE, payload=f"<tune xmlns='{NS_TUNE}'/><tune xmlns='{NS_TUNE}'/>")
        self.assertEqual(conditions(reply), ("bad-request", "invalid-payload"))


class OptionsTests(PepTestCase):
    def test_max_items_keeps_the_newest_and_retrieval_by_count_and_id(self):
        """With publish-options max_items 3, five publishes keep the last three; max_items='2' returns the
        two newest, an <item id/> that one; the same id replaces its item."""
        alice = self.online("alice@localhost/a")
        for number in range(5):
            reply = self.publish(alice, "n", item_id=f"i{number}", options=options_form(max_items=3))
            self.assertEqual(reply["type"], "result", reply.toXml())
        self.assertEqual(self.item_ids(self.items(alice, "n")), ["i2", "i3", "i4"])
        self.assertEqual(self.item_ids(self.items(alice, "n", attributes=" max_items='2'")), ["i3", "i4"])
        self.assertEqual(self.item_ids(self.items(alice, "n", extra="<item id='i3'/>")), ["i3"])
        self.publish(alice, "n", item_id="i2")
        self.assertEqual(self.item_ids(self.items(alice, "n")), ["i3", "i4", "i2"])

    def test_contradicting_options_are_a_precondition_not_met(self):
        """Publish-options that contradict the existing node's configuration: conflict with
        precondition-not-met, and the item is not kept."""
        alice = self.online("alice@localhost/a")
        self.publish(alice, "n", options=options_form(access_model="open"))
        reply = self.publish(alice, "n", item_id="i2", options=options_form(access_model="whitelist"))
        self.assertEqual(conditions(reply), ("conflict", "precondition-not-met"))
        self.assertEqual(self.item_ids(self.items(alice, "n")), ["i1"])

    def test_bad_option_values(self):
        """An unknown access model and max_items past the server's cap are not-acceptable."""
        alice = self.online("alice@localhost/a")
        reply = self.publish(alice, "n", options=options_form(access_model="authorize"))
        self.assertEqual(conditions(reply), ("not-acceptable", "unsupported-access-model"))
        reply = self.publish(alice, "n", options=options_form(max_items=100000))
        self.assertEqual(conditions(reply), ("not-acceptable", "max-items-exceeded"))
        self.assertEqual(self.publish(alice, "n", options=options_form(max_items="max"))["type"], "result")

    def test_not_persisted(self):
        """persist_items false: the publish succeeds and nothing is kept."""
        alice = self.online("alice@localhost/a")
        self.assertEqual(self.publish(alice, "n", options=options_form(persist_items="false"))["type"], "result")
        self.assertEqual(self.item_ids(self.items(alice, "n")), [])


class AccessTests(PepTestCase):
    def setUp(self):
        super().setUp()
        self.alice = self.online("alice@localhost/a")
        self.bob = self.online("bob@localhost/b")
        self.carol = self.online("carol@localhost/c")
        self.befriend(self.alice, self.bob, "alice@localhost", "bob@localhost")

    def test_presence_model(self):
        """The default access model: bob (subscribed to alice's presence) reads, carol (a stranger) gets
        not-authorized with presence-subscription-required."""
        self.publish(self.alice, NS_TUNE)
        self.assertEqual(self.item_ids(self.items(self.bob, NS_TUNE)), ["i1"])
        self.assertEqual(conditions(self.items(self.carol, NS_TUNE)),
                         ("not-authorized", "presence-subscription-required"))

    def test_open_model(self):
        """An open node is read by anyone; a node that does not exist is item-not-found."""
        self.publish(self.alice, "n", options=options_form(access_model="open"))
        self.assertEqual(self.item_ids(self.items(self.carol, "n")), ["i1"])
        self.assertEqual(conditions(self.items(self.carol, "nothing"))[0], "item-not-found")

    def test_whitelist_model(self):
        """A whitelist node (private bookmarks) is the owner's alone: bob gets not-allowed with closed-node."""
        self.publish(self.alice, "n", options=options_form(access_model="whitelist"))
        self.assertEqual(conditions(self.items(self.bob, "n")), ("not-allowed", "closed-node"))
        self.assertEqual(self.item_ids(self.items(self.alice, "n")), ["i1"])

    def test_roster_model(self):
        """A roster node is read by subscribed contacts in an allowed group: bob once the owner puts him in
        'friends', not before (not-in-roster-group)."""
        self.publish(self.alice, "n", options=options_form(access_model="roster", roster_groups_allowed="friends"))
        self.assertEqual(conditions(self.items(self.bob, "n")), ("not-authorized", "not-in-roster-group"))
        self.alice.iq("<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'>"
                      "<group>friends</group></item></query></iq>")
        self.assertEqual(self.item_ids(self.items(self.bob, "n")), ["i1"])

    def test_owner_operations_are_the_owners(self):
        """bob may not configure, purge, delete or retract alice's node: forbidden each time."""
        self.publish(self.alice, "n")
        for payload in ("<configure node='n'/>", "<purge node='n'/>", "<delete node='n'/>"):
            self.assertEqual(conditions(self.iq(self.bob, "set", payload, uri=NS_OWNER))[0], "forbidden")
        reply = self.iq(self.bob, "set", "<retract node='n'><item id='i1'/></retract>")
        self.assertEqual(conditions(reply)[0], "forbidden")
        self.assertEqual(self.item_ids(self.items(self.alice, "n")), ["i1"])


class NotificationTests(PepTestCase):
    def setUp(self):
        super().setUp()
        self.alice = self.online("alice@localhost/a")
        self.bob = self.online("bob@localhost/b", [NS_TUNE + "+notify", NS_INFO])
        self.befriend(self.alice, self.bob, "alice@localhost", "bob@localhost")

    def test_notify_filter_delivers_to_a_contact_with_notify(self):
        """bob's caps say tune+notify: the server asks bob's disco#info once (from its domain), checks the
        hash, and then alice's tune reaches bob as a headline from her bare JID; her geoloc does not."""
        self.answer_caps(self.bob, [NS_TUNE + "+notify", NS_INFO])
        self.publish(self.alice, NS_TUNE)
        self.publish(self.alice, "http://jabber.org/protocol/geoloc", payload="<geoloc xmlns='http://jabber.org/protocol/geoloc'/>")
        [event] = self.events(self.bob.received())
        self.assertEqual((event["from"], event["to"], event["type"]), ("alice@localhost", "bob@localhost/b", "headline"))
        self.assertEqual(event.event.items["node"], NS_TUNE)
        self.assertEqual(event.event.items.item["id"], "i1")

    def test_a_second_client_with_the_same_hash_is_not_asked(self):
        """The caps cache is shared: carol's client announcing the hash bob's did is not asked again and
        gets alice's notifications at once."""
        self.answer_caps(self.bob, [NS_TUNE + "+notify", NS_INFO])
        carol = self.online("carol@localhost/c", [NS_TUNE + "+notify", NS_INFO])
        self.befriend(self.alice, carol, "alice@localhost", "carol@localhost")
        self.assertEqual([s for s in carol.received() if s.name == "iq"], [])
        self.publish(self.alice, NS_TUNE)
        self.assertEqual(len(self.events(carol.received())), 1)

    def test_an_answer_that_does_not_match_its_hash_is_not_believed(self):
        """bob answers with features that do not hash to his 'ver': nothing is cached and he gets no
        notification."""
        received = self.bob.received()
        [question] = [s for s in received if s.name == "iq"]
        self.bob.send(f"<iq type='result' id='{question['id']}' to='localhost'><query xmlns='{NS_INFO}'>"
                      f"<identity category='client' type='pc' name='test'/><feature var='{NS_TUNE}+notify'/>"
                      "</query></iq>")
        self.publish(self.alice, NS_TUNE)
        self.assertEqual(self.events(self.bob.received()), [])

    def test_an_answer_from_another_address_is_ignored(self):
        """An answer to the caps question from someone other than the client asked changes nothing."""
        received = self.bob.received()
        [question] = [s for s in received if s.name == "iq"]
        features = [NS_TUNE + "+notify", NS_INFO]
        body = "<identity category='client' type='pc' name='test'/>" + "".join(f"<feature var='{f}'/>" for f in features)
        self.alice.send(f"<iq type='result' id='{question['id']}' to='localhost'><query xmlns='{NS_INFO}'>{body}"
                        "</query></iq>")
        self.publish(self.alice, NS_TUNE)
        self.assertEqual(self.events(self.bob.received()), [])

    def test_last_item_on_presence(self):
        """A contact coming online with tune+notify gets the newest tune alice published before."""
        self.publish(self.alice, NS_TUNE, item_id="old")
        self.publish(self.alice, NS_TUNE, item_id="new")
        received = self.answer_caps(self.bob, [NS_TUNE + "+notify", NS_INFO])
        [event] = self.events(received)
        self.assertEqual(event.event.items.item["id"], "new")

    def test_retract_with_notify(self):
        """A retract with notify='true' sends <retract id/> to the contacts that get the node."""
        self.answer_caps(self.bob, [NS_TUNE + "+notify", NS_INFO])
        self.publish(self.alice, NS_TUNE)
        self.bob.received()
        reply = self.iq(self.alice, "set", f"<retract node='{NS_TUNE}' notify='true'><item id='i1'/></retract>")
        self.assertEqual(reply["type"], "result")
        [event] = self.events(self.bob.received())
        self.assertEqual(event.event.items.retract["id"], "i1")
        self.assertEqual(self.item_ids(self.items(self.alice, NS_TUNE)), [])
        reply = self.iq(self.alice, "set", f"<retract node='{NS_TUNE}'><item id='i1'/></retract>")
        self.assertEqual(conditions(reply)[0], "item-not-found")

    def test_purge_and_delete_notify(self):
        """Purge empties the node and sends <purge/>; delete removes it and sends <delete/>."""
        self.answer_caps(self.bob, [NS_TUNE + "+notify", NS_INFO])
        self.publish(self.alice, NS_TUNE)
        self.bob.received()
        self.assertEqual(self.iq(self.alice, "set", f"<purge node='{NS_TUNE}'/>", uri=NS_OWNER)["type"], "result")
        self.assertEqual(self.item_ids(self.items(self.alice, NS_TUNE)), [])
        self.assertEqual(self.events(self.bob.received())[0].event.purge["node"], NS_TUNE)
        self.assertEqual(self.iq(self.alice, "set", f"<delete node='{NS_TUNE}'/>", uri=NS_OWNER)["type"], "result")
        self.assertEqual(self.events(self.bob.received())[0].event.delete["node"], NS_TUNE)
        self.assertEqual(conditions(self.items(self.alice, NS_TUNE))[0], "item-not-found")

    def test_own_resources_get_notifications(self):
        """alice's other resource with tune+notify gets her own tune."""
        self.answer_caps(self.bob, [NS_TUNE + "+notify", NS_INFO])
        phone = self.online("alice@localhost/phone", [NS_TUNE + "+notify", NS_INFO])
        self.publish(self.alice, NS_TUNE)
        [event] = self.events(phone.received())
        self.assertEqual(event["to"], "alice@localhost/phone")


class SubscriptionTests(PepTestCase):
    def test_subscribe_gets_the_last_item_and_later_ones(self):
        """carol subscribes to alice's open node: subscribed, the last item at once, later items too, and
        none once she unsubscribed; she may not subscribe bob's address."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        self.publish(alice, "n", options=options_form(access_model="open"))
        reply = self.iq(carol, "set", "<subscribe node='n' jid='carol@localhost'/>")
        self.assertEqual(reply.pubsub.subscription["subscription"], "subscribed")
        self.assertEqual(self.events(carol.received() + carol.backlog)[0].event.items.item["id"], "i1")
        carol.backlog = []
        self.publish(alice, "n", item_id="i2")
        self.assertEqual(self.events(carol.received())[0].event.items.item["id"], "i2")
        self.assertEqual(self.iq(carol, "set", "<unsubscribe node='n' jid='carol@localhost'/>")["type"], "result")
        self.publish(alice, "n", item_id="i3")
        self.assertEqual(self.events(carol.received()), [])
        reply = self.iq(carol, "set", "<subscribe node='n' jid='bob@localhost'/>")
        self.assertEqual(conditions(reply), ("bad-request", "invalid-jid"))

    def test_a_stranger_cannot_subscribe_to_a_presence_node(self):
        """carol, not subscribed to alice's presence, is refused a subscription to her presence-model node."""
        alice = self.online("alice@localhost/a")
        carol = self.online("carol@localhost/c")
        self.publish(alice, NS_TUNE)
        reply = self.iq(carol, "set", f"<subscribe node='{NS_TUNE}' jid='carol@localhost'/>")
        self.assertEqual(conditions(reply), ("not-authorized", "presence-subscription-required"))


class ConfigurationTests(PepTestCase):
    def test_node_config_form(self):
        """The owner reads the node_config form, changes max_items and access_model by a submitted form,
        and reads the new values back; an unknown model is refused."""
        alice = self.online("alice@localhost/a")
        self.publish(alice, "n")
        form = self.iq(alice, "get", "<configure node='n'/>", uri=NS_OWNER).pubsub.configure.x
        values = {f["var"]: [str(v) for v in f.elements("jabber:x:data", "value")] for f in form.elements("jabber:x:data", "field")}
        self.assertEqual(values["pubsub#access_model"], ["presence"])
        self.assertEqual(values["pubsub#max_items"], ["1"])
        submit = ("<configure node='n'><x xmlns='jabber:x:data' type='submit'>"
                  "<field var='pubsub#max_items'><value>5</value></field>"
                  "<field var='pubsub#access_model'><value>{}</value></field></x></configure>")
        self.assertEqual(self.iq(alice, "set", submit.format("open"), uri=NS_OWNER)["type"], "result")
        form = self.iq(alice, "get", "<configure node='n'/>", uri=NS_OWNER).pubsub.configure.x
        values = {f["var"]: [str(v) for v in f.elements("jabber:x:data", "value")] for f in form.elements("jabber:x:data", "field")}
        self.assertEqual((values["pubsub#access_model"], values["pubsub#max_items"]), (["open"], ["5"]))
        reply = self.iq(alice, "set", submit.format("authorize"), uri=NS_OWNER)
        self.assertEqual(conditions(reply), ("not-acceptable", "unsupported-access-model"))


class AccountTests(PepTestCase):
    def test_disco_info_of_the_account(self):
        """disco#info of a bare JID shows the pubsub/pep identity and the pubsub features."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq(f"<iq type='get' id='d' to='bob@localhost'><query xmlns='{NS_INFO}'/></iq>")
        identities = {(i["category"], i["type"]) for i in reply.query.elements(NS_INFO, "identity")}
        features = {f["var"] for f in reply.query.elements(NS_INFO, "feature")}
        self.assertIn(("pubsub", "pep"), identities)
        for feature in ("publish", "auto-create", "publish-options", "access-whitelist", "retract-items",
                        "purge-nodes", "config-node", "last-published", "filtered-notifications", "subscribe"):
            self.assertIn(f"{NS_PUBSUB}#{feature}", features)

    def test_a_deleted_account_loses_its_nodes(self):
        """An account removed by XEP-0077 takes its nodes with it, from storage and from memory."""
        alice = self.online("alice@localhost/a")
        self.publish(alice, NS_TUNE)
        self.assertIsNotNone(result_of(self.harness.storage.get("localhost", "alice", "pep")))
        alice.iq("<iq type='set' id='rm' to='localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        self.assertIsNone(result_of(self.harness.storage.get("localhost", "alice", "pep")))
        pep = self.harness.server.hosts["localhost"].features["pep"].feature
        self.assertIsNone(pep.documents.cached("localhost", "alice"))


class CapsTests(SynchronousTestCase):
    def test_the_xep_0115_example_hash(self):
        """The simple example of XEP-0115 section 5.2 verifies; one feature more does not."""
        query = parse_element(
            f"<query xmlns='{NS_INFO}'><identity category='client' type='pc' name='Exodus 0.9.1'/>"
            f"<feature var='{NS_INFO}'/><feature var='http://jabber.org/protocol/disco#items'/>"
            f"<feature var='{NS_CAPS}'/><feature var='http://jabber.org/protocol/muc'/></query>")
        self.assertTrue(verified("sha-1", "QgayPKawpkPSDYmwT/WM94uAlu0=", query))
        query.addElement("feature")["var"] = "urn:xmpp:ping"
        self.assertFalse(verified("sha-1", "QgayPKawpkPSDYmwT/WM94uAlu0=", query))

    def test_duplicate_features_are_invalid(self):
        """An answer listing a feature twice never verifies (section 5.4)."""
        features = [NS_INFO, NS_INFO]
        query = parse_element(f"<query xmlns='{NS_INFO}'><identity category='client' type='pc' name='test'/>"
                              + "".join(f"<feature var='{f}'/>" for f in features) + "</query>")
        self.assertFalse(verified("sha-1", caps_ver(features), query))

    def test_cache_is_bounded_in_entries_and_bytes(self):
        """The caps cache drops the least recently used entries past its count and its bytes."""
        cache = CapsCache(max_entries=3, max_bytes=100)
        for number in range(5):
            cache.put(("sha-1", f"v{number}"), frozenset({f"node{number}"}))
        self.assertEqual(len(cache), 3)
        self.assertIsNone(cache.get(("sha-1", "v0")))
        cache.put(("sha-1", "big"), frozenset({"x" * 90}))
        self.assertLessEqual(cache.bytes, 100)
        self.assertEqual(cache.get(("sha-1", "big")), frozenset({"x" * 90}))


class ConfigTests(SynchronousTestCase):
    def test_item_limit_within_account_limit(self):
        """[pep] max_item_bytes above max_bytes_per_user is a configuration error naming the key."""
        with self.assertRaises(configuration.ConfigError) as raised:
            configuration.parse({"pep": {"max_item_bytes": 4096, "max_bytes_per_user": 2048}}, "t.toml")
        self.assertIn("pep.max_item_bytes", str(raised.exception))
        with self.assertRaises(configuration.ConfigError):
            configuration.parse({"pep": {"max_nodes_per_user": 0}}, "t.toml")

"""The publish-subscribe service (XEP-0060) on pubsub.<host>, on the in-memory server."""

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.storage.memory import MemoryStorage
from bridge.gateways import pubsub as service
from tests.unit.helpers import Harness, gateway_context
from tests.unit.test_pep import NS_EVENT, NS_OWNER, NS_PUBSUB, conditions

SERVICE = "pubsub.localhost"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
ENTRY = "<entry xmlns='http://www.w3.org/2005/Atom'><title>{}</title></entry>"


def config_form(form_type="node_config", **fields):
    text = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{NS_PUBSUB}#{form_type}</value></field>")
    for var, value in fields.items():
        text += f"<field var='pubsub#{var}'><value>{value}</value></field>"
    return text + "</x>"


class ServiceTestCase(SynchronousTestCase):
    section = {}

    def setUp(self):
        self.storage = MemoryStorage()
        self.start()
        for user in ("alice", "bob", "carol", "dave"):
            self.harness.add_user(f"{user}@localhost")
        self.ids = 0

    def start(self):
        document = {"c2s": {"require_encryption": False}, "hosts": {"localhost": {}}, "pubsub": self.section}
        self.harness = Harness(configuration.parse(document, "test.toml"), self.storage)
        self.context = gateway_context(self.harness.server, "pubsub", self.harness.config.pubsub)
        self.service = service.attach(self.context, self.harness.clock, None)
        self.service.start()
        self.clients = {}

    def client(self, user):
        if user not in self.clients:
            self.clients[user] = self.harness.login(f"{user}@localhost/r")
        return self.clients[user]

    def iq(self, user, kind, payload, uri=NS_PUBSUB):
        self.ids += 1
        return self.client(user).iq(f"<iq type='{kind}' id='s{self.ids}' to='{SERVICE}'>"
                                    f"<pubsub xmlns='{uri}'>{payload}</pubsub></iq>")

    def create(self, user="alice", node="news", configure=""):
        return self.iq(user, "set", f"<create node='{node}'/>{configure}")

    def publish(self, user, node="news", title="a", item_id="i1"):
        return self.iq(user, "set", f"<publish node='{node}'><item id='{item_id}'>{ENTRY.format(title)}</item></publish>")

    def subscribe(self, user, node="news"):
        return self.iq(user, "set", f"<subscribe node='{node}' jid='{user}@localhost/r'/>")

    def affiliate(self, owner, node, **affiliations):
        entries = "".join(f"<affiliation jid='{user}@localhost' affiliation='{value}'/>"
                          for user, value in affiliations.items())
        return self.iq(owner, "set", f"<affiliations node='{node}'>{entries}</affiliations>", NS_OWNER)

    @staticmethod
    def events(stanzas):
        return [s for s in stanzas if s.name == "message" and s.event is not None and s.event.uri == NS_EVENT]


class NodeTests(ServiceTestCase):
    def test_create_publish_subscribe_and_notify(self):
        """alice creates a node and publishes; bob subscribes, gets the last item at once, then each new item
        from the service's address; items reads them back."""
        self.assertEqual(self.create()["type"], "result")
        self.assertEqual(self.publish("alice", title="first")["type"], "result")
        reply = self.subscribe("bob")
        self.assertEqual(reply.pubsub.subscription["subscription"], "subscribed")
        [last] = self.events(self.client("bob").received())
        self.assertEqual(str(last.event.items.item.entry.title), "first")
        self.publish("alice", title="second", item_id="i2")
        [notice] = self.events(self.client("bob").received())
        self.assertEqual((notice["from"], str(notice.event.items.item.entry.title)), (SERVICE, "second"))
        items = self.iq("carol", "get", "<items node='news'/>")
        self.assertEqual([i["id"] for i in items.pubsub.items.elements(NS_PUBSUB, "item")], ["i2"])

    def test_create_with_configuration_and_conflict(self):
        """<create/> with a <configure/> form sets the node's configuration; a second create of the name is a
        conflict; an instant node (no name) gets one from the service."""
        reply = self.create(configure=f"<configure>{config_form(max_items=5, title='News')}</configure>")
        self.assertEqual(reply["type"], "result", reply.toXml())
        form = self.iq("alice", "get", "<configure node='news'/>", NS_OWNER).pubsub.configure.x
        values = {f["var"]: str(f.value) for f in form.elements() if f.name == "field" and f.value is not None}
        self.assertEqual((values["pubsub#max_items"], values["pubsub#title"]), ("5", "News"))
        self.assertEqual(conditions(self.create())[0], "conflict")
        instant = self.iq("alice", "set", "<create/>")
        self.assertTrue(instant.pubsub.create["node"])

    def test_only_publishers_publish_and_owners_manage(self):
        """With the default publish model, bob may not publish until alice makes him a publisher; he may
        not configure, purge or delete; a retract by a publisher removes the item."""
        self.create()
        self.assertEqual(conditions(self.publish("bob"))[0], "forbidden")
        self.assertEqual(self.affiliate("alice", "news", bob="publisher")["type"], "result")
        self.assertEqual(self.publish("bob")["type"], "result")
        for request in ("<purge node='news'/>", "<delete node='news'/>"):
            self.assertEqual(conditions(self.iq("bob", "set", request, NS_OWNER))[0], "forbidden")
        self.assertEqual(self.iq("bob", "set", "<retract node='news'><item id='i1'/></retract>")["type"], "result")
        self.assertEqual(list(self.iq("bob", "get", "<items node='news'/>").pubsub.items.elements()), [])

    def test_whitelist_and_outcast(self):
        """A whitelist node is closed to those without an affiliation and open to members; an outcast loses
        its subscription and is refused reading."""
        self.create(configure=f"<configure>{config_form(access_model='whitelist')}</configure>")
        self.assertEqual(conditions(self.subscribe("bob")), ("not-allowed", "closed-node"))
        self.affiliate("alice", "news", bob="member", carol="member")
        self.assertEqual(self.subscribe("bob")["type"], "result")
        self.affiliate("alice", "news", bob="outcast")
        self.assertEqual(conditions(self.iq("bob", "get", "<items node='news'/>"))[0], "forbidden")
        subscribers = self.iq("alice", "get", "<subscriptions node='news'/>", NS_OWNER).pubsub.subscriptions
        self.assertEqual(list(subscribers.elements()), [])
        self.assertEqual(self.iq("carol", "get", "<items node='news'/>")["type"], "result")

    def test_the_last_owner_stays(self):
        """An affiliation change that would leave the node without an owner is refused whole."""
        self.create()
        reply = self.affiliate("alice", "news", alice="none", bob="publisher")
        self.assertEqual(conditions(reply)[0], "not-acceptable")
        affiliations = self.iq("alice", "get", "<affiliations node='news'/>", NS_OWNER).pubsub.affiliations
        self.assertEqual({a["jid"]: a["affiliation"] for a in affiliations.elements()}, {"alice@localhost": "owner"})

    def test_unsupported_access_model(self):
        """The service's nodes have no roster to check: presence and roster access are refused."""
        reply = self.create(configure=f"<configure>{config_form(access_model='presence')}</configure>")
        self.assertEqual(conditions(reply), ("not-acceptable", "unsupported-access-model"))

    def test_delete_and_purge_notify_subscribers(self):
        """A purge and then a delete reach the subscriber as pubsub#event purge and delete."""
        self.create()
        self.publish("alice")
        self.subscribe("bob")
        self.client("bob").received()
        self.iq("alice", "set", "<purge node='news'/>", NS_OWNER)
        self.iq("alice", "set", "<delete node='news'/>", NS_OWNER)
        kinds = [next(n.event.elements()).name for n in self.events(self.client("bob").received())]
        self.assertEqual(kinds, ["purge", "delete"])
        self.assertEqual(conditions(self.iq("bob", "get", "<items node='news'/>"))[0], "item-not-found")

    def test_bounds(self):
        """An item over max_item_bytes is payload-too-big; unsubscribe without a subscription is
        not-subscribed; one cannot subscribe someone else's address."""
        self.create()
        big = "x" * 70000
        reply = self.iq("alice", "set", f"<publish node='news'><item>{ENTRY.format(big)}</item></publish>")
        self.assertEqual(conditions(reply), ("not-acceptable", "payload-too-big"))
        reply = self.iq("bob", "set", "<unsubscribe node='news' jid='bob@localhost/r'/>")
        self.assertEqual(conditions(reply), ("unexpected-request", "not-subscribed"))
        reply = self.iq("bob", "set", "<subscribe node='news' jid='carol@localhost'/>")
        self.assertEqual(conditions(reply), ("bad-request", "invalid-jid"))

    def test_nodes_survive_a_restart(self):
        """Nodes, items and subscriptions are stored: a new service on the same storage has them."""
        self.create()
        self.publish("alice", title="kept")
        self.subscribe("bob")
        self.context.unload()
        self.start()
        items = self.iq("carol", "get", "<items node='news'/>")
        self.assertEqual(str(items.pubsub.items.item.entry.title), "kept")
        self.client("bob")
        self.publish("alice", title="after", item_id="i2")
        self.assertEqual(len(self.events(self.client("bob").received())), 1)

    def test_disco_lists_nodes_and_items(self):
        """disco#items of the service lists its nodes; disco#info of a node says pubsub/leaf; disco#items of
        a node lists its items by id; an unknown node is item-not-found."""
        self.create(configure=f"<configure>{config_form(title='News')}</configure>")
        self.publish("alice")
        client = self.client("bob")
        items = client.iq(f"<iq type='get' id='d1' to='{SERVICE}'><query xmlns='{NS_ITEMS}'/></iq>").query
        self.assertIn(("news", "News"), [(i.getAttribute("node"), i.getAttribute("name")) for i in items.elements()])
        info = client.iq(f"<iq type='get' id='d2' to='{SERVICE}'><query xmlns='{NS_INFO}' node='news'/></iq>").query
        self.assertEqual((info["node"], info.identity["category"], info.identity["type"]), ("news", "pubsub", "leaf"))
        node_items = client.iq(f"<iq type='get' id='d3' to='{SERVICE}'><query xmlns='{NS_ITEMS}' node='news'/></iq>")
        self.assertEqual([i["name"] for i in node_items.query.elements()], ["i1"])
        missing = client.iq(f"<iq type='get' id='d4' to='{SERVICE}'><query xmlns='{NS_INFO}' node='nope'/></iq>")
        self.assertEqual(missing["type"], "error")


class CreationPolicyTests(ServiceTestCase):
    section = {"creation": "admins", "admins": ["carol@localhost"], "max_nodes_per_service": 2}

    def test_only_admins_create_and_the_service_holds_its_bound(self):
        """With creation = "admins", alice is refused; carol (an admin) creates until the service's bound;
        an admin owns every node."""
        self.assertEqual(conditions(self.create("alice"))[0], "forbidden")
        self.assertEqual(self.create("carol", "one")["type"], "result")
        self.assertEqual(self.create("carol", "two")["type"], "result")
        self.assertEqual(conditions(self.create("carol", "three")), ("policy-violation", "max-nodes-exceeded"))
        self.assertEqual(self.affiliate("carol", "one", dave="publisher")["type"], "result")


class LocalCreationTests(ServiceTestCase):
    section = {"max_nodes_created_per_user": 1}

    def test_a_user_creates_at_most_their_share(self):
        """Past max_nodes_created_per_user a user's create is a policy-violation."""
        self.assertEqual(self.create("alice", "one")["type"], "result")
        self.assertEqual(conditions(self.create("alice", "two")), ("policy-violation", "max-nodes-exceeded"))

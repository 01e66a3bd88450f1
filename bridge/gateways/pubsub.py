"""A publish-subscribe service (XEP-0060) on ``<subdomain>.<host>`` of every local host: news channels.

The service is a component host like the MUC service, with the ordinary
disco, version and ping modules on it; its nodes are leaf nodes, built on
the pubsub core that PEP uses (``bridge.core.pubsub``: node forms, items,
errors).  Who may create a node is the site's policy (``[pubsub] creation``:
anyone, the users of this server, or the service's admins), as for rooms.

Each node has affiliations (owner, publisher, member, outcast; the creator
is its first owner; the service's admins own every node) and an access
model: ``open`` (anyone not an outcast subscribes and reads) or
``whitelist`` (members, publishers and owners only).  Its publish model
says who publishes: ``publishers`` (owners and publishers), ``subscribers``
or ``open``.  Subscribers get each published item, retraction (when asked),
purge and deletion; a new subscriber gets the newest item unless
``send_last_published_item`` is ``never``.

Nodes are documents of the ``pubsub-nodes`` store keyed (service domain,
node), read at start and kept in memory; every change is decided on the
copy in memory, then written, then answered.  Everything grows within the
``[pubsub]`` bounds: nodes per service and per creator, items and bytes
per node, bytes per item, subscriptions and affiliations per node.
"""

import os

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core import pubsub
from bridge.core.pubsub import NS_EVENT, NS_OWNER, NS_PUBSUB, PubsubError, event_message, items_element
from bridge.core.stanza import error_reply, form_values, parse_jid, result_reply

log = Logger()

STORE = "pubsub-nodes"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
FEATURES = ("create-nodes", "create-and-configure", "instant-nodes", "config-node", "delete-nodes",
            "purge-nodes", "publish", "publish-options", "retract-items", "retrieve-items", "subscribe",
            "retrieve-subscriptions", "retrieve-affiliations", "modify-affiliations", "persistent-items",
            "access-open", "access-whitelist", "publisher-affiliation", "member-affiliation",
            "outcast-affiliation", "last-published")
ACCESS_MODELS = ("open", "whitelist")
AFFILIATIONS = ("owner", "publisher", "member", "none", "outcast")
MAX_NODE_NAME_BYTES = 1023


def attach(ctx, reactor, tls_context):
    """The service of ``ctx.config`` (the [pubsub] section), or None when it is off."""
    if not ctx.config.enabled:
        return None
    return PubsubService(ctx)


def default_config(max_items):
    config = pubsub.default_config(max_items)
    config.update(access_model="open", publish_model="publishers", send_last_published_item="on_sub", title="")
    return config


class PubsubService:
    def __init__(self, ctx):
        self.ctx = ctx
        self.config = ctx.config
        self.store = ctx.store(STORE)
        self.admins = frozenset(jid.lower() for jid in self.config.admins)
        self.nodes = {}  # service domain -> {node name: document}
        self.loaded = False
        for host in ctx.host_names():
            domain = f"{self.config.subdomain}.{host}".lower()
            ctx.serve(domain, ("pubsub", "service", "Publish-Subscribe"), listed_on=host)
            self.nodes[domain] = {}
        for feature in FEATURES:
            ctx.add_feature(f"{NS_PUBSUB}#{feature}")
        ctx.add_node_source(self.disco)
        ctx.hook(f"iq-set/host/{NS_PUBSUB}:pubsub", self.on_set)
        ctx.hook(f"iq-get/host/{NS_PUBSUB}:pubsub", self.on_get)
        ctx.hook(f"iq-set/host/{NS_OWNER}:pubsub", self.on_owner_set)
        ctx.hook(f"iq-get/host/{NS_OWNER}:pubsub", self.on_owner_get)

    # -- lifetime (the Gateway shape of tap.py) -------------------------------------

    def listeners(self):
        return []

    @defer.inlineCallbacks
    def start(self):
        """Read the stored nodes; until then requests are answered ``service-unavailable``."""
        for domain, nodes in self.nodes.items():
            for name in (yield self.store.users(domain)):
                document = yield self.store.get(domain, name)
                if document:
                    nodes[name] = document
            log.info("pubsub {domain}: {count} nodes", domain=domain, count=len(nodes))
        self.loaded = True

    def stop(self):
        return None

    # -- requests -----------------------------------------------------------------------

    def _dispatch(self, event, uri, actions):
        """Run the action the request's one child names; a PubsubError is the reply."""
        if not self.loaded:
            event.reply(PubsubError("service-unavailable", text="the service is starting").reply(event.stanza))
            return True
        request = next(event.stanza.elements(uri, "pubsub"), None)
        companions = ("publish-options", "configure") if uri == NS_PUBSUB else ()  # of publish, of create
        children = [child for child in request.elements() if child.name not in companions] if request else []
        try:
            if len(children) != 1:
                raise PubsubError("bad-request", text="one request per pubsub element")
            action = actions.get(children[0].name)
            if action is None:
                raise PubsubError("feature-not-implemented", "unsupported")
            sender = event.sender
            if sender is None or sender.user is None:
                raise PubsubError("forbidden", text="only users' addresses act on nodes")
            answer = action(event, request, children[0], sender)
        except PubsubError as refusal:
            event.reply(refusal.reply(event.stanza))
            return True
        answer.addErrback(self._failed, event)
        return True

    @staticmethod
    def _failed(failure, event):
        if failure.check(PubsubError):
            event.reply(failure.value.reply(event.stanza))
            return
        log.failure("pubsub request failed", failure)
        event.reply(error_reply(event.stanza, "internal-server-error"))

    def on_set(self, event):
        return self._dispatch(event, NS_PUBSUB, {"create": self.create, "publish": self.publish,
                                                 "retract": self.retract, "subscribe": self.subscribe,
                                                 "unsubscribe": self.unsubscribe})

    def on_get(self, event):
        return self._dispatch(event, NS_PUBSUB, {"items": self.items, "subscriptions": self.own_subscriptions,
                                                 "affiliations": self.own_affiliations})

    def on_owner_set(self, event):
        return self._dispatch(event, NS_OWNER, {"configure": self.configure, "delete": self.delete,
                                                "purge": self.purge, "affiliations": self.set_affiliations,
                                                "subscriptions": self.set_subscriptions})

    def on_owner_get(self, event):
        return self._dispatch(event, NS_OWNER, {"configure": self.config_form, "affiliations": self.affiliations,
                                                "subscriptions": self.subscriptions, "default": self.default_form})

    # -- who may do what ----------------------------------------------------------------

    def is_admin(self, bare):
        """One of the service's admins: named in [pubsub] admins or in a host's admins."""
        return bare in self.admins or self.ctx.is_host_admin(bare)

    def affiliation(self, node, bare):
        if self.is_admin(bare):
            return "owner"
        return node["affiliations"].get(bare, "none")

    def _node(self, event, child):
        name = child.getAttribute("node")
        if not name:
            raise PubsubError("not-acceptable", "nodeid-required")
        node = self.nodes[event.to.host].get(name)
        if node is None:
            raise PubsubError("item-not-found", text="no such node")
        return name, node

    def _owned(self, event, child, sender):
        name, node = self._node(event, child)
        if self.affiliation(node, sender.userhost().lower()) != "owner":
            raise PubsubError("forbidden", text="only the node's owners do this")
        return name, node

    def _check_access(self, node, bare):
        affiliation = self.affiliation(node, bare)
        if affiliation == "outcast":
            raise PubsubError("forbidden", text="you are banned from this node")
        if node["config"]["access_model"] == "whitelist" and affiliation == "none":
            raise PubsubError("not-allowed", "closed-node", "the node is open to its members only")

    def may_create(self, domain, sender):
        """PubsubError when ``sender`` may not create a node on ``domain`` (``[pubsub] creation`` and bounds)."""
        bare = sender.userhost().lower()
        creation = self.config.creation
        if creation == "admins" and not self.is_admin(bare):
            raise PubsubError("forbidden", text="only the service's administrators create nodes")
        if creation == "local" and self.ctx.local_host(sender.host) is None:
            raise PubsubError("forbidden", text="only users of this server create nodes")
        if len(self.nodes[domain]) >= self.config.max_nodes_per_service:
            raise PubsubError("policy-violation", "max-nodes-exceeded", "the service holds as many nodes as it may")
        if not self.is_admin(bare):
            created = sum(1 for nodes in self.nodes.values() for node in nodes.values() if node["creator"] == bare)
            if created >= self.config.max_nodes_created_per_user:
                raise PubsubError("policy-violation", "max-nodes-exceeded",
                                  f"you have created {created} nodes, the most allowed")

    def _options(self, form):
        options = pubsub.options_from_form(form_values(form), self.config.max_items_per_node, service=True)
        if options.get("access_model", "open") not in ACCESS_MODELS:
            raise PubsubError("not-acceptable", "unsupported-access-model",
                              f"pubsub#access_model is one of {', '.join(ACCESS_MODELS)} here")
        if options.get("send_last_published_item") == "on_sub_and_presence":
            options["send_last_published_item"] = "on_sub"  # the service sees no presence
        return options

    def _forms(self, request, container):
        for holder in request.elements(NS_PUBSUB, container):
            yield from holder.elements(pubsub.NS_DATA, "x")

    # -- the work -------------------------------------------------------------------------

    def _save(self, domain, name):
        return self.store.set(domain, name, self.nodes[domain].get(name))

    def _answer(self, event, uri=None, child=None):
        reply = result_reply(event.stanza)
        if child is not None:
            reply.addElement((uri, "pubsub")).addChild(child)
        event.reply(reply)

    def _saved(self, event, name, uri=None, child=None):
        """Write node ``name``, then answer."""
        d = self._save(event.to.host, name)
        d.addCallback(lambda _: self._answer(event, uri, child))
        return d

    def create(self, event, request, child, sender):
        domain = event.to.host
        name = child.getAttribute("node") or os.urandom(8).hex()
        if len(name.encode("utf-8")) > MAX_NODE_NAME_BYTES:
            raise PubsubError("not-acceptable", text=f"a node name takes at most {MAX_NODE_NAME_BYTES} bytes")
        self.may_create(domain, sender)
        if name in self.nodes[domain]:
            raise PubsubError("conflict", text="the node exists")
        config = default_config(1)
        for form in self._forms(request, "configure"):
            config.update(self._options(form))
        bare = sender.userhost().lower()
        self.nodes[domain][name] = {"config": config, "items": [], "affiliations": {bare: "owner"},
                                    "subscriptions": {}, "creator": bare}
        created = domish.Element((NS_PUBSUB, "create"))
        created["node"] = name
        return self._saved(event, name, NS_PUBSUB, created)

    def publish(self, event, request, child, sender):
        name, node = self._node(event, child)
        bare = sender.userhost().lower()
        model = node["config"]["publish_model"]
        affiliation = self.affiliation(node, bare)
        allowed = affiliation in ("owner", "publisher") or (
            model == "open" and affiliation != "outcast") or (
            model == "subscribers" and affiliation != "outcast" and any(
                jid.split("/", 1)[0] == bare for jid in node["subscriptions"]))
        if not allowed:
            raise PubsubError("forbidden", text="you may not publish to this node")
        item_id, payload_xml = pubsub.published_item(child, self.config.max_item_bytes)
        for form in self._forms(request, "publish-options"):
            pubsub.check_preconditions(node["config"], self._options(form))
        kept = [list(item) for item in node["items"]]
        if node["config"]["persist_items"]:
            pubsub.publish_item(kept, item_id, payload_xml, bare, node["config"]["max_items"])
        if pubsub.item_bytes(kept) > self.config.max_bytes_per_node:
            raise PubsubError("policy-violation", text=f"a node's items may take at most "
                                                       f"{self.config.max_bytes_per_node} bytes")
        node["items"] = kept
        published = domish.Element((NS_PUBSUB, "publish"))
        published["node"] = name
        published.addElement("item")["id"] = item_id
        d = self._saved(event, name, NS_PUBSUB, published)
        self._notify(event.to.host, node, items_element(NS_EVENT, name, [[item_id, payload_xml, bare]]))
        return d

    def retract(self, event, request, child, sender):
        name, node = self._node(event, child)
        if self.affiliation(node, sender.userhost().lower()) not in ("owner", "publisher"):
            raise PubsubError("forbidden", text="only owners and publishers retract")
        ids = [item.getAttribute("id") for item in child.elements(NS_PUBSUB, "item")]
        if not ids or not all(ids):
            raise PubsubError("bad-request", "item-required", "a retract names the items by id")
        if not set(ids) <= {item[0] for item in node["items"]}:
            raise PubsubError("item-not-found", text="no such item")
        node["items"] = [item for item in node["items"] if item[0] not in ids]
        d = self._saved(event, name)
        if child.getAttribute("notify") in ("1", "true"):
            gone = domish.Element((NS_EVENT, "items"))
            gone["node"] = name
            for item_id in ids:
                gone.addElement("retract")["id"] = item_id
            self._notify(event.to.host, node, gone)
        return d

    def items(self, event, request, child, sender):
        name, node = self._node(event, child)
        self._check_access(node, sender.userhost().lower())
        wanted = [item.getAttribute("id") for item in child.elements(NS_PUBSUB, "item")]
        items = [item for item in node["items"] if item[0] in wanted] if wanted else node["items"]
        limit = child.getAttribute("max_items")
        if limit is not None:
            if not limit.isdigit():
                raise PubsubError("bad-request", text="max_items is a number")
            items = items[len(items) - int(limit):] if int(limit) else []
        self._answer(event, NS_PUBSUB, items_element(NS_PUBSUB, name, items))
        return defer.succeed(None)

    def _subscriber(self, child, sender):
        jid = parse_jid(child.getAttribute("jid") or "")
        if jid is None or jid.userhost().lower() != sender.userhost().lower():
            raise PubsubError("bad-request", "invalid-jid", "one subscribes one's own address")
        return jid.full()

    def subscribe(self, event, request, child, sender):
        name, node = self._node(event, child)
        subscriber = self._subscriber(child, sender)
        self._check_access(node, sender.userhost().lower())
        if subscriber not in node["subscriptions"]:
            if len(node["subscriptions"]) >= self.config.max_subscriptions_per_node:
                raise PubsubError("policy-violation", "too-many-subscriptions",
                                  f"a node has at most {self.config.max_subscriptions_per_node} subscribers")
            node["subscriptions"][subscriber] = "subscribed"
        answer = domish.Element((NS_PUBSUB, "subscription"))
        answer["node"], answer["jid"], answer["subscription"] = name, subscriber, "subscribed"
        d = self._saved(event, name, NS_PUBSUB, answer)
        if node["items"] and node["config"]["send_last_published_item"] != "never":
            d.addCallback(lambda _: self.ctx.route(event_message(
                event.to.host, subscriber, items_element(NS_EVENT, name, node["items"][-1:]))))
        return d

    def unsubscribe(self, event, request, child, sender):
        name, node = self._node(event, child)
        subscriber = self._subscriber(child, sender)
        if node["subscriptions"].pop(subscriber, None) is None:
            raise PubsubError("unexpected-request", "not-subscribed", "no such subscription")
        return self._saved(event, name)

    def own_subscriptions(self, event, request, child, sender):
        """The requester's subscriptions, on every node or on the one named."""
        bare = sender.userhost().lower()
        answer = domish.Element((NS_PUBSUB, "subscriptions"))
        for name, node in self._named(event, child):
            for jid, state in node["subscriptions"].items():
                if jid.split("/", 1)[0].lower() == bare:
                    entry = answer.addElement("subscription")
                    entry["node"], entry["jid"], entry["subscription"] = name, jid, state
        self._answer(event, NS_PUBSUB, answer)
        return defer.succeed(None)

    def own_affiliations(self, event, request, child, sender):
        """The requester's affiliations, on every node or on the one named."""
        bare = sender.userhost().lower()
        answer = domish.Element((NS_PUBSUB, "affiliations"))
        for name, node in self._named(event, child):
            if bare in node["affiliations"]:
                entry = answer.addElement("affiliation")
                entry["node"], entry["affiliation"] = name, node["affiliations"][bare]
        self._answer(event, NS_PUBSUB, answer)
        return defer.succeed(None)

    def _named(self, event, child):
        if child.getAttribute("node"):
            return [self._node(event, child)]
        return sorted(self.nodes[event.to.host].items())

    # -- owners ---------------------------------------------------------------------------

    def config_form(self, event, request, child, sender):
        name, node = self._owned(event, child, sender)
        configure = domish.Element((NS_OWNER, "configure"))
        configure["node"] = name
        configure.addChild(self._form(node["config"]))
        self._answer(event, NS_OWNER, configure)
        return defer.succeed(None)

    def default_form(self, event, request, child, sender):
        default = domish.Element((NS_OWNER, "default"))
        default.addChild(self._form(default_config(1)))
        self._answer(event, NS_OWNER, default)
        return defer.succeed(None)

    @staticmethod
    def _form(config):
        form = pubsub.config_form(config)
        for field in form.elements(pubsub.NS_DATA, "field"):
            if field.getAttribute("var") == "pubsub#access_model":
                field.children = [child for child in field.children if child.name != "option"
                                  or str(child.value) in ACCESS_MODELS]
        return form

    def configure(self, event, request, child, sender):
        name, node = self._owned(event, child, sender)
        form = next(child.elements(pubsub.NS_DATA, "x"), None)
        if form is None or form.getAttribute("type") not in ("submit", "cancel"):
            raise PubsubError("bad-request", text="a configure carries a submitted form")
        if form["type"] == "cancel":
            self._answer(event)
            return defer.succeed(None)
        node["config"].update(self._options(form))
        del node["items"][:max(0, len(node["items"]) - node["config"]["max_items"])]
        if not node["config"]["persist_items"]:
            node["items"] = []
        return self._saved(event, name)

    def delete(self, event, request, child, sender):
        name, node = self._owned(event, child, sender)
        del self.nodes[event.to.host][name]
        deleted = domish.Element((NS_EVENT, "delete"))
        deleted["node"] = name
        self._notify(event.to.host, node, deleted)
        return self._saved(event, name)

    def purge(self, event, request, child, sender):
        name, node = self._owned(event, child, sender)
        node["items"] = []
        purged = domish.Element((NS_EVENT, "purge"))
        purged["node"] = name
        self._notify(event.to.host, node, purged)
        return self._saved(event, name)

    def affiliations(self, event, request, child, sender):
        name, node = self._owned(event, child, sender)
        answer = domish.Element((NS_OWNER, "affiliations"))
        answer["node"] = name
        for jid, affiliation in sorted(node["affiliations"].items()):
            entry = answer.addElement("affiliation")
            entry["jid"], entry["affiliation"] = jid, affiliation
        self._answer(event, NS_OWNER, answer)
        return defer.succeed(None)

    def set_affiliations(self, event, request, child, sender):
        """Owners change affiliations (XEP-0060 section 8.9.2): all of the request, or none of it."""
        name, node = self._owned(event, child, sender)
        changes = {}
        for entry in child.elements(NS_OWNER, "affiliation"):
            jid = parse_jid(entry.getAttribute("jid") or "")
            affiliation = entry.getAttribute("affiliation")
            if jid is None or jid.user is None or affiliation not in AFFILIATIONS:
                raise PubsubError("bad-request", text="an affiliation names a bare JID and one of "
                                                      + ", ".join(AFFILIATIONS))
            changes[jid.userhost().lower()] = affiliation
        affiliations = dict(node["affiliations"])
        for bare, affiliation in changes.items():
            if affiliation == "none":
                affiliations.pop(bare, None)
            else:
                affiliations[bare] = affiliation
        if "owner" not in affiliations.values():
            raise PubsubError("not-acceptable", text="a node keeps at least one owner")
        if len(affiliations) > self.config.max_affiliations_per_node:
            raise PubsubError("policy-violation", text=f"a node has at most "
                                                       f"{self.config.max_affiliations_per_node} affiliations")
        node["affiliations"] = affiliations
        for subscriber in list(node["subscriptions"]):
            bare = subscriber.split("/", 1)[0].lower()
            if affiliations.get(bare) == "outcast" or (
                    node["config"]["access_model"] == "whitelist" and bare not in affiliations):
                del node["subscriptions"][subscriber]
        return self._saved(event, name)

    def subscriptions(self, event, request, child, sender):
        name, node = self._owned(event, child, sender)
        answer = domish.Element((NS_OWNER, "subscriptions"))
        answer["node"] = name
        for jid, state in sorted(node["subscriptions"].items()):
            entry = answer.addElement("subscription")
            entry["jid"], entry["subscription"] = jid, state
        self._answer(event, NS_OWNER, answer)
        return defer.succeed(None)

    def set_subscriptions(self, event, request, child, sender):
        """Owners end subscriptions (state "none"); subscribing others is not offered."""
        name, node = self._owned(event, child, sender)
        entries = [(entry.getAttribute("jid"), entry.getAttribute("subscription"))
                   for entry in child.elements(NS_OWNER, "subscription")]
        if any(state != "none" or jid not in node["subscriptions"] for jid, state in entries):
            raise PubsubError("not-acceptable", text="owners end existing subscriptions (subscription='none')")
        for jid, _ in entries:
            del node["subscriptions"][jid]
        return self._saved(event, name)

    # -- notifications and disco ------------------------------------------------------------

    def _notify(self, domain, node, child):
        for subscriber in node["subscriptions"]:
            self.ctx.route(event_message(domain, subscriber, child))

    def disco(self, domain, namespace, name, sender):
        """disco#info and #items of the nodes of ``domain`` (see ``DiscoEntries.node_sources``)."""
        nodes = self.nodes.get(domain, {})
        if name is None:
            if namespace != NS_ITEMS:
                return None
            listed = []
            for node_name, node in sorted(nodes.items()):
                item = domish.Element((NS_ITEMS, "item"))
                item["jid"], item["node"] = domain, node_name
                if node["config"].get("title"):
                    item["name"] = node["config"]["title"]
                listed.append(item)
            return listed
        node = nodes.get(name)
        if node is None:
            return None
        if namespace == NS_INFO:
            identity = domish.Element((NS_INFO, "identity"))
            identity["category"], identity["type"] = "pubsub", "leaf"
            if node["config"].get("title"):
                identity["name"] = node["config"]["title"]
            feature = domish.Element((NS_INFO, "feature"))
            feature["var"] = NS_PUBSUB
            return [identity, feature]
        try:
            self._check_access(node, sender.userhost().lower() if sender is not None else "")
        except PubsubError:
            return []
        listed = []
        for item_id, _, _ in node["items"]:
            item = domish.Element((NS_ITEMS, "item"))
            item["jid"], item["name"] = domain, item_id
            listed.append(item)
        return listed

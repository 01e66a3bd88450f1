"""Personal eventing (XEP-0163): a pubsub service (XEP-0060) on every account's bare JID.

What clients build on it: OMEMO device lists and bundles, avatars
(XEP-0084), bookmarks (XEP-0402), mood and tune.  A node is created by its
account's first publish to it, configured by the publish-options (XEP-0223)
or the owner's node_config form; only the owner publishes, retracts,
configures, deletes and purges.  Who may read and subscribe depends on the
node's access model (``bridge.core.pubsub``): presence (the default), open,
roster groups or a whitelist of the owner alone.

Notifications go to the owner's own resources and to the resources of
contacts whose presence reached the owner, when their entity capabilities
(XEP-0115) list ``<node>+notify`` and the access model lets them in, and to
explicit subscribers.  A hash is asked of one client once (disco#info from
the host's domain), checked, and kept in a cache shared by the host's
sessions; the newest item of every node a contact wants is sent when the
contact comes online with a new hash and when it subscribes.

Bounds (``[pep]``): nodes per account, items per node, bytes per item
and bytes of all the items of an account (not-acceptable / policy-violation
with XEP-0060's conditions).  The contacts' capabilities are kept while
the owner has a session, at most ``RECIPIENTS_PER_USER`` per account.
"""

from twisted.internet import defer
from twisted.words.xish import domish

from bridge.core import caps as entity_caps
from bridge.core import pubsub
from bridge.core.account_data import Changed
from bridge.core.hooks import OBSERVE, in_background
from bridge.core.pubsub import NS_EVENT, NS_OWNER, NS_PUBSUB, PubsubError, event_message, items_element
from bridge.core.stanza import form_values, make, parse_jid, result_reply
from bridge.core.storage.cache import DocumentCache, KeyedLock
from bridge.core.xmlstream import serialize

STORE = "pep"
FEATURES = ("publish", "auto-create", "publish-options", "access-presence", "access-open", "access-roster",
            "access-whitelist", "retrieve-items", "retract-items", "delete-nodes", "purge-nodes", "config-node",
            "last-published", "filtered-notifications", "subscribe", "persistent-items", "presence-notifications")
# The contacts' resources (with their capabilities) kept per account while its owner is online.
RECIPIENTS_PER_USER = 4000
SUBSCRIBERS_PER_NODE = 256
# The caps cache: verified hashes, their +notify nodes, and the questions under way.
CAPS_ENTRIES = 4096
CAPS_BYTES = 4 * 1024 * 1024
NOTIFY_NODES_PER_CAPS = 256
MAX_NODE_NAME_BYTES = 1023
CAPS_QUERIES_PENDING = 1024
CAPS_WAITERS_PER_QUERY = 64
CAPS_QUERY_TIMEOUT_SECONDS = 60
# The account documents kept in memory: this many bytes' worth at the configured maximum per account.
DOCUMENTS_BUDGET_BYTES = 128 * 1024 * 1024


def decode(stored):
    return stored if stored else {"nodes": {}}


def encode(document):
    return document if document["nodes"] else None


class Pep:
    def __init__(self, ctx):
        self.ctx = ctx
        self.limits = ctx.config.pep
        kept = max(16, DOCUMENTS_BUDGET_BYTES // self.limits.max_bytes_per_user)
        self.documents = DocumentCache(ctx.storage, STORE, decode, encode, limit=kept, caches=ctx.document_caches)
        self._changes = KeyedLock()
        self.caps = entity_caps.CapsCache(CAPS_ENTRIES, CAPS_BYTES)
        self.recipients = {}  # owner's bare JID -> {contact's full JID: (hash, ver)}
        self._queries = {}  # IQ id -> (full JID asked, (hash, ver))
        self._waiting = {}  # (hash, ver) -> [(owner, full JID)] waiting for its answer
        self._query_ids = 0

    # -- who gets what ------------------------------------------------------------

    def _notify_nodes(self, stanza, owner, full):
        """The +notify nodes of a presence's caps; None while unknown (then asked, and ``owner``'s
        last items go to ``full`` once the answer is in)."""
        announced = entity_caps.caps_of(stanza) if stanza is not None else None
        if announced is None:
            return frozenset()
        key = (announced[0], announced[2])
        nodes = self.caps.get(key)
        if nodes is None:
            self._ask(announced, full, owner)
        return nodes

    def _ask(self, announced, full, owner):
        algorithm, node, ver = announced
        key = (algorithm, ver)
        waiting = self._waiting.get(key)
        if waiting is not None:
            if len(waiting) < CAPS_WAITERS_PER_QUERY and (owner, full) not in waiting:
                waiting.append((owner, full))
            return
        if len(self._waiting) >= CAPS_QUERIES_PENDING:
            return
        self._waiting[key] = [(owner, full)]
        self._query_ids += 1
        query_id = f"caps{self._query_ids}"
        self._queries[query_id] = (full, key)
        iq = make("iq", to=full, sender=self.ctx.host.name, type="get", id=query_id)
        iq.addElement((entity_caps.NS_INFO, "query"))["node"] = f"{node}#{ver}"
        self.ctx.clock.callLater(CAPS_QUERY_TIMEOUT_SECONDS, self._forget_query, query_id)
        self.ctx.route(iq)

    def _forget_query(self, query_id):
        asked = self._queries.pop(query_id, None)
        if asked is not None:
            self._waiting.pop(asked[1], None)

    def caps_answered(self, event):
        """``iq-result/host``, ``iq-error/host``: a client's answer to a caps question, if it is one."""
        asked = self._queries.get(event.stanza.getAttribute("id"))
        if asked is None or event.sender is None or event.sender.full() != asked[0]:
            return False
        full, key = asked
        waiting = self._waiting.pop(key, [])
        self._forget_query(event.stanza.getAttribute("id"))
        query = next(event.stanza.elements(entity_caps.NS_INFO, "query"), None)
        if event.stanza.getAttribute("type") != "result" or query is None or not entity_caps.verified(*key, query):
            return True  # asked again when a client next announces the hash
        self.caps.put(key, entity_caps.notify_nodes(query, NOTIFY_NODES_PER_CAPS, MAX_NODE_NAME_BYTES))
        for owner, contact in waiting:
            self._send_last_items(owner, contact, self.caps.get(key))
        return True

    def inbound_presence(self, event):
        """``presence/bare``, ``presence/full``: a contact's resource, and its caps, as the owner sees them."""
        stanza, sender = event.stanza, event.sender
        kind = stanza.getAttribute("type")
        owner = event.to.userhost()
        if sender is None or sender.resource is None or kind not in (None, "unavailable") \
                or sender.userhost() == owner:
            return False  # the owner's own resources are known from the session table
        full = sender.full()
        known = self.recipients.get(owner)
        if kind == "unavailable":
            if known is not None:
                known.pop(full, None)
            return False
        if not self.ctx.sessions.resources(owner):
            return False
        announced = entity_caps.caps_of(stanza)
        key = (announced[0], announced[2]) if announced else None
        if known is None:
            known = self.recipients[owner] = {}
        if full in known and known[full] == key:
            return False
        if full not in known and len(known) >= RECIPIENTS_PER_USER:
            return False
        known[full] = key
        nodes = self._notify_nodes(stanza, owner, full)
        if nodes:
            self._send_last_items(owner, full, nodes)
        return False

    def own_presence(self, event):
        """``pre-presence/self``: a resource of the owner coming online gets the last items it wants."""
        session, stanza = event.origin, event.stanza
        if stanza.getAttribute("type") is None and not session.available:
            nodes = self._notify_nodes(stanza, session.bare, session.full)
            if nodes:
                self._send_last_items(session.bare, session.full, nodes)
        return False

    def session_ended(self, session):
        """The owner's last session gone: the contacts' resources are no longer tracked."""
        if all(other is session for other in self.ctx.sessions.resources(session.bare)):
            self.recipients.pop(session.bare, None)
        return False

    def forget(self, bare):
        """``account/deleted``: storage dropped the nodes; so does memory."""
        user, host = bare.split("@", 1)
        self.documents.forget(host, user)
        self.recipients.pop(bare, None)
        return False

    @in_background(handled=False)
    @defer.inlineCallbacks
    def _send_last_items(self, owner, full, nodes):
        """The newest item of each of ``owner``'s nodes in ``nodes`` that ``full`` may see, to ``full``."""
        user, host = owner.split("@", 1)
        document = yield self.documents.load(host, user)
        roster = yield self.ctx.rosters.load(owner)
        is_owner = full.split("/", 1)[0] == owner
        for name, node in document["nodes"].items():
            config = node["config"]
            if name not in nodes or not node["items"] or config["send_last_published_item"] != "on_sub_and_presence":
                continue
            if pubsub.access_error(config, is_owner, roster.get(full.split("/", 1)[0])) is None:
                self.ctx.route(event_message(owner, full, items_element(NS_EVENT, name, node["items"][-1:])))

    def _targets(self, owner, name, node, roster):
        """Who is notified of a change of ``owner``'s node: the resources that want it and may see it,
        and the subscribers."""
        config = node["config"]
        targets = []
        for session in self.ctx.sessions.available(owner):
            nodes = self._notify_nodes(session.presence, owner, session.full)
            if nodes and name in nodes:
                targets.append(session.full)
        for full, key in self.recipients.get(owner, {}).items():
            nodes = self.caps.get(key) if key is not None else None
            if nodes and name in nodes and pubsub.access_error(config, False, roster.get(full.split("/", 1)[0])) is None:
                targets.append(full)
        covered = {target.split("/", 1)[0] for target in targets}
        for subscriber in node["subscribers"]:
            bare = subscriber.split("/", 1)[0]
            if subscriber in targets or ("/" not in subscriber and bare in covered):
                continue
            if pubsub.access_error(config, bare == owner, roster.get(bare)) is None:
                targets.append(subscriber)
        return targets

    def _notify(self, owner, name, node, roster, child):
        for target in self._targets(owner, name, node, roster):
            self.ctx.route(event_message(owner, target, child))

    # -- requests -------------------------------------------------------------------

    def _request(self, event, uri, owner_only):
        """The single child of a pubsub request with its node name, or None once refused."""
        if owner_only and not event.from_owner():
            return None
        request = next(event.stanza.elements(uri, "pubsub"), None)
        children = [child for child in request.elements() if child.name != "publish-options"] if request is not None else []
        if len(children) != 1:
            event.reply(PubsubError("bad-request", text="one request per pubsub element").reply(event.stanza))
            return None
        child = children[0]
        if not child.getAttribute("node"):
            event.reply(PubsubError("not-acceptable", "nodeid-required").reply(event.stanza))
            return None
        return child

    def _run(self, event, work, *args):
        """Run ``work`` in turn with the other changes of the addressed account; a PubsubError is the reply."""
        def refused(failure):
            failure.trap(PubsubError)
            event.reply(failure.value.reply(event.stanza))

        d = self._changes.run(event.to.userhost(), work, event, *args)
        d.addErrback(refused)
        return d

    @in_background()
    def set(self, event):
        """``iq-set`` pubsub: publish and retract (the owner), subscribe and unsubscribe (anyone)."""
        child = self._request(event, NS_PUBSUB, owner_only=False)
        if child is None:
            return None
        if child.name in ("publish", "retract"):
            if not event.from_owner():
                return None
            work = self._publish if child.name == "publish" else self._retract
            return self._run(event, work, child)
        if child.name in ("subscribe", "unsubscribe"):
            return self._run(event, self._subscription, child)
        event.reply(PubsubError("feature-not-implemented", "unsupported").reply(event.stanza))
        return None

    @in_background()
    def get(self, event):
        """``iq-get`` pubsub: items, for whoever the node's access model lets in."""
        child = self._request(event, NS_PUBSUB, owner_only=False)
        if child is None:
            return None
        if child.name != "items":
            event.reply(PubsubError("feature-not-implemented", "unsupported").reply(event.stanza))
            return None
        return self._run(event, self._items, child)

    @in_background()
    def owner_set(self, event):
        """``iq-set`` pubsub#owner: configure, delete, purge (the owner only)."""
        child = self._request(event, NS_OWNER, owner_only=True)
        if child is None:
            return None
        work = {"configure": self._configure, "delete": self._delete, "purge": self._purge}.get(child.name)
        if work is None:
            event.reply(PubsubError("feature-not-implemented", "unsupported").reply(event.stanza))
            return None
        return self._run(event, work, child)

    @in_background()
    def owner_get(self, event):
        """``iq-get`` pubsub#owner: the node_config form (the owner only)."""
        child = self._request(event, NS_OWNER, owner_only=True)
        if child is None:
            return None
        if child.name != "configure":
            event.reply(PubsubError("feature-not-implemented", "unsupported").reply(event.stanza))
            return None
        return self._run(event, self._config_form, child)

    # -- the work, one account at a time ------------------------------------------------

    def _load(self, event):
        return self.documents.load(event.host.name, event.to.user)

    def _save(self, event, document):
        return self.documents.save(event.host.name, event.to.user, document)

    @staticmethod
    def _node(document, child):
        node = document["nodes"].get(child["node"])
        if node is None:
            raise PubsubError("item-not-found", text="no such node")
        return node

    def _reply(self, event, uri=None, child=None):
        reply = result_reply(event.stanza)
        if child is not None:
            reply.addElement((uri, "pubsub")).addChild(child)
        event.reply(reply)

    @defer.inlineCallbacks
    def _publish(self, event, child):
        name = child["node"]
        item_id, payload_xml = pubsub.published_item(child, self.limits.max_item_bytes)
        options = {}
        for form in self._forms(event.stanza, "publish-options"):
            options = pubsub.options_from_form(form_values(form), self.limits.max_items_per_node)
        document = yield self._load(event)
        node = document["nodes"].get(name)
        if node is None:
            if len(document["nodes"]) >= self.limits.max_nodes_per_user:
                raise PubsubError("policy-violation", "max-nodes-exceeded",
                                  f"an account keeps at most {self.limits.max_nodes_per_user} nodes")
            config = pubsub.default_config(1)
            config.update(options)
            node = {"config": config, "items": [], "subscribers": []}
        else:
            pubsub.check_preconditions(node["config"], options)
        kept = [list(item) for item in node["items"]]
        publisher = event.sender.userhost()
        if node["config"]["persist_items"]:
            pubsub.publish_item(kept, item_id, payload_xml, publisher, node["config"]["max_items"])
        self._check_bytes(document, name, node, kept)
        node["items"] = kept
        document["nodes"][name] = node
        yield self._save(event, document)
        published = domish.Element((NS_PUBSUB, "publish"))
        published["node"] = name
        published.addElement("item")["id"] = item_id
        self._changed(event.to.userhost(), document, name).addCallback(
            lambda _: self._reply(event, NS_PUBSUB, published))
        roster = yield self.ctx.rosters.load(event.to.userhost())
        self._notify(event.to.userhost(), name, node, roster,
                     items_element(NS_EVENT, name, [[item_id, payload_xml, publisher]]))

    def _check_bytes(self, document, name, node, kept):
        """PubsubError when ``kept`` as the items of ``name`` puts the account over its bytes (unless it shrinks)."""
        others = sum(pubsub.item_bytes(other["items"]) for other_name, other in document["nodes"].items()
                     if other_name != name)
        total = others + pubsub.item_bytes(kept)
        if total > self.limits.max_bytes_per_user and total > others + pubsub.item_bytes(node["items"]):
            raise PubsubError("policy-violation", text=f"an account's items may take at most "
                                                       f"{self.limits.max_bytes_per_user} bytes")

    def _changed(self, owner, document, name):
        """``pep/changed``: a client changed node ``name``; a Deferred that fires once the conversions
        are done, when the client may be answered (see ``bridge.core.account_data``)."""
        def read(other):
            node = document["nodes"].get(other)
            return [item[:2] for item in node["items"]] if node is not None else []

        change = Changed(owner, name, read(name), read=read)
        self.ctx.fire("pep/changed", change)
        return change.settled()

    def take_write(self, request):
        """``pep/write``: a conversion sets a node's items (see ``bridge.core.account_data``)."""
        self._changes.run(request.owner, self._write, request).chainDeferred(request.done)
        return True

    @defer.inlineCallbacks
    def _write(self, request):
        owner, name = request.owner, request.name
        user, host = owner.split("@", 1)
        document = yield self.documents.load(host, user)
        node = document["nodes"].get(name)
        if node is None:
            if len(document["nodes"]) >= self.limits.max_nodes_per_user:
                raise PubsubError("policy-violation", "max-nodes-exceeded", "the account has too many nodes")
            config = pubsub.default_config(1)
            config.update(request.options)
            node = {"config": config, "items": [], "subscribers": []}
        wanted = [[item_id, serialize(payload), owner] for item_id, payload in request.value]
        wanted = wanted[-node["config"]["max_items"]:] if node["config"]["persist_items"] else []
        if any(len(item[1].encode("utf-8")) > self.limits.max_item_bytes for item in wanted):
            raise PubsubError("not-acceptable", "payload-too-big", "an item is over the size limit")
        self._check_bytes(document, name, node, wanted)
        before = {item[0]: item[1] for item in node["items"]}
        published = [item for item in wanted if before.get(item[0]) != item[1]]
        retracted = set(before) - {item[0] for item in wanted}
        node["items"] = wanted
        document["nodes"][name] = node
        yield self.documents.save(host, user, document)
        roster = yield self.ctx.rosters.load(owner)
        if published:
            self._notify(owner, name, node, roster, items_element(NS_EVENT, name, published))
        if retracted:
            gone = domish.Element((NS_EVENT, "items"))
            gone["node"] = name
            for item_id in sorted(retracted):
                gone.addElement("retract")["id"] = item_id
            self._notify(owner, name, node, roster, gone)

    @staticmethod
    def _forms(stanza, container):
        for request in stanza.elements(NS_PUBSUB, "pubsub"):
            for holder in request.elements(NS_PUBSUB, container):
                yield from holder.elements(pubsub.NS_DATA, "x")

    @defer.inlineCallbacks
    def _retract(self, event, child):
        ids = [item.getAttribute("id") for item in child.elements(NS_PUBSUB, "item")]
        if not ids or not all(ids):
            raise PubsubError("bad-request", "item-required", "a retract names the items by id")
        document = yield self._load(event)
        node = self._node(document, child)
        if not set(ids) <= {item[0] for item in node["items"]}:
            raise PubsubError("item-not-found", text="no such item")
        node["items"] = [item for item in node["items"] if item[0] not in ids]
        yield self._save(event, document)
        self._changed(event.to.userhost(), document, child["node"]).addCallback(lambda _: self._reply(event))
        if child.getAttribute("notify") in ("1", "true"):
            gone = domish.Element((NS_EVENT, "items"))
            gone["node"] = child["node"]
            for item_id in ids:
                gone.addElement("retract")["id"] = item_id
            roster = yield self.ctx.rosters.load(event.to.userhost())
            self._notify(event.to.userhost(), child["node"], node, roster, gone)

    @defer.inlineCallbacks
    def _items(self, event, child):
        document = yield self._load(event)
        node = self._node(document, child)
        yield self._check_access(event, node)
        wanted = [item.getAttribute("id") for item in child.elements(NS_PUBSUB, "item")]
        items = node["items"]
        if wanted:
            items = [item for item in items if item[0] in wanted]
        limit = child.getAttribute("max_items")
        if limit is not None:
            if not limit.isdigit():
                raise PubsubError("bad-request", text="max_items is a number")
            items = items[len(items) - int(limit):] if int(limit) else []
        self._reply(event, NS_PUBSUB, items_element(NS_PUBSUB, child["node"], items))

    @defer.inlineCallbacks
    def _check_access(self, event, node):
        owner = event.to.userhost()
        requester = event.sender.userhost() if event.sender is not None else ""
        roster = yield self.ctx.rosters.load(owner)
        refused = pubsub.access_error(node["config"], requester == owner, roster.get(requester))
        if refused is not None:
            raise refused

    @defer.inlineCallbacks
    def _subscription(self, event, child):
        jid = parse_jid(child.getAttribute("jid"))
        if jid is None or event.sender is None or jid.userhost() != event.sender.userhost():
            raise PubsubError("bad-request", "invalid-jid", "one subscribes one's own address")
        document = yield self._load(event)
        node = self._node(document, child)
        subscriber = jid.full()
        reply = domish.Element((NS_PUBSUB, "subscription"))
        reply["node"], reply["jid"] = child["node"], subscriber
        if child.name == "unsubscribe":
            if subscriber not in node["subscribers"]:
                raise PubsubError("unexpected-request", "not-subscribed", "no such subscription")
            node["subscribers"].remove(subscriber)
            yield self._save(event, document)
            self._reply(event)
            return
        yield self._check_access(event, node)
        if subscriber not in node["subscribers"]:
            if len(node["subscribers"]) >= SUBSCRIBERS_PER_NODE:
                raise PubsubError("policy-violation", "too-many-subscriptions",
                                  f"a node has at most {SUBSCRIBERS_PER_NODE} subscribers")
            node["subscribers"].append(subscriber)
            yield self._save(event, document)
        reply["subscription"] = "subscribed"
        self._reply(event, NS_PUBSUB, reply)
        if node["items"] and node["config"]["send_last_published_item"] != "never":
            self.ctx.route(event_message(event.to.userhost(), subscriber,
                                         items_element(NS_EVENT, child["node"], node["items"][-1:])))

    @defer.inlineCallbacks
    def _config_form(self, event, child):
        document = yield self._load(event)
        node = self._node(document, child)
        configure = domish.Element((NS_OWNER, "configure"))
        configure["node"] = child["node"]
        configure.addChild(pubsub.config_form(node["config"]))
        self._reply(event, NS_OWNER, configure)

    @defer.inlineCallbacks
    def _configure(self, event, child):
        form = next(child.elements(pubsub.NS_DATA, "x"), None)
        if form is None or form.getAttribute("type") not in ("submit", "cancel"):
            raise PubsubError("bad-request", text="a configure carries a submitted form")
        document = yield self._load(event)
        node = self._node(document, child)
        if form["type"] == "cancel":
            self._reply(event)
            return
        options = pubsub.options_from_form(form_values(form), self.limits.max_items_per_node)
        node["config"].update(options)
        del node["items"][:max(0, len(node["items"]) - node["config"]["max_items"])]
        if not node["config"]["persist_items"]:
            node["items"] = []
        yield self._save(event, document)
        self._reply(event)

    @defer.inlineCallbacks
    def _delete(self, event, child):
        document = yield self._load(event)
        node = self._node(document, child)
        roster = yield self.ctx.rosters.load(event.to.userhost())
        targets = self._targets(event.to.userhost(), child["node"], node, roster)
        del document["nodes"][child["node"]]
        yield self._save(event, document)
        self._changed(event.to.userhost(), document, child["node"]).addCallback(lambda _: self._reply(event))
        for target in targets:
            deleted = domish.Element((NS_EVENT, "delete"))
            deleted["node"] = child["node"]
            self.ctx.route(event_message(event.to.userhost(), target, deleted))

    @defer.inlineCallbacks
    def _purge(self, event, child):
        document = yield self._load(event)
        node = self._node(document, child)
        node["items"] = []
        yield self._save(event, document)
        self._changed(event.to.userhost(), document, child["node"]).addCallback(lambda _: self._reply(event))
        roster = yield self.ctx.rosters.load(event.to.userhost())
        purged = domish.Element((NS_EVENT, "purge"))
        purged["node"] = child["node"]
        self._notify(event.to.userhost(), child["node"], node, roster, purged)


def setup(ctx):
    if not ctx.has_accounts:
        return None
    pep = Pep(ctx)
    ctx.add_identity("pubsub", "pep", None, where="account")
    for feature in FEATURES:
        ctx.add_feature(f"{NS_PUBSUB}#{feature}", where="account")
    ctx.hook(f"iq-set/bare/{NS_PUBSUB}:pubsub", pep.set)
    ctx.hook(f"iq-get/bare/{NS_PUBSUB}:pubsub", pep.get)
    ctx.hook(f"iq-set/bare/{NS_OWNER}:pubsub", pep.owner_set)
    ctx.hook(f"iq-get/bare/{NS_OWNER}:pubsub", pep.owner_get)
    ctx.hook("iq-result/host", pep.caps_answered)
    ctx.hook("iq-error/host", pep.caps_answered)
    for target in ("bare", "full"):
        ctx.hook(f"presence/{target}", pep.inbound_presence, priority=OBSERVE)
    ctx.hook("pre-presence/self", pep.own_presence, priority=OBSERVE)
    ctx.hook("session/ended", pep.session_ended)
    ctx.hook("account/deleted", pep.forget)
    ctx.hook("pep/write", pep.take_write)
    return pep

"""Private XML storage (XEP-0049), which XEP-0048 bookmarks use.

Each account keeps one XML fragment per (namespace, element name); only the
owner reads or writes them.  An account's fragments together take at most
``max_private_bytes_per_user`` bytes of XML; a set that would grow them past
it is refused with ``resource-constraint``.  A host's site policy may set
its own bound, or none at all (``[hosts.NAME] max_private_bytes_per_user``,
bridge/core/sitepolicy.py): then a set is refused with ``not-allowed``.

A client's set is told on ``private/changed``; ``private/write`` stores a
fragment for a conversion (``features/bookmarks.py``, from PEP), within the
same bound (``bridge.core.account_data``).
"""

from twisted.internet import defer

from bridge.core import sitepolicy
from bridge.core.account_data import Changed
from bridge.core.hooks import in_background
from bridge.core.stanza import error_reply, result_reply
from bridge.core.storage.cache import KeyedLock
from bridge.core.xmlstream import parse_element, serialize

NS_PRIVATE = "jabber:iq:private"
STORE = "private"


def xml_bytes(fragments):
    """The bytes the stored fragments take as XML (UTF-8)."""
    return sum(len(text.encode("utf-8")) for text in fragments.values())


class PrivateStorage:
    def __init__(self, ctx):
        self.ctx = ctx
        self._changes = KeyedLock()  # one account's fragments are changed one set at a time

    def max_bytes(self, host):
        """The bytes of private XML an account of ``host`` may keep (0: none)."""
        config = self.ctx.config
        return sitepolicy.storage_bound(config.hosts[host].max_private_bytes_per_user,
                                        config.quotas.max_private_bytes_per_user)

    def _payload(self, event):
        if not event.from_owner():
            return None
        children = list(event.stanza.query.elements())
        if len(children) != 1 or not children[0].uri or children[0].uri.startswith("jabber:"):
            event.reply(error_reply(event.stanza, "not-acceptable"))
            return None
        return children[0]

    @in_background()
    @defer.inlineCallbacks
    def get(self, event):
        wanted = self._payload(event)
        if wanted is None:
            return
        stored = yield self.ctx.storage.get(event.host.name, event.to.user, STORE)
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_PRIVATE, "query"))
        text = (stored or {}).get(f"{wanted.uri} {wanted.name}")
        query.addChild(parse_element(text) if text else wanted)
        event.reply(reply)

    @in_background()
    def set(self, event):
        payload = self._payload(event)
        if payload is None:
            return None
        if not self.max_bytes(event.host.name):
            event.reply(error_reply(event.stanza, "not-allowed", "private storage is off on this host"))
            return None
        return self._changes.run((event.host.name, event.to.user), self._set, event, payload)

    @defer.inlineCallbacks
    def _set(self, event, payload):
        stored = yield self._store(event.host.name, event.to.user, payload)
        if not stored:
            limit = self.max_bytes(event.host.name)
            event.reply(error_reply(event.stanza, "resource-constraint",
                                    f"private storage is limited to {limit} bytes per account"))
            return
        change = Changed(event.to.userhost(), f"{payload.uri} {payload.name}", payload)
        self.ctx.fire("private/changed", change)
        change.settled().addCallback(lambda _: event.reply(result_reply(event.stanza)))

    @defer.inlineCallbacks
    def _store(self, host, user, payload):
        """Keep ``payload`` in place of the fragment of its name; False when that would pass the bound."""
        stored = (yield self.ctx.storage.get(host, user, STORE)) or {}
        before = xml_bytes(stored)
        stored[f"{payload.uri} {payload.name}"] = serialize(payload)
        after = xml_bytes(stored)
        if after > self.max_bytes(host) and after > before:
            return False
        yield self.ctx.storage.set(host, user, STORE, stored)
        return True

    def take_write(self, request):
        """``private/write``: a conversion stores a fragment (see ``bridge.core.account_data``)."""
        user, host = request.owner.split("@", 1)
        d = self._changes.run((host, user), self._store, host, user, request.value)
        d.addCallback(self._written, request)
        d.chainDeferred(request.done)
        return True

    def _written(self, stored, request):
        if not stored:
            raise ValueError(f"private storage of {request.owner} would pass "
                             f"{self.max_bytes(request.owner.split('@', 1)[1])} bytes")

    def read(self, request):
        """``private/read``: the stored fragment named ``request.name`` (or None), for a conversion."""
        user, host = request.owner.split("@", 1)
        d = self.ctx.storage.get(host, user, STORE)
        d.addCallback(lambda stored: parse_element(stored[request.name]) if stored and request.name in stored else None)
        d.chainDeferred(request.done)
        return True


def setup(ctx):
    storage = PrivateStorage(ctx)
    ctx.add_feature(NS_PRIVATE)
    ctx.hook(f"iq-get/bare/{NS_PRIVATE}:query", storage.get)
    ctx.hook(f"iq-set/bare/{NS_PRIVATE}:query", storage.set)
    ctx.hook("private/write", storage.take_write)
    ctx.hook("private/read", storage.read)
    return storage

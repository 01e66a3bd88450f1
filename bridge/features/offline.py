"""Offline messages (XEP-0160) with XEP-0203 delay stamps.

A chat or normal message for an account with no available resource that no
other ``message/offline`` handler took (the SIP gateway offers it to the
user's phones first) is stored, and delivered in order when a session of
the account next sends available presence with a non-negative priority.  The
message is held until it is written, so whoever keeps a durable copy of it
(the SIP gateway) lets go only once storage has it.  After storing, the event
``offline/stored`` fires with (host, user, stanza): the SMS and email
gateways hang on it to reach a user who is away.

Not everything is worth keeping (XEP-0160, XEP-0334): a message without a
<body/> that carries only chat states (XEP-0085), receipts (XEP-0184) or
chat markers (XEP-0333) is news of a conversation, stale by the time the
user is back, and is dropped without a word (nor does it wake the SMS or
email alerts), unless its sender asked for it to be kept with the
XEP-0334 <store/> hint.  A message with the <no-store/> hint is never
stored: its sender gets ``service-unavailable`` as RFC 6121 section 8.5.2
gives for a message that is neither delivered nor stored, except when it
is such news, which is dropped silently.

A message the archive (XEP-0313) also holds carries the archive's stanza
id; a session that syncs its history from the archive (a handler of
``offline/flushing`` answers true for it) is sent only the stored messages
the archive does not hold, and the rest are removed all the same.

Each account keeps at most ``max_offline_messages_per_user`` messages and
``max_offline_bytes_per_user`` bytes of them (as stored, delay stamp
included); past either, the sender gets ``resource-constraint``.  The bytes
come from a total that storage keeps (``IStorage.size``), and one account's
messages are checked and written one after the other, so that a burst of
messages whose checks all run before the first is written cannot pass the
quota together.
"""

from twisted.internet import defer
from twisted.logger import Logger

from bridge.core.hooks import FALLBACK, in_background
from bridge.core.stanza import delay_element
from bridge.core.storage import stored_bytes
from bridge.core.storage.cache import KeyedLock
from bridge.core.xmlstream import parse_element, serialize

log = Logger()

STORE = "offline"
NS_OFFLINE = "msgoffline"
NS_HINTS = "urn:xmpp:hints"
# What a message carries that is only news of the conversation: chat states, receipts, markers.
NEWS_NAMESPACES = frozenset(("http://jabber.org/protocol/chatstates", "urn:xmpp:receipts",
                             "urn:xmpp:chat-markers:0"))
NS_SID = "urn:xmpp:sid:0"
# What may accompany that news and changes nothing: the thread, hints, stanza ids (XEP-0359).
INCIDENTAL = frozenset(((None, "thread"), ("jabber:client", "thread"), (NS_HINTS, "no-copy"),
                        (NS_HINTS, "no-permanent-store"), (NS_HINTS, "no-store"),
                        (NS_SID, "origin-id"), (NS_SID, "stanza-id"), ("urn:xmpp:carbons:2", "private")))


def archived_for(stanza, account):
    """Whether the account's archive holds ``stanza``: it carries a stanza id by the account, which
    only the server stamps (XEP-0359; what others claim is removed on the way in)."""
    return any(child.uri == NS_SID and child.name == "stanza-id" and child.getAttribute("by") == account
               for child in stanza.elements())


def hints_of(stanza):
    return {child.name for child in stanza.elements() if child.uri == NS_HINTS}


def only_news(stanza):
    """A message without a body whose payload is chat states, receipts or markers only."""
    children = list(stanza.elements())
    return (any(child.uri in NEWS_NAMESPACES for child in children)
            and all(child.uri in NEWS_NAMESPACES or (child.uri, child.name) in INCIDENTAL for child in children))


class OfflineStorage:
    def __init__(self, ctx):
        self.ctx = ctx
        self.max_messages = ctx.config.quotas.max_offline_messages_per_user
        self.max_bytes = ctx.config.quotas.max_offline_bytes_per_user
        self._writes = KeyedLock()  # one account's messages are checked and stored one at a time

    def store(self, event):
        stanza = event.stanza
        hints = hints_of(stanza)
        if "store" not in hints:
            if only_news(stanza):
                return True
            if "no-store" in hints:
                self.ctx.router.bounce(stanza, "service-unavailable", "the message asked not to be stored")
                return True
        held = event.hold()
        d = self._writes.run((event.host.name, event.to.user), self._store, event)
        d.addErrback(self._not_stored, event)
        d.addBoth(lambda _: held.finish())
        return True

    @defer.inlineCallbacks
    def _store(self, event):
        host, user = event.host.name, event.to.user
        stanza = event.stanza
        if not (yield self.ctx.accounts.exists(host, user)):
            self.ctx.router.bounce(stanza, "service-unavailable")
            return
        delay = stanza.addChild(delay_element(self.ctx.server.now(), host))
        text = serialize(stanza)
        count, size = yield defer.gatherResults([self.ctx.storage.count(host, user, STORE),
                                                 self.ctx.storage.size(host, user, STORE)], consumeErrors=True)
        if count >= self.max_messages or size + stored_bytes(text) > self.max_bytes:
            stanza.children.remove(delay)
            self.ctx.router.bounce(stanza, "resource-constraint", "the recipient's offline storage is full")
            return
        yield self.ctx.storage.append(host, user, STORE, text)
        self.ctx.server.counters.offline_stored += 1
        self.ctx.fire("offline/stored", (host, user, stanza))

    def _not_stored(self, failure, event):
        log.failure("offline message for {to} not stored", failure, to=event.to.userhost())
        self.ctx.router.bounce(event.stanza, "internal-server-error", "the message could not be stored")

    @in_background(handled=False)
    @defer.inlineCallbacks
    def deliver(self, session):
        if session.priority < 0:
            return
        host, user = session.jid.host, session.jid.user
        stored = yield self.ctx.storage.items(host, user, STORE)
        if not stored:
            return
        # A session that syncs its history from the archive (``offline/flushing``) is not sent it twice.
        synced = self.ctx.fire("offline/flushing", session)
        for _, text in stored:
            stanza = parse_element(text)
            if not (synced and archived_for(stanza, session.bare)):
                session.send(stanza)
        yield self.ctx.storage.remove(host, user, STORE, [item_id for item_id, _ in stored])
        self.ctx.server.counters.offline_delivered += len(stored)


def setup(ctx):
    offline = OfflineStorage(ctx)
    ctx.hook("message/offline", offline.store, priority=FALLBACK)
    ctx.hook("presence/initial", offline.deliver)
    ctx.add_feature(NS_OFFLINE)
    return offline

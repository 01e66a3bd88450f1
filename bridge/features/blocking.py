"""Blocking command (XEP-0191): a user's block list, enforced both ways.

Items may be full JIDs, bare JIDs, domains or domain/resource, matched as
XEP-0191 section 3.2 orders.  Inbound presence from a blocked entity is
dropped and inbound messages and IQs get ``service-unavailable``; outbound
stanzas to one are refused with ``not-acceptable`` and <blocked/>.  Lists are
cached in memory because every stanza is checked against them.
"""

from twisted.internet import defer
from twisted.words.xish import domish

from bridge.core.stanza import error_reply, is_error_or_result, make, parse_jid, result_reply

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKED = "urn:xmpp:blocking:errors"
STORE = "blocklist"


def candidates(jid):
    """The block-list entries that would match ``jid``."""
    keys = {jid.full(), jid.userhost(), jid.host}
    if jid.resource:
        keys.add(f"{jid.host}/{jid.resource}")
    return keys


class BlockList:
    def __init__(self, ctx):
        self.ctx = ctx
        self._lists = {}

    @defer.inlineCallbacks
    def load(self, session):
        if session.bare not in self._lists:
            stored = yield self.ctx.storage.get(session.jid.host, session.jid.user, STORE)
            self._lists[session.bare] = set(stored or ())

    def _blocked_set(self, bare):
        """The cached list; an uncached one (an offline user's) is read if storage answers at once."""
        if bare not in self._lists:
            user, host = bare.split("@", 1)
            loaded = []
            self.ctx.storage.get(host, user, STORE).addCallback(loaded.append)
            if not loaded:
                return ()
            self._lists[bare] = set(loaded[0] or ())
        return self._lists[bare]

    def inbound(self, event):
        """Stanzas from a blocked entity to an online user never reach them."""
        if event.sender is None or event.to.user is None:
            return False
        blocked = self._blocked_set(event.to.userhost())
        if not blocked or not (candidates(event.sender) & blocked):
            return False
        if event.stanza.name != "presence" and not is_error_or_result(event.stanza):
            self.ctx.router.bounce(event.stanza, "service-unavailable")
        return True

    def outbound(self, event):
        blocked = self._blocked_set(event.origin.bare)
        if not blocked or event.to is None or not (candidates(event.to) & blocked):
            return False
        if event.stanza.name != "presence" and not is_error_or_result(event.stanza):
            reply = error_reply(event.stanza, "not-acceptable", extra=domish.Element((NS_BLOCKED, "blocked")))
            event.origin.send(reply)
        return True

    @defer.inlineCallbacks
    def _current(self, event):
        bare = event.to.userhost()
        if bare not in self._lists:
            stored = yield self.ctx.storage.get(event.host.name, event.to.user, STORE)
            self._lists[bare] = set(stored or ())
        return self._lists[bare]

    @defer.inlineCallbacks
    def get(self, event):
        if not event.from_owner():
            return
        session = self.ctx.sessions.get(event.sender.full())
        if session is not None:
            session.data["blocklist-requested"] = True
        current = yield self._current(event)
        reply = result_reply(event.stanza)
        blocklist = reply.addElement((NS_BLOCKING, "blocklist"))
        for jid in sorted(current):
            blocklist.addElement("item")["jid"] = jid
        event.reply(reply)

    @defer.inlineCallbacks
    def change(self, event):
        if not event.from_owner():
            return
        command = event.stanza.firstChildElement()
        items = []
        for item in command.elements(NS_BLOCKING, "item"):
            jid = parse_jid(item.getAttribute("jid"))
            if jid is None:
                event.reply(error_reply(event.stanza, "jid-malformed"))
                return
            items.append(jid.full())
        if command.name == "block" and not items:
            event.reply(error_reply(event.stanza, "bad-request", "nothing to block"))
            return
        current = yield self._current(event)
        bare = event.to.userhost()
        if command.name == "block":
            current |= set(items)
            for session in self.ctx.sessions.available(bare):
                for jid in items:
                    self.ctx.route(make("presence", to=jid, sender=session.full, type="unavailable"))
        else:
            changed = set(items) if items else set(current)
            current -= changed
        yield self.ctx.storage.set(event.host.name, event.to.user, STORE, sorted(current) or None)
        event.reply(result_reply(event.stanza))
        for session in self.ctx.sessions.resources(bare):
            if session.data.get("blocklist-requested"):
                push = make("iq", to=session.full, type="set", id="block-push")
                pushed = push.addElement((NS_BLOCKING, command.name))
                for jid in items:
                    pushed.addElement("item")["jid"] = jid
                session.send(push)


def setup(ctx):
    blocklist = BlockList(ctx)
    ctx.add_feature(NS_BLOCKING)
    ctx.hook("session/bound", blocklist.load)
    ctx.hook("stanza/in", blocklist.inbound, priority=100)
    ctx.hook("stanza/out", blocklist.outbound, priority=100)
    ctx.hook(f"iq-get/bare/{NS_BLOCKING}:blocklist", blocklist.get)
    ctx.hook(f"iq-set/bare/{NS_BLOCKING}:block", blocklist.change)
    ctx.hook(f"iq-set/bare/{NS_BLOCKING}:unblock", blocklist.change)
    return blocklist

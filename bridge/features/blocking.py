"""Blocking command (XEP-0191): a user's block list, enforced both ways.

Items may be full JIDs, bare JIDs, domains or domain/resource, matched as
XEP-0191 section 3.2 orders.  Inbound presence from a blocked entity is
dropped and inbound messages and IQs get ``service-unavailable``; outbound
stanzas to one are refused with ``not-acceptable`` and <blocked/>.

Every stanza is checked, so lists are kept in memory (the most recently used
ones, see ``DocumentCache``).  A stanza whose list is not in memory yet is
held until storage has answered, then decided: the check never fails open,
however late storage answers, and a list that cannot be read refuses.

A list holds at most ``max_blocked_items_per_user`` items; a block command
that would pass it is refused whole with ``resource-constraint``.  One
account's commands are carried out one after the other, so that two that
arrive while its list is being read both count.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core.hooks import POLICY, in_background
from bridge.core.stanza import error_reply, is_error_or_result, make, parse_jid, result_reply
from bridge.core.storage.cache import DocumentCache, KeyedLock

log = Logger()

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKED = "urn:xmpp:blocking:errors"
STORE = "blocklist"


def candidates(jid):
    """The block-list entries that would match ``jid``."""
    keys = {jid.full(), jid.userhost(), jid.host}
    if jid.resource:
        keys.add(f"{jid.host}/{jid.resource}")
    return keys


def block_lists(storage):
    """The block lists of one host, by (host, user), as frozensets of items."""
    return DocumentCache(storage, STORE, decode=lambda stored: frozenset(stored or ()),
                         encode=lambda items: sorted(items) or None)


class Blocking:
    def __init__(self, ctx):
        self.ctx = ctx
        self.max_items = ctx.config.quotas.max_blocked_items_per_user
        self.lists = block_lists(ctx.storage)
        self._changes = KeyedLock()

    # -- enforcement -------------------------------------------------------------

    def _check(self, event, jid, refuse):
        """Decide at once with the list of ``jid`` in memory; else hold the event until it is read."""
        blocked = self.lists.cached(jid.host, jid.user)
        if blocked is not None:
            return refuse(event, blocked)
        held = event.hold()

        def decide(items):
            if refuse(event, items):
                held.finish()
            else:
                held.resume()

        def unreadable(failure):
            log.failure("block list of {jid} unreadable: stanza refused", failure, jid=jid.userhost())
            if event.stanza.name != "presence":
                self.ctx.router.bounce(event.stanza, "internal-server-error")
            held.finish()

        self.lists.load(jid.host, jid.user).addCallbacks(decide, unreadable)
        return True

    def inbound(self, event):
        """Stanzas from a blocked entity never reach the user."""
        if event.sender is None or event.to.user is None:
            return False
        return self._check(event, event.to, self._refuse_inbound)

    def _refuse_inbound(self, event, blocked):
        if not blocked or not (candidates(event.sender) & blocked):
            return False
        if event.stanza.name != "presence" and not is_error_or_result(event.stanza):
            self.ctx.router.bounce(event.stanza, "service-unavailable")
        return True

    def outbound(self, event):
        """Stanzas of the user to a blocked entity are refused."""
        if event.to is None:
            return False
        return self._check(event, event.origin.jid, self._refuse_outbound)

    def _refuse_outbound(self, event, blocked):
        if not blocked or not (candidates(event.to) & blocked):
            return False
        if event.stanza.name != "presence" and not is_error_or_result(event.stanza):
            reply = error_reply(event.stanza, "not-acceptable", extra=domish.Element((NS_BLOCKED, "blocked")))
            event.origin.send(reply)
        return True

    def preload(self, session):
        """A new session: its list read now, so that its first stanzas need not wait."""
        self.lists.load(session.jid.host, session.jid.user).addErrback(
            lambda failure: log.failure("block list of {jid} unreadable", failure, jid=session.bare))
        return False

    def forget(self, bare):
        user, host = bare.split("@", 1)
        self.lists.forget(host, user)
        return False

    # -- the protocol ---------------------------------------------------------------

    def get(self, event):
        if not event.from_owner():
            return True
        session = self.ctx.sessions.get(event.sender.full())
        if session is not None:
            session.data["blocklist-requested"] = True
        return self._get(event)

    @in_background()
    @defer.inlineCallbacks
    def _get(self, event):
        current = yield self.lists.load(event.host.name, event.to.user)
        reply = result_reply(event.stanza)
        blocklist = reply.addElement((NS_BLOCKING, "blocklist"))
        for jid in sorted(current):
            blocklist.addElement("item")["jid"] = jid
        event.reply(reply)

    def change(self, event):
        if not event.from_owner():
            return True
        command = event.stanza.firstChildElement()
        items = []
        for item in command.elements(NS_BLOCKING, "item"):
            jid = parse_jid(item.getAttribute("jid"))
            if jid is None:
                event.reply(error_reply(event.stanza, "jid-malformed"))
                return True
            items.append(jid.full())
        if command.name == "block" and not items:
            event.reply(error_reply(event.stanza, "bad-request", "nothing to block"))
            return True
        return self._change(event, command.name, items)

    @in_background()
    def _change(self, event, command, items):
        return self._changes.run((event.host.name, event.to.user), self._apply, event, command, items)

    @defer.inlineCallbacks
    def _apply(self, event, command, items):
        bare = event.to.userhost()
        current = set((yield self.lists.load(event.host.name, event.to.user)))
        if command == "block":
            grown = current | set(items)
            if len(grown) > self.max_items and len(grown) > len(current):
                event.reply(error_reply(event.stanza, "resource-constraint",
                                        f"a block list may hold at most {self.max_items} items"))
                return
            current = grown
            for session in self.ctx.sessions.available(bare):
                for jid in items:
                    self.ctx.route(make("presence", to=jid, sender=session.full, type="unavailable"))
        else:
            current -= set(items) if items else set(current)
        yield self.lists.save(event.host.name, event.to.user, frozenset(current))
        event.reply(result_reply(event.stanza))
        for session in self.ctx.sessions.resources(bare):
            if session.data.get("blocklist-requested"):
                push = make("iq", to=session.full, type="set", id="block-push")
                pushed = push.addElement((NS_BLOCKING, command))
                for jid in items:
                    pushed.addElement("item")["jid"] = jid
                session.send(push)


def setup(ctx):
    blocking = Blocking(ctx)
    ctx.add_feature(NS_BLOCKING)
    ctx.hook("session/bound", blocking.preload)
    ctx.hook("account/deleted", blocking.forget)
    ctx.hook("stanza/in", blocking.inbound, priority=POLICY)
    ctx.hook("stanza/out", blocking.outbound, priority=POLICY)
    ctx.hook(f"iq-get/bare/{NS_BLOCKING}:blocklist", blocking.get)
    ctx.hook(f"iq-set/bare/{NS_BLOCKING}:block", blocking.change)
    ctx.hook(f"iq-set/bare/{NS_BLOCKING}:unblock", blocking.change)
    return blocking

"""Roster management (RFC 6121 section 2): get with versioning, set, remove.

A roster set that would add an item to a full roster
(``max_roster_items_per_user``) is refused with ``resource-constraint``; an
item whose name and groups together take more than
``max_roster_item_text_bytes`` with ``not-acceptable``, the error RFC 6121
section 2.3.3 gives for a name or group longer than the server allows.
"""

from twisted.internet import defer

from bridge.core.hooks import in_background
from bridge.core.roster import INTERESTED, NS_ROSTER
from bridge.core.stanza import error_reply, make, parse_jid, result_reply
from bridge.core.storage.cache import KeyedLock


class RosterService:
    def __init__(self, ctx):
        self.ctx = ctx
        self.max_item_text = ctx.config.quotas.max_roster_item_text_bytes
        self._changes = KeyedLock()  # one account's roster sets one after the other

    @in_background()
    @defer.inlineCallbacks
    def get(self, event):
        if not event.from_owner():
            return
        session = self.ctx.sessions.get(event.sender.full())
        if session is not None:
            self.ctx.sessions.mark(session, INTERESTED)
        roster = yield self.ctx.rosters.load(event.to.userhost())
        reply = result_reply(event.stanza)
        requested = event.stanza.query.getAttribute("ver")
        if requested is not None and requested == str(roster.version):
            event.reply(reply)
            return
        query = reply.addElement((NS_ROSTER, "query"))
        query["ver"] = str(roster.version)
        for item in roster.visible():
            query.addChild(item.to_element())
        event.reply(reply)

    @in_background()
    @defer.inlineCallbacks
    def set(self, event):
        if not event.from_owner():
            return
        stanza = event.stanza
        items = list(stanza.query.elements(NS_ROSTER, "item"))
        if len(items) != 1 or not items[0].getAttribute("jid"):
            event.reply(error_reply(stanza, "bad-request", "exactly one item with a jid"))
            return
        element = items[0]
        contact = parse_jid(element["jid"])
        if contact is None or contact.resource:
            event.reply(error_reply(stanza, "jid-malformed"))
            return
        groups = [str(group).strip() for group in element.elements(NS_ROSTER, "group")]
        if len(set(groups)) != len(groups) or "" in groups:
            event.reply(error_reply(stanza, "bad-request", "duplicate or empty group"))
            return
        name = element.getAttribute("name") or None
        if sum(len(text.encode("utf-8")) for text in [name or "", *groups]) > self.max_item_text:
            event.reply(error_reply(stanza, "not-acceptable", "the name and groups of an item may take "
                                    f"{self.max_item_text} bytes together"))
            return
        user = event.to.userhost()
        reply = yield self._changes.run(user, self._change, stanza, user, contact.userhost(),
                                        element.getAttribute("subscription") == "remove", name, groups)
        event.reply(reply)

    @defer.inlineCallbacks
    def _change(self, stanza, user, contact, remove, name, groups):
        """The answer to a roster set, once made (run again on a fresh read when another node changed the
        roster meanwhile: core/storage/cache.py)."""
        roster = yield self.ctx.rosters.load(user)
        if remove:
            item = roster.get(contact)
            if item is None or item.hidden:
                return error_reply(stanza, "item-not-found")
            if item.has_to or item.ask:
                self.ctx.route(make("presence", to=contact, sender=user, type="unsubscribe"))
            if item.has_from or item.pending_in is not None:
                self.ctx.route(make("presence", to=contact, sender=user, type="unsubscribed"))
            yield self.ctx.rosters.update(user, roster, item, removed=True)
        else:
            item = roster.ensure(contact)
            if item is None:
                return error_reply(stanza, "resource-constraint", f"the roster is full ({roster.max_items} items)")
            item.hidden = False
            item.name = name
            item.groups = groups
            yield self.ctx.rosters.update(user, roster, item)
        return result_reply(stanza)


def setup(ctx):
    service = RosterService(ctx)
    ctx.hook(f"iq-get/bare/{NS_ROSTER}:query", service.get)
    ctx.hook(f"iq-set/bare/{NS_ROSTER}:query", service.set)
    ctx.hook("stream-features/post-auth", advertise_versioning)
    return service


def advertise_versioning(stream_and_features):
    _, features = stream_and_features
    features.addElement(("urn:xmpp:features:rosterver", "ver"))

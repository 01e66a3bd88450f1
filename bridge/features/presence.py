"""Presence and subscriptions (RFC 6121 sections 3 and 4).

Outbound presence from a client is broadcast to the contacts the roster
allows; the first available presence of a session probes the user's
contacts and shows pending subscription requests; subscription stanzas move
both rosters through none/to/from/both, pending states and pre-approval.
A session that ends while available, a dropped socket included, is
announced unavailable.

Anyone can send an account subscription requests, so what they leave
behind is bounded.  Of a pending request only what shows it again is kept
(RFC 6121 section 3.1.3): the sender (the roster item's JID), and its nick
(XEP-0172) and status text, cut together to
``max_subscription_request_text_bytes``.  Past
``max_pending_subscriptions_per_user`` pending requests, or on a full
roster, a new request is refused with ``resource-constraint``: the requests
already waiting stay, since pushing out the oldest would let a stranger
erase requests the user has not seen yet, and the refused sender learns why
and may ask again once the user has answered some.
"""

from types import SimpleNamespace

from twisted.internet import defer
from twisted.logger import Logger

from bridge.core.hooks import in_background
from bridge.core.sessions import NO_DIRECTED
from bridge.core.stanza import make, priority_of, readdress
from bridge.core.storage.cache import KeyedLock

log = Logger()

SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
NS_NICK = "http://jabber.org/protocol/nick"
ROSTER_FULL = "the roster of {} is full"


def cut(text, limit):
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def kept_request(stanza, limit):
    """What is kept of a subscription request: its nick, then its status text, together within ``limit`` bytes."""
    nick = next((str(element) for element in stanza.elements(NS_NICK, "nick")), "")
    status = next((str(element) for element in stanza.elements() if element.name == "status" and not element.uri), "")
    nick = cut(nick, limit)
    status = cut(status, limit - len(nick.encode("utf-8")))
    return {"status": status or None, "nick": nick or None}


def request_stanza(user, contact, kept):
    """The subscription request of ``contact`` to ``user`` as it is shown again."""
    request = make("presence", to=user, sender=contact, type="subscribe")
    if kept.get("status"):
        request.addElement("status", content=kept["status"])
    if kept.get("nick"):
        request.addElement((NS_NICK, "nick"), content=kept["nick"])
    return request


class Presence:
    def __init__(self, ctx):
        self.ctx = ctx
        self.rosters = ctx.rosters
        self.sessions = ctx.sessions
        self.max_pending = ctx.config.quotas.max_pending_subscriptions_per_user
        self.max_request_text = ctx.config.quotas.max_subscription_request_text_bytes
        self._order = KeyedLock()

    def _in_turn(self, bare, work, *args):
        """Do ``work`` once what the presence of ``bare`` waits for is done, so that it keeps its order
        while rosters are read and written (RFC 6121 section 3.1.5: the approval, then the presence)."""
        d = self._order.run(bare, work, *args)
        d.addErrback(lambda failure: log.failure("presence of {bare} not handled", failure, bare=bare))
        return True

    def _send(self, stanza, to, sender):
        """Send a copy of ``stanza`` with new addresses, on behalf of ``sender`` (privacy lists apply)."""
        self.ctx.send_presence(readdress(stanza, to, sender))

    # -- outbound: from a local session --------------------------------------

    def broadcast(self, event):
        """A session's own presence: kept at once, sent to the roster's subscribers in the background."""
        session, stanza = event.origin, event.stanza
        kind = stanza.getAttribute("type")
        if kind not in (None, "unavailable"):
            return True
        directed = ()
        if kind is None:
            initial = not session.available
            session.presence = stanza
            session.priority = priority_of(stanza)
        else:
            if not session.available:
                return True
            initial = False
            session.presence = None
            directed, session.directed = session.directed, NO_DIRECTED
        self.sessions.changed(session)
        return self._in_turn(session.bare, self._broadcast, session, stanza, initial, directed)

    @defer.inlineCallbacks
    def _broadcast(self, session, stanza, initial, directed):
        roster = yield self.rosters.load(session.bare)
        targets = {item.jid for item in roster.items.values() if item.has_from} | set(directed)
        for target in targets:
            self._send(stanza, target, session.full)
        unavailable = stanza.getAttribute("type") == "unavailable"
        for other in self.sessions.available(session.bare) + ([session] if unavailable else []):
            self._send(stanza, other.full, session.full)
        if initial:
            self._initial(session, roster)

    def _initial(self, session, roster):
        for item in roster.items.values():
            if item.has_to:
                self.ctx.route(make("presence", to=item.jid, sender=session.bare, type="probe"))
            if item.pending_in is not None:
                session.send(request_stanza(session.bare, item.jid, item.pending_in))
        for other in self.sessions.available(session.bare):
            if other is not session:
                self._send(other.presence, session.full, other.full)
        self.ctx.fire("presence/initial", session)

    def session_ended(self, session):
        """A session gone while available (a dropped socket too) is announced unavailable."""
        if session.available:
            self.broadcast(SimpleNamespace(origin=session, stanza=make("presence", type="unavailable")))

    def outbound(self, event):
        """Presence with a 'to' from a local client: subscriptions or directed presence."""
        stanza, session = event.stanza, event.origin
        kind = stanza.getAttribute("type")
        if kind in SUBSCRIPTION_TYPES:
            return self._in_turn(session.bare, self._outbound_subscription, session.bare, event.to.userhost(),
                                 kind, stanza)
        if kind in (None, "unavailable"):
            self._track_directed(session, event.to.full(), kind)
            self.ctx.route(stanza)
            return True
        if kind == "error":
            self.ctx.route(stanza)
        return True

    @in_background()
    @defer.inlineCallbacks
    def _track_directed(self, session, target, kind):
        roster = yield self.rosters.load(session.bare)
        item = roster.get(event_bare(target))
        if item is not None and item.has_from:
            return
        if kind is None:
            if session.directed is NO_DIRECTED:
                session.directed = set()
            session.directed.add(target)
        elif target in session.directed:
            session.directed.discard(target)

    @defer.inlineCallbacks
    def _outbound_subscription(self, user, contact, kind, stanza):
        roster = yield self.rosters.load(user)
        item = roster.get(contact)
        route = True
        changed = False
        share = False
        if kind == "subscribe":
            item = roster.ensure(contact)
            if item is None:
                self.ctx.router.bounce(stanza, "resource-constraint", ROSTER_FULL.format(user))
                return
            if item.hidden:
                item.hidden = False
                changed = True
            if not item.has_to and not item.ask:
                item.ask = True
                changed = True
        elif kind == "subscribed":
            if item is not None and item.pending_in is not None:
                item.pending_in = None
                item.hidden = False
                item.set_flags(from_=True)
                changed = True
                share = True
            elif item is not None and item.has_from:
                route = False
            else:
                item = roster.ensure(contact, hidden=True)
                if item is None:
                    self.ctx.router.bounce(stanza, "resource-constraint", ROSTER_FULL.format(user))
                    return
                item.approved = True
                changed = True
                route = False
        elif kind == "unsubscribe":
            if item is not None and (item.has_to or item.ask):
                item.set_flags(to=False)
                item.ask = False
                changed = True
        elif kind == "unsubscribed":
            if item is not None and (item.has_from or item.pending_in is not None or item.approved):
                was_from = item.has_from
                item.set_flags(from_=False)
                item.pending_in = None
                item.approved = False
                changed = True
                if was_from:
                    for session in self.sessions.available(user):
                        self.ctx.route(make("presence", to=contact, sender=session.full, type="unavailable"))
        if changed:
            yield self.rosters.update(user, roster, item)
        if route:
            self._send(stanza, contact, user)
        if share:
            # RFC 6121 section 3.1.5: the approval first, then the presence.
            self._share_presence(user, contact)

    def _share_presence(self, user, contact):
        for session in self.sessions.available(user):
            self._send(session.presence, contact, session.full)

    # -- inbound: to a local account -----------------------------------------

    def inbound(self, event):
        stanza = event.stanza
        kind = stanza.getAttribute("type")
        sender = event.sender
        if sender is None:
            return True
        user = event.to.userhost()
        if kind in SUBSCRIPTION_TYPES:
            return self._in_turn(user, self._inbound_subscription, event, kind)
        if kind == "probe":
            return self._in_turn(user, self._probe, event)
        return self._in_turn(user, self._deliver, event)

    def _deliver(self, event):
        if event.to.resource:
            session = self.sessions.get(event.to.full())
            if session is not None:
                session.send(event.stanza)
        else:
            for session in self.sessions.available(event.to.userhost()):
                session.send(event.stanza)

    @defer.inlineCallbacks
    def _probe(self, event):
        user = event.to.userhost()
        roster = yield self.rosters.load(user)
        item = roster.get(event.sender.userhost())
        if item is None or not item.has_from:
            return
        available = self.sessions.available(user)
        for session in available:
            self._send(session.presence, event.sender.full(), session.full)
        if not available:
            self.ctx.send_presence(make("presence", to=event.sender.full(), sender=user, type="unavailable"))

    @defer.inlineCallbacks
    def _inbound_subscription(self, event, kind):
        user, contact, stanza = event.to.userhost(), event.sender.userhost(), event.stanza
        if not (yield self.ctx.accounts.exists(event.host.name, event.to.user)):
            if kind == "subscribe":
                self.ctx.route(make("presence", to=contact, sender=user, type="unsubscribed"))
            return
        roster = yield self.rosters.load(user)
        item = roster.get(contact)
        stanza["to"] = user
        stanza["from"] = contact
        deliver = False
        if kind == "subscribe":
            if item is not None and item.has_from:
                self.ctx.route(make("presence", to=contact, sender=user, type="subscribed"))
                return
            if item is not None and item.approved:
                item.approved = False
                item.hidden = False
                item.set_flags(from_=True)
                yield self.rosters.update(user, roster, item)
                self.ctx.route(make("presence", to=contact, sender=user, type="subscribed"))
                self._share_presence(user, contact)
                return
            if item is None or item.pending_in is None:
                if sum(1 for other in roster.items.values() if other.pending_in is not None) >= self.max_pending:
                    self.ctx.router.bounce(stanza, "resource-constraint",
                                           f"too many subscription requests are waiting for {user}")
                    return
                item = roster.ensure(contact, hidden=True)
                if item is None:
                    self.ctx.router.bounce(stanza, "resource-constraint", ROSTER_FULL.format(user))
                    return
            kept = kept_request(stanza, self.max_request_text)
            if item.pending_in != kept:  # the same request again is not written again
                item.pending_in = kept
                yield self.rosters.save(user, roster)
            deliver = True
        elif kind == "subscribed":
            if item is not None and item.ask:
                item.ask = False
                item.set_flags(to=True)
                yield self.rosters.update(user, roster, item)
                deliver = True
        elif kind == "unsubscribe":
            if item is not None and (item.has_from or item.pending_in is not None):
                item.set_flags(from_=False)
                item.pending_in = None
                yield self.rosters.update(user, roster, item)
                deliver = True
        elif kind == "unsubscribed":
            if item is not None and (item.has_to or item.ask):
                item.set_flags(to=False)
                item.ask = False
                yield self.rosters.update(user, roster, item)
                deliver = True
        if deliver:
            for session in self.sessions.available(user):
                session.send(stanza)


def event_bare(full):
    return full.split("/", 1)[0]


def setup(ctx):
    presence = Presence(ctx)
    ctx.hook("pre-presence/self", presence.broadcast)
    for target in ("bare", "full", "host"):
        ctx.hook(f"pre-presence/{target}", presence.outbound)
    for target in ("bare", "full"):
        ctx.hook(f"presence/{target}", presence.inbound)
    ctx.hook("session/ended", presence.session_ended)
    return presence

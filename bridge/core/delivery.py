"""The route of a local host: stanzas addressed to it become named events.

``deliver`` turns a stanza into the event its address calls for, in the
manner of Prosody: ``message/bare``, ``presence/full``,
``iq-get/host/urn:xmpp:ping:ping``, ``iq-set/bare/vcard-temp:vCard`` and so
on.  Feature modules hook those events; what no feature takes falls to the
rules of RFC 6121 section 8 implemented here, so an IQ nobody handles is
answered ``service-unavailable`` and a message for an account with no
available resource is offered to offline storage.
"""

from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID

from bridge.core.stanza import error_reply, first_child, parse_jid

log = Logger()


class Event:
    """What a handler receives: the stanza, its parsed addresses and context."""

    __slots__ = ("stanza", "host", "to", "sender", "origin", "server")

    def __init__(self, server, stanza, host, to, sender, origin=None):
        self.server = server
        self.stanza = stanza
        self.host = host
        self.to = to
        self.sender = sender
        self.origin = origin

    def from_owner(self):
        """True when the addressed account itself sent the stanza; else it is answered forbidden.

        Rosters, block lists, private storage and vCard changes belong to
        their account alone.
        """
        if self.sender is not None and self.sender.userhost() == self.to.userhost():
            return True
        self.reply(error_reply(self.stanza, "forbidden"))
        return False

    def reply(self, stanza):
        """Send ``stanza`` back, through the router like any other."""
        self.server.router.route(stanza)


def target_of(jid):
    if jid.user is None:
        return "host"
    return "bare" if jid.resource is None else "full"


def event_name(stanza, target):
    """The event for ``stanza``; IQ get/set events carry their payload's name."""
    kind = stanza.name
    if kind != "iq":
        return f"{kind}/{target}"
    kind_type = stanza.getAttribute("type")
    if kind_type in ("get", "set"):
        payload = first_child(stanza)
        if payload is not None:
            return f"iq-{kind_type}/{target}/{payload.uri}:{payload.name}"
    return f"iq-{kind_type}/{target}"


class LocalHost:
    """A hosted domain; its aliases are routed here and rewritten to its name."""

    def __init__(self, server, name, config):
        self.server = server
        self.name = name
        self.config = config

    def deliver(self, stanza):
        to = parse_jid(stanza.getAttribute("to"))
        if to.host != self.name:
            to = JID(tuple=(to.user, self.name, to.resource))
            stanza["to"] = to.full()
        sender = parse_jid(stanza.getAttribute("from"))
        event = Event(self.server, stanza, self, to, sender)
        target = target_of(to)
        name = event_name(stanza, target)
        hooks = self.server.hooks
        if hooks.fire("stanza/in", event) or hooks.fire(name, event):
            return
        if stanza.name == "iq":
            self._default_iq(event, target)
        elif stanza.name == "message":
            self._default_message(event, target)

    def _default_iq(self, event, target):
        stanza = event.stanza
        if target == "full" and stanza.getAttribute("type") in ("get", "set", "result", "error"):
            session = self.server.sessions.get(event.to.full())
            if session is not None:
                session.send(stanza)
                return
        self.server.router.bounce(stanza, "service-unavailable")

    def _default_message(self, event, target):
        """RFC 6121 section 8.5: delivery by type to full and bare JIDs."""
        stanza = event.stanza
        kind = stanza.getAttribute("type") or "normal"
        if target == "host":
            self.server.router.bounce(stanza, "service-unavailable")
            return
        if target == "full":
            session = self.server.sessions.get(event.to.full())
            if session is not None:
                session.send(stanza)
                return
            if kind in ("error", "headline"):
                return
            if kind == "groupchat":
                self.server.router.bounce(stanza, "service-unavailable")
                return
        self.deliver_to_account(event, kind)

    def deliver_to_account(self, event, kind):
        """Deliver a message addressed to a bare JID (or to a gone resource)."""
        stanza = event.stanza
        bare = event.to.userhost()
        if kind in ("error",):
            return
        if kind == "groupchat":
            self.server.router.bounce(stanza, "service-unavailable")
            return
        candidates = [s for s in self.server.sessions.available(bare) if s.priority >= 0]
        if candidates:
            if kind == "headline":
                chosen = candidates
            else:
                top = max(s.priority for s in candidates)
                chosen = [s for s in candidates if s.priority == top]
            for session in chosen:
                session.send(stanza)
            return
        if kind == "headline":
            return
        self.server.hooks.fire("message/offline", event) or self.server.router.bounce(
            stanza, "service-unavailable")

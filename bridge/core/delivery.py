"""Hosts: the routes of the domains served in this process, each with its own events.

A host turns a stanza addressed to its domain into the event its address
calls for, in the manner of Prosody: ``message/bare``, ``presence/full``,
``iq-get/host/urn:xmpp:ping:ping``, ``iq-set/bare/vcard-temp:vCard`` and so
on, fired on the host's own ``Hooks`` where the features loaded on that host
registered their handlers.

* ``LocalHost`` serves accounts.  What no feature takes falls to the rules of
  RFC 6121 section 8 implemented here: an IQ nobody handles is answered
  ``service-unavailable``, and a message for an account with no available
  resource is offered to ``message/offline``.
* ``ComponentHost`` serves a gateway's or a service's domain
  (``sip.localhost``, ``sms.localhost``, later ``conference.localhost``): the
  ordinary feature modules (disco, version, ping, XEP-0100) and the gateway's
  own handlers are loaded on it; what nobody takes is answered
  ``service-unavailable``.
"""

from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID

from bridge.core.hooks import Dispatch, Hooks
from bridge.core.stanza import error_reply, first_child, parse_jid, same_account

log = Logger()


class Event:
    """What a handler receives: the stanza, its parsed addresses and context."""

    __slots__ = ("stanza", "host", "to", "sender", "origin", "server", "dispatch")

    def __init__(self, server, stanza, host, to, sender, origin=None):
        self.server = server
        self.stanza = stanza
        self.host = host
        self.to = to
        self.sender = sender
        self.origin = origin
        self.dispatch = None

    def from_owner(self):
        """True when the addressed account itself sent the stanza; else it is answered forbidden.

        Rosters, block lists, private storage and vCard changes belong to
        their account alone.
        """
        if self.sender is not None and same_account(self.sender, self.to):
            return True
        self.reply(error_reply(self.stanza, "forbidden"))
        return False

    def reply(self, stanza):
        """Send ``stanza`` back, through the router like any other."""
        self.server.router.route(stanza)

    def hold(self):
        """Take the event for asynchronous work (see ``bridge.core.hooks.Held``)."""
        return self.dispatch.hold()


class DiscoEntries:
    """What service discovery shows of one host, each entry owned by the module that added it.

    ``where`` is "host" (the domain itself) or "account" (its accounts' bare JIDs).
    """

    def __init__(self):
        self.identities = []  # (where, category, type, name, owner)
        self.features = []  # (where, namespace, owner)
        self.items = []  # (jid, name, owner)
        self.forms = []  # (where, XEP-0128 data form element, owner)
        # (answer, owner): answer(domain, namespace, node, sender) gives the children of a query about
        # ``node`` of the domain (None: not a node of its own), or with node None what it adds to the domain's.
        self.node_sources = []

    def identities_of(self, where):
        return [(category, kind, name) for at, category, kind, name, _ in self.identities if at == where]

    def features_of(self, where):
        return {namespace for at, namespace, _ in self.features if at == where}

    def forms_of(self, where):
        return [form for at, form, _ in self.forms if at == where]

    def remove_owner(self, owner):
        self.identities = [entry for entry in self.identities if entry[-1] is not owner]
        self.features = [entry for entry in self.features if entry[-1] is not owner]
        self.items = [entry for entry in self.items if entry[-1] is not owner]
        self.forms = [entry for entry in self.forms if entry[-1] is not owner]
        self.node_sources = [entry for entry in self.node_sources if entry[-1] is not owner]


def unhandled_iq(event):
    """An IQ get or set nobody answered (RFC 6120 section 8.2.3)."""
    if event.stanza.getAttribute("type") in ("get", "set"):
        event.server.router.bounce(event.stanza, "service-unavailable")


class Host:
    """A domain served in this process: a route with its own hooks, features and disco entries."""

    def __init__(self, server, name):
        self.server = server
        self.name = name
        self.hooks = Hooks()
        self.features = {}  # name -> the context of each feature module loaded on this host
        self.disco = DiscoEntries()

    def event_for(self, stanza, to):
        """The Event of a stanza routed to this host (``to``: its parsed 'to'), and the name of the event it fires."""
        event = Event(self.server, stanza, self, to, parse_jid(stanza.getAttribute("from")))
        return event, event_name(stanza, target_of(to))


class ComponentHost(Host):
    """The domain of a gateway or service: its handlers and features answer; the rest is refused.

    ``translator``, when the gateway has one, turns what a user types into
    the address of a contact behind it (XEP-0100, ``features/gateway.py``).
    """

    def __init__(self, server, name, translator=None):
        super().__init__(server, name)
        self.translator = translator

    def deliver(self, stanza):
        event, name = self.event_for(stanza, parse_jid(stanza.getAttribute("to")))
        hooks = self.hooks
        Dispatch(event, ((hooks, "stanza/in"), (hooks, name)), self._unhandled).run()

    def _unhandled(self, event):
        if event.stanza.name == "presence":
            return
        if event.stanza.name == "message" and event.stanza.getAttribute("type") in ("error", "groupchat"):
            return
        self.server.router.bounce(event.stanza, "service-unavailable")


def target_of(jid):
    if jid.user is None:
        return "host"
    return "bare" if jid.resource is None else "full"


# The names of the message and presence events, by stanza and target: made once, asked for on every stanza.
_EVENT_NAMES = {(kind, target): f"{kind}/{target}" for kind in ("message", "presence")
                for target in ("host", "bare", "full")}


def event_name(stanza, target):
    """The event for ``stanza``; IQ get/set events carry their payload's name."""
    kind = stanza.name
    if kind != "iq":
        return _EVENT_NAMES.get((kind, target)) or f"{kind}/{target}"
    kind_type = stanza.getAttribute("type")
    if kind_type in ("get", "set"):
        payload = first_child(stanza)
        if payload is not None:
            return f"iq-{kind_type}/{target}/{payload.uri}:{payload.name}"
    return f"iq-{kind_type}/{target}"


class LocalHost(Host):
    """A hosted domain of accounts; its aliases are routed here and rewritten to its name."""

    def __init__(self, server, name, config):
        super().__init__(server, name)
        self.config = config

    def deliver(self, stanza):
        to = parse_jid(stanza.getAttribute("to"))
        if to.host != self.name:
            to = JID(tuple=(to.user, self.name, to.resource))
            stanza["to"] = to.full()
        event, name = self.event_for(stanza, to)
        hooks = self.hooks
        Dispatch(event, ((hooks, "stanza/in"), (hooks, name)), self._rules).run()

    def _rules(self, event):
        """RFC 6120 and 6121 delivery of what no feature took."""
        stanza = event.stanza
        target = target_of(event.to)
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
        unhandled_iq(event)

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
                self.deliver_to_sessions(event, (session,))
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
        if kind == "error":
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
            self.deliver_to_sessions(event, chosen)
            return
        if kind == "headline":
            return
        offline = Event(self.server, stanza, self, event.to, event.sender, event.origin)
        Dispatch(offline, ((self.hooks, "message/offline"),), self._undeliverable).run()

    def deliver_to_sessions(self, event, sessions):
        """Send a message to the resources RFC 6121 chose, after ``message/delivering`` saw it.

        Its handlers may amend the stanza and act on who gets it (carbons copy
        it to the account's other resources); none can stop the delivery.
        """
        self.hooks.fire("message/delivering", (event, sessions))
        stanza = event.stanza
        for session in sessions:
            session.send(stanza)

    def _undeliverable(self, event):
        self.server.router.bounce(event.stanza, "service-unavailable")

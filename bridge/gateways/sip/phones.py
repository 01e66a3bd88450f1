"""A local user's SIP phones, seen from XMPP as one session of that user (resource ``sip``).

While a user has live registrations (or a published presence), the
gateway binds the session ``alice@localhost/sip``, like a client's, so the
core treats the phones as one more resource of the user:

* what the phones say enters through the one way in
  (``GatewayContext.submit``): a MESSAGE, a PUBLISH (as the session's own
  presence, which the presence module broadcasts and answers probes with),
  a SUBSCRIBE (as presence of type ``subscribe``);
* what is routed to the session reaches the phones: a message as a MESSAGE
  to every bound contact (a chat room's too, ``rooms.py``: the rooms it is
  in are known from their presence, and left when the session ends), an error about something a phone said as a failure
  notice (``translate.failure_notice_for``), an IQ is answered
  ``service-unavailable``.

The session's presence carries priority -1, so messages to the bare JID go
to the user's XMPP clients when some are available; when none is, the
``message/offline`` handler here offers the message to the phones before
offline storage takes it (``deliver_offline``; in a cluster, to the node
that holds the phones' session, ``clustered.py``).  A phone that sends without
being registered speaks through an unbound session of the same address.
"""

import functools
import secrets

from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID

from bridge.core.sessions import Session
from bridge.core.stanza import error_reply
from bridge.gateways.sip import translate
from bridge.gateways.sip.addressing import AddressError
from bridge.gateways.sip.message import GrammarError, parse_uri

log = Logger()

RESOURCE = "sip"
PRIORITY = "-1"


class PhoneLine:
    """The stream of a phone session: what the core sends to the user's phones."""

    kind = "sip"  # what carries the session, as bridgectl and the metrics show it

    def __init__(self, phones, host, user):
        self.phones = phones
        self.host = host
        self.user = user
        self.refusals = None  # while a phone's request is being submitted: the errors it caused at once

    def send(self, stanza):
        if stanza.getAttribute("type") == "error":
            if self.refusals is not None:
                self.refusals.append(stanza)
            elif stanza.name == "message":
                self.phones.notify_failure(self.host, self.user, stanza)
            return
        rooms = self.phones.gateway.rooms
        if stanza.name == "presence":
            rooms.presence(self.host, self.user, stanza)
        elif stanza.name == "message":
            if stanza.getAttribute("type") == "groupchat":
                # A room's message: nobody to tell if no phone takes it (the room would drop the occupant).
                if not rooms.is_echo(self.host, self.user, stanza):
                    self.phones.send_message(self.host, self.user, stanza, lambda delivered: None)
            else:
                self.phones.send_message(self.host, self.user, stanza, self.phones.report_failure(stanza))
        elif stanza.name == "iq" and stanza.getAttribute("type") in ("get", "set"):
            self.phones.ctx.route(error_reply(stanza, "service-unavailable"))

    def stream_error(self, condition, text=None):
        """The core ends the session (a client took the resource, the account was removed)."""
        self.phones.unbind(self.host, self.user)


class Phones:
    """The phone sessions of the local users, and MESSAGEs out to their bindings."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.ctx = gateway.ctx
        self.registrar = gateway.registrar
        self.sessions = {}  # (host, user) -> the bound Session of the user's phones
        # (host, user) -> the line of an unbound phone session, while its request is being submitted
        self.speaking = {}
        self.ctx.hook_local("message/offline", self.deliver_offline)
        self.ctx.hook_local("message/full", self.refusal_to_unbound)

    def jid(self, host, user):
        return _phone_jid(host, user)

    def origin(self, host, user):
        """The session a phone of ``user@host`` speaks through: the bound one, or an unbound one."""
        session = self.sessions.get((host, user))
        if session is None:
            session = Session(self.jid(host, user), PhoneLine(self, host, user))
        return session

    def submit(self, host, user, stanza):
        """Say ``stanza`` for a phone of ``user@host``; the errors the core answered with at once."""
        session = self.origin(host, user)
        line = session.stream
        line.refusals = []
        unbound = (host, user) not in self.sessions
        if unbound:
            self.speaking[(host, user)] = line
        try:
            self.ctx.submit(session, stanza)
        finally:
            refusals, line.refusals = line.refusals, None
            if unbound:
                self.speaking.pop((host, user), None)
        return refusals

    def refusal_to_unbound(self, event):
        """``message/full``: an error the core routes at once to a phone speaking through an unbound
        session (a recipient's block list bounces it so) reaches that session's line, which the
        session table cannot find; without this the phone would get 202 for a refused message."""
        to = event.to
        if to.resource != RESOURCE or event.stanza.getAttribute("type") != "error":
            return False
        line = self.speaking.get((to.host, to.user))
        if line is None:
            return False
        line.send(event.stanza)
        return True

    # -- the session's lifetime --------------------------------------------------------

    def registered(self, host, user):
        """The bindings of ``user@host`` changed: bind the session, or unbind it when none is left."""
        if self.registrar.bindings.current(host, user):
            self.bind(host, user)
        elif (host, user) in self.sessions and not self.gateway.simple.publication_of(f"{user}@{host}"):
            self.unbind(host, user)

    def bind(self, host, user):
        session = self.sessions.get((host, user))
        if session is None:
            session = self.sessions[(host, user)] = Session(self.jid(host, user), PhoneLine(self, host, user))
            self.ctx.bind(session)
            log.info("SIP phones of {user}@{host} are the session {jid}", user=user, host=host, jid=session.full)
        return session

    def unbind(self, host, user):
        if (host, user) in self.sessions:
            self.gateway.rooms.leave_all(host, user)
        session = self.sessions.pop((host, user), None)
        if session is not None:
            self.ctx.unbind(session)

    def prune(self):
        """Unbind the sessions whose registrations all expired (the gateway calls this periodically)."""
        for host, user in list(self.sessions):
            self.registered(host, user)

    def stop(self):
        for host, user in list(self.sessions):
            self.unbind(host, user)

    # -- MESSAGEs to the phones --------------------------------------------------------------

    def reachable(self, host, user):
        """The bindings of ``user@host`` a request can be sent to."""
        return [binding for binding in self.registrar.bindings.current(host, user)
                if binding.source is not None]

    def send_message(self, host, user, stanza, outcome):
        """Send ``stanza`` as MESSAGE to every reachable binding; ``outcome(delivered)`` once all answered.

        False at once (and ``outcome`` is never called) when there is nothing to send to or
        nothing to send.
        """
        bindings = self.reachable(host, user)
        if not bindings:
            return False
        call_id, from_tag = self.gateway.messaging.new_call_id(), secrets.token_hex(6)
        requests = []
        for binding in bindings:
            try:
                request = translate.message_to_sip(stanza, self.gateway.addresses, call_id, from_tag,
                                                   max_body_bytes=self.gateway.sip.max_body_bytes)
                if request is None:
                    return False
                request.uri = parse_uri(binding.uri)
            except (translate.StanzaRefused, GrammarError, AddressError) as problem:
                log.info("SIP: message for {user}@{host} not sent to the phones: {problem}", user=user, host=host,
                         problem=problem)
                return False
            requests.append((request, binding))
        statuses = []

        def answered(response):
            statuses.append(response.status)
            if len(statuses) == len(requests):
                delivered = any(200 <= status < 300 for status in statuses)
                if delivered:
                    log.debug("SIP: message for {user}@{host} accepted by a phone", user=user, host=host)
                else:
                    log.info("SIP: no phone of {user}@{host} accepted the message ({statuses})", user=user,
                             host=host, statuses=statuses)
                outcome(delivered)

        for request, binding in requests:
            self.gateway.send_to_binding(request, binding, answered)
        return True

    def report_failure(self, stanza):
        """An ``outcome`` for ``send_message`` that answers the sender with an error when no phone took it."""

        def outcome(delivered):
            if not delivered:
                self.ctx.bounce(stanza, "recipient-unavailable", "no SIP phone accepted the message")

        return outcome

    def deliver_offline(self, event):
        """``message/offline``: a chat or normal message with a body goes to the user's phones first;
        if none accepts it, it is passed on (to offline storage)."""
        stanza = event.stanza
        if (stanza.getAttribute("type") or "normal") not in ("chat", "normal"):
            return False
        if not any(child.name == "body" for child in stanza.elements()):
            return False
        host, user = event.host.name, event.to.user
        if not self.reachable(host, user):
            return self.hand_to_holder(host, user, stanza)
        held = event.hold()

        def outcome(delivered):
            if delivered:
                held.finish()
            else:
                held.resume()  # to offline storage

        if not self.send_message(host, user, stanza, outcome):
            held.resume()
        return True

    def hand_to_holder(self, host, user, stanza):
        """In a cluster, the phones' session may be another node's (it holds their registrations): the
        message goes to it, whose phones take it or bounce it (``PhoneLine``)."""
        session = self.ctx.sessions.get(self.jid(host, user).full())
        if session is None or session.local:
            return False
        session.send(stanza)
        return True

    def notify_failure(self, host, user, error):
        """An error about what a phone of ``user@host`` said: a failure notice to the phones."""
        for binding in self.reachable(host, user):
            notice = translate.failure_notice(error, self.gateway.addresses, self.gateway.messaging.new_call_id(),
                                              secrets.token_hex(6))
            if notice is None:
                return
            notice.uri = parse_uri(binding.uri)
            self.gateway.send_to_binding(notice, binding, lambda response: None)


__all__ = ["Phones", "PhoneLine", "RESOURCE", "PRIORITY"]


@functools.lru_cache(maxsize=4096)
def _phone_jid(host, user):
    """The full JID of a phone of ``user@host``, prepared once for the many messages of a phone (the
    stringprep of a JID was 3 % of the CPU of a MESSAGE)."""
    return JID(tuple=(user, host, RESOURCE))

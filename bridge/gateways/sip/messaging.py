"""SIP MESSAGE <-> XMPP chat messages (docs/sip.md).

* SIP to XMPP (``handle``): a MESSAGE whose From is one of our users must
  carry a digest answer for that user, exactly as a REGISTER does (401
  challenge, 403 for a wrong password); a MESSAGE from a foreign domain is
  taken only when that domain is in ``[sip] allowed_domains`` and the
  request came from one of the domain's addresses (``domain_addresses``:
  its static route, else what its SRV targets and its own name resolve to),
  else 403.
  The request goes through ``translate.message_from_sip`` (whose
  ``Refusal`` gives the answer: 400, 404, 415, 416); the recipient must be a
  user of ours (the gateway is no relay between SIP domains: 404).  The
  XMPP message is written to storage (store ``sip-in`` under the gateway's
  domain) *before* anything else, then said: a local user's through the one
  way in, as that user's phone session (``phones.py``), so that their block
  list, the archives and every ``stanza/out`` handler apply, and the sender
  is the account that authenticated; a foreign user's is routed.  What the
  core refuses at once (a blocked contact) is answered with the status of
  the translate tables; anything else gets 202.  The document is deleted
  when the core is done with the message (``Settling``): delivered, stored
  offline, or refused.  Documents left by a crash are said again at start.
* XMPP to SIP, foreign users: the message events of the gateway's domain
  take a message from a local user to ``carol\\40pbx.example@sip.localhost``
  and send a MESSAGE to ``sip:carol@pbx.example`` through the static route of
  ``pbx.example``, else to what DNS gives (SRV ``_sip._udp``, then A;
  ``destination``).  An IP-literal host or an explicit port is taken only
  for a domain listed in ``allowed_domains`` or ``static_routes``, else the
  sender gets not-allowed: local users cannot aim the gateway at any
  address and port.  A final error
  response, a timeout (408) or a transport error (503) becomes the XMPP
  error of the translate tables (``error_for_response``) for the sender.  An
  XMPP error about a message a foreign SIP user sent becomes a failure
  notice to that user.

Loop guard: a message that no person wrote keeps its ``Auto-Submitted``
marker across (translate.py), and no failure notice is sent about one; a
foreign SIP user can only reach our users and an XMPP message only leaves
when its sender is a local user.
"""

import ipaddress
import itertools
import secrets

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns

from bridge.config import parse_host_port
from bridge.core import srv
from bridge.core.hooks import Settling
from bridge.core.stanza import parse_jid
from bridge.core.xmlstream import parse_element, serialize
from bridge.gateways.sip import translate
from bridge.gateways.sip.addressing import local_user
from bridge.gateways.sip.message import GrammarError
from bridge.gateways.sip.transaction import client_key

log = Logger()

STORE = "sip-in"  # (gateway domain, key): {"stanza": XML, "host", "user"}, a MESSAGE accepted, not yet delivered
DEFAULT_PORT = 5060


class NoRoute(Exception):
    """No address to send a request for a foreign SIP domain to."""


class NotAllowed(NoRoute):
    """A destination the gateway may not send to (an IP literal or an explicit port, not listed)."""

    condition = "not-allowed"


def _is_ip(host):
    return _address(host) is not None


def _address(host):
    """``host`` as an ``ipaddress`` object, or None when it is not an IP address."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class Messaging:
    """The MESSAGE method, both ways, for one ``SIPGateway``."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.ctx = gateway.ctx
        self.sip = gateway.sip
        self.clock = gateway.clock
        self.documents = self.ctx.store(STORE)
        self.domain = self.ctx.domain
        self.addresses = gateway.addresses
        self.allowed = frozenset(domain.lower() for domain in self.sip.allowed_domains)
        self.routes = {domain.lower(): parse_host_port(destination)
                       for domain, destination in self.sip.static_routes.items()}
        self.pending = {}  # client transaction key -> callable(response), for MESSAGEs we sent
        self.accepted = 0  # MESSAGEs stored and not yet delivered
        self._serial = itertools.count()
        self.ctx.hook("message/bare", self.message_out)
        self.ctx.hook("message/full", self.message_out)

    # -- SIP -> XMPP --------------------------------------------------------------

    def handle(self, transaction, request):
        """A new MESSAGE server transaction (from ``SIPGateway.request_received``)."""
        d = defer.maybeDeferred(self._inbound, transaction, request)
        d.addErrback(self.gateway._failed, transaction, request)
        return d

    def _answer(self, transaction, request, status, reason=None, headers=()):
        response = self.gateway._response(request, status, reason)
        for name, value in headers:
            response.headers.add(name, value)
        self.gateway._respond(transaction, response)

    @defer.inlineCallbacks
    def _inbound(self, transaction, request):
        sender, refusal = yield self.authorize(request, transaction.address)
        if refusal is not None:
            self.gateway._respond(transaction, refusal)
            return
        try:
            message = translate.message_from_sip(request, self.addresses)
        except translate.Refusal as refused:
            log.info("SIP MESSAGE refused {status}: {reason}", status=refused.status, reason=refused.reason)
            response = refused.response(request, to_tag=secrets.token_hex(6))
            self.gateway._respond(transaction, response)
            return
        if message is None:
            self._answer(transaction, request, 200)  # nothing to deliver (an empty body)
            return
        recipient = parse_jid(message.getAttribute("to"))
        if recipient is not None and recipient.host in self.addresses.room_domains:
            self._to_room(transaction, request, sender, message)
            return
        if recipient is None or self.ctx.local_host(recipient.host) is None:
            self._answer(transaction, request, 404, "Not Found (not a user of this server)")
            return
        if self.accepted >= self.sip.max_pending_messages:
            self._answer(transaction, request, 503, headers=[("Retry-After", "5")])
            return
        self.accepted += 1
        try:
            key = yield self._store(message, sender)
        except Exception:
            self.accepted -= 1
            raise
        refusals = self._deliver(key, message, sender)
        if refusals:
            log.info("SIP MESSAGE refused by XMPP: {condition}", condition=translate.condition_of(refusals[0]))
            response = translate.response_for_error(request, refusals[0], to_tag=secrets.token_hex(6))
            self.gateway._respond(transaction, response)
            return
        self._answer(transaction, request, translate.ACCEPTED)

    def _to_room(self, transaction, request, sender, message):
        """A MESSAGE to a chat room of this server: a local user's phone takes part (``rooms.py``); said at
        once, not stored (the room keeps it), and answered with what the room said."""
        if sender is None:
            self._answer(transaction, request, 403, "Forbidden (only users of this server take part in rooms)")
            return
        refusal = self.gateway.rooms.post(sender[0], sender[1], message)
        if refusal is None:
            self._answer(transaction, request, translate.ACCEPTED)
        elif isinstance(refusal, tuple):
            self._answer(transaction, request, *refusal)
        else:
            log.info("SIP MESSAGE refused by the room: {condition}", condition=translate.condition_of(refusal))
            self.gateway._respond(transaction, translate.response_for_error(request, refusal,
                                                                            to_tag=secrets.token_hex(6)))

    @defer.inlineCallbacks
    def authorize(self, request, source):
        """(sender, None) when the sender of ``request`` may send it, else (None, the response refusing it).

        The sender is (host, user) of the local account that proved who it
        is with digest, as for REGISTER (realm = host, the From user must be
        the digest user), or None for a foreign sender of an allowed domain.
        """
        try:
            from_uri = request.from_address.uri
        except GrammarError:
            return None, self.gateway._response(request, 400, "Bad Request (bad From)")
        if from_uri.scheme not in ("sip", "sips") or not from_uri.host:
            return None, self.gateway._response(request, 403, "Forbidden (From is not a SIP address)")
        sender_domain = from_uri.host.lower().strip("[]")
        host = self.ctx.local_host(sender_domain)
        if host is not None:
            user = local_user(from_uri)
            if user is None:
                return None, self.gateway._response(request, 403, "Forbidden (From names no user)")
            refusal = yield self.gateway.registrar.authenticate(request, host, user, host, source)
            return ((host, user) if refusal is None else None), refusal
        if sender_domain == self.domain:
            return None, self.gateway._response(request, 403, "Forbidden (From is the gateway's own domain)")
        if sender_domain not in self.allowed:
            log.info("SIP MESSAGE from {domain} refused: not an allowed domain", domain=sender_domain)
            return None, self.gateway._response(request, 403, "Forbidden (domain not allowed)")
        addresses = yield self.domain_addresses(sender_domain)
        if _address(source[0]) not in addresses:
            log.info("SIP MESSAGE from {domain} refused: sent from {source}, not one of its addresses {addresses}",
                     domain=sender_domain, source=source[0], addresses=sorted(map(str, addresses)))
            return None, self.gateway._response(request, 403, "Forbidden (not sent from an address of the domain)")
        return None, None

    @defer.inlineCallbacks
    def domain_addresses(self, domain):
        """A Deferred set of the addresses (``ipaddress`` objects) that requests of ``domain`` may come from.

        Its static route's host (resolved, every A record, when a name), else
        every address of its SRV targets (UDP, TCP and TLS: a domain may send
        from any of its servers) and of the domain's own name; an IP-literal
        domain is its own address.  An address is no proof over UDP, where a
        source can be forged: it keeps out whoever is not on the path, which
        is why ``allowed_domains`` should list peers over a network you trust.
        """
        route = self.routes.get(domain)
        if route is not None:
            names = [route[0].strip("[]")]
        elif _is_ip(domain):
            names = [domain]
        else:
            found = yield srv.services(self.gateway.resolver, [f"_sip._udp.{domain}", f"_sip._tcp.{domain}",
                                                               f"_sips._tcp.{domain}"])
            names = [target for _, target, _ in found or ()] + [domain]
        addresses = set()
        for name in dict.fromkeys(names):
            if _is_ip(name):
                addresses.add(_address(name))
                continue
            try:
                answers, _, _ = yield self.gateway.resolver.lookupAddress(name)
            except srv.LOOKUP_ERRORS as error:
                log.info("SIP: {name} not resolved: {error}", name=name, error=error)
                continue
            addresses.update(_address(answer.payload.dottedQuad()) for answer in answers if answer.type == dns.A)
        return addresses

    @defer.inlineCallbacks
    def _store(self, message, sender):
        key = f"{int(self.clock.seconds() * 1000):015d}-{next(self._serial):08d}-{secrets.token_hex(3)}"
        document = {"stanza": serialize(message)}
        if sender is not None:
            document["host"], document["user"] = sender
        yield self.documents.set(self.domain, key, document)
        return key

    def _deliver(self, key, message, sender):
        """Say or route a stored message; its document goes once the core is done with it.

        Returns the errors the core answered with at once (a local sender's only).
        """
        settling = message.settling = Settling(lambda: self._delivered(key))
        settling.enter()
        try:
            if sender is not None:
                return self.gateway.phones.submit(sender[0], sender[1], message)
            self.ctx.route(message)
            return []
        finally:
            settling.leave()

    def _delivered(self, key):
        self.accepted = max(0, self.accepted - 1)
        d = defer.maybeDeferred(self.documents.set, self.domain, key, None)
        d.addErrback(lambda failure: log.failure("SIP: stored message {key} not deleted", failure, key=key))

    @defer.inlineCallbacks
    def redeliver(self):
        """At start: say again the messages a previous run accepted but had not delivered."""
        keys = yield self.documents.users(self.domain)
        for key in keys:
            document = yield self.documents.get(self.domain, key)
            if not document:
                continue
            try:
                message = parse_element(document["stanza"])
            except Exception:
                log.failure("SIP: stored message {key} unreadable; dropped", key=key)
                yield self.documents.set(self.domain, key, None)
                continue
            sender = (document["host"], document["user"]) if "user" in document else None
            self.accepted += 1
            self._deliver(key, message, sender)
        if keys:
            log.info("SIP: {count} accepted message(s) of a previous run delivered", count=len(keys))

    # -- XMPP -> SIP: the message events of the gateway's domain --------------------------

    def message_out(self, event):
        """A message to a foreign SIP user: sent as MESSAGE; errors come back to the sender."""
        stanza = event.stanza
        if stanza.getAttribute("type") == "error":
            self._notice_out(stanza)
            return True
        sender = event.sender
        if sender is None or self.ctx.local_host(sender.host) is None:
            self.ctx.bounce(stanza, "forbidden", "only local users may write to SIP users")
            return True
        try:
            request = translate.message_to_sip(stanza, self.addresses, self.new_call_id(), secrets.token_hex(6),
                                               max_body_bytes=self.sip.max_body_bytes)
        except translate.StanzaRefused as refused:
            self.ctx.route(refused.reply(stanza))
            return True
        if request is not None:
            self.send_out(request, lambda response: self._outcome(stanza, response),
                          lambda condition, reason: self.ctx.bounce(stanza, condition, reason))
        return True

    def _notice_out(self, error):
        """An XMPP error about a message a foreign SIP user sent: a failure notice to that user."""
        notice = translate.failure_notice(error, self.addresses, self.new_call_id(), secrets.token_hex(6))
        if notice is not None:
            self.send_out(notice, lambda response: None, lambda condition, reason: None)

    def send_out(self, request, on_final, on_no_route):
        """Send ``request`` to its foreign domain; ``on_final(response)`` or ``on_no_route(condition, reason)``
        (the XMPP condition: not-allowed, or remote-server-not-found)."""
        transport = self.gateway.outbound_transport()
        if transport is None:
            on_no_route("remote-server-not-found", "no SIP UDP listener to send from")
            return
        d = self.destination(request.uri)
        d.addCallbacks(lambda destination: self.send(request, transport, destination, on_final),
                       self._no_route, errbackArgs=(request, on_no_route))
        d.addErrback(lambda failure: log.failure("SIP: {method} to {uri} not sent", failure, method=request.method,
                                                 uri=str(request.uri)))

    def _no_route(self, failure, request, on_no_route):
        if failure.check(NoRoute):
            log.info("SIP: no route to {uri}: {reason}", uri=str(request.uri), reason=failure.value)
            reason = str(failure.value)
        else:
            log.failure("SIP: looking up {uri} failed", failure, uri=str(request.uri))
            reason = f"no route to the SIP domain {request.uri.host}"
        on_no_route(getattr(failure.value, "condition", "remote-server-not-found"), reason)

    def _outcome(self, stanza, response):
        error = translate.error_for_response(stanza, response)
        if error is not None:
            log.info("SIP MESSAGE to {to} failed: {status}", to=stanza.getAttribute("to"), status=response.status)
            self.ctx.route(error)

    @defer.inlineCallbacks
    def destination(self, uri):
        """A Deferred (IP address, port) for a request to ``uri`` over UDP, or failing with NoRoute.

        The domain's static route wins; an IP-literal host is used as it is
        and a host with an explicit port is looked up (A) with that port,
        both only when the domain is listed in ``allowed_domains`` (else
        NotAllowed); else
        RFC 3263 simplified: the SRV records of ``_sip._udp``, ``_sip._tcp``
        and ``_sips._tcp`` (the gateway sends over UDP only for now, so only
        the UDP targets are used), and without any SRV record the domain
        itself on 5060.  Names are resolved to an address (A) in the order
        found; the first that resolves is used.
        """
        host = (uri.host or "").lower().strip("[]")
        if not host:
            raise NoRoute("the SIP address has no host")
        route = self.routes.get(host)
        if route is not None:
            address, port = route
            candidates = [(address.strip("[]"), port or DEFAULT_PORT)]
        elif _is_ip(host) or uri.port:
            if host not in self.allowed:
                raise NotAllowed(f"{uri.host}{':' if uri.port else ''}{uri.port or ''} is an address, not a SIP "
                                 "domain: only listed ones (sip allowed_domains or static_routes) are reached")
            candidates = [(host, uri.port or DEFAULT_PORT)]
        else:
            found = yield srv.services(self.gateway.resolver, [f"_sip._udp.{host}", f"_sip._tcp.{host}",
                                                               f"_sips._tcp.{host}"])
            if found is None:
                raise NoRoute(f"the SIP domain {host} offers no SIP service (SRV '.')")
            candidates = [(target, port) for index, target, port in found if index == 0]
            if found and not candidates:
                raise NoRoute(f"the SIP domain {host} is reached over TCP or TLS only, which the gateway "
                              "does not send over yet")
            candidates = candidates or [(host, DEFAULT_PORT)]
        for target, port in candidates:
            if _is_ip(target):
                return target, port
            try:
                address = yield self.gateway.resolver.getHostByName(target)
            except Exception as error:
                log.info("SIP: {target} not resolved: {error}", target=target, error=error)
                continue
            return address, port
        raise NoRoute(f"no route to the SIP domain {host}")

    def new_call_id(self):
        return f"{secrets.token_hex(10)}@{self.domain}"

    # -- client transactions --------------------------------------------------------------

    def send(self, request, transport, address, on_final):
        """Start a client transaction; ``on_final(response)`` gets its final response (408, 503 made up)."""
        request.headers.prepend("Via", self.gateway.via_for(transport))
        self.pending[client_key(request)] = on_final
        self.gateway.transactions.send_request(request, transport, address)

    def final(self, transaction, response):
        """From the gateway: the final response of a client transaction, or its failure."""
        on_final = self.pending.pop(transaction.key, None)
        if on_final is None:
            return False
        try:
            on_final(response)
        except Exception:
            log.failure("SIP: handling the answer to a {method} failed", method=transaction.request.method)
        return True


__all__ = ["Messaging", "NoRoute", "NotAllowed", "STORE"]

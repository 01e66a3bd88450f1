"""SIP MESSAGE <-> XMPP chat messages, and the gateway's XMPP domain (docs/sip.md).

``Messaging`` is the gateway's instant messaging, plugged into
``SIPGateway`` by ``setup()``:

* SIP to XMPP (``handle``): a MESSAGE whose From is one of our users must
  carry a digest answer for that user, exactly as a REGISTER does (401
  challenge, 403 for a wrong password); a MESSAGE from a foreign domain is
  taken only when that domain is in ``[sip] allowed_domains``, else 403.
  The request goes through ``translate.message_from_sip`` (whose
  ``Refusal`` gives the answer: 400, 404, 415, 416); the recipient must be a
  user of ours (the gateway is no relay between SIP domains: 404).  The
  XMPP message is written to storage (store ``sip-in`` under the gateway's
  domain) *before* 202 Accepted goes out, then routed with
  ``server.router.route`` (a user with no session takes the normal offline
  path) and deleted.  Documents left by a crash are routed again at start.
* XMPP to SIP, foreign users: the route of ``[sip] domain`` takes a message
  from a local user to ``carol\\40pbx.example@sip.localhost`` and sends a
  MESSAGE to ``sip:carol@pbx.example`` through the static route of
  ``pbx.example``, else to what DNS gives (SRV ``_sip._udp``, then A;
  ``destination``), or straight to an IP-literal host.  A final error
  response, a timeout (408) or a transport error (503) becomes the XMPP
  error of the translate tables (``error_for_response``) for the sender.
* XMPP to SIP, our own users: ``message/offline`` is hooked above offline
  storage.  A chat or normal message with a body, for a user who has no
  available XMPP resource but has SIP bindings, is sent as MESSAGE to each
  bound contact through the flow it registered by; the event is taken only
  while that is in flight, and unless some contact answers 2xx the message
  is given back to the ``message/offline`` handlers (offline storage), so a
  non-2xx answer or a timeout never loses it.
* The gateway's domain: IQs and presence become events named
  ``sip-gateway/`` + the core's event name (``sip-gateway/iq-get/host/
  http://jabber.org/protocol/disco#info:query``), fired on
  ``server.hooks``; disco#info (identity gateway/sip), disco#items and
  XEP-0100's ``jabber:iq:gateway`` are registered there; any other IQ get
  or set is answered service-unavailable; presence goes to ``watch.ForeignWatch``
  (XMPP users subscribing to foreign SIP presentities).

Loop guard: errors are never translated nor answered; a message that no
person wrote keeps its ``Auto-Submitted`` marker across (translate.py); a
foreign SIP user can only reach our users and an XMPP message only leaves
when its sender is a local user, so nothing entering through the gateway
can leave through it again towards SIP without a person in between.
"""

import ipaddress
import itertools
import secrets

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from bridge.config import parse_host_port
from bridge.core import srv
from bridge.core.delivery import Event, event_name, target_of
from bridge.core.stanza import error_reply, parse_jid, result_reply
from bridge.core.xmlstream import parse_element
from bridge.gateways.sip import translate
from bridge.gateways.sip.addressing import AddressError, AddressMap
from bridge.gateways.sip.message import GrammarError, Response, parse_uri, unquote
from bridge.gateways.sip.transaction import client_key

log = Logger()

STORE = "sip-in"  # (gateway domain, key): {"stanza": XML}, a MESSAGE accepted and not yet routed
EVENT_PREFIX = "sip-gateway/"
OWNER = "sip"
DEFAULT_PORT = 5060
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_GATEWAY = "jabber:iq:gateway"
OFFLINE_PRIORITY = 50  # above offline storage (0)
GATEWAY_NAME = "SIP gateway"
PROMPT = "SIP address"
DESCRIPTION = "Enter the SIP address of the contact (sip:user@domain, user@domain or a +number)."


def local_domains(config):
    """Every hosted domain and alias (lowercase)."""
    domains = set()
    for name, host in config.hosts.items():
        domains.add(name.lower())
        domains.update(alias.lower() for alias in host.aliases)
    return frozenset(domains)


class NoRoute(Exception):
    """No address to send a request for a foreign SIP domain to."""


def _is_ip(host):
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Messaging:
    """The MESSAGE method and the gateway's XMPP domain, for one ``SIPGateway``."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.server = gateway.server
        self.config = gateway.config
        self.sip = gateway.sip
        self.clock = gateway.clock
        self.storage = gateway.server.storage
        self.domain = self.sip.domain.lower()
        self.addresses = AddressMap(local_domains(self.config), self.domain)
        self.allowed = frozenset(domain.lower() for domain in self.sip.allowed_domains)
        self.routes = {domain.lower(): parse_host_port(destination)
                       for domain, destination in self.sip.static_routes.items()}
        self.pending = {}  # client transaction key -> callable(response), for MESSAGEs we sent
        self.accepted = 0  # MESSAGEs stored and not yet routed
        self._serial = itertools.count()
        self._routing = None  # the stored key of the message being routed, for the offline hook
        self._giving_back = set()  # id() of stanzas handed back to offline storage

    # -- lifetime -----------------------------------------------------------------

    def setup(self):
        """The route of the gateway's domain, its disco item, and the hooks (owner "sip")."""
        hooks = self.server.hooks
        self.server.router.addRoute(self.domain, self)
        self.server.disco_items[self.domain] = GATEWAY_NAME
        hooks.add("message/offline", self.offline, priority=OFFLINE_PRIORITY, owner=OWNER)
        hooks.add(f"{EVENT_PREFIX}iq-get/host/{NS_INFO}:query", self.disco_info, owner=OWNER)
        hooks.add(f"{EVENT_PREFIX}iq-get/host/{NS_ITEMS}:query", self.disco_items, owner=OWNER)
        hooks.add(f"{EVENT_PREFIX}iq-get/host/{NS_GATEWAY}:query", self.gateway_prompt, owner=OWNER)
        hooks.add(f"{EVENT_PREFIX}iq-set/host/{NS_GATEWAY}:query", self.gateway_translate, owner=OWNER)

    def start(self):
        """Route the messages a previous run accepted (202) but had not routed."""
        return self.redeliver()

    def stop(self):
        self.server.hooks.remove_owner(OWNER)
        self.server.router.removeRoute(self.domain, self)
        self.server.disco_items.pop(self.domain, None)

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
        refusal = yield self.authorize(request)
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
        if recipient is None or self.config.host_for(recipient.host) is None:
            self._answer(transaction, request, 404, "Not Found (not a user of this server)")
            return
        if self.accepted >= self.sip.max_pending_messages:
            self._answer(transaction, request, 503, headers=[("Retry-After", "5")])
            return
        self.accepted += 1
        try:
            key = yield self._store(message)
        except Exception:
            self.accepted -= 1
            raise
        self._answer(transaction, request, translate.ACCEPTED)
        self._route(key, message)

    @defer.inlineCallbacks
    def authorize(self, request):
        """None when the sender of ``request`` may send it, else the response refusing it.

        Our users prove who they are with digest, as for REGISTER (realm =
        host, the From user must be the digest user); foreign senders must
        belong to an allowed domain.
        """
        try:
            sender = request.from_address.uri
        except GrammarError:
            return self.gateway._response(request, 400, "Bad Request (bad From)")
        if sender.scheme not in ("sip", "sips") or not sender.host:
            return self.gateway._response(request, 403, "Forbidden (From is not a SIP address)")
        sender_domain = sender.host.lower().strip("[]")
        host = self.config.host_for(sender_domain)
        if host is not None:
            try:
                user = nodeprep.prepare(unquote(sender.user or ""))
            except UnicodeError:
                user = ""
            if not user:
                return self.gateway._response(request, 403, "Forbidden (From names no user)")
            outcome = yield self.gateway.registrar.authenticate(request, host, user, host)
            return outcome
        if sender_domain == self.domain:
            return self.gateway._response(request, 403, "Forbidden (From is the gateway's own domain)")
        if sender_domain not in self.allowed:
            log.info("SIP MESSAGE from {domain} refused: not an allowed domain", domain=sender_domain)
            return self.gateway._response(request, 403, "Forbidden (domain not allowed)")
        return None

    @defer.inlineCallbacks
    def _store(self, message):
        key = f"{int(self.clock.seconds() * 1000):015d}-{next(self._serial):08d}-{secrets.token_hex(3)}"
        yield self.storage.set(self.domain, key, STORE, {"stanza": message.toXml()})
        return key

    def _forget(self, key):
        d = defer.maybeDeferred(self.storage.set, self.domain, key, STORE, None)
        d.addErrback(lambda failure: log.failure("SIP: stored message {key} not deleted", failure, key=key))

    def _route(self, key, message):
        """Route a stored message; its document goes when it is routed (or held by the offline hook)."""
        self._routing = key
        try:
            self.server.router.route(message)
        finally:
            key, self._routing = self._routing, None
            self.accepted = max(0, self.accepted - 1)
        if key is not None:
            self._forget(key)

    @defer.inlineCallbacks
    def redeliver(self):
        keys = yield self.storage.users(self.domain, STORE)
        for key in keys:
            document = yield self.storage.get(self.domain, key, STORE)
            if not document:
                continue
            try:
                message = parse_element(document["stanza"])
            except Exception:
                log.failure("SIP: stored message {key} unreadable; dropped", key=key)
                self._forget(key)
                continue
            self.accepted += 1
            self._route(key, message)
        if keys:
            log.info("SIP: {count} accepted message(s) of a previous run routed", count=len(keys))

    # -- the route of the gateway's domain ----------------------------------------

    def deliver(self, stanza):
        """A stanza to the gateway's domain: hooks first, then messages out to SIP."""
        to = parse_jid(stanza.getAttribute("to"))
        sender = parse_jid(stanza.getAttribute("from"))
        event = Event(self.server, stanza, None, to, sender)
        if self.server.hooks.fire(EVENT_PREFIX + event_name(stanza, target_of(to)), event):
            return
        if stanza.name == "message":
            self.message_out(stanza)
        elif stanza.name == "iq" and stanza.getAttribute("type") in ("get", "set"):
            self.server.router.bounce(stanza, "service-unavailable")
        elif stanza.name == "presence" and getattr(self.gateway, "watch", None) is not None:
            self.gateway.watch.presence_out(stanza)  # foreign SIP presentities (watch.py)

    def message_out(self, stanza):
        """A message to a foreign SIP user: sent as MESSAGE; errors come back to the sender."""
        if stanza.getAttribute("type") == "error":
            log.debug("SIP: error to {to} not translated", to=stanza.getAttribute("to"))
            return
        sender = parse_jid(stanza.getAttribute("from"))
        if sender is None or self.config.host_for(sender.host) is None:
            self.server.router.bounce(stanza, "forbidden", "only local users may write to SIP users")
            return
        try:
            request = translate.message_to_sip(stanza, self.addresses, self.new_call_id(), secrets.token_hex(6),
                                               max_body_bytes=self.sip.max_body_bytes)
        except translate.StanzaRefused as refused:
            self.server.router.route(refused.reply(stanza))
            return
        if request is None:
            return
        transport = self.gateway.outbound_transport()
        if transport is None:
            self.server.router.bounce(stanza, "service-unavailable", "no SIP UDP listener to send from")
            return
        d = self.destination(request.uri)
        d.addCallbacks(
            lambda destination: self.send(request, transport, destination,
                                          lambda response: self._outcome(stanza, response)),
            lambda failure: self._no_route(stanza, request, failure))
        d.addErrback(lambda failure: log.failure("SIP: MESSAGE to {uri} not sent", failure, uri=str(request.uri)))

    def _no_route(self, stanza, request, failure):
        if failure.check(NoRoute):
            log.info("SIP: no route to {uri}: {reason}", uri=str(request.uri), reason=failure.value)
            reason = str(failure.value)
        else:
            log.failure("SIP: looking up {uri} failed", failure, uri=str(request.uri))
            reason = f"no route to the SIP domain {request.uri.host}"
        self.server.router.bounce(stanza, "remote-server-not-found", reason)

    def _outcome(self, stanza, response):
        error = translate.error_for_response(stanza, response)
        if error is not None:
            log.info("SIP MESSAGE to {to} failed: {status}", to=stanza.getAttribute("to"), status=response.status)
            self.server.router.route(error)

    @defer.inlineCallbacks
    def destination(self, uri):
        """A Deferred (IP address, port) for a request to ``uri`` over UDP, or failing with NoRoute.

        The domain's static route wins; an IP-literal host is used as it is;
        a host with an explicit port is looked up (A) with that port; else
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

    # -- sending MESSAGEs -----------------------------------------------------------

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
            log.failure("SIP: handling the answer to a MESSAGE failed")
        return True

    # -- XMPP -> SIP for our own users with bindings ------------------------------

    def offline(self, event):
        """``message/offline``: a message for a user with SIP bindings goes to their phones first."""
        stanza = event.stanza
        if id(stanza) in self._giving_back or event.to is None or not event.to.user or event.host is None:
            return False
        if (stanza.getAttribute("type") or "normal") not in ("chat", "normal"):
            return False
        if not any(child.name == "body" for child in stanza.elements()):
            return False
        bindings = [binding for binding in self.gateway.registrar.bindings.current(event.host.name, event.to.user)
                    if binding.transport is not None and binding.source is not None]
        if not bindings:
            return False
        call_id, from_tag = self.new_call_id(), secrets.token_hex(6)
        requests = []
        for binding in bindings:
            try:
                request = translate.message_to_sip(stanza, self.addresses, call_id, from_tag,
                                                   max_body_bytes=self.sip.max_body_bytes)
                request.uri = parse_uri(binding.uri)
            except (translate.StanzaRefused, GrammarError, AddressError) as problem:
                log.info("SIP: message for {to} not sent to its phones: {problem}", to=event.to.userhost(),
                         problem=problem)
                return False
            if request is None:
                return False
            requests.append((request, binding))
        stored_key, self._routing = self._routing, None
        done = defer.Deferred()
        outcomes = []

        def answered(response):
            outcomes.append(response.status)
            if len(outcomes) == len(requests):
                done.callback(any(200 <= status < 300 for status in outcomes))

        for request, binding in requests:
            try:
                self.send(request, binding.transport, binding.source, answered)
            except Exception as problem:
                log.info("SIP: MESSAGE to {uri} not sent: {problem}", uri=binding.uri, problem=problem)
                answered(Response(503))
        done.addCallback(self._after_phones, event, stored_key)
        return done

    def _after_phones(self, delivered, event, stored_key):
        if delivered:
            log.debug("SIP: message for {to} accepted by a phone", to=event.to.userhost())
        else:
            log.info("SIP: no phone of {to} accepted the message; offline storage takes it",
                     to=event.to.userhost())
            self.give_back(event)
        if stored_key is not None:
            self._forget(stored_key)

    def give_back(self, event):
        """Offer ``event`` to the other ``message/offline`` handlers, as the core would have."""
        stanza = event.stanza
        self._giving_back.add(id(stanza))
        try:
            taken = self.server.hooks.fire("message/offline", event)
        finally:
            self._giving_back.discard(id(stanza))
        if not taken:
            self.server.router.bounce(stanza, "service-unavailable")

    # -- disco and XEP-0100 on the gateway's domain -------------------------------

    def disco_info(self, event):
        stanza = event.stanza
        if stanza.query.getAttribute("node"):
            event.reply(error_reply(stanza, "item-not-found"))
            return True
        reply = result_reply(stanza)
        query = reply.addElement((NS_INFO, "query"))
        identity = query.addElement("identity")
        identity["category"], identity["type"], identity["name"] = "gateway", "sip", GATEWAY_NAME
        for feature in (NS_INFO, NS_ITEMS, NS_GATEWAY):
            query.addElement("feature")["var"] = feature
        event.reply(reply)
        return True

    def disco_items(self, event):
        reply = result_reply(event.stanza)
        reply.addElement((NS_ITEMS, "query"))
        event.reply(reply)
        return True

    def gateway_prompt(self, event):
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_GATEWAY, "query"))
        query.addElement("desc", content=DESCRIPTION)
        query.addElement("prompt", content=PROMPT)
        event.reply(reply)
        return True

    def gateway_translate(self, event):
        stanza = event.stanza
        prompt = next((str(child) for child in stanza.query.elements() if child.name == "prompt"), None)
        if prompt is None:
            event.reply(error_reply(stanza, "bad-request", "a <prompt/> is needed"))
            return True
        try:
            jid = self.addresses.jid_for_prompt(prompt)
        except AddressError as problem:
            event.reply(error_reply(stanza, "not-acceptable", str(problem)))
            return True
        reply = result_reply(stanza)
        query = reply.addElement((NS_GATEWAY, "query"))
        query.addElement("jid", content=jid.full())
        # XEP-0100 section 6.3: the legacy <prompt/> too, for older clients.
        query.addElement("prompt", content=jid.full())
        event.reply(reply)
        return True


__all__ = ["Messaging", "NoRoute", "STORE", "EVENT_PREFIX", "local_domains"]

"""The SIP gateway: its listeners and its transaction user, attached through a gateway context.

``attach(ctx, reactor, tls_context)`` makes the gateway of the ``[sip]``
section (docs/sip.md).  Its domain (``[sip] domain``) is a component host
served by the ordinary disco, version, ping and XEP-0100 modules; what SIP
users say on behalf of our users enters through the one way in
(``phones.py``).  Transports (``transport.py``) hand parsed messages to
``SIPGateway``, which passes them to the ``TransactionLayer``;
retransmissions are absorbed there, and each new server transaction reaches
``request_received`` once:

* REGISTER: the registrar (digest against the accounts, bindings in memory);
* OPTIONS: 200 with Allow, Accept and Supported;
* INVITE: 488 Not Acceptable Here, statelessly (voice is not part of this
  gateway; the transaction layer keeps no INVITE transaction, so nothing is
  retransmitted towards a possibly spoofed source), its ACK ignored; CANCEL
  and BYE: 481, there is neither an INVITE transaction nor a dialog;
* MESSAGE: ``messaging.Messaging`` (digest for our users, allowed foreign
  domains, stored before 202, said or routed to XMPP; to a chat room, the
  phone takes part through ``rooms.PhoneRooms``); it also sends MESSAGEs
  out;
* SUBSCRIBE, PUBLISH, NOTIFY: SIMPLE presence (``simple.py``); the NOTIFYs
  of our own subscriptions to foreign SIP users go on to ``watch.py``.

Before any of that a request whose Request-URI is neither sip nor sips gets
416, and one that requires an extension gets 420 with Unsupported.
"""

import secrets

from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from bridge import __version__
from bridge.config import parse_host_port, parse_udp_endpoint
from bridge.core import srv
from bridge.core.listening import listening_endpoint
from bridge.core.server import looping_call
from bridge.gateways.sip import transport as sip_transport
from bridge.gateways.sip.addressing import AddressMap
from bridge.gateways.sip.clustered import ClusteredRegistrations
from bridge.gateways.sip.message import Limits, Response, make_response, parse_uri
from bridge.gateways.sip.messaging import Messaging
from bridge.gateways.sip.phones import Phones
from bridge.gateways.sip.registrar import Registrar
from bridge.gateways.sip.rooms import PhoneRooms
from bridge.gateways.sip.simple import SimplePresence
from bridge.gateways.sip.transaction import ClientTransaction, TransactionLayer, Timers, new_branch
from bridge.gateways.sip.watch import ForeignWatch

log = Logger()

ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH")
ACCEPT = ("application/sdp",)
PRUNE_INTERVAL_SECONDS = 60.0
SIMPLE_METHODS = ("SUBSCRIBE", "NOTIFY", "PUBLISH")
GATEWAY_NAME = "SIP gateway"


class AddressPrompt:
    """What XEP-0100 asks of the SIP gateway (``features/gateway.py``)."""

    description = "Enter the SIP address of the contact (sip:user@domain, user@domain or a +number)."
    prompt = "SIP address"

    def __init__(self, addresses):
        self.addresses = addresses

    def jid_for(self, text):
        return self.addresses.jid_for_prompt(text).full()


def room_domains(ctx):
    """The chat services of this server (``[muc]``, one per host), whose rooms phones take part in."""
    muc = ctx.section("muc")
    if not muc.enabled:
        return frozenset()
    return frozenset(f"{muc.subdomain}.{host}".lower() for host in ctx.host_names())


def attach(ctx, reactor, tls_context):
    """The gateway of ``ctx.config`` (the [sip] section), or None when it is off."""
    if not ctx.config.enabled:
        return None
    return SIPGateway(ctx, reactor, tls_context)


class SIPGateway:
    """The transaction user of the SIP listeners: one per server."""

    def __init__(self, ctx, reactor=None, tls_context=None, timers=Timers(), secret=None, resolver=None):
        self.ctx = ctx
        self.sip = ctx.config
        self.clock = ctx.clock
        self.reactor = reactor
        self.tls_context = tls_context
        self.limits = Limits(max_header_bytes=self.sip.max_header_bytes, max_body_bytes=self.sip.max_body_bytes)
        # Per-peer limits of every SIP transport, and triage of the sources that have proven nothing.
        self.policy = sip_transport.SourcePolicy(self.clock, self.sip, ctx.triage)
        self.transactions = TransactionLayer(self.clock, self, timers, self.sip.max_server_transactions,
                                             self.sip.max_server_transaction_bytes, self.policy.allowance,
                                             ctx.counters.sip_transactions)
        self.registrar = Registrar(ctx, secret, changed=self._registered, vouch=self.policy.vouch)
        self.clustered = None  # ClusteredRegistrations, in a cluster ([cluster]) once started
        ctx.level("sip_registrations", "SIP contacts registered (bindings)", lambda: len(self.registrar.bindings))
        self.agent = f"bridge/{__version__}"
        self.udp_transports = []  # for requests the gateway sends out (add_transport)
        self._resolver = resolver
        self._pruning = None
        self._connector = sip_transport.StreamFactory(self, self.limits, "TCP", self.policy)
        domain = self.sip.domain.lower()
        self.addresses = AddressMap(ctx.local_domains(), domain, room_domains(ctx))
        ctx.serve(domain, ("gateway", "sip", GATEWAY_NAME), AddressPrompt(self.addresses))
        self.phones = Phones(self)
        self.rooms = PhoneRooms(self)
        self.messaging = Messaging(self)
        self.simple = SimplePresence(self)
        self.watch = ForeignWatch(self)

    @property
    def resolver(self):
        """The DNS resolver for foreign domains ([sip] dns_server, else the system's), made when first needed."""
        if self._resolver is None:
            self._resolver = srv.make_resolver(self.sip.dns_server)
        return self._resolver

    @resolver.setter
    def resolver(self, resolver):
        self._resolver = resolver

    # -- lifetime (the Gateway shape of tap.py) --------------------------------

    def listeners(self):
        """(kind, description, endpoint, factory) of every SIP listener: UDP, TCP and TLS, one policy."""
        sip, policy = self.sip, self.policy
        found = []
        for description in sip.udp_endpoints:
            port, interface = parse_udp_endpoint(description)
            endpoint = sip_transport.UDPServerEndpoint(self.reactor, port, interface)
            found.append(("sip-udp", description, endpoint,
                          lambda: self.add_transport(sip_transport.UDPTransport(self, self.limits, policy))))
        streams = sip_transport.StreamFactory(self, self.limits, "TCP", policy)
        for description in sip.tcp_endpoints:
            found.append(("sip-tcp", description, listening_endpoint(self.reactor, description), streams))
        if sip.tls_endpoints:
            secure = TLSMemoryBIOFactory(self.tls_context(sip), False,
                                         sip_transport.StreamFactory(self, self.limits, "TLS", policy))
            for description in sip.tls_endpoints:
                found.append(("sip-tls", description, listening_endpoint(self.reactor, description), secure))
        return found

    def start(self):
        if self.ctx.cluster is not None:
            self.clustered = ClusteredRegistrations(self, self.ctx.cluster)
        self._pruning = looping_call(self.clock, PRUNE_INTERVAL_SECONDS, self._prune)
        return self.messaging.redeliver()

    def _registered(self, host, user):
        """A REGISTER changed the bindings of ``user@host``."""
        self.phones.registered(host, user)
        if self.clustered is not None:
            self.clustered.changed(host, user)

    def _prune(self):
        self.registrar.bindings.prune()
        self.phones.prune()
        if self.clustered is not None:
            self.clustered.prune()

    def stop(self):
        if self._pruning is not None and self._pruning.running:
            self._pruning.stop()
        self.simple.stop()
        self.watch.stop()
        self.phones.stop()

    def add_transport(self, transport):
        """Remember a UDP transport (a listening socket) to send requests from; returns it."""
        self.udp_transports.append(transport)
        return transport

    def outbound_transport(self):
        """The UDP socket requests to foreign domains leave by (the first one listening), or None."""
        for transport in self.udp_transports:
            if getattr(transport, "transport", None) is not None:
                return transport
        return None

    def send_to_binding(self, request, binding, on_final):
        """Send ``request`` to a bound contact through the flow it registered by.

        A TCP flow that has closed since is replaced by a new connection to the
        contact's address, as RFC 3261 section 18.1.1 has a client do (and as
        Kamailio does); ``on_final`` then gets the response, or 503 when the
        contact cannot be reached.
        """
        if binding.transport is not None:
            try:
                self.messaging.send(request, binding.transport, binding.source, on_final)
            except Exception as problem:
                log.info("SIP: {method} to {uri} not sent: {problem}", method=request.method, uri=binding.uri,
                         problem=problem)
                on_final(Response(503))
            return
        if binding.protocol != "TCP" or self.reactor is None:
            on_final(Response(503, "Service Unavailable (the contact's connection is gone)"))
            return
        uri = parse_uri(binding.uri)
        address = (uri.host.strip("[]"), uri.port or 5060)
        endpoint = endpoints.HostnameEndpoint(self.reactor, address[0], address[1], timeout=10)

        def connected(transport):
            log.info("SIP: new TCP connection to {uri}", uri=binding.uri)
            binding.transport, binding.source = transport, address
            self.messaging.send(request, transport, address, on_final)

        def failed(failure):
            log.info("SIP: no TCP connection to {uri}: {reason}", uri=binding.uri, reason=failure.getErrorMessage())
            on_final(Response(503, "Service Unavailable (contact unreachable)"))

        endpoints.connectProtocol(endpoint, self._connector.buildProtocol(None)).addCallbacks(connected, failed)

    # -- addresses ----------------------------------------------------------------

    def sent_by(self, transport):
        """(host, port) to put in our Via and Contact for ``transport``.

        ``advertised_address`` when configured (NAT, multi-homed hosts), its
        port defaulting to the socket's; else the socket's own address, or
        the realm's host when the socket is bound to every interface.
        """
        host, port = transport.local_address()
        if self.sip.advertised_address:
            advertised, advertised_port = parse_host_port(self.sip.advertised_address)
            return advertised, advertised_port or port
        if host in ("0.0.0.0", "::", ""):
            host = self.registrar.default_host
        return host, port

    def via_for(self, transport):
        """A Via for a request we send through ``transport``, with a fresh branch and rport."""
        host, port = self.sent_by(transport)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"SIP/2.0/{transport.name} {host}:{port};branch={new_branch()};rport"

    # -- from the transports ----------------------------------------------------

    def message_received(self, message, transport, address):
        self.transactions.receive(message, transport, address)

    def connection_lost(self, transport):
        self.registrar.bindings.forget_transport(transport)

    # -- the transaction user ---------------------------------------------------

    def request_received(self, transaction, request):
        if transaction is None:
            return  # an ACK outside any transaction: we never send a 2xx to an INVITE
        method = request.method
        if method != "CANCEL":
            refusal = self._check(request)
            if refusal is not None:
                self._respond(transaction, refusal)
                return
        if method in SIMPLE_METHODS:
            return self.simple.handle(transaction, request)
        if method == "MESSAGE":
            return self.messaging.handle(transaction, request)
        handler = getattr(self, f"_on_{method.lower()}", None) if method in ALLOW else None
        if handler is None:
            response = self._response(request, 501)
            response.headers.add("Allow", ", ".join(ALLOW))
            self._respond(transaction, response)
            return
        handler(transaction, request)

    def _check(self, request):
        """The response refusing ``request`` before its method is looked at, or None."""
        if request.uri.scheme not in ("sip", "sips"):
            return self._response(request, 416)
        required = [tag for value in request.headers.get_all("Require") for tag in [value.strip()] if tag]
        if required:
            response = self._response(request, 420)
            response.headers.add("Unsupported", ", ".join(required))
            return response
        return None

    def _on_options(self, transaction, request):
        response = self._response(request, 200)
        response.headers.add("Allow", ", ".join(ALLOW))
        response.headers.add("Accept", ", ".join(ACCEPT))
        response.headers.add("Accept-Encoding", "identity")
        response.headers.add("Accept-Language", "en")
        self._respond(transaction, response)

    def _on_register(self, transaction, request):
        d = self.registrar.register(request, transaction.transport, transaction.address)
        d.addCallback(lambda response: self._respond(transaction, response))
        d.addErrback(self._failed, transaction, request)

    def _on_invite(self, transaction, request):
        response = self._response(request, 488)
        host, _ = self.sent_by(transaction.transport)
        response.headers.add("Warning", f'399 {host} "Voice and video calls are not supported"')
        self._respond(transaction, response)

    def _on_cancel(self, transaction, request):
        self._respond(transaction, self._response(request, 481))  # INVITEs are answered at once, statelessly

    def _on_bye(self, transaction, request):
        self._respond(transaction, self._response(request, 481))

    def _failed(self, failure, transaction, request):
        log.failure("SIP {method} could not be handled", failure, method=request.method)
        self._respond(transaction, self._response(request, 500))

    def _response(self, request, status, reason=None):
        response = make_response(request, status, reason, to_tag=secrets.token_hex(6))
        response.headers.add("Server", self.agent)
        return response

    def _respond(self, transaction, response):
        if response.headers.get("Server") is None:
            response.headers.add("Server", self.agent)
        try:
            transaction.respond(response)
        except ValueError:
            log.info("SIP response {status} not sent: the transaction is over", status=response.status)

    def response_received(self, transaction, response):
        if response.status >= 200:
            self._client_final(transaction, response)

    def _client_final(self, transaction, response):
        if self.messaging.final(transaction, response) or self.simple.final(transaction, response):
            return
        log.debug("SIP {status} to our {method} not awaited", status=response.status,
                  method=transaction.request.method)

    def stray_response(self, response, transport, address):
        log.debug("SIP stray response {status} from {address}", status=response.status, address=address)

    def transaction_timed_out(self, transaction):
        log.info("SIP {method} transaction with {address} timed out", method=transaction.request.method,
                 address=transaction.address)
        if isinstance(transaction, ClientTransaction):
            self._client_final(transaction, Response(408))

    def transport_error(self, transaction, error):
        log.info("SIP transport error towards {address}: {error}", address=transaction.address, error=error)
        if isinstance(transaction, ClientTransaction):
            self._client_final(transaction, Response(503, "Service Unavailable (transport error)"))


__all__ = ["SIPGateway", "attach", "ALLOW", "ACCEPT"]

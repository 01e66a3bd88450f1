"""Server-to-server streams (RFC 6120) and the route to remote domains.

Incoming streams must do STARTTLS (unless the policy says otherwise), then
authenticate the peer domain by SASL EXTERNAL with a certificate verified
against the trust store and checked with service-identity (XEP-0178), or by
server dialback (XEP-0220) when the policy allows it.  Our own links need
the peer's certificate to verify, except for ``dialback_fallback_domains``.
``RemoteDomains`` is the routing table's default route: it keeps one
outgoing link per (local domain, remote domain), queues stanzas while the
link is set up and bounces them to their senders when it cannot be.  When
the peer supports stream management (XEP-0198) each stanza is kept until
acknowledged, so the ones a dying connection swallowed are sent again on a
new one, or bounced.
"""

import base64
import hashlib
import hmac
import os
import ssl

from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.pyopenssl import verify_hostname
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from bridge.config import normalise_domain, parse_s2s_route
from bridge.core import srv
from bridge.core.stanza import parse_jid
from bridge.core.streams.base import NS_TLS, ConnectionsPerAddress, XMLStreamProtocol
from bridge.core.streams.c2s import NS_SASL
from bridge.core.streams.sm import NS_SM, AckError, Acknowledgements, HandledCount
from bridge.core.tls import server_context
from bridge.core.xmlstream import parse_element, serialize

log = Logger()

NS_SERVER = "jabber:server"
NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"
NS_STREAMS = "http://etherx.jabber.org/streams"
DIALBACK_NAMESPACES = f"xmlns:db='{NS_DIALBACK}'"
DEFAULT_PORT = 5269
# Storage queue of messages for remote domains that a shutdown interrupted.
PENDING_STORE = "s2s-pending"
STANZAS = ("message", "presence", "iq")


def dialback_key(secret, receiving, originating, stream_id):
    """The XEP-0185 key: HMAC-SHA256 keyed with the hex SHA-256 of the secret."""
    key = hashlib.sha256(secret).hexdigest().encode("ascii")
    return hmac.new(key, f"{receiving} {originating} {stream_id}".encode("utf-8"), hashlib.sha256).hexdigest()


def _accept_any(*args):
    """The handshake takes any peer certificate: ``PeerTLS.verify`` judges it afterwards."""
    return True


class PeerTLS:
    """TLS for links between servers: our certificate, and checks of the peer's.

    The handshake accepts any peer certificate so that a peer whose
    certificate does not verify can still be offered dialback; whether the
    certificate is valid for a domain is decided afterwards by ``verify``.
    """

    def __init__(self, cert_path, key_path, min_version, ciphers, ca_file, certificates=None):
        """``certificates``: a ``HostCertificates``: incoming links choose one by SNI, and a link from a
        local domain presents that domain's (for the peer's SASL EXTERNAL)."""
        self.options = server_context(cert_path, key_path, min_version, ciphers, alpn=(b"xmpp-server",),
                                      certificates=certificates)
        self.options.getContext().set_verify(SSL.VERIFY_PEER, _accept_any)
        self.certificates = certificates
        self.own = {}  # certificate name -> the context of links from the domains it is for
        for name, (chain, key) in (certificates.pairs.items() if certificates is not None else ()):
            self.own[name] = server_context(chain, key, min_version, ciphers, alpn=(b"xmpp-server",)).getContext()
            self.own[name].set_verify(SSL.VERIFY_PEER, _accept_any)
        self.store = crypto.X509Store()
        if ca_file:
            self.store.load_locations(ca_file)
        else:
            system = ssl.get_default_verify_paths()
            if system.cafile or system.capath:
                self.store.load_locations(system.cafile, system.capath)

    def client(self, hostname, origin):
        """The TLS of a link from the local domain ``origin`` to ``hostname``: with ``origin``'s certificate."""
        name = self.certificates.name_for(origin) if self.certificates is not None else None
        return _ClientConnectionCreator(self.own.get(name) or self.options.getContext(), hostname)

    def verify(self, transport, domain):
        """None when the peer's certificate chains to a trusted root and names ``domain``; else why not."""
        connection = transport.getHandle()
        if not isinstance(connection, SSL.Connection):
            return "no TLS"
        certificate = connection.get_peer_certificate()
        if certificate is None:
            return "no certificate"
        chain = connection.get_peer_cert_chain() or []
        try:
            crypto.X509StoreContext(self.store, certificate, [c for c in chain[1:]]).verify_certificate()
        except crypto.X509StoreContextError as error:
            return f"untrusted certificate: {error}"
        try:
            verify_hostname(connection, domain)
        except (CertificateError, VerificationError) as error:
            return f"certificate not valid for {domain}: {error}"
        return None


@implementer(IOpenSSLClientConnectionCreator)
class _ClientConnectionCreator:
    """Client side of a server link: our certificate offered, SNI set to the peer domain."""

    def __init__(self, context, hostname):
        self.context = context
        self.hostname = hostname

    def clientConnectionForTLS(self, tls_protocol):
        connection = SSL.Connection(self.context, None)
        connection.set_tlsext_host_name(self.hostname.encode("idna"))
        connection.set_connect_state()
        return connection


def _stream_id():
    return base64.urlsafe_b64encode(os.urandom(12)).decode("ascii")


def _condition(element):
    for child in element.elements():
        return child.name
    return None


class IncomingServerStream(XMLStreamProtocol):
    """A stream opened by a peer server: it proves who it is, then sends stanzas."""

    content_namespace = NS_SERVER

    def __init__(self, server, remote):
        super().__init__(server.clock, remote.config, server.dormancy)
        self.server = server
        self.remote = remote
        self.config = remote.config
        self.secure = False
        self.stream_id = None
        self.local = None
        self.claimed = None
        self.authenticated = set()
        self.handled = None  # XEP-0198 count once the peer enabled it
        self.checks_pending = 0  # dialback verifications under way for this stream
        self.address_key = None
        self._pre_auth_timer = None

    def connectionMade(self):
        super().connectionMade()
        self.remote.track(self)
        self.address_key = getattr(self.transport.getPeer(), "host", None)
        self._pre_auth_timer = self.clock.callLater(self.config.pre_auth_timeout_seconds, self._pre_auth_timeout)
        if not self.remote.connections.admit(self.address_key):
            self.stream_error("policy-violation", "too many connections from your address")

    def _pre_auth_timeout(self):
        self._pre_auth_timer = None
        self.stream_error("connection-timeout", "no authentication in time")

    def _authenticated(self, domain):
        self.authenticated.add(domain)
        if self._pre_auth_timer is not None and self._pre_auth_timer.active():
            self._pre_auth_timer.cancel()
        self._pre_auth_timer = None

    def header_received(self, header):
        self.stream_id = _stream_id()
        self.local = self.remote.local_domain((header.getAttribute("to") or "").lower())
        self.claimed = (header.getAttribute("from") or "").lower() or None
        self.write_header({"id": self.stream_id, "from": self.local or header.getAttribute("to"),
                           "to": self.claimed, "version": "1.0"}, DIALBACK_NAMESPACES)
        if self.local is None:
            self.stream_error("host-unknown", "no such host here")
            return
        if self.claimed is not None and not self.remote.permitted(self.claimed):
            self.stream_error("policy-violation", f"{self.claimed} may not federate with this server")
            return
        features = domish.Element((NS_STREAMS, "features"))
        if not self.secure:
            starttls = features.addElement((NS_TLS, "starttls"))
            if self.config.require_encryption:
                starttls.addElement("required")
        if self.secure or not self.config.require_encryption:
            if (self.secure and self.claimed and self.claimed not in self.authenticated
                    and self.config.certificate_authentication
                    and self.remote.tls.verify(self.transport, self.claimed) is None):
                features.addElement((NS_SASL, "mechanisms")).addElement("mechanism", content="EXTERNAL")
            if self.config.dialback:
                features.addElement((NS_DIALBACK_FEATURE, "dialback")).addElement("errors")
            features.addElement((NS_SM, "sm"))
        self.send(features)

    def element_received(self, element):
        if element.uri == NS_TLS and element.name == "starttls" and not self.secure:
            if self.switch_to_tls(self.remote.tls.options, domish.Element((NS_TLS, "proceed"))):
                self.secure = True
        elif element.uri == NS_SASL and element.name == "auth":
            self._external(element)
        elif element.uri == NS_DIALBACK and element.name == "result":
            self._dialback_result(element)
        elif element.uri == NS_DIALBACK and element.name == "verify":
            self._dialback_verify(element)
        elif element.uri is None and element.name in STANZAS:
            self.server.counters.stanzas_in["s2s"][element.name] += 1
            self._stanza(element)
        elif element.uri == NS_SM:
            self._stream_management(element)
        elif element.uri == NS_STREAMS and element.name == "error":
            log.info("{peer} ended its stream: {condition}", peer=self.peer, condition=_condition(element))
            self.close()
        else:
            self.stream_error("unsupported-stanza-type", f"<{element.name}/> in {element.uri}")

    def _stream_management(self, element):
        if element.name == "enable":
            if not self.authenticated or self.handled is not None:
                failed = domish.Element((NS_SM, "failed"))
                failed.addElement(("urn:ietf:params:xml:ns:xmpp-stanzas", "unexpected-request"))
                self.send(failed)
                return
            self.handled = HandledCount()
            self.send(domish.Element((NS_SM, "enabled")))
        elif element.name == "r" and self.handled is not None:
            ack = domish.Element((NS_SM, "a"))
            ack["h"] = str(self.handled.h)
            self.send(ack)

    def _external(self, element):
        text = str(element).strip()
        try:
            domain = base64.b64decode(text).decode("utf-8") if text and text != "=" else self.claimed
        except ValueError:
            domain = None
        failure = domish.Element((NS_SASL, "failure"))
        if element.getAttribute("mechanism") != "EXTERNAL" or not self.secure or not domain:
            failure.addElement("invalid-mechanism")
            self.send(failure)
            return
        reason = self.remote.tls.verify(self.transport, domain)
        if reason or not self.remote.permitted(domain):
            log.info("SASL EXTERNAL refused for {domain} from {peer}: {reason}", domain=domain, peer=self.peer,
                     reason=reason or "policy")
            failure.addElement("not-authorized")
            self.send(failure)
            return
        self._authenticated(domain.lower())
        self.send(domish.Element((NS_SASL, "success")))
        self.restart_stream()

    def _dialback_result(self, element):
        """A peer asks to be authenticated as a domain: each request costs a connection to that domain.

        So nothing is checked for a domain that is not a plain, permitted
        domain of someone else, and the checks under way are bounded per
        stream and in all.
        """
        originating = normalise_domain(element.getAttribute("from") or "")
        receiving = normalise_domain(element.getAttribute("to") or "")
        reply = domish.Element((NS_DIALBACK, "result"))
        reply["from"], reply["to"] = receiving, originating
        if not self.config.dialback or (self.config.require_encryption and not self.secure):
            self.stream_error("not-authorized", "dialback is not allowed here")
            return
        claimed = parse_jid(originating)
        if (self.remote.local_domain(receiving) is None or claimed is None or claimed.user or claimed.resource
                or self.remote.local_domain(originating) is not None or not self.remote.permitted(originating)):
            self._dialback_error(reply, "cancel", "item-not-found")
            return
        if self.checks_pending >= self.config.dialback_max_pending_per_stream:
            self._dialback_error(reply, "wait", "resource-constraint")
            return
        d = self.remote.verify_dialback(originating, receiving, self.stream_id, str(element).strip())
        if d is None:
            self._dialback_error(reply, "wait", "resource-constraint")
            return
        self.checks_pending += 1

        def verified(valid):
            self.checks_pending -= 1
            reply["type"] = "valid" if valid else "invalid"
            if valid:
                self._authenticated(originating)
                log.info("{domain} authenticated by dialback from {peer}", domain=originating, peer=self.peer)
            self.send(reply)

        d.addCallback(verified)

    def _dialback_error(self, reply, kind, condition):
        reply["type"] = "error"
        reply.addElement("error")["type"] = kind
        reply.error.addElement(("urn:ietf:params:xml:ns:xmpp-stanzas", condition))
        self.send(reply)

    def _dialback_verify(self, element):
        """We are the authoritative server: is this key one we gave out?"""
        receiving = element.getAttribute("from") or ""
        originating = element.getAttribute("to") or ""
        expected = dialback_key(self.remote.secret, receiving, originating, element.getAttribute("id") or "")
        reply = domish.Element((NS_DIALBACK, "verify"))
        reply["from"], reply["to"], reply["id"] = originating, receiving, element.getAttribute("id") or ""
        reply["type"] = "valid" if hmac.compare_digest(expected, str(element).strip()) else "invalid"
        self.send(reply)

    def _stanza(self, stanza):
        sender, to = parse_jid(stanza.getAttribute("from")), parse_jid(stanza.getAttribute("to"))
        if sender is None or to is None:
            self.stream_error("improper-addressing")
            return
        if sender.host not in self.authenticated:
            self.stream_error("invalid-from", f"{sender.host} is not authenticated on this stream")
            return
        if not self.remote.router.is_local(to.host):
            self.stream_error("host-unknown", f"{to.host} is not served here")
            return
        if self.handled is not None:
            self.handled.handled()
        self.remote.router.route(stanza)

    def end_received(self):
        self.close()

    def stream_error(self, condition, text=None):
        if not self.closed:
            if self.stream_id is None:
                self.stream_id = _stream_id()
                self.write_header({"id": self.stream_id, "version": "1.0"}, DIALBACK_NAMESPACES)
            self.send_stream_error(condition, text)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self._pre_auth_timer is not None and self._pre_auth_timer.active():
            self._pre_auth_timer.cancel()
        self.remote.connections.release(self.address_key)
        self.remote.untrack(self)


class OutgoingServerStream(XMLStreamProtocol):
    """A stream we open to a peer: TLS, then SASL EXTERNAL or dialback; or a dialback check only."""

    content_namespace = NS_SERVER

    def __init__(self, remote, origin, target, verify=None):
        super().__init__(remote.clock, remote.config, remote.server.dormancy)
        self.remote = remote
        self.config = remote.config
        self.origin = origin
        self.target = target
        self.verify = verify  # (receiving, stream id, key, Deferred) for a dialback check
        self.secure = False
        self.tried_external = False
        self.dialback_offered = False
        self._setup_timer = None
        self.sm_offered = False
        self.acks = None
        self._ack_request = None
        self.authenticated = False
        self.peer_stream_id = None
        self.ready = defer.Deferred()
        if verify is not None:
            # A dialback check never becomes a ready link; its answer goes to verify's Deferred.
            self.ready.addErrback(lambda failure: None)
        self.failure_reason = None

    def connectionMade(self):
        super().connectionMade()
        self.remote.track(self)
        self._setup_timer = self.clock.callLater(self.config.connect_timeout_seconds, self._setup_timeout)
        self._open()

    def _setup_timeout(self):
        """TLS and authentication must be done within connect_timeout_seconds too."""
        self.failure_reason = f"timeout: no authenticated link after {self.config.connect_timeout_seconds:g}s"
        log.info("link {origin} -> {target}: {reason}", origin=self.origin, target=self.target,
                 reason=self.failure_reason)
        self.transport.abortConnection()

    def _open(self):
        self.write_header({"from": self.origin, "to": self.target, "version": "1.0"}, DIALBACK_NAMESPACES)

    def header_received(self, header):
        self.peer_stream_id = header.getAttribute("id")

    def element_received(self, element):
        if element.uri == NS_STREAMS and element.name == "features":
            self._features(element)
        elif element.uri == NS_TLS and element.name == "proceed":
            if self.switch_to_tls(self.remote.tls.client(self.target, self.origin)):
                self.secure = True
                self._open()
        elif element.uri == NS_SASL and element.name == "success":
            if self.restart_stream():
                self._open()
                self.authenticated = True
        elif element.uri == NS_SASL and element.name == "failure":
            self._dialback_or_fail(f"SASL EXTERNAL refused ({_condition(element)})")
        elif element.uri == NS_DIALBACK and element.name == "result":
            if element.getAttribute("type") == "valid":
                self._ready()
            else:
                self._fail(f"dialback refused ({element.getAttribute('type')})")
        elif element.uri == NS_DIALBACK and element.name == "verify" and self.verify is not None:
            self.verify[3].callback(element.getAttribute("type") == "valid")
            self.verify = None
            self.close()
        elif element.uri == NS_STREAMS and element.name == "error":
            self._fail(f"stream error {_condition(element)}")
        elif element.uri == NS_SM and self.acks is not None:
            self._stream_management(element)

    def _stream_management(self, element):
        if element.name == "a":
            try:
                self.acks.received_ack(int(element.getAttribute("h", "")))
            except (ValueError, AckError) as error:
                self.stream_error("undefined-condition", f"bad acknowledgement: {error}")
        elif element.name == "failed":
            log.info("{target} refused stream management", target=self.target)
            self.acks = None
        elif element.name == "r":
            ack = domish.Element((NS_SM, "a"))
            ack["h"] = "0"
            self.send(ack)

    def send_stanza(self, stanza):
        """Send a routed stanza, kept until acknowledged when stream management is on."""
        counts = self.remote.server.counters.stanzas_out["s2s"]
        if stanza.name in counts:
            counts[stanza.name] += 1
        self.send(stanza)
        if self.acks is not None:
            self.acks.sent(stanza)
            if self._ack_request is None:
                self._ack_request = self.clock.callLater(0, self._request_ack)

    def _request_ack(self):
        self._ack_request = None
        self.send(domish.Element((NS_SM, "r")))

    def unacknowledged(self):
        """Stanzas sent but not confirmed (all of them without stream management: none are known)."""
        return self.acks.take_unacked() if self.acks is not None else []

    def _features(self, features):
        self.sm_offered = self.sm_offered or features.sm is not None
        if self.authenticated:
            self._ready()
            return
        self.dialback_offered = features.dialback is not None
        if not self.secure and features.starttls is not None:
            self.send(domish.Element((NS_TLS, "starttls")))
            return
        if not self.secure and self.config.require_encryption:
            self._fail("the peer offers no TLS")
            return
        certificate_problem = self.remote.tls.verify(self.transport, self.target) if self.secure else "no TLS"
        if certificate_problem and not self.config.dialback:
            self._fail(certificate_problem)
            return
        if self.verify is not None:
            self._send_verify()
            return
        if self.secure and certificate_problem:
            # Dialback would prove who we are, never who receives what we send.
            if normalise_domain(self.target) not in self.config.dialback_fallback_domains:
                self._fail(f"{certificate_problem} (no dialback instead: {self.target} is not in "
                           "dialback_fallback_domains)")
                return
            log.warn("link {origin} -> {target}: {problem}; dialback instead, as dialback_fallback_domains allows",
                     origin=self.origin, target=self.target, problem=certificate_problem)
        mechanisms = [str(m) for m in features.mechanisms.elements()] if features.mechanisms else []
        if ("EXTERNAL" in mechanisms and self.config.certificate_authentication and not self.tried_external
                and not certificate_problem):
            self.tried_external = True
            auth = domish.Element((NS_SASL, "auth"))
            auth["mechanism"] = "EXTERNAL"
            auth.addContent(base64.b64encode(self.origin.encode("utf-8")).decode("ascii"))
            self.send(auth)
            return
        self._dialback_or_fail(certificate_problem or "no usable authentication offered")

    def _dialback_or_fail(self, reason):
        if not (self.config.dialback and self.dialback_offered):
            self._fail(reason)
            return
        result = domish.Element((NS_DIALBACK, "result"))
        result["from"], result["to"] = self.origin, self.target
        result.addContent(dialback_key(self.remote.secret, self.target, self.origin, self.peer_stream_id or ""))
        self.send(result)

    def _send_verify(self):
        receiving, stream_id, key, _ = self.verify
        verify = domish.Element((NS_DIALBACK, "verify"))
        verify["from"], verify["to"], verify["id"] = receiving, self.target, stream_id
        verify.addContent(key)
        self.send(verify)

    def _ready(self):
        if self._setup_timer is not None and self._setup_timer.active():
            self._setup_timer.cancel()
        if not self.ready.called:
            log.info("link {origin} -> {target} ready ({how})", origin=self.origin, target=self.target,
                     how="SASL EXTERNAL" if self.authenticated else "dialback")
            if self.sm_offered:
                self.send(domish.Element((NS_SM, "enable")))
                self.acks = Acknowledgements()
            self.ready.callback(self)

    def _fail(self, reason):
        self.failure_reason = reason
        if self.ready.called:
            log.info("link {origin} -> {target} closed: {reason}", origin=self.origin, target=self.target,
                     reason=reason)
        else:
            log.info("link {origin} -> {target} failed: {reason}", origin=self.origin, target=self.target,
                     reason=reason)
        self.close()

    def end_received(self):
        self.close()

    def stream_error(self, condition, text=None):
        self.failure_reason = f"{condition} {text or ''}".strip()
        self.send_stream_error(condition, text)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        for timer in (self._ack_request, self._setup_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.remote.untrack(self)
        if self.verify is not None:
            self.verify[3].callback(False)
            self.verify = None
        if not self.ready.called:
            self.ready.errback(LinkFailed(self.failure_reason or "connection lost"))


class LinkFailed(Exception):
    pass


class OutgoingLink:
    """Stanzas from one local domain to one remote domain, over one outgoing stream."""

    MAX_RESENDS = 3

    def __init__(self, remote, origin, target):
        self.remote = remote
        self.origin = origin
        self.target = target
        self.queue = []
        self.stream = None
        self.connecting = False
        self.lost_in_a_row = 0

    def send(self, stanza):
        if self.stream is not None and not self.stream.closed:
            self.stream.send_stanza(stanza)
            return
        if len(self.queue) >= self.remote.config.max_queued_stanzas:
            self.remote.router.bounce(stanza, "resource-constraint", "too many stanzas waiting for the remote server")
            return
        self.queue.append(stanza)
        if not self.connecting:
            self.connecting = True
            self.remote.connect(self.origin, self.target).addCallbacks(self._ready, self._failed)

    def _ready(self, stream):
        self.connecting = False
        self.stream = stream
        queued, self.queue = self.queue, []
        for stanza in queued:
            stream.send_stanza(stanza)

    def _failed(self, failure):
        self.connecting = False
        timed_out = failure.check(defer.TimeoutError) is not None or "timeout" in str(failure.value).lower()
        condition = "remote-server-timeout" if timed_out else "remote-server-not-found"
        queued, self.queue = self.queue, []
        log.info("cannot reach {target}: {reason}; {count} stanzas bounced", target=self.target,
                 reason=failure.getErrorMessage(), count=len(queued))
        for stanza in queued:
            self.remote.router.bounce(stanza, condition, failure.getErrorMessage())

    def stream_lost(self, stream):
        """The stream went away: send again what it did not confirm, on a new one."""
        if self.stream is not stream:
            return
        self.stream = None
        pending = stream.unacknowledged()
        if not pending:
            self.lost_in_a_row = 0
            return
        if self.remote.stopping:
            return
        self.lost_in_a_row += 1
        if self.lost_in_a_row > self.MAX_RESENDS:
            for stanza in pending:
                self.remote.router.bounce(stanza, "remote-server-timeout", "the link kept failing")
            return
        log.info("{count} unacknowledged stanzas to {target} will be sent again", count=len(pending),
                 target=self.target)
        self.queue[:0] = pending
        if not self.connecting:
            self.connecting = True
            self.remote.connect(self.origin, self.target).addCallbacks(self._ready, self._failed)


class RemoteDomains:
    """The default route: stanzas for domains not served here go over s2s links."""

    def __init__(self, server, tls, reactor, resolver=None):
        self.server = server
        self.router = server.router
        self.config = server.config.s2s
        self.clock = server.clock
        self.reactor = reactor
        self.tls = tls
        self.secret = os.urandom(32)
        self.links = {}
        self.streams = set()
        self.stopping = False
        self.resolver = resolver if resolver is not None else srv.make_resolver(self.config.dns_server)
        self._idle_check = None
        self.connections = ConnectionsPerAddress(self.config.max_connections_per_address)  # incoming streams
        self.checks_pending = 0  # dialback verifications under way, on all streams

    @defer.inlineCallbacks
    def start(self):
        """Start the idle check, and send again what a shutdown left waiting."""
        self._idle_check = self.clock.callLater(self.config.idle_timeout_seconds / 4, self._close_idle)
        if self.server.cluster is not None:
            # A peer verifies our dialback key on a connection that may reach any node of the cluster.
            self.server.cluster.shared_secret("dialback", self._use_secret)
        storage = self.server.storage
        for domain in self._origins():
            kept = yield storage.items(domain, "", PENDING_STORE)
            if kept:
                log.info("{count} stanzas from {domain} kept over a restart are sent again", count=len(kept),
                         domain=domain)
                yield storage.remove(domain, "", PENDING_STORE, [item_id for item_id, _ in kept])
            for _, text in kept:
                self.router.route(parse_element(text))

    def _use_secret(self, secret):
        self.secret = secret

    @defer.inlineCallbacks
    def stop(self):
        """Keep the messages not yet delivered (queued or unacknowledged) for the next start."""
        self.stopping = True
        if self._idle_check is not None and self._idle_check.active():
            self._idle_check.cancel()
        for link in self.links.values():
            pending = (link.stream.unacknowledged() if link.stream is not None else []) + link.queue
            link.queue = []
            for stanza in pending:
                if stanza.name == "message":
                    yield self.server.storage.append(link.origin, "", PENDING_STORE, serialize(stanza))
        for stream in list(self.streams):
            stream.close()

    def _origins(self):
        return list(self.server.config.hosts) + list(self.server.config.components)

    def local_domain(self, domain):
        """The name under which ``domain`` is served here (a host, through its aliases, or a component)."""
        host = self.server.config.host_for(domain)
        if host is not None:
            return host
        return domain if domain and self.router.is_local(domain) else None

    def permitted(self, domain):
        """Whether the policy lets ``domain`` federate (the lists are normalised at load)."""
        domain = normalise_domain(domain)
        if domain in self.config.denied_domains or domain in self.server.blocked_domains:
            return False
        return not self.config.allowed_domains or domain in self.config.allowed_domains

    def deliver(self, stanza, handed_over=False):
        """Send ``stanza`` over the link to its domain.  In a cluster the link is one node's
        (``Cluster.link_owner``): another node hands the stanza to it; ``handed_over``: it was."""
        sender, to = parse_jid(stanza.getAttribute("from")), parse_jid(stanza.getAttribute("to"))
        if sender is None or not self.router.is_local(sender.host):
            self.router.bounce(stanza, "not-allowed")
            return
        if not self.permitted(to.host):
            self.router.bounce(stanza, "remote-server-not-found", "federation with this domain is not allowed")
            return
        cluster = self.server.cluster
        owner = cluster.link_owner(to.host) if cluster is not None and not handed_over else None
        if owner is not None:
            cluster.hand_over(owner, stanza, lambda again: self.deliver(again, handed_over=True))
            return
        key = (sender.host, to.host)
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = OutgoingLink(self, sender.host, to.host)
        link.send(stanza)

    def track(self, stream):
        self.streams.add(stream)

    def untrack(self, stream):
        self.streams.discard(stream)
        if isinstance(stream, OutgoingServerStream):
            link = self.links.get((stream.origin, stream.target))
            if link is not None:
                link.stream_lost(stream)

    def _close_idle(self):
        limit = self.clock.seconds() - self.config.idle_timeout_seconds
        for stream in list(self.streams):
            if stream.last_activity < limit:
                log.info("closing idle s2s stream with {peer}", peer=stream.peer)
                stream.close()
        self._idle_check = self.clock.callLater(self.config.idle_timeout_seconds / 4, self._close_idle)

    @defer.inlineCallbacks
    def addresses(self, domain):
        """[(host, port, direct TLS)] to try for ``domain``.

        A static route ("host:port", or "tls:host:port" for direct TLS) wins;
        else the SRV records of ``_xmpps-server`` (XEP-0368) and
        ``_xmpp-server`` merged by priority and weight; else the domain on 5269.
        """
        static = self.config.static_routes.get(domain)
        if static:
            return [parse_s2s_route(static)]
        found = yield srv.services(self.resolver, [f"_xmpps-server._tcp.{domain}", f"_xmpp-server._tcp.{domain}"])
        if found is None:
            return []
        return [(target, port, index == 0) for index, target, port in found] or [(domain, DEFAULT_PORT, False)]

    @defer.inlineCallbacks
    def connect(self, origin, target, verify=None):
        """A ready outgoing stream (or, for ``verify``, a finished dialback check)."""
        addresses = yield self.addresses(target)
        if not addresses:
            raise LinkFailed(f"{target} does not accept federation (SRV '.')")
        reason = None
        for host, port, direct_tls in addresses:
            stream = OutgoingServerStream(self, origin, target, verify)
            endpoint = endpoints.HostnameEndpoint(self.reactor, host, port,
                                                  timeout=self.config.connect_timeout_seconds)
            if direct_tls:
                endpoint = endpoints.wrapClientTLS(self.tls.client(target, origin), endpoint)
                stream.secure = True
            try:
                yield endpoints.connectProtocol(endpoint, stream)
            except Exception as error:
                reason = f"{host}:{port}: {error}"
                continue
            if verify is not None:
                return stream
            try:
                ready = yield stream.ready
            except LinkFailed as error:
                reason = f"{host}:{port}: {error}"
                continue
            return ready
        raise LinkFailed(reason or "no address")

    def verify_dialback(self, originating, receiving, stream_id, key):
        """Ask the authoritative server of ``originating`` whether ``key`` is its own.

        A Deferred firing with the answer, or None when ``dialback_max_pending``
        checks are already under way.  A domain whose name does not resolve
        gets no connection: the lookup fails first.
        """
        if self.checks_pending >= self.config.dialback_max_pending:
            log.info("dialback check for {domain} refused: {count} under way", domain=originating,
                     count=self.checks_pending)
            return None
        self.checks_pending += 1
        answer = defer.Deferred()

        def finished(valid):
            self.checks_pending -= 1
            return valid

        answer.addCallback(finished)
        attempt = self.connect(receiving, originating, verify=(receiving, stream_id, key, answer))
        attempt.addErrback(lambda failure: answer.called or answer.callback(False))
        return answer


class IncomingServerFactory(Factory):
    noisy = False

    def __init__(self, server, remote, direct_tls=False):
        self.server = server
        self.remote = remote
        self.direct_tls = direct_tls

    def buildProtocol(self, address):
        protocol = IncomingServerStream(self.server, self.remote)
        protocol.secure = self.direct_tls
        protocol.factory = self
        return protocol

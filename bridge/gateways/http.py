"""The HTTP listener of browser clients: BOSH, WebSocket and the web chat page.

One ``HTTPChannel`` per connection speaks HTTP/1.1 with keep-alive.  Requests
are parsed by h11 (sans-IO), one ``h11.Connection`` per request so that a
request is read and dispatched as soon as it is complete, even while the
answer to the one before it is still awaited: a BOSH request held for a
minute must not stop the next request, which is what releases it.  Answers
are written in request order from a per-connection queue of ``Responder``s.

Dispatch is by path: a WebSocket upgrade on ``websocket_path`` becomes an RFC
7395 stream (``bridge.gateways.websocket``), ``bosh_path`` goes to the BOSH
handler, a prefix a gateway serves (``GatewayContext.serve_http``: the uploads
of ``bridge.gateways.upload``) to that gateway, everything else to the web
client (``bridge.gateways.webclient``), but for the XEP-0156 host-meta documents
(``bridge.gateways.hostmeta``).  A gateway's ``open_body`` may take a
request's body as it arrives (a sink with ``limit``, ``write``, ``abort``),
in place of ``max_request_bytes`` in memory; it is then ``request.body``.
The BOSH handler sees only ``HTTPRequest`` and ``Responder``::

    bosh.handle(request, responder)
    responder.respond(status, [(name, value)], body)   # exactly once
    responder.on_lost(callback)                        # the connection went first
    responder.lost

Limits: ``max_request_bytes`` (413), ``header_timeout_seconds`` (a request
that has not fully arrived in time, or an idle keep-alive connection, is
closed), connections per address (the c2s limit).  Origins are checked and
CORS headers added here, for the BOSH and WebSocket paths.  Time comes from
``server.clock`` only.

Who is behind a request is decided here once (``TrustedProxies``): the
client's address, whether its connection is TLS and whether it is local.
Behind a proxy listed in ``trusted_proxies`` these come from its
X-Forwarded-For and X-Forwarded-Proto, or from its RFC 7239 Forwarded
(``trusted_proxy_header``: the one header the proxies write, since a proxy
passes the other on as the client sent it); its connections are not counted
per address, but each WebSocket it forwards counts against its client's
address.
"""

import email.utils
import functools
import http
import ipaddress
import re
from collections import deque
from typing import NamedTuple

from zope.interface import implementer

import h11
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from bridge.core.streams.base import ConnectionsPerAddress, Reading
from bridge.core.triage import Gate
from bridge.gateways import websocket
from bridge.gateways.hostmeta import PATHS as HOST_META_PATHS, HostMeta
from bridge.gateways.webclient import WebClient

log = Logger()

# Requests read ahead of their answers on one connection; past it, reading pauses.
MAX_PIPELINED = 16
FILE_CHUNK_BYTES = 65536  # what a FileBody reads at a time, as fast as the connection takes it
# The request line and headers; h11 answers 431 past it.
MAX_HEAD_BYTES = 65536
CORS_METHODS = "GET, POST, OPTIONS"
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\0]")
# Headers whose value http.py decides, whatever a handler passes.
_FRAMING_HEADERS = ("content-length", "transfer-encoding", "connection", "date")
# Headers by which a proxy says that it forwards someone else's request.
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-proto", "x-real-ip")
# What a trusted proxy's X-Forwarded-Proto says of a client that used TLS (wss: Traefik's WebSockets).
_TLS_SCHEMES = ("https", "wss")


@functools.lru_cache(maxsize=1)
def http_date(second):
    """The Date header's value for a whole second: formatted once per second, not per response."""
    return email.utils.formatdate(second, usegmt=True)


@functools.lru_cache(maxsize=4096)
def peer_address(host):
    """``parse_address`` of a connection's peer (short text from the socket), kept for the requests
    that follow from the same address."""
    return parse_address(host)


def parse_address(text):
    """The IP address in ``text`` (bare, or "[IPv6]" or "IPv4" with a port), or None.

    An IPv4 address mapped into IPv6 (as a dual-stack listener sees it) is given as IPv4.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


class ClientAddress(NamedTuple):
    """Who is behind a request, as far as the listener can tell.

    ``address``: the client's IP address, the key of per-address limits;
    ``secure``: TLS all the way from the client to us or to our trusted proxy;
    ``local``: a loopback (or UNIX socket) peer that forwards for nobody.
    """

    address: str
    secure: bool
    local: bool


def forwarded_hops(value):
    """The (for, proto) of each element of an RFC 7239 Forwarded header, in order ("" when absent).

    Quoted values are unquoted; a comma inside quotes splits the element, which
    only ever garbles what the client itself wrote, left of the proxy's own
    element (read from the right, the first hop that is no trusted proxy ends
    the reading).
    """
    hops = []
    for element in value.split(","):
        pairs = {}
        for pair in element.split(";"):
            name, separator, text = pair.partition("=")
            if separator:
                pairs[name.strip().lower()] = text.strip().strip('"')
        hops.append((pairs.get("for", ""), pairs.get("proto", "")))
    return hops


class TrustedProxies:
    """The reverse proxies (``[http] trusted_proxies``) whose forwarding headers are believed: X-Forwarded-For
    and X-Forwarded-Proto, or Forwarded (``header``); those headers from anyone else are ignored."""

    def __init__(self, networks, header="x-forwarded-for"):
        self.networks = [ipaddress.ip_network(network, strict=False) for network in networks]
        self.header = header

    def trusts(self, host):
        """Whether the peer ``host`` (an address's text; None for a UNIX socket) is a trusted proxy."""
        return self._trusted(parse_address(host) if host else None)

    def _trusted(self, address):
        return address is not None and any(address in network for network in self.networks)

    def client(self, host, headers, tls):
        """The ``ClientAddress`` of a request (lowercase ``headers``) from the peer ``host``,
        on a TLS connection or not."""
        peer = peer_address(host) if host else None
        if not self._trusted(peer):
            # A local peer that says it forwards (a proxy nobody listed) may speak for anyone.
            local = (host is None or (peer is not None and peer.is_loopback)) and not any(
                name in headers for name in _FORWARDING_HEADERS)
            return ClientAddress(str(peer) if peer else host, tls, local)
        if self.header == "forwarded":
            hops = forwarded_hops(headers.get("forwarded", ""))
            addresses = [address for address, _ in hops]
            scheme = hops[-1][1].strip().lower()
        else:
            addresses = headers.get("x-forwarded-for", "").split(",")
            # The proxy's word on how the client reached it (in a list, the last entry is its own).
            scheme = headers.get("x-forwarded-proto", "").rpartition(",")[2].strip().lower()
        # Each proxy appends the address it was reached from: read from the right, past trusted proxies only.
        client = peer
        for hop in reversed(addresses):
            hop = parse_address(hop)
            if hop is None:
                break
            client = hop
            if not self._trusted(hop):
                break
        return ClientAddress(str(client), scheme in _TLS_SCHEMES, False)


class HTTPRequest:
    """One complete request.

    ``headers`` maps lowercase names to values (repeated headers joined with
    ", "); ``path`` is without the query, ``query`` without the "?".
    ``peer`` ("host:port", the port "?" behind a proxy), ``address``,
    ``secure`` and ``local`` describe the client (``ClientAddress``);
    ``transport`` is the connection's, ``tls_transport`` the TLS connection
    with the client itself (for channel binding; None on plain HTTP and
    behind a proxy).
    """

    def __init__(self, method, path, query, headers, body, peer, client, transport, tls_transport):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.peer = peer
        self.address = client.address
        self.secure = client.secure
        self.local = client.local
        self.transport = transport
        self.tls_transport = tls_transport

    def __repr__(self):
        return f"<HTTPRequest {self.method} {self.path} from {self.peer}>"


class Responder:
    """The answer to one request: ``respond`` exactly once, in any order, at any time.

    Answers are written in request order; CORS, Date, Content-Length and
    Connection headers are added by the channel.
    """

    def __init__(self, channel, request, close_after=False):
        self._channel = channel
        self.request = request
        self.close_after = close_after
        self.cors = []
        self.lost = False
        self.responded = False
        self.data = None  # the serialised answer (its head only, for a FileBody), once respond() was called
        self.file_body = None  # a FileBody sent after ``data``
        self._lost_callbacks = []

    def respond(self, status, headers, body):
        if self.responded:
            raise RuntimeError(f"{self.request!r} was already answered")
        self.responded = True
        self._lost_callbacks = []  # never called now; they often refer back to this responder
        if not self.lost:
            self._channel.answer(self, status, list(headers), body)
        elif isinstance(body, FileBody):
            body.close()

    def vouch(self):
        """The request belongs to an authenticated session: triage lets this connection's reads in
        from now on (see ``bridge/core/triage.py``)."""
        self._channel.vouched = True

    def on_lost(self, callback):
        """``callback()`` when the connection closes before ``respond`` was called."""
        if self.lost:
            if not self.responded:
                callback()
            return
        self._lost_callbacks.append(callback)

    def connection_lost(self):
        if self.lost:
            return
        self.lost = True
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        if self.responded:
            return
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("on_lost callback of {request!r} failed", request=self.request)


def format_response(status, headers, body, date, close=False, head=False):
    """The bytes of an HTTP/1.1 response; ValueError for a header that cannot be sent."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {int(status)} {reason}", f"Date: {date}"]
    for name, value in headers:
        value = str(value)
        if not _TOKEN.match(name) or _BAD_VALUE.search(value):
            raise ValueError(f"invalid header {name!r}: {value!r}")
        if name.lower() not in _FRAMING_HEADERS:
            lines.append(f"{name}: {value}")
    bodiless = status < 200 or status in (204, 304)
    if not bodiless:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if not (bodiless or head or isinstance(body, FileBody)):
        data += body
    return data


class FileBody:
    """A response body sent from an open file, ``length`` bytes from ``offset``, as fast as the client
    reads: never held in memory whole (an upload's GET).  The channel closes the file when done."""

    def __init__(self, file, offset, length):
        self.file = file
        self.offset = offset
        self.length = length

    def __len__(self):
        return self.length

    def close(self):
        self.file.close()


@implementer(IPushProducer)
class _FileStream:
    """Writes a FileBody to the channel's transport, paused while the transport's buffer is full."""

    def __init__(self, channel, body):
        self.channel = channel
        self.body = body
        self.left = body.length
        self.paused = False
        body.file.seek(body.offset)

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.left > 0 and self.channel.stream is self:
            chunk = self.body.file.read(min(FILE_CHUNK_BYTES, self.left))
            if not chunk:  # the file shrank under us: the promised length cannot be kept
                self.stopProducing()
                self.channel.transport.loseConnection()
                return
            self.left -= len(chunk)
            self.channel.transport.write(chunk)
        if self.left == 0 and self.channel.stream is self:
            self.channel.stream_done()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.paused = True
        self.body.close()
        if self.channel.stream is self:
            self.channel.stream = None


def text_body(text):
    """Headers and body of a short plain-text answer."""
    return [("Content-Type", "text/plain; charset=utf-8")], (text + "\n").encode("utf-8")


def _normal_origin(text):
    """An origin compared case-insensitively, without a default port or a final slash."""
    text = text.strip().lower().rstrip("/")
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if text.startswith(scheme) and text.endswith(port):
            text = text[: -len(port)]
    return text


def same_origin(request):
    """Whether the request's Origin is this listener as the browser reached it (its Host)."""
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    if not origin or not host:
        return False
    scheme = "https" if request.secure else "http"
    return _normal_origin(origin) == _normal_origin(f"{scheme}://{host}")


class CORSPolicy:
    """Origins allowed on the BOSH and WebSocket paths, and the CORS headers they get.

    An empty ``allowed_origins`` means same-origin only (no Access-Control
    headers at all); "*" allows any origin.
    """

    def __init__(self, config):
        self.any = "*" in config.allowed_origins
        self.origins = {_normal_origin(origin) for origin in config.allowed_origins if origin != "*"}
        self.credentials = config.cors_allow_credentials
        self.allowed_headers = ", ".join(config.cors_allowed_headers)

    def listed(self, origin):
        return self.any or _normal_origin(origin) in self.origins

    def allows(self, request):
        """No Origin (not a browser), the same origin, or a listed one."""
        origin = request.headers.get("origin")
        return origin is None or same_origin(request) or self.listed(origin)

    def headers(self, origin):
        """The CORS headers of an answer to ``origin`` (none unless it is listed)."""
        if origin is None or not self.listed(origin):
            return []
        if self.any and not self.credentials and _normal_origin(origin) not in self.origins:
            headers = [("Access-Control-Allow-Origin", "*")]
        else:
            # A credentialed answer may not use "*": the origin is echoed.
            headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        if self.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def preflight(self, request):
        """(status, headers) answering an OPTIONS request."""
        origin = request.headers.get("origin")
        if origin is None or "access-control-request-method" not in request.headers:
            return 204, [("Allow", CORS_METHODS)]
        if not self.listed(origin):
            if same_origin(request):
                return 204, [("Allow", CORS_METHODS)]
            return 403, []
        return 204, self.headers(origin) + [
            ("Access-Control-Allow-Methods", CORS_METHODS),
            ("Access-Control-Allow-Headers", self.allowed_headers),
            ("Access-Control-Max-Age", "86400"),
        ]


def _matches(path, configured):
    return path.rstrip("/") == configured.rstrip("/")


class HTTPChannel(Protocol):
    """One HTTP connection: requests in, answers out in request order, or a WebSocket."""

    def __init__(self, factory, address_key):
        self.factory = factory
        self.config = factory.config
        self.clock = factory.server.clock
        self.address_key = address_key
        self.peer = "?"
        self.proxied = False  # the peer is a trusted proxy
        self.counted = False  # counted against connections per address, as counted_address
        self.counted_address = None
        self.pending = deque()
        self.parser = None
        self.websocket = None
        self.finished = False  # no further request is read
        self.gone = False
        self._head = None
        self._body = []
        self._body_size = 0
        self._sink = None  # where the body of a request for a streaming route goes (an upload)
        self.stream = None  # the _FileStream of the answer being written, while it is
        self._upgrade = None  # (request, bytes after it), waiting for the answers before it
        self._reading = False
        self._reading_paused = False
        self._pipelining = None  # the hold of reading that MAX_PIPELINED pauses
        self._gate = None  # triage of what is read, until a request of an authenticated session came
        self.vouched = False
        self._timer = None
        self._timer_phase = None

    # -- connection ----------------------------------------------------------

    def connectionMade(self):
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        self.proxied = self.factory.proxies.trusts(self.address_key)
        if not self.proxied and not self._count(self.address_key):
            if self.factory.server.log_budget.allows("HTTP refusals"):
                log.info("refusing HTTP connection from {peer}: too many connections from its address",
                         peer=self.peer)
            self.finished = True
            headers, body = text_body("too many connections from your address")
            self.transport.write(format_response(503, headers, body, self._date(), close=True))
            self.transport.loseConnection()
            return
        self.parser = self._new_parser()
        reading = Reading(self.transport)
        self._pipelining = reading.hold()
        self._gate = Gate(self.factory.server.triage, reading.hold(), self._receive)
        self._update_timer()

    def _count(self, address):
        """Count this connection against ``address``'s limit (until it ends); False past the limit."""
        self.counted, self.counted_address = True, address
        return self.factory.connections.admit(address)

    def connectionLost(self, reason=None):
        if self.gone:
            return
        self.gone = True
        self._cancel_timer()
        if self.counted:
            self.factory.connections.release(self.counted_address)
        pending, self.pending = list(self.pending), deque()
        for responder in pending:
            responder.connection_lost()
        if self.websocket is not None:
            self.websocket.connection_lost()
        if self.stream is not None:
            self.stream.stopProducing()
        self._gate = None  # it calls back into this channel: freed with it, not by the cycle collector
        self._abort_sink()

    def dataReceived(self, data):
        if self.websocket is not None:
            self.websocket.data_received(data)
            return
        if self._upgrade is not None:
            # Frames sent before the 101 (which waits for earlier answers) are kept for the WebSocket.
            request, leftover = self._upgrade
            if len(leftover) + len(data) > self.config.max_request_bytes:
                self._upgrade = None
                self._lose_pending()
                self.transport.loseConnection()
            else:
                self._upgrade = (request, leftover + data)
            return
        if self.finished or self.gone:
            return
        if self.vouched:
            self._receive(data)
        else:
            self._gate.receive(data)

    def _receive(self, data):
        if self.websocket is not None or self._upgrade is not None:
            self.dataReceived(data)  # read with an upgrade that triage let in before it
            return
        if self.finished or self.gone:
            return
        self.parser.receive_data(data)
        self._read_requests()
        self._update_timer()

    def _new_parser(self):
        return h11.Connection(h11.SERVER, max_incomplete_event_size=min(MAX_HEAD_BYTES, self.config.max_request_bytes))

    def _date(self):
        return http_date(int(self.clock.seconds()))

    # -- reading requests ----------------------------------------------------

    def _read_requests(self):
        if self._reading:
            return
        self._reading = True
        try:
            while not (self.finished or self.gone):
                if len(self.pending) >= MAX_PIPELINED:
                    self._pause_reading()
                    return
                try:
                    event = self.parser.next_event()
                except h11.RemoteProtocolError as error:
                    self._refuse(error.error_status_hint, f"bad request: {error}")
                    return
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Request):
                    self._request_head(event)
                elif isinstance(event, h11.Data):
                    self._request_data(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._request_end()
                elif isinstance(event, h11.ConnectionClosed):
                    self.finished = True
        finally:
            self._reading = False

    def _request_head(self, head):
        self._head = head
        self._body, self._body_size = [], 0
        limit = self.config.max_request_bytes
        sink = self._open_sink(head)
        if isinstance(sink, tuple):
            self._refuse(*sink)
            return
        if sink is not None:
            self._sink, limit = sink, sink.limit
            self.vouched = True  # a signed URL: the uploader was authenticated when it got it
        length = dict(head.headers).get(b"content-length")
        if length is not None and int(length) > limit:
            self._refuse(413, f"a request body may have at most {limit} bytes")
            return
        if self.parser.they_are_waiting_for_100_continue and not self.pending:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _request_data(self, data):
        self._body_size += len(data)
        limit = self._sink.limit if self._sink is not None else self.config.max_request_bytes
        if self._body_size > limit:
            self._refuse(413, f"a request body may have at most {limit} bytes")
            return
        if self._sink is not None:
            self._sink.write(data)
        else:
            self._body.append(data)

    def _open_sink(self, head):
        """The sink of a streaming route for this request's body, (status, text) refusing it, or None."""
        target = head.target.decode("latin-1")
        path, _, query = target.partition("?")
        route = self._route(path)
        if route is None:
            return None
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
        return route.open_body(head.method.decode("ascii"), path, query, headers)

    def _route(self, path):
        """The gateway's handler that serves ``path`` (``GatewayContext.serve_http``), or None."""
        for prefix, handler in self.factory.server.http_routes.items():
            if path.startswith(prefix):
                return handler
        return None

    def _abort_sink(self):
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.abort()

    def _request_end(self):
        head, self._head = self._head, None
        body, self._body = b"".join(self._body), []
        if self._sink is not None:
            body, self._sink = self._sink, None
        request = self._make_request(head, body)
        # DONE: keep-alive; MIGHT_SWITCH_PROTOCOL: an Upgrade header; MUST_CLOSE: the client closes.
        keep_alive = self.parser.their_state in (h11.DONE, h11.MIGHT_SWITCH_PROTOCOL)
        leftover, _ = self.parser.trailing_data
        if self._is_websocket_upgrade(request):
            self.finished = True
            self._upgrade = (request, leftover)
            if not self.pending:
                self._start_websocket()
            return
        if keep_alive:
            self.parser = self._new_parser()
            if leftover:  # (b"" would tell h11 the connection ended)
                self.parser.receive_data(leftover)
        else:
            self.finished = True
        self._dispatch(request, close_after=not keep_alive)

    def _make_request(self, head, body):
        target = head.target.decode("latin-1")
        if not target.startswith("/") and "://" in target:
            # The absolute form (RFC 9112 section 3.2.2): only the path matters here.
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        headers = {}
        for name, value in head.headers:
            name, value = name.decode("latin-1"), value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        client = self.factory.proxies.client(self.address_key, headers, self.factory.tls)
        peer = f"{client.address}:?" if self.proxied else self.peer
        tls_transport = self.transport if self.factory.tls and not self.proxied else None
        return HTTPRequest(head.method.decode("ascii"), path, query, headers, body, peer, client, self.transport,
                           tls_transport)

    def _is_websocket_upgrade(self, request):
        upgrade = request.headers.get("upgrade", "").lower()
        return (request.method == "GET" and _matches(request.path, self.config.websocket_path)
                and "websocket" in [token.strip() for token in upgrade.split(",")])

    def _refuse(self, status, text):
        """Answer ``status`` after the answers already due, then close; read nothing more."""
        self.finished = True
        self._head = None
        self._abort_sink()
        responder = Responder(self, None, close_after=True)
        self.pending.append(responder)
        headers, body = text_body(text)
        responder.respond(status, headers, body)

    # -- dispatch --------------------------------------------------------------

    def _dispatch(self, request, close_after):
        responder = Responder(self, request, close_after)
        self.pending.append(responder)
        cors = self.factory.cors
        gateway = _matches(request.path, self.config.websocket_path) or _matches(request.path,
                                                                                 self.config.bosh_path)
        if gateway:
            if request.method == "OPTIONS":
                status, headers = cors.preflight(request)
                responder.respond(status, headers, b"")
                return
            if not cors.allows(request):
                responder.respond(403, *text_body(f"origin {request.headers.get('origin')} is not allowed"))
                return
            responder.cors = cors.headers(request.headers.get("origin"))
            if _matches(request.path, self.config.websocket_path):
                headers, body = text_body("XMPP over WebSocket (RFC 7395) is served here: "
                                          "upgrade with the subprotocol 'xmpp'")
                responder.respond(426, headers + [("Upgrade", "websocket")], body)
                return
            handler = self.factory.bosh
        elif self._route(request.path) is not None:
            handler = self._route(request.path)
        elif request.path in HOST_META_PATHS and request.method != "OPTIONS":
            handler = self.factory.host_meta
        elif request.method == "OPTIONS":
            responder.respond(204, [("Allow", "GET, HEAD, OPTIONS")], b"")
            return
        else:
            handler = self.factory.webclient
        try:
            handler.handle(request, responder)
        except Exception:
            log.failure("handling {request!r} failed", request=request)
            if not responder.responded:
                responder.respond(500, *text_body("internal server error"))

    # -- writing answers -------------------------------------------------------

    def answer(self, responder, status, headers, body):
        """Called by ``Responder.respond``: serialise, then write what is due."""
        request = responder.request
        close = responder.close_after or any(name.lower() == "connection" and "close" in str(value).lower()
                                             for name, value in headers)
        head = request is not None and request.method == "HEAD"
        try:
            data = format_response(status, headers + responder.cors, body, self._date(), close, head)
        except ValueError:
            log.failure("cannot send the answer to {request!r}", request=request)
            error_headers, error_body = text_body("internal server error")
            data = format_response(500, error_headers, error_body, self._date(), close, head)
            status = 500
        if isinstance(body, FileBody):
            if head or status not in (200, 206) or self.gone:
                body.close()
            else:
                responder.file_body = body
        responder.close_after = close
        responder.data = data
        self._flush()

    def _flush(self):
        if self.stream is not None:
            return  # the answer at the front is still being written from its file
        while self.pending and self.pending[0].data is not None:
            if self.gone:
                return
            responder = self.pending[0]
            self.transport.write(responder.data)
            if responder.file_body is not None:
                self.stream = _FileStream(self, responder.file_body)
                self.transport.registerProducer(self.stream, True)
                self.stream.resumeProducing()  # stream_done() goes on from here once the file is written
                return
            self.pending.popleft()
            if responder.close_after:
                self._close_after_answer()
                return
        if self.gone:
            return
        if self._upgrade is not None and not self.pending:
            self._start_websocket()
            return
        if self._reading_paused and len(self.pending) < MAX_PIPELINED:
            self._reading_paused = False
            self._pipelining.resumeProducing()
            self._read_requests()
        self._update_timer()

    def stream_done(self):
        """The file of the answer at the front is written: on to the next answer."""
        self.stream.body.close()
        self.stream = None
        self.transport.unregisterProducer()
        responder = self.pending.popleft()
        if responder.close_after:
            self._close_after_answer()
            return
        self._flush()

    def _close_after_answer(self):
        self.finished = True
        self._upgrade = None
        self._lose_pending()
        self.transport.loseConnection()
        self._update_timer()

    def _lose_pending(self):
        pending, self.pending = list(self.pending), deque()
        for responder in pending:
            responder.connection_lost()

    def _pause_reading(self):
        if not self._reading_paused:
            self._reading_paused = True
            self._pipelining.pauseProducing()

    # -- WebSocket -------------------------------------------------------------

    def _start_websocket(self):
        request, leftover = self._upgrade
        self._upgrade = None
        cors = self.factory.cors
        if not cors.allows(request):
            outcome = websocket.Refusal(403, *text_body(f"origin {request.headers.get('origin')} is not allowed"))
        elif self.proxied and not self._count(request.address):
            # A WebSocket is one client's connection, even when a proxy carries it.
            if self.factory.server.log_budget.allows("HTTP refusals"):
                log.info("refusing a WebSocket for {peer}: too many connections from its address", peer=request.peer)
            outcome = websocket.Refusal(503, *text_body("too many connections from your address"))
        else:
            outcome = websocket.handshake(request)
        if isinstance(outcome, websocket.Refusal):
            responder = Responder(self, request, close_after=True)
            self.pending.append(responder)
            responder.respond(outcome.status, outcome.headers, outcome.body)
            return
        connection, accept = outcome
        self._cancel_timer()
        if self._reading_paused:
            self._reading_paused = False
            self._pipelining.resumeProducing()
        self.transport.write(accept)
        self.websocket = websocket.WebSocketStream(self.factory.server, self.config, self.transport, connection,
                                                   request)
        self.websocket.start(leftover)

    # -- the request timer -----------------------------------------------------

    def _update_timer(self):
        """Idle (no request, nothing pending) or reading a request: either must end in time."""
        phase = None
        if not (self.gone or self.finished or self.websocket is not None):
            if self._sink is not None:
                # A long upload: the time limit is on the pause between its chunks.
                self._cancel_timer()
                phase = "request"
            elif self._head is not None or self.parser.trailing_data[0]:
                phase = "request"
            elif not self.pending:
                phase = "idle"
        if phase == self._timer_phase:
            return
        self._cancel_timer()
        self._timer_phase = phase
        if phase is not None:
            self._timer = self.clock.callLater(self.config.header_timeout_seconds, self._timed_out)

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_phase = None

    def _timed_out(self):
        phase = self._timer_phase
        self._timer = None
        self._timer_phase = None
        if phase == "request":
            log.info("closing HTTP connection of {peer}: its request did not arrive in time", peer=self.peer)
        self.finished = True
        self.transport.loseConnection()


class HTTPFactory(Factory):
    """HTTP connections of one listener (plain or, with ``tls``, under TLSMemoryBIOFactory).

    ``bosh``: any object with ``handle(request, responder)``.
    """

    noisy = False

    def __init__(self, server, config, bosh, tls):
        self.server = server
        self.config = config
        self.bosh = bosh
        self.tls = tls
        self.connections = ConnectionsPerAddress(server.config.c2s.max_connections_per_address)
        self.proxies = TrustedProxies(config.trusted_proxies, config.trusted_proxy_header)
        self.cors = CORSPolicy(config)
        self.webclient = WebClient(server, config)
        self.host_meta = HostMeta(server, config)

    def reconfigure(self, config):
        """A reload: new connections take the new ``[http]`` limits and CORS policy, and the
        ``[c2s]`` limit of connections per address."""
        self.config = config.http
        self.connections.limit = config.c2s.max_connections_per_address
        self.cors = CORSPolicy(config.http)

    def buildProtocol(self, address):
        return HTTPChannel(self, getattr(address, "host", None))

"""BOSH (XEP-0124) carrying XMPP (XEP-0206): client streams over HTTP requests.

Each BOSH session drives one ``ClientStream`` through a ``BoshFraming``, so
SASL, binding, routing and the c2s limits are the code TCP clients use.  The
layers:

- ``parse_request``: a request body through the project's restricted parser
  (no DTD, entity, comment or processing instruction), its payloads given the
  ``jabber:client`` treatment of a TCP stream.
- ``negotiate``: the session creation request against the ``[http]`` bounds.
- ``BoshSession``: the protocol, without I/O.  Time comes from
  ``server.clock``; each request is an *exchange* (``reply(data, status)``,
  ``lost``, ``on_lost(callback)``, ``secure``, ``local``, ``transport`` (the
  TLS one, or None), ``size``) that the session answers once.  It keeps the
  request window (out-of-order rids, the cache of recent responses), hold
  and wait, inactivity and pauses, overactivity, keys and the stream
  restart.  SASL in clear is allowed by ``[c2s] require_encryption`` only on
  the requests of a local client (``local``): each request is judged alone.
- ``BoshService``: the thin HTTP glue that ``bridge/gateways/http.py`` calls
  with ``handle(request, responder)``.  It bounds the sessions, per client
  address and in all, as the TCP listener bounds connections: one
  keep-alive connection could otherwise create them back to back.  The
  requests no live session takes (creations, unknown sids, unreadable
  bodies) are paced per client address
  (``bosh_sessionless_requests_per_second_per_address``, bursts of
  ``bosh_sessionless_requests_burst``): past it each is answered in its
  turn, so a client that asks again as soon as it is refused gets its
  refusals at that rate, not at the rate the server can parse them.
"""

import hashlib
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from xml.parsers import expat

from twisted.application import service
from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core.logbudget import LogBudget
from bridge.core.streams.base import ConnectionsPerAddress, RatePerAddress
from bridge.core.streams.c2s import NS_CLIENT, ClientStream
from bridge.core.xmlstream import NS_STREAMS, NS_XML, StreamError, parse_document, serialize

log = Logger()

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
BOSH_VERSION = (1, 11)
CONTENT_TYPE = "text/xml; charset=utf-8"
# The highest rid a client may reach (XEP-0124 section 14.1: 2^53 - 1).
MAX_RID = 2 ** 53 - 1
# XEP-0124 section 17.1: what a client that sent no 'ver' understands instead.
LEGACY_STATUS = {"bad-request": 400, "policy-violation": 403, "item-not-found": 404}
# How many sessionless requests a creation asked for by an address with no room for it counts as
# against the address's pace: refusing one costs the reactor some 200 µs, and a client that keeps
# asking (a flood's closed loop) is answered at a quarter of the pace (docs/web.md).
NO_ROOM_COST = 4

# The body is read as the only stanza of a stream whose header is ours.
_ROOT_OPEN = f"<bosh:stream xmlns:bosh='{NS_STREAMS}'>".encode("ascii")
_ROOT_CLOSE = b"</bosh:stream>"
_XML_DECLARATION = re.compile(rb"\s*<\?xml\s[^>]*\?>")
_CONTENT = re.compile(r"[\x20-\x7e]{1,100}")

INFO_PAGE = (b"<!DOCTYPE html><html><head><title>BOSH</title></head><body><p>This is an XMPP over BOSH "
             b"(XEP-0124, XEP-0206) endpoint: XMPP clients POST &lt;body/&gt; requests here.</p></body></html>")


class BoshError(Exception):
    """A terminal binding condition (XEP-0124 section 17.2)."""

    def __init__(self, condition, text=None):
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


# -- parsing -----------------------------------------------------------------------

def _adopt(element):
    """Payloads written without a namespace inherit httpbind's: they are jabber:client."""
    if element.uri == NS_HTTPBIND:
        element.uri = None
        element.defaultUri = None
    for child in element.elements():
        _adopt(child)


def parse_request(data, limit_bytes):
    """The <body/> element of a request; raises ``BoshError('bad-request')``.

    Payloads in ``jabber:client`` (or in no namespace but httpbind's default)
    carry no namespace afterwards, as stanzas read from a TCP stream do.
    """
    if len(data) > limit_bytes:
        raise BoshError("policy-violation", "request too large")
    declaration = _XML_DECLARATION.match(data)
    if declaration:
        data = data[declaration.end():]
    try:
        found, ended = parse_document([_ROOT_OPEN, data, _ROOT_CLOSE], limit_bytes + 1024, NS_CLIENT)
    except StreamError as error:
        raise BoshError("bad-request", error.text or error.condition) from None
    if len(found) != 1 or not ended:
        raise BoshError("bad-request", "a request holds exactly one <body/>")
    body = found[0]
    if (body.uri, body.name) != (NS_HTTPBIND, "body"):
        raise BoshError("bad-request", f"<{body.name}/> in {body.uri} is not a BOSH <body/>")
    if any(isinstance(child, str) and child.strip() for child in body.children):
        raise BoshError("bad-request", "text in <body/>")
    for payload in body.elements():
        _adopt(payload)
    return body


class _Seen(Exception):
    pass


def peek_attributes(data):
    """The attributes of a request's first start tag, read before whatever spoils the rest ({} if none)."""
    found = {}
    parser = expat.ParserCreate()

    def start(name, attributes):
        found.update(attributes)
        raise _Seen()

    def refuse(*args):
        raise _Seen()

    parser.StartElementHandler = start
    parser.StartDoctypeDeclHandler = parser.EntityDeclHandler = refuse
    parser.CommentHandler = parser.ProcessingInstructionHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data[:4096], False)
    except (_Seen, expat.ExpatError):
        pass
    return found


def parse_rid(text):
    """A request id, or None when it is missing or not a positive integer within 2^53 - 1."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    rid = int(text)
    return rid if 0 < rid <= MAX_RID else None


def _seconds(text, default):
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise BoshError("bad-request", f"{text!r} is not a number of seconds")
    return int(text)


def _version(text):
    try:
        major, minor = text.split(".")
        return int(major), int(minor)
    except (AttributeError, ValueError):
        return None


# -- session creation ----------------------------------------------------------------

@dataclass(frozen=True)
class SessionOptions:
    """What a session creation request asked for, within the ``[http]`` bounds."""

    rid: int
    host: str
    to: str
    lang: str
    xmpp_version: str
    wait: int
    hold: int
    requests: int
    inactivity: int
    polling: int
    maxpause: int
    ver: tuple
    legacy: bool
    content_type: str
    key: str
    secure: bool
    peer: str
    address: str
    max_buffered_bytes: int

    @property
    def polling_session(self):
        return self.hold == 0


def negotiate(body, http, config, secure=False, peer="?", address=None):
    """The ``SessionOptions`` of a creation request; raises ``BoshError``.

    ``http`` is the ``[http]`` table, ``config`` the whole configuration
    (for the hosted domains).
    """
    rid = parse_rid(body.getAttribute("rid"))
    if rid is None:
        raise BoshError("bad-request", "no valid 'rid'")
    to = body.getAttribute("to")
    if not to:
        raise BoshError("improper-addressing", "no 'to'")
    host = config.host_for(to.lower())
    if host is None:
        raise BoshError("host-unknown", f"{to!r} is not served here")
    max_wait = int(http.bosh_max_wait_seconds)
    wait = min(_seconds(body.getAttribute("wait"), max_wait), max_wait)
    hold = min(_seconds(body.getAttribute("hold"), 1), http.bosh_max_hold)
    # XEP-0124 section 7.2: 'requests' is 2 or hold + 1, and the client must
    # be able to keep 'hold' requests waiting and still send one.
    requests = min(max(2, hold + 1), http.bosh_max_requests)
    hold = min(hold, requests - 1)
    if wait == 0:
        hold = 0
    polling = int(http.bosh_polling_seconds)
    inactivity = int(http.bosh_max_inactivity_seconds)
    if hold == 0:
        # Section 12: a polling client is silent between polls.
        inactivity += polling
    client_ver = _version(body.getAttribute("ver"))
    content = body.getAttribute("content")
    return SessionOptions(
        rid=rid, host=host, to=to, lang=body.getAttribute((NS_XML, "lang")) or "en",
        xmpp_version=body.getAttribute((NS_XBOSH, "version")) or "", wait=wait, hold=hold, requests=requests,
        inactivity=inactivity, polling=polling, maxpause=int(http.bosh_max_pause_seconds),
        ver=min(client_ver, BOSH_VERSION) if client_ver else BOSH_VERSION, legacy=client_ver is None,
        content_type=content if content and _CONTENT.fullmatch(content) else CONTENT_TYPE,
        key=body.getAttribute("newkey"), secure=secure, peer=peer, address=address,
        max_buffered_bytes=http.max_buffered_bytes)


def render_body(payloads, attributes=None):
    """A response: the <body/> wrapper around payloads serialised by ``serialise``."""
    parts = [f"<body xmlns='{NS_HTTPBIND}'"]
    if any(streamish for _, streamish in payloads):
        parts.append(f" xmlns:stream='{NS_STREAMS}'")
    for name, value in (attributes or {}).items():
        parts.append(f" {name}='{domish.escapeToXml(str(value), True)}'")
    if not payloads:
        parts.append("/>")
    else:
        parts.append(">")
        parts.extend(text for text, _ in payloads)
        parts.append("</body>")
    return "".join(parts).encode("utf-8")


def serialise(element):
    """``(text, in the streams namespace)`` of an element for a response.

    A stanza carries no namespace inside the server; inside <body/> (whose
    default namespace is httpbind) it is written with xmlns='jabber:client'.
    """
    if element.uri == NS_STREAMS:
        return element.toXml(prefixes={NS_STREAMS: "stream"}), True
    text = serialize(element)
    if element.uri is None:
        head = text[:text.index(">")]
        if " xmlns='" not in head:
            cut = 1 + len(element.name)
            text = f"{text[:cut]} xmlns='{NS_CLIENT}'{text[cut:]}"
    return text, False


# -- the protocol ----------------------------------------------------------------------

class _Request:
    """One request of a session, from its arrival to its answer."""

    __slots__ = ("rid", "body", "exchange", "pause", "creation", "timer")

    def __init__(self, rid, body, exchange, creation=False):
        self.rid = rid
        self.body = body
        self.exchange = exchange
        self.pause = False
        self.creation = creation
        self.timer = None


class _Answer:
    __slots__ = ("data", "key", "had_payloads")

    def __init__(self, data, key, had_payloads):
        self.data = data
        self.key = key
        self.had_payloads = had_payloads


class BoshFraming:
    """What ``ClientStream`` writes through: the session's side of the stream."""

    can_start_tls = False
    kind = "bosh"  # what carries the session, as bridgectl and the metrics show it

    def __init__(self, session):
        self.session = session

    @property
    def peer(self):
        return self.session.options.peer

    @property
    def may_authenticate_in_clear(self):
        """Without TLS, a local client may still authenticate: nobody else sees its requests."""
        return self.session.local

    def open(self, stream_id, host):
        self.session.stream_id = stream_id
        self.session.stream_from = host

    def send(self, element):
        self.session.enqueue(element)

    def close(self):
        self.session.stream_ended()

    def reset(self):
        self.session.restart_expected = True

    def start_tls(self):
        raise RuntimeError("no STARTTLS over BOSH: TLS is HTTPS's business")

    def answered(self):
        """Nothing waits: a BOSH body's stanzas are bounded by the request size and the rid window."""

    def tls_transport(self):
        return self.session.tls_transport()


class BoshSession:
    """One BOSH session: the request window and the queue of one client stream, without I/O.

    ``start`` takes the creation request, ``receive`` every later one; each
    exchange is answered exactly once (``exchange.reply``).  ``on_end(session)``
    is called when the session may be forgotten.
    """

    # The HTTP form of the c2s rate limit: requests a session may make per
    # second (sustained) and in a burst; more is a policy violation.
    request_rate_per_second = 25.0
    request_burst = 100

    def __init__(self, server, sid, options, on_end=lambda session: None):
        self.server = server
        self.clock = server.clock
        self.sid = sid
        self.options = options
        self.on_end = on_end
        self.limits = server.config.c2s
        self.stream_id = None
        self.stream_from = None
        self.restart_expected = False
        self.ended = False
        self.final = None  # the terminate response, kept for a client that has not had it
        self.final_status = 200
        self.key = options.key
        self.keys_in_use = options.key is not None
        self.queue = []  # (text, streamish) for the client
        self.queued_bytes = 0
        self.held = []  # processed requests, not answered yet, in rid order
        self.early = {}  # rid -> request that arrived before a lower rid
        self.answers = OrderedDict()  # rid -> _Answer, the most recent ones
        self.last_rid = options.rid - 1  # every rid up to this one is processed
        self.answered_rid = options.rid - 1  # every rid up to this one is answered
        self._busy = False
        self._flush_soon = None
        self._stream_error = False
        self._pause = None
        self._inactivity = None
        self._linger = None
        self._resume = None
        self._previous = None  # (arrival time, empty) of the last processed request
        self._byte_tokens = float(self.limits.rate_limit_burst_bytes)
        self._request_tokens = float(self.request_burst)
        self._refilled = self.clock.seconds()
        self._transport = None
        self.local = False  # the request being processed came from a local client
        self.framing = BoshFraming(self)
        self.stream = ClientStream(server, self.framing, server.config.c2s, secure=options.secure)
        self._stream_lost = False

    # -- requests --------------------------------------------------------------------

    def start(self, body, exchange):
        """The creation request: open the stream; its answer carries the session's attributes."""
        request = _Request(self.options.rid, body, exchange, creation=True)
        self._watch(request)
        self._refill()
        self._transport, self.local = exchange.transport, exchange.local
        self.last_rid = request.rid
        self.held.append(request)
        self._previous = (self.clock.seconds(), True)
        self._run(lambda: self.stream.stream_opened(self._header(body)))
        self._flush()

    def receive(self, body, exchange):
        """A request after the creation request."""
        if self.ended:
            self._reply_final(exchange)
            return
        if self.options.secure and not exchange.secure:
            # XEP-0124's security considerations: a secure session never continues in clear.
            exchange.reply(b"", 403)
            return
        rid = parse_rid(body.getAttribute("rid"))
        if rid is None:
            self._end("bad-request", "no valid 'rid'", also=exchange)
            return
        if rid <= self.last_rid:
            self._repeat(rid, body, exchange)
            return
        if rid in self.early:
            self._replace(self.early[rid], body, exchange)
            return
        extra = body.getAttribute("type") == "terminate" or body.hasAttribute("pause")
        if rid > self.answered_rid + self.options.requests + 1:
            self._end("item-not-found", f"rid {rid} is outside the window", also=exchange)
            return
        if rid - self.answered_rid > self.options.requests and not extra:
            self._end("policy-violation", "too many simultaneous requests", also=exchange)
            return
        self._refill()
        self._request_tokens -= 1
        if self._request_tokens < 0:
            self._end("policy-violation", "too many requests per second", also=exchange)
            return
        request = _Request(rid, body, exchange)
        self._watch(request)
        self.early[rid] = request
        self._drain()

    def refuse(self, rid, condition, text, exchange):
        """A request of this session that could not be read: it ends the session if its rid is its turn."""
        if self.ended:
            self._reply_final(exchange)
        elif rid is not None and self.last_rid < rid <= self.answered_rid + self.options.requests + 1:
            self._end(condition, text, also=exchange)
        else:
            exchange.reply(render_body([], self._terminate_attributes(condition)), self._status(condition))

    def shutdown(self, condition="system-shutdown"):
        """The server is stopping: every request gets the terminal condition."""
        if self.ended:
            if self._linger is not None and self._linger.active():
                self._linger.cancel()
            self._forget()
            return
        self._end(condition, "the server is shutting down", linger=False)

    def _repeat(self, rid, body, exchange):
        """XEP-0124 section 14.3: a request sent again after a broken connection."""
        answer = self.answers.get(rid)
        if answer is not None:
            if self.keys_in_use and body.getAttribute("key") != answer.key:
                self._end("item-not-found", "a repeated request with another key", also=exchange)
            else:
                exchange.reply(answer.data)
            return
        for request in self.held:
            if request.rid == rid:
                self._replace(request, body, exchange)
                return
        self._end("item-not-found", f"the response to rid {rid} is no longer kept", also=exchange)

    def _replace(self, request, body, exchange):
        """The client sent a request again that is held or waiting: the new connection takes its place."""
        if self.keys_in_use and body.getAttribute("key") != request.body.getAttribute("key"):
            self._end("item-not-found", "a repeated request with another key", also=exchange)
            return
        old, request.exchange = request.exchange, exchange
        self._watch(request)
        if not old.lost:
            old.reply(render_body([]))

    def _drain(self):
        """Process the requests whose turn has come, in rid order."""
        while not self.ended and self.last_rid + 1 in self.early:
            if self._throttled():
                return
            self._process(self.early.pop(self.last_rid + 1))

    def _process(self, request):
        body = request.body
        self.last_rid = request.rid
        self.held.append(request)
        if not self._check_key(body):
            self._end("item-not-found", "wrong key")
            return
        payloads = list(body.elements())
        terminate = body.getAttribute("type") == "terminate"
        restart = body.getAttribute((NS_XBOSH, "restart")) in ("true", "1")
        try:
            pause = self._pause_request(body)
            self._check_frequency(request, payloads or terminate or restart or pause is not None)
            if restart and (payloads or not self.restart_expected):
                raise BoshError("bad-request", "a restart is expected after SASL success only, and empty")
            if payloads and self.restart_expected:
                raise BoshError("bad-request", "payloads before the stream restart")
        except BoshError as error:
            self._end(error.condition, error.text)
            return
        self._cancel_inactivity()
        self._pause = None
        self._byte_tokens -= request.exchange.size
        self._transport, self.local = request.exchange.transport, request.exchange.local
        self.stream.data_seen()

        def feed():
            if restart:
                self.restart_expected = False
                self.stream.stream_opened(self._header(body))
            for payload in payloads:
                if self.ended or self.stream.closed:
                    return
                self.stream.element_received(payload)
            if terminate and not self.ended:
                self.stream.stream_closed()

        self._run(feed)
        if self.ended:
            return
        if pause is not None:
            # Section 10: every held request is answered now; the pause one carries nothing.
            request.pause = True
            while self.held:
                self._answer(self.held[0])
            self._pause = pause
        self._flush()

    def _run(self, step):
        """Drive the stream; what it sends waits until the request is held."""
        self._busy = True
        try:
            step()
        except Exception:
            log.failure("internal error on the BOSH session of {peer}", peer=self.options.peer)
            self.stream.stream_error("internal-server-error")
        finally:
            self._busy = False

    def _check_key(self, body):
        """XEP-0124 section 15: each key hashes to the one before."""
        if not self.keys_in_use:
            return True
        key = body.getAttribute("key")
        if key is None or hashlib.sha1(key.encode("utf-8")).hexdigest() != self.key.lower():
            return False
        self.key = body.getAttribute("newkey") or key
        return True

    def _pause_request(self, body):
        text = body.getAttribute("pause")
        if text is None or not self.options.maxpause:
            return None
        return min(_seconds(text, 0), self.options.maxpause)

    def _check_frequency(self, request, busy):
        """Sections 11 and 12: empty requests no more often than 'polling' allows."""
        now = self.clock.seconds()
        previous, self._previous = self._previous, (now, not busy)
        if busy or previous is None or not self.options.polling or now - previous[0] >= self.options.polling:
            return
        if self.options.polling_session:
            answer = self.answers.get(request.rid - 1)
            if previous[1] and answer is not None and not answer.had_payloads:
                raise BoshError("policy-violation", "polling too frequently")
        elif len(self.held) >= self.options.requests:
            raise BoshError("policy-violation", "too many empty requests")

    # -- limits ------------------------------------------------------------------------

    def _refill(self):
        now = self.clock.seconds()
        elapsed, self._refilled = now - self._refilled, now
        self._byte_tokens = min(self.limits.rate_limit_burst_bytes,
                                self._byte_tokens + elapsed * self.limits.rate_limit_bytes_per_second)
        self._request_tokens = min(self.request_burst, self._request_tokens + elapsed * self.request_rate_per_second)

    def _throttled(self):
        """Past the byte rate, requests wait (as a TCP stream stops reading) until the rate allows."""
        if self._resume is not None:
            return True
        self._refill()
        if self._byte_tokens >= 0:
            return False
        self._resume = self.clock.callLater(-self._byte_tokens / self.limits.rate_limit_bytes_per_second,
                                            self._resumed)
        return True

    def _resumed(self):
        self._resume = None
        self._drain()

    # -- output ------------------------------------------------------------------------

    def enqueue(self, element):
        """The stream sends ``element``: it goes out with the next response."""
        if self.ended:
            return
        text, streamish = serialise(element)
        if streamish and element.name == "error":
            self._stream_error = True
        self.queue.append((text, streamish))
        self.queued_bytes += len(text)
        if self.queued_bytes > self.options.max_buffered_bytes and not self._stream_error:
            self.stream.stream_error("resource-constraint", "the client does not collect its data")
            return
        # Answer at the end of this reactor turn, so that the stanzas routed
        # together (a batch from one request, a presence broadcast) leave in
        # one response instead of one each.
        if self._flush_soon is None:
            self._flush_soon = self.clock.callLater(0, self._flush_now)

    def _flush_now(self):
        self._flush_soon = None
        self._flush()

    def _flush(self):
        """Answer what can be answered: data to the oldest request, and no more held than 'hold'."""
        if self._busy or self.ended:
            return
        while self.held and (self.queue or len(self.held) > self.options.hold or self.held[0].exchange.lost):
            self._answer(self.held[0])
        for request in self.held:
            if request.timer is None:
                request.timer = self.clock.callLater(self.options.wait, self._expire, request)
        self._idle()

    def _answer(self, request):
        self.held.remove(request)
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        payloads = []
        if not request.exchange.lost and not request.pause:
            payloads, self.queue, self.queued_bytes = self.queue, [], 0
        data = render_body(payloads, self._creation_attributes() if request.creation else None)
        self.answered_rid = request.rid
        self.answers[request.rid] = _Answer(data, request.body.getAttribute("key"), bool(payloads))
        while len(self.answers) > self.options.requests:
            self.answers.popitem(last=False)
        request.exchange.reply(data)

    def _expire(self, request):
        """'wait' seconds without data: an empty answer."""
        request.timer = None
        while request in self.held:
            self._answer(self.held[0])
        self._idle()

    def _creation_attributes(self):
        options = self.options
        attributes = {"sid": self.sid, "wait": options.wait, "requests": options.requests, "hold": options.hold,
                      "inactivity": options.inactivity, "polling": options.polling}
        if options.maxpause:
            attributes["maxpause"] = options.maxpause
        attributes["ver"] = "%d.%d" % options.ver
        attributes["from"] = self.stream_from or options.host
        if self.stream_id:
            attributes["authid"] = self.stream_id
        attributes["xmlns:xmpp"] = NS_XBOSH
        attributes["xmpp:version"] = "1.0"
        attributes["xmpp:restartlogic"] = "true"
        return attributes

    def _header(self, body):
        """The stream header that ``ClientStream`` expects, from a creation or restart request."""
        header = domish.Element((NS_STREAMS, "stream"))
        header["to"] = body.getAttribute("to") or self.options.to
        header["version"] = self.options.xmpp_version or "0.0"
        header[(NS_XML, "lang")] = body.getAttribute((NS_XML, "lang")) or self.options.lang
        return header

    def tls_transport(self):
        """The HTTPS connection of the request being processed (for channel binding), or None."""
        return self._transport

    # -- connections that go away, inactivity, the end -----------------------------------

    def _watch(self, request):
        exchange = request.exchange
        exchange.on_lost(lambda: self._lost(exchange))

    def _lost(self, exchange):
        """A held request's connection closed: it is answered (to nobody), its data stays queued."""
        if self.ended or self._busy:
            # (while busy, the flush that follows the request answers lost requests)
            return
        for request in self.held:
            if request.exchange is exchange:
                while request in self.held:
                    self._answer(self.held[0])
                self._idle()
                return

    def _idle(self):
        if self.ended or self.held:
            return
        if self._inactivity is None or not self._inactivity.active():
            period = self._pause if self._pause is not None else self.options.inactivity
            self._inactivity = self.clock.callLater(period, self._inactive)

    def _cancel_inactivity(self):
        if self._inactivity is not None and self._inactivity.active():
            self._inactivity.cancel()
        self._inactivity = None

    def _inactive(self):
        self._inactivity = None
        log.info("BOSH session of {peer} ended: no request for {seconds}s", peer=self.options.peer,
                 seconds=self._pause if self._pause is not None else self.options.inactivity)
        self._end(None, linger=False)

    def stream_ended(self):
        """The stream closed (the client's terminate, or a stream error): the session ends."""
        self._end("remote-stream-error" if self._stream_error else None)

    def _terminate_attributes(self, condition):
        attributes = {"type": "terminate"}
        if condition:
            attributes["condition"] = condition
        return attributes

    def _status(self, condition):
        return LEGACY_STATUS.get(condition, 200) if self.options.legacy else 200

    def _end(self, condition, text=None, also=None, linger=True):
        """Terminate the session: every open request gets the terminate response; the stream is lost.

        The first live request carries what was queued; when none can, the
        response is kept ``inactivity`` seconds for the client's next request.
        """
        if self.ended:
            if also is not None:
                self._reply_final(also)
            return
        self.ended = True
        if self._flush_soon is not None and self._flush_soon.active():
            self._flush_soon.cancel()
        if condition:
            log.info("BOSH session of {peer} terminated: {condition} {text}", peer=self.options.peer,
                     condition=condition, text=text or "")
        for timer in (self._inactivity, self._resume, *(request.timer for request in self.held)):
            if timer is not None and timer.active():
                timer.cancel()
        attributes = self._terminate_attributes(condition)
        status = self._status(condition)
        self.final = render_body(self.queue, attributes)
        had_payloads = bool(self.queue)
        self.final_status = status
        self.queue, self.queued_bytes = [], 0
        empty = render_body([], attributes)
        exchanges = [request.exchange for request in self.held]
        exchanges += [self.early[rid].exchange for rid in sorted(self.early)]
        if also is not None:
            exchanges.append(also)
        self.held, self.early = [], {}
        delivered = False
        for exchange in exchanges:
            if not delivered and not exchange.lost:
                exchange.reply(self.final, status)
                delivered = True
            elif not exchange.lost:
                exchange.reply(empty, status)
        if had_payloads and linger:
            self._linger = self.clock.callLater(self.options.inactivity, self._forget)
        else:
            self._forget()
        if not self._stream_lost:
            self._stream_lost = True
            self.stream.connection_lost()

    def _reply_final(self, exchange):
        exchange.reply(self.final, self.final_status)

    def _forget(self):
        self._linger = None
        self.on_end(self)


# -- HTTP ------------------------------------------------------------------------------------

class _Exchange:
    """One HTTP request and its responder, as a session sees it."""

    def __init__(self, request, responder):
        self.request = request
        self.responder = responder
        self.secure = bool(request.secure)
        self.local = bool(request.local)
        self.transport = request.tls_transport
        self.size = len(request.body)
        self.content_type = CONTENT_TYPE
        self.answered = False

    @property
    def lost(self):
        return bool(self.responder.lost)

    def on_lost(self, callback):
        self.responder.on_lost(callback)

    def reply(self, data, status=200):
        if self.answered:
            return
        self.answered = True
        if self.responder.lost:
            return
        headers = [("Content-Type", self.content_type), ("Cache-Control", "no-store")]
        self.responder.respond(status, headers, data)


class BoshService(service.Service):
    """The BOSH endpoint: ``handle(request, responder)`` for each HTTP request of ``bosh_path``."""

    def __init__(self, server, http_config):
        self.server = server
        self.config = http_config
        self.sessions = {}
        self.per_address = ConnectionsPerAddress(http_config.bosh_max_sessions_per_address)
        self.sessionless = RatePerAddress(server.clock, http_config.bosh_sessionless_requests_per_second_per_address,
                                          http_config.bosh_sessionless_requests_burst)
        self._held = {}  # exchange of a sessionless request waiting for its turn -> its DelayedCall
        self.log_budget = LogBudget(server.clock)  # the refusals logged (core/logbudget.py)

    def handle(self, request, responder):
        exchange = _Exchange(request, responder)
        self._guarded(request, exchange, self._handle, request, exchange)

    def _guarded(self, request, exchange, handler, *args):
        try:
            handler(*args)
        except Exception:
            log.failure("internal error on a BOSH request from {peer}", peer=request.peer)
            exchange.reply(render_body([], {"type": "terminate", "condition": "internal-server-error"}))

    def _in_turn(self, request, exchange, handler, *args, cost=1):
        """``handler(*args)`` for a request no session takes, once its address's pace allows it (the
        request counted as ``cost`` of them)."""
        wait = self.sessionless.delay(request.address, cost)
        if wait <= 0:
            handler(*args)
            return

        # Waiting calls are found by their exchange: a closure that named its
        # own call would make a reference cycle of every request that waited.
        def release():
            del self._held[exchange]
            # Out of the connection's reads now: triage rations it here (no session, no login).
            self.server.triage.run(answer)

        def answer():
            if not exchange.lost:
                self._guarded(request, exchange, handler, *args)

        def forget():
            call = self._held.pop(exchange, None)
            if call is not None:
                call.cancel()

        self._held[exchange] = self.server.clock.callLater(wait, release)
        exchange.on_lost(forget)

    def _handle(self, request, exchange):
        if request.method in ("GET", "HEAD"):
            body = INFO_PAGE if request.method == "GET" else b""
            exchange.responder.respond(200, [("Content-Type", "text/html; charset=utf-8")], body)
            exchange.answered = True
            return
        if request.method != "POST":
            exchange.responder.respond(405, [("Allow", "GET, POST, OPTIONS"), ("Content-Type", "text/plain")],
                                       b"BOSH takes POST requests\n")
            exchange.answered = True
            return
        if self._refusal(request.address) is not None and "sid" not in peek_attributes(request.body):
            # A session its address (or the server) has no room for: the cap is checked again in
            # its turn, and the body read whole only if room was made meanwhile.  Asking for one
            # spends the address's pace faster than other sessionless requests do.
            self._in_turn(request, exchange, self._create_if_room, request, exchange, cost=NO_ROOM_COST)
            return
        self._handle_body(request, exchange)

    def _handle_body(self, request, exchange):
        try:
            body = parse_request(request.body, self.config.max_request_bytes)
        except BoshError as error:
            self._unreadable(request, exchange, error)
            return
        sid = body.getAttribute("sid")
        if sid is None:
            self._in_turn(request, exchange, self._create, request, body, exchange)
            return
        session = self.sessions.get(sid)
        if session is None:
            self._in_turn(request, exchange, exchange.reply,
                          render_body([], {"type": "terminate", "condition": "item-not-found"}))
            return
        exchange.content_type = session.options.content_type
        if session.stream.username is not None:
            exchange.responder.vouch()
        session.receive(body, exchange)

    def _unreadable(self, request, exchange, error):
        """A body that cannot be read: bad-request (policy-violation when too large); ends its session."""
        attributes = peek_attributes(request.body)
        session = self.sessions.get(attributes.get("sid"))
        if session is not None:
            exchange.content_type = session.options.content_type
            session.refuse(parse_rid(attributes.get("rid")), error.condition, error.text, exchange)
            return
        self._in_turn(request, exchange, self._refuse_unreadable, request, exchange, error)

    @staticmethod
    def _refuse_unreadable(request, exchange, error):
        log.info("unreadable BOSH request from {peer}: {error}", peer=request.peer, error=error)
        exchange.reply(render_body([], {"type": "terminate", "condition": error.condition}))

    def _create(self, request, body, exchange):
        try:
            options = negotiate(body, self.config, self.server.config, secure=bool(request.secure),
                                peer=request.peer, address=request.address)
            self._admit(options.address, options.peer)
        except BoshError as error:
            exchange.reply(render_body([], {"type": "terminate", "condition": error.condition}))
            return
        # 192 bits from the system's CSPRNG: the sid is all that names a session.
        sid = secrets.token_urlsafe(24)
        session = BoshSession(self.server, sid, options, on_end=self._forget)
        self.sessions[sid] = session
        exchange.content_type = options.content_type
        session.start(body, exchange)

    def _create_if_room(self, request, exchange):
        """A creation asked for while there was no room: refused unread if there still is none."""
        if self._refusal(request.address) is None:
            self._handle_body(request, exchange)
            return
        try:
            self._admit(request.address, request.peer)
        except BoshError as error:
            exchange.reply(render_body([], {"type": "terminate", "condition": error.condition}))

    def _refusal(self, address):
        """Why a new session from ``address`` would be refused now: (the log line's end, the error's
        text), or None."""
        if len(self.sessions) >= self.config.bosh_max_sessions:
            return "%d sessions already" % len(self.sessions), "too many BOSH sessions"
        if self.per_address.counts.get(address, 0) >= self.per_address.limit:
            return "too many sessions from its address", "too many BOSH sessions from your address"
        return None

    def _admit(self, address, peer):
        """Count a new session against its address and the whole; ``BoshError('policy-violation')`` past either."""
        refusal = self._refusal(address)
        if refusal is None:
            self.per_address.admit(address)
            return
        if self.log_budget.allows("BOSH refusals"):
            log.info("refusing a BOSH session for {peer}: {why}", peer=peer, why=refusal[0])
        raise BoshError("policy-violation", refusal[1])

    def _forget(self, session):
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
            self.per_address.release(session.options.address)

    def stopService(self):
        """End every session, and every request waiting for its turn, with system-shutdown: the server stops."""
        super().stopService()
        self.log_budget.stop()
        held, self._held = self._held, {}
        for exchange, call in held.items():
            call.cancel()
            exchange.reply(render_body([], {"type": "terminate", "condition": "system-shutdown"}))
        for session in list(self.sessions.values()):
            session.shutdown()

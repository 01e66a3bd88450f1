"""What every XML stream over TCP shares: parsing, rate limiting and output.

Client, server-to-server and component streams differ in their negotiation,
not in how bytes become elements and elements become bytes; that common part
lives here once.

Output is bounded (``BoundedOutput``, shared with the WebSocket framing): a
stream is its transport's push producer, so Twisted says when the peer reads
less than it is sent.  From then on the elements the peer sends wait
unhandled, and reading from it stops while they wait (it cannot make us
write more by asking); a peer that lets more than ``max_buffered_bytes``
pile up is cut off with <policy-violation/>.  Reading is not paused for the
output alone: a TLS transport says it is full while its handshake, which
needs reading, is under way.  Only what the peer sends counts as activity.

A stream restart (after STARTTLS or SASL) must be the last thing of its
read: what came with it was sent before the peer could see our answer and,
after <starttls/>, was sent in the clear though it would be read as if under
TLS (the CVE-2011-0411 class).  Anything but whitespace there ends the
stream with <policy-violation/>.
"""

from collections import deque

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from bridge.core.triage import Gate
from bridge.core.xmlstream import NS_STREAMS, StreamError, StreamParser, serialize

log = Logger()

NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
# After we close a stream, how long its peer has to read what is left before the connection is dropped.
CLOSE_TIMEOUT_SECONDS = 5.0


def stream_error_element(condition, text=None):
    error = domish.Element((NS_STREAMS, "error"))
    error.addElement((NS_STREAM_ERRORS, condition))
    if text:
        error.addElement((NS_STREAM_ERRORS, "text"), content=text)
    return error


def stream_header(namespace, attributes, extra_namespaces=""):
    """The opening tag of a stream; ``attributes`` with None values are left out."""
    parts = [f"<?xml version='1.0'?><stream:stream xmlns='{namespace}' xmlns:stream='{NS_STREAMS}'"]
    if extra_namespaces:
        parts.append(" " + extra_namespaces)
    for name, value in attributes.items():
        if value is not None:
            parts.append(f" {name}='{domish.escapeToXml(value, True)}'")
    parts.append(">")
    return "".join(parts).encode("utf-8")


class ConnectionsPerAddress:
    """Open connections counted per peer address against a limit.

    ``admit(key)`` counts a new connection and tells whether it is within the
    limit; ``release(key)`` uncounts it when it ends, admitted or not.  The
    client listeners (TCP, and HTTP for BOSH and WebSocket) each keep one.
    """

    def __init__(self, limit):
        self.limit = limit
        self.counts = {}

    def admit(self, key):
        count = self.counts.get(key, 0) + 1
        self.counts[key] = count
        return count <= self.limit

    def release(self, key):
        count = self.counts.get(key, 1) - 1
        if count > 0:
            self.counts[key] = count
        else:
            self.counts.pop(key, None)


class RatePerAddress:
    """Events counted per peer address against a token bucket each (``rate`` a second, ``burst`` at once).

    ``delay(key, cost)`` counts ``cost`` events (one by default) and answers
    how many seconds it must wait for its turn: 0 within the rate, else the
    time until the address's bucket has paid for it (events that keep coming
    queue up behind it).
    The table forgets the addresses whose buckets are full again once it
    tracks ``max_tracked``; past that, new addresses share one bucket.
    """

    def __init__(self, clock, rate, burst, max_tracked=10000):
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.max_tracked = max_tracked
        self._buckets = {}  # key -> (tokens, time of the last refill)

    def _tokens(self, key, now):
        tokens, refilled = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - refilled) * self.rate)

    def delay(self, key, cost=1):
        now = self.clock.seconds()
        if key not in self._buckets and len(self._buckets) >= self.max_tracked:
            self._buckets = {k: v for k, v in self._buckets.items() if self._tokens(k, now) < self.burst}
            if len(self._buckets) >= self.max_tracked:
                key = None
        tokens = self._tokens(key, now) - cost
        self._buckets[key] = (tokens, now)
        return 0.0 if tokens >= 0 else -tokens / self.rate


class Reading:
    """Reading from a transport, paused while any of its holds is paused.

    Two things stop reading from a peer: its input rate and output it does
    not read.  Each gets its own ``hold()``, an object with
    ``pauseProducing`` and ``resumeProducing`` as a transport has, so that
    one resuming never undoes the other's pause.
    """

    __slots__ = ("transport", "_paused")

    def __init__(self, transport):
        self.transport = transport
        self._paused = 0  # how many holds are paused

    def hold(self):
        return _ReadingHold(self)

    def _count(self, change):
        self._paused += change
        if self._paused == (1 if change > 0 else 0):
            if change > 0:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()


class _ReadingHold:
    __slots__ = ("reading", "paused")

    def __init__(self, reading):
        self.reading = reading
        self.paused = False

    def pauseProducing(self):
        if not self.paused:
            self.paused = True
            self.reading._count(1)

    def resumeProducing(self):
        if self.paused:
            self.paused = False
            self.reading._count(-1)


class OutputBatch:
    """While the elements of one read are handled, what they make us write goes out at its end.

    One stanza routed to a peer is one write, and on a TLS transport one
    record and a trip through the TLS library each; a read of several
    stanzas for the same peer (a busy conversation) then costs one.  Output
    written outside a batch (timers, storage answers) goes out at once,
    unless the peer's output still holds a batch's bytes (it then follows them).

    With ``call_later`` (the reactor's, set by the server's service), the
    batch lasts to the end of the reactor's iteration: the reads of one
    wake-up (a room's talkers, each writing to every occupant) make one
    write per peer.
    """

    def __init__(self):
        self.depth = 0
        self.outputs = []  # the BoundedOutputs holding bytes until the batch ends
        self.call_later = None
        self._flush_call = None

    def until_iteration_end(self, call_later):
        """Make batches last to the end of the reactor's iteration (``call_later``: the reactor's), or, with
        None, end with their read again; what is held goes out now."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self.call_later = call_later
        self.flush()

    def __enter__(self):
        self.depth += 1

    def __exit__(self, *failure):
        self.depth -= 1
        if self.depth == 0 and self.outputs:
            if self.call_later is None:
                self.flush()
            elif self._flush_call is None:
                self._flush_call = self.call_later(0, self.flush)

    def flush(self):
        self._flush_call = None
        while self.outputs:  # a flush may write to others (a stream error's answers)
            outputs, self.outputs = self.outputs, []
            for output in outputs:
                output.flush()


# The one batch of the process: the reactor handles one read at a time.
OUTPUT_BATCH = OutputBatch()
# What one output holds in a batch at most (the payload of one TLS record).
BATCH_BYTES = 16384


@implementer(IPushProducer)
class BoundedOutput:
    """What is written to one peer, bounded by what it reads.

    It is its transport's push producer: Twisted calls ``pauseProducing``
    when the transport's buffer is full (the peer reads less than it is
    sent) and ``resumeProducing`` once it has drained.  While full, the
    bytes written are counted; past ``limit_bytes``, ``overflowed(count)``
    is called, once, and its owner cuts the peer off.  Reading from the peer
    stops while full when ``reading`` (a hold of ``Reading``) is given;
    ``drained()`` is called on resumption.  TCP streams and the WebSocket
    framing each keep one.
    """

    def __init__(self, transport, limit_bytes, overflowed, reading=None, drained=None):
        self.transport = transport
        self.reading = reading
        self.limit_bytes = limit_bytes
        self.overflowed = overflowed
        self.drained = drained
        self.full = False
        self.unread = 0
        self.over = False
        self.registered = False
        self._batched = []  # bytes written during OUTPUT_BATCH, not yet to the transport
        self._batched_bytes = 0

    def register(self):
        self.transport.registerProducer(self, True)
        self.registered = True

    def unregister(self):
        """No longer the producer (the connection closes): what a batch holds goes out first.

        TCP and TLS transports only close once there is no producer.
        """
        self.flush()
        if self.registered:
            self.registered = False
            self.transport.unregisterProducer()

    def write(self, data):
        if OUTPUT_BATCH.depth or self._batched:
            if not self._batched:
                OUTPUT_BATCH.outputs.append(self)
            self._batched.append(data)
            self._batched_bytes += len(data)
            if self._batched_bytes >= BATCH_BYTES:
                # Past one TLS record's worth, out now: the transport tells when the peer is full.
                self.flush()
            return
        self._write(data)

    def flush(self):
        """Write what the batch holds (before the transport changes: STARTTLS, close)."""
        if self._batched:
            data, self._batched, self._batched_bytes = b"".join(self._batched), [], 0
            self._write(data)

    def _write(self, data):
        was_full = self.full
        self.transport.write(data)
        if not was_full:
            return
        self.unread += len(data)
        if self.unread > self.limit_bytes and not self.over:
            self.over = True
            self.overflowed(self.unread)

    def pauseProducing(self):
        if not self.full:
            self.full = True
            self.unread = 0
            if self.reading is not None:
                self.reading.pauseProducing()

    def resumeProducing(self):
        if self.full:
            self.full = False
            self.unread = 0
            if self.reading is not None:
                self.reading.resumeProducing()
            if self.drained is not None:
                self.drained()

    def stopProducing(self):
        self.registered = False

    def release(self):
        """The connection has ended: forget the owner's callbacks (they refer back to it)."""
        self.overflowed = _ignore
        self.drained = None


def _ignore(*args):
    pass


class InputRateLimit:
    """A token bucket over the bytes a peer sends: past the burst, reading
    from it pauses until its average falls back under the rate.

    ``limits`` carries ``rate_limit_bytes_per_second`` and
    ``rate_limit_burst_bytes``; every stream transport (TCP, WebSocket, SIP)
    keeps one.  ``transport``: what pauses, a transport or a hold of ``Reading``.
    """

    def __init__(self, clock, limits, transport):
        self.clock = clock
        self.rate = limits.rate_limit_bytes_per_second
        self.burst = limits.rate_limit_burst_bytes
        self.transport = transport
        self._tokens = self.burst
        self._refilled = clock.seconds()
        self._paused = None

    def consumed(self, size):
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        self._tokens -= size
        if self._tokens < 0 and self._paused is None:
            self.transport.pauseProducing()
            self._paused = self.clock.callLater(-self._tokens / self.rate, self._resume)

    def _resume(self):
        self._paused = None
        self.transport.resumeProducing()

    def cancel(self):
        if self._paused is not None and self._paused.active():
            self._paused.cancel()


class XMLStreamProtocol(Protocol):
    """TCP framing of one XML stream.

    Subclasses set ``content_namespace`` and implement ``header_received``,
    ``element_received``, ``end_received`` and ``stream_error``.  ``limits``
    carries ``stanza_size_limit_bytes``, ``max_buffered_bytes`` and the
    rate-limit options.

    A read is parsed whole before any of it is handled; its elements wait in
    ``_parsed`` and are handled in order while the peer's output is not full
    and the stream is not ``busy()`` (a client with many requests in work),
    and the peer is not read while some wait.
    """

    content_namespace = None
    peer = "?"
    # The Triage rationing the reads of peers that have not authenticated (c2s), or None.
    triage = None

    def __init__(self, clock, limits, dormancy=None):
        self.clock = clock
        self.limits = limits
        self.dormancy = dormancy
        self.closed = False
        self.rate = None
        self.output = None
        self._waiting = None
        self.last_activity = clock.seconds()
        # (handler, args) of what was parsed and waits to be handled; None when nothing does, since an
        # empty deque holds a block of 64 slots that an idle stream would keep.
        self._parsed = None
        self._input_ended = False
        self._handling = False
        self._gate = None  # the triage of this peer's reads until it authenticates (with ``triage``)
        self._close_timer = None
        self._aborted = False

    def connectionMade(self):
        # Stanzas are small and latency matters more than packet count.
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        reading = Reading(self.transport)
        self.rate = InputRateLimit(self.clock, self.limits, reading.hold())
        self._waiting = reading.hold()
        if self.triage is not None:
            self._gate = Gate(self.triage, reading.hold(), self._take)
        self.output = BoundedOutput(self.transport, self.limits.max_buffered_bytes, self._overflowed,
                                    drained=self.handle_parsed)
        self.output.register()
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        self.parser = StreamParser(self._header_parsed, self._element_parsed, self._end_parsed,
                                   self.limits.stanza_size_limit_bytes, self.content_namespace, self.dormancy)

    # -- input -------------------------------------------------------------

    def _wait(self, handler, *args):
        if self._parsed is None:
            self._parsed = deque()
        self._parsed.append((handler, args))

    def _header_parsed(self, header):
        self._wait(self.header_received, header)

    def _element_parsed(self, element):
        self._wait(self.element_received, element)

    def _end_parsed(self):
        self._wait(self.end_received)

    def authenticated(self):
        """Whether the peer has proven who it is: its reads are then never rationed by triage."""
        return True

    def dataReceived(self, data):
        if self._gate is not None:
            if not self.authenticated():
                self._gate.receive(data)
                return
            # Nothing waits in the gate once the peer has authenticated (what it kept was taken first).
            self._gate = None
        self._take(data)

    def _take(self, data):
        if self.closed or self._input_ended:
            return
        self.last_activity = self.clock.seconds()
        self.rate.consumed(len(data))
        try:
            self.parser.feed(data)
        except StreamError as error:
            self._end_input(error.condition, error.text)
        except Exception:
            log.failure("unexpected failure on input from {peer}", peer=self.peer)
            self._end_input("internal-server-error")
        self.handle_parsed()

    def _end_input(self, condition, text=None):
        """Nothing more is parsed; the stream error comes after what was parsed before it."""
        self._input_ended = True
        self._wait(self.stream_error, condition, text)

    def busy(self):
        """True while the stream may take no more elements for now (see ``TCPClientProtocol``)."""
        return False

    def handle_parsed(self):
        """Handle the parsed elements that wait, as far as output and ``busy()`` allow."""
        if self._handling:
            return
        self._handling = True
        try:
            with OUTPUT_BATCH:
                self._handle_parsed()
        finally:
            self._handling = False
        if self._parsed and not self.closed:
            self._waiting.pauseProducing()
        else:
            self._parsed = None
            self._waiting.resumeProducing()

    def _handle_parsed(self):
        while self._parsed and not self.closed and not self.output.full and not self.busy():
            handler, args = self._parsed.popleft()
            try:
                handler(*args)
            except Exception:
                log.failure("unexpected failure on input from {peer}", peer=self.peer)
                self.stream_error("internal-server-error")

    def restart_stream(self):
        """A new stream follows on this connection (STARTTLS, SASL success): a new parser.

        Nothing may follow the element that ended the old stream in its read
        (whitespace aside); if something did, the stream ends with
        <policy-violation/> and False is returned.
        """
        if self.closed:
            return False  # (an answer that came after the connection ended: its parser is let go)
        if self._parsed or not self.parser.ends_between_stanzas():
            self._parsed = None
            self._input_ended = True
            self.stream_error("policy-violation", "nothing may follow a stream restart before the answer to it")
            return False
        self.parser.reset()
        return True

    def switch_to_tls(self, context, answer=None):
        """STARTTLS: ``answer`` (<proceed/>, as the receiving side), then TLS with ``context``.

        False, after a stream error, when something came after the request
        in its read: those bytes were sent in the clear.
        """
        if not self.restart_stream():
            return False
        if answer is not None:
            self.send(answer)
        self.output.flush()  # <proceed/> in the clear, before TLS starts
        self.transport.startTLS(context)
        return True

    # -- output ------------------------------------------------------------

    def write_header(self, attributes, extra_namespaces=""):
        self.output.write(stream_header(self.content_namespace, attributes, extra_namespaces))

    def send(self, element):
        if self.closed:
            return
        if element.uri == NS_STREAMS:
            # Serialise with the stream prefix the peer knows.
            text = element.toXml(prefixes={NS_STREAMS: "stream"}, prefixesInScope=["stream"])
        else:
            text = serialize(element)
        self.output.write(text.encode("utf-8"))

    def send_stream_error(self, condition, text=None):
        log.info("stream error {condition} for {peer}: {text}", condition=condition, peer=self.peer, text=text or "")
        self.send(stream_error_element(condition, text))
        self.close()

    def _overflowed(self, count):
        log.info("cutting off {peer}: {count} bytes it does not read", peer=self.peer, count=count)
        self.stream_error("policy-violation", "the peer does not read what it is sent")
        self._abort()

    def close(self):
        """Our end of the stream; the peer has CLOSE_TIMEOUT_SECONDS to read what is left."""
        if self.closed:
            return
        self.closed = True
        self.output.write(b"</stream:stream>")
        self.output.unregister()
        if self.output.full:
            self._abort()
            return
        self.transport.loseConnection()
        self._close_timer = self.clock.callLater(CLOSE_TIMEOUT_SECONDS, self._abort)

    def _abort(self):
        """Drop the connection without waiting for the peer to read what is buffered."""
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if not self._aborted:
            self._aborted = True
            self.output.unregister()
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.closed = True
        self._parsed = None
        if self.rate is not None:
            self.rate.cancel()
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        # The parser, the output and the gate call back into this protocol,
        # which refers to them: let go, so that the connection is freed with
        # its last reference and not left for the cycle collector.
        if self.output is not None:
            self.parser.close()
            self.output.release()
        self._gate = None

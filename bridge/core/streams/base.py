"""What every XML stream over TCP shares: parsing, rate limiting and output.

Client, server-to-server and component streams differ in their negotiation,
not in how bytes become elements and elements become bytes; that common part
lives here once.
"""

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core.xmlstream import NS_STREAMS, StreamError, StreamParser

log = Logger()

NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"


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


class InputRateLimit:
    """A token bucket over the bytes a peer sends: past the burst, reading
    from it pauses until its average falls back under the rate.

    ``limits`` carries ``rate_limit_bytes_per_second`` and
    ``rate_limit_burst_bytes``; every stream transport (TCP, WebSocket) keeps one.
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
    carries ``stanza_size_limit_bytes`` and the rate-limit options.
    """

    content_namespace = None
    peer = "?"

    def __init__(self, clock, limits):
        self.clock = clock
        self.limits = limits
        self.closed = False
        self.rate = None
        self.last_activity = clock.seconds()

    def connectionMade(self):
        # Stanzas are small and latency matters more than packet count.
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.rate = InputRateLimit(self.clock, self.limits, self.transport)
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        self.parser = StreamParser(self.header_received, self.element_received, self.end_received,
                                   self.limits.stanza_size_limit_bytes, self.content_namespace)

    def dataReceived(self, data):
        if self.closed:
            return
        self.last_activity = self.clock.seconds()
        self.rate.consumed(len(data))
        try:
            self.parser.feed(data)
        except StreamError as error:
            self.stream_error(error.condition, error.text)
        except Exception:
            log.failure("unexpected failure on input from {peer}", peer=self.peer)
            self.stream_error("internal-server-error")

    def write_header(self, attributes, extra_namespaces=""):
        self.transport.write(stream_header(self.content_namespace, attributes, extra_namespaces))

    def send(self, element):
        if self.closed:
            return
        self.last_activity = self.clock.seconds()
        if element.uri == NS_STREAMS:
            # Serialise with the stream prefix the peer knows.
            text = element.toXml(prefixes={NS_STREAMS: "stream"}, prefixesInScope=["stream"])
        else:
            text = element.toXml()
        self.transport.write(text.encode("utf-8"))

    def send_stream_error(self, condition, text=None):
        log.info("stream error {condition} for {peer}: {text}", condition=condition, peer=self.peer, text=text or "")
        self.send(stream_error_element(condition, text))
        self.close()

    def close(self):
        if not self.closed:
            self.transport.write(b"</stream:stream>")
            self.closed = True
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.closed = True
        if self.rate is not None:
            self.rate.cancel()

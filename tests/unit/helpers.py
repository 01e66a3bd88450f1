"""An in-memory server and clients for unit tests: StringTransport and a fake clock."""

import base64
import dataclasses

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bridge import config as configuration
from bridge.core.sasl import ScramClient
from bridge.core.server import GatewayContext, Server
from bridge.core.storage.memory import MemoryStorage
from bridge.core.streams.c2s import ClientFactory
from bridge.core.xmlstream import NS_STREAMS, StreamParser, parse_element
from bridge.tap import SERVICE_FEATURES, feature_modules, load_features

STREAM_OPEN = (f"<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' "
               "to='{host}' version='1.0'>")


def make_config(hosts=None, **c2s):
    """A configuration for tests: no TLS needed for SASL, generous limits unless given."""
    c2s.setdefault("require_encryption", False)
    document = {"c2s": c2s, "hosts": hosts or {"localhost": {}}}
    return configuration.parse(document, "test.toml")


def gateway_context(server, name, section):
    """The context tap.py gives a gateway, on a test server."""
    return GatewayContext(server, name, section, feature_modules(SERVICE_FEATURES))


def result_of(deferred):
    box = []
    deferred.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


class LateStorage:
    """Storage that carries out calls only when the test says so, as a database on another thread does.

    While ``late`` is false every call is carried out at once; while it is
    true the calls wait, in order, until ``answer()``.
    """

    def __init__(self):
        self.storage = MemoryStorage()
        self.late = False
        self.waiting = []

    def __getattr__(self, name):
        method = getattr(self.storage, name)

        def call(*args):
            if not self.late:
                return method(*args)
            answer = defer.Deferred()
            self.waiting.append((method, args, answer))
            return answer

        return call

    def answer(self):
        """Carry out the calls that wait now (those they lead to wait in turn)."""
        waiting, self.waiting = self.waiting, []
        for method, args, answer in waiting:
            result = method(*args)
            if isinstance(result, defer.Deferred):
                result.chainDeferred(answer)
            else:
                answer.callback(result)


class Harness:
    """A server with every feature loaded, in memory."""

    def __init__(self, config=None, storage=None, directories=None):
        """``directories``: {host: ``DirectoryAccounts``} of hosts whose users live in a directory."""
        self.clock = Clock()
        self.config = config or make_config()
        self.storage = storage or MemoryStorage()
        self.server = Server(self.config, self.storage, self.clock, directories=directories)
        load_features(self.server)
        self.factory = ClientFactory(self.server, self.config.c2s, None)

    def add_user(self, jid, password="secret"):
        user, host = jid.split("@")
        result_of(self.server.accounts.create(host, user, password))

    def connect(self, address="127.0.0.1", factory=None, transport=None):
        """A client connection: to ``factory`` (default: the client listener without TLS), over ``transport``."""
        return FakeClient(self, address, factory, transport)

    def login(self, jid, password="secret"):
        """A connected, authenticated, bound client for ``user@host/resource``."""
        client = self.connect()
        client.login(jid, password)
        return client


class BufferingTransport(StringTransport):
    """A StringTransport with a send buffer, as Twisted's TCP transport has.

    Past ``buffer_bytes`` written and not yet read (``clear``, which
    ``WireClient.received`` calls), it pauses its streaming producer, and
    reading resumes it; ``tls`` records the contexts of ``startTLS`` (and
    ``written_before_tls`` what was written in the clear), ``writes`` counts
    the calls of ``write``.
    """

    def __init__(self, buffer_bytes=16384, **kwargs):
        self.buffer_bytes = buffer_bytes
        self.tls = []
        self.written_before_tls = None
        self.writes = 0
        self.producer_paused = False
        super().__init__(**kwargs)

    def write(self, data):
        self.writes += 1
        super().write(data)
        if self.producer is not None and self.streaming and not self.producer_paused \
                and len(self.value()) > self.buffer_bytes:
            self.producer_paused = True
            self.producer.pauseProducing()

    def clear(self):
        super().clear()
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()

    def startTLS(self, context):
        self.tls.append(context)
        self.written_before_tls = self.value()


class WireClient:
    """The far end of a stream protocol over a StringTransport: writes bytes in, parses what comes out.

    Each new stream header the server writes (after TLS or SASL) starts a new
    parse, as the server's own parser would.
    """

    def __init__(self, protocol, content_namespace, address=("127.0.0.1", 40000), transport=None):
        self.protocol = protocol
        self.transport = transport or StringTransport()
        self.transport.peerAddr = IPv4Address("TCP", *address)
        self.elements = []
        self.backlog = []
        self.headers = []
        self.closed_by_server = False
        self.content_namespace = content_namespace
        self._new_parser()
        protocol.makeConnection(self.transport)

    def _new_parser(self):
        self.parser = StreamParser(self.headers.append, self.elements.append, self._closed, 10**7,
                                   self.content_namespace)

    def _closed(self):
        self.closed_by_server = True

    def send(self, text):
        self.protocol.dataReceived(text.encode("utf-8") if isinstance(text, str) else text)

    def received(self):
        """Elements the server wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        for part in data.split(b"<?xml version='1.0'?>"):
            if part.startswith(b"<stream:stream") and self.headers:
                self._new_parser()
            if part:
                self.parser.feed(part)
        found = self.backlog + self.elements
        self.elements[:], self.backlog = [], []
        return found

    def drop(self):
        """The socket goes away without a closing tag."""
        self.protocol.connectionLost(None)


class FakeClient(WireClient):
    """One client connection to the in-memory server."""

    def __init__(self, harness, address, factory=None, transport=None):
        self.harness = harness
        protocol = (factory or harness.factory).buildProtocol(IPv4Address("TCP", address, 40000))
        super().__init__(protocol, "jabber:client", (address, 40000), transport)

    def open_stream(self, host="localhost"):
        self.send(STREAM_OPEN.format(host=host))
        return self.received()

    def restart(self, host):
        return self.open_stream(host)

    def login(self, jid, password="secret", mechanism="SCRAM-SHA-256"):
        bare, _, resource = jid.partition("/")
        user, host = bare.split("@")
        self.open_stream(host)
        outcome = scram_login(self, user, password, mechanism)
        assert outcome.name == "success", outcome.toXml()
        self.restart(host)
        bind = "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        bind += f"<resource>{resource}</resource></bind>" if resource else "</bind>"
        self.send(f"<iq type='set' id='bind'>{bind}</iq>")
        reply = self.received()[-1]
        assert reply["type"] == "result", reply.toXml()
        self.jid = str(reply.bind.jid)
        return self.jid

    def iq(self, text):
        """Send an IQ and return the reply with the same id."""
        element = parse_element(text)
        self.send(text)
        others, reply = [], None
        for stanza in self.received():
            if reply is None and stanza.name == "iq" and stanza.getAttribute("id") == element.getAttribute("id"):
                reply = stanza
            else:
                others.append(stanza)
        self.backlog = others
        if reply is None:
            raise AssertionError(f"no reply to {text}")
        return reply


def scram_login(client, user, password, mechanism="SCRAM-SHA-256", client_nonce="fyko+d2lbbFgONRv9qkxdawL"):
    """Run a SCRAM exchange as a client would; returns the server's final element.

    A success must carry the server's signature: a wrong one raises ``SASLFailure``.
    """
    scram = ScramClient(mechanism, user, password, nonce=client_nonce)
    payload = base64.b64encode(scram.first()).decode()
    client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{payload}</auth>")
    challenge = client.received()[-1]
    if challenge.name != "challenge":
        return challenge
    final = base64.b64encode(scram.answer(base64.b64decode(str(challenge)))).decode()
    client.send(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final}</response>")
    outcome = client.received()[-1]
    if outcome.name == "success":
        scram.check(base64.b64decode(str(outcome)))
    return outcome


def resuming(harness, user, previd, h):
    """A new connection of ``user``@localhost that authenticates and sends <resume/> (XEP-0198)."""
    client = harness.connect()
    client.open_stream()
    outcome = scram_login(client, user, "secret")
    assert outcome.name == "success", outcome.toXml()
    client.restart("localhost")
    client.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>")
    return client


def replace_config(config, **c2s):
    return dataclasses.replace(config, c2s=dataclasses.replace(config.c2s, **c2s))


class GatewayLine:
    """The stream of a gateway's session (a SIP phone's): what the core sends to it."""

    def __init__(self):
        self.sent = []

    def send(self, stanza):
        self.sent.append(stanza)

    def stream_error(self, condition, text=None):
        pass

"""Fuzzing the SIP parser (datagrams and the stream framer) and the transaction layer.

Parsing raises SIPParseError and nothing else; a message that parses
serialises to bytes that parse to the same message; the error answer of a
parse error can be built and sent; the framer cuts a stream the same way
whatever the reads.  The transaction layer, fed generated messages on a
fake clock, raises nothing, sends only what parses, and forgets every
transaction once its timers have run.
"""

from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.gateways.sip.message import (
    DROP, KEEPALIVE, Limits, Request, Response, SIPParseError, StreamFramer, error_response, make_response,
    parse_datagram,
)
from bridge.gateways.sip.gateway import SIPGateway
from bridge.gateways.sip.transaction import StatelessResponder, TransactionLayer
from bridge.gateways.sip.transport import UDPTransport
from tests.unit.fuzzing import TARGETS, add_users, chunked, mutated, no_logged_failures, pieces, target
from tests.unit.helpers import Harness, gateway_context
from tests.unit.test_sip_message import MALFORMED, VALID, request
from tests.unit.test_sip_messaging import PBX, SOURCE, FakeResolver, Outbound, make_config
from tests.unit.test_sip_registrar import FakeUDP
from tests.unit.test_sip_transport import FakeDatagramTransport, Recorder

METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "REGISTER", "MESSAGE", "OPTIONS", "SUBSCRIBE", "NOTIFY", "PUBLISH")
HOSTS = ("example.com", "192.0.2.7", "[2001:db8::1]", "localhost", "sip.localhost", "a-b.example")
BRANCHES = ("z9hG4bK1", "z9hG4bK2", "z9hG4bKx", "old-branch", "z9hG4bK" + "9" * 40)
SIP_TOKENS = [
    b"\r\n", b"\r\n\r\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"@", b"[", b"]", b"=", b"?",
    b"SIP/2.0", b"sip:", b"sips:", b"tel:", b"INVITE", b"ACK", b"SIP/2.0 200 OK\r\n", b"Via: ",
    b"SIP/2.0/UDP ", b";branch=z9hG4bK1", b";rport", b";rport=", b";received=", b";ttl=", b";maddr=",
    b"Content-Length: ", b"l: ", b"Content-Length: 99999999999\r\n", b"0" * 5000, b"9" * 20, b"CSeq: ",
    b" 1 INVITE", b"Max-Forwards: ", b"Expires: ", b"Contact: *", b"m: ", b";expires=", b";q=", b";tag=",
    b"\x00", b"\xff", b"\xc3\xa9", b"\r", b"\n",
]
SEEDS = [data for _, data, _ in VALID] + [data for _, data, _ in MALFORMED]
DATAGRAMS = st.one_of(mutated(SEEDS, SIP_TOKENS), st.binary(max_size=300),
                      st.lists(st.sampled_from(SIP_TOKENS), max_size=30).map(b"".join))


def same_message(first, second):
    """Start lines, headers (Content-Length aside) and bodies are equal."""
    def fields(message):
        headers = [(name, value) for name, value in message.headers if name != "Content-Length"]
        return message.start_line(), headers, message.body
    return fields(first) == fields(second)


def answer_of(error):
    """The response a transport sends for a parse error serialises (it copies the request's headers as they are)."""
    response = error_response(error)
    if response is not None:
        response.to_bytes()


@target("sip-datagram", DATAGRAMS, examples=150)
def datagram(data):
    """Only SIPParseError; what parses serialises to bytes that parse to the same message; a UDP
    transport answers or drops the datagram without a logged failure."""
    limits = Limits(max_body_bytes=1024)
    try:
        message = parse_datagram(data, limits)
    except SIPParseError as error:
        answer_of(error)
    else:
        if message is not None:
            again = parse_datagram(message.to_bytes(), Limits(max_header_bytes=2**20, max_body_bytes=2**20))
            assert same_message(message, again), (message.to_bytes(), again.to_bytes())
    with no_logged_failures():
        transport = UDPTransport(Recorder(), limits)
        transport.makeConnection(FakeDatagramTransport())
        transport.datagramReceived(data, ("192.0.2.7", 40123))


def frame(chunks, limits=Limits(max_body_bytes=1024)):
    """Everything a framer gives for ``chunks``: messages as bytes, keep-alives, error codes."""
    framer = StreamFramer(limits)
    out = []
    for chunk in chunks:
        framer.receive_data(chunk)
        for _ in range(10000):
            try:
                item = framer.next_message()
            except SIPParseError as error:
                answer_of(error)
                out.append(("error", error.code, error.fatal))
                if error.fatal:
                    return out
                continue
            if item is None:
                break
            out.append(item if item == KEEPALIVE else item.to_bytes())
        else:
            raise AssertionError("the framer keeps giving messages without input")
    return out


STREAMS = st.lists(DATAGRAMS, min_size=1, max_size=4).map(b"".join)


@target("sip-stream", chunked(STREAMS), examples=100)
def stream(value):
    """Only SIPParseError; the same messages and errors whole, cut anywhere, and byte by byte."""
    data, cuts = value
    whole = frame([data])
    assert frame(pieces(data, cuts)) == whole
    assert frame([bytes([byte]) for byte in data]) == whole


# -- generated valid messages ------------------------------------------------------------------------

TOKEN = st.text("abcdefXYZ0189-.!%*_+`'~", min_size=1, max_size=8)


@st.composite
def uris(draw):
    scheme = draw(st.sampled_from(("sip", "sips")))
    user = draw(st.none() | TOKEN)
    host = draw(st.sampled_from(HOSTS))
    port = draw(st.none() | st.integers(1, 65535))
    params = "".join(draw(st.lists(st.sampled_from((";transport=tcp", ";lr", ";user=phone", ";x=1")),
                                   max_size=2, unique=True)))
    return f"{scheme}:{user + '@' if user else ''}{host}{f':{port}' if port else ''}{params}"


@st.composite
def addresses(draw, tag=True):
    name = draw(st.sampled_from(("", '"Alice" ', "Bob ", '"a \\"q\\" b" ')))
    uri = draw(uris())
    params = f";tag={draw(TOKEN)}" if tag and draw(st.booleans()) else ""
    return f"{name}<{uri}>{params}"


@st.composite
def vias(draw):
    transport = draw(st.sampled_from(("UDP", "TCP", "TLS", "WS")))
    host = draw(st.sampled_from(HOSTS))
    port = draw(st.none() | st.integers(1, 65535))
    rport = draw(st.sampled_from(("", ";rport", ";rport=5062")))
    return f"SIP/2.0/{transport} {host}{f':{port}' if port else ''};branch={draw(st.sampled_from(BRANCHES))}{rport}"


@st.composite
def messages(draw):
    """A valid request or response, as the transaction layer receives it."""
    method = draw(st.sampled_from(METHODS))
    headers = [("Via", draw(vias())) for _ in range(draw(st.integers(1, 3)))]
    headers += [("Max-Forwards", str(draw(st.integers(0, 70)))), ("From", draw(addresses())),
                ("To", draw(addresses())), ("Call-ID", draw(st.sampled_from(("c1", "c2@example.com")))),
                ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")]
    if draw(st.booleans()):
        headers.append(("Contact", draw(st.just("*") | addresses(tag=False))))
    if draw(st.booleans()):
        headers.append(("Expires", str(draw(st.integers(0, 2**32 - 1)))))
    body = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        message = Response(draw(st.integers(100, 699)), draw(st.sampled_from(("", "OK", "Weird Reason"))))
    else:
        message = Request(method, draw(uris()))
    for name, value in headers:
        message.headers.add(name, value)
    message.body = body
    return message


@target("sip-roundtrip", messages(), examples=60)
def round_trip(message):
    """A generated message parses back from its bytes, as a datagram and on a stream."""
    data = message.to_bytes()
    assert same_message(parse_datagram(data), message)
    framer = StreamFramer()
    framer.receive_data(data)
    assert same_message(framer.next_message(), message)


# -- the transaction layer -----------------------------------------------------------------------------

SOURCES = (("192.0.2.7", 5060), ("2001:db8::1", 5070))


class RecordingTransport:
    """A transport whose peer parses what it is sent."""

    def __init__(self, reliable):
        self.reliable = reliable

    def send(self, message, address):
        assert parse_datagram(message.to_bytes()) is not None


class AnsweringUser:
    """A transaction user that keeps its server transactions until told to answer them."""

    def __init__(self):
        self.waiting = []

    def request_received(self, transaction, request):
        if transaction is not None:
            self.waiting.append(transaction)

    def answer(self, status):
        """Answer the oldest transaction; after a provisional answer it still waits for a final one.
        An INVITE's stateless responder answers once, whatever the status."""
        if self.waiting:
            transaction = self.waiting[0]
            if isinstance(transaction, StatelessResponder):
                transaction.respond(make_response(transaction.request, status, to_tag="fuzz"))
                self.waiting.pop(0)
                return
            if transaction.state in ("trying", "proceeding"):
                transaction.respond(make_response(transaction.request, status, to_tag="fuzz"))
            if status >= 200 or transaction.state not in ("trying", "proceeding"):
                self.waiting.pop(0)

    def response_received(self, transaction, response):
        pass

    def transaction_timed_out(self, transaction):
        pass

    def transport_error(self, transaction, error):
        pass

    def stray_response(self, response, transport, address):
        pass


OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("receive"), messages(), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("send"), messages(), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("answer"), st.sampled_from((100, 180, 200, 202, 302, 404, 486, 500, 603))),
    st.tuples(st.just("advance"), st.sampled_from((0.1, 0.5, 1.0, 4.0, 5.0, 32.0, 64.0))),
), min_size=1, max_size=12)


@target("sip-transactions", OPERATIONS, examples=50)
def transactions(operations):
    """Received and sent messages, answers and time in any order: no exception, only parseable output,
    and once every timer has run no transaction and no timer is left."""
    clock = Clock()
    user = AnsweringUser()
    layer = TransactionLayer(clock, user)
    transports = (RecordingTransport(reliable=False), RecordingTransport(reliable=True))
    for operation in operations:
        kind = operation[0]
        if kind == "receive":
            _, message, source, reliable = operation
            # What a transport hands over: the message as it was parsed from the wire.
            layer.receive(parse_datagram(message.to_bytes()), transports[reliable], SOURCES[source])
        elif kind == "send":
            _, message, source, reliable = operation
            if isinstance(message, Request) and message.method != "ACK" and (
                    (message.top_via.branch, message.cseq.method) not in layer.client):
                layer.send_request(message, transports[reliable], SOURCES[source])
        elif kind == "answer":
            user.answer(operation[1])
        else:
            clock.advance(operation[1])
    while user.waiting:
        user.answer(500)
    clock.advance(600)
    assert (layer.client, layer.server, clock.getDelayedCalls()) == ({}, {}, [])


# -- the gateway above the transaction layer ----------------------------------------------------------

GATEWAY_URIS = ("sip:alice@localhost", "sip:bob@localhost", "sip:localhost", "sip:carol@pbx.example",
                "sip:eve@evil.example", "sip:carol%5C40pbx.example@sip.localhost", "sip:alice@127.0.0.1",
                "sips:alice@localhost", "tel:+15551234567")
GATEWAY_HEADERS = st.sampled_from((
    ("Expires", "0"), ("Expires", "60"), ("Expires", "5"), ("Expires", "4294967295"),
    ("Event", "presence"), ("Event", "presence;id=1"), ("Event", "message-summary"), ("Event", ""),
    ("Accept", "application/pidf+xml"), ("Accept", "text/plain"), ("Subscription-State", "active;expires=60"),
    ("Subscription-State", "terminated;reason=rejected"), ("Subscription-State", "pending;expires=\u00b2"),
    ("Subscription-State", "active;expires=" + "9" * 30), ("Subscription-State", "bogus"),
    ("Content-Type", "text/plain;charset=UTF-8"), ("Content-Type", "application/pidf+xml"),
    ("Content-Type", "message/cpim"), ("Content-Type", "text/html"), ("SIP-If-Match", "etag-1"),
    ("SIP-ETag", "x"), ("Min-Expires", "120"), ("Min-Expires", "x"), ("Record-Route", "<sip:proxy.example;lr>"),
    ("Contact", "<sip:carol@192.0.2.9:5070>"), ("Contact", "*"), ("Route", "<sip:localhost;lr>"),
    ("Authorization", 'Digest username="alice", realm="localhost", nonce="x", uri="sip:localhost", '
                      'response="00", algorithm=MD5, qop=auth, nc=00000001, cnonce="c"'),
    ("Authorization", "Digest username=alice"), ("Authorization", "Basic YWxpY2U6c2VjcmV0"),
    ("Authorization", 'Digest username="alice", nc=zz, qop=auth, nonce="' + "9" * 60 + '"'),
    ("Proxy-Authorization", "Digest"), ("Require", "100rel"), ("Supported", "path"),
))
PIDF = (b"<?xml version='1.0'?><presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:carol@pbx.example'>"
        b"<tuple id='t'><status><basic>open</basic></status><note>hi</note></tuple></presence>")
GATEWAY_BODIES = st.sampled_from((b"", b"hello", PIDF, PIDF.replace(b"open", b"closed"), b"<presence",
                                  b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", "\u00e9t\u00e9".encode(),
                                  b"\xff\xfe")) | st.binary(max_size=30)


@st.composite
def gateway_requests(draw):
    """A request such as phones and other domains send: ours, foreign, signed or not."""
    method = draw(st.sampled_from(("REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS", "INVITE",
                                   "ACK", "CANCEL", "BYE", "INFO")))
    uri = draw(st.sampled_from(GATEWAY_URIS))
    sender = draw(st.sampled_from(GATEWAY_URIS[:6]))
    request = Request(method, uri)
    request.headers.add("Via", f"SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK{draw(st.integers(0, 3))};rport")
    request.headers.add("Max-Forwards", "70")
    request.headers.add("From", f"<{sender}>;tag=f{draw(st.integers(0, 2))}")
    request.headers.add("To", f"<{uri}>" + draw(st.sampled_from(("", ";tag=t1"))))
    request.headers.add("Call-ID", f"call-{draw(st.integers(0, 2))}")
    request.headers.add("CSeq", f"{draw(st.integers(1, 3))} {method}")
    for name, value in draw(st.lists(GATEWAY_HEADERS, max_size=4, unique_by=lambda header: header[0])):
        request.headers.add(name, value)
    request.body = draw(GATEWAY_BODIES)
    return request


GATEWAY_OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("sip"), gateway_requests()),
    st.tuples(st.just("answer"), st.sampled_from((100, 180, 200, 202, 401, 404, 408, 423, 481, 489, 500, 503)),
              st.lists(GATEWAY_HEADERS, max_size=3, unique_by=lambda header: header[0])),
    st.tuples(st.just("xmpp"), st.sampled_from((
        "<message to='carol\\40pbx.example@sip.localhost' type='chat'><body>hi</body></message>",
        "<message to='bob@localhost' type='chat'><body>hi</body></message>",
        "<presence to='carol\\40pbx.example@sip.localhost' type='subscribe'/>",
        "<presence to='carol\\40pbx.example@sip.localhost' type='unsubscribe'/>",
        "<presence to='carol\\40pbx.example@sip.localhost' type='subscribed'/>",
        "<presence/>", "<presence type='unavailable'/>",
        "<iq type='get' id='d' to='sip.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        "<iq type='set' id='r' to='sip.localhost'><query xmlns='jabber:iq:register'/></iq>",
        "<message to='\\40@sip.localhost'><body>x</body></message>",
    ))),
    st.tuples(st.just("notify"), st.integers(1, 4), st.lists(GATEWAY_HEADERS, max_size=3,
                                                              unique_by=lambda header: header[0]), GATEWAY_BODIES),
    st.tuples(st.just("advance"), st.sampled_from((0.5, 4.0, 32.0, 60.0, 3600.0))),
), min_size=1, max_size=10)


def notify_in_dialog(subscribe, cseq, headers, body):
    """A NOTIFY from the PBX in the dialog of the gateway's ``subscribe``."""
    notify = Request("NOTIFY", subscribe.from_address.uri)
    notify.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKnotify{cseq}")
    notify.headers.add("Max-Forwards", "70")
    notify.headers.add("From", f"{subscribe.headers.get('To')};tag=pbx")
    notify.headers.add("To", subscribe.headers.get("From"))
    notify.headers.add("Call-ID", subscribe.call_id)
    notify.headers.add("CSeq", f"{cseq} NOTIFY")
    names = {name for name, _ in headers}
    for name, value in (("Event", "presence"), ("Subscription-State", "active;expires=60")):
        if name not in names:
            notify.headers.add(name, value)
    for name, value in headers:
        notify.headers.add(name, value)
    notify.body = body
    return notify


def sip_gateway(*users):
    """(harness, context, gateway): a test server with ``users`` and the SIP gateway attached to it."""
    harness = Harness(make_config())
    add_users(harness, *users)
    context = gateway_context(harness.server, "sip", harness.config.sip)
    return harness, context, SIPGateway(context, resolver=FakeResolver())


@target("sip-gateway", GATEWAY_OPERATIONS, examples=30)
def gateway(operations):
    """Requests from phones and foreign domains, answers to what the gateway sends, XMPP stanzas and
    time: no logged failure, and everything the gateway sends parses."""
    with no_logged_failures():
        harness, context, sip = sip_gateway("alice", "bob")
        phones = FakeUDP()
        outbound = sip.add_transport(Outbound())
        alice = harness.login("alice@localhost/x")
        alice.send("<presence/>")
        for operation in operations:
            kind = operation[0]
            if kind == "sip":
                sip.message_received(parse_datagram(operation[1].to_bytes()), phones, SOURCE)
            elif kind == "answer":
                requests = [message for message, _ in outbound.sent if isinstance(message, Request)]
                if requests and requests[-1].method != "ACK":
                    response = make_response(requests[-1], operation[1], to_tag="pbx")
                    for name, value in operation[2]:
                        response.headers.add(name, value)
                    sip.message_received(parse_datagram(response.to_bytes()), outbound, PBX)
            elif kind == "notify":
                subscribes = [message for message, _ in outbound.sent
                              if isinstance(message, Request) and message.method == "SUBSCRIBE"]
                if subscribes:
                    notify = notify_in_dialog(subscribes[-1], *operation[1:])
                    sip.message_received(parse_datagram(notify.to_bytes()), outbound, PBX)
            elif kind == "xmpp":
                alice.send(operation[1])
            else:
                harness.clock.advance(operation[1])
            alice.received()
        harness.clock.advance(3600)
        alice.received()
        sip.stop()
        context.unload()
        alice.drop()


class SIPFuzzTests(SynchronousTestCase):
    def test_datagrams(self):
        """Mutated and arbitrary datagrams raise only SIPParseError and what parses round-trips."""
        TARGETS["sip-datagram"].run()

    def test_streams_in_pieces(self):
        """The stream framer gives the same messages and errors however the bytes are cut."""
        TARGETS["sip-stream"].run()

    def test_generated_messages_round_trip(self):
        """Generated valid messages parse back from their bytes."""
        TARGETS["sip-roundtrip"].run()

    def test_transaction_layer(self):
        """The transaction layer takes generated traffic on a fake clock without error or leak."""
        TARGETS["sip-transactions"].run()

    def test_gateway(self):
        """The gateway takes generated requests, answers and XMPP stanzas without a logged failure."""
        TARGETS["sip-gateway"].run()


LONG_NUMBER = "0" * 4000 + "1" * 1001  # more digits than Python converts (4300)


class FoundByFuzzingTests(SynchronousTestCase):
    """Inputs the fuzzers found, kept as plain examples."""

    def assertParseError(self, data, code):
        """``data`` is refused with ``code`` as a datagram and on a stream."""
        error = self.assertRaises(SIPParseError, parse_datagram, data)
        self.assertEqual(error.code, code)
        framer = StreamFramer()
        framer.receive_data(data)
        error = self.assertRaises(SIPParseError, framer.next_message)
        self.assertEqual(error.code, code)

    def test_content_length_with_5001_digits(self):
        """A Content-Length of 5001 digits is a bad Content-Length (400); it used to raise ValueError."""
        data = request().replace(b"Content-Length: 0", f"Content-Length: {LONG_NUMBER}".encode())
        self.assertParseError(data, 400)

    def test_header_numbers_with_5001_digits(self):
        """Max-Forwards, Expires and a CSeq number of 5001 digits are 400, not ValueError."""
        for name in ("Max-Forwards", "Expires"):
            data = request().replace(b"Max-Forwards: 70\r\n", b"")
            data = data.replace(b"\r\n\r\n", f"\r\n{name}: {LONG_NUMBER}\r\n\r\n".encode(), 1)
            self.assertParseError(data, 400)
        self.assertParseError(request(cseq=f"{LONG_NUMBER} OPTIONS"), 400)

    def test_ports_with_5001_digits(self):
        """A port, rport or ttl of 5001 digits is a grammar error (400, or dropped in the top Via)."""
        self.assertParseError(request(uri=f"sip:bob@example.com:{LONG_NUMBER}"), 400)
        for via in (f"example.net:{LONG_NUMBER}", f"example.net;rport={LONG_NUMBER}",
                    f"example.net;ttl={LONG_NUMBER}"):
            self.assertParseError(request().replace(b"client.example.net:5060", via.encode()), DROP)

    def test_contact_expires_with_5001_digits(self):
        """A Contact expires parameter of 5001 digits is 400 (it raised ValueError when read)."""
        self.assertParseError(request(extra=(f"Contact: <sip:alice@192.0.2.7>;expires={LONG_NUMBER}",)), 400)

    def test_leading_zeros_still_read(self):
        """Numbers keep their leading zeros allowed (1*DIGIT), up to 18 digits."""
        message = parse_datagram(request(extra=("Expires: 000000000000000060",)))
        self.assertEqual(message.headers.get("Expires"), "000000000000000060")

    def test_subscription_state_expires_of_a_superscript_digit(self):
        """A NOTIFY whose Subscription-State is 'pending;expires=\\u00b2' (a Unicode digit) or carries 5001
        digits is answered 400; int() raised ValueError in the gateway."""
        for value in ("pending;expires=\u00b2", f"active;expires={LONG_NUMBER}", "active;retry-after=\u0663"):
            with no_logged_failures():
                harness, context, sip = sip_gateway("alice")
                outbound = sip.add_transport(Outbound())
                alice = harness.login("alice@localhost/x")
                alice.send("<presence to='carol\\40pbx.example@sip.localhost' type='subscribe'/>")
                [subscribe] = [message for message, _ in outbound.sent if isinstance(message, Request)]
                notify = notify_in_dialog(subscribe, 1, [("Subscription-State", value)], b"")
                sip.message_received(parse_datagram(notify.to_bytes()), outbound, PBX)
                sip.stop()
                context.unload()
            self.assertEqual(outbound.sent[-1][0].status, 400, value)

"""Fuzzing the HTTP listener: request parsing, BOSH bodies and sessions, WebSocket frames.

Raw bytes on an HTTP connection (whole or cut anywhere) never make the
channel raise or log a failure, and never reach a file outside the web
client's folder.  A BOSH body parses or raises BoshError.  A BOSH session
driven by generated requests, lost connections and time answers every
request exactly once and is forgotten in the end.  A WebSocket stream fed
arbitrary frames and messages logs no failure and writes only well-formed
XML.
"""

import atexit
import functools
import os
import re
import shutil
import struct
import tempfile

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from wsproto.connection import ConnectionState
from wsproto.events import TextMessage

from bridge.gateways.bosh import (
    NS_HTTPBIND, NS_XBOSH, BoshError, BoshService, parse_request, peek_attributes, render_body, serialise,
)
from bridge.gateways.http import HTTPFactory
from tests.unit.fuzzing import (
    ATTRIBUTE_TEXT, TARGETS, XML_TOKENS, add_users, chunked, elements, mutated, no_logged_failures, pieces,
    shape, target, xml_soup,
)
from tests.unit.helpers import Harness
from tests.unit.test_bosh import BoshClient, FakeRequest, FakeResponder
from tests.unit.test_fuzz_c2s import C2S
from tests.unit.test_http import HTTPClient, http_config
from tests.unit.test_websocket import WebSocketClient

SECRET = b"secret beside the web client's folder"


@functools.cache
def web_root():
    """A web client folder with one file, and a secret file next to it that must never be served."""
    top = tempfile.mkdtemp(prefix="bridge-fuzz-")
    atexit.register(shutil.rmtree, top, True)
    os.mkdir(os.path.join(top, "web"))
    with open(os.path.join(top, "web", "converse.min.js"), "wb") as handle:
        handle.write(b"/* converse */")
    with open(os.path.join(top, "secret.txt"), "wb") as handle:
        handle.write(SECRET)
    return os.path.join(top, "web")


def listener(**http):
    """A server with a BOSH and WebSocket listener: its harness and HTTP factory."""
    harness = Harness(http_config(allowed_origins=["https://allowed.example"], web_client_dir=web_root(), **http))
    add_users(harness, "alice", "bob")
    service = BoshService(harness.server, harness.config.http)
    return harness, service, HTTPFactory(harness.server, harness.config.http, service, tls=False)


CREATE = (f"<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}' rid='100' to='localhost' wait='60' hold='1' "
          "ver='1.6' xmpp:version='1.0'/>").encode()
HTTP_SEEDS = [
    b"GET / HTTP/1.1\r\nHost: localhost:5280\r\n\r\n",
    b"GET /converse/converse.min.js HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: \"x\"\r\n\r\n",
    b"POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(CREATE), CREATE),
    b"POST /http-bind HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n<body\r\n0\r\n\r\n",
    b"OPTIONS /http-bind HTTP/1.1\r\nHost: localhost\r\nOrigin: https://allowed.example\r\n"
    b"Access-Control-Request-Method: POST\r\n\r\n",
    b"GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n"
    b"\x81\x85\x00\x00\x00\x00<open",
    b"HEAD / HTTP/1.0\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
]
HTTP_TOKENS = [
    b"\r\n", b"\r\n\r\n", b" ", b":", b"Content-Length: ", b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n",
    b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Upgrade: websocket\r\n",
    b"Origin: https://evil.example\r\n", b"Origin: https://allowed.example\r\n", b"Host: \r\n", b"HTTP/1.0",
    b"HTTP/2", b"9" * 30, b"0" * 5000, b"/http-bind", b"/xmpp-websocket", b"/converse/", b"../", b"..%2f", b"%2e%2e/",
    b"%00", b"%ff", b"//", b"\\", b"?x=1", b"HEAD", b"POST", b"PUT", b"\x00", b"\xff", b"\xc3\xa9", b"\t",
    b"secret.txt", CREATE,
]


@target("http-requests", chunked(st.lists(mutated(HTTP_SEEDS, HTTP_TOKENS), min_size=1, max_size=3).map(b"".join)),
        examples=60)
def http_requests(value):
    """No exception and no logged failure from any bytes, the same answers however they are cut, and never
    a byte of a file outside the web client's folder."""
    data, cuts = value
    outputs = []
    for chunks in ([data], pieces(data, cuts)):
        with no_logged_failures():
            harness, _, factory = listener()
            client = HTTPClient(factory)
            for chunk in chunks:
                client.send(chunk)
            harness.clock.advance(0)
            output = client.transport.value()
            harness.clock.advance(3600)
            client.drop()
        assert SECRET not in output
        # (sids and stream ids are random: the statuses are compared)
        outputs.append(re.findall(rb"HTTP/1\.1 (\d\d\d) ", output))
    assert outputs[0] == outputs[1]


BOSH_SEEDS = [CREATE, f"<body xmlns='{NS_HTTPBIND}' rid='101' sid='x'><message to='bob@localhost'><body>hi</body>"
              f"</message></body>".encode(), f"<?xml version='1.0'?><body xmlns='{NS_HTTPBIND}' rid='1' "
              f"type='terminate'/>".encode()]


@target("bosh-body", st.one_of(mutated(BOSH_SEEDS, XML_TOKENS), xml_soup()), examples=100)
def bosh_body(data):
    """A request body parses to a <body/> or raises BoshError; its first attributes are read without error."""
    try:
        body = parse_request(data, 4096)
    except BoshError:
        pass
    else:
        assert (body.uri, body.name) == (NS_HTTPBIND, "body")
    peek_attributes(data)


@target("bosh-roundtrip", st.tuples(st.lists(elements(), max_size=3), st.dictionaries(
        st.sampled_from(("sid", "rid", "type", "condition", "authid")), ATTRIBUTE_TEXT, max_size=3)), examples=30)
def bosh_round_trip(value):
    """A response body written by render_body and serialise reads back, attributes and payloads, through
    parse_request."""
    payloads, attributes = value
    body = parse_request(render_body([serialise(payload) for payload in payloads], attributes), 10**6)
    assert {name: body.getAttribute(name) for name in attributes} == attributes
    assert [shape(payload) for payload in body.elements()] == [shape(payload) for payload in payloads]


BOSH_ATTRIBUTES = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(("terminate", "x")), "pause": st.sampled_from(("10", "0", "x", "99999999999")),
    "xmpp:restart": st.sampled_from(("true", "false")), "key": st.sampled_from(("a", "")),
    "newkey": st.sampled_from(("86f7e437faa5a7fce15d1ddcb9eaeaea377667b8", "b")), "to": st.just("localhost"),
    "wait": st.sampled_from(("0", "5", "x")), "hold": st.sampled_from(("0", "1", "3")),
    "ver": st.sampled_from(("1.6", "2.0", "x")), "content": st.just("text/plain")})
BOSH_OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("post"), st.integers(-3, 4), st.sampled_from(("session", "unknown", None)), BOSH_ATTRIBUTES,
              st.lists(elements(C2S, max_depth=2), max_size=2), st.booleans()),
    st.tuples(st.just("raw"), st.integers(-1, 2), mutated(BOSH_SEEDS, XML_TOKENS)),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(st.just("advance"), st.sampled_from((0, 1.0, 5.0, 30.0, 61.0, 200.0))),
), min_size=1, max_size=10)


def body_bytes(attributes, payloads):
    head = f"<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}'" + "".join(
        f" {name}='{value}'" for name, value in attributes.items() if value is not None)
    inner = "".join(payload.toXml() for payload in payloads)
    return (f"{head}>{inner}</body>" if inner else head + "/>").encode("utf-8")


@target("bosh-session", st.tuples(st.booleans(), BOSH_OPERATIONS), examples=40)
def bosh_session(value):
    """Generated requests (any rid, sid, attributes and payloads), lost connections and time: every request
    is answered exactly once, nothing is logged as a failure, and every session ends."""
    logged_in, operations = value
    with no_logged_failures():
        harness, service, _ = listener()
        client = BoshClient(service)
        if logged_in:
            client.login("alice@localhost/bosh")
        else:
            client.create()
        for operation in operations:
            kind = operation[0]
            if kind == "post":
                _, step, sid, attributes, payloads, secure = operation
                client.rid += step
                attributes = {"rid": client.rid, "sid": {"session": client.sid, "unknown": "nope"}.get(sid),
                              **attributes}
                responder = FakeResponder()
                service.handle(FakeRequest(body_bytes(attributes, payloads), secure=secure), responder)
                client.responders.append(responder)
            elif kind == "raw":
                client.rid += operation[1]
                responder = FakeResponder()
                service.handle(FakeRequest(operation[2]), responder)
                client.responders.append(responder)
            elif kind == "drop":
                if client.responders:
                    client.responders[operation[1] % len(client.responders)].drop()
            else:
                harness.clock.advance(operation[1])
        for _ in range(50):
            harness.clock.advance(60)
    unanswered = [responder for responder in client.responders if not (responder.answered or responder.lost)]
    assert not unanswered, f"{len(unanswered)} requests never answered"
    assert not service.sessions, "a session is never forgotten"


def frame(opcode, payload, fin=True, rsv=0, masked=True, length=None):
    """A WebSocket frame as a client writes it (masked), with a length field that may lie."""
    length = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask | length])
    elif length < 2**16:
        head += bytes([mask | 126]) + struct.pack(">H", length)
    else:
        head += bytes([mask | 127]) + struct.pack(">Q", length)
    if masked:
        key = b"\x01\x02\x03\x04"
        head += key
        payload = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return head + payload


FRAMES = st.builds(frame, st.sampled_from((0, 1, 2, 8, 9, 10, 3, 11, 15)), st.binary(max_size=40) | xml_soup(8),
                   st.booleans(), st.integers(0, 7), st.booleans(), st.none() | st.sampled_from((0, 125, 126,
                                                                                                 65535, 2**63)))
WEBSOCKET_OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("text"), elements(C2S, max_depth=2).map(lambda element: element.toXml())),
    st.tuples(st.just("text"), st.sampled_from((
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>",
        "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", "</stream:stream>", "<a/><b/>", "<!-- x -->", " "))),
    st.tuples(st.just("raw"), st.lists(FRAMES, min_size=1, max_size=3).map(b"".join)),
    st.tuples(st.just("advance"), st.sampled_from((0, 1.0, 30.0, 61.0, 200.0))),
), min_size=1, max_size=8)


@target("websocket", st.tuples(st.booleans(), WEBSOCKET_OPERATIONS), examples=40)
def websocket_stream(value):
    """Any frames and messages after the upgrade: no logged failure, and what the server writes is
    well-formed XML in text messages."""
    logged_in, operations = value
    with no_logged_failures():
        harness, _, factory = listener()
        client = WebSocketClient(factory)
        assert client.accepted
        if logged_in:
            client.login("alice")
        for operation in operations:
            kind = operation[0]
            if kind == "text":
                if client.ws.state is ConnectionState.OPEN:
                    client.channel.dataReceived(client.ws.send(TextMessage(data=operation[1])))
            elif kind == "raw":
                client.channel.dataReceived(operation[1])
            else:
                harness.clock.advance(operation[1])
            client.received()
        harness.clock.advance(3600)
        client.received()
        client.drop()


class HTTPFuzzTests(SynchronousTestCase):
    def test_requests(self):
        """Mutated requests on an HTTP connection: no failure, no file outside the web folder, same answers
        however cut."""
        TARGETS["http-requests"].run()

    def test_bosh_bodies(self):
        """BOSH bodies parse or raise BoshError."""
        TARGETS["bosh-body"].run()

    def test_bosh_round_trip(self):
        """What a BOSH response carries reads back as it was written."""
        TARGETS["bosh-roundtrip"].run()

    def test_bosh_sessions(self):
        """A BOSH session under generated requests answers each once and ends."""
        TARGETS["bosh-session"].run()

    def test_websocket(self):
        """A WebSocket stream under arbitrary frames logs no failure and writes well-formed XML."""
        TARGETS["websocket"].run()

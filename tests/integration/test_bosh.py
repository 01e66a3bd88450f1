"""BOSH (XEP-0124, XEP-0206) against the real server: a raw HTTP client (http.client) for the
edge cases, and a full login whose messages go to and from a slixmpp client on TCP."""

import asyncio
import base64
import http.client
import re
import secrets

import pytest

from bridge.core.xmlstream import parse_element
from tests.unit.helpers import scram_login

from .harness import TIMEOUT, Clients, next_item

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
HTTP_LISTENING = re.compile(r"listening http on 127\.0\.0\.1:(\d+)")
USERS = ("bosh-web@localhost", "bosh-tcp@localhost", "bosh-edge@localhost")


def http_port(process, timeout=TIMEOUT):
    """The port of the plain HTTP listener, from the server's log."""
    if "http" in process.ports:
        return process.ports["http"]
    for line in list(process.lines):
        match = HTTP_LISTENING.search(line)
        if match:
            return int(match.group(1))
    line = process.wait_for_line(HTTP_LISTENING.search, timeout, what="'listening http' line")
    return int(HTTP_LISTENING.search(line).group(1))


@pytest.fixture(scope="module")
def bosh_server(start_server):
    process = start_server("bosh", USERS)
    process.http_port = http_port(process)
    return process


def post(port, data, timeout=TIMEOUT):
    """One POST to /http-bind on a connection of its own: (status, headers, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/http-bind", body=data.encode("utf-8") if isinstance(data, str) else data,
                           headers={"Content-Type": "text/xml; charset=utf-8"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def body_text(attributes, payload=""):
    attrs = "".join(f" {name}='{value}'" for name, value in attributes.items() if value is not None)
    head = f"<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}'{attrs}"
    return f"{head}>{payload}</body>" if payload else head + "/>"


def parse_body(data):
    body = parse_element(data.decode("utf-8"))
    assert (body.uri, body.name) == (NS_HTTPBIND, "body"), data
    return body


class BoshHTTPClient:
    """A BOSH client on http.client: blocking requests, each on its own connection."""

    def __init__(self, port, wait=10):
        self.port = port
        self.wait = wait
        self.rid = secrets.randbelow(2 ** 40) + 1
        self.sid = None
        self.unread = []
        self.transcript = []

    def request(self, payload="", attrs=None, rid=None):
        """Post one request (the next rid unless given); (status, body bytes)."""
        if rid is None:
            self.rid += 1
            rid = self.rid
        attributes = {"rid": rid, "sid": self.sid}
        attributes.update(attrs or {})
        text = body_text(attributes, payload)
        self.transcript.append("C: " + text)
        status, headers, data = post(self.port, text, timeout=self.wait + TIMEOUT)
        self.transcript.append(f"S: {status} {data.decode('utf-8', 'replace')}")
        if status == 200:
            assert headers.get("Content-Type") == "text/xml; charset=utf-8", headers
            self.unread.extend(parse_body(data).elements())
        return status, data

    def create(self):
        attributes = {"rid": self.rid, "to": "localhost", "wait": self.wait, "hold": 1, "ver": "1.6",
                      "xml:lang": "en", "xmpp:version": "1.0"}
        status, data = self.request(attrs=attributes, rid=self.rid)
        assert status == 200, data
        self.sid = parse_body(data).getAttribute("sid")
        assert self.sid, data
        return data

    # what scram_login expects of a client
    def send(self, text):
        self.request(text)

    def received(self):
        found, self.unread = self.unread, []
        return found

    def login(self, jid, password):
        bare, _, resource = jid.partition("/")
        user, host = bare.split("@")
        self.create()
        self.received()
        outcome = scram_login(self, user, password)
        assert outcome.name == "success", "\n".join(self.transcript)
        self.request(attrs={"to": host, "xml:lang": "en", "xmpp:restart": "true"})
        features = self.received()
        assert features and features[-1].bind is not None, "\n".join(self.transcript)
        self.request(f"<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='{NS_BIND}'>"
                     f"<resource>{resource}</resource></bind></iq>")
        reply = self.received()[-1]
        assert reply.getAttribute("type") == "result", "\n".join(self.transcript)
        return str(reply.bind.jid)


def terminal_condition(data):
    body = parse_body(data)
    assert body.getAttribute("type") == "terminate", data
    return body.getAttribute("condition")


def test_login_and_messages_with_a_tcp_client(bosh_server):
    """A BOSH client logs in (SCRAM, restart, bind) and exchanges messages with slixmpp on TCP;
    the message for the BOSH client arrives on its held request."""

    async def scenario():
        async with Clients(bosh_server) as clients:
            tcp = await clients.login("bosh-tcp@localhost/tcp")
            web = BoshHTTPClient(bosh_server.http_port)
            jid = await asyncio.to_thread(web.login, "bosh-web@localhost/web",
                                          bosh_server.password("bosh-web@localhost"))
            assert jid == "bosh-web@localhost/web"

            message = ("<message xmlns='jabber:client' to='bosh-tcp@localhost/tcp' type='chat'>"
                       "<body>hello from BOSH</body></message>")
            held = asyncio.create_task(asyncio.to_thread(web.request, message))
            received = await next_item(tcp.messages, what="the message sent over BOSH")
            assert received["body"] == "hello from BOSH"
            assert received["from"] == "bosh-web@localhost/web"
            assert not held.done()

            tcp.send_message(mto="bosh-web@localhost/web", mbody="hello from TCP", mtype="chat")
            status, data = await asyncio.wait_for(held, TIMEOUT)
            assert status == 200
            assert b"<message xmlns='jabber:client'" in data, data
            stanza = web.received()[0]
            assert (stanza.name, stanza["from"], str(stanza.body)) == ("message", "bosh-tcp@localhost/tcp",
                                                                      "hello from TCP")

            status, data = await asyncio.to_thread(web.request, attrs={"type": "terminate"})
            assert terminal_condition(data) is None

    asyncio.run(scenario())


def test_repeated_rid_gets_the_same_response(bosh_server):
    """A request sent again with the same rid gets the same response bytes."""
    client = BoshHTTPClient(bosh_server.http_port)
    created = client.create()
    status, again = client.request(rid=client.rid)
    assert (status, again) == (200, created)
    first = base64.b64encode(b"n,,n=bosh-edge,r=abcdefghijklmnop").decode("ascii")
    auth = f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>{first}</auth>"
    status, challenge = client.request(auth)
    assert b"<challenge" in challenge, challenge
    status, repeated = client.request(auth, rid=client.rid)
    assert repeated == challenge


def test_rid_outside_the_window(bosh_server):
    """A rid beyond the window ends the session with item-not-found; the sid is then unknown."""
    client = BoshHTTPClient(bosh_server.http_port)
    client.create()
    status, data = client.request(rid=client.rid + 50)
    assert status == 200
    assert terminal_condition(data) == "item-not-found"
    status, data = client.request()
    assert terminal_condition(data) == "item-not-found"


def test_unknown_sid(bosh_server):
    """A request for a session that does not exist gets item-not-found."""
    client = BoshHTTPClient(bosh_server.http_port)
    client.sid = secrets.token_urlsafe(24)
    status, data = client.request()
    assert status == 200
    assert terminal_condition(data) == "item-not-found"


def test_oversize_body(bosh_server):
    """A body larger than max_request_bytes is refused (413 from the HTTP listener, or policy-violation)."""
    client = BoshHTTPClient(bosh_server.http_port)
    client.create()
    filler = "<presence xmlns='jabber:client'/>" * (262144 // 30)
    text = body_text({"rid": client.rid + 1, "sid": client.sid}, filler)
    status, _, data = post(bosh_server.http_port, text)
    assert status == 413 or (status == 200 and terminal_condition(data) == "policy-violation"), (status, data)


def test_restricted_xml(bosh_server):
    """A comment in a request is refused with bad-request and ends the session it names."""
    client = BoshHTTPClient(bosh_server.http_port)
    client.create()
    text = f"<body xmlns='{NS_HTTPBIND}' sid='{client.sid}' rid='{client.rid + 1}'><!-- no --></body>"
    status, _, data = post(bosh_server.http_port, text)
    assert terminal_condition(data) == "bad-request"
    client.rid += 1
    status, data = client.request()
    assert terminal_condition(data) == "item-not-found"

"""Stream management across transports: a session started over TCP is resumed over WebSocket."""

import socket
import time
import xml.etree.ElementTree as ET

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from .harness import NS_CLIENT, NS_SASL, TIMEOUT, RawClient, scram_login

NS_SM = "urn:xmpp:sm:3"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"


class WebSocketClient:
    """A blocking RFC 7395 client on wsproto: one XML element per text message."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending = []
        self.transcript = []
        self.sock.sendall(self.ws.send(Request(host="localhost", target="/xmpp-websocket", subprotocols=["xmpp"])))
        self._read_until(lambda event: isinstance(event, AcceptConnection))

    def _read_until(self, wanted):
        deadline = time.monotonic() + TIMEOUT
        while True:
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.transcript.append("S: " + event.data)
                    self.pending.append(ET.fromstring(event.data))
                if wanted(event):
                    return event
            remaining = deadline - time.monotonic()
            assert remaining > 0, "nothing expected from the server in time:\n" + "\n".join(self.transcript)
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            assert data, "the server closed the connection:\n" + "\n".join(self.transcript)
            self.ws.receive_data(data)

    def send(self, text):
        self.transcript.append("C: " + text)
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def next(self):
        if not self.pending:
            self._read_until(lambda event: isinstance(event, TextMessage))
        return self.pending.pop(0)

    def open(self):
        self.send(f"<open xmlns='{NS_FRAMING}' to='localhost' version='1.0'/>")
        assert self.next().tag == f"{{{NS_FRAMING}}}open"
        return self.next()

    def close(self):
        self.sock.close()


def stanzas(elements, name):
    return [e for e in elements if e.tag == f"{{{NS_CLIENT}}}{name}"]


def test_session_resumed_over_another_transport(server):
    """alice enables resumption over TCP and loses her connection; a message sent meanwhile is
    delivered when she resumes the same session over WebSocket, and bob never saw her go offline."""
    alice_password = server.password("xavier@localhost")
    bob = RawClient(server.port)
    alice = RawClient(server.port)
    ws = None
    try:
        bob.login("yvonne", server.password("yvonne@localhost"), resource="desk")
        alice.login("xavier", alice_password, resource="phone")
        alice.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
        enabled = alice.expect(f"{{{NS_SM}}}enabled")
        assert enabled.get("resume") == "true", alice.dump()
        alice.abort()

        bob.send("<message to='xavier@localhost/phone' type='chat' id='meanwhile'><body>still there?</body></message>")
        ws = WebSocketClient(server.ports["http"])
        features = ws.open()
        offered = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        assert "SCRAM-SHA-1" in offered, offered
        assert scram_login(ws, "xavier", alice_password).tag == f"{{{NS_SASL}}}success", "\n".join(ws.transcript)
        ws.open()
        ws.send(f"<resume xmlns='{NS_SM}' previd='{enabled.get('id')}' h='0'/>")
        resumed = ws.next()
        assert resumed.tag == f"{{{NS_SM}}}resumed", "\n".join(ws.transcript)
        received = []
        while not stanzas(received, "message"):
            received.append(ws.next())
        message = stanzas(received, "message")[0]
        assert (message.get("id"), message.get("from")) == ("meanwhile", "yvonne@localhost/desk")

        ws.send("<message to='yvonne@localhost/desk' type='chat' id='back'><body>yes</body></message>")
        reply = bob.next()
        while reply.tag != f"{{{NS_CLIENT}}}message":
            assert reply.get("type") != "unavailable", bob.dump()
            reply = bob.next()
        assert (reply.get("id"), reply.get("from")) == ("back", "xavier@localhost/phone")
    finally:
        bob.close()
        if ws is not None:
            ws.close()

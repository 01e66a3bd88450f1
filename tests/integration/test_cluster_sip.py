"""SIP registrations in a cluster (docs/scaling.md): a phone registers on node1; a message from a user
on node2 reaches it through node1, and, once node1 is killed, through node2, which took the
registration over."""

import asyncio
import os
import signal
import socket
import uuid

import pytest

from .harness import REDIS_SERVER, TIMEOUT, Clients
from .test_cluster import LEASE_SECONDS, seen_by, started_cluster
from .test_sip import SIP_SECTION, register_authorization

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package "
                                                             "redis-server; .ci/install-test-peers installs it)")
pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[cluster]')")

EXPIRES_SECONDS = 300  # far beyond the test: the registration must outlive its node


class UDPPhone:
    """A SIP phone of alice on a UDP socket: it registers (digest MD5) and answers MESSAGEs 200."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.call_id = f"{uuid.uuid4()}@127.0.0.1"

    def register_text(self, cseq, auth=""):
        return (f"REGISTER sip:localhost SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-{uuid.uuid4().hex};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=phone\r\nTo: <sip:alice@localhost>\r\n"
                f"Call-ID: {self.call_id}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:alice@127.0.0.1:{self.port}>\r\nExpires: {EXPIRES_SECONDS}\r\n{auth}"
                f"Content-Length: 0\r\n\r\n").encode()

    def register(self, node_port, password):
        """The final answer's text to a REGISTER answered with its challenge's MD5 digest."""
        self.sock.sendto(self.register_text(1), ("127.0.0.1", node_port))
        challenge = self.sock.recvfrom(65535)[0].decode()
        assert challenge.startswith("SIP/2.0 401 "), challenge
        self.sock.sendto(self.register_text(2, register_authorization(challenge, password)), ("127.0.0.1", node_port))
        return self.sock.recvfrom(65535)[0].decode()

    def next_message(self, body):
        """(the text of the MESSAGE that ends with ``body``, where it came from); every request is answered
        200 (a retransmission of an earlier MESSAGE among them)."""
        while True:
            data, address = self.sock.recvfrom(65535)
            text = data.decode()
            head = text.split("\r\n\r\n", 1)[0]
            if text.startswith("SIP/2.0"):
                continue
            copied = [line for line in head.split("\r\n")[1:]
                      if line.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
            answer = "SIP/2.0 200 OK\r\n" + "".join(line + "\r\n" for line in copied) + "Content-Length: 0\r\n\r\n"
            self.sock.sendto(answer.encode(), address)
            if text.startswith("MESSAGE ") and text.rstrip().endswith(body):
                return text, address

    def close(self):
        self.sock.close()


@pytest.fixture
def sip_cluster(tmp_path):
    """A redis-server of its own and two nodes with the SIP gateway, each of which has seen the other."""
    yield from started_cluster(str(tmp_path), sip=SIP_SECTION, wait_for=("c2s", "c2s-direct-tls", "sip-udp"))


def test_registration_survives_its_node(sip_cluster):
    """alice's phone registers on node1.  bob on node2 writes to alice (no XMPP session): node2 hands the
    message to node1, whose MESSAGE reaches the phone.  node1 is killed with SIGKILL; node2 takes its
    registrations over, and bob's next message reaches the phone as MESSAGE from node2's socket, well
    before the registration expires."""
    _, (node1, node2) = sip_cluster
    phone = UDPPhone()
    try:
        answer = phone.register(node1.ports["sip-udp"], node1.password("alice@localhost"))
        assert answer.startswith("SIP/2.0 200 "), answer
        node1.wait_for_line(lambda line: "SIP phones of alice@localhost are the session" in line, TIMEOUT,
                            what="alice's phone session on node1")

        async def scenario():
            async with Clients(node2) as clients:
                bob = await clients.login("bob@localhost/pc", port=node2.port)
                # carol's session on node1 is published after alice's phones: once her presence reaches
                # node2, node2 knows the phones' session (one ordered inbox).
                carol = await clients.login("carol@localhost/pc", port=node1.port)
                await seen_by(carol, bob)
                bob.send_message(mto="alice@localhost", mbody="through node1", mtype="chat")
                text, source = await asyncio.to_thread(phone.next_message, "through node1")
                assert source[1] == node1.ports["sip-udp"], (source, text)

                os.kill(node1.process.pid, signal.SIGKILL)
                node1.process.wait()
                carol.abort()
                await asyncio.to_thread(node2.wait_for_line,
                                        lambda line: "took over 1 sip record(s) of node node1" in line,
                                        LEASE_SECONDS * 10, "node2 taking over node1's registrations")
                bob.send_message(mto="alice@localhost", mbody="through node2", mtype="chat")
                text, source = await asyncio.to_thread(phone.next_message, "through node2")
                assert source[1] == node2.ports["sip-udp"], (source, text)

        asyncio.run(scenario())
    finally:
        phone.close()


def test_register_refused_without_redis(sip_cluster):
    """Redis is killed: node1 answers a REGISTER 503 with Retry-After (one lease), as it refuses XMPP
    binding, and binds no phones' session."""
    redis_server, (node1, _) = sip_cluster
    os.kill(redis_server.process.pid, signal.SIGKILL)
    redis_server.process.wait()
    node1.wait_for_line(lambda line: "Redis unreachable" in line, LEASE_SECONDS * 10, what="node1 without Redis")
    phone = UDPPhone()
    try:
        phone.sock.sendto(phone.register_text(1), ("127.0.0.1", node1.ports["sip-udp"]))
        answer = phone.sock.recvfrom(65535)[0].decode()
        assert answer.startswith("SIP/2.0 503 "), answer
        assert f"\r\nRetry-After: {LEASE_SECONDS}\r\n" in answer, answer
        assert not any("SIP phones of alice@localhost" in line for line in node1.lines)
    finally:
        phone.close()

"""The multiplexor (``twistd bridge-mux``, docs/scaling.md) in front of two nodes of one Redis cluster."""

import asyncio
import http.client
import os
import signal
import socket
import ssl

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request, TextMessage

from tests.pki import CertificateAuthority

from . import test_bosh
from .conftest import RUNNING, accounts_for
from .harness import (REDIS_SERVER, Clients, RawClient, RedisProcess, child, next_item, parse_stream_document,
                      start_mux, start_nodes, stream_error_conditions, stream_header)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package "
                                                             "redis-server; .ci/install-test-peers installs it)")
pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[cluster]')")

ACCOUNTS = accounts_for(["alice@localhost", "bob@localhost"])
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"


def write_secret(directory):
    path = os.path.join(directory, "mux.secret")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as handle:
        handle.write("a secret the mux and its nodes share\n")
    return path


@pytest.fixture
def mux_and_nodes(tmp_path):
    """A Redis, two nodes whose mux links are TLS (a certificate from a test authority), and a mux in
    front of them; all stopped at the end."""
    directory = str(tmp_path)
    authority = CertificateAuthority(directory)
    node_cert, node_key = authority.issue(directory, ["localhost"], file_name="node")
    secret = write_secret(directory)
    redis_server = RedisProcess(directory).start()
    processes = []
    try:
        nodes = start_nodes(directory, redis_server, 2, ACCOUNTS,
                            c2s_options=f'certificate = "{node_cert}"\nprivate_key = "{node_key}"',
                            tables=f'[mux_listener]\ntls_endpoints = ["tcp:0:interface=127.0.0.1"]\n'
                                   f'secret_file = "{secret}"\n', wait_for=("c2s", "mux-tls"))
        processes.extend(nodes)
        RUNNING.extend(nodes)
        for index, node in enumerate(nodes):
            other = f"node{2 - index}"
            node.wait_for_line(lambda line: f"cluster: node {other} is a member" in line, 30,
                               what=f"{other} seen by node{index + 1}")
        mux = start_mux(directory, nodes, "mux-tls", secret, ACCOUNTS,
                        options='direct_tls_endpoints = ["tcp:0:interface=127.0.0.1"]\n'
                                'https_endpoints = ["tcp:0:interface=127.0.0.1"]\n'
                                f'node_tls = true\nnode_ca_file = "{authority.ca_file}"\nnode_tls_name = "localhost"\n',
                        wait_for=("mux-c2s", "mux-c2s-direct-tls", "mux-https"))
        processes.append(mux)
        RUNNING.append(mux)
        yield mux, nodes
    finally:
        for process in processes:
            process.stop()
            RUNNING.remove(process)
        redis_server.stop()


async def landed_on(mux, client, nodes, listener="mux-tls"):
    """The node (of ``nodes``) that the mux handed ``client``'s connection to, from the mux's log; the mux
    reaches the nodes on their ``listener`` ports."""
    host, port = client.transport.get_extra_info("sockname")[:2]
    line = next(line for line in mux.lines if f"mux: client {host}:{port} to node" in line)
    return next(node for node in nodes if line.endswith(f"to node 127.0.0.1:{node.ports[listener]}"))


def test_clients_spread_and_fail_over(mux_and_nodes):
    """alice (STARTTLS) and bob (direct TLS) log in through the mux and land on different nodes;
    messages go both ways; bob's node is killed with SIGKILL: bob gets <system-shutdown/> from the mux,
    logs in again through the mux, lands on the surviving node, and alice's message reaches him there."""
    mux, nodes = mux_and_nodes
    mux_port, mux_tls_port = mux.ports["mux-c2s"], mux.ports["mux-c2s-direct-tls"]

    async def scenario():
        async with Clients(mux) as clients:
            alice = await clients.login("alice@localhost/a", port=mux_port)
            bob = await clients.login("bob@localhost/b", port=mux_tls_port, direct_tls=True)
            alice_node, bob_node = await landed_on(mux, alice, nodes), await landed_on(mux, bob, nodes)
            assert alice_node is not bob_node, "least-clients put both clients on one node"

            alice.send_message(mto="bob@localhost/b", mbody="hello across nodes", mtype="chat")
            message = await next_item(bob.messages, lambda m: m["body"] == "hello across nodes",
                                      what="alice's message at bob")
            assert message["from"] == "alice@localhost/a"
            bob.send_message(mto="alice@localhost/a", mbody="hello back", mtype="chat")
            await next_item(alice.messages, lambda m: m["body"] == "hello back", what="bob's reply at alice")

            os.kill(bob_node.process.pid, signal.SIGKILL)
            bob_node.process.wait()
            error = await next_item(bob.stream_errors, what="the mux's stream error to bob")
            assert child(error, f"{{{NS_STREAM_ERRORS}}}system-shutdown") is not None, error
            await bob.ended

            bob_again = await clients.login("bob@localhost/again", port=mux_port)
            assert await landed_on(mux, bob_again, nodes) is alice_node
            alice.send_message(mto="bob@localhost/again", mbody="welcome back", mtype="chat")
            message = await next_item(bob_again.messages, lambda m: m["body"] == "welcome back",
                                      what="alice's message at bob on the surviving node")
            assert message["from"] == "alice@localhost/a"

    asyncio.run(scenario())


def test_clear_text_is_refused_before_tls(mux_and_nodes):
    """A client that sends a stanza instead of <starttls/> gets <policy-violation/> from the mux itself
    and is disconnected, without being handed to a node."""
    mux, _ = mux_and_nodes
    handed_over = sum("mux: client" in line for line in mux.lines)
    raw = RawClient(mux.ports["mux-c2s"])
    try:
        raw.send(stream_header("localhost") + "<message to='bob@localhost'><body>in the clear</body></message>")
        root = parse_stream_document(raw.read_to_end())
    finally:
        raw.close()
    assert stream_error_conditions(root) == ["policy-violation"], raw.dump()
    assert sum("mux: client" in line for line in mux.lines) == handed_over


def test_bosh_through_the_mux(mux_and_nodes, monkeypatch):
    """bob logs in over BOSH through the mux's HTTPS listener (every request on a connection of its own,
    all handed to the same node); alice, an XMPP client of the mux, writes to him, and the message comes
    in his next BOSH response."""
    mux, nodes = mux_and_nodes
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def https_post(port, data, timeout):
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
        try:
            connection.request("POST", "/http-bind", body=data.encode("utf-8"),
                               headers={"Content-Type": "text/xml; charset=utf-8"})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    monkeypatch.setattr(test_bosh, "post", https_post)
    handed_over = sum("mux: client" in line for line in mux.lines)
    bob = test_bosh.BoshHTTPClient(mux.ports["mux-https"], wait=2)
    assert bob.login("bob@localhost/web", ACCOUNTS["bob@localhost"]) == "bob@localhost/web"
    lines = [line for line in mux.lines if "mux: client" in line][handed_over:]
    assert len(lines) >= 4 and len({line.rsplit(" to node ", 1)[1] for line in lines}) == 1, lines

    async def scenario():
        async with Clients(mux) as clients:
            alice = await clients.login("alice@localhost/a", port=mux.ports["mux-c2s"])
            alice.send_message(mto="bob@localhost/web", mbody="over BOSH", mtype="chat")
            for _ in range(10):
                await asyncio.to_thread(bob.request)
                bodies = [element for element in bob.received() if element.name == "message"]
                if bodies:
                    assert str(bodies[0].body) == "over BOSH", bodies[0].toXml()
                    return
            raise AssertionError("alice's message did not reach bob over BOSH:\n" + "\n".join(bob.transcript))

    asyncio.run(scenario())


def test_websocket_through_the_mux(mux_and_nodes):
    """A WebSocket client (RFC 7395, wsproto on a TLS socket) through the mux's HTTPS listener opens a
    stream and gets the node's stream features, SASL mechanisms included."""
    mux, _ = mux_and_nodes
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", mux.ports["mux-https"]), timeout=10),
                               server_hostname="localhost")
    connection = WSConnection(ConnectionType.CLIENT)
    texts, accepted = [], []
    try:
        sock.sendall(connection.send(Request(host="localhost", target="/xmpp-websocket", subprotocols=["xmpp"])))
        while not any("mechanisms" in text for text in texts):
            data = sock.recv(65536)
            assert data, f"the connection ended; received {texts}"
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, AcceptConnection):
                    accepted.append(event)
                    sock.sendall(connection.send(Message(
                        data="<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>")))
                elif isinstance(event, TextMessage):
                    texts.append(event.data)
    finally:
        sock.close()
    assert accepted and accepted[0].subprotocol == "xmpp"
    assert texts[0].startswith("<open"), texts


def test_session_resumed_through_the_mux_on_the_surviving_node(mux_and_nodes):
    """alice (slixmpp with xep_0198) and bob log in through the mux and land on different nodes;
    alice's node is killed with SIGKILL: the mux tells her <system-shutdown/>, her client connects to
    the mux again, lands on the surviving node and resumes its session there (<resumed/>, the same
    full JID, after the dead node's lease lapsed); bob's message reaches her there."""
    mux, nodes = mux_and_nodes
    mux_port = mux.ports["mux-c2s"]

    async def scenario():
        async with Clients(mux) as clients:
            alice = await clients.login("alice@localhost/a", port=mux_port, plugins={"xep_0198": {"window": 1}})
            bob = await clients.login("bob@localhost/b", port=mux_port)
            alice_node, bob_node = await landed_on(mux, alice, nodes), await landed_on(mux, bob, nodes)
            assert alice_node is not bob_node, "least-clients put both clients on one node"
            bob.send_message(mto="alice@localhost/a", mbody="before", mtype="chat")
            await next_item(alice.messages, lambda m: m["body"] == "before", what="bob's message at alice")
            resumed = asyncio.Queue()
            alice.add_event_handler("session_resumed", resumed.put_nowait)
            alice.add_event_handler("sm_failed", resumed.put_nowait)

            os.kill(alice_node.process.pid, signal.SIGKILL)
            alice_node.process.wait()
            error = await next_item(alice.stream_errors, what="the mux's stream error to alice")
            assert child(error, f"{{{NS_STREAM_ERRORS}}}system-shutdown") is not None, error
            await alice.ended
            alice.start(mux_port)
            answer = await next_item(resumed, timeout=30, what="<resumed/> or <failed/>")
            assert answer.name == "resumed", f"resumption failed: {answer}"
            assert str(alice.boundjid) == "alice@localhost/a"
            assert await landed_on(mux, alice, nodes) is bob_node
            bob.send_message(mto="alice@localhost/a", mbody="after", mtype="chat")
            await next_item(alice.messages, lambda m: m["body"] == "after", what="bob's message after resumption")

    asyncio.run(scenario())

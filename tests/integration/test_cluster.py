"""Several bridge nodes on one Redis (docs/scaling.md): users on different nodes, a node killed, Redis lost."""

import asyncio
import os
import signal

import pytest

from .conftest import RUNNING, accounts_for
from .harness import (wait_for_members, NS_BIND, NS_CLIENT, NS_STANZAS, REDIS_SERVER, TIMEOUT, Clients, RawClient, RedisProcess,
                      befriend, child, error_condition, next_item, start_nodes)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package "
                                                             "redis-server; .ci/install-test-peers installs it)")
pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[cluster]')")

ACCOUNTS = accounts_for(["alice@localhost", "bob@localhost", "carol@localhost", "dave@localhost"])
LEASE_SECONDS = 2


def started_cluster(directory, count=2, **options):
    """A redis-server of its own and ``count`` nodes, each of which has seen the others; all stopped
    at the end.  ``options``: for ``start_nodes`` (``sip``, ``wait_for``)."""
    redis_server = RedisProcess(directory).start()
    nodes = []
    try:
        nodes = start_nodes(directory, redis_server, count, ACCOUNTS, lease_seconds=LEASE_SECONDS, **options)
        RUNNING.extend(nodes)
        wait_for_members(nodes)
        yield redis_server, nodes
    finally:
        for node in nodes:
            node.stop()
            RUNNING.remove(node)
        redis_server.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """Two nodes for the tests that leave them running (each test with accounts of its own)."""
    yield from started_cluster(str(tmp_path_factory.mktemp("cluster")))


@pytest.fixture
def cluster(tmp_path):
    """Two nodes and a Redis for one test that kills one of them."""
    yield from started_cluster(str(tmp_path))


@pytest.fixture
def three_nodes(tmp_path):
    """Three nodes and a Redis for one test that kills one of them."""
    yield from started_cluster(str(tmp_path), count=3)


async def seen_by(sender, receiver, attempts=20):
    """``sender`` sends directed presence to ``receiver`` until one arrives: the receiver's node has
    then applied every session change the sender's node made before (one ordered inbox).  (A
    presence sent before the sender's node learnt of the receiver's session is dropped: hence again.)"""
    for attempt in range(attempts):
        sender.send_presence(pto=receiver.boundjid.full, pstatus=f"barrier {attempt}")
        try:
            await next_item(receiver.presences, lambda p: p["from"] == sender.boundjid.full
                            and p["status"].startswith("barrier"), timeout=TIMEOUT / attempts)
            return
        except AssertionError:
            continue
    raise AssertionError(f"no directed presence of {sender.boundjid} reached {receiver.boundjid}")


def test_messages_and_presence_cross_nodes(shared_cluster):
    """bob on node2 writes to alice's bare JID and she gets it on node1; her reply to his full JID
    reaches node2; alice's second resource on node2 and her first on node1 see each other's presence;
    bob's directed presence to alice reaches both her resources, one on each node."""
    _, (node1, node2) = shared_cluster

    async def scenario():
        async with Clients(node1) as clients:
            bob = await clients.login("bob@localhost/home", port=node2.port)
            alice_one = await clients.login("alice@localhost/one", port=node1.port)
            await seen_by(alice_one, bob)
            bob.send_message(mto="alice@localhost", mbody="across", mtype="chat")
            message = await next_item(alice_one.messages, what="bob's message on node1")
            assert (message["from"], message["body"]) == ("bob@localhost/home", "across")
            alice_one.send_message(mto="bob@localhost/home", mbody="back", mtype="chat")
            message = await next_item(bob.messages, what="alice's reply on node2")
            assert (message["from"], message["body"]) == ("alice@localhost/one", "back")

            alice_two = await clients.login("alice@localhost/two", port=node2.port)
            await next_item(alice_one.presences, lambda p: p["from"] == "alice@localhost/two"
                            and p["type"] == "available", what="presence of alice/two (node2) on node1")
            await next_item(alice_two.presences, lambda p: p["from"] == "alice@localhost/one"
                            and p["type"] == "available", what="presence of alice/one (node1) on node2")

            bob.send_presence(pto="alice@localhost", pstatus="directed")
            for client in (alice_one, alice_two):
                found = await next_item(client.presences, lambda p: p["from"] == "bob@localhost/home",
                                        what=f"bob's directed presence at {client.boundjid}")
                assert found["status"] == "directed"

    asyncio.run(scenario())


def test_presence_to_roster_contacts_on_another_node(shared_cluster):
    """carol and dave become contacts while both are on node1 (each node has its own storage here,
    so their rosters are node1's); dave then moves to node2, and carol's new presence, broadcast by
    node1 from her roster, reaches him there; when she goes offline he sees it too."""
    _, (node1, node2) = shared_cluster

    async def scenario():
        async with Clients(node1) as clients:
            carol = await clients.login("carol@localhost/home", port=node1.port)
            dave = await clients.login("dave@localhost/first", port=node1.port)
            await befriend(carol, dave)
            await dave.close()
            dave = await clients.login("dave@localhost/moved", port=node2.port)
            await seen_by(dave, carol)
            carol.send_presence(pstatus="busy", pshow="dnd")
            found = await next_item(dave.presences, lambda p: p["from"] == "carol@localhost/home"
                                    and p["status"] == "busy", what="carol's new presence on node2")
            assert found["show"] == "dnd"
            await carol.close()
            await next_item(dave.presences, lambda p: p["from"] == "carol@localhost/home"
                            and p["type"] == "unavailable", what="carol's unavailable presence on node2")

    asyncio.run(scenario())


def test_killed_node_leaves_the_table(three_nodes):
    """Of three nodes, bob's is killed with SIGKILL: once its lease expires, both survivors drop its
    sessions, so an IQ to bob's old full JID is answered service-unavailable by each instead of going
    to a dead node; alice's resources on both survivors hear that her resource on the dead node is
    unavailable; bob logs in again on node1 and alice's message from node3 reaches him there."""
    _, (node1, node2, node3) = three_nodes

    async def scenario():
        async with Clients(node1) as clients:
            alice = await clients.login("alice@localhost/one", port=node1.port)
            alice_three = await clients.login("alice@localhost/three", port=node3.port)
            alice_two = await clients.login("alice@localhost/two", port=node2.port)
            for survivor in (alice, alice_three):
                await next_item(survivor.presences, lambda p: p["from"] == "alice@localhost/two"
                                and p["type"] == "available", what=f"presence of alice/two at {survivor.boundjid}")
            bob = await clients.login("bob@localhost/home", port=node2.port, plugins={"xep_0199": {}})
            for survivor in (alice, alice_three):
                await seen_by(bob, survivor)
                reply = await survivor.query("get", "bob@localhost/home", "<ping xmlns='urn:xmpp:ping'/>")
                assert reply["type"] == "result", f"ping through node2 failed: {reply}"

            os.kill(node2.process.pid, signal.SIGKILL)
            node2.process.wait()
            bob.abort()
            alice_two.abort()
            for survivor, node in ((alice, node1), (alice_three, node3)):
                # (One survivor sees the lease gone and removes node2; the other may see it removed.)
                await asyncio.to_thread(node.wait_for_line, lambda line: "node node2 lost its lease" in line
                                        or "node node2 left the cluster" in line, LEASE_SECONDS * 5,
                                        "node2's lease expiry seen by a survivor")
                await next_item(survivor.presences, lambda p: p["from"] == "alice@localhost/two"
                                and p["type"] == "unavailable", what=f"alice/two announced gone to {survivor.boundjid}")
                reply = await survivor.query("get", "bob@localhost/home", "<ping xmlns='urn:xmpp:ping'/>")
                assert reply["type"] == "error" and error_condition(reply) == "service-unavailable", reply

            bob_again = await clients.login("bob@localhost/home", port=node1.port)
            await seen_by(bob_again, alice_three)
            alice_three.send_message(mto="bob@localhost", mbody="welcome back", mtype="chat")
            message = await next_item(bob_again.messages, lambda m: m["body"] == "welcome back",
                                      what="alice's message on node1")
            assert message["from"] == "alice@localhost/three"

    asyncio.run(scenario())


def test_node_without_redis_gives_up_its_sessions(cluster):
    """Redis is killed: the node refuses new sessions (bind answers resource-constraint) and, once its
    lease has lapsed, ends its sessions with system-shutdown rather than route from a stale table."""
    redis_server, (node1, _) = cluster

    async def scenario():
        async with Clients(node1) as clients:
            alice = await clients.login("alice@localhost/one", port=node1.port)
            os.kill(redis_server.process.pid, signal.SIGKILL)
            redis_server.process.wait()
            error = await next_item(alice.stream_errors, timeout=LEASE_SECONDS * 10,
                                    what="the stream error of a node without lease")
            assert child(error, "{urn:ietf:params:xml:ns:xmpp-streams}system-shutdown") is not None, error

    asyncio.run(scenario())
    raw = RawClient(node1.port)
    try:
        raw.secure()
        assert raw.authenticate_plain("bob", ACCOUNTS["bob@localhost"]).tag.endswith("success")
        raw.open()
        raw.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'><resource>r</resource></bind></iq>")
        reply = raw.expect(f"{{{NS_CLIENT}}}iq")
        assert reply.get("type") == "error", raw.dump()
        assert reply.find(f"{{{NS_CLIENT}}}error/{{{NS_STANZAS}}}resource-constraint") is not None, raw.dump()
    finally:
        raw.close()

"""s2s links in a cluster (docs/scaling.md): two nodes serve a.test on one Redis and federate with a
bridge serving c.test; the link to c.test is one node's, and the survivor's once that node is killed."""

import asyncio
import os
import signal

import pytest

from tests.pki import CertificateAuthority

from bridge.core.cluster import rendezvous

from .conftest import RUNNING
from .federation import S2S_PORT, logged, loopback_block, start_bridge, wait_logged
from .harness import REDIS_SERVER, Clients, RedisProcess, cluster_table, next_item
from .test_cluster import LEASE_SECONDS

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package "
                                                             "redis-server; .ci/install-test-peers installs it)")
pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[cluster]')")

PASSWORD = "cluster-s2s-password"
LINK_READY = r"link a\.test -> c\.test ready"


@pytest.fixture
def federation(tmp_path):
    """Redis, node1 and node2 of a.test (each on a loopback address of its own) and c.test; all stopped
    at the end."""
    ca = CertificateAuthority(tmp_path / "ca")
    address1, address2, address_c = loopback_block(3)
    redis_server = RedisProcess(str(tmp_path)).start()
    started = []
    try:
        certificate, key = ca.issue(tmp_path / "certs-a", ["a.test"])
        for name, address in (("node1", address1), ("node2", address2)):
            started.append(start_bridge(tmp_path / name, "a.test", address,
                                        {"alice@a.test": PASSWORD, "bob@a.test": PASSWORD},
                                        certificate=certificate, private_key=key, ca_file=ca.ca_file,
                                        routes={"c.test": f"{address_c}:{S2S_PORT}"},
                                        tables=cluster_table(redis_server, name, LEASE_SECONDS)))
            RUNNING.append(started[-1])
        certificate, key = ca.issue(tmp_path / "certs-c", ["c.test"])
        started.append(start_bridge(tmp_path / "c", "c.test", address_c, {"carol@c.test": PASSWORD},
                                    certificate=certificate, private_key=key, ca_file=ca.ca_file,
                                    routes={"a.test": f"{address2}:{S2S_PORT}"}))
        RUNNING.append(started[-1])
        for node, other in ((started[0], "node2"), (started[1], "node1")):
            wait_logged(node, f"cluster: node {other} is a member", 30)
        yield started
    finally:
        for process in started:
            process.stop()
            RUNNING.remove(process)
        redis_server.stop()


def test_one_node_links_and_a_survivor_takes_over(federation):
    """alice on node1 and bob on node2 write to carol@c.test: both messages reach her over the link of
    the node that owns c.test, and only that node opens one.  That node is killed with SIGKILL; the
    survivor's user writes again, and the survivor opens its own link."""
    node1, node2, c = federation
    owner_name = rendezvous(["node1", "node2"], "c.test")
    owner, survivor = (node1, node2) if owner_name == "node1" else (node2, node1)
    survivor_user = "alice@a.test/pc" if survivor is node1 else "bob@a.test/pc"

    async def scenario():
        async with Clients(node1) as clients:
            carol = await clients.login("carol@c.test/phone", PASSWORD, port=c.port)
            alice = await clients.login("alice@a.test/pc", PASSWORD, port=node1.port)
            bob = await clients.login("bob@a.test/pc", PASSWORD, port=node2.port)
            for sender in (alice, bob):
                sender.send_message(mto="carol@c.test/phone", mbody=f"from {sender.boundjid.bare}", mtype="chat")
            bodies = set()
            for _ in range(2):
                message = await next_item(carol.messages, what="a message from a.test")
                bodies.add(message["body"])
            assert bodies == {"from alice@a.test", "from bob@a.test"}
            await asyncio.to_thread(wait_logged, owner, LINK_READY)
            assert not logged(survivor, LINK_READY), survivor.tail(20)

            os.kill(owner.process.pid, signal.SIGKILL)
            owner.process.wait()
            (bob if survivor is node1 else alice).abort()
            await asyncio.to_thread(wait_logged, survivor, f"node {owner_name} (lost its lease|left the cluster)",
                                    LEASE_SECONDS * 10)
            sender = alice if survivor is node1 else bob
            sender.send_message(mto="carol@c.test/phone", mbody="after the takeover", mtype="chat")
            message = await next_item(carol.messages, lambda m: m["body"] == "after the takeover",
                                      what="the survivor's message")
            assert message["from"] == survivor_user
            await asyncio.to_thread(wait_logged, survivor, LINK_READY)

    asyncio.run(scenario())

"""What a session keeps, across the nodes of one Redis (docs/scaling.md): carbons and roster pushes to an
account's resources on other nodes, and XEP-0198 resumption on a survivor after SIGKILL of a node."""

import asyncio
import os
import signal

import pytest

from .harness import REDIS_SERVER, TIMEOUT, Clients, barrier, next_item
from .test_carbons import CarbonsClient
from .test_cluster import LEASE_SECONDS, seen_by, started_cluster

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package "
                                                             "redis-server; .ci/install-test-peers installs it)")
pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[cluster]')")

NS_SM = "urn:xmpp:sm:3"


@pytest.fixture
def cluster(tmp_path):
    yield from started_cluster(str(tmp_path))


async def logged(node, text):
    """Wait until ``text`` is in the node's log (its lines reach the test a little after its stanzas)."""
    if not any(text in line for line in node.lines):
        await asyncio.to_thread(node.wait_for_line, lambda line: text in line, TIMEOUT, repr(text))


async def carbons_login(clients, jid, port):
    client = clients.track(CarbonsClient(jid, clients.server.password(jid)))
    client.start(port)
    await asyncio.wait_for(client.started, TIMEOUT)
    await asyncio.wait_for(client.get_roster(), TIMEOUT)
    await client.plugin["xep_0280"].enable(timeout=TIMEOUT)
    client.send_presence()
    await barrier(client)
    return client


def test_carbons_and_roster_pushes_reach_resources_on_another_node(cluster):
    """alice has a resource on each node, both with carbons enabled by slixmpp's xep_0280: what bob
    (node1) sends to alice/one (node1) reaches alice/two (node2) as a received carbon; what alice/one
    sends reaches alice/two as a sent carbon, and what alice/two sends reaches alice/one; a roster item
    alice/one adds is pushed to alice/two."""
    _, (node1, node2) = cluster

    async def scenario():
        async with Clients(node1) as clients:
            bob = await clients.login("bob@localhost/desk", port=node1.port)
            one = await carbons_login(clients, "alice@localhost/one", node1.port)
            two = await carbons_login(clients, "alice@localhost/two", node2.port)
            await seen_by(two, one)  # node1 has alice/two's record, carbons and roster marks included
            await seen_by(one, two)

            bob.send_message(mto="alice@localhost/one", mbody="to one", mtype="chat")
            await next_item(one.messages, lambda m: m["body"] == "to one", what="bob's message at alice/one")
            carbon = await next_item(two.carbons_received, what="the received carbon on node2")
            assert carbon["from"] == "alice@localhost"
            assert (carbon["carbon_received"]["from"], carbon["carbon_received"]["body"]) == (
                "bob@localhost/desk", "to one")

            one.send_message(mto="bob@localhost", mbody="from one", mtype="chat")
            carbon = await next_item(two.carbons_sent, what="the sent carbon on node2")
            assert carbon["carbon_sent"]["body"] == "from one"
            two.send_message(mto="bob@localhost", mbody="from two", mtype="chat")
            carbon = await next_item(one.carbons_sent, what="the sent carbon on node1")
            assert carbon["carbon_sent"]["body"] == "from two"

            await one.query("set", None, "<query xmlns='jabber:iq:roster'><item jid='carol@localhost' "
                                         "name='Carol'/></query>")
            push = await next_item(two.roster_pushes, lambda iq: "carol@localhost" in
                                   {str(jid) for jid in iq["roster"]["items"]}, what="the roster push on node2")
            assert push["roster"]["items"]["carol@localhost"]["name"] == "Carol"

    asyncio.run(scenario())


def test_session_resumed_on_the_survivor_after_sigkill(cluster):
    """alice (slixmpp with xep_0198) is on node2 with carbons enabled; node2 is killed with SIGKILL; her
    client connects to node1 and resumes: node1 answers <resumed/> once node2's lease lapsed, with her
    full JID and stream management counts intact.  bob's message sent to her full JID after the kill
    (into node2's dead inbox) reaches her, as do later ones; her carbons are still enabled; bob hears
    alice's other resource sees her available."""
    _, (node1, node2) = cluster

    async def scenario():
        async with Clients(node1) as clients:
            bob = await clients.login("bob@localhost/desk", port=node1.port)
            alice = await clients.login("alice@localhost/phone", port=node2.port,
                                        plugins={"xep_0198": {"window": 1}, "xep_0280": {}})
            await alice.plugin["xep_0280"].enable(timeout=TIMEOUT)
            assert alice.plugin["xep_0198"].sm_id, "resumption was not enabled"
            await seen_by(alice, bob)
            bob.send_message(mto="alice@localhost/phone", mbody="before", mtype="chat")
            await next_item(alice.messages, lambda m: m["body"] == "before", what="the message before the kill")
            await barrier(alice)  # her <r/> answered: node2 wrote her handled count to Redis
            resumed = asyncio.Queue()
            alice.add_event_handler("session_resumed", resumed.put_nowait)
            failed = asyncio.Queue()
            alice.add_event_handler("sm_failed", failed.put_nowait)
            carbons = asyncio.Queue()
            alice.add_event_handler("carbon_sent", carbons.put_nowait)

            os.kill(node2.process.pid, signal.SIGKILL)
            node2.process.wait()
            await asyncio.wait_for(alice.ended, TIMEOUT)
            bob.send_message(mto="alice@localhost/phone", mbody="in the gap", mtype="chat")
            await barrier(bob)

            alice.start(node1.port)
            done, _ = await asyncio.wait([asyncio.ensure_future(resumed.get()), asyncio.ensure_future(failed.get())],
                                         timeout=LEASE_SECONDS * 10, return_when=asyncio.FIRST_COMPLETED)
            assert done, "neither <resumed/> nor <failed/> from node1"
            answer = done.pop().result()
            assert answer.name == "resumed", f"resumption failed: {answer}"
            assert str(alice.boundjid) == "alice@localhost/phone"
            await logged(node1, "of a dead node resumed from")

            await next_item(alice.messages, lambda m: m["body"] == "in the gap", timeout=LEASE_SECONDS * 10,
                            what="the message sent into the dead node's inbox")
            await logged(node1, "entries that node node2 never read")
            bob.send_message(mto="alice@localhost/phone", mbody="after", mtype="chat")
            await next_item(alice.messages, lambda m: m["body"] == "after", what="the message after resumption")
            other = await clients.login("alice@localhost/desk", port=node1.port)
            await next_item(other.presences, lambda p: p["from"] == "alice@localhost/phone",
                            what="the resumed session's presence at alice/desk")
            other.send_message(mto="bob@localhost", mbody="from the desk", mtype="chat")
            carbon = await next_item(carbons, what="a sent carbon at the resumed session")
            assert carbon["carbon_sent"]["body"] == "from the desk"

    asyncio.run(scenario())

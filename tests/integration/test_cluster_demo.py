"""Issue 16's demonstration (docs/scaling.md): three bridge nodes, each its own twistd process, sharing one
PostgreSQL and one Redis, and a multiplexor (``twistd bridge-mux``) in front; slixmpp users spread over the
nodes through the multiplexor and directly.  Messages and presence cross nodes; one node is killed with
SIGKILL in the middle of a stream of messages to its users, who log in again at once (through the
multiplexor, or directly to a survivor); every message sent to them is then accounted for by its unique
body: delivered live, or delivered from offline storage, or found in their archive (MAM), and none
delivered twice.

MUC across nodes, XEP-0198 resumption across nodes and the queues' ownership are other work of issue 16
and are not part of this test."""

import asyncio
import collections
import os
import signal
import time

import pytest

from .conftest import RUNNING, accounts_for
from .harness import (wait_for_members, REDIS_SERVER, TIMEOUT, Clients, RedisProcess, ServerProcess, add_users, barrier, befriend,
                      child, cluster_table, next_item, start_mux, write_config)
from .postgresql import PostgreSQLServer, skip_reason
from .test_cluster import seen_by
from .test_postgresql import bridgectl
from .test_mux import landed_on, write_secret

POSTGRESQL_MISSING = skip_reason()
pytestmark = [
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package redis-server; "
                                                    ".ci/install-test-peers installs it)"),
    pytest.mark.skipif(POSTGRESQL_MISSING is not None, reason=str(POSTGRESQL_MISSING)),
]
pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[cluster]')")

USERS = ("ann", "ben", "cid", "dee", "eve", "fay", "gus")
ACCOUNTS = accounts_for([f"{user}@localhost" for user in USERS])
LEASE_SECONDS = 2
PLUGINS = {"xep_0030": {}, "xep_0059": {}, "xep_0313": {}, "xep_0203": {}}
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
ROUNDS_BEFORE_AND_AFTER = 10


def start_pool(directory, redis_server, database, secret, count=3):
    """``count`` nodes on one PostgreSQL database (migrated and given the accounts once) and one Redis, each
    with a clear-text [mux_listener] on loopback; started, each having seen the others."""
    nodes = []
    try:
        for number in range(1, count + 1):
            node_directory = os.path.join(directory, f"node{number}")
            os.makedirs(node_directory)
            tables = (cluster_table(redis_server, f"node{number}", LEASE_SECONDS)
                      + f"[storage]\nbackend = 'postgresql'\npostgresql_dsn = '{database.dsn}'\n"
                        "postgresql_retry_interval_seconds = 0.2\n"
                      + f'[mux_listener]\nendpoints = ["tcp:0:interface=127.0.0.1"]\nsecret_file = "{secret}"\n')
            config_path = write_config(node_directory, tables=tables)
            if number == 1:
                bridgectl(config_path, "migrate")
                add_users(config_path, ACCOUNTS)
            node = ServerProcess(config_path, ACCOUNTS)
            nodes.append(node)
            RUNNING.append(node)
            node.start(wait_for=("c2s", "mux"))
        wait_for_members(nodes)
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def stop_all(processes):
    for process in processes:
        process.stop()
        if process in RUNNING:
            RUNNING.remove(process)


@pytest.fixture
def pool(tmp_path):
    """PostgreSQL, Redis, three nodes and a multiplexor, all of the test's own; all stopped at the end."""
    directory = str(tmp_path)
    database = PostgreSQLServer().init().start().create_database()
    redis_server = None
    processes = []
    try:
        redis_server = RedisProcess(directory).start()
        secret = write_secret(directory)
        processes.extend(start_pool(directory, redis_server, database, secret))
        processes.append(start_mux(directory, processes, "mux", secret, ACCOUNTS, options="direct_tls_endpoints = []\n"))
        RUNNING.append(processes[-1])
        yield database, processes[:3], processes[3]
    finally:
        stop_all(processes)
        if redis_server is not None:
            redis_server.stop()
        database.remove()


class Ledger:
    """Each message sent to a victim, by its unique body, and every way it came back."""

    def __init__(self):
        self.sent = {}  # body -> recipient's bare JID
        self.live = collections.Counter()
        self.offline = collections.Counter()
        self.archived = collections.Counter()

    def watch(self, client):
        """Count what ``client`` receives: offline messages carry a delay stamp (XEP-0203), live ones none."""
        def received(message):
            body = str(message["body"])
            if body in self.sent:
                stamped = message.xml.find("{urn:xmpp:delay}delay") is not None
                (self.offline if stamped else self.live)[body] += 1

        client.add_event_handler("message", received)
        return client

    def lost(self):
        return sorted(body for body in self.sent
                      if not (self.live[body] or self.offline[body] or self.archived[body]))

    def duplicated(self):
        return sorted(body for body in self.sent
                      if self.live[body] + self.offline[body] > 1 or self.archived[body] > 1)


async def traffic(senders, victims, ledger, rounds=None, until=None):
    """Each sender writes one message to each victim's bare JID a round, and waits for its node's answer to a
    ping before the next: ``rounds`` rounds, or until the future ``until`` is done."""
    done = 0
    while (rounds is not None and done < rounds) or (until is not None and not until.done()):
        for sender in senders:
            for victim in victims:
                body = f"{sender.boundjid.user} to {victim} #{len(ledger.sent)}"
                ledger.sent[body] = victim
                sender.send_message(mto=victim, mbody=body, mtype="chat")
        await asyncio.gather(*(barrier(sender) for sender in senders))
        done += 1


async def collect_archive(client):
    """The bodies of the client's whole archive (MAM), pages of 250."""
    bodies = collections.Counter()
    async for message in client.plugin["xep_0313"].iterate(jid=client.boundjid.bare, rsm={"max": 250}):
        bodies[str(message["mam_result"]["forwarded"]["stanza"]["body"])] += 1
    return bodies


def offline_drained(database, users, timeout=TIMEOUT * 3):
    """Wait until PostgreSQL holds no offline message of ``users`` (each row is deleted once handed out)."""
    import psycopg

    with psycopg.connect(database.dsn, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        query = "SELECT COUNT(*) FROM queue WHERE store = 'offline' AND \"user\" = ANY(%s)"
        while (left := conn.execute(query, (list(users),)).fetchone()[0]):
            assert time.monotonic() < deadline, f"{left} offline messages of {users} still stored after {timeout}s"
            conn.execute("SELECT pg_sleep(0.05)")


def test_three_nodes_survive_the_loss_of_one(pool):
    """ann, ben and cid, contacts, log in to node1, node2 and node3 directly, dee, eve and fay through the multiplexor
    (one on each node); messages and presence cross every pair of nodes.  ann and ben then send messages
    to cid and to the multiplexor's user on node3 while node3 is killed with SIGKILL: the multiplexor's
    user gets <system-shutdown/> and logs in again through it, cid logs in again to node1, both under the
    same resources; ann's last word of cid's resource is that it is available.  Every message sent to the two is then found exactly once live or from offline storage,
    or in their archive, and none is delivered twice."""
    database, (node1, node2, node3), mux = pool

    async def scenario():
        ledger = Ledger()
        async with Clients(mux) as clients:
            # Contacts made on one node (see test_subscription_across_nodes for why), kept in the shared database.
            first = [await clients.login(f"{user}@localhost/first", port=node1.port) for user in ("ann", "ben", "cid")]
            await befriend(first[0], first[1])
            await befriend(first[0], first[2])
            for client in first:
                await client.close()
            ann = await clients.login("ann@localhost/direct", port=node1.port, plugins=PLUGINS)
            ben = await clients.login("ben@localhost/direct", port=node2.port, plugins=PLUGINS)
            cid = ledger.watch(await clients.login("cid@localhost/direct", port=node3.port, plugins=PLUGINS))
            muxed = [await clients.login(f"{user}@localhost/mux", port=mux.ports["mux-c2s"], plugins=PLUGINS)
                     for user in ("dee", "eve", "fay")]
            landed = {id(client): await landed_on(mux, client, [node1, node2, node3], "mux") for client in muxed}
            assert {id(node) for node in landed.values()} == {id(node1), id(node2), id(node3)}, \
                "least-clients did not put one multiplexor client on each node"
            on_node3 = next(client for client in muxed if landed[id(client)] is node3)
            ledger.watch(on_node3)

            # Messages both ways between every pair of nodes, directly and through the multiplexor.
            everyone = [ann, ben, cid] + muxed
            for sender in everyone:
                for receiver in everyone:
                    if receiver is not sender:
                        await seen_by(sender, receiver)
                        body = f"hello from {sender.boundjid.full} to {receiver.boundjid.full}"
                        sender.send_message(mto=receiver.boundjid.full, mbody=body, mtype="chat")
                        await next_item(receiver.messages, lambda m, body=body: m["body"] == body,
                                        what=f"'{body}'")
            # Presence to roster contacts across nodes.
            cid.send_presence(pstatus="on node3")
            await next_item(ann.presences, lambda p: p["from"] == cid.boundjid.full and p["status"] == "on node3",
                            what="cid's presence (node3) at ann (node1)")
            ben.send_presence(pshow="away", pstatus="on node2")
            found = await next_item(ann.presences, lambda p: p["from"] == ben.boundjid.full
                                    and p["status"] == "on node2", what="ben's presence (node2) at ann (node1)")
            assert found["show"] == "away"

            victims = ["cid@localhost", f"{on_node3.boundjid.bare}"]
            senders = [ann, ben]
            await traffic(senders, victims, ledger, rounds=ROUNDS_BEFORE_AND_AFTER)

            back = asyncio.get_running_loop().create_future()
            stream = asyncio.ensure_future(traffic(senders, victims, ledger, until=back))
            os.kill(node3.process.pid, signal.SIGKILL)
            await asyncio.to_thread(node3.process.wait)
            error = await next_item(on_node3.stream_errors, what="the multiplexor's stream error")
            assert child(error, f"{{{NS_STREAM_ERRORS}}}system-shutdown") is not None, error
            await asyncio.wait_for(cid.ended, TIMEOUT)
            await asyncio.wait_for(on_node3.ended, TIMEOUT)
            # They come back under the same resources, as clients do.
            again = [ledger.watch(await clients.login(on_node3.boundjid.full, port=mux.ports["mux-c2s"],
                                                      plugins=PLUGINS)),
                     ledger.watch(await clients.login("cid@localhost/direct", port=node1.port, plugins=PLUGINS))]
            assert await landed_on(mux, again[0], [node1, node2, node3], "mux") is not node3
            for node in (node1, node2):
                await asyncio.to_thread(node.wait_for_line, lambda line: "node node3 lost its lease" in line
                                        or "node node3 left the cluster" in line, LEASE_SECONDS * 5,
                                        "node3's sessions dropped by a survivor")
            # Once node3's sessions are dropped, what ann last heard of cid/direct is that it is available:
            # the end of the dead session, if announced after the new one's presence, would hide it.
            again[1].send_presence(pstatus="back")
            heard = []
            await next_item(ann.presences, lambda p: heard.append(p) or (p["from"] == "cid@localhost/direct"
                                                                         and p["status"] == "back"),
                            what="cid's presence 'back' at ann")
            words = [p["type"] for p in heard if p["from"] == "cid@localhost/direct"]
            assert "unavailable" not in words[words.index("available"):], words
            for victim in again:
                for sender in senders:
                    await seen_by(victim, sender)
            back.set_result(True)
            await stream
            await traffic(senders, victims, ledger, rounds=ROUNDS_BEFORE_AND_AFTER)

            # The last of each sender's stream is followed by a marker to each victim's full JID: its
            # arrival says that everything the sender's node routed to that victim before has arrived.
            for sender in senders:
                for victim in again:
                    sender.send_message(mto=victim.boundjid.full, mbody=f"end of {sender.boundjid.user}",
                                        mtype="chat")
                    await next_item(victim.messages, lambda m, s=sender: m["body"] == f"end of {s.boundjid.user}",
                                    timeout=TIMEOUT * 3, what=f"the end marker of {sender.boundjid}")
            # What went to offline storage after the new logins is handed out at the next one.
            for victim in again:
                await victim.close()
            final = [ledger.watch(await clients.login(f"{victim.boundjid.user}@localhost/final", port=mux.ports["mux-c2s"],
                                                      plugins=PLUGINS)) for victim in again]
            await asyncio.to_thread(offline_drained, database, [client.boundjid.user for client in final])
            for client in final:
                await barrier(client)
                ledger.archived.update(await collect_archive(client))

        lost, duplicated = ledger.lost(), ledger.duplicated()
        assert not duplicated, f"{len(duplicated)} of {len(ledger.sent)} messages came twice: {duplicated[:10]}"
        assert not lost, f"{len(lost)} of {len(ledger.sent)} messages were lost: {lost[:10]}"
        assert sum(ledger.live.values()) and sum(ledger.archived.values())
        only_archived = sum(1 for body in ledger.sent if not (ledger.live[body] or ledger.offline[body]))
        print(f"{len(ledger.sent)} messages to the killed node's users: {sum(ledger.live.values())} live, "
              f"{sum(ledger.offline.values())} from offline storage, {only_archived} only in the archive")

    asyncio.run(scenario())


def test_subscription_across_nodes(pool):
    """gus on node1 and fay on node2 subscribe to each other; both get the roster push of subscription 'both'
    (each node changes both rosters in the shared database, and tells the other to forget its copy)."""
    _, (node1, node2, _), mux = pool

    async def scenario():
        async with Clients(mux) as clients:
            gus = await clients.login("gus@localhost/direct", port=node1.port)
            fay = await clients.login("fay@localhost/direct", port=node2.port)
            await seen_by(gus, fay)
            await seen_by(fay, gus)
            await befriend(gus, fay)

    asyncio.run(scenario())

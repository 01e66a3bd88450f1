"""Issue 16's demonstration (docs/scaling.md): three bridge nodes, each its own twistd process, sharing one
PostgreSQL and one Redis, and a multiplexor (``twistd bridge-mux``) in front; slixmpp users spread over the
nodes through the multiplexor and directly.  Messages, presence and a chat room cross nodes; one node, the
room's and the SMS queue's, is killed with SIGKILL in the middle of a stream of messages to its users, who
log in again at once (through the multiplexor, or directly to a survivor); every message sent to them is
then accounted for by its unique body: delivered live, or delivered from offline storage, or found in their
archive (MAM), and none delivered twice.  The room's occupants on the survivors are told to join again
(332) and find the room on a survivor; a survivor takes the SMS queue over, and the test SMSC gets every
SMS the users queued before and during the kill once, or it is held and listed by ``bridgectl sms-held``.

XEP-0198 resumption across nodes is other work of issue 16 and is not part of this test."""

import asyncio
import collections
import os
import re
import shutil
import signal
import time

import pytest

from .conftest import RUNNING, accounts_for
from .harness import (wait_for_members, REDIS_SERVER, TIMEOUT, Clients, RedisProcess, ServerProcess, add_users, barrier, befriend,
                      child, cluster_table, next_item, start_mux, write_config)
from .postgresql import PostgreSQLServer, skip_reason
from .test_cluster import seen_by
from .test_cluster_muc import ROOM, create_persistent_room, join, room_presences, said, stored_history
from .test_postgresql import bridgectl
from .test_mux import landed_on, write_secret
from .test_sms import SMSC, SMSC_DIR
from .test_sms_cluster import (RESOURCE, WINDOW, bound_only_after_the_takeover, drained, node_tables, queue_sms,
                               reached)

POSTGRESQL_MISSING = skip_reason()
pytestmark = [
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package redis-server; "
                                                    ".ci/install-test-peers installs it)"),
    pytest.mark.skipif(POSTGRESQL_MISSING is not None, reason=str(POSTGRESQL_MISSING)),
    pytest.mark.skipif(shutil.which("node") is None or not os.path.isdir(os.path.join(SMSC_DIR, "node_modules", "smpp")),
                       reason="node or the smpp package of the test SMSC (.ci/install-test-peers) is missing"),
]
pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[cluster]')")

USERS = ("ann", "ben", "cid", "dee", "eve", "fay", "gus")
ACCOUNTS = accounts_for([f"{user}@localhost" for user in USERS])
LEASE_SECONDS = 2
PLUGINS = {"xep_0030": {}, "xep_0059": {}, "xep_0313": {}, "xep_0203": {}, "xep_0045": {}, "xep_0004": {}}
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
ROUNDS_BEFORE_AND_AFTER = 10
SMS_BEFORE_THE_KILL = 8  # by each of ann, ben and cid
SMS_DURING_THE_KILL = 4  # by each of ann and ben
SMS_TAKEN_BEFORE_THE_KILL = 6  # by the SMSC from node3


def start_pool(directory, redis_server, database, smsc, secret, count=3):
    """``count`` nodes on one PostgreSQL database (migrated and given the accounts once), one Redis and one
    SMSC, each with a clear-text [mux_listener] on loopback; started, each having seen the others.  The last
    starts first, alone until it owns the SMS queue (the first to claim it), so that it is the queue's owner
    that the demonstration kills."""
    nodes = []
    try:
        for number in range(1, count + 1):
            node_directory = os.path.join(directory, f"node{number}")
            os.makedirs(node_directory)
            tables = (cluster_table(redis_server, f"node{number}", LEASE_SECONDS) + node_tables(database, smsc)
                      + f'[mux_listener]\nendpoints = ["tcp:0:interface=127.0.0.1"]\nsecret_file = "{secret}"\n')
            config_path = write_config(node_directory, tables=tables)
            if number == 1:
                bridgectl(config_path, "migrate")
                add_users(config_path, ACCOUNTS)
            nodes.append(ServerProcess(config_path, ACCOUNTS))
        last = nodes[-1]
        for node in [last] + nodes[:-1]:
            RUNNING.append(node)
            node.start(wait_for=("c2s", "mux"))
            owns = f"ownership: node node{count} owns {RESOURCE}"
            if node is last and not any(owns in line for line in node.lines):
                node.wait_for_line(lambda line: owns in line, LEASE_SECONDS * 5, what=f"node{count} owning {RESOURCE}")
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
    """PostgreSQL, Redis, the test SMSC (answering each submit_sm after 40 ms, so that a drain takes a while),
    three nodes (node3 owning the SMS queue) and a multiplexor, all of the test's own; all stopped at the end."""
    directory = str(tmp_path)
    database = PostgreSQLServer().init().start().create_database()
    redis_server = smsc = None
    processes = []
    try:
        redis_server = RedisProcess(directory).start()
        smsc = SMSC("--delay-ms", "40")
        secret = write_secret(directory)
        processes.extend(start_pool(directory, redis_server, database, smsc, secret))
        processes.append(start_mux(directory, processes, "mux", secret, ACCOUNTS, options="direct_tls_endpoints = []\n"))
        RUNNING.append(processes[-1])
        yield database, smsc, processes[:3], processes[3]
    finally:
        stop_all(processes)
        if smsc is not None:
            smsc.stop()
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


def nick(client):
    return client.boundjid.user.title()


def queue_taker(node1, node2):
    """The survivor that took the SMS queue over from node3; waits for node1's log to say which."""
    took, owned = f"node node1 took over {RESOURCE}", f"{RESOURCE} is owned by node node2"
    if not any(took in line or owned in line for line in node1.lines):
        node1.wait_for_line(lambda line: took in line or owned in line, LEASE_SECONDS * 10,
                            what="the SMS queue taken over by a survivor")
    return node1 if any(took in line for line in node1.lines) else node2


def held_listed(config_path):
    """The numbers (without "+") of the SMS parts ``bridgectl sms-held`` lists, and its count line."""
    listed = bridgectl(config_path, "sms-held")
    numbers = [found.group(1) for found in re.finditer(r"\tto \+?(\d+)\t", listed)]
    count = re.search(r"sms-held: (\d+) parts held", listed)
    assert count and int(count.group(1)) == len(numbers), listed
    return numbers


def test_three_nodes_survive_the_loss_of_one(pool):
    """ann, ben and cid, contacts, log in to node1, node2 and node3 directly, dee, eve and fay through the multiplexor
    (one on each node); messages and presence cross every pair of nodes.  cid makes a persistent room on
    node3, which ann and the multiplexor's user on node2 join: each one's groupchat message reaches all
    three.  ann, ben and cid queue SMS, which node3, the queue's owner, sends to the SMSC.  ann and ben then
    send messages to cid and to the multiplexor's user on node3 while node3 is killed with SIGKILL mid-drain,
    and more SMS: the multiplexor's user gets <system-shutdown/> and logs in again through it, cid logs in
    again to node1, both under the same resources; ann's last word of cid's resource is that it is
    available.  Every message sent to the two is then found exactly once live or from offline storage, or in
    their archive, and none is delivered twice.  The room's other occupants get its unavailable presence
    with status 332, join again with cid and find the stored room (its history) on a survivor, where each
    one's message reaches all three.  A survivor takes the SMS queue over: the SMSC gets every SMS once,
    except those held (at most the window), which ``bridgectl sms-held`` lists."""
    database, smsc, (node1, node2, node3), mux = pool

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
            on_node2, on_node3 = (next(client for client in muxed if landed[id(client)] is node)
                                  for node in (node2, node3))
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

            # A room on node3 (the first node to need it claims it), an occupant on every node.
            occupants = [cid, ann, on_node2]
            rooms = {client: room_presences(client) for client in occupants}
            await create_persistent_room(cid, nick(cid))
            await asyncio.to_thread(node3.wait_for_line, lambda line: f"node node3 hosts {ROOM}" in line, 10,
                                    "the room hosted by node3")
            for client in occupants[1:]:
                await join(client, nick(client))
            before = [f"{nick(speaker)} on node{number}" for number, speaker in zip((3, 1, 2), occupants)]
            for speaker, body in zip(occupants, before):
                speaker.send_message(mto=ROOM, mbody=body, mtype="groupchat")
                for client in occupants:
                    assert (await said(client, body))["from"].resource == nick(speaker)
            await asyncio.to_thread(stored_history, database, len(before))

            victims = ["cid@localhost", f"{on_node3.boundjid.bare}"]
            senders = [ann, ben]
            await traffic(senders, victims, ledger, rounds=ROUNDS_BEFORE_AND_AFTER)

            # SMS from every node into the shared queue; node3 is killed once it has sent a few of them.
            sms_sent = 0
            for client in (ann, ben, cid):
                await queue_sms(client, range(sms_sent, sms_sent + SMS_BEFORE_THE_KILL))
                sms_sent += SMS_BEFORE_THE_KILL
            for _ in range(SMS_TAKEN_BEFORE_THE_KILL):
                await asyncio.to_thread(smsc.wait, lambda event: event["event"] == "submit_sm")
            back = asyncio.get_running_loop().create_future()
            stream = asyncio.ensure_future(traffic(senders, victims, ledger, until=back))
            os.kill(node3.process.pid, signal.SIGKILL)
            for client in senders:  # while node3's lease runs: the queue has no owner
                await queue_sms(client, range(sms_sent, sms_sent + SMS_DURING_THE_KILL))
                sms_sent += SMS_DURING_THE_KILL
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

            # The room's node is gone: its occupants on the survivors are told to join again (332); they do,
            # with cid, and find the stored room, its history, on a survivor, where they talk again.
            for client in occupants[1:]:
                gone = await next_item(rooms[client], lambda p, c=client: p["from"] == f"{ROOM}/{nick(c)}"
                                       and p["type"] == "unavailable", timeout=LEASE_SECONDS * 10,
                                       what=f"the room's end at {client.boundjid}")
                assert 332 in gone["muc"]["status_codes"], gone
            occupants = [ann, on_node2, again[1]]
            presence, _, _, history = await ann.plugin["xep_0045"].join_muc_wait(ROOM, nick(ann), maxstanzas=3,
                                                                                 timeout=TIMEOUT)
            assert 201 not in presence["muc"]["status_codes"], "the stored room, not a new one"
            assert [str(m["body"]) for m in history] == before
            for client in occupants[1:]:
                await join(client, nick(client))
            for speaker in occupants:
                body = f"{nick(speaker)} again"
                speaker.send_message(mto=ROOM, mbody=body, mtype="groupchat")
                for client in occupants:
                    assert (await said(client, body))["from"].resource == nick(speaker)
            hosts = [node for node in (node1, node2)
                     if any(f"node {node.config_path.split(os.sep)[-2]} hosts {ROOM}" in line for line in node.lines)]
            assert len(hosts) == 1, "one survivor hosts the room"
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
        return sms_sent

    sms_sent = asyncio.run(scenario())
    # The SMS queue: taken over by a survivor, which sent the rest; the SMSC got each SMS once, or it is held
    # (its submit_sm left node3 and the answer was not recorded) and listed by bridgectl as the docs say.
    survivor = queue_taker(node1, node2)
    accepted, held = drained(smsc, survivor, sms_sent)
    assert len(held) <= WINDOW, held
    assert sorted(held_listed(node1.config_path)) == sorted(held), "bridgectl sms-held lists the held parts"
    binds = [index for index, event in enumerate(smsc.seen) if event["event"] == "bind"]
    assert len(binds) == 2, "one bind per owner"
    bound_only_after_the_takeover(survivor)
    print(f"{sms_sent} SMS queued, {sum(map(reached, smsc.seen[:binds[1]]))} sent by node3 before the kill; "
          f"{len(accepted)} reached the SMSC once, {len(held)} of them held and listed by bridgectl sms-held, "
          f"none twice; {survivor.config_path.split(os.sep)[-2]} took the queue over")


def test_subscription_across_nodes(pool):
    """gus on node1 and fay on node2 subscribe to each other; both get the roster push of subscription 'both'
    (each node changes both rosters in the shared database, and tells the other to forget its copy)."""
    _, _, (node1, node2, _), mux = pool

    async def scenario():
        async with Clients(mux) as clients:
            gus = await clients.login("gus@localhost/direct", port=node1.port)
            fay = await clients.login("fay@localhost/direct", port=node2.port)
            await seen_by(gus, fay)
            await seen_by(fay, gus)
            await befriend(gus, fay)

    asyncio.run(scenario())

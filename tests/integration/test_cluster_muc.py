"""A chat room across three bridge nodes on one Redis and one PostgreSQL (docs/muc.md "Rooms across nodes"):
slixmpp users on each node in one room, and the room's node killed with SIGKILL."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import RUNNING, accounts_for
from .harness import (wait_for_members, REDIS_SERVER, SIP_OFF, TIMEOUT, Clients, RedisProcess, ServerProcess, add_users,
                      cluster_table, next_item, server_env, write_config)
from .postgresql import PostgreSQLServer, skip_reason

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package "
                                                             "redis-server; .ci/install-test-peers installs it)")
pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[cluster]')")

ACCOUNTS = accounts_for(["alice@localhost", "bob@localhost", "carol@localhost"])
LEASE_SECONDS = 2
ROOM = "lobby@conference.localhost"
MUC_PLUGINS = {"xep_0030": {}, "xep_0045": {}, "xep_0004": {}}


def migrate(config_path):
    done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, "migrate"], env=server_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"bridgectl migrate failed: {done.stdout}{done.stderr}"


@pytest.fixture
def nodes_on_postgresql(tmp_path):
    """A redis-server, a PostgreSQL and three nodes sharing both, each having seen the others."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    database = PostgreSQLServer().init().start().create_database()
    redis_server = RedisProcess(str(tmp_path)).start()
    nodes = []
    try:
        storage = f"[storage]\nbackend = 'postgresql'\npostgresql_dsn = '{database.dsn}'\n"
        paths = []
        for number in (1, 2, 3):
            folder = tmp_path / f"node{number}"
            folder.mkdir()
            paths.append(write_config(str(folder), sip=SIP_OFF, tables=storage + cluster_table(
                redis_server, f"node{number}", LEASE_SECONDS)))
        migrate(paths[0])
        add_users(paths[0], ACCOUNTS)  # one database: the accounts are every node's
        for path in paths:
            nodes.append(ServerProcess(path, ACCOUNTS))
            RUNNING.append(nodes[-1])
            nodes[-1].start(wait_for=("c2s", "c2s-direct-tls"))
        wait_for_members(nodes)
        yield database, nodes
    finally:
        for node in nodes:
            node.stop()
            RUNNING.remove(node)
        redis_server.stop()
        database.remove()


def room_presences(client):
    """The presences from rooms ``client`` gets from now on (slixmpp's xep_0045 takes them from the
    ``presence`` event once the client is in the room)."""
    queue = asyncio.Queue()
    client.add_event_handler("groupchat_presence", queue.put_nowait)
    return queue


def stored_history(database, count, timeout=30):
    """Wait until the room's node has stored ``count`` messages of history (a storage write is answered
    after the stanzas it concerns went out)."""
    import psycopg

    with psycopg.connect(database.dsn, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while conn.execute("SELECT COUNT(*) FROM queue WHERE store = 'muc-history'").fetchone()[0] < count:
            assert time.monotonic() < deadline, f"fewer than {count} messages of history stored after {timeout}s"
            time.sleep(0.05)


async def join(client, nick, **options):
    """Join ROOM as ``nick``; its self-presence."""
    presence, *_ = await client.plugin["xep_0045"].join_muc_wait(ROOM, nick, timeout=TIMEOUT, **options)
    return presence


async def create_persistent_room(client, nick):
    """``client`` creates ROOM, joining it as ``nick``, and makes it persistent, named "Lobby"."""
    presence = await join(client, nick)
    assert 201 in presence["muc"]["status_codes"], presence
    muc = client.plugin["xep_0045"]
    await muc.get_room_config(ROOM, timeout=TIMEOUT)
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="muc#roomconfig_persistentroom", value="1")
    form.add_field(var="muc#roomconfig_roomname", value="Lobby")
    await muc.set_room_config(ROOM, form, timeout=TIMEOUT)


async def said(client, body):
    """``body``, as the room sent it to ``client``."""
    return await next_item(client.messages, lambda m: m["type"] == "groupchat" and m["body"] == body,
                           what=f"'{body}' at {client.boundjid}")


def test_room_across_nodes_survives_its_node(nodes_on_postgresql):
    """alice creates a persistent room on node1; bob (node2) and carol (node3) join it: presence and
    messages flow between all three nodes, one room.  node1 is killed with SIGKILL: bob and carol get the
    room's unavailable presence with status 332, join again, find the room as it was stored (its name, its
    history) now on a survivor, and talk to each other across nodes."""
    database, (node1, node2, node3) = nodes_on_postgresql

    async def scenario():
        async with Clients(node1) as clients:
            alice = await clients.login("alice@localhost/a", port=node1.port, plugins=MUC_PLUGINS)
            bob = await clients.login("bob@localhost/b", port=node2.port, plugins=MUC_PLUGINS)
            carol = await clients.login("carol@localhost/c", port=node3.port, plugins=MUC_PLUGINS)
            seen = {client: room_presences(client) for client in (alice, bob, carol)}
            await create_persistent_room(alice, "Alice")
            await asyncio.to_thread(node1.wait_for_line, lambda line: f"node node1 hosts {ROOM}" in line, 10,
                                    "the room hosted by node1")

            await join(bob, "Bob")
            await next_item(seen[alice], lambda p: p["from"] == f"{ROOM}/Bob", what="bob's join at alice")
            presence = await join(carol, "Carol")
            assert 110 in presence["muc"]["status_codes"], presence
            for client in (alice, bob):
                await next_item(seen[client], lambda p: p["from"] == f"{ROOM}/Carol",
                                what=f"carol's join at {client.boundjid}")
            for speaker, body in ((alice, "from node1"), (bob, "from node2"), (carol, "from node3")):
                speaker.send_message(mto=ROOM, mbody=body, mtype="groupchat")
                for client in (alice, bob, carol):
                    message = await said(client, body)
                    assert message["from"].resource == speaker.boundjid.user.title()
            bob.send_presence(pto=f"{ROOM}/Bob", pstatus="busy", pshow="dnd")
            for client in (alice, carol):
                found = await next_item(seen[client], lambda p: p["from"] == f"{ROOM}/Bob"
                                        and p["status"] == "busy", what=f"bob's new presence at {client.boundjid}")
                assert found["show"] == "dnd"
            carol.send_message(mto=f"{ROOM}/Bob", mbody="psst", mtype="chat")
            private = await next_item(bob.messages, lambda m: m["body"] == "psst", what="carol's private message")
            assert private["from"] == f"{ROOM}/Carol"

            await asyncio.to_thread(stored_history, database, 3)
            os.kill(node1.process.pid, signal.SIGKILL)
            node1.process.wait()
            alice.abort()
            for client, nick in ((bob, "Bob"), (carol, "Carol")):
                gone = await next_item(seen[client], lambda p: p["from"] == f"{ROOM}/{nick}"
                                       and p["type"] == "unavailable", timeout=LEASE_SECONDS * 10,
                                       what=f"the room's end at {client.boundjid}")
                assert 332 in gone["muc"]["status_codes"], gone

            presence, _, _, history = await bob.plugin["xep_0045"].join_muc_wait(ROOM, "Bob", maxstanzas=3,
                                                                                 timeout=TIMEOUT)
            assert 201 not in presence["muc"]["status_codes"], "the stored room, not a new one"
            assert [str(m["body"]) for m in history] == ["from node1", "from node2", "from node3"]
            await join(carol, "Carol")
            info = await bob.plugin["xep_0030"].get_info(jid=ROOM, timeout=TIMEOUT)
            assert ("conference", "text", None, "Lobby") in set(info["disco_info"]["identities"]), info
            carol.send_message(mto=ROOM, mbody="still here", mtype="groupchat")
            for client in (bob, carol):
                await said(client, "still here")
            bob.send_message(mto=ROOM, mbody="me too", mtype="groupchat")
            await said(carol, "me too")
            hosts = [node for node in (node2, node3)
                     if any(f"node {node.config_path.split(os.sep)[-2]} hosts {ROOM}" in line for line in node.lines)]
            assert len(hosts) == 1, "one survivor hosts the room"

    asyncio.run(scenario())

"""The SMS queue of a cluster (docs/scaling.md, "One owner at a time"): two bridge nodes on one Redis
and one PostgreSQL database, the test SMSC (tests/integration/smsc); the node that owns the queue is
killed with SIGKILL while it drains it, and the other takes the queue over."""

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import RUNNING, accounts_for
from .harness import (REDIS_SERVER, Clients, RedisProcess, ServerProcess, add_users, barrier,
                      cluster_table, server_env, write_config)
from .postgresql import PostgreSQLServer, skip_reason
from .test_sms import SMSC, SMSC_DIR

pytestmark = [
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package redis-server)"),
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
    pytest.mark.skipif(shutil.which("node") is None or not os.path.isdir(os.path.join(SMSC_DIR, "node_modules", "smpp")),
                       reason="node or the smpp package (.ci/install-test-peers) is missing"),
]
pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[cluster]')")

MESSAGES = 60
RESOURCE = "sms:sms.localhost"
WINDOW = 4


def node_tables(database, smsc):
    """What both nodes share: the database, the SMS gateway and its SMSC (slow enough to be caught mid-drain)."""
    return (f"[storage]\nbackend = 'postgresql'\npostgresql_dsn = '{database.dsn}'\n"
            "postgresql_retry_interval_seconds = 0.2\n"
            "[sms]\nenabled = true\ndomain = \"sms.localhost\"\nretry_seconds = 0.2\n"
            "outbound_sms_per_minute_per_user = 1000\n"
            f"[smsc.test]\nport = {smsc.port}\nsystem_id = \"bridge\"\npassword = \"pw\"\nsource_addr = \"1000\"\n"
            f"reconnect_min_seconds = 0.2\nreconnect_max_seconds = 0.5\nwindow = {WINDOW}\n"
            "submit_rate_per_second = 20.0\n")


def number(index):
    return f"+1555100{index:04d}"


@pytest.fixture
def cluster(tmp_path):
    """Redis, PostgreSQL (migrated), the SMSC answering each submit_sm after 40 ms, and two nodes."""
    if skip_reason():
        pytest.skip(skip_reason())
    redis_server = RedisProcess(str(tmp_path)).start()
    database = PostgreSQLServer().init().start().create_database()
    smsc = SMSC("--delay-ms", "40")
    nodes = []
    try:
        accounts = accounts_for(["alice@localhost"])
        for index in (1, 2):
            directory = tmp_path / f"node{index}"
            directory.mkdir()
            config_path = write_config(str(directory), tables=cluster_table(redis_server, f"node{index}")
                                       + node_tables(database, smsc))
            if index == 1:
                done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, "migrate"],
                                      env=server_env(), capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, done.stdout + done.stderr
                add_users(config_path, accounts)  # one database: the accounts once
            nodes.append(ServerProcess(config_path, accounts))
            RUNNING.append(nodes[-1])
            nodes[-1].start()
        yield nodes, smsc
    finally:
        for node in nodes:
            node.stop()
            RUNNING.remove(node)
        smsc.stop()
        database.remove()
        redis_server.stop()


def owner_of_queue(nodes):
    """The node that logged that it owns the SMS queue, and the other; waits for one to say it."""
    while True:
        for index, node in enumerate(nodes):
            if any(f"ownership: node node{index + 1} owns {RESOURCE}" in line for line in node.lines):
                return node, nodes[1 - index]
        nodes[0].wait_for_line(lambda line: f"owns {RESOURCE}" in line or f"{RESOURCE} is owned" in line, 30,
                               what="the SMS queue's owner")


def send_from(node, count):
    """alice, on ``node``, sends ``count`` SMS to as many numbers (``queue_sms``)."""

    async def send_all():
        async with Clients(node) as clients:
            await queue_sms(await clients.login("alice@localhost/pc", port=node.port), range(count))

    asyncio.run(send_all())


async def queue_sms(client, indices):
    """``client`` sends an SMS to ``number(index)`` for each of ``indices``; all are in the shared queue once
    its ping is answered (the gateway holds a message until it is stored)."""
    for index in indices:
        client.send_message(mto=f"{number(index)}@sms.localhost", mbody=f"note {index}", mtype="chat")
    await barrier(client)
    assert client.message_errors.empty(), client.message_errors.get_nowait()


def reached(event):
    """A submit_sm the SMSC took, answered or not (one answered after its sender died)."""
    return event["event"] in ("submit_sm", "submit_sm_unanswered")


def drained(smsc, survivor, count):
    """Wait until every one of ``count`` messages reached the SMSC or is held by ``survivor``, and nothing
    more comes; (the destinations the SMSC took, in order; the held ones)."""
    held_line = re.compile(r"SMS \S+ part \d+ to (\+\d+): held")
    wanted = {number(index).lstrip("+") for index in range(count)}
    while True:
        held = {found.group(1).lstrip("+") for found in map(held_line.search, survivor.lines) if found}
        if wanted <= {event["destination_addr"] for event in smsc.seen if reached(event)} | held:
            break
        smsc.wait(reached, timeout=30)
    # Nothing more comes (a bounded wait on the SMSC's events, not a sleep).
    with pytest.raises(AssertionError):
        smsc.wait(reached, timeout=2)
    accepted = [event["destination_addr"] for event in smsc.seen if reached(event)]
    twice = {destination for destination in accepted if accepted.count(destination) > 1}
    assert not twice, f"sent twice to the SMSC: {sorted(twice)}"
    assert set(accepted) | held == wanted
    return accepted, held


def bound_only_after_the_takeover(survivor):
    takeover = next(index for index, line in enumerate(survivor.lines) if f"took over {RESOURCE}" in line)
    assert not any("SMSC test: bound" in line for line in survivor.lines[:takeover]), \
        "the survivor bound to the SMSC before it owned the queue"


def test_owner_killed_mid_drain_survivor_sends_the_rest_once(cluster):
    """alice, on the node that does NOT own the SMS queue, sends 60 SMS to 60 numbers: they go into
    the shared queue, and only the owner binds to the SMSC and sends them.  The owner is killed with
    SIGKILL once the SMSC has accepted 15; the survivor takes the queue over, binds and sends the rest.
    Every message reaches the SMSC exactly once, except those the survivor reports held (a submit_sm
    whose answer the dead owner never recorded: at most the window), which reach it at most once and
    are counted held, not lost."""
    nodes, smsc = cluster
    owner, survivor = owner_of_queue(nodes)
    smsc.wait(lambda e: e["event"] == "bind")
    send_from(survivor, MESSAGES)
    for _ in range(15):
        smsc.wait(lambda e: e["event"] == "submit_sm", timeout=30)
    killed_at = time.monotonic()
    owner.process.send_signal(signal.SIGKILL)
    assert owner.process.wait(timeout=10) == -signal.SIGKILL
    survivor.wait_for_line(lambda line: f"took over {RESOURCE}" in line, 30, what="the takeover")
    takeover_seconds = time.monotonic() - killed_at
    accepted, held = drained(smsc, survivor, MESSAGES)
    assert len(held) <= WINDOW, held
    assert len([event for event in smsc.seen if event["event"] == "bind"]) == 2, "one bind per owner"
    bound_only_after_the_takeover(survivor)
    print(f"takeover logged {takeover_seconds:.2f} s after the kill; held: {len(held)}; "
          f"reached the SMSC once: {len(accepted)}")


def test_owner_stopped_cleanly_hands_over_with_nothing_held(cluster):
    """The owner is stopped cleanly (SIGTERM) mid-drain: it unbinds once the answers on the way came,
    records them and releases the queue; the other node takes it at its next round, without waiting for
    an expiry, and sends the rest: every message reaches the SMSC exactly once, none is held."""
    nodes, smsc = cluster
    owner, survivor = owner_of_queue(nodes)
    smsc.wait(lambda e: e["event"] == "bind")
    send_from(survivor, 30)
    for _ in range(10):
        smsc.wait(lambda e: e["event"] == "submit_sm", timeout=30)
    owner.stop()
    assert any(f"releases {RESOURCE}" in line for line in owner.lines), owner.tail()
    survivor.wait_for_line(lambda line: f"took over {RESOURCE}" in line, 30, what="the takeover")
    accepted, held = drained(smsc, survivor, 30)
    assert (len(accepted), held) == (30, set())
    bound_only_after_the_takeover(survivor)

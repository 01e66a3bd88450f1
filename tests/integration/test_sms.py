"""The SMS gateway end to end: the real bridge process, the smpp npm package's server as the SMSC
(tests/integration/smsc/server.js, with fault injection), slixmpp users."""

import asyncio
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest

from .conftest import accounts_for
from .harness import REPO, Clients, ServerProcess, add_users, next_item, server_env, write_config

SMSC_DIR = os.path.join(os.path.dirname(__file__), "smsc")
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None or not os.path.isdir(os.path.join(SMSC_DIR, "node_modules", "smpp")),
                                reason="node or the smpp package (.ci/install-test-peers) is missing")


class SMSC:
    """server.js as a process: its JSON events in a queue, commands on its stdin."""

    def __init__(self, *faults):
        self.process = subprocess.Popen([NODE, os.path.join(SMSC_DIR, "server.js"), "--port", "0", *faults],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.events = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self.wait(lambda e: e["event"] == "listening")["port"]

    def _read(self):
        for line in self.process.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "output", "line": line})

    def wait(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"the SMSC saw no such event in {timeout}s; saw {self.seen[-10:]}") from None
            self.seen.append(event)
            if predicate(event):
                return event

    def mo(self, source, text):
        command = {"cmd": "mo", "source_addr": source, "destination_addr": "1000", "hex": text.encode().hex()}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def start_bridge(tmp_path, smsc, jids):
    config_path = write_config(str(tmp_path))
    with open(config_path, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace("[hosts.localhost]\n", "[hosts.localhost]\noffline_notification = \"sms\"\n", 1)
    text += ("[sms]\nenabled = true\ndomain = \"sms.localhost\"\nquiet_window_minutes = 0\nretry_seconds = 0.2\n"
             f"[smsc.test]\nport = {smsc.port}\nsystem_id = \"bridge\"\npassword = \"pw\"\nsource_addr = \"1000\"\n"
             "reconnect_min_seconds = 0.2\nthrottle_backoff_seconds = 0.2\n")
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(text)
    accounts = accounts_for(jids)
    add_users(config_path, accounts)
    done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, "notify", "bob@localhost",
                           "--mobile", "+15551234567"], env=server_env(), capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    process = ServerProcess(config_path, accounts)
    process.start()
    return process


@pytest.fixture
def smsc_factory():
    started = []

    def make(*faults):
        smsc = SMSC(*faults)
        started.append(smsc)
        return smsc

    yield make
    for smsc in started:
        smsc.stop()


def test_offline_user_gets_sms_parts_and_answers(tmp_path, smsc_factory):
    """Alice writes a long Cyrillic message to offline Bob: the SMSC receives UCS-2 parts with one
    concatenation UDH reference and Bob's number; Bob's SMS answer reaches Alice from bob@localhost."""
    smsc = smsc_factory()
    bridge = start_bridge(tmp_path, smsc, ["alice@localhost", "bob@localhost"])
    try:
        smsc.wait(lambda e: e["event"] == "bind")
        body = "Привет, Боб! " * 10

        async def scenario():
            async with Clients(bridge) as clients:
                alice = await clients.login("alice@localhost/pc")
                alice.send_message(mto="bob@localhost", mbody=body, mtype="chat")
                parts = [await asyncio.to_thread(smsc.wait, lambda e: e["event"] == "submit_sm")
                         for _ in range(3)]
                assert {p["destination_addr"] for p in parts} == {"15551234567"}
                assert {p["data_coding"] for p in parts} == {8}
                assert all(p["esm_class"] & 0x40 for p in parts)
                udhs = [bytes.fromhex(p["udh"]) for p in parts]
                # The package reports the information elements: IEI 0, length 3, reference, total, number.
                assert {u[:2] for u in udhs} == {b"\x00\x03"} and len({u[2] for u in udhs}) == 1
                assert [u[3:] for u in udhs] == [b"\x03\x01", b"\x03\x02", b"\x03\x03"]
                assert "".join(p["message"] for p in parts) == "Alice: " + body.strip()
                smsc.mo("15551234567", "yes, on my way")
                answer = await next_item(alice.messages, what="Bob's SMS answer")
                assert answer["from"].bare == "bob@localhost"
                assert answer["body"] == "yes, on my way"

        asyncio.run(scenario())
    finally:
        bridge.stop()


def test_faults_lose_nothing_and_send_nothing_twice(tmp_path, smsc_factory):
    """A refused bind, two ESME_RTHROTTLED and one ESME_RSYSERR: every message still reaches the
    SMSC exactly once."""
    smsc = smsc_factory("--refuse-binds", "1", "--throttle", "2", "--syserr", "1")
    bridge = start_bridge(tmp_path, smsc, ["alice@localhost", "bob@localhost"])
    try:
        smsc.wait(lambda e: e["event"] == "bind")

        async def scenario():
            async with Clients(bridge) as clients:
                alice = await clients.login("alice@localhost/pc")
                for n in range(4):
                    alice.send_message(mto=f"+1555000000{n}@sms.localhost", mbody=f"note {n}", mtype="chat")
                accepted = [await asyncio.to_thread(smsc.wait, lambda e: e["event"] == "submit_sm")
                            for _ in range(4)]
                assert sorted(e["message"] for e in accepted) == [f"Alice: note {n}" for n in range(4)]

        asyncio.run(scenario())
        # Nothing more arrives (a bounded wait on the SMSC's event queue, not a sleep).
        with pytest.raises(AssertionError):
            smsc.wait(lambda e: e["event"] == "submit_sm", timeout=1.5)
    finally:
        bridge.stop()

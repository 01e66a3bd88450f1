"""A real softclient on the SIP gateway: baresip (Debian package baresip-core, installed by
.ci/install-test-peers) registers as sip:alice@localhost with Alice's XMPP password, exchanges
MESSAGEs with bob@localhost on slixmpp, and the two see each other's presence.

baresip runs with the configuration templates of tests/integration/baresip/ (no audio or video
module: it needs no sound card), is commanded through its ctrl_tcp module (netstring JSON on a
loopback TCP port) and observed through its standard output (stdio and menu modules).
"""

import asyncio
import json
import os
import re
import shutil
import socket
import string
import subprocess
import threading
import time
import uuid

import pytest

from .conftest import accounts_for
from .harness import Clients, ServerProcess, add_users, next_item, stop_process, subscription_of, write_config

BARESIP = shutil.which("baresip")
TEMPLATES = os.path.join(os.path.dirname(__file__), "baresip")
MODULE_PATH = "/usr/lib/baresip/modules"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
USERS = ("alice@localhost", "bob@localhost")
WAIT = 20.0

pytestmark = pytest.mark.skipif(BARESIP is None, reason="baresip is missing (Debian package baresip-core, "
                                                        ".ci/install-test-peers)")

# The default digest algorithms (["MD5", "SHA-256"]).  baresip 1.0 (libre 1.0) knows only MD5
# digest, and gives up ("Register: Function not implemented") on a 401 that names any algorithm it
# does not know, even with an MD5 one beside it.  It then sends its PUBLISH, and later its REGISTER
# again, from the same address without credentials: the gateway sees it could answer neither
# challenge and offers MD5 alone (registrar.ProvenAlgorithms), which it answers.
SIP_SECTION = """
[sip]
enabled = true
udp_endpoints = ["udp:0:interface=127.0.0.1"]
tcp_endpoints = ["tcp:0:interface=127.0.0.1"]
tls_endpoints = []
advertised_address = "127.0.0.1"
"""
# baresip retries a failed registration after 30 to 60 seconds (libre's failwait).
REGISTER_WAIT = 90.0


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    """bridge with the SIP gateway on kernel-chosen loopback ports (in ``ports`` by listener kind)."""
    directory = tmp_path_factory.mktemp("baresip-bridge")
    # The line that says a phone accepted a MESSAGE is a debug one.
    config_path = write_config(str(directory), sip=SIP_SECTION, tables="[log]\nlevels = {sip = \"debug\"}\n")
    accounts = accounts_for(USERS)
    add_users(config_path, accounts)
    process = ServerProcess(config_path, accounts)
    process.start(wait_for=("c2s", "sip-udp", "sip-tcp"))
    yield process
    process.stop()


def free_port(kind):
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Baresip:
    """One baresip process: its output lines (colours stripped) in ``lines`` and a queue, its
    commands over ctrl_tcp."""

    def __init__(self, directory, bridge, user="alice", presence=True, transport="udp"):
        self.directory = str(directory)
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.ctrl_port = free_port(socket.SOCK_STREAM)
        values = {"sip_port": self.sip_port, "ctrl_port": self.ctrl_port, "module_path": MODULE_PATH,
                  "user": user, "password": bridge.password(f"{user}@localhost"),
                  "bridge_port": bridge.ports[f"sip-{transport}"], "transport": transport,
                  "contact_params": ";presence=p2p" if presence else ""}
        os.makedirs(self.directory, exist_ok=True)
        for name in ("config", "accounts", "contacts"):
            with open(os.path.join(TEMPLATES, name), encoding="utf-8") as handle:
                text = string.Template(handle.read()).substitute(values)
            with open(os.path.join(self.directory, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        self.lines = []
        self.cursor = 0  # wait_for reads on from here
        self.ended = False
        self._changed = threading.Condition()
        self.process = None
        self.sock = None
        self.buffer = b""
        self.events = []

    def start(self):
        # stdin is a pipe kept open: the stdio module reads its keys there (and would see an end
        # of file on /dev/null).
        # -s: baresip prints every SIP message it sends and receives (the transcript of a failure).
        self.process = subprocess.Popen([BARESIP, "-f", self.directory, "-s"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.directory)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.wait_for(lambda line: "baresip is ready" in line, what="'baresip is ready'")
        self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=WAIT)
        return self

    def _drain(self):
        with open(os.path.join(self.directory, "baresip.log"), "w", encoding="utf-8") as log:
            for raw in self.process.stdout:
                for piece in raw.decode("utf-8", "replace").split("\r"):
                    line = ANSI.sub("", piece).rstrip("\n")
                    if not line.strip():
                        continue
                    log.write(line + "\n")
                    log.flush()
                    with self._changed:
                        self.lines.append(line)
                        self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, predicate, timeout=WAIT, what="a line", start=None):
        """The first output line from ``start`` (default: after the last line found) for which
        ``predicate(line)`` is true; later calls read on after it."""
        deadline = time.monotonic() + timeout
        index = self.cursor if start is None else start
        with self._changed:
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    index += 1
                    if predicate(line):
                        self.cursor = index
                        return line
                if self.ended:
                    raise AssertionError(f"baresip exited (status {self.process.wait()}) before {what}:\n"
                                         + self.tail())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"baresip did not print {what} within {timeout}s:\n" + self.tail())
                self._changed.wait(remaining)

    def tail(self, count=120):
        return "\n".join(self.lines[-count:])

    def command(self, name, params=None, timeout=WAIT):
        """Run a command (``message``, ``presence_online``...) through ctrl_tcp; its response
        ({"response": true, "ok": ..., "data": ...}).  Events read meanwhile go to ``events``."""
        token = uuid.uuid4().hex
        request = {"command": name, "token": token}
        if params is not None:
            request["params"] = params
        data = json.dumps(request).encode()
        self.sock.sendall(b"%d:%s," % (len(data), data))
        deadline = time.monotonic() + timeout
        while True:
            item = self._next_netstring(deadline)
            if item.get("response") and item.get("token") == token:
                return item
            self.events.append(item)

    def _next_netstring(self, deadline):
        while True:
            head, colon, rest = self.buffer.partition(b":")
            if colon:
                size = int(head)
                if len(rest) > size:
                    assert rest[size:size + 1] == b",", f"malformed netstring from ctrl_tcp: {self.buffer!r}"
                    self.buffer = rest[size + 1:]
                    return json.loads(rest[:size])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no answer on ctrl_tcp in time:\n" + self.tail())
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            assert data, "baresip closed its ctrl_tcp connection:\n" + self.tail()
            self.buffer += data

    def contact_status(self, address):
        """The presence baresip shows for ``address`` in its address book (``contacts``):
        Unknown, Online, Offline or Busy."""
        answer = self.command("contacts")
        for line in ANSI.sub("", answer["data"]).splitlines():
            if f"<{address}>" in line:
                return line.lstrip("> ").split()[0]
        raise AssertionError(f"{address} is not in baresip's contacts: {answer}")

    def stop(self):
        if self.sock is not None:
            self.sock.close()
        if self.process is None:
            return
        stop_process(self.process)
        self.process.stdin.close()
        self._reader.join(timeout=5)


@pytest.fixture
def baresip(tmp_path, bridge):
    """A factory: a started baresip for ``user`` (``presence``: watch bob); stopped at the end."""
    started = []

    def start(user="alice", presence=True, transport="udp"):
        client = Baresip(tmp_path / f"baresip-{len(started)}", bridge, user=user, presence=presence,
                         transport=transport)
        started.append(client)
        return client.start()

    yield start
    for client in started:
        client.stop()


REGISTERED = re.compile(r"alice@localhost: \{\d+/(UDP|TCP)/v4\} 200 OK")


def status_change(old, new):
    """baresip's line for a change of a contact's presence (contact module)."""
    return lambda line: f"<sip:bob@localhost> changed status from {old} to {new}" in line


def test_baresip_registers_and_exchanges_messages(bridge, baresip):
    """baresip registers alice (digest with her XMPP password: 401, then 200) and sends MESSAGE to
    its current contact sip:bob@localhost (digest again, 202); bob on slixmpp gets it from
    alice@localhost.  bob answers in the same thread; alice has no XMPP session, so the answer goes
    as MESSAGE to her baresip binding, which prints it."""

    async def scenario():
        async with Clients(bridge) as clients:
            bob = await clients.login("bob@localhost/pc")
            client = await asyncio.to_thread(baresip, "alice", False)
            await asyncio.to_thread(client.wait_for, REGISTERED.search, REGISTER_WAIT,
                                    "alice's registration (200 OK)", 0)
            assert any("alice@localhost: 1 contact(s) bound" in line for line in bridge.lines), bridge.tail(30)

            answer = await asyncio.to_thread(client.command, "message", "hello bob, from baresip")
            assert answer["ok"], answer
            message = await next_item(bob.messages, lambda m: m["body"], timeout=WAIT, what="alice's MESSAGE")
            assert message["from"].bare == "alice@localhost"
            assert message["body"] == "hello bob, from baresip"

            reply = message.reply("hello alice, from XMPP")
            reply["thread"] = message["thread"]
            reply.send()
            # The menu module prints an incoming MESSAGE as 'FROM-URI: "BODY"' (bob's From carries
            # his resource as GRUU: sip:bob@localhost;gr=pc).
            await asyncio.to_thread(client.wait_for, lambda line: line.startswith("sip:bob@localhost")
                                    and line.endswith(': "hello alice, from XMPP"'), what="bob's answer")
            # baresip answered 200 (the gateway delivered it to the phone, not to offline storage).
            await asyncio.to_thread(bridge.wait_for_line, lambda line: "message for alice@localhost accepted by "
                                    "a phone" in line, WAIT, "bob's answer accepted by baresip")

    asyncio.run(scenario())


def test_baresip_falls_back_to_md5_alone(bridge, baresip):
    """Over TCP no answer is trimmed, so baresip's first 401 names MD5 and SHA-256 and it gives up
    ("Function not implemented").  Its next request from the same address comes without credentials:
    it could answer neither, so the gateway challenges it with MD5 alone, and it registers (on its own
    retry, 30 to 60 seconds later)."""
    client = baresip("alice", False, "tcp")
    client.wait_for(lambda line: "Function not implemented" in line, what="baresip refusing the two challenges",
                    start=0)
    client.wait_for(REGISTERED.search, REGISTER_WAIT, "alice's registration over TCP (200 OK)")
    assert any("alice@localhost: 1 contact(s) bound" in line for line in bridge.lines), bridge.tail(30)


def test_baresip_presence_both_ways(bridge, baresip):
    """Presence between baresip (alice) and bob on slixmpp, with the roster deciding:

    * before baresip starts, bob subscribes to alice and alice approves (from XMPP, then she
      logs out): bob may see alice, alice may not yet see bob;
    * baresip publishes alice online (PUBLISH, open): bob gets available from alice@localhost/sip;
    * baresip SUBSCRIBEs to bob: pending (bob's roster does not allow alice), so bob gets
      alice's subscription request; he approves and baresip shows bob Online;
    * bob goes away, dnd, available again, and baresip follows (baresip 1.0 shows RPID away as
      "Offline", busy as "Busy");
    * baresip publishes alice offline: bob gets unavailable from alice@localhost/sip.
    """

    async def scenario():
        async with Clients(bridge) as clients:
            bob = await clients.login("bob@localhost/pc")
            alice = await clients.login("alice@localhost/setup")
            bob.send_presence(pto="alice@localhost", ptype="subscribe")
            await next_item(alice.presences, lambda p: p["type"] == "subscribe", what="bob's request at alice")
            alice.send_presence(pto="bob@localhost", ptype="subscribed")
            await next_item(bob.roster_pushes, lambda iq: subscription_of(iq, "alice@localhost") == "to",
                            what="bob's roster push with subscription 'to'")
            await alice.close()
            await next_item(bob.presences, lambda p: p["type"] == "unavailable"
                            and p["from"] == "alice@localhost/setup", what="alice's XMPP session ending")

            client = await asyncio.to_thread(baresip, "alice", True)
            await asyncio.to_thread(client.wait_for, REGISTERED.search, REGISTER_WAIT,
                                    "alice's registration (200 OK)", 0)

            answer = await asyncio.to_thread(client.command, "presence_online")
            assert answer["ok"], answer
            online = await next_item(bob.presences, lambda p: p["from"] == "alice@localhost/sip"
                                     and p["type"] == "available", timeout=WAIT,
                                     what="alice's presence published by baresip")
            assert online["show"] == "", online

            request = await next_item(bob.presences, lambda p: p["type"] == "subscribe"
                                      and p["from"].bare == "alice@localhost", timeout=WAIT,
                                      what="alice's subscription request, from baresip's SUBSCRIBE")
            assert request["to"].bare == "bob@localhost"
            bob.send_presence(pto="alice@localhost", ptype="subscribed")
            # baresip prints no line for a first status (from Unknown): the NOTIFY that activates the
            # subscription is seen in its SIP trace, then its address book is asked.
            await asyncio.to_thread(client.wait_for, lambda line: line.startswith("Subscription-State: active"),
                                    what="the NOTIFY activating the subscription")
            assert await asyncio.to_thread(client.contact_status, "sip:bob@localhost") == "Online", client.tail()

            bob.send_presence(pshow="away", pstatus="at lunch")
            await asyncio.to_thread(client.wait_for, status_change("Online", "Offline"),
                                    what="bob away (baresip: Offline)")
            bob.send_presence(pshow="dnd")
            await asyncio.to_thread(client.wait_for, status_change("Offline", "Busy"), what="bob dnd (Busy)")
            bob.send_presence()
            await asyncio.to_thread(client.wait_for, status_change("Busy", "Online"), what="bob available again")

            answer = await asyncio.to_thread(client.command, "presence_offline")
            assert answer["ok"], answer
            await next_item(bob.presences, lambda p: p["from"] == "alice@localhost/sip"
                            and p["type"] == "unavailable", timeout=WAIT,
                            what="alice offline, published by baresip")

    asyncio.run(scenario())

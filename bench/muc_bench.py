"""bench/muc_bench.py: multi-user chat (XEP-0045), bridge beside Prosody's mod_muc on this machine.

Run from the repository's root (loopback only, one server at a time):

    .venv/bin/python -m bench.muc_bench [--occupants 100] [--talkers 10] [--join-occupants 1000]

For each server (bridge, then Prosody with a ``muc`` component on
conference.<domain>), on a fresh process each time:

1. **Fan-out**: --occupants sessions join one room (the first creates it and
   accepts the instant room); --talkers of them each keep --window messages in
   flight (a talker sends its next message when the room echoes one of its
   own back).  After --warmup seconds, for --duration seconds, every room
   message any occupant receives counts as one delivery (fan-out counted) and
   its latency (from the talker's send to this occupant's reception) is kept.
   Reported: deliveries/s, room messages/s, latency p50 and p99, server CPU.
2. **Joins**: --join-occupants sessions are logged in first (not timed); the
   first creates a room, then the others join it, --join-concurrency at a
   time, each join done when its self-presence (status 110) comes back.
   Reported: joins/s over the whole filling of the room and for its last 10 %,
   when each join costs the most (every occupant is told of it).

The loader is this process (asyncio, bench/load.py's client: STARTTLS, SCRAM,
bind), so its CPU share is printed too: a loader near 1.0 means the figure is
the loader's, not the server's.  Both servers get the same loader and limits
raised the same way (bridge: c2s byte rate, occupants per room; Prosody: no
limits module).  Results go to --output as JSON.
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)

from bench.load import (NS_CLIENT, T_BODY, T_IQ, T_MESSAGE, Client, make_tls_context, percentile,  # noqa: E402
                        server_cpu, xml_escape)
from bench.servers import (BenchError, BridgeServer, EjabberdServer, ProsodyServer,  # noqa: E402
                           lua, run_on_servers, say)

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_OWNER = NS_MUC + "#owner"
T_PRESENCE = "{%s}presence" % NS_CLIENT
T_X_USER = "{%s}x" % NS_USER
T_STATUS = "{%s}status" % NS_USER


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


ADD_USERS = """
import io, sys
from bridge.ctl import main
config, password_file, pattern, domain, first, last = sys.argv[1:]
for number in range(int(first), int(last) + 1):
    out = io.StringIO()
    main(["--config", config, "adduser", pattern.format(number) + "@" + domain, "--password-file", password_file],
         out)
"""


class MUCBridge(BridgeServer):
    """bridge whose bench accounts are made by one process running bridgectl's adduser in turn (the
    thousand processes of ``BridgeServer.create_accounts`` take minutes on a busy machine)."""

    def create_accounts(self, accounts):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", ADD_USERS, self.cfg, self.pwfile, self.args.user_pattern,
                               self.domain, "1", str(accounts)], env=self.env(), cwd=self.dir,
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise BenchError("bridgectl adduser failed: %s" % (done.stdout + done.stderr)[-800:])
        say("%s: %d accounts created in %.1f s" % (self.name, accounts, time.monotonic() - started))


class MUCProsody(ProsodyServer):
    """Prosody with mod_muc on the service domain: anyone creates rooms, as bridge's bench config lets."""

    def config_lines(self, cert, key):
        return super().config_lines(cert, key) + [
            "Component %s \"muc\"" % lua(self.args.service),
            "    restrict_room_creation = false",
            "    max_history_messages = 20",
        ]


class MUCEjabberd(EjabberdServer):
    """ejabberd with mod_muc on the service domain: anyone creates rooms, room size as bridge's."""

    def config_lines(self, api_port=None):
        return super().config_lines(api_port) + [
            "  mod_muc:",
            "    host: %s" % json.dumps(self.args.service),
            "    access_create: all",
            "    max_users: %d" % (max(self.args.occupants, self.args.join_occupants) + 10),
            "    max_users_presence: %d" % (max(self.args.occupants, self.args.join_occupants) + 10),
            "    history_size: 20",
            # A new room's own cap (200 by default) must not refuse the room of 1,000.
            "    default_room_options:",
            "      max_users: %d" % (max(self.args.occupants, self.args.join_occupants) + 10),
        ]


class Occupant:
    """One session in the room: counts and times the room's messages it receives."""

    def __init__(self, bench, client, index):
        self.bench = bench
        self.client = client
        self.index = index
        self.nick = "n%d" % index
        self.joined = None  # a Future, while joining
        self.answers = {}  # iq id -> Future
        self.reader = None

    def start(self):
        self.client.on_stanza = self.on_stanza
        self.reader = asyncio.ensure_future(self.client.read_loop())

    def on_stanza(self, client, element):
        if element.tag == T_MESSAGE:
            body = element.find(T_BODY)
            if body is not None and body.text and body.text.startswith("b "):
                self.bench.delivered(self, body.text)
        elif element.tag == T_PRESENCE:
            if self.joined is not None and not self.joined.done() \
                    and element.get("from") == "%s/%s" % (self.bench.room, self.nick):
                if element.get("type") == "error":
                    self.joined.set_exception(BenchError("join refused: %s" % ET.tostring(
                        element, encoding="unicode")[:300]))
                    return
                x = element.find(T_X_USER)
                codes = {status.get("code") for status in x.findall(T_STATUS)} if x is not None else set()
                if "110" in codes:
                    self.joined.set_result(codes)
        elif element.tag == T_IQ:
            waiting = self.answers.pop(element.get("id"), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(element)
            else:
                client.handle_other(element)

    async def join(self, room, timeout):
        self.joined = asyncio.get_running_loop().create_future()
        self.client.send("<presence to='%s/%s'><x xmlns='%s'><history maxstanzas='0'/></x></presence>"
                         % (xml_escape(room), self.nick, NS_MUC))
        codes = await asyncio.wait_for(self.joined, timeout)
        if "201" in codes:  # created: accept the instant room (XEP-0045 section 10.1.2)
            answer = asyncio.get_running_loop().create_future()
            self.answers["instant"] = answer
            self.client.send("<iq type='set' id='instant' to='%s'><query xmlns='%s'><x xmlns='jabber:x:data' "
                             "type='submit'/></query></iq>" % (xml_escape(room), NS_OWNER))
            element = await asyncio.wait_for(answer, timeout)
            if element.get("type") != "result":
                raise BenchError("the instant room was refused")
        return codes


class RoomBench:
    def __init__(self, args, server):
        self.args = args
        self.server = server
        self.room = None
        self.tls = make_tls_context()
        self.measuring = False
        self.talking = False
        self.deliveries = 0
        self.sent_in_window = 0
        self.latencies = []
        self.talkers = {}  # index -> Occupant

    async def login(self, count, concurrency):
        a = self.args
        clients = [None] * count
        next_index = 0

        async def worker():
            nonlocal next_index
            while next_index < count:
                i = next_index
                next_index += 1
                client = Client("127.0.0.1", self.server.port, a.domain, a.user_pattern.format(i + 1), a.password,
                                "muc%d" % i, self.tls)
                await asyncio.wait_for(client.login(), a.timeout)
                clients[i] = client

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        occupants = [Occupant(self, client, i) for i, client in enumerate(clients)]
        for occupant in occupants:
            occupant.start()
        return occupants

    def delivered(self, occupant, text):
        _, talker, sent_ns = text.split(" ", 2)
        if self.measuring:
            self.deliveries += 1
            self.latencies.append(time.perf_counter_ns() - int(sent_ns))
        if int(talker) == occupant.index and self.talking:
            self.say(occupant)

    def say(self, talker):
        if self.measuring:
            self.sent_in_window += 1
        talker.client.send("<message type='groupchat' to='%s'><body>b %d %d</body></message>"
                           % (self.room, talker.index, time.perf_counter_ns()))

    async def fan_out(self):
        a = self.args
        self.room = "fanout@%s" % a.service
        occupants = await self.login(a.occupants, a.login_concurrency)
        try:
            for occupant in occupants:
                await occupant.join(self.room, a.timeout)
            self.talking = True
            for talker in occupants[:a.talkers]:
                for _ in range(a.window):
                    self.say(talker)
            await asyncio.sleep(a.warmup)
            cpu0, loader0 = server_cpu(self.server.pid), time.process_time()
            self.measuring = True
            started = time.perf_counter()
            await asyncio.sleep(a.duration)
            self.measuring = False
            elapsed = time.perf_counter() - started
            cpu = server_cpu(self.server.pid) - cpu0
            loader = time.process_time() - loader0
            self.talking = False
            await asyncio.sleep(1)
        finally:
            await close_all(occupants)
        latencies = sorted(self.latencies)
        ms = lambda ns: None if ns is None else round(ns / 1e6, 2)
        return {"occupants": a.occupants, "talkers": a.talkers, "window": a.window,
                "deliveries_per_s": round(self.deliveries / elapsed, 1),
                "room_messages_per_s": round(self.sent_in_window / elapsed, 1),
                "latency_p50_ms": ms(percentile(latencies, 0.5)), "latency_p99_ms": ms(percentile(latencies, 0.99)),
                "server_cpu_s": round(cpu, 2), "server_cpu_fraction": round(cpu / elapsed, 3),
                "loader_cpu_fraction": round(loader / elapsed, 3), "measured_s": round(elapsed, 2)}

    async def joins(self):
        a = self.args
        self.room = "crowd@%s" % a.service
        occupants = await self.login(a.join_occupants, a.login_concurrency)
        try:
            await occupants[0].join(self.room, a.timeout)
            times = []
            cpu0, loader0 = server_cpu(self.server.pid), time.process_time()
            started = time.perf_counter()
            next_index = 1

            async def worker():
                nonlocal next_index
                while next_index < len(occupants):
                    occupant = occupants[next_index]
                    next_index += 1
                    await occupant.join(self.room, a.timeout)
                    times.append(time.perf_counter())

            await asyncio.gather(*[worker() for _ in range(a.join_concurrency)])
            elapsed = time.perf_counter() - started
            cpu = server_cpu(self.server.pid) - cpu0
            loader = time.process_time() - loader0
        finally:
            await close_all(occupants)
        joined = len(times)
        tenth = max(1, joined // 10)
        last = sorted(times)[-tenth - 1:]
        return {"occupants": a.join_occupants, "concurrency": a.join_concurrency, "joins": joined,
                "joins_per_s": round(joined / elapsed, 1),
                "joins_per_s_last_tenth": round(tenth / (last[-1] - last[0]), 1) if last[-1] > last[0] else None,
                "server_cpu_s": round(cpu, 2), "loader_cpu_fraction": round(loader / elapsed, 3),
                "elapsed_s": round(elapsed, 2)}


async def close_all(occupants):
    await asyncio.gather(*[occupant.client.close() for occupant in occupants], return_exceptions=True)
    for occupant in occupants:
        if occupant.reader is not None:
            occupant.reader.cancel()


def make_server(args, name, tmp):
    workdir = os.path.join(tmp, name)
    port = free_port()
    if name == "bridge":
        return MUCBridge(args, workdir, port, tables={"muc": {
            "max_occupants_per_room": max(args.occupants, args.join_occupants) + 10}})
    if name == "ejabberd":
        return MUCEjabberd(args, workdir, port, "ec")
    return MUCProsody(args, workdir, port, "ec")


def phase_run(args, server, phase):
    """The coroutine of one phase on a started ``server``."""
    bench = RoomBench(args, server)
    return bench.fan_out() if phase == "fan_out" else bench.joins()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="bridge,prosody,ejabberd",
                   help="comma-separated subset of bridge,prosody,ejabberd (default %(default)s)")
    p.add_argument("--occupants", type=int, default=100)
    p.add_argument("--talkers", type=int, default=10)
    p.add_argument("--window", type=int, default=5, help="messages in flight per talker (default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--join-occupants", type=int, default=1000)
    p.add_argument("--join-concurrency", type=int, default=10)
    p.add_argument("--login-concurrency", type=int, default=20)
    p.add_argument("--timeout", type=float, default=60.0, help="for one login or one join, in s")
    p.add_argument("--quick", action="store_true", help="20 occupants, 4 talkers, 3 s; a room of 100")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user-pattern", default="mucbench{}")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--prosody-accounts", choices=("direct", "prosodyctl"), default="direct")
    p.add_argument("--ctl-jobs", type=int, default=8,
                   help="prosodyctl processes or ejabberd registrations in parallel (default %(default)s)")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--output", help="write every figure as JSON here")
    p.add_argument("--keep-tmp", action="store_true")
    if p.parse_args(argv).quick:
        p.set_defaults(occupants=20, talkers=4, duration=3.0, warmup=1.0, join_occupants=100)
    args = p.parse_args(argv)
    args.service = "conference.%s" % args.domain
    return run_on_servers(args, "bridge-muc-bench-", max(args.occupants, args.join_occupants),
                          lambda name: ("fan_out", "joins"), make_server, phase_run, print_table)


def print_table(results):
    rows = [("deliveries/s (fan-out counted)", "fan_out", "deliveries_per_s"),
            ("room messages/s", "fan_out", "room_messages_per_s"),
            ("latency p50 ms", "fan_out", "latency_p50_ms"), ("latency p99 ms", "fan_out", "latency_p99_ms"),
            ("server CPU share (fan-out)", "fan_out", "server_cpu_fraction"),
            ("loader CPU share (fan-out)", "fan_out", "loader_cpu_fraction"),
            ("joins/s", "joins", "joins_per_s"), ("joins/s, last tenth", "joins", "joins_per_s_last_tenth"),
            ("loader CPU share (joins)", "joins", "loader_cpu_fraction")]
    names = list(results["servers"])
    print("%-32s" % "" + "".join("%14s" % name for name in names))
    for label, phase, key in rows:
        print("%-32s" % label + "".join("%14s" % results["servers"][name].get(phase, {}).get(key, "-")
                                       for name in names))
    for name in names:
        if "error" in results["servers"][name]:
            print("%s: %s" % (name, results["servers"][name]["error"]))


if __name__ == "__main__":
    sys.exit(main())

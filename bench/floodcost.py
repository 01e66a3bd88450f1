"""What one hostile event of the flood costs the server, in CPU (``python -m bench.floodcost``).

The flood bench (``bench/flood.py``) measures honest throughput beside a
closed-loop flood; that ratio moves with the machine.  This one replays
each hostile pattern of ``bench/hostile.py`` a fixed number of times
against a started bridge, kind by kind, and divides the CPU time the
server's process took meanwhile (its threads' scheduler run time, less what
it takes idle over the same time) by the number of events.  With
--baseline, a second bridge from that revision runs beside this tree's and
the two take turns, kind by kind, in the other order every round, so that
a busy neighbour weighs on both alike; the figure is the median of the
rounds.

The kinds: a garbage connection (4 KiB of random bytes, cut with a stream
error), a slowloris and a half-open TLS connection (both cut by the
pre-authentication timeout, set short here), a BOSH session created and
one refused past the per-address cap, a spoofed SIP INVITE and REGISTER.
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.hostile import Flood
from bench.load import NS_HTTPBIND, NS_XBOSH, HttpConn, raise_nofile
from bench.servers import REPO, BenchError, BridgeServer, checkout, say, stop_quietly

KINDS = ("garbage", "slowloris", "half-open-tls", "bosh-create", "bosh-refuse",
         "sip-invite", "sip-register")
STREAM_HEAD = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
               b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' "
               b"version='1.0' xmlns:x='")


def cpu_seconds(pid):
    """The run time of all of `pid`'s threads (ns resolution, from /proc/PID/task/*/schedstat)."""
    total = 0
    base = "/proc/%d/task" % pid
    for tid in os.listdir(base):
        try:
            with open("%s/%s/schedstat" % (base, tid)) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


class Sources:
    """Fresh loopback source addresses: the per-address caps of one kind's run never meet another's."""

    def __init__(self, second_byte):
        self.second = second_byte
        self.next = 0

    def take(self, n):
        out = []
        for _ in range(n):
            i = self.next
            self.next += 1
            out.append("127.%d.%d.%d" % (self.second, i // 250 % 250, i % 250 + 1))
        return out


async def bounded(n, concurrency, one):
    """Run one(i) for i in range(n), at most `concurrency` at once."""
    sem = asyncio.Semaphore(concurrency)

    async def go(i):
        async with sem:
            try:
                await one(i)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                pass
    await asyncio.gather(*(go(i) for i in range(n)))


async def read_to_end(reader, limit):
    async with asyncio.timeout(limit):
        while await reader.read(65536):
            pass


class Replay:
    """The hostile patterns, each `n` times, against one server."""

    def __init__(self, args, server, sources):
        self.args = args
        self.server = server
        self.sources = sources
        self.client_hello = Flood._client_hello()

    def stream(self, port, sources, payload):
        """One connection from one of `sources` that sends `payload` and reads until the server cuts it."""
        a = self.args

        async def one(i):
            reader, writer = await asyncio.open_connection(
                self.server.host, port, local_addr=(sources[i % len(sources)], 0))
            try:
                if payload is not None:
                    writer.write(payload() if callable(payload) else payload)
                await read_to_end(reader, a.pre_auth_timeout + 20)
            finally:
                writer.transport.abort()
        return one

    async def prepare(self, kind, n):
        """What `kind` needs before it is measured: for bosh-refuse, addresses at their cap."""
        self.addresses = None
        if kind == "bosh-refuse":
            self.addresses = self.sources.take(max(1, n // 10))
            await self.bosh_requests(self.addresses, self.args.bosh_per_address)

    async def run(self, kind, n):
        """`n` events of `kind`."""
        a = self.args
        s = self.server
        if kind == "garbage":
            one = self.stream(s.port, self.sources.take(max(1, n // 10)),
                                    lambda: os.urandom(4096))
            await bounded(n, a.concurrency, one)
        elif kind == "slowloris":
            one = self.stream(s.port, self.sources.take(max(1, n // 10)), STREAM_HEAD)
            await bounded(n, n, one)
        elif kind == "half-open-tls":
            one = self.stream(s.direct_tls_port, self.sources.take(max(1, n // 10)),
                                    self.client_hello[:-16])
            await bounded(n, n, one)
        elif kind == "bosh-create":  # up to the per-address cap from each address
            await self.bosh_requests(self.sources.take(max(1, n // a.bosh_per_address)),
                                     a.bosh_per_address)
        elif kind == "bosh-refuse":  # from addresses at their cap (``prepare``)
            await self.bosh_requests(self.addresses, n // len(self.addresses))
        elif kind in ("sip-invite", "sip-register"):
            await self.sip("INVITE" if kind == "sip-invite" else "REGISTER", n)

    async def bosh_requests(self, addresses, each):
        a = self.args

        async def from_address(i):
            conn = HttpConn(self.server.host, self.server.http_port, addresses[i])
            rid = random.randrange(1 << 40)
            try:
                for _ in range(each):
                    rid += 1
                    body = ("<body content='text/xml; charset=utf-8' hold='1' rid='%d' to='%s' "
                            "ver='1.6' wait='60' xml:lang='en' xmpp:version='1.0' xmlns='%s' "
                            "xmlns:xmpp='%s'/>" % (rid, a.domain, NS_HTTPBIND, NS_XBOSH)).encode()
                    if conn.dead:
                        conn = HttpConn(self.server.host, self.server.http_port, addresses[i])
                    async with asyncio.timeout(30):
                        await conn.post("/http-bind", a.domain, body)
            finally:
                conn.abort()
        await bounded(len(addresses), a.concurrency, from_address)

    async def sip(self, method, n):
        a = self.args
        loop = asyncio.get_running_loop()
        flood = Flood.__new__(Flood)
        flood.args = argparse.Namespace(domain=a.domain)
        endpoints = []
        for source in self.sources.take(50):  # the answers go to them, unread
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                               local_addr=(source, 0))
            endpoints.append(transport)
        interval = 1.0 / a.sip_rate
        t_next = time.monotonic()
        for i in range(n):
            transport = endpoints[i % len(endpoints)]
            port = transport.get_extra_info("sockname")[1]
            transport.sendto(flood.sip_request(method, 2 * i + (method != "INVITE"), port),
                             (self.server.host, self.server.sip_port))
            t_next += interval
            delay = t_next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.sleep(1.0)
        for t in endpoints:
            t.close()


async def measure(args, server, replay, kind, n):
    """Server CPU µs per event of `kind` (less its idle rate over the same wall time)."""
    t0, c0 = time.monotonic(), cpu_seconds(server.pid)
    await replay.run(kind, n)
    # What the events leave to do (a cut, a timer) is theirs: wait for the server to settle.
    await asyncio.sleep(args.settle)
    t1, c1 = time.monotonic(), cpu_seconds(server.pid)
    return (c1 - c0 - server.idle_rate * (t1 - t0)) / n * 1e6


async def idle_rate(server, seconds):
    c0, t0 = cpu_seconds(server.pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(server.pid) - c0) / (time.monotonic() - t0)


async def amain(args, servers):
    for s in servers:
        s.idle_rate = await idle_rate(s, 3.0)
        say("%s: idle %.2f ms of CPU a second" % (s.name, s.idle_rate * 1e3))
    results = {s.name: {k: [] for k in args.kinds} for s in servers}
    replays = {s.name: Replay(args, s, Sources(s.second_byte)) for s in servers}
    for r in range(args.rounds):
        for kind in args.kinds:
            order = servers if (r + args.kinds.index(kind)) % 2 == 0 else servers[::-1]
            for s in order:
                await replays[s.name].prepare(kind, args.events)
                await asyncio.sleep(args.settle)
                us = await measure(args, s, replays[s.name], kind, args.events)
                results[s.name][kind].append(us)
                say("round %d %-14s %-9s %7.1f µs per event" % (r + 1, kind, s.name, us))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", help="a revision to run beside this tree (e.g. main)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--events", type=int, default=1000, help="events per kind and round")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--sip-rate", type=float, default=500.0, help="spoofed datagrams a second")
    p.add_argument("--bosh-per-address", type=int, default=20,
                   help="BOSH creations per address (bridge's default cap is 20)")
    p.add_argument("--pre-auth-timeout", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=1.5, help="seconds to wait after each kind's events")
    p.add_argument("--in-memory", action="store_true",
                   help="bench/floodcost_memory.py instead: bridge's own code for SIP and BOSH, no sockets")
    p.add_argument("--profile", help="run this tree's bridge under cProfile, its stats written here")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--user-pattern", default="bench{}")
    p.add_argument("--ctl-jobs", type=int, default=4)
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--port-base", type=int, default=26300)
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in args.kinds:
        if k not in KINDS:
            p.error("unknown kind %r" % k)
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="bridge-floodcost-")
    trees = [("this", REPO)]
    if args.baseline:
        trees.insert(0, ("baseline", checkout(args.baseline, os.path.join(tmp, "baseline-tree"))))
    if args.in_memory:
        try:
            return in_memory(args, trees)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    servers = []
    try:
        for i, (name, source) in enumerate(trees):
            base = args.port_base + 10 * i
            tables = {"c2s": {"pre_auth_timeout_seconds": args.pre_auth_timeout}}
            s = BridgeServer(args, os.path.join(tmp, name), base, host="127.0.3.%d" % (101 + i),
                             name=name, direct_tls_port=base + 1, http_port=base + 2,
                             sip_port=base + 3, raised_limits=False, tables=tables, source=source)
            s.second_byte = 60 + 40 * i
            if args.profile and name == "this":
                twistd = s.command()
                s.command = lambda: twistd[:2] + ["--profile=%s" % args.profile, "--profiler=cprofile",
                                                  "--savestats"] + twistd[2:]
            s.prepare(50)  # the INVITEs' targets
            s.start()
            s.on_started()
            servers.append(s)
        results = asyncio.run(amain(args, servers))
    except BenchError as exc:
        say("FAILED: %s" % exc)
        return 1
    finally:
        for s in servers:
            stop_quietly(s)
        shutil.rmtree(tmp, ignore_errors=True)
    print_medians(args, results, [s.name for s in servers], args.kinds)
    return 0


def in_memory(args, trees):
    """bench/floodcost_memory.py once per tree and round, the trees in turn."""
    script = os.path.join(REPO, "bench", "floodcost_memory.py")
    results = {}
    for r in range(args.rounds):
        for name, source in (trees if r % 2 == 0 else trees[::-1]):
            env = dict(os.environ, PYTHONPATH=source)
            out = subprocess.run([sys.executable, script, "--events", str(args.events)], env=env, cwd=source,
                                 capture_output=True, text=True, timeout=600)
            if out.returncode:
                say("%s: %s" % (name, out.stderr[-2000:]))
                return 1
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            say("round %d %-9s %s" % (r + 1, name, figures))
            for kind, us in figures.items():
                results.setdefault(name, {}).setdefault(kind, []).append(us)
    print_medians(args, results, [name for name, _ in trees], list(results[trees[0][0]]))
    return 0


def print_medians(args, results, names, kinds):
    print("\nserver CPU µs per event, median of %d rounds (the machine may be shared)" % args.rounds)
    print("%-15s %s" % ("kind", " ".join("%10s" % n for n in names)))
    for kind in kinds:
        print("%-15s %s" % (kind, " ".join("%10.1f" % statistics.median(results[n][kind]) for n in names)))


if __name__ == "__main__":
    sys.exit(main())

"""bench/cluster_bench.py: the messages load of bench/load.py on one node and on three (issue 16, docs/scaling.md).

Run from the repository's root (loopback only; needs redis-server, PostgreSQL and psycopg, as the
integration tests do):

    .venv/bin/python -m bench.cluster_bench [--quick] [--output FILE]

In one run, each on fresh processes:

1. **sqlite**: one node on SQLite, every pair on it.
2. **postgresql**: one node on PostgreSQL, every pair on it.
3. Three nodes on that PostgreSQL and one Redis (``[cluster]``), three loaders at once, each with a third
   of the pairs, its senders on node i:
   * **same**: the receivers on the senders' node;
   * **cross**: the receivers on the next node, so that every message crosses nodes through Redis;
   * **mixed**: two loaders cross and one stays, as users spread evenly over three nodes are (two pairs
     in three cross).
4. **recovery**: a multiplexor in front of the three nodes; --recovery-users sessions, half through the
   multiplexor and half directly, spread over the nodes; node3 is killed with SIGKILL, and its users log
   in again at once (through the multiplexor, or directly to node1).  Measured: from the kill until all
   of them are back, and until both survivors have dropped node3's sessions (lease expiry,
   --lease-seconds).

Figures: delivered messages/s, p50 and p99 latency (the worst loader's), server CPU per message summed over
the nodes (each loader reports its senders' node during its measured window; the loaders run at once, so
every node is counted once), the busiest loader's CPU share (near 1.0: the figure is the loader's),
Redis's CPU per message (over the loaders' whole run, logins included), and
the cross-node penalty (cross minus same, CPU and latency).  The message archive is off, as in the other
benches.  Results go to --output as JSON.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from bench.servers import REPO, BenchError, BridgeServer, Server, say, stop_quietly

PHASES = ("sqlite", "postgresql", "same", "cross", "mixed", "recovery")


class MuxServer(Server):
    """``twistd bridge-mux`` in front of the nodes' clear-text mux listeners."""
    name = "mux"

    def __init__(self, args, workdir, port, node_addresses, secret, certificate, key):
        super().__init__(args, workdir, port)
        self.config = os.path.join(workdir, "bridge-mux.toml")
        nodes = ", ".join('"%s"' % address for address in node_addresses)
        with open(self.config, "w") as handle:
            handle.write('[mux]\nendpoints = ["tcp:%d:interface=127.0.0.1"]\ndirect_tls_endpoints = []\n'
                         'certificate = "%s"\nprivate_key = "%s"\nnodes = [%s]\nsecret_file = "%s"\n'
                         'reconnect_max_seconds = 1\n' % (port, certificate, key, nodes, secret))

    def env(self):
        return dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")

    def command(self):
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return [twistd, "-n", "--pidfile=", "bridge-mux", "--config", self.config]


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_loaders(args, loaders, redis_pid=None):
    """Run bench.load's messages mode once per (senders' node, receivers' node, offset, pairs) at once; their
    results, and Redis's CPU over the run."""
    redis_before = cpu_seconds(redis_pid) if redis_pid else None
    processes = []
    for sender_node, receiver_node, offset, pairs in loaders:
        command = [sys.executable, "-m", "bench.load", "messages", "--port", str(sender_node.port),
                   "--pairs", str(pairs), "--window", str(args.window), "--duration", str(args.duration),
                   "--warmup", str(args.warmup), "--accounts", str(2 * pairs), "--account-offset", str(offset),
                   "--password", args.password, "--domain", args.domain, "--server-pid", str(sender_node.pid)]
        if receiver_node is not sender_node:
            command += ["--recv-port", str(receiver_node.port)]
        processes.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          text=True))
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=args.duration + args.warmup + 300)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise BenchError("a loader printed no result (exit %s)" % process.returncode)
        result = json.loads(lines[-1])
        if result.get("failed"):
            raise BenchError("a loader failed: %s" % result.get("errors"))
        results.append(result)
    redis_cpu = cpu_seconds(redis_pid) - redis_before if redis_pid else None
    return results, redis_cpu


def summary(results, redis_cpu=None):
    delivered = sum(r["delivered"] for r in results)
    cpu = sum(r["server_cpu_s"] for r in results)
    out = {"messages_per_s": round(sum(r["messages_per_s"] for r in results), 1),
           "latency_p50_ms": max(r["latency_p50_ms"] for r in results),
           "latency_p99_ms": max(r["latency_p99_ms"] for r in results),
           "server_cpu_us_per_message": round(1e6 * cpu / delivered, 1) if delivered else None,
           "lost": sum(r["lost"] for r in results),
           "loader_cpu_fraction": max(r["loader_cpu_fraction"] for r in results)}
    if redis_cpu is not None:
        received = sum(r["received_total"] for r in results)
        out["redis_cpu_us_per_message"] = round(1e6 * redis_cpu / received, 1) if received else None
    return out


def node(args, workdir, name, tables, extra_port=None):
    bridge = BridgeServer(args, os.path.join(workdir, name), free_port(), name=name, tables=tables)
    if extra_port:
        bridge.extra_ports.append(("127.0.0.1", extra_port))
    return bridge


def free_port():
    from tests.integration.harness import free_port as probe
    return probe()


def migrate(bridge):
    done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", bridge.cfg, "migrate"], env=bridge.env(),
                          capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise BenchError("bridgectl migrate failed: %s" % (done.stdout + done.stderr))


def logged(server, pattern):
    with open(server.out_path, "rb") as f:
        return re.findall(pattern, f.read().decode("utf-8", "replace"))


async def recovery(args, nodes, mux, offset):
    """Sessions spread over the nodes (half through ``mux``), node3 killed: seconds until its users are all
    logged in again, and until both survivors dropped its sessions."""
    import asyncio

    from bench.load import Client, make_tls_context

    context = make_tls_context()
    users = []
    for index in range(args.recovery_users):
        through_mux = index % 2 == 0
        port = mux.port if through_mux else nodes[(index // 2) % 3].port
        users.append(Client("127.0.0.1", port, args.domain, "bench%d" % (offset + index + 1), args.password,
                            "r", context))
    await asyncio.gather(*(user.login() for user in users))
    for user in users:
        user.on_stanza = lambda client, element: client.handle_other(element)
    reads = {id(user): asyncio.ensure_future(user.read_loop()) for user in users}
    node3_mux = "127.0.0.1:%d" % nodes[2].extra_ports[0][1]
    muxed_to_node3 = {int(port) for port, to in logged(mux, r"mux: client 127\.0\.0\.1:(\d+) to node (\S+)")
                      if to == node3_mux}
    victims = [user for index, user in enumerate(users)
               if (index % 2 == 0 and user.writer.get_extra_info("sockname")[1] in muxed_to_node3)
               or (index % 2 == 1 and user.port == nodes[2].port)]
    say("recovery: %d sessions, %d of them on node3 (%d through the multiplexor)"
        % (len(users), len(victims), sum(1 for user in victims if user.port == mux.port)))
    killed = time.monotonic()
    os.kill(nodes[2].pid, signal.SIGKILL)

    async def back(user):
        await reads[id(user)]
        again = Client("127.0.0.1", mux.port if user.port == mux.port else nodes[0].port, args.domain,
                       user.username, args.password, "again", context)
        await again.login()
        users.append(again)
        return time.monotonic() - killed

    async def clean():
        pattern = r"node node3 (lost its lease|left the cluster)"
        while not all(logged(survivor, pattern) for survivor in nodes[:2]):
            await asyncio.sleep(0.02)  # a bench polls the survivors' logs; the tests wait on events
        return time.monotonic() - killed

    async with asyncio.timeout(args.lease_seconds * 10 + 30):
        relogins = await asyncio.gather(*(back(user) for user in victims))
        tables_clean = await clean()
    for user in users:
        user.abort()
    for read in reads.values():
        read.cancel()
    nodes[2].proc.wait()
    return {"sessions": len(users) - len(victims), "on_killed_node": len(victims),
            "all_back_s": round(max(relogins), 3) if relogins else None,
            "tables_clean_s": round(tables_clean, 3),
            "recovered_s": round(max(relogins + [tables_clean]), 3)}


def run(args):
    import asyncio

    from tests.integration.harness import REDIS_SERVER, RedisProcess
    from tests.integration.postgresql import PostgreSQLServer, skip_reason
    from tests.pki import self_signed

    if REDIS_SERVER is None or skip_reason():
        raise BenchError("needs redis-server and PostgreSQL: %s" % (skip_reason() or "redis-server is missing"))
    workdir = tempfile.mkdtemp(prefix="bridge-cluster-bench-")
    third = args.pairs // 3
    accounts = 2 * third * 3 + args.recovery_users
    results = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_at_start": os.getloadavg(),
                        "params": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}}}
    started = []
    database = redis_server = None

    def start(server):
        started.append(server)
        server.start()
        time.sleep(args.settle)
        return server

    try:
        say("sqlite: one node")
        single = node(args, workdir, "sqlite", {})
        single.prepare(2 * third * 3)
        start(single)
        results["sqlite"] = summary(run_loaders(args, [(single, single, 0, third * 3)])[0])
        stop_quietly(single)
        say("sqlite: %s" % results["sqlite"])

        database = PostgreSQLServer().init().start().create_database()
        storage = {"backend": "postgresql", "postgresql_dsn": database.dsn}
        say("postgresql: one node")
        single = node(args, workdir, "postgresql", {"storage": storage})
        single.prepare(0)
        migrate(single)
        single.create_accounts(accounts)
        start(single)
        results["postgresql"] = summary(run_loaders(args, [(single, single, 0, third * 3)])[0])
        stop_quietly(single)
        say("postgresql: %s" % results["postgresql"])

        redis_server = RedisProcess(workdir).start()
        secret = os.path.join(workdir, "mux.secret")
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("the secret of the bench's multiplexor\n")
        nodes = []
        for number in (1, 2, 3):
            mux_port = free_port()
            tables = {"storage": storage,
                      "cluster": {"enabled": True, "node_name": "node%d" % number,
                                  "redis_address": "127.0.0.1:%d" % redis_server.port,
                                  "password_file": redis_server.password_file,
                                  "lease_seconds": args.lease_seconds},
                      "mux_listener": {"endpoints": ["tcp:%d:interface=127.0.0.1" % mux_port], "secret_file": secret}}
            nodes.append(node(args, workdir, "node%d" % number, tables, extra_port=mux_port))
            nodes[-1].prepare(0)
            start(nodes[-1])
        plans = {"same": [(nodes[i], nodes[i], 2 * third * i, third) for i in range(3)],
                 "cross": [(nodes[i], nodes[(i + 1) % 3], 2 * third * i, third) for i in range(3)]}
        plans["mixed"] = plans["cross"][:2] + plans["same"][2:]
        for phase in ("same", "cross", "mixed"):
            say("three nodes: %s" % phase)
            loaders, redis_cpu = run_loaders(args, plans[phase], redis_server.process.pid)
            results[phase] = summary(loaders, redis_cpu)
            if phase == "mixed":
                results[phase]["cross_pairs_p99_ms"] = max(r["latency_p99_ms"] for r in loaders[:2])
                results[phase]["same_pairs_p99_ms"] = loaders[2]["latency_p99_ms"]
            say("three nodes: %s: %s" % (phase, results[phase]))
        results["cross_node_penalty"] = {
            "cpu_us_per_message": round(results["cross"]["server_cpu_us_per_message"]
                                        - results["same"]["server_cpu_us_per_message"], 1),
            "redis_cpu_us_per_message": round(results["cross"]["redis_cpu_us_per_message"]
                                              - results["same"]["redis_cpu_us_per_message"], 1),
            "latency_p50_ms": round(results["cross"]["latency_p50_ms"] - results["same"]["latency_p50_ms"], 3),
            "latency_p99_ms": round(results["cross"]["latency_p99_ms"] - results["same"]["latency_p99_ms"], 3)}

        say("recovery")
        certificate, key = self_signed(workdir, ["localhost"], file_name="mux")
        mux = MuxServer(args, os.path.join(workdir, "mux"), free_port(),
                        ["127.0.0.1:%d" % n.extra_ports[0][1] for n in nodes], secret, certificate, key)
        start(mux)
        while len(logged(mux, r"mux: link to node \S+ up \(2 links\)")) < 3:
            time.sleep(0.05)
        results["recovery"] = asyncio.run(recovery(args, nodes, mux, 2 * third * 3))
        say("recovery: %s" % results["recovery"])
    finally:
        for server in reversed(started):
            stop_quietly(server)
        if redis_server is not None:
            redis_server.stop()
        if database is not None:
            database.remove()
        results["meta"]["loadavg_at_end"] = os.getloadavg()
        if args.output:
            with open(args.output, "w") as f:
                json.dump(results, f, indent=2, sort_keys=True)
        print_table(results)
    return 0


def print_table(results):
    print("\n%-34s %10s %9s %9s %12s %12s %7s" % ("", "msgs/s", "p50 ms", "p99 ms", "CPU us/msg", "Redis us/msg",
                                                 "loader"))
    labels = {"sqlite": "1 node, SQLite", "postgresql": "1 node, PostgreSQL",
              "same": "3 nodes, every pair on one node", "cross": "3 nodes, every pair across nodes",
              "mixed": "3 nodes, 2 pairs in 3 across"}
    for phase, label in labels.items():
        r = results.get(phase)
        if r:
            print("%-34s %10s %9s %9s %12s %12s %7s" % (label, r["messages_per_s"], r["latency_p50_ms"],
                                                       r["latency_p99_ms"], r["server_cpu_us_per_message"],
                                                       r.get("redis_cpu_us_per_message", "-"),
                                                       r["loader_cpu_fraction"]))
    if "mixed" in results:
        print("mixed: p99 of the cross-node pairs %s ms, of the same-node pairs %s ms"
              % (results["mixed"]["cross_pairs_p99_ms"], results["mixed"]["same_pairs_p99_ms"]))
    if "cross_node_penalty" in results:
        print("cross-node penalty per message: %s" % results["cross_node_penalty"])
    if "recovery" in results:
        print("recovery of a killed node: %s" % results["recovery"])
    meta = results["meta"]
    print("load average: %s at the start, %s at the end" % (
        ", ".join("%.1f" % v for v in meta["loadavg_at_start"]),
        ", ".join("%.1f" % v for v in meta.get("loadavg_at_end", ()))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=48, help="message pairs, a third per loader (default %(default)s)")
    p.add_argument("--window", type=int, default=20, help="messages in flight per pair (default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--recovery-users", type=int, default=60)
    p.add_argument("--lease-seconds", type=float, default=2.0, help="[cluster] lease_seconds (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="12 pairs, 3 s, 12 recovery users: about 2 minutes")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user-pattern", default="bench{}")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--ctl-jobs", type=int, default=8, help="bridgectl adduser processes at once")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=1.0, help="seconds after each start")
    p.add_argument("--output", help="write every figure as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.duration, args.warmup, args.recovery_users = 12, 3.0, 1.0, 12
    if args.pairs < 3:
        p.error("--pairs must be at least 3 (a third per loader)")
    try:
        return run(args)
    except BenchError as exc:
        say("FAILED: %s" % exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""bench/cluster_bench.py: the messages load of bench/load.py on one node, two and three (issue 16, docs/scaling.md).

Run from the repository's root (loopback only; needs redis-server, PostgreSQL and psycopg, as the
integration tests do):

    .venv/bin/python -m bench.cluster_bench [--quick] [--output FILE]

In one run, each on fresh processes, every load made by the same six loader processes at once (a sixth of
the pairs each, loader i's senders on node i mod N), so that the rows compare:

1. **sqlite**: one node on SQLite, every pair on it.
2. **postgresql**: one node on PostgreSQL, every pair on it.
3. Two nodes on that PostgreSQL and one Redis (``[cluster]``), then a third node joining them; with N
   nodes:
   * **sameN**: the receivers on the senders' node;
   * **crossN**: the receivers on the next node, so that every message crosses nodes through Redis;
   * **mixedN**: (N - 1) / N of the loaders cross and the others stay, as users spread evenly over N
     nodes are (half the pairs cross with two nodes, two in three with three).
4. **recovery**: a multiplexor in front of the three nodes; --recovery-users sessions, half through the
   multiplexor and half directly, spread over the nodes; node3 is killed with SIGKILL, and its users log
   in again at once (through the multiplexor, or directly to node1).  Measured: from the kill until all
   of them are back, and until both survivors have dropped node3's sessions (lease expiry,
   --lease-seconds).

Figures: delivered messages/s, p50 and p99 latency (the worst loader's), each node's CPU in cores (each
loader reads its senders' node over its measured window; a node's figure is the mean of its loaders'), the
server CPU per message (those cores summed over the nodes, divided by the messages delivered per second),
the busiest loader's CPU share (near 1.0: the rate is the loader's), Redis's CPU per message (over the
loaders' whole run, logins included), the cross-node penalty (cross minus same, CPU and latency) and the
capacity model's check: the mixed run's CPU per message against ``c_same + f x delta``, f the share of its
messages that crossed.  The message archive is off, as in the other benches.  Results go to --output as
JSON.
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

LOADERS = 6  # loader processes in every run, so that rows compare: a multiple of 1, 2 and 3, each node as many
LAYOUTS = ("same", "cross", "mixed")


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


def plan(nodes, layout, per_loader):
    """The loaders of a layout over ``nodes``: (senders' node, receivers' node, account offset, pairs) each."""
    count = len(nodes)
    crossing = {"same": 0, "cross": LOADERS, "mixed": round(LOADERS * (count - 1) / count)}[layout]
    return [(nodes[i % count], nodes[(i % count + (1 if i < crossing else 0)) % count], 2 * per_loader * i,
             per_loader) for i in range(LOADERS)]


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


def summary(loaders, results, redis_cpu=None):
    """The figures of one run: ``results`` are those of ``loaders`` (``plan``), in order."""
    shares = {}  # node name -> its CPU in cores, as each of its senders' loaders saw it
    for (sender_node, _, _, _), r in zip(loaders, results):
        shares.setdefault(sender_node.name, []).append(r["server_cpu_s"] / r["duration_s"])
    receivers = {receiver_node.name for _, receiver_node, _, _ in loaders}
    if not receivers <= set(shares):
        raise BenchError("a node receives and no loader reads its CPU: %s" % sorted(receivers - set(shares)))
    cores = {name: sum(values) / len(values) for name, values in sorted(shares.items())}
    rate = sum(r["messages_per_s"] for r in results)
    out = {"messages_per_s": round(rate, 1),
           "latency_p50_ms": max(r["latency_p50_ms"] for r in results),
           "latency_p99_ms": max(r["latency_p99_ms"] for r in results),
           "node_cpu_cores": {name: round(value, 3) for name, value in cores.items()},
           "server_cpu_us_per_message": round(1e6 * sum(cores.values()) / rate, 1) if rate else None,
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
    per_loader = args.pairs // LOADERS
    pairs = per_loader * LOADERS
    accounts = 2 * pairs + args.recovery_users
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
        single.prepare(2 * pairs)
        start(single)
        loaders = plan([single], "same", per_loader)
        results["sqlite"] = summary(loaders, run_loaders(args, loaders)[0])
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
        loaders = plan([single], "same", per_loader)
        results["postgresql"] = summary(loaders, run_loaders(args, loaders)[0])
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
            if number == 1:
                continue
            for layout in LAYOUTS:
                phase = "%s%d" % (layout, number)
                say("%d nodes: %s" % (number, layout))
                loaders = plan(nodes, layout, per_loader)
                loaded, redis_cpu = run_loaders(args, loaders, redis_server.process.pid)
                results[phase] = summary(loaders, loaded, redis_cpu)
                if layout == "mixed":
                    results[phase].update(mixed_figures(loaders, loaded))
                say("%d nodes: %s: %s" % (number, layout, results[phase]))
            results["cross_node_penalty_%d" % number] = penalty(results, number)

        say("recovery")
        certificate, key = self_signed(workdir, ["localhost"], file_name="mux")
        mux = MuxServer(args, os.path.join(workdir, "mux"), free_port(),
                        ["127.0.0.1:%d" % n.extra_ports[0][1] for n in nodes], secret, certificate, key)
        start(mux)
        while len(logged(mux, r"mux: link to node \S+ up \(2 links\)")) < 3:
            time.sleep(0.05)
        results["recovery"] = asyncio.run(recovery(args, nodes, mux, 2 * pairs))
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


def mixed_figures(loaders, results):
    """What a mixed run shows of its crossing and staying pairs apart.  The crossing pairs are slower (each
    keeps --window in flight), so fewer than (N - 1) / N of the messages cross: the share that did."""
    crossing = [r for (sender, receiver, _, _), r in zip(loaders, results) if sender is not receiver]
    staying = [r for (sender, receiver, _, _), r in zip(loaders, results) if sender is receiver]
    return {"cross_pairs_p99_ms": max(r["latency_p99_ms"] for r in crossing),
            "same_pairs_p99_ms": max(r["latency_p99_ms"] for r in staying),
            "crossing_message_fraction": round(sum(r["messages_per_s"] for r in crossing)
                                               / sum(r["messages_per_s"] for r in results), 3)}


def penalty(results, count):
    """Cross minus same with ``count`` nodes, and the capacity model's check: the mixed run's CPU per message
    against c_same + f x delta (docs/scaling.md, "The model"), f being the share of its messages that crossed
    (the model's f = (count - 1) / count is the share of the pairs)."""
    same, cross, mixed = (results["%s%d" % (layout, count)] for layout in LAYOUTS)
    delta = cross["server_cpu_us_per_message"] - same["server_cpu_us_per_message"]
    f = mixed["crossing_message_fraction"]
    return {"cpu_us_per_message": round(delta, 1),
            "redis_cpu_us_per_message": round(cross["redis_cpu_us_per_message"] - same["redis_cpu_us_per_message"], 1),
            "latency_p50_ms": round(cross["latency_p50_ms"] - same["latency_p50_ms"], 3),
            "latency_p99_ms": round(cross["latency_p99_ms"] - same["latency_p99_ms"], 3),
            "model_mixed_cpu_us_per_message": round(same["server_cpu_us_per_message"] + f * delta, 1),
            "measured_mixed_cpu_us_per_message": mixed["server_cpu_us_per_message"]}


def print_table(results):
    row = "%-34s %10s %9s %9s %12s %18s %12s %7s"
    print("\n" + row % ("", "msgs/s", "p50 ms", "p99 ms", "CPU us/msg", "node CPU (cores)", "Redis us/msg",
                        "loader"))
    labels = {"sqlite": "1 node, SQLite", "postgresql": "1 node, PostgreSQL"}
    for count, mixed in ((2, "half the pairs across"), (3, "2 pairs in 3 across")):
        labels.update({"same%d" % count: "%d nodes, every pair on one node" % count,
                       "cross%d" % count: "%d nodes, every pair across nodes" % count,
                       "mixed%d" % count: "%d nodes, %s" % (count, mixed)})
    for phase, label in labels.items():
        r = results.get(phase)
        if r:
            print(row % (label, r["messages_per_s"], r["latency_p50_ms"], r["latency_p99_ms"],
                         r["server_cpu_us_per_message"], " ".join("%.2f" % v for v in r["node_cpu_cores"].values()),
                         r.get("redis_cpu_us_per_message", "-"), r["loader_cpu_fraction"]))
    for count in (2, 3):
        mixed = results.get("mixed%d" % count)
        if mixed:
            print("mixed, %d nodes: %.0f%% of the messages crossed; p99 of the cross-node pairs %s ms, of the "
                  "same-node pairs %s ms" % (count, 100 * mixed["crossing_message_fraction"],
                                            mixed["cross_pairs_p99_ms"], mixed["same_pairs_p99_ms"]))
        if "cross_node_penalty_%d" % count in results:
            print("cross-node penalty per message, %d nodes: %s" % (count, results["cross_node_penalty_%d" % count]))
    if "recovery" in results:
        print("recovery of a killed node: %s" % results["recovery"])
    meta = results["meta"]
    print("load average: %s at the start, %s at the end" % (
        ", ".join("%.1f" % v for v in meta["loadavg_at_start"]),
        ", ".join("%.1f" % v for v in meta.get("loadavg_at_end", ()))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=48,
                   help="message pairs, a sixth per loader, a multiple of %d (default %%(default)s)" % LOADERS)
    p.add_argument("--window", type=int, default=20, help="messages in flight per pair (default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--recovery-users", type=int, default=60)
    p.add_argument("--lease-seconds", type=float, default=2.0, help="[cluster] lease_seconds (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="12 pairs, 3 s, 12 recovery users: about 2.5 minutes")
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
    if args.pairs < LOADERS or args.pairs % LOADERS:
        p.error("--pairs must be a multiple of %d (a sixth per loader)" % LOADERS)
    try:
        return run(args)
    except BenchError as exc:
        say("FAILED: %s" % exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())

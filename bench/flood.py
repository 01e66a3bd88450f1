"""The flood benchmark: honest pairs chatting, alone and then beside 2,000 hostile connections and a SIP flood (``python -m bench.flood``).

A benchmark, not a test: it prints figures and asserts nothing.  Loopback
only.  bridge runs with its own config in a temporary folder (c2s with
STARTTLS and direct TLS, HTTP for BOSH, SIP on UDP, all on --host) and its
default limits, except the byte rate of a c2s connection, raised so that the
honest pairs measure the server rather than that limit
(--default-rate-limit keeps it).  Two runs, each on a freshly started
bridge:

1. quiet: --pairs sender/receiver pairs (the loader's messages load,
   ``bench/load.py``) from the --honest-sources addresses, --duration
   seconds measured after --warmup;
2. hostile: the same, while ``bench/hostile.py`` keeps the hostile
   connections open from the --hostile-sources addresses (slowloris,
   garbage, half-open TLS, BOSH session creation) and floods SIP over UDP;
   the flood starts before the honest clients log in and stops once they
   are done.

During each run the server's RSS, CPU and open descriptors are sampled every
second (also --recovery seconds after the load, while hostile sessions
expire), and afterwards its log is read: each line that says a limit
refused or cut a connection is counted by limit and by the kind of hostile
worker whose connection it names.  --profile records the server with py-spy
during the hostile run and prints where its time went.
"""

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench import report
from bench.load import address_range, raise_nofile
from bench.loads import parse_line, parse_result, run_loader, smoke
from bench.logs import log_summary
from bench.monitor import ProcessMonitor, summary
from bench.servers import REPO, BenchError, BridgeServer, say, stop_quietly, tail

# What the server's log says when a limit refuses or cuts a connection: (label, pattern), first match wins.
LIMITS = [
    ("c2s refused: connections per address",
     r"stream error policy-violation for \S+: too many connections from your address"),
    ("c2s cut: pre-auth timeout", r"stream error connection-timeout for \S+: no authentication in time"),
    ("c2s cut: no answer to ping", r"stream error connection-timeout for \S+: no answer to ping"),
    ("c2s cut: bad XML", r"stream error (not-well-formed|bad-format|restricted-xml|invalid-xml|"
                         r"bad-namespace-prefix|invalid-namespace|unsupported-encoding|"
                         r"unsupported-stanza-type|invalid-from) for"),
    ("c2s cut: output not read", r"cutting off \S+: \d+ bytes it does not read"),
    ("c2s: other stream error", r"stream error \S+ for"),
    ("c2s: failed login", r"authentication failed for"),
    ("http refused: connections per address", r"refusing HTTP connection from \S+: too many connections"),
    ("http cut: request not in time", r"closing HTTP connection of \S+: its request did not arrive in time"),
    ("bosh refused: sessions per address", r"refusing a BOSH session for \S+: too many sessions from its address"),
    ("bosh refused: sessions in all", r"refusing a BOSH session for \S+: \d+ sessions already"),
    ("bosh ended: inactivity", r"BOSH session of \S+ ended: no request for"),
    ("bosh ended: other", r"BOSH session of \S+ terminated"),
    ("bosh: unreadable request", r"unreadable BOSH request"),
    ("sip: answered an error", r"SIP \S+ request from .* answered \d+"),
    ("sip: input dropped", r"SIP \S+ input from .* dropped"),
    ("sip: transaction timed out", r"SIP \S+ transaction with .* timed out"),
    ("sip: other", r"\bSIP\b"),
    ("error or traceback", r"Traceback|Unhandled|#(error|critical)\]"),
]
_LIMITS = [(label, re.compile(pattern)) for label, pattern in LIMITS]
_PEER = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3}):(\d+)\b")
_PROBLEM = re.compile(r"Traceback|Unhandled|error|failure|refus|cut|too many|timed out|"
                      r"timeout|dropped|ended", re.I)


def log_counts(text, connections, honest, hostile):
    """{label: {who: count}} for the log lines of LIMITS; `who` is the hostile kind whose connection
    the line names (`connections`: {"host:port": kind}), "honest", "hostile (other)" or "-"."""
    counts = {}
    for line in text.splitlines():
        for label, pattern in _LIMITS:
            if pattern.search(line):
                break
        else:
            continue
        m = _PEER.search(line)
        who = "-"
        if m:
            who = connections.get("%s:%s" % m.groups())
            if who is None:
                who = "honest" if m.group(1) in honest else \
                    "hostile (other)" if m.group(1) in hostile else "-"
        by = counts.setdefault(label, {})
        by[who] = by.get(who, 0) + 1
    return counts


def read_connections(path):
    conns = {}
    try:
        with open(path) as f:
            for line in f:
                kind, _, peer = line.strip().partition(" ")
                if peer:
                    conns[peer] = kind
    except OSError:
        pass
    return conns


class Hostile:
    """bench/hostile.py as a process: started, waited for until ready, stopped, its result read."""

    def __init__(self, args, server, connections_file):
        a = args
        self.cmd = [sys.executable, "-m", "bench.hostile", "--host", server.host,
                    "--domain", server.domain, "--c2s-port", str(server.port),
                    "--tls-port", str(server.direct_tls_port), "--http-port", str(server.http_port),
                    "--sip-port", str(server.sip_port), "--sources", a.hostile_sources_text,
                    "--slowloris", str(a.slowloris), "--garbage", str(a.garbage),
                    "--half-open-tls", str(a.half_open_tls), "--bosh", str(a.bosh),
                    "--sip-rate", str(a.sip_rate), "--sip-tail", str(a.sip_tail),
                    "--duration", str(a.max_flood), "--ramp", str(a.ramp),
                    "--reconnect-delay", str(a.reconnect_delay),
                    "--connections", connections_file, "--stop-on-stdin"]
        self.proc = None
        self.lines = []
        self.ready = threading.Event()
        self.t_start = None

    def start(self, timeout):
        say("hostile: %s" % " ".join(self.cmd[3:]))
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, text=True)
        self.t_start = time.monotonic()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self.ready.wait(timeout):
            self.stop(30)
            raise BenchError("the hostile load did not start in %.0f s" % timeout)

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            obj = parse_line(line)
            if obj is not None and obj.get("type") == "ready":
                self.ready.set()
        self.ready.set()

    def stop(self, timeout):
        """Close its stdin (it stops, counts SIP answers for its tail, then prints); its result."""
        if self.proc is None:
            return None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(0.2)
        return parse_result("".join(self.lines))


def profile(pid, seconds, path):
    """py-spy record of `pid` for `seconds` (collapsed stacks in `path`), as a started process."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        say("py-spy not found (pip install py-spy): no profile")
        return None
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
           "--format", "raw", "--output", path, "--nonblocking"]
    say("profile: %s" % " ".join(cmd))
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_summary(path, top=25):
    """From py-spy's collapsed stacks: the functions with the most samples, inclusive and self."""
    inclusive, own, total = {}, {}, 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, n = line.rstrip("\n").rpartition(" ")
                if not n.isdigit():
                    continue
                n = int(n)
                total += n
                frames = [re.sub(r" \((.*)/([^/]+)\)$", r" (\2)", fr) for fr in stack.split(";")]
                for fr in set(frames):
                    inclusive[fr] = inclusive.get(fr, 0) + n
                own[frames[-1]] = own.get(frames[-1], 0) + n
    except OSError:
        return None
    pct = lambda table: [(round(100 * v / total, 1), k) for k, v in
                         sorted(table.items(), key=lambda kv: -kv[1])[:top]] if total else []
    return {"samples": total, "inclusive": pct(inclusive), "self": pct(own)}


def one_run(args, server, name, log_path, tmp):
    """One run on a freshly started server: {"load", "monitor", "hostile", "log", ...}."""
    out = {}
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    server.start()
    server.on_started()
    try:
        smoke(args, server, args.accounts)
        monitor = ProcessMonitor(server.pid, 1.0).start()
        hostile = spy = None
        conns_file = os.path.join(tmp, "%s-connections.txt" % name)
        if name == "hostile":
            hostile = Hostile(args, server, conns_file)
            monitor.mark("flood starts")
            hostile.start(args.ramp + 60)
            monitor.mark("flood ready")
            if args.profile:
                spy = profile(server.pid, args.warmup + args.duration + 10,
                              os.path.join(tmp, "profile.txt"))
        monitor.mark("honest logins")
        try:
            out["load"] = run_loader(args, server, "messages", [
                "--pairs", args.pairs, "--window", args.window, "--duration", args.duration,
                "--warmup", args.warmup, "--max-time", args.max_time,
                "--login-timeout", args.login_timeout,
                "--source-addresses", args.honest_sources_text],
                timeout=args.max_time + args.duration + args.warmup + 120)
        except BenchError as exc:
            out["load"] = {"failed": True, "error": str(exc)}
            say("%s: honest load FAILED: %s" % (name, exc))
        monitor.mark("honest load done")
        if hostile is not None:
            out["hostile"] = hostile.stop(args.sip_tail + 120)
            monitor.mark("flood stopped (SIP tail counted)")
        if spy is not None:
            try:
                spy.wait(timeout=args.warmup + args.duration + 60)
            except subprocess.TimeoutExpired:
                spy.kill()
            out["profile"] = profile_summary(os.path.join(tmp, "profile.txt"))
            if args.save_dir:
                shutil.copy(os.path.join(tmp, "profile.txt"), os.path.join(args.save_dir, "flood-profile.txt"))
        t_end = monitor.now()
        deadline = time.monotonic() + args.recovery
        while time.monotonic() < deadline and server.alive():
            time.sleep(0.5)
        monitor.mark("recovery end")
        monitor.stop()
        out["alive"] = server.alive()
        out["samples"] = monitor.samples
        out["marks"] = monitor.marks
        out["monitor_load"] = summary(monitor.between(0, t_end))
        out["monitor_all"] = summary(monitor.samples)
        if args.save_dir:
            monitor.write_csv(os.path.join(args.save_dir, "flood-%s-samples.csv" % name))
    finally:
        stop_quietly(server)
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    conns = read_connections(conns_file) if name == "hostile" else {}
    out["limits"] = log_counts(text, conns, set(args.honest_sources), set(args.hostile_sources))
    lines = [line for line in text.splitlines() if _PROBLEM.search(line)]
    out["log_summary"] = log_summary(lines, limit=30)
    out["tracebacks"] = len(re.findall(r"Traceback", text))
    return out


def print_report(results, args):
    runs = results["runs"]
    q, h = runs.get("quiet", {}), runs.get("hostile", {})
    fmt = report.fmt

    def fig(run, *keys):
        v = run
        for k in keys:
            v = (v or {}).get(k)
        return v

    rows = [
        ("honest messages/s", ("load", "messages_per_s")),
        ("latency p50 ms", ("load", "latency_p50_ms")),
        ("latency p99 ms", ("load", "latency_p99_ms")),
        ("honest login p50 ms", ("load", "login_time_p50_ms")),
        ("honest login p99 ms", ("load", "login_time_p99_ms")),
        ("messages lost", ("load", "lost")),
        ("server CPU us/message", ("load", "server_cpu_us_per_message")),
        ("loader CPU fraction", ("load", "loader_cpu_fraction")),
        ("server CPU % (mean, load)", ("monitor_load", "cpu_mean_pct")),
        ("machine CPU %% (of %d00)" % (os.cpu_count() or 1), ("monitor_load", "machine_cpu_mean_pct")),
        ("RSS MiB at start", ("monitor_all", "rss_first_mib")),
        ("RSS MiB peak", ("monitor_all", "rss_peak_mib")),
        ("RSS MiB at the end", ("monitor_all", "rss_last_mib")),
        ("open fds at start", ("monitor_all", "fds_first")),
        ("open fds peak", ("monitor_all", "fds_peak")),
        ("open fds at the end", ("monitor_all", "fds_last")),
    ]
    print()
    print("Flood benchmark: %d honest pairs, %.0f s measured; hostile: %s"
          % (args.pairs, args.duration, ", ".join("%s %d" % (k, getattr(args, k.replace("-", "_")))
                                                   for k in ("slowloris", "garbage", "half-open-tls",
                                                             "bosh"))
             + ", SIP %.0f datagrams/s" % args.sip_rate))
    head = "%-30s%14s%14s%10s" % ("figure", "quiet", "hostile", "ratio")
    print(head)
    print("-" * len(head))
    for label, keys in rows:
        a, b = fig(q, *keys), fig(h, *keys)
        ratio = round(b / a, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None
        print("%-30s%14s%14s%10s" % (label, fmt(a), fmt(b), fmt(ratio)))
    for name, run in (("quiet", q), ("hostile", h)):
        ended = fig(run, "load", "sessions_ended")
        print("  %s: honest sessions ended by the server: %s" % (name, ended or "none"))
        for w in report.load_warnings(run.get("load") or {}):
            print("  %s: %s" % (name, w))
        if run.get("tracebacks"):
            print("  %s: %d tracebacks in the server log" % (name, run["tracebacks"]))
        if run and not run.get("alive", True):
            print("  %s: THE SERVER DIED" % name)
    a, b = fig(q, "load", "messages_per_s"), fig(h, "load", "messages_per_s")
    if a and b is not None:
        print("  hostile/quiet throughput %.0f %% (goal: 80 %% or more)" % (100 * b / a))
    hs = h.get("hostile") or {}
    if hs:
        print()
        print("Hostile connections (%d source addresses, %.0f s, generator CPU %.1f s)"
              % (hs.get("sources", 0), hs.get("flood_s", 0), hs.get("cpu_s", 0)))
        cols = ("workers", "attempts", "connected", "open_peak", "lifetime_p50_s", "lifetime_max_s",
                "bytes_sent", "bytes_received")
        print("%-14s" % "kind" + "".join("%13s" % c.replace("lifetime_", "life ") for c in cols))
        for kind, k in hs.get("kinds", {}).items():
            print("%-14s" % kind + "".join("%13s" % fmt(k.get(c)) for c in cols))
        for kind, k in hs.get("kinds", {}).items():
            for key in ("ended_by_server", "connect_errors", "bosh_answers", "errors"):
                if k.get(key):
                    print("  %s %s: %s" % (kind, key.replace("_", " "), k[key]))
        sip = hs.get("sip")
        if sip:
            print("SIP flood: %s datagrams/s from %d sources for %.0f s, answers counted %.0f s more"
                  % (fmt(sip.get("rate_per_s")), sip.get("sources", 0), sip.get("flood_s", 0),
                     sip.get("tail_s", 0)))
            for m in ("INVITE", "REGISTER"):
                s = sip.get(m) or {}
                print("  %-9s sent %7d (%9d bytes)  answers %7d (%9d bytes)  answers/request %s"
                      "  amplification (bytes) %s" % (m, s.get("sent", 0), s.get("sent_bytes", 0),
                                                      s.get("answers", 0), s.get("answer_bytes", 0),
                                                      fmt(s.get("answers_per_request")),
                                                      fmt(s.get("amplification_bytes"))))
            print("  answers: %s" % sip.get("responses"))
    for name, run in (("quiet", q), ("hostile", h)):
        if run.get("limits"):
            print()
            print("Server log, %s run: lines by limit, and whose connection they name" % name)
            for label, by in run["limits"].items():
                print("  %-42s %7d  %s" % (label, sum(by.values()), by))
    for name, run in (("quiet", q), ("hostile", h)):
        if run.get("samples"):
            print()
            print("Server over time, %s run (every %d s): t s, RSS MiB, CPU %%, fds, machine CPU %%"
                  % (name, args.curve_step))
            print_curve(run["samples"], run.get("marks", []), args.curve_step)
    prof = h.get("profile")
    if prof and prof.get("samples"):
        print()
        print("py-spy, hostile run: %d samples; most inclusive time:" % prof["samples"])
        for p, fn in prof["inclusive"][:20]:
            print("  %5.1f%%  %s" % (p, fn))
        print("most self time:")
        for p, fn in prof["self"][:15]:
            print("  %5.1f%%  %s" % (p, fn))


def round_ratio(done):
    """A round's honest throughput with the flood over without it, or None."""
    quiet = ((done.get("quiet") or {}).get("load") or {}).get("messages_per_s")
    hostile = ((done.get("hostile") or {}).get("load") or {}).get("messages_per_s")
    return hostile / quiet if quiet and hostile is not None else None


def median_round(rounds):
    """The round whose ratio is the median (the lower one of an even count), reported in full; the last round
    when no ratio is known."""
    rated = sorted((ratio, number) for number, ratio in enumerate(map(round_ratio, rounds)) if ratio is not None)
    if not rated:
        return rounds[-1] if rounds else {}
    return rounds[rated[(len(rated) - 1) // 2][1]]


def print_rounds(rounds):
    """One line per round: the honest pairs' messages/s and p99 in each run, and the ratio; then the medians."""
    fmt = report.fmt
    print()
    print("%-8s%14s%14s%12s%12s%10s%16s" % ("round", "quiet msg/s", "hostile msg/s", "quiet p99", "hostile p99",
                                            "ratio", "honest ended"))
    for number, done in enumerate(rounds, 1):
        q, h = (done.get("quiet") or {}).get("load") or {}, (done.get("hostile") or {}).get("load") or {}
        print("%-8d%14s%14s%12s%12s%10s%16s" % (
            number, fmt(q.get("messages_per_s")), fmt(h.get("messages_per_s")), fmt(q.get("latency_p99_ms")),
            fmt(h.get("latency_p99_ms")), fmt(round_ratio(done)),
            "%s / %s" % (q.get("sessions_ended") or 0, h.get("sessions_ended") or 0)))
    ratios = [r for r in map(round_ratio, rounds) if r is not None]
    if ratios:
        print("median of the rounds' ratios: %.0f %% (goal: 80 %% or more); rounds at 80 %% or more: %d of %d"
              % (100 * statistics.median(ratios), sum(r >= 0.8 for r in ratios), len(ratios)))
        print("(the full report below is of the round with the median ratio)")


def print_curve(samples, marks, step):
    """Every `step`-th sample on one line each, with what happened since the line before."""
    pending = sorted(marks)
    for i, s in enumerate(samples):
        if i % step and i != len(samples) - 1:
            continue
        notes = []
        while pending and pending[0][0] <= s["t"]:
            notes.append(pending.pop(0)[1])
        rss = s["rss_kib"] / 1024 if s["rss_kib"] is not None else float("nan")
        print("  %6.0f %8.1f %6s %6s %6s  %s" % (s["t"], rss, report.fmt(s.get("cpu_pct")), s["fds"],
                                                  report.fmt(s.get("machine_pct")), "; ".join(notes)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.3.1", help="bridge's loopback address (default %(default)s)")
    p.add_argument("--c2s-port", type=int, default=25322)
    p.add_argument("--tls-port", type=int, default=25323, help="direct-TLS c2s port")
    p.add_argument("--http-port", type=int, default=25380)
    p.add_argument("--sip-port", type=int, default=25360, help="SIP UDP port")
    p.add_argument("--honest-sources", dest="honest_sources_text", default="127.0.3.10-127.0.3.19",
                   help="addresses of the honest clients, A-B or A,B,... (default %(default)s: "
                        "10 sessions each, under bridge's 20 per address)")
    p.add_argument("--hostile-sources", dest="hostile_sources_text", default="127.0.0.2-127.0.0.250",
                   help="addresses of the hostile workers (default %(default)s)")
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--window", type=int, default=50, help="messages in flight per pair")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds (default %(default)s)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--slowloris", type=int, default=600)
    p.add_argument("--garbage", type=int, default=400)
    p.add_argument("--half-open-tls", type=int, default=500)
    p.add_argument("--bosh", type=int, default=500)
    p.add_argument("--sip-rate", type=float, default=200.0,
                   help="SIP datagrams a second, INVITE and REGISTER (default %(default)s)")
    p.add_argument("--sip-tail", type=float, default=35.0)
    p.add_argument("--ramp", type=float, default=10.0,
                   help="seconds over which the hostile workers start (default %(default)s)")
    p.add_argument("--reconnect-delay", type=float, default=0.5)
    p.add_argument("--recovery", type=float, default=70.0,
                   help="seconds of sampling after the load (hostile BOSH sessions expire after "
                        "60 s; default %(default)s)")
    p.add_argument("--runs", default="quiet,hostile", help="which runs, in order (default %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the runs this many times, in the other order every second round, and report "
                        "each round's hostile/quiet ratio and their median (default %(default)s)")
    p.add_argument("--server-cpus", default="0",
                   help="CPUs bridge runs on, the loaders and this script on the others "
                        "(comma-separated numbers; '' for no pinning; default %(default)s)")
    p.add_argument("--default-rate-limit", action="store_true",
                   help="keep bridge's default c2s byte rate (20000/s) for the honest clients too")
    p.add_argument("--unauthenticated-share", type=float,
                   help="bridge's [c2s] unauthenticated_share (triage; default: bridge's own)")
    p.add_argument("--profile", action="store_true", help="py-spy record of the server, hostile run")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 5 pairs for 5 s, 200 hostile workers, 10 s of recovery")
    p.add_argument("--login-timeout", type=float, default=60.0,
                   help="an honest login's longest time (default %(default)s)")
    p.add_argument("--max-time", type=float, default=300.0)
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user-pattern", default="bench{}")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--bridge-data-dir", help="persistent data_dir, to reuse the accounts")
    p.add_argument("--ctl-jobs", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=20, help="honest logins at once")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--output", help="write every figure (and the samples) as JSON here")
    p.add_argument("--save-dir", help="write each run's samples (t, RSS, CPU, fds) as CSV files, and "
                                      "py-spy's collapsed stacks (--profile), here")
    p.add_argument("--curve-step", type=int, default=5,
                   help="print every N-th second of the samples (default %(default)s)")
    p.add_argument("--keep-tmp", action="store_true")
    if p.parse_args(argv).quick:  # smaller defaults; options given still win
        p.set_defaults(pairs=5, duration=5.0, warmup=2.0, recovery=10.0, slowloris=60, garbage=40,
                       half_open_tls=50, bosh=50, ramp=2.0, sip_rate=50.0, sip_tail=5.0)
    args = p.parse_args(argv)
    args.honest_sources = address_range(args.honest_sources_text)
    args.hostile_sources = address_range(args.hostile_sources_text)
    args.max_flood = args.ramp + args.max_time + args.duration + args.warmup + 120
    args.accounts = max(2 * args.pairs, 20)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for r in runs:
        if r not in ("quiet", "hostile"):
            p.error("unknown run %r" % r)
    raise_nofile()
    server_cpus = {int(c) for c in args.server_cpus.split(",") if c.strip()}
    if server_cpus:
        others = set(range(os.cpu_count() or 1)) - server_cpus
        if others:
            os.sched_setaffinity(0, others)  # the loaders, started from here, inherit it
        say("bridge on CPU %s, the loaders on CPU %s" % (sorted(server_cpus), sorted(others) or "any"))
    tmp = tempfile.mkdtemp(prefix="bridge-flood-")
    say("temporary directory %s" % tmp)
    tables = {"c2s": {}}
    if not args.default_rate_limit:
        tables["c2s"]["rate_limit_bytes_per_second"] = 1000000000
    if args.unauthenticated_share is not None:
        tables["c2s"]["unauthenticated_share"] = args.unauthenticated_share
    server = BridgeServer(args, os.path.join(tmp, "bridge"), args.c2s_port, host=args.host,
                          direct_tls_port=args.tls_port, http_port=args.http_port,
                          sip_port=args.sip_port, raised_limits=False, tables=tables)
    server.cpus = server_cpus
    results = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "params": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}},
        "runs": {}}
    failed = False
    try:
        server.prepare(args.accounts)
        results["meta"]["config"] = open(server.cfg).read()
        results["rounds"] = []
        for number in range(args.rounds):
            done = {}
            for name in (runs if number % 2 == 0 else runs[::-1]):
                say("round %d of %d, run %s" % (number + 1, args.rounds, name))
                try:
                    done[name] = one_run(args, server, name, server.out_path, tmp)
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    failed = True
                    done[name] = {"error": str(exc)}
                    say("%s: FAILED: %s" % (name, exc))
                    say(tail(server.out_path, 20))
            results["rounds"].append(done)
        results["runs"] = median_round(results["rounds"])
    finally:
        stop_quietly(server)
        results["meta"]["loadavg_at_end"] = os.getloadavg()
        if args.output:
            report.write_json(results, args.output)
        if len(results.get("rounds", [])) > 1:
            print_rounds(results["rounds"])
        print_report(results, args)
        if args.keep_tmp:
            say("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The c2s phase: idle sessions (memory), logins/s and one-to-one messages/s, each server in turn."""

import os
import subprocess

from bench.loads import run_idle, run_loader, smoke
from bench.servers import (BenchError, BridgeServer, EjabberdServer, ProsodyServer, checkout,
                           proc_rss_kib, say, stop_quietly, tail)


PHASES = ("idle", "logins", "messages")


def run(args, tmp, names, results):
    """Each server of ``names`` in turn; False when one of them failed."""
    ok = True
    bridge_key = None
    for name in names:
        server = make_server(args, tmp, name, peer_key(args, bridge_key))
        entry = results["servers"][name] = {}
        if name == "baseline":
            entry["revision"] = args.baseline
        ok = bench_one(args, server, entry) and ok
        if name == "bridge":
            bridge_key = server.info.get("certificate_key")
    return ok


def peer_key(args, bridge_key):
    """The key type of Prosody's and ejabberd's certificates: ``--peer-key``, or with auto
    that of bridge's generated one (`bridge_key`), so that TLS costs the same."""
    if args.peer_key != "auto":
        return args.peer_key
    return "ec" if bridge_key and bridge_key.startswith("ec") else "rsa"


def make_server(args, tmp, name, key, label=None, archive=False, data_dir=None):
    """Server `name` (bridge, baseline, prosody or ejabberd) working in ``tmp/label``, with its
    message archive on when `archive`; `data_dir` is bridge's."""
    label = label or name
    workdir = os.path.join(tmp, label)
    if name == "bridge":
        return BridgeServer(args, workdir, args.bridge_port, name=label, data_dir=data_dir,
                            archive=archive)
    if name == "baseline":
        return BridgeServer(args, workdir, args.baseline_port, name=label,
                            data_dir=os.path.join(workdir, "data"),
                            source=checkout(args.baseline, os.path.join(tmp, "baseline-tree")))
    if name == "prosody":
        return ProsodyServer(args, workdir, args.prosody_port, key, name=label, archive=archive)
    return EjabberdServer(args, workdir, args.ejabberd_port, key, name=label, archive=archive)


def bench_one(args, server, entry, phases=PHASES):
    """Prepare `server`, run `phases` on it and stop it, also on error; results, errors and
    figures go into `entry`.  False when it failed."""
    ok = True
    try:
        server.prepare(args.accounts)
        bench_server(args, server, args.accounts, entry, phases)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        ok = False
        entry["error"] = str(exc)
        say("%s: FAILED: %s" % (server.name, exc))
    finally:
        stop_quietly(server)
        entry["info"] = server.info
        entry["server_log_tail"] = tail(server.out_path, 20)
    entry["figures"] = figures(entry)
    return ok


def bench_server(args, server, accounts, out, phases=PHASES):
    """Run the loads of `phases`, each on a freshly started server process.

    A fresh process per load keeps one load's leftovers (e.g. 2000 sessions
    just torn down, a grown heap) out of the next load's figures.  Results go
    into `out` as they come, so a failure keeps what was measured before it.
    """
    for i, phase in enumerate(phases):
        if i == 0 or not args.no_restart:
            if i > 0:
                server.stop()
            server.start()
            server.on_started()
            out.setdefault("smoke", {})[phase] = smoke(args, server, accounts)
        if phase == "idle":
            out["idle"] = run_idle(args, server, args.sessions)
            say("%s: idle: %s KiB per session (%d sessions)" % (
                server.name, out["idle"]["rss_per_session_kib"],
                out["idle"].get("sessions", 0)))
        elif phase == "logins":
            out["logins"] = run_loader(args, server, "logins", [
                "--logins", args.logins,
                "--login-accounts", min(accounts, args.login_accounts),
                "--max-time", args.max_time], timeout=args.max_time + 120)
        else:
            out["messages"] = run_loader(args, server, "messages", [
                "--pairs", args.pairs, "--window", args.window,
                "--duration", args.duration, "--warmup", args.warmup,
                "--max-time", args.max_time],
                timeout=args.max_time + args.duration + args.warmup + 120)
        out.setdefault("rss_after_load_kib", {})[phase] = proc_rss_kib(server.pid)
    return out


def figures(r):
    """Headline figures from one server's results."""
    f = {}
    lg = r.get("logins") or {}
    ms = r.get("messages") or {}
    idle = r.get("idle") or {}
    f["logins_per_s"] = lg.get("logins_per_s")
    f["server_cpu_ms_per_login"] = lg.get("server_cpu_ms_per_login")
    f["messages_per_s"] = ms.get("messages_per_s")
    f["latency_p50_ms"] = ms.get("latency_p50_ms")
    f["latency_p99_ms"] = ms.get("latency_p99_ms")
    f["server_cpu_us_per_message"] = ms.get("server_cpu_us_per_message")
    f["rss_per_idle_session_kib"] = idle.get("rss_per_session_kib")
    if idle.get("rss_before_kib") is not None:
        f["rss_baseline_mib"] = round(idle["rss_before_kib"] / 1024, 1)
    if idle.get("rss_after_kib") is not None:
        f["rss_with_idle_sessions_mib"] = round(idle["rss_after_kib"] / 1024, 1)
    return f


ROWS = [  # key, label, better
    ("logins_per_s", "logins/s", "higher"),
    ("server_cpu_ms_per_login", "server CPU ms per login", "lower"),
    ("messages_per_s", "messages/s delivered", "higher"),
    ("latency_p50_ms", "latency p50 ms", "lower"),
    ("latency_p99_ms", "latency p99 ms", "lower"),
    ("server_cpu_us_per_message", "server CPU us per message", "lower"),
    ("rss_per_idle_session_kib", "RSS KiB per idle session", "lower"),
    ("rss_baseline_mib", "RSS MiB before idle sessions", "lower"),
    ("rss_with_idle_sessions_mib", "RSS MiB with idle sessions", "lower"),
]

"""The browser transports phase: BOSH and WebSocket on plain HTTP, bridge and Prosody, idle sessions and messages."""

import os
import re
import subprocess

from bench.loads import run_idle, run_loader, smoke
from bench.logs import log_summary, notable_lines
from bench.servers import BenchError, BridgeServer, ProsodyServer, proc_rss_kib, say, stop_quietly, tail


BROWSER_TRANSPORTS = ("bosh", "websocket")
# Log lines of the browser phase worth a look: BOSH/WebSocket session ends,
# HTTP connections refused or cut, and anything that looks wrong.
BRIDGE_WEB_NOTABLE_RE = re.compile(
    r"BOSH|WebSocket|websocket|HTTP connection|cutting off|stream error|Traceback|"
    r"Unhandled|\bError\b|error|exception|failed", re.I)
PROSODY_WEB_NOTABLE_RE = re.compile(r"bosh|websocket|http|\berror\b|\bwarn\b|traceback", re.I)


def run(args, tmp, out, names):
    """BOSH and WebSocket, per server: idle sessions (RSS per session) and
    messages/s with latency, each load on a freshly started server."""
    ip = {"bridge": args.browser_addresses[0], "prosody": args.browser_addresses[1]}
    accounts = max(args.browser_sessions, 2 * args.browser_pairs, 20)
    out["params"] = {"transports": args.browser_transports, "sessions": args.browser_sessions,
                     "pairs": args.browser_pairs, "window": args.window,
                     "bosh_window": args.bosh_window,
                     "duration": args.browser_duration, "warmup": args.warmup,
                     "accounts": accounts, "bosh_max_rate": args.bosh_max_rate,
                     "bosh_burst": args.bosh_burst,
                     "addresses": ip, "c2s_port": args.browser_c2s_port,
                     "http_port": args.browser_http_port}
    servers = out.setdefault("servers", {})
    for name in names:
        entry = servers.setdefault(name, {})
        wdir = os.path.join(tmp, "browser", name)
        if name == "bridge":
            # The accounts of the TCP phase (same data_dir) are reused.
            server = BridgeServer(args, wdir, args.browser_c2s_port, ip[name],
                                  name="bridge-web",
                                  data_dir=args.bridge_data_dir or os.path.join(tmp, "bridge", "data"),
                                  http_port=args.browser_http_port)
        else:
            server = ProsodyServer(args, wdir, args.browser_c2s_port,
                                   "rsa" if args.peer_key == "rsa" else "ec", ip[name],
                                   name="prosody-web", http_port=args.browser_http_port)
        entry["endpoint"] = "http://%s:%d" % (ip[name], args.browser_http_port)
        try:
            server.prepare(accounts)
            first = True
            for transport in args.browser_transports:
                t = entry.setdefault(transport, {})
                try:
                    for load in ("idle", "messages"):
                        if first or not args.no_restart:
                            server.stop()
                            server.start()
                            server.on_started()
                            t.setdefault("smoke", {})[load] = smoke(
                                args, server, accounts, transport)
                            first = False
                        if load == "idle":
                            res = t["idle"] = run_idle(args, server, args.browser_sessions,
                                                       accounts, transport)
                            say("%s: %s idle: %s KiB per session (%s sessions, ended: %s)" % (
                                server.name, transport, res.get("rss_per_session_kib"),
                                res.get("sessions"), res.get("sessions_ended")))
                        else:
                            window = args.bosh_window if transport == "bosh" else args.window
                            res = t["messages"] = run_loader(args, server, "messages", [
                                "--pairs", args.browser_pairs, "--window", window,
                                "--duration", args.browser_duration, "--warmup", args.warmup,
                                "--max-time", args.max_time],
                                timeout=args.max_time + args.browser_duration + args.warmup + 120,
                                accounts=accounts, transport=transport)
                            say("%s: %s messages: %s/s, p50 %s ms, p99 %s ms, ended: %s" % (
                                server.name, transport, res.get("messages_per_s"),
                                res.get("latency_p50_ms"), res.get("latency_p99_ms"),
                                res.get("sessions_ended")))
                        if res.get("failed") is True:
                            raise BenchError("%s %s load failed: %s"
                                             % (transport, load, res.get("errors")))
                        t.setdefault("rss_after_load_kib", {})[load] = proc_rss_kib(server.pid)
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    t["error"] = str(exc)
                    say("%s: %s FAILED: %s" % (server.name, transport, exc))
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            entry["error"] = str(exc)
            say("%s: FAILED: %s" % (server.name, exc))
        finally:
            stop_quietly(server)
            entry["info"] = server.info
            if isinstance(server, ProsodyServer):
                lines = notable_lines(server.log_files(), PROSODY_WEB_NOTABLE_RE, limit=100000)
            else:
                lines = notable_lines(server.log_files(), BRIDGE_WEB_NOTABLE_RE, limit=100000)
            entry["log_summary"] = log_summary(lines)
            entry["notable_lines"] = lines[:100]
            entry["server_log_tail"] = tail(server.log_files()[-1], 20)
        entry["figures"] = figures(entry)
    return out


def figures(entry):
    f = {}
    for transport in BROWSER_TRANSPORTS:
        t = entry.get(transport) or {}
        idle = t.get("idle") or {}
        m = t.get("messages") or {}
        f[transport + "_rss_per_idle_session_kib"] = idle.get("rss_per_session_kib")
        f[transport + "_idle_sessions"] = idle.get("sessions")
        if idle.get("rss_before_kib") is not None:
            f[transport + "_rss_baseline_mib"] = round(idle["rss_before_kib"] / 1024, 1)
        if idle.get("rss_after_kib") is not None:
            f[transport + "_rss_with_idle_sessions_mib"] = round(idle["rss_after_kib"] / 1024, 1)
        for key in ("messages_per_s", "latency_p50_ms", "latency_p99_ms",
                    "server_cpu_us_per_message"):
            f["%s_%s" % (transport, key)] = m.get(key)
    return f


ROWS = []


for _t, _label in (("bosh", "BOSH"), ("websocket", "WebSocket")):
    ROWS += [
        (_t + "_rss_per_idle_session_kib", _label + " RSS KiB/idle session", "lower"),
        (_t + "_rss_baseline_mib", _label + " RSS MiB before idle", "lower"),
        (_t + "_rss_with_idle_sessions_mib", _label + " RSS MiB with idle", "lower"),
        (_t + "_messages_per_s", _label + " messages/s", "higher"),
        (_t + "_latency_p50_ms", _label + " latency p50 ms", "lower"),
        (_t + "_latency_p99_ms", _label + " latency p99 ms", "lower"),
        (_t + "_server_cpu_us_per_message", _label + " server CPU us/msg", "lower"),
    ]

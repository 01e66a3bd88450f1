"""The federation phase: bridge a.test sends to bridge c.test and to Prosody b.test over s2s links."""

import os
import re
import subprocess
import time

from bench.loads import run_loader
from bench.logs import notable_lines
from bench.servers import BenchError, BridgeServer, ProsodyServer, proc_rss_kib, say, stop_quietly, tail
from tests.pki import CertificateAuthority, key_description


FED_LINK_RE = re.compile(r"link (\S+) -> (\S+) (ready \(([^)]*)\)|failed: .*)")
# Bridge log lines worth reporting (s2s events, and anything that looks wrong).
BRIDGE_NOTABLE_RE = re.compile(
    r"link \S+ -> |authenticated by dialback|SASL EXTERNAL refused|cannot reach|"
    r"unacknowledged|refused stream management|idle s2s|Traceback|Unhandled|"
    r"\bError\b|error|exception|bounced", re.I)
# Prosody (log level info): s2s sessions, authentication, certificates, errors.
PROSODY_NOTABLE_RE = re.compile(r"s2s|certificate|authenticat|EXTERNAL|dialback|"
                                r"\berror\b|\bwarn\b|traceback", re.I)
# ... but not the client sessions' own lines ("c2s55d9...  info  Authenticated as").
PROSODY_SKIP_RE = re.compile(r"\sc2s[0-9a-f]+\s+(info|debug)\s")


def link_events(lines):
    """{"a.test -> c.test": ["ready (SASL EXTERNAL)", "failed: ...", ...]} from a bridge log."""
    found = {}
    for line in lines:
        m = FED_LINK_RE.search(line)
        if m:
            found.setdefault("%s -> %s" % (m.group(1), m.group(2)), []).append(m.group(3))
    return found


def link_auth(events):
    """How each outgoing link of a bridge first became ready: "SASL EXTERNAL",
    "dialback", or its first failure."""
    out = {}
    for link, evs in events.items():
        ready = [e for e in evs if e.startswith("ready (")]
        out[link] = ready[0][len("ready ("):-1] if ready else evs[0]
    return out


def fed_warmup(args, sender, receiver, accounts, log):
    """A few messages from `sender`'s users to `receiver`'s, until all arrive.

    The first message of a direction opens its s2s link: its trip time
    (first_delivery_ms) is the link set-up as a user sees it."""
    pairs = min(args.fed_warm_pairs, args.fed_pairs)
    last = None
    for attempt in range(1, 4):
        res = run_loader(args, sender, "messages", [
            "--pairs", pairs, "--window", 1, "--warmup", 0, "--duration", 0.5,
            "--drain-time", args.fed_link_timeout, "--max-time", 120],
            timeout=args.fed_link_timeout + 240, recv=receiver, accounts=accounts)
        entry = {"attempt": attempt, "sent": res.get("sent_total"),
                 "received": res.get("received_total"), "lost": res.get("lost"),
                 "first_delivery_ms": res.get("first_delivery_ms"),
                 "errors": res.get("errors"), "wall_s": res.get("loader_wall_s")}
        log.append(entry)
        say("federation: warm-up %s -> %s: %s" % (sender.domain, receiver.domain, entry))
        last = entry
        if not res.get("failed") and res.get("received_total") and not res.get("lost"):
            return entry
    raise BenchError("federation: messages %s -> %s not all delivered after 3 warm-ups: %s"
                     % (sender.domain, receiver.domain, last))


def run(args, tmp, out):
    """Bridge a.test sends to bridge c.test and to Prosody b.test over s2s."""
    ip_a, ip_b, ip_c = args.fed_addresses
    port = args.fed_s2s_port
    accounts = max(2 * args.fed_pairs, 2 * args.fed_warm_pairs, 4)
    fdir = os.path.join(tmp, "federation")
    # Every certificate serves as TLS server and client: s2s links authenticate both ways.
    authority = CertificateAuthority(os.path.join(fdir, "pki"), key_kind=args.fed_key)
    pki = {domain: authority.issue(None, [domain]) for domain in ("a.test", "b.test", "c.test")}
    key_kind = key_description(args.fed_key)
    out["params"] = {"pairs": args.fed_pairs, "window": args.window,
                     "duration": args.fed_duration, "warmup": args.warmup,
                     "accounts": accounts, "certificate_key": key_kind,
                     "addresses": {"a.test": ip_a, "b.test": ip_b, "c.test": ip_c},
                     "s2s_port": port}
    hosts_file = os.path.join(fdir, "hosts")
    with open(hosts_file, "w") as f:
        f.write("%s a.test\n%s b.test\n%s c.test\n" % (ip_a, ip_b, ip_c))
    resolv_conf = os.path.join(fdir, "resolv.conf")
    with open(resolv_conf, "w") as f:
        f.write("nameserver %s\n" % args.fed_dns)

    def bridge_s2s(domain, routes):
        return {"port": port, "cert": pki[domain][0], "key": pki[domain][1],
                "ca_file": authority.ca_file, "static_routes": routes,
                "dialback": not args.fed_no_dialback}

    data = lambda d: os.path.join(args.fed_data_dir, d) if args.fed_data_dir else None
    bridge_a = BridgeServer(
        args, os.path.join(fdir, "bridge-a"), args.fed_bridge_port, ip_a, "a.test",
        "bridge-a", data("a.test"),
        bridge_s2s("a.test", {"c.test": "%s:%d" % (ip_c, port),
                              "b.test": "%s:%d" % (ip_b, port)}))
    targets = [("bridge_to_bridge", BridgeServer(
        args, os.path.join(fdir, "bridge-c"), args.fed_bridge_port, ip_c, "c.test",
        "bridge-c", data("c.test"),
        bridge_s2s("c.test", {"a.test": "%s:%d" % (ip_a, port)})))]
    if args.fed_prosody:
        targets.append(("bridge_to_prosody", ProsodyServer(
            args, os.path.join(fdir, "prosody-b"), args.fed_prosody_port, args.fed_key,
            ip_b, "b.test", "prosody-b",
            {"port": port, "cert": pki["b.test"][0], "key": pki["b.test"][1],
             "key_kind": key_kind, "ca_file": authority.ca_file, "hosts_file": hosts_file,
             "resolv_conf": resolv_conf, "alpn": args.fed_prosody_alpn})))
    servers = [bridge_a] + [srv for _, srv in targets]
    try:
        bridge_a.prepare(accounts)
        bridge_a.start()
        for key, srv in targets:
            entry = out.setdefault(key, {"receiver": "%s %s" % (srv.name, srv.domain)})
            try:
                srv.prepare(accounts)
                srv.start()
                entry["warmup"] = warm = []
                t0 = time.monotonic()
                fed_warmup(args, bridge_a, srv, accounts, warm)
                fed_warmup(args, srv, bridge_a, accounts, warm)
                entry["warmup_s"] = round(time.monotonic() - t0, 2)
                # First trip each way, link set-up included.
                entry["first_link_ms"] = {
                    "%s -> %s" % (bridge_a.domain, srv.domain): warm[0]["first_delivery_ms"],
                    "%s -> %s" % (srv.domain, bridge_a.domain): warm[-1]["first_delivery_ms"]
                    if len(warm) > 1 else None}
                if not bridge_a.alive():
                    raise BenchError("bridge-a died during the warm-up")
                entry["messages"] = run_loader(args, bridge_a, "messages", [
                    "--pairs", args.fed_pairs, "--window", args.window,
                    "--duration", args.fed_duration, "--warmup", args.warmup,
                    "--max-time", args.max_time],
                    timeout=args.max_time + args.fed_duration + args.warmup + 120,
                    recv=srv, accounts=accounts)
                m = entry["messages"]
                if m.get("failed") is True:
                    raise BenchError("federated messages load failed: %s" % m.get("errors"))
                say("federation: %s: %s messages/s, p50 %s ms, p99 %s ms" % (
                    key, m.get("messages_per_s"), m.get("latency_p50_ms"),
                    m.get("latency_p99_ms")))
                entry["rss_after_kib"] = {"bridge-a": proc_rss_kib(bridge_a.pid),
                                          srv.name: proc_rss_kib(srv.pid)}
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                entry["error"] = str(exc)
                say("federation: %s FAILED: %s" % (key, exc))
            finally:
                stop_quietly(srv)
        if not any("error" not in out.get(k, {}) for k, _ in targets):
            raise BenchError("federation: no link worked")
    finally:
        for srv in servers:
            stop_quietly(srv)
        logs = out.setdefault("logs", {})
        for srv in servers:
            if isinstance(srv, ProsodyServer):
                lines = notable_lines(srv.log_files(), PROSODY_NOTABLE_RE, skip=PROSODY_SKIP_RE)
            else:
                lines = notable_lines(srv.log_files(), BRIDGE_NOTABLE_RE)
            logs[srv.name] = {"notable_lines": lines, "info": srv.info,
                              "tail": tail(srv.log_files()[-1], 20)}
            if isinstance(srv, BridgeServer):
                events = link_events(lines)
                out.setdefault("link_events", {}).update(events)
                out.setdefault("link_auth", {}).update(link_auth(events))
    return out


def figures(fed, local_mps):
    """Headline federation figures, one column per link."""
    cols = {}
    auth = fed.get("link_auth") or {}
    for key in ("bridge_to_bridge", "bridge_to_prosody"):
        e = fed.get(key)
        if e is None:
            continue
        m = e.get("messages") or {}
        peer = "c.test" if key == "bridge_to_bridge" else "b.test"
        f = {
            "messages_per_s": m.get("messages_per_s"),
            "latency_p50_ms": m.get("latency_p50_ms"),
            "latency_p99_ms": m.get("latency_p99_ms"),
            "sender_cpu_us_per_message": m.get("server_cpu_us_per_message"),
            "receiver_cpu_us_per_message": m.get("recv_server_cpu_us_per_message"),
            "ratio_to_local_bridge": round(m["messages_per_s"] / local_mps, 3)
            if m.get("messages_per_s") is not None and local_mps else None,
            "auth_out": auth.get("a.test -> %s" % peer),
            "auth_in": auth.get("%s -> a.test" % peer) if key == "bridge_to_bridge"
            else prosody_auth(fed),
            "first_link_ms_out": (e.get("first_link_ms") or {}).get("a.test -> %s" % peer),
            "first_link_ms_in": (e.get("first_link_ms") or {}).get("%s -> a.test" % peer),
        }
        cols[key] = f
    return cols


def prosody_auth(fed):
    """How Prosody's link b.test -> a.test authenticated.  Prosody logs the
    mechanism only at debug level; bridge-a logs a dialback success, so a
    completed link without one was SASL EXTERNAL."""
    logs = fed.get("logs") or {}
    plines = (logs.get("prosody-b") or {}).get("notable_lines") or []
    blines = (logs.get("bridge-a") or {}).get("notable_lines") or []
    if any("b.test authenticated by dialback" in line for line in blines):
        return "dialback"
    if any("Outgoing s2s connection b.test->a.test complete" in line for line in plines):
        return "SASL EXTERNAL"
    for line in plines:
        if "b.test->a.test" in line or "connection to a.test" in line:
            return "failed"
    return None


ROWS = [
    ("messages_per_s", "fed messages/s delivered"),
    ("latency_p50_ms", "fed latency p50 ms"),
    ("latency_p99_ms", "fed latency p99 ms"),
    ("sender_cpu_us_per_message", "sender CPU us/msg (bridge-a)"),
    ("receiver_cpu_us_per_message", "receiver CPU us/msg"),
    ("ratio_to_local_bridge", "ratio to local bridge msg/s"),
    ("auth_out", "auth a.test -> peer"),
    ("auth_in", "auth peer -> a.test"),
    ("first_link_ms_out", "first message a -> peer ms"),
    ("first_link_ms_in", "first message peer -> a ms"),
]

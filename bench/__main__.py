"""Benchmark bridge against Prosody and ejabberd on loopback: ``python -m bench`` from the repository's root.

The c2s phase, for each server in turn (bridge, Prosody, ejabberd; never two
at once): a generated config, the accounts, three loads by the load
generator (idle-session memory, logins/s, one-to-one messages/s with
latency), each on a freshly started server.  Then the federation phase
(bridge a.test to bridge c.test and to Prosody b.test over s2s, certificates
from a test CA) and the browser transports phase (BOSH and WebSocket, bridge
and Prosody).  Prints the tables with bridge's ratio to each other server
and writes every figure as JSON to --output.  Every server binds its own
loopback address only and is stopped at the end, even on error.

With --archive, only the messages load instead, with the message archive off
and on: bridge alternately, --archive-rounds times each, then Prosody and
ejabberd with mod_mam and without (bench/archive.py).
"""

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile

from bench import archive, browser, c2s, report
from bench import federation as federation_phase
from bench.load import raise_nofile
from bench.servers import BenchError, ejabberd_libs, ejabberd_version, say
from tests.pki import KEY_KINDS

SERVERS = ("bridge", "prosody", "ejabberd")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default=",".join(SERVERS),
                   help="comma-separated subset of %s (default %%(default)s; ejabberd is "
                        "skipped, with a warning, when it is not installed)" % ",".join(SERVERS))
    p.add_argument("--baseline", metavar="REVISION",
                   help="also bench bridge as of this git revision of the repository (unpacked "
                        "into the temporary directory), as server 'baseline', right after "
                        "bridge: bridge/baseline is then the regression check")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20 logins, 5 pairs for 2 s, 50 idle sessions")
    p.add_argument("--logins", type=int, default=500, help="logins to time (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=20,
                   help="logins in progress at once (default %(default)s)")
    p.add_argument("--login-accounts", type=int, default=100,
                   help="the login load cycles over this many accounts (default %(default)s)")
    p.add_argument("--pairs", type=int, default=50, help="sender/receiver pairs (default %(default)s)")
    p.add_argument("--window", type=int, default=50,
                   help="messages in flight per pair (default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="message measurement in s, after warm-up (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="message warm-up in s")
    p.add_argument("--sessions", type=int, default=2000,
                   help="idle authenticated sessions for the memory figure (default %(default)s)")
    p.add_argument("--archive", action="store_true",
                   help="only the messages load, with the message archive off and on: bridge "
                        "([mam] enabled false/true) alternately --archive-rounds times, Prosody "
                        "and ejabberd (mod_mam) once each way; no other load or phase")
    p.add_argument("--archive-rounds", type=int, default=3,
                   help="runs of bridge with its archive off, and as many on (default "
                        "%(default)s; the medians are compared)")
    p.add_argument("--archive-idle", action="store_true",
                   help="with --archive: also the memory of --sessions idle sessions, before the "
                        "messages load, in every run")
    p.add_argument("--output", help="write all results as JSON to this file")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user-pattern", default="bench{}")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--bridge-port", type=int, default=25222)
    p.add_argument("--baseline-port", type=int, default=45222)
    p.add_argument("--prosody-port", type=int, default=15222)
    p.add_argument("--ejabberd-port", type=int, default=35222)
    p.add_argument("--bridge-data-dir",
                   help="persistent bridge data_dir to reuse accounts between runs "
                        "(default: a fresh one in the temporary directory)")
    p.add_argument("--prosody-accounts", choices=("direct", "prosodyctl"), default="direct",
                   help="write Prosody account files directly (fast) or run "
                        "prosodyctl register per account")
    p.add_argument("--peer-key", "--prosody-key", dest="peer_key", choices=("auto",) + KEY_KINDS,
                   default="auto",
                   help="Prosody's and ejabberd's certificate key; auto = same kind as bridge's "
                        "generated certificate if found, else RSA-2048")
    p.add_argument("--ctl-jobs", type=int, default=8,
                   help="bridgectl processes (or ejabberd registrations) in parallel "
                        "(default %(default)s)")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds to let the server settle before reading RSS")
    p.add_argument("--idle-timeout", type=float, default=900.0,
                   help="longest wait for the idle sessions to log in")
    p.add_argument("--hold-timeout", type=float, default=600.0)
    p.add_argument("--max-time", type=float, default=600.0,
                   help="upper bound for each loader's login part")
    p.add_argument("--no-restart", action="store_true",
                   help="run the three loads on one server process instead of "
                        "restarting the server before each")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    g = p.add_argument_group(
        "federation", "messages from bridge a.test to bridge c.test and to Prosody b.test "
        "over s2s links (certificates from a test CA); run after the servers above")
    g.add_argument("--no-federation", action="store_true", help="skip the federation phase")
    g.add_argument("--federation-only", action="store_true",
                   help="run only the federation phase (no --servers loads)")
    g.add_argument("--fed-pairs", type=int,
                   help="sender/receiver pairs across the link (default 50; 5 with --quick)")
    g.add_argument("--fed-duration", type=float,
                   help="measured seconds per link, after --warmup (default 10; 2 with --quick)")
    g.add_argument("--fed-warm-pairs", type=int, default=2,
                   help="pairs of the untimed warm-up each way (default %(default)s)")
    g.add_argument("--fed-link-timeout", type=float, default=60.0,
                   help="longest wait for warm-up messages, link set-up included")
    g.add_argument("--fed-addresses", default="127.0.0.12,127.0.0.13,127.0.0.14",
                   help="loopback addresses of a.test (bridge), b.test (Prosody), "
                        "c.test (bridge) (default %(default)s)")
    g.add_argument("--fed-s2s-port", type=int, default=5269)
    g.add_argument("--fed-bridge-port", type=int, default=25232,
                   help="c2s port of both bridges, on their addresses")
    g.add_argument("--fed-prosody-port", type=int, default=15232,
                   help="c2s port of Prosody b.test, on its address")
    g.add_argument("--fed-key", choices=KEY_KINDS, default="ec",
                   help="key type of the test CA and certificates (default %(default)s)")
    g.add_argument("--fed-no-dialback", action="store_true",
                   help="bridges with dialback = false: certificates only")
    g.add_argument("--fed-no-prosody", action="store_true",
                   help="only the bridge -> bridge link")
    g.add_argument("--fed-prosody-alpn", action="store_true",
                   help="let Prosody offer ALPN on its outgoing s2s TLS (its default; "
                        "bridge then fails the handshake of the link b.test -> a.test)")
    g.add_argument("--fed-dns", default="127.0.0.1",
                   help="nameserver in Prosody's resolv.conf for libunbound (SRV lookups; "
                        "default %(default)s, where nothing answers)")
    g.add_argument("--fed-data-dir",
                   help="persistent base folder for the two bridges' data_dir "
                        "(a.test/, c.test/), to reuse their accounts between runs")
    g = p.add_argument_group(
        "browser transports", "BOSH and WebSocket on plain HTTP, bridge and Prosody "
        "(mod_bosh, mod_websocket): idle sessions and messages; run after the federation phase")
    g.add_argument("--no-browser-transports", action="store_true",
                   help="skip the browser transports phase")
    g.add_argument("--only-browser-transports", action="store_true",
                   help="run only the browser transports phase (for the servers of --servers)")
    g.add_argument("--browser-transports", default="bosh,websocket",
                   help="comma-separated subset of bosh,websocket (default %(default)s)")
    g.add_argument("--browser-sessions", type=int,
                   help="idle sessions per transport (default 500; 50 with --quick)")
    g.add_argument("--browser-pairs", type=int,
                   help="sender/receiver pairs per transport (default 20; 5 with --quick)")
    g.add_argument("--browser-duration", type=float,
                   help="measured seconds of the messages load, after --warmup "
                        "(default 10; 2 with --quick)")
    g.add_argument("--browser-addresses", default="127.0.0.21,127.0.0.22",
                   help="loopback addresses of bridge and of Prosody in this phase "
                        "(default %(default)s)")
    g.add_argument("--browser-c2s-port", type=int, default=25242,
                   help="c2s port of both servers in this phase, on their addresses")
    g.add_argument("--browser-http-port", type=int, default=25280,
                   help="HTTP port of both servers (BOSH, WebSocket), on their addresses")
    g.add_argument("--bosh-max-rate", type=float, default=20.0,
                   help="BOSH requests per second per session at most (default %(default)s; "
                        "bridge ends a session past 25/s, bursts of 100); 0: no limit")
    g.add_argument("--bosh-window", type=int, default=200,
                   help="messages in flight per pair over BOSH (default %(default)s: with "
                        "the receivers' polls capped by --bosh-max-rate, --window's 50 would "
                        "measure the pacing, not the server)")
    g.add_argument("--bosh-burst", type=int, default=10,
                   help="BOSH requests a session may make at once beyond that rate "
                        "(token bucket; default %(default)s)")
    args = p.parse_args(argv)
    if args.browser_sessions is None:
        args.browser_sessions = 50 if args.quick else 500
    if args.browser_pairs is None:
        args.browser_pairs = 5 if args.quick else 20
    if args.browser_duration is None:
        args.browser_duration = 2.0 if args.quick else 10.0
    args.browser_addresses = [x.strip() for x in args.browser_addresses.split(",")]
    if len(args.browser_addresses) != 2:
        p.error("--browser-addresses needs two addresses")
    args.browser_transports = [x.strip() for x in args.browser_transports.split(",") if x.strip()]
    for t in args.browser_transports:
        if t not in browser.BROWSER_TRANSPORTS:
            p.error("unknown browser transport %r" % t)
    if args.only_browser_transports and (args.federation_only or args.no_browser_transports):
        p.error("--only-browser-transports excludes --federation-only and --no-browser-transports")
    if args.archive and (args.federation_only or args.only_browser_transports or args.baseline):
        p.error("--archive excludes --federation-only, --only-browser-transports and --baseline")
    if args.archive_rounds < 1:
        p.error("--archive-rounds must be at least 1")
    if args.quick:
        args.logins, args.pairs, args.duration, args.warmup = 20, 5, 2.0, 1.0
        args.sessions = 50
        args.concurrency = min(args.concurrency, 10)
    if args.fed_pairs is None:
        args.fed_pairs = 5 if args.quick else 50
    if args.fed_duration is None:
        args.fed_duration = 2.0 if args.quick else 10.0
    args.fed_addresses = [x.strip() for x in args.fed_addresses.split(",")]
    if len(args.fed_addresses) != 3:
        p.error("--fed-addresses needs three addresses")
    if args.federation_only and args.no_federation:
        p.error("--federation-only and --no-federation exclude each other")
    federation = not (args.no_federation or args.only_browser_transports or args.archive)
    args.fed_prosody = federation and not args.fed_no_prosody
    if args.fed_prosody and not shutil.which("prosody"):
        say("prosody not found: the federation phase runs bridge -> bridge only")
        args.fed_prosody = False
    server_names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for n in server_names:
        if n not in SERVERS:
            p.error("unknown server %r" % n)
    skipped = {}
    if "ejabberd" in server_names and not ejabberd_libs():
        skipped["ejabberd"] = "not installed (apt-get install -y ejabberd)"
        say("ejabberd not found: SKIPPING it (apt-get install -y ejabberd to include it)")
        server_names.remove("ejabberd")
    names = [] if args.federation_only or args.only_browser_transports or args.archive \
        else server_names
    if args.baseline and names:
        names.insert(names.index("bridge") + 1 if "bridge" in names else 0, "baseline")
    # ejabberd takes part in the c2s phase only.
    browser_names = [] if args.federation_only or args.no_browser_transports or args.archive \
        else [n for n in server_names if n != "ejabberd"]
    archive_names = server_names if args.archive else []
    if "prosody" in names + browser_names + archive_names and not shutil.which("prosody"):
        p.error("prosody not found: apt-get install -y prosody (or --servers without prosody)")
    # The archive comparison has no idle sessions unless asked for.
    idle = not args.archive or args.archive_idle
    args.accounts = max(args.sessions if idle else 0, 2 * args.pairs, 20)
    raise_nofile()

    tmp = tempfile.mkdtemp(prefix="bridge-bench-")
    say("temporary directory %s" % tmp)
    results = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "kernel": platform.release(), "skipped": skipped,
        "params": {k: getattr(args, k) for k in (
            "logins", "concurrency", "login_accounts", "pairs", "window", "duration",
            "warmup", "sessions", "accounts", "quick", "fed_pairs", "fed_duration",
            "browser_sessions", "browser_pairs", "browser_duration", "browser_transports",
            "bosh_max_rate", "bosh_burst", "bosh_window", "archive", "archive_rounds", "archive_idle")},
    }, "servers": {}}
    if shutil.which("prosody"):
        try:
            v = subprocess.run(["prosodyctl", "about"], capture_output=True, text=True,
                               timeout=30).stdout.splitlines()
            results["meta"]["prosody_version"] = v[0].strip() if v else None
        except (OSError, subprocess.SubprocessError):
            pass
    results["meta"]["ejabberd_version"] = ejabberd_version()

    failed = False
    try:
        failed = not c2s.run(args, tmp, names, results)
        if archive_names:
            failed = not archive.run(args, tmp, archive_names, results) or failed
        if federation:
            fed = results["federation"] = {}
            try:
                federation_phase.run(args, tmp, fed)
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                failed = True
                fed["error"] = str(exc)
                say("federation: FAILED: %s" % exc)
            if any("error" in (fed.get(k) or {}) for k in
                   ("bridge_to_bridge", "bridge_to_prosody")):
                failed = True
        if browser_names:
            br = results["browser_transports"] = {}
            try:
                browser.run(args, tmp, br, browser_names)
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                failed = True
                br["error"] = str(exc)
                say("browser transports: FAILED: %s" % exc)
            for e in (br.get("servers") or {}).values():
                if "error" in e or any("error" in (e.get(t) or {})
                                       for t in args.browser_transports):
                    failed = True
    finally:
        if args.archive:
            report.print_archive(results, args)
        else:
            report.print_c2s(results, args, names)
        if "federation" in results:
            report.print_federation(results, args)
        if "browser_transports" in results:
            report.print_browser(results, args, browser_names)
        if args.output:
            report.write_json(results, args.output)
        if args.keep_tmp:
            say("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/sip_bench.py: SIP MESSAGE to XMPP delivery, bridge against Kamailio relaying MESSAGE.

Run as a script from the repository (loopback only, needs sipp from sip-tester and kamailio,
both installed by .ci/install-test-peers):

    .venv/bin/python bench/sip_bench.py [--rates 100,200,400,...] [--duration 5] [--json FILE]

Two targets, measured in the same run on the same machine, each with sipp as a UAC sending
MESSAGE at increasing rates (sipp -r, -m rate*duration):

1. bridge: the real process (twistd) with its SIP gateway on 127.0.0.42 (UDP); MESSAGE
   sip:bob@localhost from alice@localhost's phone, which answers the digest challenge (401, then the
   MESSAGE again with its credentials: two requests a message, as a phone without a cached nonce),
   bob logged in on a raw XMPP socket (TLS, PLAIN, initial presence) that counts the messages
   received and reads sipp's send time ([timestamp]) in each body: delivery latency to XMPP.
   bridge answers 202 after writing the message to storage.
2. Kamailio (tests/integration/kamailio/kamailio.cfg, on 127.0.0.41) as the reference: MESSAGE
   sip:dave@pbx.test, dave registered there with a Contact at a sipp UAS (127.0.0.43) that
   answers 202; Kamailio does a location lookup and relays statefully (tm).

A step passes when sipp's statistics show under 1% failed calls (anything other than 202 within
5 s, retransmissions included) and sipp kept at least 95% of the asked rate.  Rates double until a
step fails, then --refine bisection steps narrow the gap.  p50/p99 are of the 202's response time
(sipp -trace_rtt, every call) and for bridge also of the delivery to XMPP.  Prints a table, the
command lines, and writes --json.
"""

import argparse
import csv
import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)

from tests.integration.harness import RawClient, ServerProcess, add_users  # noqa: E402
from tests.integration.test_kamailio import KAMAILIO, Kamailio, write_sip_config  # noqa: E402

SIPP = shutil.which("sipp")
PASSWORD = "benchpass"
SENDER = "alice"  # bridge's sender: a local user whose phone answers the digest challenge
PADDING = "." * 600
KAMAILIO_ADDRESS = "127.0.0.41"
BRIDGE_ADDRESS = "127.0.0.42"
SIPP_ADDRESS = "127.0.0.43"

# sipp scenarios, written to the run's directory.  [timestamp] is "date<TAB>time<TAB>epoch.micro".
UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench MESSAGE uac">
  <send retrans="500" start_rtd="1">
    <![CDATA[

      MESSAGE sip:[service]@[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:carol@pbx.test>;tag=[pid]b[call_number]
      To: <sip:[service]@[domain]>
      Call-ID: [call_id]
      CSeq: 1 MESSAGE
      Content-Type: text/plain;charset=UTF-8
      Content-Length: [len]

      bench [call_number] [timestamp]
    ]]>
  </send>
  <recv response="202" timeout="5000" rtd="1"/>
</scenario>
"""

# bridge: a phone of a local user (alice@localhost), as a phone sends MESSAGE: challenged (401), then again
# with its digest answer; the 202 time is measured from the first request.  The body is padded so that the
# first request is longer than the 401 (bridge answers an unverified UDP source with no more than it sent).
UAC_DIGEST = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench digest MESSAGE uac">
  <send retrans="500" start_rtd="1">
    <![CDATA[

      MESSAGE sip:[service]@[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:{SENDER}@[domain]>;tag=[pid]b[call_number]
      To: <sip:[service]@[domain]>
      Call-ID: [call_id]
      CSeq: 1 MESSAGE
      Content-Type: text/plain;charset=UTF-8
      Content-Length: [len]

      bench [call_number] [timestamp] {PADDING}
    ]]>
  </send>
  <recv response="401" auth="true" timeout="5000"/>
  <send retrans="500">
    <![CDATA[

      MESSAGE sip:[service]@[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:{SENDER}@[domain]>;tag=[pid]b[call_number]
      To: <sip:[service]@[domain]>
      Call-ID: [call_id]
      CSeq: 2 MESSAGE
      [authentication username={SENDER} password={PASSWORD}]
      Content-Type: text/plain;charset=UTF-8
      Content-Length: [len]

      bench [call_number] [timestamp] {PADDING}
    ]]>
  </send>
  <recv response="202" timeout="5000" rtd="1"/>
</scenario>
"""

UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench MESSAGE uas">
  <recv request="MESSAGE"/>
  <send>
    <![CDATA[

      SIP/2.0 202 Accepted
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]u[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""

REGISTER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench register dave">
  <send retrans="500">
    <![CDATA[

      REGISTER sip:pbx.test SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:dave@pbx.test>;tag=[pid]r
      To: <sip:dave@pbx.test>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:dave@[contact]>
      Expires: 3600
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""

EPOCH = re.compile(rb"bench (\d+)\s+\S+\s+\S+\s+(\d{9,11}\.\d{6})")
COMMANDS = []


def free_port(address, kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class XMPPReceiver:
    """bob on a raw socket: counts the bench messages and their delivery latency (ms)."""

    def __init__(self, port):
        self.client = RawClient(port, timeout=30)
        self.client.login("bob", PASSWORD, resource="bench")
        self.client.send("<presence/>")
        self.lock = threading.Lock()
        self.latencies = []  # (call number, ms) since the last take()
        self.count = 0
        self.last_receipt = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        sock = self.client.sock
        sock.settimeout(0.2)
        pending = b""
        while not self.stopped.is_set():
            try:
                data = sock.recv(262144)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            if not data:
                return
            now = time.time()
            pending += data
            *complete, pending = pending.split(b"</message>")
            found = [(int(m.group(1)), (now - float(m.group(2))) * 1000.0)
                     for m in map(EPOCH.search, complete) if m]
            if found:
                with self.lock:
                    self.latencies.extend(found)
                    self.count += len(found)
                    self.last_receipt = time.monotonic()

    def take(self):
        with self.lock:
            taken, self.latencies = self.latencies, []
            return taken

    def wait_for(self, expected, idle=5.0, limit=120.0):
        """Until ``expected`` messages since the last take(), or nothing new for ``idle`` seconds."""
        start = time.monotonic()
        while time.monotonic() - start < limit:
            with self.lock:
                if len(self.latencies) >= expected or time.monotonic() - self.last_receipt > idle:
                    return
            time.sleep(0.05)

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=2)
        self.client.close()


def sipp_command(target, scenario, port, extra):
    return [SIPP, target, "-sf", scenario, "-i", SIPP_ADDRESS, "-p", str(port), "-t", "u1",
            "-nostdin"] + extra


def run_step(directory, target, domain, user, rate, duration, uac=UAC, extra=()):
    """One sipp UAC run at ``rate`` MESSAGE/s (the scenario ``uac``, ``extra`` sipp options); sipp's figures."""
    step = os.path.join(directory, f"{domain}-{user}-{rate}")
    os.makedirs(step, exist_ok=True)
    scenario = os.path.join(step, "uac.xml")
    with open(scenario, "w", encoding="utf-8") as handle:
        handle.write(uac)
    calls = int(rate * duration)
    command = sipp_command(target, scenario, free_port(SIPP_ADDRESS),
                           ["-key", "domain", domain, "-s", user, "-r", str(rate), "-rp", "1000",
                            "-m", str(calls), "-l", str(max(rate * 6, 100)), "-max_recv_loops", "10000",
                            "-max_sched_loops", "10000", "-timeout", f"{int(duration + 30)}s",
                            "-trace_stat", "-stf", os.path.join(step, "stat.csv"), "-fd", "1",
                            "-trace_rtt", "-rtt_freq", "1", "-trace_err",
                            "-error_file", os.path.join(step, "errors.log"), *extra])
    COMMANDS.append(shlex.join(command))
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=step, timeout=duration + 60)
    wall = time.monotonic() - started
    with open(os.path.join(step, "stat.csv"), newline="", encoding="utf-8", errors="replace") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    last = rows[-1]
    success, failed = int(last["SuccessfulCall(C)"]), int(last["FailedCall(C)"])
    created = int(last["TotalCallCreated"])
    times, stamps = [], []
    for path in glob.glob(os.path.join(step, "*_rtt.csv")):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                fields = line.strip().split(";")
                if len(fields) >= 2 and fields[0].replace(".", "").isdigit():
                    stamps.append(float(fields[0]))
                    times.append(float(fields[1]))
    span = (max(stamps) - min(stamps)) / 1000.0 if len(stamps) > 1 else 0.0
    achieved = (len(stamps) - 1) / span if span > 0 else 0.0
    failures = failed + max(created - success - failed, 0)
    failure_fraction = failures / max(created, 1)
    return {"rate": rate, "calls": calls, "created": created, "successful": success, "failed": failed,
            "failure_pct": round(100.0 * failure_fraction, 3), "achieved_rate": round(achieved, 1),
            "p50_ms": percentile(times, 0.50), "p99_ms": percentile(times, 0.99),
            "max_ms": max(times) if times else None, "sipp_exit": done.returncode, "wall_s": round(wall, 2),
            "ok": failure_fraction < 0.01 and achieved >= 0.95 * rate,
            "sipp_tail": (done.stdout[-800:] + done.stderr[-800:]) if done.returncode not in (0, 1) else ""}


def search(name, step, rates, refine, log):
    """Doubling rates until a step fails, then bisection; every step's result."""
    results = []
    best = None
    first_bad = None
    for rate in rates:
        result = step(rate)
        results.append(result)
        log(name, result)
        if result["ok"]:
            best = rate
        else:
            first_bad = rate
            break
    if best is not None and first_bad is not None:
        low, high = best, first_bad
        for _ in range(refine):
            middle = int(round((low + high) / 2, -1))
            if middle <= low or middle >= high:
                break
            result = step(middle)
            results.append(result)
            log(name, result)
            if result["ok"]:
                low = middle
            else:
                high = middle
    return results


def start_bridge(directory, sip_port, pending):
    config_path = write_sip_config(directory, f"""
[sip]
enabled = true
udp_endpoints = ["udp:{sip_port}:interface={BRIDGE_ADDRESS}"]
tcp_endpoints = []
tls_endpoints = []
advertised_address = "{BRIDGE_ADDRESS}"
allowed_domains = ["pbx.test"]
static_routes = {{ "pbx.test" = "{KAMAILIO_ADDRESS}:5060" }}
max_pending_messages = {pending}
# The load comes from one address: lift the per-peer byte rate.
rate_limit_bytes_per_second = 1000000000
rate_limit_burst_bytes = 1000000000
""")
    users = {"bob@localhost": PASSWORD, f"{SENDER}@localhost": PASSWORD}
    add_users(config_path, users)
    process = ServerProcess(config_path, users)
    COMMANDS.append(shlex.join(process.command))
    process.start()
    return process


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,200,400,800,1600,3200,6400,12800",
                        help="rates (MESSAGE/s) tried in order until one fails")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of sending per step")
    parser.add_argument("--refine", type=int, default=2, help="bisection steps after the first failure")
    parser.add_argument("--kamailio-children", type=int, default=2, help="Kamailio's UDP worker processes")
    parser.add_argument("--kamailio-port", type=int, default=5062)
    parser.add_argument("--kamailio-shm", type=int, default=1024,
                        help="Kamailio's shared memory, MB (-m); at 128 it runs out near 1800/s and answers 500")
    parser.add_argument("--max-pending", type=int, default=10000, help="bridge's [sip] max_pending_messages")
    parser.add_argument("--only", choices=("bridge", "kamailio"), help="measure one target only")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (sipp files, logs)")
    parser.add_argument("--json", help="write the figures to this file")
    options = parser.parse_args()
    if SIPP is None or (KAMAILIO is None and options.only != "bridge"):
        raise SystemExit("needs sipp (sip-tester) and kamailio: .ci/install-test-peers")
    rates = [int(r) for r in options.rates.split(",")]
    directory = tempfile.mkdtemp(prefix="sip-bench-")
    report = {"parameters": vars(options), "bridge": [], "kamailio": []}

    def log(name, result):
        extra = ""
        if "xmpp_delivered" in result:
            extra = f" xmpp {result['xmpp_delivered']} p99 {fmt(result['xmpp_p99_ms'])} ms"
        print(f"  {name:8} r={result['rate']:6} achieved {result['achieved_rate']:8.1f}/s "
              f"failed {result['failure_pct']:6.2f}% 202 p99 {fmt(result['p99_ms'])} ms{extra}"
              f"{'' if result['ok'] else '  (fails)'}", file=sys.stderr, flush=True)

    kamailio = uas = bridge = receiver = None
    try:
        if options.only != "bridge":
            uas_port = free_port(SIPP_ADDRESS)
            uas_file = os.path.join(directory, "uas.xml")
            with open(uas_file, "w", encoding="utf-8") as handle:
                handle.write(UAS)
            command = sipp_command(f"{KAMAILIO_ADDRESS}:{options.kamailio_port}", uas_file, uas_port,
                                   ["-max_recv_loops", "10000", "-max_sched_loops", "10000"])
            COMMANDS.append(shlex.join(command))
            uas = subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            kamailio_dir = os.path.join(directory, "kamailio")
            os.makedirs(kamailio_dir)
            kamailio = Kamailio(kamailio_dir, (KAMAILIO_ADDRESS, options.kamailio_port),
                                f"sip:{BRIDGE_ADDRESS}:5060", children=options.kamailio_children,
                                shm_mb=options.kamailio_shm)
            COMMANDS.append(shlex.join(kamailio.command))
            kamailio.start()
            register_file = os.path.join(directory, "register.xml")
            with open(register_file, "w", encoding="utf-8") as handle:
                handle.write(REGISTER)
            command = sipp_command(f"{KAMAILIO_ADDRESS}:{options.kamailio_port}", register_file,
                                   free_port(SIPP_ADDRESS), ["-m", "1", "-key", "contact",
                                                             f"{SIPP_ADDRESS}:{uas_port}", "-timeout", "10s"])
            COMMANDS.append(shlex.join(command))
            done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise SystemExit("REGISTER at kamailio failed:\n" + done.stdout[-2000:] + kamailio.tail())
            target = f"{KAMAILIO_ADDRESS}:{options.kamailio_port}"
            print("Kamailio relaying MESSAGE to a sipp UAS:", file=sys.stderr)
            report["kamailio"] = search("kamailio", lambda rate: run_step(directory, target, "pbx.test", "dave",
                                                                          rate, options.duration),
                                        rates, options.refine, log)

        if options.only != "kamailio":
            sip_port = free_port(BRIDGE_ADDRESS)
            os.makedirs(os.path.join(directory, "bridge"))
            bridge = start_bridge(os.path.join(directory, "bridge"), sip_port, options.max_pending)
            receiver = XMPPReceiver(bridge.port)
            target = f"{BRIDGE_ADDRESS}:{sip_port}"
            print("bridge, MESSAGE to an XMPP user:", file=sys.stderr)

            def bridge_step(rate):
                receiver.take()
                cpu_before = cpu_seconds(bridge.process.pid)
                # sipp's digest uri is sip: and the target address unless told: bridge wants the Request-URI.
                result = run_step(directory, target, "localhost", "bob", rate, options.duration, UAC_DIGEST,
                                  ["-auth_uri", "bob@localhost"])
                receiver.wait_for(result["successful"])
                cpu_after = cpu_seconds(bridge.process.pid)
                delivered = receiver.take()
                latencies = [ms for _, ms in delivered]
                result.update({"xmpp_delivered": len(delivered),
                               "xmpp_distinct": len({number for number, _ in delivered}),
                               "xmpp_p50_ms": percentile(latencies, 0.50),
                               "xmpp_p99_ms": percentile(latencies, 0.99),
                               "bridge_cpu_s": None if cpu_before is None or cpu_after is None
                               else round(cpu_after - cpu_before, 2)})
                if not bridge.alive():
                    raise SystemExit("bridge exited:\n" + bridge.tail())
                return result

            report["bridge"] = search("bridge", bridge_step, rates, options.refine, log)
            report["bridge_log_errors"] = [line for line in bridge.lines
                                           if "Traceback" in line or " error" in line.lower()][:20]
    finally:
        if receiver:
            receiver.close()
        if bridge:
            bridge.stop()
        if kamailio:
            kamailio.stop()
        if uas and uas.poll() is None:
            uas.send_signal(signal.SIGTERM)
            try:
                uas.wait(timeout=5)
            except subprocess.TimeoutExpired:
                uas.kill()
                uas.wait()

    def best(results):
        passed = [r for r in results if r["ok"]]
        return max(passed, key=lambda r: r["rate"]) if passed else None

    print("\nSIP MESSAGE, highest rate with under 1% failed calls (sipp, UDP, loopback):")
    print(f"{'target':34} {'rate/s':>7} {'achieved':>9} {'failed %':>8} {'202 p50':>8} {'202 p99':>8} "
          f"{'XMPP p50':>9} {'XMPP p99':>9}")
    for name, label in (("kamailio", "Kamailio relay -> sipp UAS"), ("bridge", "bridge -> XMPP (raw client)")):
        if not report[name]:
            continue
        chosen = best(report[name])
        report[f"{name}_best"] = chosen
        if chosen is None:
            print(f"{label:34} no rate passed (lowest tried: {report[name][0]['rate']}/s)")
            continue
        print(f"{label:34} {chosen['rate']:7} {chosen['achieved_rate']:9.1f} {chosen['failure_pct']:8.2f} "
              f"{fmt(chosen['p50_ms']):>8} {fmt(chosen['p99_ms']):>8} "
              f"{fmt(chosen.get('xmpp_p50_ms')):>9} {fmt(chosen.get('xmpp_p99_ms')):>9}")
    print("\nEvery step (ms):")
    for name in ("kamailio", "bridge"):
        for r in report[name]:
            xmpp = (f" xmpp delivered {r['xmpp_delivered']}/{r['successful']} (distinct {r['xmpp_distinct']}) "
                    f"p50 {fmt(r['xmpp_p50_ms'])} p99 {fmt(r['xmpp_p99_ms'])} cpu {r['bridge_cpu_s']} s"
                    if "xmpp_delivered" in r else "")
            print(f"  {name:8} r={r['rate']:6} created {r['created']:6} ok {r['successful']:6} "
                  f"failed {r['failed']:5} ({r['failure_pct']}%) achieved {r['achieved_rate']}/s "
                  f"202 p50 {fmt(r['p50_ms'])} p99 {fmt(r['p99_ms'])} max {fmt(r['max_ms'])}{xmpp}"
                  f"{'' if r['ok'] else '  FAIL'}")
    print("\nCommand lines:")
    for command in dict.fromkeys(COMMANDS):
        print("  " + command)
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    if options.keep:
        print(f"\nfiles kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

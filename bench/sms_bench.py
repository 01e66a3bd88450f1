"""bench/sms_bench.py: submit_sm per second, bridge's SMS gateway against the test SMSC's own ceiling.

Run as a script from the repository (loopback only):

    .venv/bin/python bench/sms_bench.py [--messages 5000] [--window 10] [--clients 4]

It starts the test SMSC (tests/integration/smsc/server.js, the smpp npm
package's server, no faults, --quiet: it counts accepted submit_sm per second
and reports the time of the first and of the last one), then measures:

1. the SMSC's ceiling: tests/integration/smsc/load.js, a direct SMPP client
   in node on the same package, binds and sends --ceiling-count submit_sm
   keeping --window outstanding;
2. bridge, queue drained: the real bridge process (twistd) with [smsc.bench]
   at the same --window and no rate cap; while the SMSC refuses binds, XMPP
   clients (raw sockets) write --messages one-part messages to
   +number@sms.localhost, all accepted and stored in the outbound queue; then
   the SMSC accepts binds and bridge drains its queue;
3. bridge, live: the same number of messages written by the same clients while
   bridge is bound: XMPP in, storage, SMPP out, at once.

Each figure is the SMSC's count of accepted submit_sm divided by the time
from its first to its last accept.  Prints the figures, the ratios
bridge/ceiling, the per-second counts of the SMSC, and the command lines.
"""

import argparse
import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)

from tests.integration.harness import RawClient, ServerProcess, add_users, write_config  # noqa: E402

SMSC_DIR = os.path.join(REPO, "tests", "integration", "smsc")
PASSWORD = "benchpass"


class SMSC:
    """server.js --quiet as a process: its JSON events in a queue, commands on its stdin."""

    def __init__(self, node):
        self.command = [node, os.path.join(SMSC_DIR, "server.js"), "--port", "0", "--quiet", "1"]
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.events = queue.Queue()
        self.ticks = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self.wait("listening")["port"]

    def _read(self):
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "line": line.rstrip()}
            if event.get("event") == "tick":
                self.ticks.append(event["submits"])
            self.events.put(event)

    def wait(self, name, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise SystemExit(f"the SMSC sent no {name!r} event in {timeout}s") from None
            if event.get("event") == name:
                return event

    def command_(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def stats(self):
        self.command_(cmd="stats")
        return self.wait("stats")

    def reset(self):
        self.command_(cmd="reset")
        self.wait("reset")
        self.ticks = []

    def wait_accepted(self, count, timeout):
        """Poll the totals (every 0.2 s, bounded) until ``count`` submit_sm were accepted."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["accepted"] >= count:
                return stats
            if time.monotonic() > deadline:
                raise SystemExit(f"the SMSC accepted {stats['accepted']} of {count} submit_sm in {timeout}s")
            time.sleep(0.2)

    def stop(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cpu_seconds(pid):
    """User plus system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_note(before, after, seconds):
    if before is None or after is None or seconds <= 0:
        return ""
    return f"; bridge used {after - before:.2f} s of CPU, {100 * (after - before) / seconds:.0f}% of one core"


def exactly(smsc, count):
    """The SMSC's totals, after checking that it accepted ``count`` submit_sm, not one more."""
    stats = smsc.stats()
    if stats["accepted"] != count:
        raise SystemExit(f"the SMSC accepted {stats['accepted']} submit_sm, not {count}")
    return stats


def rate_of(stats):
    seconds = (stats["last_ms"] - stats["first_ms"]) / 1000.0
    return (stats["accepted"] - 1) / seconds if seconds > 0 else float("nan"), seconds


def bridge_config(directory, smsc_port, window):
    config_path = write_config(directory, "rate_limit_bytes_per_second = 100000000\n"
                                          "rate_limit_burst_bytes = 100000000\n")
    with open(config_path, "a", encoding="utf-8") as handle:
        # The sending limits lifted: the bench measures the gateway, not the limits (still charged).
        handle.write("[sms]\nenabled = true\ndomain = \"sms.localhost\"\nrequest_receipts = false\n"
                     "outbound_sms_per_minute_per_user = 100000000\noutbound_sms_per_day_per_user = 100000000\n"
                     "outbound_sms_per_minute_per_host = 100000000\noutbound_sms_per_day_per_host = 100000000\n"
                     f"[smsc.bench]\nport = {smsc_port}\nsystem_id = \"bridge\"\npassword = \"pw\"\n"
                     f"source_addr = \"1000\"\nwindow = {window}\nsubmit_rate_per_second = 100000.0\n"
                     "reconnect_min_seconds = 0.05\nreconnect_max_seconds = 0.2\n")
    return config_path


def write_messages(server, jids, total, tag):
    """Each client logs in (raw socket, STARTTLS, PLAIN) and writes its share of ``total`` messages to
    +numbers@sms.localhost, then waits for the answer to a ping sent behind them."""
    errors = []

    def one(index, jid):
        try:
            client = RawClient(server.port, timeout=120)
            client.login(jid.split("@")[0], PASSWORD, resource="bench")
            count = total // len(jids) + (1 if index < total % len(jids) else 0)
            batch = []
            for n in range(count):
                number = 15550000000 + (index * 100000 + n) % 10000000
                batch.append(f"<message to='+{number}@sms.localhost' type='chat' id='{tag}{index}-{n}'>"
                             f"<body>bench {tag} {index}-{n}</body></message>")
                if len(batch) == 200:
                    client.send("".join(batch))
                    batch = []
            client.send("".join(batch) + "<iq type='get' id='done' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            while True:
                element = client.next(timeout=120)
                if element.tag.endswith("}iq") and element.get("id") == "done":
                    break
                if element.tag.endswith("}message") and element.get("type") == "error":
                    raise AssertionError("a message was refused: " + client.dump())
            client.close()
        except Exception as error:  # reported after the join
            errors.append(f"{jid}: {error!r}")

    threads = [threading.Thread(target=one, args=(i, jid)) for i, jid in enumerate(jids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit("XMPP clients failed:\n" + "\n".join(errors))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10000, help="messages per bridge phase (one part each)")
    parser.add_argument("--window", type=int, default=10, help="outstanding submit_sm, ceiling and bridge")
    parser.add_argument("--ceiling-count", type=int, default=50000, help="submit_sm of the direct client")
    parser.add_argument("--clients", type=int, default=4, help="XMPP clients writing the messages")
    parser.add_argument("--no-live", action="store_true", help="skip the live phase")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    node = shutil.which("node")
    if node is None or not os.path.isdir(os.path.join(SMSC_DIR, "node_modules", "smpp")):
        raise SystemExit("needs node and the smpp package (.ci/install-test-peers)")
    own_command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, REPO)] + sys.argv)
    print(f"command: {own_command}")

    tmp = tempfile.mkdtemp(prefix="sms-bench-")
    smsc = SMSC(node)
    server = None
    figures = {"window": args.window, "messages": args.messages}
    try:
        print(f"SMSC: {' '.join(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in smsc.command)}"
              f" (port {smsc.port})")

        # 1. The SMSC's own ceiling.
        load = [node, os.path.join(SMSC_DIR, "load.js"), "--port", str(smsc.port), "--count",
                str(args.ceiling_count), "--window", str(args.window)]
        print("ceiling client: " + " ".join(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in load))
        done = subprocess.run(load, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise SystemExit("load.js failed: " + done.stdout + done.stderr)
        client = json.loads(done.stdout.strip().splitlines()[-1])
        ceiling, ceiling_seconds = rate_of(smsc.wait_accepted(args.ceiling_count, 60))
        figures.update(ceiling=ceiling, ceiling_client=client["rate"], ceiling_ticks=smsc.ticks)
        print(f"  SMSC ceiling, direct client:   {ceiling:9.0f} submit_sm/s  "
              f"({args.ceiling_count} in {ceiling_seconds:.2f} s; the client measured {client['rate']:.0f}/s)")

        # 2. bridge with a full queue.
        smsc.reset()
        smsc.command_(cmd="binds", refuse=10 ** 9)
        smsc.wait("binds")
        config_path = bridge_config(tmp, smsc.port, args.window)
        jids = [f"bench{n}@localhost" for n in range(1, args.clients + 1)]
        accounts = {jid: PASSWORD for jid in jids}
        add_users(config_path, accounts)
        server = ServerProcess(config_path, accounts)
        server.start()
        print(f"bridge: twistd -n --pidfile= bridge --config {config_path} (window {args.window}, "
              "submit_rate_per_second 100000, request_receipts false)")
        started = time.monotonic()
        write_messages(server, jids, args.messages, "q")
        filled = time.monotonic() - started
        if smsc.stats()["accepted"]:
            raise SystemExit("the SMSC accepted submit_sm while refusing binds")
        cpu_before, wall_before = cpu_seconds(server.process.pid), time.monotonic()
        smsc.command_(cmd="binds", refuse=0)
        smsc.wait("binds")
        queued, queued_seconds = rate_of(smsc.wait_accepted(args.messages, 300))
        queued_cpu = cpu_note(cpu_before, cpu_seconds(server.process.pid), time.monotonic() - wall_before)
        figures.update(bridge_queued=queued, bridge_queued_ticks=smsc.ticks, accepted_into_queue=args.messages / filled)
        print(f"  bridge, stored queue drained:  {queued:9.0f} submit_sm/s  "
              f"({args.messages} in {queued_seconds:.2f} s; ratio to the ceiling {queued / ceiling:.3f})")
        print(f"    (from the bind command to the last accept{queued_cpu or ': CPU time not available'})")
        print(f"    (the queue was filled over XMPP at {args.messages / filled:.0f} messages/s)")

        # 3. bridge live: XMPP in and SMPP out at once.
        if not args.no_live:
            exactly(smsc, args.messages)
            smsc.reset()
            write_messages(server, jids, args.messages, "l")
            live, live_seconds = rate_of(smsc.wait_accepted(args.messages, 300))
            figures.update(bridge_live=live, bridge_live_ticks=smsc.ticks)
            print(f"  bridge, live from XMPP:        {live:9.0f} submit_sm/s  "
                  f"({args.messages} in {live_seconds:.2f} s; ratio to the ceiling {live / ceiling:.3f})")
        time.sleep(1.1)  # let the SMSC print the tick of the last second
        print(f"SMSC per-second counts: ceiling {figures['ceiling_ticks']}, queued {figures['bridge_queued_ticks']}"
              + (f", live {figures['bridge_live_ticks']}" if not args.no_live else ""))
        exactly(smsc, args.messages)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(figures, handle, indent=2)
    finally:
        if server is not None:
            server.stop()
        smsc.stop()
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

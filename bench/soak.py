"""The soak: bridge under a moderate, mixed load for a long time (``python -m bench.soak --minutes 60``).

Run from the repository's root with the project's virtualenv (loopback only;
needs sipp, node and the test SMSC's smpp package, as the SIP and SMS benches).
It shows what a short benchmark cannot: memory that creeps, descriptors that
leak, messages that go missing between logins.

One bridge (default limits; its SIP gateway on UDP, its SMS gateway bound to
the test SMSC) and, for --minutes:

* --users XMPP users (accounts bench1..benchN, from --sources so that no
  address passes the per-address limit) in waves: each logs in, sends
  presence, sends chat messages to other users' bare JIDs (online: delivered
  at once; offline: stored and delivered at their next login), changes its
  presence now and then (broadcast, and directed to a random user), then
  goes unavailable, closes its stream and stays away for a while;
* a SIP phone (sipp as carol@pbx.test) sending MESSAGEs to user N+1 every
  minute (sip_bench's scenario), and user N+1 writing to carol, whose phone
  (sipp, answering 202) is pbx.test's static route;
* user N+2 sending SMS to +numbers of the SMS domain, counted by the SMSC.

RSS, CPU and descriptors of the server are sampled (bench/monitor.py) and
printed once a minute.  At the end every user logs in once more to collect
what was stored for it, and each message sent is accounted for: received (at
once or from offline storage), refused with an error (its condition), or
missing.  SIP and SMS are counted the same way from sipp's and the SMSC's
figures.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bench import report
from bench.load import (T_IQ, T_MESSAGE, Client, XmppError, address_range,
                        make_tls_context, raise_nofile, xml_escape)
from bench.monitor import ProcessMonitor, summary
from bench.servers import BridgeServer, say, stop_quietly
from bench.sip_bench import SIPP, SIPP_ADDRESS, UAS, free_port, run_step
from bench.sms_bench import SMSC, SMSC_DIR

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
T_PRESENCE = "{jabber:client}presence"
T_BODY = "{jabber:client}body"
SIP_PEER = "carol\\40pbx.test@sip.%s"
SMS_NUMBER = "+1555%07d"


class Ledger:
    """Every chat message by its id (also its body): sent, received, refused, and how often."""

    def __init__(self):
        self.sent = {}  # id -> recipient
        self.received = {}  # id -> times received
        self.refused = {}  # id -> error condition
        self.unexpected = 0  # received with an id never sent (or a wrong recipient)

    def on_message(self, user, el):
        mid = el.get("id") or ""
        if el.get("type") == "error":
            cond = next((c.tag.split("}")[-1] for e in el if e.tag.endswith("}error") for c in e
                         if c.tag.startswith("{%s}" % NS_STANZAS)), "?")
            if mid in self.sent:
                self.refused[mid] = cond
            return
        if mid in self.sent and self.sent[mid] == user:
            self.received[mid] = self.received.get(mid, 0) + 1
        else:
            self.unexpected += 1

    def account(self):
        missing = [m for m in self.sent if m not in self.received and m not in self.refused]
        reasons = {}
        for cond in self.refused.values():
            reasons[cond] = reasons.get(cond, 0) + 1
        return {"sent": len(self.sent), "received": len(self.received),
                "received_twice_or_more": sum(1 for n in self.received.values() if n > 1),
                "refused": len(self.refused), "refused_by_condition": reasons,
                "missing": len(missing), "missing_examples": missing[:10],
                "unexpected": self.unexpected}


class Session:
    """One logged-in client: stanzas go to a handler, and it closes as a client should."""

    def __init__(self, client, handler):
        self.client = client
        client.on_stanza = lambda c, el: handler(el) if el.tag != T_IQ else c.handle_other(el)
        self.reader = asyncio.create_task(client.read_loop())

    def send(self, text):
        self.client.send(text)

    async def close(self, linger):
        """Unavailable first (messages to the bare JID then go to storage), then the closing tag,
        reading until the server closes its side."""
        try:
            self.client.send("<presence type='unavailable'/>")
            await asyncio.sleep(linger)
            self.client.send("</stream:stream>")
            async with asyncio.timeout(15):
                await asyncio.shield(self.reader)
        except (TimeoutError, OSError, ConnectionError):
            pass
        finally:
            self.client.abort()
            self.reader.cancel()


class Soak:
    def __init__(self, args, server, tmp):
        self.args = args
        self.server = server
        self.tmp = tmp
        self.tls = make_tls_context()
        self.ledger = Ledger()
        self.sources = address_range(args.sources)
        self.online = set()
        self.counts = {"logins": 0, "login_failures": 0, "logouts": 0, "presence_sent": 0,
                       "presence_received": 0, "sessions_ended_by_server": 0}
        self.errors = {}
        self.sip = {"to_xmpp_sent": 0, "to_xmpp_accepted": 0, "to_xmpp_received": 0,
                    "to_sip_sent": 0, "to_sip_refused": {}, "to_sip_received": None}
        self.sms = {"sent": 0, "refused": {}, "accepted_by_smsc": None}
        self.seq = 0
        self.stop = asyncio.Event()

    def jid(self, n):
        return "%s@%s" % (self.args.user_pattern.format(n), self.args.domain)

    def note(self, exc):
        key = "%s: %s" % (type(exc).__name__, str(exc)[:120])
        self.errors[key] = self.errors.get(key, 0) + 1

    async def login(self, n, handler):
        a = self.args
        c = Client(self.server.host, self.server.port, a.domain, a.user_pattern.format(n),
                   a.password, "soak", self.tls)
        c.source = self.sources[n % len(self.sources)]
        try:
            async with asyncio.timeout(a.login_timeout):
                await c.login()
        except BaseException:
            c.abort()
            raise
        self.counts["logins"] += 1
        s = Session(c, handler)
        s.send("<presence/>")  # initial presence: stored messages come now
        return s

    def handler(self, n):
        def on_stanza(el):
            if el.tag == T_MESSAGE:
                self.ledger.on_message(n, el)
            elif el.tag == T_PRESENCE:
                self.counts["presence_received"] += 1
        return on_stanza

    def new_id(self, prefix):
        self.seq += 1
        return "%s%d" % (prefix, self.seq)

    async def user(self, n):
        """Waves of one user until the soak ends: away, logged in and chatting, away again."""
        a = self.args
        rnd = random.Random(n)
        await asyncio.sleep(rnd.uniform(0, a.away_max))
        while not self.stop.is_set():
            try:
                s = await self.login(n, self.handler(n))
            except (XmppError, OSError, TimeoutError) as exc:
                self.counts["login_failures"] += 1
                self.note(exc)
                await asyncio.sleep(5)
                continue
            self.online.add(n)
            until = time.monotonic() + rnd.uniform(a.online_min, a.online_max)
            while time.monotonic() < until and not self.stop.is_set() and s.client.is_open():
                await asyncio.sleep(rnd.expovariate(1.0 / a.message_interval))
                if not s.client.is_open():
                    break
                if rnd.random() < a.presence_share:
                    show = rnd.choice(["away", "dnd", "xa", "chat"])
                    s.send("<presence><show>%s</show></presence>" % show)
                    s.send("<presence to='%s'><show>%s</show></presence>"
                           % (self.jid(rnd.randint(1, a.users)), show))
                    self.counts["presence_sent"] += 2
                else:
                    to = rnd.randint(1, a.users - 1)
                    to += to >= n
                    mid = self.new_id("m")
                    self.ledger.sent[mid] = to
                    s.send("<message type='chat' to='%s' id='%s'><body>%s</body></message>"
                           % (self.jid(to), mid, mid))
            if not s.client.is_open():
                self.counts["sessions_ended_by_server"] += 1
            self.online.discard(n)
            await s.close(a.linger)
            self.counts["logouts"] += 1
            if not self.stop.is_set():
                await asyncio.sleep(rnd.uniform(a.away_min, a.away_max))

    async def collect(self, n):
        """The last login of user n: what was stored for it arrives; until nothing comes for a while."""
        got = []
        handler = self.handler(n)

        def on_stanza(el):
            got.append(1)
            handler(el)
        try:
            s = await self.login(n, on_stanza)
        except (XmppError, OSError, TimeoutError) as exc:
            self.note(exc)
            return
        seen = -1
        while seen != len(got):
            seen = len(got)
            await asyncio.sleep(self.args.collect_idle)
        await s.close(0)

    # ---- SIP: sipp -> bench(N+1) each minute, and bench(N+1) -> carol's sipp UAS ------------
    async def sip_phone(self):
        a = self.args
        target = "%s:%d" % (self.server.host, self.server.sip_port)
        step = 0
        while not self.stop.is_set():
            step += 1
            calls = int(a.sip_rate * a.sip_burst_seconds)
            self.sip["to_xmpp_sent"] += calls
            res = await asyncio.to_thread(run_step, os.path.join(self.tmp, "sipp-%d" % step), target,
                                          a.domain, a.user_pattern.format(a.users + 1), a.sip_rate,
                                          a.sip_burst_seconds)
            self.sip["to_xmpp_accepted"] += res["successful"]
            try:
                async with asyncio.timeout(max(0.0, 60 - a.sip_burst_seconds)):
                    await self.stop.wait()
            except TimeoutError:
                pass

    async def sip_user(self):
        a = self.args
        n = a.users + 1
        peer = SIP_PEER % a.domain

        def on_stanza(el):
            if el.tag != T_MESSAGE:
                return
            if el.get("type") == "error":
                cond = next((c.tag.split("}")[-1] for e in el if e.tag.endswith("}error") for c in e), "?")
                self.sip["to_sip_refused"][cond] = self.sip["to_sip_refused"].get(cond, 0) + 1
            elif el.get("from", "").startswith(peer):
                body = el.find(T_BODY)
                if body is not None and (body.text or "").startswith("bench "):
                    self.sip["to_xmpp_received"] += 1
        return await self.gateway_user(n, on_stanza, lambda s: self.send_to(s, peer, "sip"),
                                       1.0 / a.sip_rate_to_sip)

    async def sms_user(self):
        a = self.args

        def on_stanza(el):
            if el.tag == T_MESSAGE and el.get("type") == "error":
                cond = next((c.tag.split("}")[-1] for e in el if e.tag.endswith("}error") for c in e), "?")
                self.sms["refused"][cond] = self.sms["refused"].get(cond, 0) + 1

        def send(s):
            self.sms["sent"] += 1
            self.send_to(s, "%s@sms.%s" % (SMS_NUMBER % (self.sms["sent"] % 1000), a.domain), "sms")
        return await self.gateway_user(a.users + 2, on_stanza, send, a.sms_interval)

    def send_to(self, s, to, kind):
        if kind == "sip":
            self.sip["to_sip_sent"] += 1
        s.send("<message type='chat' to='%s' id='%s'><body>soak %s</body></message>"
               % (xml_escape(to), self.new_id(kind), kind))

    async def gateway_user(self, n, on_stanza, send, interval):
        """A user that stays logged in all along and sends through a gateway every `interval` s."""
        s = await self.login(n, on_stanza)
        while not self.stop.is_set():
            try:
                async with asyncio.timeout(interval):
                    await self.stop.wait()
            except TimeoutError:
                send(s)
        return s

    def print_minute(self, monitor, minute):
        last = monitor.samples[-1]
        acc = self.ledger.account()
        say("minute %3d: RSS %.1f MiB, fds %s, CPU %s%%, online %d, logins %d, messages sent %d "
            "received %d refused %d, SIP in %d/%d out %d, SMS %d"
            % (minute, (last["rss_kib"] or 0) / 1024, last["fds"], report.fmt(last.get("cpu_pct")),
               len(self.online), self.counts["logins"], acc["sent"], acc["received"], acc["refused"],
               self.sip["to_xmpp_received"], self.sip["to_xmpp_sent"], self.sip["to_sip_sent"],
               self.sms["sent"]))

    async def run(self, monitor):
        a = self.args
        gateway = [asyncio.create_task(self.sip_user()), asyncio.create_task(self.sms_user())]
        users = [asyncio.create_task(self.user(n)) for n in range(1, a.users + 1)]
        phone = asyncio.create_task(self.sip_phone())
        t0 = time.monotonic()
        minute = 0
        while time.monotonic() - t0 < a.minutes * 60:
            await asyncio.sleep(min(60, a.minutes * 60 - (time.monotonic() - t0)))
            minute += 1
            monitor.mark("minute %d" % minute)
            self.print_minute(monitor, minute)
        monitor.mark("load stops")
        self.stop.set()
        await asyncio.gather(*users, phone, return_exceptions=True)
        say("waves over; every user logs in once more to collect what was stored")
        monitor.mark("collection")
        for first in range(1, a.users + 1, 20):  # 20 at once
            await asyncio.gather(*(self.collect(n) for n in range(first, min(first + 20, a.users + 1))))
        await asyncio.sleep(a.collect_idle)  # the last SIP and SMS messages
        for t in gateway:
            s = await t
            await s.close(0)
        monitor.mark("done")


def uas_command(port, scenario, stat_file):
    return [SIPP, "-sf", scenario, "-i", SIPP_ADDRESS, "-p", str(port), "-t", "u1", "-nostdin",
            "-trace_stat", "-stf", stat_file, "-fd", "1"]


def uas_received(stat_file):
    """SuccessfulCall(C) of sipp's last statistics line: MESSAGEs answered 202."""
    try:
        with open(stat_file, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        head, last = lines[0].split(";"), lines[-1].split(";")
        return int(last[head.index("SuccessfulCall(C)")])
    except (OSError, ValueError, IndexError):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--message-interval", type=float, default=3.0,
                   help="mean seconds between a logged-in user's actions (default %(default)s)")
    p.add_argument("--presence-share", type=float, default=0.15,
                   help="share of the actions that are presence changes (default %(default)s)")
    p.add_argument("--online-min", type=float, default=30.0)
    p.add_argument("--online-max", type=float, default=150.0)
    p.add_argument("--away-min", type=float, default=5.0)
    p.add_argument("--away-max", type=float, default=45.0)
    p.add_argument("--linger", type=float, default=1.0,
                   help="seconds between unavailable presence and the closing tag")
    p.add_argument("--collect-idle", type=float, default=3.0,
                   help="the last login ends after this many seconds with nothing new")
    p.add_argument("--sip-rate", type=float, default=2.0, help="SIP MESSAGE/s during a SIP burst")
    p.add_argument("--sip-burst-seconds", type=float, default=30.0,
                   help="seconds of SIP MESSAGEs to XMPP each minute")
    p.add_argument("--sip-rate-to-sip", type=float, default=0.5, help="XMPP to SIP messages/s")
    p.add_argument("--sms-interval", type=float, default=2.0, help="seconds between SMS")
    p.add_argument("--sample-seconds", type=float, default=10.0)
    p.add_argument("--host", default="127.0.6.1", help="bridge's loopback address")
    p.add_argument("--sources", default="127.0.6.10-127.0.6.29",
                   help="client addresses (default %(default)s; bridge allows 20 connections each)")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user-pattern", default="bench{}")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--login-timeout", type=float, default=60.0)
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--ctl-jobs", type=int, default=4)
    p.add_argument("--output", help="write every figure and the samples as JSON here")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    node = shutil.which("node")
    if SIPP is None or node is None or not os.path.isdir(os.path.join(SMSC_DIR, "node_modules", "smpp")):
        p.error("needs sipp, node and the smpp package (.ci/install-test-peers)")
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="bridge-soak-")
    say("temporary directory %s" % tmp)
    smsc = SMSC(node)
    uas_port = free_port(SIPP_ADDRESS)
    scenario = os.path.join(tmp, "uas.xml")
    with open(scenario, "w") as f:
        f.write(UAS)
    uas_stat = os.path.join(tmp, "uas-stat.csv")
    uas = subprocess.Popen(uas_command(uas_port, scenario, uas_stat), cwd=tmp,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c2s_port = free_port(args.host, socket.SOCK_STREAM)
    sip_port = free_port(args.host)
    tables = {
        "sip": {"advertised_address": args.host, "allowed_domains": ["pbx.test"],
                "static_routes": {"pbx.test": "%s:%d" % (SIPP_ADDRESS, uas_port)}},
        # The SMS user sends one every --sms-interval seconds, far past the default limits a day
        # (which refuse the rest, each with its error): raised, still charged, as in bench.sms_bench.
        "sms": {"enabled": True, "domain": "sms.%s" % args.domain, "request_receipts": False,
                "outbound_sms_per_minute_per_user": 100000000, "outbound_sms_per_day_per_user": 100000000,
                "outbound_sms_per_minute_per_host": 100000000, "outbound_sms_per_day_per_host": 100000000},
        "smsc.soak": {"port": smsc.port, "system_id": "bridge", "password": "pw", "source_addr": "1000"},
    }
    server = BridgeServer(args, os.path.join(tmp, "bridge"), c2s_port, host=args.host, sip_port=sip_port,
                          raised_limits=False, tables=tables)
    results = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "command": " ".join(["python", "-m", "bench.soak"] + (argv if argv is not None else sys.argv[1:])),
        "loadavg_at_start": os.getloadavg()}}
    monitor = None
    try:
        server.prepare(args.users + 2)
        server.start()
        monitor = ProcessMonitor(server.pid, args.sample_seconds).start()
        soak = Soak(args, server, tmp)
        asyncio.run(soak.run(monitor))
        time.sleep(2)  # sipp's statistics file is written once a second
        soak.sip["to_sip_received"] = uas_received(uas_stat)
        soak.sms["accepted_by_smsc"] = smsc.stats()["accepted"]
        monitor.stop()
        results.update(messages=soak.ledger.account(), sip=soak.sip, sms=soak.sms, counts=soak.counts,
                       errors=soak.errors, monitor=summary(monitor.samples), marks=monitor.marks,
                       samples=monitor.samples, alive=server.alive())
    finally:
        if monitor is not None:
            monitor.stop()
        stop_quietly(server)
        uas.send_signal(signal.SIGTERM)
        try:
            uas.wait(timeout=10)
        except subprocess.TimeoutExpired:
            uas.kill()
        smsc.stop()
        results["meta"]["loadavg_at_end"] = os.getloadavg()
        if args.output:
            report.write_json(results, args.output)
        print_report(results, args.sample_seconds)
        if args.keep_tmp:
            say("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    acc = results.get("messages", {})
    return 0 if acc and not acc["missing"] else 1


def print_report(results, step):
    print(json.dumps(results["meta"]))
    for key in ("messages", "sip", "sms", "counts", "errors", "monitor"):
        if key in results:
            print("%-9s %s" % (key, json.dumps(results[key])))
    samples = results.get("samples", [])
    every = max(1, int(round(60 / step)))
    print("Server each minute: t s, RSS MiB, fds, CPU %")
    for s in samples[::every] + ([samples[-1]] if samples and (len(samples) - 1) % every else []):
        print("  %6.0f %8.1f %6s %6s" % (s["t"], (s["rss_kib"] or 0) / 1024, s["fds"],
                                        report.fmt(s.get("cpu_pct"))))


if __name__ == "__main__":
    sys.exit(main())

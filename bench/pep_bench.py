"""bench/pep_bench.py: personal eventing (XEP-0163) fan-out and HTTP upload (XEP-0363), bridge beside Prosody's mod_pep.

Run from the repository's root (loopback only, one server at a time):

    .venv/bin/python -m bench.pep_bench [--contacts 100] [--publishes 2000] [--window 20] [--upload-mib 10]

For each server (bridge, then Prosody with mod_pep), on a fresh process:

1. **Publish**: one publisher and --contacts contacts log in; every contact
   and the publisher become mutual presence subscribers (the subscription
   exchange over XMPP), and every contact's presence carries entity
   capabilities (XEP-0115) whose features include ``<node>+notify`` for the
   node (http://jabber.org/protocol/tune), answered when the server asks for
   them (disco#info).  The publisher (no capabilities: it gets no
   notification) publishes --publishes items, keeping --window publishes in
   flight (the next goes when one is acknowledged).  The run ends when every
   publish is acknowledged and every contact has every notification.
   Reported: notifications delivered per second, latency from the publish
   to each notification (p50, p99), and the server's CPU (utime+stime from
   /proc) per publish and per notification.
2. **Filtered**: the same sessions send new presence whose capabilities lack
   the +notify feature; the same publishes are made, and the server's filter
   drops every notification.  Reported: the server's CPU per publish, and
   the caps-filter cost: CPU per publish with +notify contacts minus without
   them (the work of fanning out) next to the filtered publish's own cost.
3. **Upload** (bridge only; Prosody's upload module is not set up here): a
   slot for a --upload-mib MiB file is asked of upload.<domain> over XMPP,
   the file is PUT to bridge's HTTP listener and fetched back (GET), while
   the server's resident memory (VmRSS) is read every 2 ms.
   Reported: MB/s each way (10^6 bytes per second) and the RSS peak minus
   the RSS before the PUT, for each direction.

The loader is this process (asyncio, bench/load.py's client: STARTTLS,
SCRAM, bind), so its CPU share is printed too: a loader near 1.0 means the
rate is the loader's, not the server's.  Results go to --output as JSON.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)

from bench.load import (NS_CLIENT, T_IQ, T_MESSAGE, Client, make_tls_context, percentile,  # noqa: E402
                        read_http_head, server_cpu, xml_escape)
from bench.muc_bench import MUCBridge, close_all, free_port  # noqa: E402
from bench.servers import BenchError, ProsodyServer, proc_rss_kib, run_on_servers  # noqa: E402

NODE = "http://jabber.org/protocol/tune"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_EVENT = NS_PUBSUB + "#event"
NS_CAPS = "http://jabber.org/protocol/caps"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_ROSTER = "jabber:iq:roster"
NS_UPLOAD = "urn:xmpp:http:upload:0"
T_PRESENCE = "{%s}presence" % NS_CLIENT
T_EVENT_ITEM = "{%s}event/{%s}items/{%s}item" % (NS_EVENT, NS_EVENT, NS_EVENT)
CAPS_NODE = "https://bridge.example/pep-bench"
IDENTITY = ("client", "pc", "", "pep bench")
BASE_FEATURES = [NS_CAPS, NS_DISCO_INFO, "http://jabber.org/protocol/disco#items"]
NOTIFY_FEATURES = sorted(BASE_FEATURES + [NODE, NODE + "+notify"])
SILENT_FEATURES = sorted(BASE_FEATURES + [NODE])
CHUNK_BYTES = 65536


def caps_ver(identity, features):
    """The XEP-0115 verification string (SHA-1, base64) of one identity (category, type, lang, name)
    and a feature list."""
    text = "/".join(identity) + "<" + "".join(feature + "<" for feature in sorted(features))
    return base64.b64encode(hashlib.sha1(text.encode("utf-8")).digest()).decode("ascii")


def publish_figures(publishes, notifications, expected_per_publish, elapsed_s, server_cpu_s, loader_cpu_s,
                    latencies_ns):
    """The figures of one publish run (``latencies_ns`` sorted): rates, latencies, CPU per publish and
    per notification."""
    ms = lambda ns: None if ns is None else round(ns / 1e6, 2)
    return {"publishes": publishes, "notifications": notifications,
            "notifications_expected": publishes * expected_per_publish,
            "publishes_per_s": round(publishes / elapsed_s, 1),
            "notifications_per_s": round(notifications / elapsed_s, 1),
            "latency_p50_ms": ms(percentile(latencies_ns, 0.5)), "latency_p99_ms": ms(percentile(latencies_ns, 0.99)),
            "server_cpu_s": round(server_cpu_s, 3),
            "server_cpu_us_per_publish": round(server_cpu_s * 1e6 / publishes, 1),
            "server_cpu_us_per_notification": round(server_cpu_s * 1e6 / notifications, 1) if notifications else None,
            "server_cpu_fraction": round(server_cpu_s / elapsed_s, 3),
            "loader_cpu_fraction": round(loader_cpu_s / elapsed_s, 3), "measured_s": round(elapsed_s, 3)}


def filter_cost(notified, filtered):
    """The caps filter's figures from a run with +notify contacts and one without: the CPU per publish of
    each, and the difference (what fanning the notifications out costs beyond the filtered publish)."""
    with_notify = notified["server_cpu_us_per_publish"]
    without = filtered["server_cpu_us_per_publish"]
    per_publish = notified["notifications_expected"] / notified["publishes"]
    return {"server_cpu_us_per_publish_notify": with_notify, "server_cpu_us_per_publish_filtered": without,
            "difference_us_per_publish": round(with_notify - without, 1),
            "difference_us_per_notification": round((with_notify - without) / per_publish, 1) if per_publish else None,
            "filtered_share": round(without / with_notify, 3) if with_notify else None}


def transfer_figures(size_bytes, seconds, rss_before_kib, rss_peak_kib):
    """One direction of the upload: MB/s (10^6 bytes per second) and the server's RSS growth."""
    return {"bytes": size_bytes, "seconds": round(seconds, 3), "mb_per_s": round(size_bytes / seconds / 1e6, 1),
            "rss_before_kib": rss_before_kib, "rss_peak_kib": rss_peak_kib,
            "rss_growth_kib": rss_peak_kib - rss_before_kib}


class RssSampler:
    """The highest VmRSS of a process, read every ``interval`` seconds on a thread of its own."""

    def __init__(self, pid, interval=0.002):
        self.pid = pid
        self.interval = interval
        self.peak_kib = proc_rss_kib(pid)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stopping.wait(self.interval):
            self.peak_kib = max(self.peak_kib, proc_rss_kib(self.pid))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()
        self.peak_kib = max(self.peak_kib, proc_rss_kib(self.pid))


class PEPProsody(ProsodyServer):
    """Prosody with mod_pep, which the bench's module list (roster, saslauth, tls, ...) leaves out."""

    def config_lines(self, cert, key):
        return [line.replace("modules_enabled = { ", "modules_enabled = { \"pep\", ", 1)
                for line in super().config_lines(cert, key)]


class Session:
    """One logged-in account: answers subscription requests, roster pushes and disco#info about its
    capabilities; a contact counts and times the notifications it receives."""

    def __init__(self, bench, client, publisher):
        self.bench = bench
        self.client = client
        self.publisher = publisher
        self.bare = "%s@%s" % (client.username, client.domain)
        self.features = NOTIFY_FEATURES
        self.answers = {}  # iq id -> Future
        self.reader = None

    def start(self):
        self.client.on_stanza = self.on_stanza
        self.reader = asyncio.ensure_future(self.client.read_loop())

    def send_presence(self):
        if self.publisher:
            self.client.send("<presence/>")
        else:
            self.client.send("<presence><c xmlns='%s' hash='sha-1' node='%s' ver='%s'/></presence>"
                             % (NS_CAPS, CAPS_NODE, caps_ver(IDENTITY, self.features)))

    def on_stanza(self, client, element):
        if element.tag == T_MESSAGE:
            item = element.find(T_EVENT_ITEM)
            if item is not None and not self.publisher:
                self.bench.notified(item.get("id") or "")
        elif element.tag == T_IQ:
            self.on_iq(element)
        elif element.tag == T_PRESENCE and element.get("type") == "subscribe":
            asker = element.get("from")
            client.send("<presence type='subscribed' to='%s'/>" % xml_escape(asker))
            if not self.publisher:
                client.send("<presence type='subscribe' to='%s'/>" % xml_escape(asker))

    def on_iq(self, element):
        kind = element.get("type")
        if kind in ("result", "error"):
            waiting = self.answers.pop(element.get("id"), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(element)
            elif self.publisher:
                self.bench.acknowledged(element)
            return
        answer = "id='%s' to='%s'" % (xml_escape(element.get("id") or ""), xml_escape(element.get("from") or ""))
        query = element.find("{%s}query" % NS_ROSTER)
        if query is not None and kind == "set":
            if self.publisher:
                for item in query:
                    if item.get("subscription") == "both":
                        self.bench.mutual.add(item.get("jid"))
                self.bench.check_mutual()
            self.client.send("<iq type='result' %s/>" % answer)
            return
        query = element.find("{%s}query" % NS_DISCO_INFO)
        if query is not None and kind == "get":
            node = query.get("node")
            self.client.send("<iq type='result' %s><query xmlns='%s'%s><identity category='%s' type='%s' name='%s'/>"
                             "%s</query></iq>" % (answer, NS_DISCO_INFO,
                                                  " node='%s'" % xml_escape(node) if node else "",
                                                  IDENTITY[0], IDENTITY[1], IDENTITY[3],
                                                  "".join("<feature var='%s'/>" % f for f in self.features)))
            return
        self.client.handle_other(element)

    async def ask(self, iq_id, stanza, timeout):
        answer = asyncio.get_running_loop().create_future()
        self.answers[iq_id] = answer
        self.client.send(stanza)
        return await asyncio.wait_for(answer, timeout)


class PEPBench:
    def __init__(self, args, server):
        self.args = args
        self.server = server
        self.tls = make_tls_context()
        self.mutual = set()
        self.all_mutual = None  # a Future while subscribing
        self.contacts = []
        self.publisher = None
        self.run = None  # the publish run under way: its counters and Futures

    async def login(self):
        a = self.args
        count = a.contacts + 1
        clients = [None] * count
        next_index = 0

        async def worker():
            nonlocal next_index
            while next_index < count:
                i = next_index
                next_index += 1
                client = Client("127.0.0.1", self.server.port, a.domain, a.user_pattern.format(i + 1), a.password,
                                "pep%d" % i, self.tls)
                await asyncio.wait_for(client.login(), a.timeout)
                clients[i] = client

        await asyncio.gather(*[worker() for _ in range(a.login_concurrency)])
        sessions = [Session(self, client, i == 0) for i, client in enumerate(clients)]
        for session in sessions:
            session.start()
        self.publisher, self.contacts = sessions[0], sessions[1:]
        return sessions

    def check_mutual(self):
        if self.all_mutual is not None and not self.all_mutual.done() \
                and all(contact.bare in self.mutual for contact in self.contacts):
            self.all_mutual.set_result(None)

    async def subscribe_all(self):
        """Mutual presence subscriptions between the publisher and every contact, then every contact's
        presence again (its capabilities reach the publisher's account)."""
        self.all_mutual = asyncio.get_running_loop().create_future()
        # The roster asked for first: only such a resource gets roster pushes (RFC 6121, 2.1.6).
        await self.publisher.ask("roster", "<iq type='get' id='roster'><query xmlns='%s'/></iq>" % NS_ROSTER,
                                 self.args.timeout)
        for session in [self.publisher] + self.contacts:
            session.send_presence()
        for contact in self.contacts:
            self.publisher.client.send("<presence type='subscribe' to='%s'/>" % contact.bare)
        try:
            await asyncio.wait_for(self.all_mutual, self.args.timeout)
        except asyncio.TimeoutError:
            raise BenchError("only %d of %d contacts became mutual subscribers" % (len(self.mutual),
                                                                                    len(self.contacts)))
        for contact in self.contacts:
            contact.send_presence()
        await asyncio.sleep(self.args.settle)

    def publish(self):
        run = self.run
        run["sent"] += 1
        self.publisher.client.send(
            "<iq type='set' id='p%d'><pubsub xmlns='%s'><publish node='%s'><item id='%d-%d'><tune xmlns='%s'>"
            "<artist>Bench</artist><title>Track %d</title><length>240</length></tune></item></publish></pubsub>"
            "</iq>" % (run["sent"], NS_PUBSUB, NODE, run["sent"], time.perf_counter_ns(), NODE, run["sent"]))

    def acknowledged(self, element):
        run = self.run
        if run is None or not (element.get("id") or "").startswith("p"):
            return
        if element.get("type") != "result":
            refused = ET.tostring(element, encoding="unicode")[:300]
            run["done"].set_exception(BenchError("publish refused: %s" % refused))
            return
        run["acked"] += 1
        run["last"] = time.perf_counter()
        if run["sent"] < run["publishes"]:
            self.publish()
        self.check_done()

    def notified(self, item_id):
        run = self.run
        if run is None:
            return
        now = time.perf_counter_ns()
        _, _, sent_ns = item_id.partition("-")
        run["notifications"] += 1
        run["latencies"].append(now - int(sent_ns))
        run["last"] = now / 1e9
        self.check_done()

    def check_done(self):
        run = self.run
        if not run["done"].done() and run["acked"] == run["publishes"] \
                and run["notifications"] >= run["publishes"] * run["expected_per_publish"]:
            run["done"].set_result(None)

    async def publish_run(self, publishes, expected_per_publish):
        """``publishes`` publishes, --window in flight; the figures once all are acknowledged and all
        ``expected_per_publish`` notifications each are in (BenchError after --timeout)."""
        a = self.args
        self.run = run = {"publishes": publishes, "expected_per_publish": expected_per_publish, "sent": 0,
                          "acked": 0, "notifications": 0, "latencies": [],
                          "done": asyncio.get_running_loop().create_future()}
        cpu0, loader0 = server_cpu(self.server.pid), time.process_time()
        started = run["last"] = time.perf_counter()
        for _ in range(min(a.window, publishes)):
            self.publish()
        try:
            await asyncio.wait_for(asyncio.shield(run["done"]), a.timeout)
        except asyncio.TimeoutError:
            raise BenchError("timed out: %d of %d publishes acknowledged, %d of %d notifications"
                             % (run["acked"], publishes, run["notifications"], publishes * expected_per_publish))
        cpu = server_cpu(self.server.pid) - cpu0
        loader = time.process_time() - loader0
        elapsed = run["last"] - started
        if expected_per_publish == 0:
            # Notifications that come after all the acknowledgements are still counted, below.
            await asyncio.sleep(self.args.settle)
        self.run = None
        return publish_figures(run["acked"], run["notifications"], expected_per_publish, elapsed, cpu, loader,
                               sorted(run["latencies"]))

    async def publishing(self):
        a = self.args
        sessions = await self.login()
        try:
            await self.subscribe_all()
            # The node is created, and the server learns the capabilities, before the measured runs.
            await self.publish_run(a.window, len(self.contacts))
            notified = await self.publish_run(a.publishes, len(self.contacts))
            for contact in self.contacts:
                contact.features = SILENT_FEATURES
                contact.send_presence()
            await asyncio.sleep(a.settle)
            await self.publish_run(a.window, 0)
            filtered = await self.publish_run(a.publishes, 0)
        finally:
            await close_all(sessions)
        if notified["notifications"] < notified["notifications_expected"]:
            raise BenchError("only %d of %d notifications arrived: %s" % (
                notified["notifications"], notified["notifications_expected"], notified))
        return {"contacts": len(self.contacts), "window": a.window, "notify": notified, "filtered": filtered,
                "caps_filter": filter_cost(notified, filtered)}

    async def upload(self):
        a = self.args
        size = a.upload_mib * 1024 * 1024
        client = Client("127.0.0.1", self.server.port, a.domain, a.user_pattern.format(1), a.password, "upload",
                        self.tls)
        await asyncio.wait_for(client.login(), a.timeout)
        session = Session(self, client, True)
        session.start()
        try:
            slot = await session.ask("slot", "<iq type='get' id='slot' to='upload.%s'><request xmlns='%s' "
                                     "filename='bench.bin' size='%d' content-type='application/octet-stream'/></iq>"
                                     % (a.domain, NS_UPLOAD, size), a.timeout)
        finally:
            await close_all([session])
        put = slot.find("{%s}slot/{%s}put" % (NS_UPLOAD, NS_UPLOAD))
        get = slot.find("{%s}slot/{%s}get" % (NS_UPLOAD, NS_UPLOAD))
        if slot.get("type") != "result" or put is None or get is None:
            raise BenchError("no upload slot: %s" % ET.tostring(slot, encoding="unicode")[:300])
        body = os.urandom(size)
        headers = "".join("%s: %s\r\n" % (header.get("name"), (header.text or "").strip()) for header in put)
        loader0 = time.process_time()
        rss_before = proc_rss_kib(self.server.pid)
        with RssSampler(self.server.pid) as sampler:
            started = time.perf_counter()
            status, _ = await self.http("PUT", put.get("url"), headers + "Content-Type: application/octet-stream\r\n"
                                        "Content-Length: %d\r\n" % size, body)
            put_s = time.perf_counter() - started
        if status != 201:
            raise BenchError("PUT answered %d" % status)
        put_figures = transfer_figures(size, put_s, rss_before, sampler.peak_kib)
        rss_before = proc_rss_kib(self.server.pid)
        with RssSampler(self.server.pid) as sampler:
            started = time.perf_counter()
            status, digest = await self.http("GET", get.get("url"), "", b"")
            get_s = time.perf_counter() - started
        if status != 200 or digest != hashlib.sha256(body).hexdigest():
            raise BenchError("GET answered %d%s" % (status, "" if status != 200 else " with other bytes"))
        get_figures = transfer_figures(size, get_s, rss_before, sampler.peak_kib)
        loader = time.process_time() - loader0
        return {"put": put_figures, "get": get_figures, "loader_cpu_fraction": round(loader / (put_s + get_s), 3)}

    async def http(self, method, url, headers, body):
        """One request to bridge's HTTP listener (whatever host the URL names: the bench's listener is on
        127.0.0.1), the body written 64 KiB at a time; (status, SHA-256 of the answer's body)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.port != self.server.http_port:
            raise BenchError("the slot's URL %s is not on the bench's HTTP listener" % url)
        reader, writer = await asyncio.open_connection("127.0.0.1", parts.port, limit=CHUNK_BYTES * 4)
        try:
            target = parts.path + ("?" + parts.query if parts.query else "")
            writer.write(("%s %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n"
                          % (method, target, parts.netloc, headers)).encode("latin-1"))
            view = memoryview(body)
            for offset in range(0, len(body), CHUNK_BYTES):
                writer.write(view[offset:offset + CHUNK_BYTES])
                await writer.drain()
            status, answer_headers = await read_http_head(reader)
            digest = hashlib.sha256()
            remaining = int(answer_headers.get("content-length", "0"))
            while remaining > 0:
                data = await reader.read(min(remaining, CHUNK_BYTES * 4))
                if not data:
                    raise BenchError("the %s answer ended %d bytes short" % (method, remaining))
                digest.update(data)
                remaining -= len(data)
            return status, digest.hexdigest()
        finally:
            writer.close()


def make_server(args, name, tmp):
    workdir = os.path.join(tmp, name)
    if name == "bridge":
        return MUCBridge(args, workdir, free_port(), http_port=free_port())
    return PEPProsody(args, workdir, free_port(), "ec")


def phase_run(args, server, phase):
    """The coroutine of one phase on a started ``server``."""
    bench = PEPBench(args, server)
    return bench.publishing() if phase == "publish" else bench.upload()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="bridge,prosody", help="comma-separated subset of bridge,prosody "
                   "(default %(default)s)")
    p.add_argument("--contacts", type=int, default=100)
    p.add_argument("--publishes", type=int, default=2000, help="publishes per measured run (default %(default)s)")
    p.add_argument("--window", type=int, default=20, help="publishes in flight (default %(default)s)")
    p.add_argument("--upload-mib", type=int, default=10, help="size of the uploaded file (default %(default)s)")
    p.add_argument("--login-concurrency", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300.0, help="for one login, the subscriptions or one run, in s")
    p.add_argument("--quick", action="store_true", help="5 contacts, 50 publishes, a 1 MiB file")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user-pattern", default="pepbench{}")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--prosody-accounts", choices=("direct", "prosodyctl"), default="direct")
    p.add_argument("--ctl-jobs", type=int, default=8, help="prosodyctl processes in parallel (default %(default)s)")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--output", help="write every figure as JSON here")
    p.add_argument("--keep-tmp", action="store_true")
    if p.parse_args(argv).quick:
        p.set_defaults(contacts=5, publishes=50, window=5, upload_mib=1, timeout=30.0)
    args = p.parse_args(argv)
    return run_on_servers(args, "bridge-pep-bench-", args.contacts + 1,
                          lambda name: ("publish", "upload") if name == "bridge" else ("publish",), make_server,
                          phase_run, print_table)


def print_table(results):
    rows = [("notifications/s", "notify", "notifications_per_s"), ("publishes/s", "notify", "publishes_per_s"),
            ("latency p50 ms", "notify", "latency_p50_ms"), ("latency p99 ms", "notify", "latency_p99_ms"),
            ("server CPU us/publish", "notify", "server_cpu_us_per_publish"),
            ("server CPU us/notification", "notify", "server_cpu_us_per_notification"),
            ("loader CPU share", "notify", "loader_cpu_fraction"),
            ("filtered: server CPU us/publish", "filtered", "server_cpu_us_per_publish"),
            ("filtered: notifications", "filtered", "notifications"),
            ("fan-out cost us/publish", "caps_filter", "difference_us_per_publish"),
            ("fan-out cost us/notification", "caps_filter", "difference_us_per_notification")]
    names = list(results["servers"])
    print("%-34s" % "" + "".join("%14s" % name for name in names))
    for label, part, key in rows:
        print("%-34s" % label + "".join(
            "%14s" % results["servers"][name].get("publish", {}).get(part, {}).get(key, "-") for name in names))
    for name in names:
        upload = results["servers"][name].get("upload")
        if upload:
            print("%s upload: PUT %s MB/s (RSS +%d KiB), GET %s MB/s (RSS +%d KiB), loader CPU share %s" % (
                name, upload["put"]["mb_per_s"], upload["put"]["rss_growth_kib"], upload["get"]["mb_per_s"],
                upload["get"]["rss_growth_kib"], upload["loader_cpu_fraction"]))
        if "error" in results["servers"][name]:
            print("%s: %s" % (name, results["servers"][name]["error"]))


if __name__ == "__main__":
    sys.exit(main())

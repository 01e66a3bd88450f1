"""Hostile load for the flood benchmark (``python -m bench.flood``): connections that never become sessions, and a SIP flood.

Runs as its own process (asyncio, the standard library), from the
repository's root: ``python -m bench.hostile ...``.  Only for a server on
this machine: every target and every source address must be in 127.0.0.0/8.
Each worker binds its sockets to one of the --sources addresses (spread
round-robin over all workers of all kinds), so that a server's per-address
limits meet the flood as they would meet one from many hosts.

Kinds of workers, each a loop of connections (the next one after
--reconnect-delay once the server ends the last), for --duration seconds:

  slowloris      c2s (STARTTLS port): a stream header sent one byte every
                 --slowloris-interval seconds, endless (an attribute value
                 that never closes).
  garbage        c2s: --garbage-bytes random bytes, then read until the
                 server closes.
  half-open-tls  the direct-TLS port: half the workers send a ClientHello
                 but its last 16 bytes, the other half connect and say nothing.
  bosh           the HTTP port: BOSH session creation requests back to back
                 on one keep-alive connection (the next one when the answer
                 came), never using a session made.
  SIP (UDP)      --sip-rate datagrams a second in all, INVITE and REGISTER
                 alternately, from one socket per source address, each with a
                 made-up From, Call-ID and Via host (the Via's port is the
                 socket's, without rport, so that answers come back here as
                 they would reach a spoofed victim).  Never an ACK.  Every
                 datagram that comes back is counted against the method of its
                 CSeq until --sip-tail seconds after the flood ends
                 (retransmissions included): bytes back / bytes sent is the
                 amplification.

Standard output: a JSON line {"type": "ready"} once every worker has started
(--ramp seconds), then {"type": "result", ...} at the end: per kind the
connections tried, made and failed, how the server ended them (what it sent
first), their lifetimes, bytes both ways; the BOSH answers; the SIP counts.
SIGTERM or SIGINT (or a closed stdin with --stop-on-stdin) ends the flood
early.  --connections FILE writes one line per connection made (kind, local
address and port) so that the server's log lines can be attributed to a kind.
"""

import argparse
import asyncio
import ipaddress
import os
import random
import signal
import ssl
import sys
import time
import xml.etree.ElementTree as ET

from bench.load import (NS_HTTPBIND, HttpConn, XmppError, address_range, emit, log, percentile,
                        raise_nofile)

KINDS = ("slowloris", "garbage", "half-open-tls", "bosh")
NS_XBOSH = "urn:xmpp:xbosh"
# Markers in the first bytes a server sends before it ends a connection.
MARKERS = (
    ("too many connections", "refused: too many connections from the address"),
    ("connection-timeout", "stream error connection-timeout"),
    ("not-well-formed", "stream error not-well-formed"),
    ("bad-format", "stream error bad-format"),
    ("policy-violation", "stream error policy-violation"),
    ("<stream:error", "other stream error"),
    ("HTTP/1.1 503", "HTTP 503"),
)


def loopback(address):
    return ipaddress.ip_address(address) in ipaddress.ip_network("127.0.0.0/8")


class KindStats:
    def __init__(self, kind, workers):
        self.kind = kind
        self.workers = workers
        self.attempts = 0
        self.connected = 0
        self.connect_errors = {}
        self.ended_by_server = {}
        self.open_at_end = 0
        self.lifetimes = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self.open_now = 0
        self.open_peak = 0
        self.extra = {}

    def count(self, table, key, n=1):
        table[key] = table.get(key, 0) + n

    def opened(self):
        self.connected += 1
        self.open_now += 1
        self.open_peak = max(self.open_peak, self.open_now)

    def closed(self, lifetime, by_server, first_bytes):
        self.open_now -= 1
        self.lifetimes.append(lifetime)
        if not by_server:
            self.open_at_end += 1
            return
        text = first_bytes.decode("latin-1", "replace")
        why = "closed, nothing readable sent" if not first_bytes else "closed after other bytes"
        for marker, label in MARKERS:
            if marker in text:
                why = label
                break
        self.count(self.ended_by_server, why)

    def result(self):
        lt = sorted(self.lifetimes)
        r = lambda v: None if v is None else round(v, 2)
        out = {"workers": self.workers, "attempts": self.attempts, "connected": self.connected,
               "connect_errors": self.connect_errors, "ended_by_server": self.ended_by_server,
               "open_at_end": self.open_at_end, "open_peak": self.open_peak,
               "lifetime_p50_s": r(percentile(lt, 0.5)), "lifetime_p90_s": r(percentile(lt, 0.9)),
               "lifetime_max_s": r(lt[-1] if lt else None),
               "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received}
        out.update(self.extra)
        return out


class Flood:
    def __init__(self, args):
        self.args = args
        self.stop = asyncio.Event()
        self.deadline = time.monotonic() + args.duration
        self.stats = {}
        self.conn_log = open(args.connections, "w") if args.connections else None
        self.client_hello = self._client_hello()

    @staticmethod
    def _client_hello():
        """The first flight of a TLS client (a ClientHello), from a memory BIO."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return outgoing.read()

    def running(self):
        return not self.stop.is_set() and time.monotonic() < self.deadline

    async def pause(self, seconds):
        """Sleep, but wake when the flood stops; False when it has."""
        try:
            async with asyncio.timeout(max(0.0, min(seconds, self.deadline - time.monotonic()))):
                await self.stop.wait()
        except TimeoutError:
            pass
        return self.running()

    def note_connection(self, kind, writer):
        if self.conn_log is not None:
            host, port = writer.get_extra_info("sockname")[:2]
            self.conn_log.write("%s %s:%d\n" % (kind, host, port))

    # ---- stream connections ------------------------------------------------------
    async def worker(self, kind, index, source):
        st = self.stats[kind]
        a = self.args
        port = {"slowloris": a.c2s_port, "garbage": a.c2s_port, "half-open-tls": a.tls_port,
                "bosh": a.http_port}[kind]
        for _ in range(a.max_connections_per_worker):
            if not self.running():
                return
            st.attempts += 1
            try:
                async with asyncio.timeout(a.connect_timeout):
                    reader, writer = await asyncio.open_connection(
                        a.host, port, local_addr=(source, 0))
            except (OSError, TimeoutError) as exc:
                st.count(st.connect_errors, type(exc).__name__ + (
                    ": %s" % exc.strerror if getattr(exc, "strerror", None) else ""))
                if not await self.pause(a.reconnect_delay):
                    return
                continue
            self.note_connection(kind, writer)
            st.opened()
            t0 = time.monotonic()
            by_server, first = False, b""
            try:
                if kind == "bosh":
                    by_server = await self.bosh(st, reader, writer, source, port)
                else:
                    by_server, first = await self.stream(kind, index, st, reader, writer)
            except (OSError, asyncio.IncompleteReadError, XmppError) as exc:
                by_server = True
                st.count(st.extra.setdefault("errors", {}), "%s: %s" % (type(exc).__name__, str(exc)[:80]))
            finally:
                writer.transport.abort()
                st.closed(time.monotonic() - t0, by_server and self.running(), first)
            if not await self.pause(a.reconnect_delay):
                return

    async def stream(self, kind, index, st, reader, writer):
        """One slowloris, garbage or half-open TLS connection: (ended by the server, its first bytes)."""
        a = self.args
        first = bytearray()
        reading = asyncio.create_task(self.read_all(reader, st, first))
        try:
            if kind == "slowloris":
                head = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                        b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' "
                        b"version='1.0' xmlns:x='")
                i = 0
                while not reading.done() and self.running():
                    writer.write(head[i:i + 1] if i < len(head) else b"a")
                    st.bytes_sent += 1
                    i += 1
                    await asyncio.wait([reading], timeout=min(
                        a.slowloris_interval, max(0.0, self.deadline - time.monotonic())))
            elif kind == "garbage":
                data = os.urandom(a.garbage_bytes)
                writer.write(data)
                st.bytes_sent += len(data)
            elif index % 2 == 0:  # half-open TLS: a ClientHello without its end
                data = self.client_hello[:-16]
                writer.write(data)
                st.bytes_sent += len(data)
            if not reading.done():
                stopping = asyncio.create_task(self.stop.wait())
                await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED,
                                   timeout=max(0.0, self.deadline - time.monotonic()))
                stopping.cancel()
            return reading.done(), bytes(first)
        finally:
            if reading.done() and not reading.cancelled():
                reading.exception()  # a reset by the server: the connection ended all the same
            reading.cancel()

    @staticmethod
    async def read_all(reader, st, first):
        """Read until the server closes; keep the first 512 bytes."""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            st.bytes_received += len(data)
            if len(first) < 512:
                first += data[:512 - len(first)]

    async def bosh(self, st, reader, writer, source, port):
        """Session creation requests back to back on one connection; True when the server closed it."""
        a = self.args
        conn = HttpConn(a.host, port, source)
        conn.reader, conn.writer = reader, writer
        ex = st.extra
        rid = random.randrange(1 << 40)
        while self.running():
            rid += 1
            body = ("<body content='text/xml; charset=utf-8' hold='1' rid='%d' to='%s' ver='1.6' "
                    "wait='60' xml:lang='en' xmpp:version='1.0' xmlns='%s' xmlns:xmpp='%s'/>"
                    % (rid, a.domain, NS_HTTPBIND, NS_XBOSH)).encode()
            try:
                async with asyncio.timeout(a.bosh_answer_timeout):
                    status, headers, data = await conn.post("/http-bind", a.domain, body)
            except TimeoutError:
                st.count(ex.setdefault("bosh_answers", {}), "no answer in time")
                return False
            st.bytes_sent += len(body)
            st.bytes_received += len(data)
            ex["bosh_requests"] = ex.get("bosh_requests", 0) + 1
            if status != 200:
                st.count(ex.setdefault("bosh_answers", {}), "HTTP %d" % status)
            else:
                try:
                    root = ET.fromstring(data)
                except ET.ParseError:
                    root = None
                if root is None:
                    what = "unreadable"
                elif root.get("type") == "terminate":
                    what = "terminate %s" % root.get("condition")
                elif root.get("sid"):
                    what = "session created"
                else:
                    what = "other"
                st.count(ex.setdefault("bosh_answers", {}), what)
            if conn.dead:
                return True
        return False

    # ---- SIP over UDP -------------------------------------------------------------
    async def sip(self, sources):
        a = self.args
        loop = asyncio.get_running_loop()
        sent = {"INVITE": [0, 0], "REGISTER": [0, 0]}  # datagrams, bytes
        back = {"INVITE": [0, 0], "REGISTER": [0, 0], "?": [0, 0]}
        statuses = {}

        class Victim(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                method = "?"
                status = "?"
                head = data[:4096].decode("latin-1", "replace")
                first_line, _, rest = head.partition("\r\n")
                parts = first_line.split(" ", 2)
                if len(parts) >= 2 and parts[0] == "SIP/2.0":
                    status = parts[1]
                for line in rest.split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() in ("cseq",):
                        method = value.split()[-1] if value.split() else "?"
                        break
                key = method if method in back else "?"
                back[key][0] += 1
                back[key][1] += len(data)
                label = "%s %s" % (method, status)
                statuses[label] = statuses.get(label, 0) + 1

        endpoints = []
        for source in sources:
            transport, _ = await loop.create_datagram_endpoint(Victim, local_addr=(source, 0))
            endpoints.append(transport)
        interval = 1.0 / a.sip_rate
        n = 0
        t_next = time.monotonic()
        t0 = t_next
        while self.running() and n < a.sip_max_datagrams:
            transport = endpoints[n % len(endpoints)]
            host, port = transport.get_extra_info("sockname")[:2]
            method = "INVITE" if n % 2 == 0 else "REGISTER"
            data = self.sip_request(method, n, port)
            transport.sendto(data, (a.host, a.sip_port))
            sent[method][0] += 1
            sent[method][1] += len(data)
            n += 1
            t_next += interval
            delay = t_next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 100 == 0:
                await asyncio.sleep(0)
        flood_s = time.monotonic() - t0
        log("sip: %d datagrams sent in %.1f s; reading answers for %.0f s more"
            % (n, flood_s, a.sip_tail))
        await asyncio.sleep(a.sip_tail)
        for transport in endpoints:
            transport.close()
        out = {"sources": len(endpoints), "flood_s": round(flood_s, 2),
               "rate_per_s": round(n / flood_s, 1) if flood_s else None, "tail_s": a.sip_tail,
               "responses": dict(sorted(statuses.items()))}
        for method in ("INVITE", "REGISTER"):
            d, b = sent[method]
            rd, rb = back[method]
            out[method] = {"sent": d, "sent_bytes": b, "answers": rd, "answer_bytes": rb,
                           "answers_per_request": round(rd / d, 2) if d else None,
                           "amplification_bytes": round(rb / b, 2) if b else None}
        out["unattributed"] = {"answers": back["?"][0], "answer_bytes": back["?"][1]}
        return out

    def sip_request(self, method, n, port):
        a = self.args
        victim = "203.0.113.%d" % (n % 250 + 1)  # a made-up Via host (TEST-NET-3)
        user = "u%x" % random.getrandbits(32)
        domain = "%s.example" % random.choice(("pbx", "voip", "sip", "tel"))
        call_id = "%x@%s" % (random.getrandbits(64), victim)
        target = "sip:%s@%s" % ("bench%d" % (n % 50 + 1), a.domain) if method == "INVITE" \
            else "sip:%s" % a.domain
        to = target if method == "INVITE" else "sip:%s@%s" % (user, a.domain)
        body = b""
        extra = ""
        if method == "INVITE":
            body = (b"v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
                    b"m=audio 4000 RTP/AVP 0\r\n" % (victim.encode(), victim.encode()))
            extra = "Contact: <sip:%s@%s:%d>\r\nContent-Type: application/sdp\r\n" % (
                user, victim, port)
        else:
            extra = "Contact: <sip:%s@%s:%d>\r\nExpires: 3600\r\n" % (user, victim, port)
        head = ("%s %s SIP/2.0\r\n"
                "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK%x\r\n"
                "Max-Forwards: 70\r\n"
                "From: <sip:%s@%s>;tag=%x\r\n"
                "To: <%s>\r\n"
                "Call-ID: %s\r\n"
                "CSeq: 1 %s\r\n"
                "%s"
                "Content-Length: %d\r\n\r\n" % (
                    method, target, victim, port, random.getrandbits(48), user, domain,
                    random.getrandbits(32), to, call_id, method, extra, len(body)))
        return head.encode() + body

    # ---- the run ------------------------------------------------------------------
    async def run(self):
        a = self.args
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        if a.stop_on_stdin:
            stop = self.stop

            class StdinWatch(asyncio.Protocol):
                def connection_lost(self, exc):
                    stop.set()

            await loop.connect_read_pipe(StdinWatch, sys.stdin)
        counts = {"slowloris": a.slowloris, "garbage": a.garbage,
                  "half-open-tls": a.half_open_tls, "bosh": a.bosh}
        plan = [(kind, i) for kind in KINDS for i in range(counts[kind])]
        for kind in KINDS:
            self.stats[kind] = KindStats(kind, counts[kind])
        cpu0 = time.process_time()
        t0 = time.monotonic()
        tasks = []
        sip_task = None
        if a.sip_rate > 0:
            sip_task = asyncio.create_task(self.sip(a.sources))
        # Interleaved so that every address carries every kind; started over --ramp seconds.
        random.Random(1).shuffle(plan)
        for g, (kind, i) in enumerate(plan):
            if not self.running():
                break
            tasks.append(asyncio.create_task(self.worker(kind, i, a.sources[g % len(a.sources)])))
            if a.ramp > 0 and plan:
                await asyncio.sleep(a.ramp / len(plan))
        emit({"type": "ready", "workers": len(tasks)})
        log("hostile: %d workers started in %.1f s" % (len(tasks), time.monotonic() - t0))
        await asyncio.gather(*tasks, return_exceptions=True)
        flood_s = time.monotonic() - t0
        sip = await sip_task if sip_task is not None else None
        if self.conn_log is not None:
            self.conn_log.close()
        res = {"type": "result", "flood_s": round(flood_s, 2),
               "cpu_s": round(time.process_time() - cpu0, 2),
               "sources": len(a.sources),
               "kinds": {k: s.result() for k, s in self.stats.items() if s.workers}}
        if sip is not None:
            res["sip"] = sip
        return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="the server's (loopback) address")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--c2s-port", type=int, default=5222)
    p.add_argument("--tls-port", type=int, default=5223, help="direct-TLS c2s port")
    p.add_argument("--http-port", type=int, default=5280)
    p.add_argument("--sip-port", type=int, default=5060, help="SIP UDP port")
    p.add_argument("--sources", type=address_range, default=address_range("127.0.0.2-127.0.0.250"),
                   help="loopback addresses to connect and send from (default %(default)s)")
    p.add_argument("--slowloris", type=int, default=600, help="slowloris workers (default %(default)s)")
    p.add_argument("--garbage", type=int, default=400, help="garbage workers (default %(default)s)")
    p.add_argument("--half-open-tls", type=int, default=500,
                   help="half-open TLS workers (default %(default)s)")
    p.add_argument("--bosh", type=int, default=500,
                   help="BOSH session creation workers (default %(default)s)")
    p.add_argument("--sip-rate", type=float, default=200.0,
                   help="SIP datagrams per second in all, 0: none (default %(default)s)")
    p.add_argument("--sip-max-datagrams", type=int, default=1000000)
    p.add_argument("--sip-tail", type=float, default=35.0,
                   help="seconds to count answers after the flood (INVITE retransmissions "
                        "last 32 s; default %(default)s)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="longest flood in s (default %(default)s)")
    p.add_argument("--ramp", type=float, default=5.0,
                   help="seconds over which the workers start (default %(default)s)")
    p.add_argument("--reconnect-delay", type=float, default=0.5,
                   help="a worker's pause between connections, s (default %(default)s)")
    p.add_argument("--max-connections-per-worker", type=int, default=100000)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--slowloris-interval", type=float, default=1.0,
                   help="seconds between two bytes of a slowloris header (default %(default)s)")
    p.add_argument("--garbage-bytes", type=int, default=4096)
    p.add_argument("--bosh-answer-timeout", type=float, default=30.0)
    p.add_argument("--connections", help="write one line per connection: KIND HOST:PORT (local)")
    p.add_argument("--stop-on-stdin", action="store_true", help="stop when stdin closes")
    args = p.parse_args(argv)
    for address in [args.host] + args.sources:
        if not loopback(address):
            p.error("%s is not a loopback address (127.0.0.0/8)" % address)
    if not args.sources:
        p.error("--sources is empty")
    raise_nofile()
    res = asyncio.run(Flood(args).run())
    emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

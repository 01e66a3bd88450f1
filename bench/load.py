#!/usr/bin/env python3
"""Minimal XMPP c2s load generator (asyncio + standard library only).

Runs as its own process, apart from the server under test.  Each client does
TCP connect, stream open, STARTTLS (no certificate verification), SASL
SCRAM-SHA-1 with stream restart, resource bind, and the legacy session iq when
the server marks it as mandatory.

Modes:
  logins    N full logins (connect, TLS, SCRAM, bind, close) with bounded
            concurrency; reports logins/s.
  messages  P sender/receiver pairs exchange chat messages to full JIDs with a
            bounded in-flight window per pair; reports delivered messages/s and
            latency percentiles.  With --recv-host/--recv-port/--recv-domain
            the receivers log in to another server, so the messages cross a
            server-to-server (federated) link.
  idle      K sessions log in and stay idle; prints a "ready" JSON line when all
            are up, then holds until stdin is closed, SIGTERM/SIGINT arrives or
            --hold-timeout expires.

Standard output carries one JSON object per line (machine-readable); human
readable progress goes to standard error.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import signal
import ssl
import sys
import time
import xml.etree.ElementTree as ET

NS_CLIENT = "jabber:client"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_PING = "urn:xmpp:ping"

T_FEATURES = "{%s}features" % NS_STREAM
T_ERROR = "{%s}error" % NS_STREAM
T_MESSAGE = "{%s}message" % NS_CLIENT
T_IQ = "{%s}iq" % NS_CLIENT
T_BODY = "{%s}body" % NS_CLIENT

READ_SIZE = 262144


class XmppError(Exception):
    pass


def log(*parts):
    print("#", *parts, file=sys.stderr, flush=True)


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def xml_escape(s):
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def make_tls_context():
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# SCRAM salted passwords are deterministic in (password, salt, iterations);
# caching them keeps the client's PBKDF2 cost out of repeated logins.
_salted_cache = {}


def salted_password(password, salt, iterations):
    key = (password, salt, iterations)
    sp = _salted_cache.get(key)
    if sp is None:
        sp = hashlib.pbkdf2_hmac("sha1", password.encode("utf-8"), salt, iterations)
        _salted_cache[key] = sp
    return sp


def scram_name(name):
    return name.replace("=", "=3D").replace(",", "=2C")


def parse_scram(msg):
    out = {}
    for part in msg.split(","):
        if len(part) >= 2 and part[1] == "=":
            out[part[0]] = part[2:]
    return out


class Client:
    """One XMPP client connection."""

    def __init__(self, host, port, domain, username, password, resource, tls_ctx):
        self.host = host
        self.port = port
        self.domain = domain
        self.username = username
        self.password = password
        self.resource = resource
        self.tls_ctx = tls_ctx
        self.reader = None
        self.writer = None
        self.parser = None
        self.depth = 0
        self.root = None
        self.queue = []
        self.stream_closed = False
        self.jid = None
        self.tls_info = None
        self.on_stanza = None  # callback used once the session runs

    # ---- transport and parsing ---------------------------------------
    def _new_parser(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root = None
        self.queue = []

    def _feed(self, data):
        self.parser.feed(data)
        for ev, el in self.parser.read_events():
            if ev == "start":
                self.depth += 1
                if self.depth == 1:
                    self.root = el
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.root.remove(el)
                    if self.on_stanza is not None:
                        self.on_stanza(self, el)
                    else:
                        self.queue.append(el)
                elif self.depth == 0:
                    self.stream_closed = True

    async def next_element(self):
        while not self.queue:
            if self.stream_closed:
                raise XmppError("stream closed by server")
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise XmppError("connection closed by server")
            self._feed(data)
        el = self.queue.pop(0)
        if el.tag == T_ERROR:
            cond = [c.tag.split("}")[-1] for c in el]
            raise XmppError("stream error: %s" % ",".join(cond))
        return el

    def send(self, data):
        self.writer.write(data.encode("utf-8") if isinstance(data, str) else data)

    async def open_stream(self):
        self._new_parser()
        self.send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' to='%s' "
            "version='1.0' xml:lang='en'>" % xml_escape(self.domain))
        el = await self.next_element()
        if el.tag != T_FEATURES:
            raise XmppError("expected stream features, got %s" % el.tag)
        return el

    # ---- login ---------------------------------------------------------
    async def login(self):
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=READ_SIZE * 4)
        feats = await self.open_stream()
        if feats.find("{%s}starttls" % NS_TLS) is None:
            raise XmppError("server does not offer STARTTLS")
        self.send("<starttls xmlns='%s'/>" % NS_TLS)
        el = await self.next_element()
        if el.tag != "{%s}proceed" % NS_TLS:
            raise XmppError("STARTTLS refused: %s" % el.tag)
        await self.writer.start_tls(self.tls_ctx, server_hostname=self.domain)
        sslobj = self.writer.get_extra_info("ssl_object")
        if sslobj is not None:
            self.tls_info = (sslobj.version(), sslobj.cipher()[0])
        feats = await self.open_stream()
        await self._sasl_scram(feats)
        feats = await self.open_stream()
        await self._bind(feats)
        return self

    async def _sasl_scram(self, feats):
        mechs = feats.find("{%s}mechanisms" % NS_SASL)
        names = [m.text for m in mechs] if mechs is not None else []
        if "SCRAM-SHA-1" not in names:
            raise XmppError("SCRAM-SHA-1 not offered (got %r)" % names)
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = "n=%s,r=%s" % (scram_name(self.username), cnonce)
        self.send("<auth xmlns='%s' mechanism='SCRAM-SHA-1'>%s</auth>" % (
            NS_SASL, base64.b64encode(("n,," + first_bare).encode()).decode()))
        el = await self.next_element()
        if el.tag != "{%s}challenge" % NS_SASL:
            raise XmppError("SASL failed at first step: %s" % _describe(el))
        server_first = base64.b64decode(el.text or "").decode()
        attrs = parse_scram(server_first)
        nonce = attrs.get("r", "")
        if not nonce.startswith(cnonce) or "s" not in attrs or "i" not in attrs:
            raise XmppError("bad SCRAM server-first message %r" % server_first)
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        sp = salted_password(self.password, salt, iterations)
        client_key = hmac.digest(sp, b"Client Key", "sha1")
        stored_key = hashlib.sha1(client_key).digest()
        final_wo_proof = "c=biws,r=%s" % nonce
        auth_message = ",".join((first_bare, server_first, final_wo_proof)).encode()
        client_sig = hmac.digest(stored_key, auth_message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig))
        server_key = hmac.digest(sp, b"Server Key", "sha1")
        expected_v = base64.b64encode(
            hmac.digest(server_key, auth_message, "sha1")).decode()
        final = "%s,p=%s" % (final_wo_proof, base64.b64encode(proof).decode())
        self.send("<response xmlns='%s'>%s</response>" % (
            NS_SASL, base64.b64encode(final.encode()).decode()))
        el = await self.next_element()
        if el.tag == "{%s}challenge" % NS_SASL:
            # Server-final sent as a challenge; answer with an empty response.
            server_final = base64.b64decode(el.text or "").decode()
            self.send("<response xmlns='%s'/>" % NS_SASL)
            el = await self.next_element()
            if el.tag != "{%s}success" % NS_SASL:
                raise XmppError("SASL failed: %s" % _describe(el))
        elif el.tag == "{%s}success" % NS_SASL:
            server_final = base64.b64decode(el.text or "").decode()
        else:
            raise XmppError("SASL failed: %s" % _describe(el))
        if parse_scram(server_final).get("v") != expected_v:
            raise XmppError("server signature mismatch (%r)" % server_final)

    async def _bind(self, feats):
        if feats.find("{%s}bind" % NS_BIND) is None:
            raise XmppError("server does not offer resource binding")
        self.send("<iq type='set' id='bind1'><bind xmlns='%s'><resource>%s"
                  "</resource></bind></iq>" % (NS_BIND, xml_escape(self.resource)))
        el = await self._wait_iq("bind1")
        jid = el.find("{%s}bind/{%s}jid" % (NS_BIND, NS_BIND))
        if el.get("type") != "result" or jid is None:
            raise XmppError("bind failed: %s" % _describe(el))
        self.jid = jid.text
        sess = feats.find("{%s}session" % NS_SESSION)
        if sess is not None and sess.find("{%s}optional" % NS_SESSION) is None:
            self.send("<iq type='set' id='sess1'><session xmlns='%s'/></iq>"
                      % NS_SESSION)
            el = await self._wait_iq("sess1")
            if el.get("type") != "result":
                raise XmppError("session failed: %s" % _describe(el))

    async def _wait_iq(self, iq_id):
        while True:
            el = await self.next_element()
            if el.tag == T_IQ and el.get("id") == iq_id:
                return el
            self.handle_other(el)

    def handle_other(self, el):
        """Answer server iq requests so the server never waits on us."""
        if el.tag == T_IQ and el.get("type") in ("get", "set"):
            to = el.get("from")
            attrs = "id='%s'" % xml_escape(el.get("id") or "")
            if to:
                attrs += " to='%s'" % xml_escape(to)
            if el.find("{%s}ping" % NS_PING) is not None:
                self.send("<iq type='result' %s/>" % attrs)
            else:
                self.send(
                    "<iq type='error' %s><error type='cancel'><service-unavailable "
                    "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>" % attrs)

    # ---- running session -----------------------------------------------
    async def read_loop(self):
        """Feed incoming data to on_stanza until the connection ends."""
        try:
            while not self.stream_closed:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self._feed(data)
        except (ConnectionError, OSError, ET.ParseError, ssl.SSLError):
            pass

    async def close(self, timeout=2.0):
        w = self.writer
        if w is None:
            return
        try:
            if not w.is_closing():
                w.write(b"</stream:stream>")
                w.close()
            async with asyncio.timeout(timeout):
                await w.wait_closed()
        except Exception:  # includes TimeoutError; the abort below finishes it
            pass
        finally:
            if w.transport is not None:
                w.transport.abort()

    def abort(self):
        if self.writer is not None and self.writer.transport is not None:
            self.writer.transport.abort()


def _describe(el):
    children = ",".join(c.tag.split("}")[-1] for c in el)
    return "%s type=%s [%s] %s" % (el.tag, el.get("type"), children,
                                   (el.findtext(".//{%s}text" % NS_SASL) or "").strip())


# ---------------------------------------------------------------------------

class Runner:
    def __init__(self, args):
        self.args = args
        self.tls_ctx = make_tls_context()
        self.errors = {}
        self.tls_info = None

    def account(self, index, span=None):
        """Account number (1-based) for a running index, cycling over `span`
        accounts (default --accounts)."""
        return (index % (span or self.args.accounts)) + 1

    def client(self, account_no, resource, remote=False):
        a = self.args
        if remote:
            # The receivers' server of a federated messages load.
            return Client(a.recv_host, a.recv_port, a.recv_domain,
                          a.recv_user_pattern.format(account_no), a.recv_password,
                          resource, self.tls_ctx)
        return Client(a.host, a.port, a.domain, a.user_pattern.format(account_no),
                      a.password, resource, self.tls_ctx)

    def note_error(self, exc):
        key = "%s: %s" % (type(exc).__name__, str(exc)[:200])
        self.errors[key] = self.errors.get(key, 0) + 1

    async def login(self, account_no, resource, remote=False):
        c = self.client(account_no, resource, remote)
        try:
            async with asyncio.timeout(self.args.login_timeout):
                await c.login()
        except BaseException:
            c.abort()
            raise
        if self.tls_info is None and c.tls_info:
            self.tls_info = c.tls_info
        return c

    async def login_many(self, count, concurrency, deadline, keep, first=0,
                         resource_prefix="load", span=None, remote_from=None):
        """Log in `count` sessions with bounded concurrency.

        keep=True returns the live clients; otherwise each client closes right
        after binding.  Indexes from `remote_from` on (if not None) log in to
        the receivers' server (--recv-*).  Returns (clients, ok, failed, elapsed).
        """
        next_i = first
        end_i = first + count
        clients = []
        self.login_times = times = []
        ok = failed = 0
        t0 = time.perf_counter()

        async def worker():
            nonlocal next_i, ok, failed
            while next_i < end_i and time.monotonic() < deadline:
                i = next_i
                next_i += 1
                t_start = time.perf_counter()
                try:
                    c = await self.login(self.account(i, span),
                                         "%s%d" % (resource_prefix, i),
                                         remote_from is not None and i >= remote_from)
                except (Exception, asyncio.TimeoutError) as exc:
                    failed += 1
                    self.note_error(exc)
                    continue
                ok += 1
                times.append(time.perf_counter() - t_start)
                if keep:
                    clients.append(c)
                else:
                    await c.close(timeout=self.args.close_timeout)

        workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
        await asyncio.gather(*workers)
        return clients, ok, failed, time.perf_counter() - t0

    # ---- modes ----------------------------------------------------------
    async def run_logins(self):
        a = self.args
        deadline = time.monotonic() + a.max_time
        span = max(1, min(a.accounts, a.login_accounts))
        # Untimed warm-up: one login per account used, so that the client's
        # PBKDF2 (SCRAM salted password, cached per salt) stays out of the
        # measurement and the server has loaded whatever it loads lazily.
        _, wok, wfailed, welapsed = await self.login_many(
            span, a.concurrency, deadline, keep=False, resource_prefix="warm",
            span=span)
        log("logins: warm-up %d ok, %d failed in %.2f s" % (wok, wfailed, welapsed))
        cpu0 = time.process_time()
        scpu0 = server_cpu(a.server_pid)
        _, ok, failed, elapsed = await self.login_many(
            a.logins, a.concurrency, deadline, keep=False, span=span)
        cpu = time.process_time() - cpu0
        scpu = cpu_delta(a.server_pid, scpu0)
        rate = ok / elapsed if elapsed > 0 else 0.0
        times = sorted(self.login_times)
        ms = lambda v: None if v is None else round(v * 1000, 2)
        log("logins: %d ok, %d failed in %.2f s -> %.1f logins/s (concurrency %d)"
            % (ok, failed, elapsed, rate, a.concurrency))
        return {"server_cpu_s": None if scpu is None else round(scpu, 3),
                "server_cpu_ms_per_login": round(1000 * scpu / ok, 3)
                if scpu is not None and ok else None,
                "type": "result", "mode": "logins", "logins_ok": ok,
                "logins_failed": failed, "elapsed_s": round(elapsed, 3),
                "accounts_used": span, "warmup_failed": wfailed,
                "logins_per_s": round(rate, 1), "concurrency": a.concurrency,
                "login_time_p50_ms": ms(percentile(times, 0.5)),
                "login_time_p99_ms": ms(percentile(times, 0.99)),
                "loader_cpu_fraction": round(cpu / elapsed, 3) if elapsed else None}

    async def run_messages(self):
        a = self.args
        deadline = time.monotonic() + a.max_time
        n = 2 * a.pairs
        # Senders use accounts 1..P, receivers P+1..2P (cycled over --accounts),
        # the receivers on the --recv-* server when one is given.
        clients, ok, failed, _ = await self.login_many(
            n, a.concurrency, deadline, keep=True, resource_prefix="msg",
            remote_from=a.pairs if a.federated else None)
        if failed or ok < n:
            for c in clients:
                c.abort()
            raise XmppError("only %d of %d message sessions logged in" % (ok, n))
        by_res = {c.resource: c for c in clients}
        senders = [by_res["msg%d" % i] for i in range(a.pairs)]
        receivers = [by_res["msg%d" % (a.pairs + i)] for i in range(a.pairs)]

        window = a.window
        inflight = [0] * a.pairs
        wake = [asyncio.Event() for _ in range(a.pairs)]
        sent = [0] * a.pairs
        received = [0] * a.pairs
        state = {"measuring": False, "count": 0, "lat": [], "bad_from": 0,
                 "first_sent": None, "first_received": None}
        expected_from = [s.jid for s in senders]
        lat = state["lat"]
        perf_ns = time.perf_counter_ns

        def make_handler(p):
            def on_stanza(client, el):
                if el.tag == T_MESSAGE:
                    body = el.findtext(T_BODY)
                    if body is None or not body.startswith("t"):
                        return
                    now = perf_ns()
                    if state["first_received"] is None:
                        state["first_received"] = now
                    if el.get("from") != expected_from[p]:
                        state["bad_from"] += 1
                    received[p] += 1
                    inflight[p] -= 1
                    if state["measuring"]:
                        state["count"] += 1
                        lat.append(now - int(body[1:]))
                    wake[p].set()
                else:
                    client.handle_other(el)
            return on_stanza

        def other_handler(client, el):
            client.handle_other(el)

        for p in range(a.pairs):
            receivers[p].on_stanza = make_handler(p)
            senders[p].on_stanza = other_handler
        readers = [asyncio.create_task(c.read_loop()) for c in clients]
        # Initial presence so that servers treating unavailable resources
        # specially still route to the full JID.
        for c in clients:
            c.send("<presence/>")
        await asyncio.sleep(0.5)

        stop = asyncio.Event()

        async def sender(p):
            s = senders[p]
            to = xml_escape(receivers[p].jid)
            prefix = "<message type='chat' to='%s' id='" % to
            seq = 0
            ev = wake[p]
            while not stop.is_set():
                free = window - inflight[p]
                if free <= 0:
                    ev.clear()
                    try:
                        async with asyncio.timeout(0.5):
                            await ev.wait()
                    except TimeoutError:
                        pass
                    continue
                parts = []
                if state["first_sent"] is None:
                    state["first_sent"] = perf_ns()
                for _ in range(free):
                    seq += 1
                    parts.append("%s%d'><body>t%d</body></message>"
                                 % (prefix, seq, perf_ns()))
                inflight[p] += free
                sent[p] += free
                s.writer.write("".join(parts).encode())
                await s.writer.drain()

        tasks = [asyncio.create_task(sender(p)) for p in range(a.pairs)]
        log("messages: %d pairs, window %d, warm-up %.1f s, measuring %.1f s"
            % (a.pairs, window, a.warmup, a.duration))
        await asyncio.sleep(a.warmup)
        cpu0 = time.process_time()
        scpu0 = server_cpu(a.server_pid)
        rcpu0 = server_cpu(a.recv_server_pid)
        t0 = time.perf_counter()
        state["measuring"] = True
        await asyncio.sleep(a.duration)
        state["measuring"] = False
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        scpu = cpu_delta(a.server_pid, scpu0)
        rcpu = cpu_delta(a.recv_server_pid, rcpu0)
        measured = state["count"]
        stop.set()
        for e in wake:
            e.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Drain: give in-flight messages a moment to arrive.
        drain_deadline = time.monotonic() + a.drain_time
        while sum(inflight) > 0 and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.05)
        total_sent = sum(sent)
        total_recv = sum(received)
        for c in clients:
            c.abort()
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

        lat.sort()
        ms = lambda v: None if v is None else round(v / 1e6, 3)
        rate = measured / elapsed if elapsed > 0 else 0.0
        res = {"type": "result", "mode": "messages", "pairs": a.pairs,
               "window": window, "duration_s": round(elapsed, 3),
               "delivered": measured, "messages_per_s": round(rate, 1),
               "latency_p50_ms": ms(percentile(lat, 0.50)),
               "latency_p90_ms": ms(percentile(lat, 0.90)),
               "latency_p99_ms": ms(percentile(lat, 0.99)),
               "latency_max_ms": ms(lat[-1] if lat else None),
               "sent_total": total_sent, "received_total": total_recv,
               "lost": total_sent - total_recv,
               "bad_from": state["bad_from"],
               "server_cpu_s": None if scpu is None else round(scpu, 3),
               "server_cpu_us_per_message": round(1e6 * scpu / measured, 2)
               if scpu is not None and measured else None,
               "loader_cpu_fraction": round(cpu / elapsed, 3) if elapsed else None}
        if state["first_sent"] is not None and state["first_received"] is not None:
            # The first message's trip, including any link set-up it waited for.
            res["first_delivery_ms"] = ms(state["first_received"] - state["first_sent"])
        if a.federated:
            res["recv_server"] = "%s:%d" % (a.recv_host, a.recv_port)
            res["recv_domain"] = a.recv_domain
        if a.recv_server_pid:
            res["recv_server_cpu_s"] = None if rcpu is None else round(rcpu, 3)
            res["recv_server_cpu_us_per_message"] = round(1e6 * rcpu / measured, 2) \
                if rcpu is not None and measured else None
        log("messages: %.1f delivered/s, p50 %s ms, p99 %s ms, sent %d, received %d"
            % (rate, res["latency_p50_ms"], res["latency_p99_ms"], total_sent, total_recv))
        return res

    async def run_idle(self):
        a = self.args
        deadline = time.monotonic() + a.max_time
        clients, ok, failed, elapsed = await self.login_many(
            a.sessions, a.concurrency, deadline, keep=True, resource_prefix="idle")
        log("idle: %d sessions logged in (%d failed) in %.2f s" % (ok, failed, elapsed))
        emit({"type": "ready", "mode": "idle", "sessions": ok, "failed": failed,
              "elapsed_s": round(elapsed, 3)})
        print("READY", file=sys.stderr, flush=True)
        # Keep reading (and discarding) so servers never block on us.
        readers = []
        for c in clients:
            c.on_stanza = lambda client, el: client.handle_other(el)
            readers.append(asyncio.create_task(c.read_loop()))
        t_hold = time.monotonic()
        await self.wait_release(a.hold_timeout)
        held = time.monotonic() - t_hold
        still = sum(1 for c in clients if not c.stream_closed
                    and not c.writer.is_closing())
        for c in clients:
            c.abort()
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return {"type": "result", "mode": "idle", "sessions": ok,
                "failed": failed, "login_elapsed_s": round(elapsed, 3),
                "held_s": round(held, 1), "still_open_at_release": still}

    async def wait_release(self, timeout):
        loop = asyncio.get_running_loop()
        release = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, release.set)
            except (NotImplementedError, RuntimeError):
                pass

        class StdinWatch(asyncio.Protocol):
            def connection_lost(self, exc):
                release.set()

            def eof_received(self):
                release.set()

        transport = None
        if not self.args.no_stdin:
            try:
                transport, _ = await loop.connect_read_pipe(StdinWatch, sys.stdin)
            except (ValueError, OSError):
                log("idle: stdin is not watchable; waiting for a signal or timeout")
        try:
            async with asyncio.timeout(timeout):
                await release.wait()
        except TimeoutError:
            log("idle: hold timeout reached")
        if transport is not None:
            transport.close()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_cpu(pid):
    """utime+stime of the server process in seconds (None if unknown)."""
    if not pid:
        return None
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_delta(pid, before):
    after = server_cpu(pid)
    if after is None or before is None:
        return None
    return after - before


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


async def amain(args):
    runner = Runner(args)
    try:
        if args.mode == "logins":
            res = await runner.run_logins()
        elif args.mode == "messages":
            res = await runner.run_messages()
        else:
            res = await runner.run_idle()
    except (XmppError, OSError, asyncio.TimeoutError) as exc:
        runner.note_error(exc)
        res = {"type": "result", "mode": args.mode, "failed": True}
    res["errors"] = runner.errors
    if runner.tls_info:
        res["tls"] = "%s %s" % runner.tls_info
    res["server"] = "%s:%d" % (args.host, args.port)
    emit(res)
    for msg, n in sorted(runner.errors.items(), key=lambda kv: -kv[1])[:5]:
        log("error x%d: %s" % (n, msg))
    return 1 if res.get("failed") is True else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("logins", "messages", "idle"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5222)
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user-pattern", default="bench{}",
                   help="account localpart pattern, {} = account number (default %(default)s)")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--accounts", type=int, default=2000,
                   help="accounts available: bench1..benchN (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=20,
                   help="logins in progress at once (default %(default)s)")
    p.add_argument("--logins", type=int, default=500)
    p.add_argument("--login-accounts", type=int, default=100,
                   help="logins mode cycles over this many accounts (default %(default)s)")
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--window", type=int, default=50,
                   help="messages in flight per pair (default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="message measurement time in s (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--drain-time", type=float, default=5.0)
    p.add_argument("--sessions", type=int, default=2000, help="idle sessions")
    p.add_argument("--hold-timeout", type=float, default=300.0,
                   help="idle: longest hold before exiting on its own")
    p.add_argument("--no-stdin", action="store_true",
                   help="idle: do not watch stdin, wait for a signal or timeout")
    p.add_argument("--server-pid", type=int,
                   help="server process id on this machine: report its CPU time "
                        "during the measured part (from /proc)")
    p.add_argument("--recv-host",
                   help="messages: receivers log in to this server instead (default --host)")
    p.add_argument("--recv-port", type=int, help="messages: receivers' server port (default --port)")
    p.add_argument("--recv-domain", help="messages: receivers' domain (default --domain)")
    p.add_argument("--recv-user-pattern",
                   help="messages: receivers' account pattern (default --user-pattern)")
    p.add_argument("--recv-password", help="messages: receivers' password (default --password)")
    p.add_argument("--recv-server-pid", type=int,
                   help="messages: receivers' server process id, to report its CPU time too")
    p.add_argument("--login-timeout", type=float, default=30.0)
    p.add_argument("--close-timeout", type=float, default=2.0)
    p.add_argument("--max-time", type=float, default=600.0,
                   help="upper bound for the login part of any mode")
    args = p.parse_args(argv)
    recv = (args.recv_host, args.recv_port, args.recv_domain, args.recv_user_pattern,
            args.recv_password)
    args.federated = any(v is not None for v in recv)
    if args.federated and args.mode != "messages":
        p.error("--recv-* options are for the messages mode")
    for name in ("host", "port", "domain", "user_pattern", "password"):
        if getattr(args, "recv_" + name) is None:
            setattr(args, "recv_" + name, getattr(args, name))
    if args.accounts < 1:
        p.error("--accounts must be >= 1")
    if args.mode == "messages" and args.accounts < 2 * args.pairs:
        p.error("messages mode needs --accounts >= 2 * --pairs")
    raise_nofile()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

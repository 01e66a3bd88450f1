"""Minimal XMPP c2s load generator (asyncio, the standard library and bridge's SCRAM client).

Runs as its own process, apart from the server under test, from the
repository's root: ``python -m bench.load MODE ...``.  Each client does
TCP connect, stream open, STARTTLS (no certificate verification), SASL
SCRAM-SHA-1 with stream restart, resource bind, and the legacy session iq when
the server marks it as mandatory.

--transport bosh or websocket replaces TCP and STARTTLS with a browser
transport on plain HTTP (--port is then the HTTP port): BOSH (XEP-0124/0206,
HTTP/1.1 keep-alive POSTs, hold=1, requests=2: one long poll always waiting,
stanzas sent on a second connection, requests paced per session) or XMPP over
WebSocket (RFC 7395: handshake with subprotocol xmpp, masked client frames, one
element per text message).  SCRAM-SHA-1, the stream restart and bind as over
TCP; all three transports serve every mode.

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
import functools
import hashlib
import json
import os
import resource
import signal
import ssl
import sys
import time
import xml.etree.ElementTree as ET

from bridge.core import sasl

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


def address_range(text):
    """Addresses from "A,B,C", "A-B" (the last byte counting up from A's to B's) or a mix."""
    out = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        first, sep, last = part.partition("-")
        if not sep:
            out.append(first)
            continue
        prefix, lo = first.rsplit(".", 1)
        hi = last.rsplit(".", 1)[-1]
        out.extend("%s.%d" % (prefix, i) for i in range(int(lo), int(hi) + 1))
    return out


async def connect(host, port, source=None):
    """An asyncio stream to host:port, from local address `source` when given."""
    return await asyncio.open_connection(host, port, limit=READ_SIZE * 4,
                                         local_addr=(source, 0) if source else None)


def make_tls_context():
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# SCRAM salted passwords are deterministic in (hash, password, salt, iterations);
# caching them keeps the client's PBKDF2 cost out of repeated logins.
cached_salted_password = functools.lru_cache(maxsize=None)(sasl.salted_password)


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
        self.source = None  # local address to connect from (None: the system's choice)

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
            self._on_bytes(data)
        el = self.queue.pop(0)
        if el.tag == T_ERROR:
            cond = [c.tag.split("}")[-1] for c in el]
            raise XmppError("stream error: %s" % ",".join(cond))
        return el

    def _on_bytes(self, data):
        """Bytes read from the connection (TCP: straight into the XML parser)."""
        self._feed(data)

    def send(self, data):
        self.writer.write(data.encode("utf-8") if isinstance(data, str) else data)

    async def write_stanzas(self, parts):
        """Send a batch of serialised stanzas, with the transport's flow control."""
        self.writer.write("".join(parts).encode("utf-8"))
        await self.writer.drain()

    def keep_alive(self):
        """Called once a kept session is logged in (BOSH starts its long poll here)."""

    def is_open(self):
        return not self.stream_closed and self.writer is not None \
            and not self.writer.is_closing()

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
        self.reader, self.writer = await connect(self.host, self.port, self.source)
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
        scram = sasl.ScramClient("SCRAM-SHA-1", self.username, self.password,
                                 salt_password=cached_salted_password)
        self.send("<auth xmlns='%s' mechanism='SCRAM-SHA-1'>%s</auth>" % (
            NS_SASL, base64.b64encode(scram.first()).decode()))
        el = await self.next_element()
        if el.tag != "{%s}challenge" % NS_SASL:
            raise XmppError("SASL failed at first step: %s" % _describe(el))
        try:
            final = scram.answer(base64.b64decode(el.text or ""))
        except sasl.SASLFailure as exc:
            raise XmppError(exc.text)
        self.send("<response xmlns='%s'>%s</response>" % (
            NS_SASL, base64.b64encode(final).decode()))
        el = await self.next_element()
        if el.tag == "{%s}challenge" % NS_SASL:
            # Server-final sent as a challenge; answer with an empty response.
            server_final = base64.b64decode(el.text or "")
            self.send("<response xmlns='%s'/>" % NS_SASL)
            el = await self.next_element()
            if el.tag != "{%s}success" % NS_SASL:
                raise XmppError("SASL failed: %s" % _describe(el))
        elif el.tag == "{%s}success" % NS_SASL:
            server_final = base64.b64decode(el.text or "")
        else:
            raise XmppError("SASL failed: %s" % _describe(el))
        try:
            scram.check(server_final)
        except sasl.SASLFailure as exc:
            raise XmppError("%s (%r)" % (exc.text, server_final))

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
                self._on_bytes(data)
        except (ConnectionError, OSError, ET.ParseError, ssl.SSLError, XmppError):
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
# Browser transports: plain HTTP/1.1 (keep-alive) for BOSH, and XMPP over
# WebSocket (RFC 7395 over RFC 6455), written here on asyncio streams.

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HTTP_MAX_BODY = 16 * 1024 * 1024


async def read_http_head(reader):
    """(status, {lowercase name: value}) of an HTTP/1.1 response head."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError("connection closed before the HTTP response%s"
                              % (" (after %d bytes)" % len(exc.partial) if exc.partial else ""))
    except asyncio.LimitOverrunError:
        raise XmppError("HTTP response head too large")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise XmppError("bad HTTP status line %r" % lines[0][:100])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            value = value.strip()
            headers[name] = "%s, %s" % (headers[name], value) if name in headers else value
    return int(parts[1]), headers


async def read_http_body(reader, headers):
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        total = 0
        for _ in range(100000):  # bounded: at most this many chunks
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > HTTP_MAX_BODY:
                raise XmppError("HTTP response body too large")
            chunks.append((await reader.readexactly(size + 2))[:-2])
        raise XmppError("too many chunks in an HTTP response")
    length = headers.get("content-length")
    if length is not None:
        n = int(length)
        if n > HTTP_MAX_BODY:
            raise XmppError("HTTP response body too large")
        return await reader.readexactly(n) if n else b""
    # Neither: the body runs to the end of the connection.
    data = await reader.read(HTTP_MAX_BODY + 1)
    if len(data) > HTTP_MAX_BODY:
        raise XmppError("HTTP response body too large")
    return data


class HttpConn:
    """One keep-alive HTTP/1.1 connection, one request at a time on it."""

    def __init__(self, host, port, source=None):
        self.host = host
        self.port = port
        self.source = source
        self.reader = None
        self.writer = None
        self.busy = False
        self.dead = False
        self.last_used = 0.0

    async def connect(self):
        self.reader, self.writer = await connect(self.host, self.port, self.source)
        self.last_used = time.monotonic()

    async def post(self, path, host_header, body):
        if self.writer is None:
            await self.connect()
        self.writer.write(("POST %s HTTP/1.1\r\nHost: %s\r\n"
                           "Content-Type: text/xml; charset=utf-8\r\n"
                           "Content-Length: %d\r\n\r\n" % (path, host_header, len(body))
                           ).encode("latin-1") + body)
        status, headers = await read_http_head(self.reader)
        data = await read_http_body(self.reader, headers)
        self.last_used = time.monotonic()
        if "close" in headers.get("connection", "").lower():
            self.abort()
        return status, headers, data

    def abort(self):
        self.dead = True
        if self.writer is not None and self.writer.transport is not None:
            self.writer.transport.abort()


def with_client_ns(text):
    """A serialised stanza with xmlns='jabber:client' on its top element when
    it has no xmlns of its own: RFC 7395 (and XEP-0206 inside <body/>) want
    the namespace declared on each top-level element."""
    end = text.find(">")
    head = text[:end]
    if "xmlns=" in head:
        return text
    cut = 1
    while cut < end and text[cut] not in " /\t\r\n":
        cut += 1
    return "%s xmlns='jabber:client'%s" % (text[:cut], text[cut:])


def _retag(el, old_ns, new_ns):
    """Elements in `old_ns` move to `new_ns` (payloads that inherited BOSH's namespace)."""
    prefix = "{%s}" % old_ns
    for e in el.iter():
        if isinstance(e.tag, str) and e.tag.startswith(prefix):
            e.tag = "{%s}%s" % (new_ns, e.tag[len(prefix):])


class BoshClient(Client):
    """XMPP over BOSH (XEP-0124/0206) on plain HTTP.

    Login goes one request at a time.  Once the session is kept
    (keep_alive), one request always waits at the server (the long poll,
    hold=1); stanzas to send go in a second request (requests=2) on a
    second keep-alive connection, and whichever request the server answers
    is replaced by an empty one only when none is left waiting.  Requests
    of one session are paced by a token bucket, `max_rate` per second
    with bursts of `burst` (servers limit the request rate per session).
    """

    transport = "bosh"

    def __init__(self, host, port, domain, username, password, resource, path,
                 wait=60, max_rate=0.0, burst=10, http_timeout=30.0):
        super().__init__(host, port, domain, username, password, resource, None)
        self.path = path
        self.host_header = "%s:%d" % (domain, port)
        self.wait = int(wait)
        self.max_rate = max_rate
        self.burst = max(1.0, float(burst))
        self.tokens = self.burst
        self.http_timeout = http_timeout
        self.sid = None
        self.rid = int.from_bytes(os.urandom(4), "big") + 1000
        self.max_requests = 2
        self.conns = []
        self.pending = []
        self.outstanding = 0
        self.running = False
        self.aborted = False
        self.refilled = None
        self.timer = None
        self.tasks = set()
        self.done = None
        self.terminate_condition = None
        self.error = None
        self.requests_made = 0
        self.retries = 0
        self.responses = 0
        self.payloads = 0

    # ---- HTTP -------------------------------------------------------------
    def _conn(self):
        now = time.monotonic()
        for c in self.conns:
            if not c.busy and not c.dead:
                # Servers close idle keep-alive connections (bridge after
                # header_timeout_seconds, 10 s); do not race them.
                if c.writer is not None and now - c.last_used > 5.0:
                    c.abort()
                    continue
                return c
        self.conns = [c for c in self.conns if not c.dead]
        c = HttpConn(self.host, self.port, self.source)
        self.conns.append(c)
        return c

    def _body(self, payload="", **attrs):
        a = "".join(" %s='%s'" % (k.replace("__", ":"), xml_escape(str(v)))
                    for k, v in attrs.items())
        text = "<body xmlns='%s' xmlns:xmpp='%s' rid='%d'%s%s" % (
            NS_HTTPBIND, NS_XBOSH, self.rid, " sid='%s'" % xml_escape(self.sid)
            if self.sid else "", a)
        return (text + ("/>" if not payload else ">%s</body>" % payload)).encode("utf-8")

    async def _post(self, body):
        """POST one request body; a connection that breaks before the answer
        is replaced and the same request sent again (XEP-0124 section 14.3)."""
        last = None
        self.requests_made += 1
        for attempt in range(3):
            conn = self._conn()
            conn.busy = True
            try:
                async with asyncio.timeout(self.wait + self.http_timeout):
                    status, headers, data = await conn.post(self.path, self.host_header, body)
            except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
                conn.abort()
                last = exc
                self.retries += 1
                continue
            except BaseException:
                conn.abort()
                raise
            finally:
                conn.busy = False
            if status != 200:
                raise XmppError("BOSH: HTTP %d %s" % (status, data[:200]))
            try:
                root = ET.fromstring(data)
            except ET.ParseError as exc:
                raise XmppError("BOSH: unreadable response (%s): %r" % (exc, data[:200]))
            if root.tag != "{%s}body" % NS_HTTPBIND:
                raise XmppError("BOSH: response is %s, not <body/>" % root.tag)
            return root
        raise XmppError("BOSH: request failed 3 times: %s: %s" % (type(last).__name__, last))

    def _take(self, root):
        """The payloads of a response, and its end of session if it says so."""
        self.responses += 1
        self.payloads += len(root)
        for el in list(root):
            if el.tag.startswith("{%s}" % NS_HTTPBIND):
                _retag(el, NS_HTTPBIND, NS_CLIENT)
            if self.on_stanza is not None:
                self.on_stanza(self, el)
            else:
                self.queue.append(el)
        if root.get("type") == "terminate":
            self.stream_closed = True
            self.terminate_condition = root.get("condition") or "none"
            self._finish()

    async def _exchange(self, payload="", **attrs):
        """One request, answered before the next (login)."""
        self.rid += 1
        root = await self._post(self._body(payload, **attrs))
        self._take(root)
        return root

    # ---- XMPP -------------------------------------------------------------
    async def login(self):
        feats = await self.open_stream()
        await self._sasl_scram(feats)
        feats = await self.open_stream()
        await self._bind(feats)
        return self

    async def open_stream(self):
        self.queue = []
        if self.sid is None:
            root = await self._exchange(
                content="text/xml; charset=utf-8", hold=1, to=self.domain, ver="1.6",
                wait=self.wait, xml__lang="en", xmpp__version="1.0")
            if root.get("type") == "terminate":
                raise XmppError("BOSH session refused: %s" % root.get("condition"))
            self.sid = root.get("sid")
            if not self.sid:
                raise XmppError("BOSH: no sid in the session creation response")
            self.max_requests = max(1, min(2, int(root.get("requests") or 2)))
            if root.get("wait", "").isdigit():
                self.wait = int(root.get("wait"))
        else:
            await self._exchange(to=self.domain, xml__lang="en", xmpp__restart="true")
        el = await self.next_element()
        if el.tag != T_FEATURES:
            raise XmppError("expected stream features, got %s" % el.tag)
        return el

    async def next_element(self):
        for _ in range(100):  # bounded: polls until the server has something
            if self.queue:
                break
            if self.stream_closed:
                raise XmppError("BOSH session terminated: %s" % self.terminate_condition)
            payload, self.pending = "".join(self.pending), []
            await self._exchange(payload)
        else:
            raise XmppError("BOSH: nothing from the server after 100 requests")
        el = self.queue.pop(0)
        if el.tag == T_ERROR:
            cond = [c.tag.split("}")[-1] for c in el]
            raise XmppError("stream error: %s" % ",".join(cond))
        return el

    def send(self, data):
        self.pending.append(with_client_ns(data))
        if self.running:
            self._pump()

    async def write_stanzas(self, parts):
        self.pending.extend(with_client_ns(p) for p in parts)
        self._pump()

    # ---- the running session ------------------------------------------------
    def keep_alive(self):
        if not self.running and not self.aborted:
            self.running = True
            self.done = asyncio.Event()
            self._pump()

    def _pump(self):
        """Keep one request waiting at the server, and send what is pending."""
        if not self.running or self.stream_closed:
            return
        loop = asyncio.get_running_loop()
        while self.outstanding < self.max_requests and (self.pending or not self.outstanding):
            if self.max_rate > 0:
                now = loop.time()
                if self.refilled is not None:
                    self.tokens = min(self.burst,
                                      self.tokens + (now - self.refilled) * self.max_rate)
                self.refilled = now
                if self.tokens < 1.0:
                    if self.timer is None:
                        self.timer = loop.call_at(
                            now + (1.0 - self.tokens) / self.max_rate, self._timer_fired)
                    return
                self.tokens -= 1.0
            payload, self.pending = "".join(self.pending), []
            self.rid += 1
            self.outstanding += 1
            t = asyncio.create_task(self._request(self._body(payload)))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    def _timer_fired(self):
        self.timer = None
        self._pump()

    async def _request(self, body):
        try:
            root = await self._post(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.aborted:
                self.error = exc
                self.stream_closed = True
                self._finish()
            return
        finally:
            self.outstanding -= 1
        self._take(root)
        self._pump()

    def _finish(self):
        if self.done is not None:
            self.done.set()

    async def read_loop(self):
        self.keep_alive()
        if self.done is not None and not self.stream_closed:
            await self.done.wait()

    def is_open(self):
        return self.sid is not None and not self.stream_closed and not self.aborted

    async def close(self, timeout=2.0):
        if self.sid is not None and not self.stream_closed and not self.aborted:
            try:
                async with asyncio.timeout(timeout):
                    self.rid += 1
                    await self._post(self._body(
                        "<presence type='unavailable' xmlns='jabber:client'/>",
                        type="terminate"))
            except Exception:
                pass
        self.abort()

    def abort(self):
        self.aborted = True
        self.running = False
        self.stream_closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for t in list(self.tasks):
            t.cancel()
        for c in self.conns:
            c.abort()
        self._finish()


def ws_frame(payload, opcode=0x1):
    """One final client frame, masked (RFC 6455 section 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if n:
        m = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "little") ^ int.from_bytes(m, "little")
                   ).to_bytes(n, "little")
    return head + mask + payload


def ws_unmask(payload, mask):
    n = len(payload)
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(m, "little")).to_bytes(n, "little")


class WsClient(Client):
    """XMPP over WebSocket (RFC 7395) on plain HTTP: one element per text message."""

    transport = "websocket"
    # Parsed as children of this (never closed) root, so that each message's
    # element gets the namespaces of a TCP stream's top-level elements.
    SYNTHETIC_ROOT = ("<stream:stream xmlns='%s' xmlns:stream='%s'>"
                      % (NS_CLIENT, NS_STREAM)).encode()

    def __init__(self, host, port, domain, username, password, resource, path,
                 max_message=16 * 1024 * 1024):
        super().__init__(host, port, domain, username, password, resource, None)
        self.path = path
        self.max_message = max_message
        self.wbuf = bytearray()
        self.fragments = None
        self.close_sent = False
        self.close_received = None

    async def login(self):
        self.reader, self.writer = await connect(self.host, self.port, self.source)
        await self._handshake()
        feats = await self.open_stream()
        await self._sasl_scram(feats)
        feats = await self.open_stream()
        await self._bind(feats)
        return self

    async def _handshake(self):
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write((
            "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: xmpp\r\n\r\n"
            % (self.path, self.domain, self.port, key)).encode("latin-1"))
        status, headers = await read_http_head(self.reader)
        if status != 101:
            raise XmppError("WebSocket upgrade refused: HTTP %d" % status)
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise XmppError("bad Sec-WebSocket-Accept %r" % headers.get("sec-websocket-accept"))
        if headers.get("sec-websocket-protocol", "").lower() != "xmpp":
            raise XmppError("server chose subprotocol %r, not xmpp"
                            % headers.get("sec-websocket-protocol"))
        if "websocket" not in headers.get("upgrade", "").lower():
            raise XmppError("no Upgrade: websocket in the 101 answer")

    async def open_stream(self):
        self._new_parser()
        self.parser.feed(self.SYNTHETIC_ROOT)
        self.send("<open xmlns='%s' to='%s' version='1.0' xml:lang='en'/>"
                  % (NS_FRAMING, xml_escape(self.domain)))
        el = await self.next_element()
        if el.tag != T_FEATURES:
            raise XmppError("expected stream features, got %s" % el.tag)
        return el

    # ---- framing ----------------------------------------------------------
    def send(self, data):
        if isinstance(data, str):
            data = with_client_ns(data).encode("utf-8")
        self.writer.write(ws_frame(data))

    async def write_stanzas(self, parts):
        self.writer.write(b"".join(ws_frame(with_client_ns(p).encode("utf-8"))
                                   for p in parts))
        await self.writer.drain()

    def _on_bytes(self, data):
        buf = self.wbuf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if n > self.max_message:
                raise XmppError("WebSocket frame of %d bytes" % n)
            mask = None
            if b1 & 0x80:  # servers must not mask; unmask anyway
                if end - pos < head + 4:
                    break
                mask = bytes(buf[pos + head:pos + head + 4])
                head += 4
            if end - pos < head + n:
                break
            payload = bytes(buf[pos + head:pos + head + n])
            pos += head + n
            if mask is not None:
                payload = ws_unmask(payload, mask)
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
        del buf[:pos]

    def _frame(self, fin, opcode, payload):
        if opcode == 0x9:  # ping
            if not self.close_sent:
                self.writer.write(ws_frame(payload, 0xA))
            return
        if opcode == 0xA:  # pong
            return
        if opcode == 0x8:  # close
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self.close_received = code
            self.stream_closed = True
            if not self.close_sent:
                self.close_sent = True
                self.writer.write(ws_frame(payload[:2], 0x8))
            return
        if opcode == 0x2:
            raise XmppError("binary WebSocket message")
        if opcode == 0x1:
            if fin:
                self._message(payload)
            else:
                self.fragments = [payload]
            return
        if opcode == 0x0 and self.fragments is not None:
            self.fragments.append(payload)
            if sum(len(f) for f in self.fragments) > self.max_message:
                raise XmppError("WebSocket message too large")
            if fin:
                data, self.fragments = b"".join(self.fragments), None
                self._message(data)
            return
        raise XmppError("unexpected WebSocket opcode %d" % opcode)

    def _message(self, data):
        head = data[:64].lstrip()
        if head.startswith(b"<close"):
            self.stream_closed = True
            return
        if head.startswith(b"<open"):
            return
        self._feed(data)

    def is_open(self):
        return super().is_open() and self.close_received is None

    async def close(self, timeout=2.0):
        w = self.writer
        if w is None:
            return
        try:
            if not w.is_closing() and not self.close_sent:
                w.write(ws_frame(("<close xmlns='%s'/>" % NS_FRAMING).encode()))
                self.close_sent = True
                w.write(ws_frame((1000).to_bytes(2, "big"), 0x8))
                w.close()
            async with asyncio.timeout(timeout):
                await w.wait_closed()
        except Exception:
            pass
        finally:
            if w.transport is not None:
                w.transport.abort()


# ---------------------------------------------------------------------------

class Runner:
    def __init__(self, args):
        self.args = args
        self.tls_ctx = make_tls_context()
        self.errors = {}
        self.tls_info = None

    def account(self, index, span=None):
        """Account number (1-based) for a running index, cycling over `span`
        accounts (default --accounts), after --account-offset."""
        return (index % (span or self.args.accounts)) + 1 + self.args.account_offset

    def client(self, account_no, resource, remote=False):
        a = self.args
        if remote:
            # The receivers' server of a federated messages load.
            where = (a.recv_host, a.recv_port, a.recv_domain,
                     a.recv_user_pattern.format(account_no), a.recv_password, resource)
        else:
            where = (a.host, a.port, a.domain, a.user_pattern.format(account_no),
                     a.password, resource)
        if a.transport == "bosh":
            c = BoshClient(*where, a.path, wait=a.bosh_wait, max_rate=a.bosh_max_rate,
                           burst=a.bosh_burst, http_timeout=a.http_timeout)
        elif a.transport == "websocket":
            c = WsClient(*where, a.path)
        else:
            c = Client(*where, self.tls_ctx)
        if a.source_addresses:
            c.source = a.source_addresses[account_no % len(a.source_addresses)]
        return c

    @staticmethod
    def session_report(clients):
        """How the sessions stand: why those that ended did, and transport counters."""
        ended = {}
        for c in clients:
            why = None
            if getattr(c, "error", None) is not None:
                why = "error: %s: %s" % (type(c.error).__name__, str(c.error)[:150])
            elif getattr(c, "terminate_condition", None):
                why = "BOSH terminate: %s" % c.terminate_condition
            elif getattr(c, "close_received", None) is not None:
                why = "WebSocket close %s" % c.close_received
            elif c.stream_closed:
                why = "stream closed"
            if why:
                ended[why] = ended.get(why, 0) + 1
        out = {"sessions_ended": ended}
        if clients and isinstance(clients[0], BoshClient):
            out["bosh_requests"] = sum(c.requests_made for c in clients)
            out["bosh_retries"] = sum(c.retries for c in clients)
            responses = sum(c.responses for c in clients)
            out["bosh_responses"] = responses
            out["bosh_stanzas_per_response"] = round(
                sum(c.payloads for c in clients) / responses, 2) if responses else None
        return out

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
                    c.keep_alive()
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
        login_times = sorted(self.login_times)
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
                await s.write_stanzas(parts)

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
        report = self.session_report(clients)
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
               "login_time_p50_ms": ms(percentile(login_times, 0.5) * 1e9 if login_times else None),
               "login_time_p99_ms": ms(percentile(login_times, 0.99) * 1e9 if login_times else None),
               "server_cpu_s": None if scpu is None else round(scpu, 3),
               "server_cpu_us_per_message": round(1e6 * scpu / measured, 2)
               if scpu is not None and measured else None,
               "loader_cpu_fraction": round(cpu / elapsed, 3) if elapsed else None}
        res.update(report)
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
        still = sum(1 for c in clients if c.is_open())
        report = self.session_report(clients)
        for c in clients:
            c.abort()
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return {"type": "result", "mode": "idle", "sessions": ok,
                "failed": failed, "login_elapsed_s": round(elapsed, 3),
                "held_s": round(held, 1), "still_open_at_release": still, **report}

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
    res["transport"] = args.transport
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
    p.add_argument("--account-offset", type=int, default=0,
                   help="use accounts offset+1..offset+N, so that several loaders use disjoint accounts")
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
    p.add_argument("--transport", choices=("tcp", "bosh", "websocket"), default="tcp",
                   help="tcp: c2s with STARTTLS (default); bosh or websocket: over plain "
                        "HTTP at --path, --port being the HTTP port")
    p.add_argument("--path", help="HTTP path of the endpoint (default /http-bind for bosh, "
                                  "/xmpp-websocket for websocket)")
    p.add_argument("--bosh-wait", type=int, default=60,
                   help="bosh: longest the server holds a request, in s (default %(default)s)")
    p.add_argument("--bosh-max-rate", type=float, default=20.0,
                   help="bosh: most requests per second per session (sustained), 0 = no "
                        "limit (default %(default)s; bridge ends a session past 25/s, "
                        "bursts of 100)")
    p.add_argument("--bosh-burst", type=int, default=10,
                   help="bosh: requests a session may make at once beyond the rate "
                        "(default %(default)s)")
    p.add_argument("--http-timeout", type=float, default=30.0,
                   help="bosh: longest wait for an answer beyond the BOSH wait")
    p.add_argument("--login-timeout", type=float, default=30.0)
    p.add_argument("--close-timeout", type=float, default=2.0)
    p.add_argument("--max-time", type=float, default=600.0,
                   help="upper bound for the login part of any mode")
    p.add_argument("--source-addresses", type=address_range, default=[],
                   help="local (loopback) addresses to connect from, spread by account "
                        "number: A,B,... or A-B (e.g. 127.0.3.10-127.0.3.19); default: the "
                        "system's choice")
    args = p.parse_args(argv)
    recv = (args.recv_host, args.recv_port, args.recv_domain, args.recv_user_pattern,
            args.recv_password)
    args.federated = any(v is not None for v in recv)
    if args.federated and args.mode != "messages":
        p.error("--recv-* options are for the messages mode")
    for name in ("host", "port", "domain", "user_pattern", "password"):
        if getattr(args, "recv_" + name) is None:
            setattr(args, "recv_" + name, getattr(args, name))
    if args.path is None:
        args.path = "/xmpp-websocket" if args.transport == "websocket" else "/http-bind"
    if args.accounts < 1:
        p.error("--accounts must be >= 1")
    if args.mode == "messages" and args.accounts < 2 * args.pairs:
        p.error("messages mode needs --accounts >= 2 * --pairs")
    raise_nofile()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

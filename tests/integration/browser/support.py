"""Browser XMPP clients for the integration tests: the pages' HTTP server, the
server under test with its HTTP listener, and agents driven from pytest.

``driver.mjs`` (node, playwright-core, the Debian ``chromium``) runs the
browser: a ``Driver`` speaks to it one JSON line a request, and ``JSAgent``
stands for a Strophe.js page in Chromium.  ``SlixAgent`` gives a slixmpp
client (TCP, STARTTLS) the same methods, so that a test treats all its
clients alike.  Every wait is bounded.

The server under test is the bridge (``[http]`` listener with BOSH and
WebSocket).  ``BROWSER_TEST_SERVER=prosody`` runs the same tests against
Prosody instead (mod_bosh, mod_websocket): a reference that tells a fault of
the bridge from one of the tests.
"""

import asyncio
import functools
import http.server
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import threading

from tests.pki import self_signed

from .. import harness

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_MODULES = os.path.join(HERE, "node_modules")
DRIVER = os.path.join(HERE, "driver.mjs")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node")
TIMEOUT = 10.0  # seconds, for one wait of a test
NS_CLIENT = "jabber:client"
NS_ROSTER = "jabber:iq:roster"


def missing_tools():
    """Why the browser tests cannot run here (chromium or node absent), or None."""
    absent = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        absent.append(f"chromium ({CHROMIUM}; apt-get install -y chromium)")
    if NODE is None:
        absent.append("node")
    return "not installed: " + ", ".join(absent) if absent else None


def check_node_modules():
    """Fail (not skip) when the npm packages were not installed."""
    wanted = ["playwright-core", "strophe.js", "converse.js"]
    missing = [name for name in wanted if not os.path.isdir(os.path.join(NODE_MODULES, name))]
    assert not missing, (f"npm packages missing in {NODE_MODULES}: {', '.join(missing)}; "
                         "run sh .ci/install-test-peers (npm ci in tests/integration/browser)")


def bare(jid):
    return jid.split("/", 1)[0] if isinstance(jid, str) else jid


def matches(event, spec):
    """The rule of pages/events.mjs: every key of spec equals the event's value, except that a
    'from' or 'to' without a resource matches the bare JID."""
    for key, want in spec.items():
        have = event.get(key)
        if key in ("from", "to") and isinstance(want, str) and "/" not in want:
            if bare(have) != want:
                return False
        elif have != want:
            return False
    return True


class BrowserError(AssertionError):
    """A request to the driver failed (in the page, in node or in the browser)."""


# -- the pages' HTTP server ---------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                      ".json": "application/json", ".css": "text/css", ".map": "application/json"}

    def log_message(self, format, *args):
        pass

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class PageServer:
    """tests/integration/browser (pages/ and node_modules/) over HTTP on 127.0.0.1, in a thread."""

    def __init__(self):
        handler = functools.partial(QuietHandler, directory=HERE)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def url(self, page):
        return f"{self.origin}/pages/{page}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# -- the server under test ----------------------------------------------------

BRIDGE_CONFIG = """\
data_dir = {data_dir}
[c2s]
endpoints = ["tcp:0:interface=127.0.0.1"]
direct_tls_endpoints = []
[s2s]
endpoints = []
[component_listener]
endpoints = []
[http]
endpoints = ["tcp:0:interface=127.0.0.1"]
tls_endpoints = []
allowed_origins = [{origin}]
[sip]
enabled = false
[mam]
enabled = true
[hosts.localhost]
"""


class BridgeServer:
    """The bridge with c2s and the [http] listener (BOSH, WebSocket) on loopback ports."""

    name = "bridge"
    checks_websocket_origin = True  # [http] allowed_origins applies to WebSocket handshakes too

    def __init__(self, directory, origin, accounts):
        self.config_path = os.path.join(directory, "bridge.toml")
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(BRIDGE_CONFIG.format(data_dir=json.dumps(os.path.join(directory, "data")),
                                              origin=json.dumps(origin)))
        harness.add_users(self.config_path, accounts)
        self.process = harness.ServerProcess(self.config_path, accounts)

    def start(self):
        self.process.start(wait_for=("c2s", "http"))
        self.c2s_port = self.process.ports["c2s"]
        http_port = self.process.ports["http"]
        self.bosh_url = f"http://127.0.0.1:{http_port}/http-bind"
        self.websocket_url = f"ws://127.0.0.1:{http_port}/xmpp-websocket"
        return self

    def stop(self):
        self.process.stop()


PROSODY_CONFIG = """\
-- written by tests/integration/browser/support.py
pidfile = {pidfile}
data_path = {data}
log = {{ {{ levels = {{ min = "debug" }}, to = "console" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ }}
http_ports = {{ {http_port} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "posix", "blocklist", "bosh", "websocket", "mam" }}
modules_disabled = {{ "s2s", "offline" }}
consider_bosh_secure = true
consider_websocket_secure = true
-- CORS for the pages' origin only (the cross_domain_* options are deprecated in 0.12).
http_cors_override = {{
    bosh = {{ enabled = true, origins = {{ {origin} }} }},
    websocket = {{ enabled = true, origins = {{ {origin} }} }},
}}
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"
ssl = {{ certificate = {certificate}, key = {key} }}
{run_as_root}
VirtualHost "localhost"
"""


def lua_string(text):
    return json.dumps(text)  # a JSON string of printable ASCII is a Lua string


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProsodyProcess(harness.ServerProcess):
    """Prosody's process, its log drained as the bridge's is; started when it listens for c2s and http."""

    ACTIVATED = re.compile(r"Activated service '(c2s|http)' on \[127\.0\.0\.1\]:(\d+)")

    def start(self, timeout=harness.SERVER_START_TIMEOUT):
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        cwd=os.path.dirname(self.config_path))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        ports = self.ports = {}

        def listening(line):
            match = self.ACTIVATED.search(line)
            if match:
                ports[match.group(1)] = int(match.group(2))
            return {"c2s", "http"} <= set(ports)

        self.wait_for_line(listening, timeout, what="Prosody's c2s and http services")
        return self


class ProsodyServer:
    """Prosody 0.12 with mod_bosh and mod_websocket: the reference for BROWSER_TEST_SERVER=prosody."""

    name = "prosody"
    checks_websocket_origin = False  # mod_websocket 0.12 ignores the Origin header

    def __init__(self, directory, origin, accounts):
        self.c2s_port, self.http_port = free_port(), free_port()
        certificate, key = self_signed(directory, ["localhost"])
        data = os.path.join(directory, "data")
        os.makedirs(data, exist_ok=True)
        self.config_path = os.path.join(directory, "prosody.cfg.lua")
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(PROSODY_CONFIG.format(
                pidfile=lua_string(os.path.join(directory, "prosody.pid")), data=lua_string(data),
                c2s_port=self.c2s_port, http_port=self.http_port, origin=lua_string(origin),
                certificate=lua_string(certificate),
                key=lua_string(key), run_as_root="run_as_root = true" if os.getuid() == 0 else ""))
        for jid, password in accounts.items():
            user, host = jid.split("@")
            done = subprocess.run(["prosodyctl", "--config", self.config_path, "register", user, host, password],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"prosodyctl register {jid}: {done.stdout}{done.stderr}"
        self.process = ProsodyProcess(self.config_path, accounts,
                                      command=["prosody", "--config", self.config_path, "-F"])

    def start(self):
        self.process.start()
        self.bosh_url = f"http://127.0.0.1:{self.http_port}/http-bind"
        self.websocket_url = f"ws://127.0.0.1:{self.http_port}/xmpp-websocket"
        return self

    def stop(self):
        self.process.stop()


def server_under_test(directory, origin, accounts):
    """The server named by BROWSER_TEST_SERVER (bridge unless it says prosody), not started."""
    kind = os.environ.get("BROWSER_TEST_SERVER", "bridge")
    assert kind in ("bridge", "prosody"), f"BROWSER_TEST_SERVER must be bridge or prosody, not {kind!r}"
    return (ProsodyServer if kind == "prosody" else BridgeServer)(directory, origin, accounts)


# -- the node driver ------------------------------------------------------------

class BrowserLog:
    """What the driver reported (browser console, page errors, failed requests, XML traffic):
    kept in memory and in a file."""

    def __init__(self, path):
        self.path = path
        self.lines = []
        self.handle = open(path, "w", encoding="utf-8")

    def add(self, source, text):
        line = f"[{source}] {text}"
        self.lines.append(line)
        self.handle.write(line + "\n")
        self.handle.flush()

    def tail(self, count=100, width=1500):
        return "\n".join(line if len(line) <= width else line[:width] + " ..." for line in self.lines[-count:])

    def close(self):
        self.handle.close()


class Driver:
    """The node process of driver.mjs: one Chromium with a fresh profile."""

    def __init__(self, directory, log):
        self.directory = directory
        self.log = log
        self.process = None
        self.pending = {}
        self.ids = itertools.count(1)
        self.readers = []

    async def __aenter__(self):
        profile = os.path.join(self.directory, "chromium-profile")
        self.process = await asyncio.create_subprocess_exec(
            NODE, DRIVER, profile, cwd=HERE, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=1 << 24,
            env={**os.environ, "CHROMIUM": CHROMIUM})
        self.readers = [asyncio.create_task(self._read_answers()), asyncio.create_task(self._read_errors())]
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _read_answers(self):
        while True:
            line = await self.process.stdout.readline()
            if not line:
                break
            try:
                answer = json.loads(line)
            except ValueError:
                self.log.add("driver stdout", line.decode("utf-8", "replace").rstrip())
                continue
            if answer.get("event") == "log":
                self.log.add(answer.get("source"), answer.get("text"))
            elif answer.get("id") in self.pending:
                future = self.pending.pop(answer["id"])
                if not future.done():
                    future.set_result(answer)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(BrowserError("the node driver exited:\n" + self.log.tail(30)))

    async def _read_errors(self):
        while True:
            line = await self.process.stderr.readline()
            if not line:
                break
            self.log.add("driver stderr", line.decode("utf-8", "replace").rstrip())

    async def request(self, op, timeout=TIMEOUT + 5, **params):
        """Run one operation of driver.mjs; its value.  BrowserError when it fails."""
        request_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.process.stdin.write((json.dumps({"id": request_id, "op": op, **params}) + "\n").encode())
        await self.process.stdin.drain()
        try:
            answer = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self.pending.pop(request_id, None)
            raise BrowserError(f"no answer from the driver to {op} {params} within {timeout}s") from None
        if not answer.get("ok"):
            raise BrowserError(f"{op} {json.dumps(params)[:300]} failed: {answer.get('error')}")
        return answer.get("value")

    async def open(self, name, url, ready="window.agent"):
        """Open ``url`` in a new tab named ``name``; waits for ``ready`` to be true in it."""
        await self.request("open", name=name, url=url)
        await self.wait_ready(name, ready)

    async def reopen(self, name, ready="window.agent"):
        """Load the page of tab ``name`` again in a new tab, with nothing its origin stored in the
        browser kept (driver.mjs's reopen); waits for ``ready`` to be true in it."""
        await self.request("reopen", target=name)
        await self.wait_ready(name, ready)

    async def wait_ready(self, name, ready):
        await self.request("evaluate", target=name, expression=(
            "new Promise((resolve, reject) => { const start = Date.now(); const check = () => {"
            f" if ({ready}) resolve(true);"
            f" else if (Date.now() - start > {int(TIMEOUT * 1000)}) reject(new Error('page not ready: {ready}'));"
            " else setTimeout(check, 50); }; check(); })"))

    async def call(self, target, method, *args, timeout=TIMEOUT + 5):
        return await self.request("call", target=target, method=method, args=list(args), timeout=timeout)

    async def screenshot(self, target, path):
        try:
            return await self.request("screenshot", target=target, path=path, timeout=5)
        except BrowserError as error:
            self.log.add("driver", f"no screenshot: {error}")
            return None

    async def close(self):
        if self.process is None or self.process.returncode is not None:
            return
        try:
            await self.request("close", timeout=15)
        except BrowserError as error:
            self.log.add("driver", f"close: {error}")
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self.readers, return_exceptions=True)


# -- agents -----------------------------------------------------------------------

class JSAgent:
    """A client in a page of the driver's Chromium (pages/strophe.html: Strophe.js)."""

    def __init__(self, driver, name, jid, password, service):
        self.driver = driver
        self.name = name
        self.bare = bare(jid)
        self.requested_jid = jid
        self.password = password
        self.service = service
        self.jid = None  # the bound full JID

    async def login(self):
        """Connect, authenticate, bind, fetch the roster and send initial presence."""
        ms = int(TIMEOUT * 1000)
        self.jid = await self.driver.call(self.name, "connect", self.service, self.requested_jid, self.password, ms)
        await self.driver.call(self.name, "roster", ms)
        await self.presence()
        return self.jid

    async def presence(self, to=None, type=None, status=None):
        await self.driver.call(self.name, "presence", {"to": to, "type": type, "status": status})

    async def message(self, to, body):
        await self.driver.call(self.name, "message", {"to": to, "body": body})

    async def wait_all(self, specs, timeout=TIMEOUT):
        """Every spec matched by a received event (any order); the events."""
        return await self.driver.call(self.name, "waitForAll", specs, int(timeout * 1000), timeout=timeout + 5)

    async def disconnect(self):
        await self.driver.call(self.name, "disconnect", int(TIMEOUT * 1000))


class SlixAgent:
    """A slixmpp client on c2s (STARTTLS) with the methods of JSAgent."""

    def __init__(self, name, jid, password, port):
        self.name = name
        self.bare = bare(jid)
        self.requested_jid = jid
        self.password = password
        self.port = port
        self.jid = None
        self.events = []
        self.changed = asyncio.Event()
        self.client = None

    async def login(self):
        client = self.client = harness.Client(self.requested_jid, self.password)
        client.add_event_handler("presence", self._presence)
        client.add_event_handler("message", self._message)
        client.add_event_handler("roster_update", self._roster)
        client.start(self.port)
        done, _ = await asyncio.wait([client.started, client.auth_failed], timeout=TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        assert client.started in done, f"slixmpp {self.requested_jid} could not log in"
        await asyncio.wait_for(client.get_roster(), TIMEOUT)
        client.send_presence()
        self.jid = str(client.boundjid)
        return self.jid

    def _add(self, event):
        self.events.append(event)
        self.changed.set()

    def _presence(self, presence):
        status = presence.xml.find(f"{{{NS_CLIENT}}}status")
        self._add({"kind": "presence", "from": str(presence["from"]), "to": str(presence["to"]),
                   "type": presence.xml.get("type"), "status": status.text if status is not None else None})

    def _message(self, message):
        body = message.xml.find(f"{{{NS_CLIENT}}}body")
        self._add({"kind": "message", "from": str(message["from"]), "to": str(message["to"]),
                   "type": message.xml.get("type"), "body": body.text if body is not None else None})

    def _roster(self, iq):
        if iq["type"] != "set":
            return
        for item in iq.xml.iter(f"{{{NS_ROSTER}}}item"):
            self._add({"kind": "roster", "from": iq.xml.get("from"), "jid": item.get("jid"),
                       "subscription": item.get("subscription"), "ask": item.get("ask")})

    async def presence(self, to=None, type=None, status=None):
        self.client.send_presence(pto=to, ptype=type, pstatus=status)

    async def message(self, to, body):
        self.client.send_message(mto=to, mbody=body, mtype="chat")

    async def wait_all(self, specs, timeout=TIMEOUT):
        async def scan():
            while True:
                found = [next((event for event in self.events if matches(event, spec)), None) for spec in specs]
                if all(event is not None for event in found):
                    return found
                self.changed.clear()
                await self.changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError:
            missing = [spec for spec in specs if not any(matches(event, spec) for event in self.events)]
            recent = "\n  ".join(json.dumps(event) for event in self.events[-15:])
            raise AssertionError(f"{self.name}: nothing matching {missing} within {timeout}s; "
                                 f"received {len(self.events)} events, the last ones:\n  {recent}") from None

    async def disconnect(self):
        if self.client is not None:
            await self.client.close()


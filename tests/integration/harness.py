"""Tools of the integration tests: the server process, a raw XMPP socket and slixmpp clients.

``ServerProcess`` runs the real ``twistd bridge`` on loopback ports chosen by
the kernel and keeps its log.  ``RawClient`` speaks XMPP over a plain socket
(with STARTTLS or direct TLS and SASL PLAIN) for the tests that send what no
library would.  ``Client`` is a slixmpp client that records what it receives
in asyncio queues, so that every wait in a test is a bounded wait on a queue.
"""

import asyncio
import base64
import os
import queue
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from bridge.core.sasl import ScramClient
from tests.pki import self_signed

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_CLIENT = "jabber:client"
TIMEOUT = 10.0
SERVER_START_TIMEOUT = 30.0

CONFIG_TEMPLATE = """\
data_dir = "{data_dir}"
[c2s]
endpoints = ["tcp:0:interface=127.0.0.1"]
direct_tls_endpoints = ["tcp:0:interface=127.0.0.1"]
stanza_size_limit_bytes = 65536
ping_interval_seconds = 300
[s2s]
endpoints = ["tcp:0:interface=127.0.0.1"]
[component_listener]
endpoints = ["tcp:0:interface=127.0.0.1"]
[http]
endpoints = ["tcp:0:interface=127.0.0.1"]
tls_endpoints = ["tcp:0:interface=127.0.0.1"]
[hosts.localhost]
registration = true
[hosts."example.test"]
aliases = ["alias.test"]
{sip}"""

# The SIP gateway is on by default on 5060/5061; off in test servers unless a
# test gives its own [sip] table to write_config.
SIP_OFF = """[sip]
enabled = false
udp_endpoints = ["udp:0:interface=127.0.0.1"]
tcp_endpoints = ["tcp:0:interface=127.0.0.1"]
tls_endpoints = ["tcp:0:interface=127.0.0.1"]
"""

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def server_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_config(directory, c2s_options="", sip=SIP_OFF, tables=""):
    """A configuration file in ``directory`` (its data under ``directory/data``); its path.

    ``c2s_options``: extra lines for the [c2s] table; ``sip``: the [sip] table;
    ``tables``: further tables, at the end.
    """
    path = os.path.join(directory, "bridge.toml")
    text = CONFIG_TEMPLATE.format(data_dir=os.path.join(directory, "data"), sip=sip) + tables
    text = text.replace("[c2s]\n", "[c2s]\n" + c2s_options + "\n", 1)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def add_users(config_path, accounts):
    """Create ``{jid: password}`` with bridgectl, before the server starts."""
    directory = os.path.dirname(config_path)
    for jid, password in accounts.items():
        password_file = os.path.join(directory, "password")
        with open(password_file, "w", encoding="utf-8") as handle:
            handle.write(password + "\n")
        done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, "adduser", jid,
                               "--password-file", password_file], env=server_env(), capture_output=True,
                              text=True, timeout=60)
        os.unlink(password_file)
        assert done.returncode == 0, f"bridgectl adduser {jid} failed: {done.stdout}{done.stderr}"


class ServerProcess:
    """One server process; its output is drained into ``lines`` by a thread."""

    LISTENING = re.compile(r"listening (c2s|c2s-direct-tls|s2s|s2s-direct-tls|component|http|https"
                           r"|sip-udp|sip-tcp|sip-tls|metrics|proxy65|mux|mux-tls|mux-c2s|mux-c2s-direct-tls|mux-https)"
                           r" on 127\.0\.0\.1:(\d+)")

    def __init__(self, config_path, accounts=None, command=None):
        self.config_path = config_path
        self.accounts = dict(accounts or {})
        self.log_path = os.path.join(os.path.dirname(config_path), "server.log")
        self.command = command or [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "bridge",
                                   "--config", config_path]
        self.lines = []
        self._new_lines = queue.Queue()
        self.process = None
        self.port = None
        self.tls_port = None
        self.ports = {}  # listener kind ("c2s", "s2s", "component"...) -> port

    def start(self, wait_for=("c2s", "c2s-direct-tls"), timeout=SERVER_START_TIMEOUT):
        self._new_lines = queue.Queue()  # a process started again reads its own lines, not the end of the last
        self.process = subprocess.Popen(self.command, env=server_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, cwd=os.path.dirname(self.config_path))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        ports = self.ports = {}
        # Every listener logs its port before the line saying the server is serving.
        self.wait_for_line(lambda line: (self._listening(line, ports) or True) and "] bridge " in line
                           and " serving " in line and set(wait_for) <= set(ports),
                           timeout, what="'listening' lines for " + ", ".join(wait_for))
        self.port, self.tls_port = ports.get("c2s"), ports.get("c2s-direct-tls")
        return self

    def _listening(self, line, ports):
        match = self.LISTENING.search(line)
        if match:
            ports[match.group(1)] = int(match.group(2))
        return True

    def _drain(self):
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                log.write(line + "\n")
                log.flush()
                self._new_lines.put(line)
        self._new_lines.put(None)

    def wait_for_line(self, predicate, timeout, what="a log line"):
        """Consume new log lines until ``predicate(line)`` is true; the line."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._new_lines.get(timeout=max(remaining, 0))
            except queue.Empty:
                raise AssertionError(f"not in the server log after {timeout}s: {what}; log:\n" + self.tail())
            if line is None:
                raise AssertionError(f"the server exited (status {self.process.wait()}) before {what}:\n"
                                     + self.tail())
            if predicate(line):
                return line

    def tail(self, count=60, start=0):
        return "\n".join(self.lines[start:][-count:])

    def password(self, jid):
        return self.accounts[jid.split("/", 1)[0]]

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        stop_process(self.process)
        if self.process is not None:
            self._reader.join(timeout=5)


def stop_process(process, timeout=15):
    """Terminate a child process, killing it if it has not ended within ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- a raw XMPP socket --------------------------------------------------------

def client_tls_context():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def stream_header(to):
    return (f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}' "
            f"to='{to}' version='1.0'>")


class StreamClosed(Exception):
    pass


class RawClient:
    """A blocking XMPP socket that parses what the server sends into top-level elements.

    ``transcript`` keeps every byte exchanged (after decryption), each chunk
    marked C: or S:, for assertion messages.
    """

    def __init__(self, port, direct_tls=False, server_hostname="localhost", timeout=TIMEOUT):
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.tls = False
        self.transcript = []
        self.eof = False
        if direct_tls:
            self._wrap(server_hostname)
        self._new_parser()

    # -- transport ------------------------------------------------------------

    def _wrap(self, server_hostname):
        self.sock = client_tls_context().wrap_socket(self.sock, server_hostname=server_hostname)
        self.tls = True

    def _new_parser(self):
        self.parser = ET.XMLPullParser(("start", "end"))
        self.depth = 0
        self.header = None
        self.elements = []
        self.closed_by_server = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.transcript.append("C: " + data[:2000].decode("utf-8", "replace")
                               + (f"... ({len(data)} bytes)" if len(data) > 2000 else ""))
        self.sock.sendall(data)

    def recv_some(self, deadline):
        """Bytes from the server (b'' at the end of the connection); raises TimeoutError at the deadline."""
        if self.eof:
            return b""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time:\n" + self.dump())
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the server in time:\n" + self.dump()) from None
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            self.transcript.append("S: <end of connection>")
            return b""
        self.transcript.append("S: " + data.decode("utf-8", "replace"))
        return data

    def dump(self):
        return "\n".join(self.transcript[-40:])

    def read_to_end(self, timeout=None):
        """Everything the server sends until it closes the connection."""
        deadline = time.monotonic() + (timeout or self.timeout)
        received = b""
        while True:
            data = self.recv_some(deadline)
            if not data:
                return received
            received += data

    def abort(self):
        """Drop the connection: a TCP reset, no closing tag, no TLS close_notify."""
        try:
            raw = self.sock
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- parsing --------------------------------------------------------------

    def _feed(self, data):
        self.parser.feed(data)
        for event, element in self.parser.read_events():
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    self.header = element
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.elements.append(element)
                    self.header.remove(element)
                elif self.depth == 0:
                    self.closed_by_server = True

    def next(self, timeout=None):
        """The next top-level element of the server's stream; StreamClosed at its end."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.elements:
            if self.closed_by_server:
                raise StreamClosed("the server closed the stream:\n" + self.dump())
            data = self.recv_some(deadline)
            if not data:
                raise StreamClosed("the server closed the connection:\n" + self.dump())
            try:
                self._feed(data)
            except ET.ParseError as error:
                raise AssertionError(f"the server sent malformed XML ({error}):\n" + self.dump()) from None
        return self.elements.pop(0)

    def expect(self, tag, timeout=None):
        element = self.next(timeout)
        assert element.tag == tag, f"expected {tag}, got {ET.tostring(element, 'unicode')}\n" + self.dump()
        return element

    # -- protocol steps -------------------------------------------------------

    def open(self, to="localhost"):
        """Open a stream to ``to``; the <stream:features/> received."""
        self._new_parser()
        self.send(stream_header(to))
        return self.expect(f"{{{NS_STREAMS}}}features")

    def starttls(self, server_hostname="localhost"):
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.expect(f"{{{NS_TLS}}}proceed")
        self._wrap(server_hostname)

    def authenticate_plain(self, user, password):
        """SASL PLAIN; the <success/> or <failure/> element."""
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        return self.next()

    def bind(self, resource):
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>")
        reply = self.expect(f"{{{NS_CLIENT}}}iq")
        jid = reply.find(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        assert reply.get("type") == "result" and jid is not None, "bind failed:\n" + self.dump()
        return jid.text

    def secure(self, host="localhost"):
        """Open a stream and negotiate TLS (unless already there); the features after TLS."""
        features = self.open(host)
        if not self.tls:
            assert features.find(f"{{{NS_TLS}}}starttls") is not None, "no STARTTLS offered:\n" + self.dump()
            self.starttls(host)
            features = self.open(host)
        return features

    def login(self, user, password, host="localhost", resource="raw", features=None):
        """TLS, SASL PLAIN, resource binding; the bound JID.  ``features``: those of a stream
        already opened (and secured)."""
        features = features if features is not None else self.secure(host)
        mechanisms = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        assert "PLAIN" in mechanisms, f"PLAIN not offered after TLS: {mechanisms}\n" + self.dump()
        result = self.authenticate_plain(user, password)
        assert result.tag == f"{{{NS_SASL}}}success", "authentication failed:\n" + self.dump()
        self.open(host)
        return self.bind(resource)


def scram_login(client, user, password, mechanism="SCRAM-SHA-1", binding=b""):
    """A SCRAM exchange as a client (``binding``: tls-exporter data for the -PLUS mechanisms).

    ``client`` has ``send(text)`` and ``next()`` (an ElementTree element): a
    RawClient or a WebSocket client.  Returns the server's last element; a
    success must carry the server's signature (a wrong one raises ``SASLFailure``).
    """
    scram = ScramClient(mechanism, user, password, channel_binding=binding)
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{base64.b64encode(scram.first()).decode()}</auth>")
    challenge = client.next()
    if challenge.tag != f"{{{NS_SASL}}}challenge":
        return challenge
    final = scram.answer(base64.b64decode(challenge.text))
    client.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final).decode()}</response>")
    outcome = client.next()
    if outcome.tag == f"{{{NS_SASL}}}success":
        scram.check(base64.b64decode(outcome.text or ""))
    return outcome


def parse_stream_document(data):
    """Parse a whole stream the server sent (header to closing tag); the root element."""
    return ET.fromstring(data.decode("utf-8").replace("<?xml version='1.0'?>", "", 1))


def stream_error_conditions(root):
    """The conditions of the <stream:error/> children of a parsed stream."""
    conditions = []
    for error in root.iter(f"{{{NS_STREAMS}}}error"):
        for child in error:
            if child.tag.startswith(f"{{{NS_STREAM_ERRORS}}}") and not child.tag.endswith("}text"):
                conditions.append(child.tag.split("}", 1)[1])
    return conditions


# -- slixmpp clients ------------------------------------------------------------

class Client(slixmpp.ClientXMPP):
    """A slixmpp client whose received stanzas land in queues.

    Automatic subscription handling is off so that tests answer requests
    themselves.  ``started`` resolves at session start and ``auth_failed``
    at the first SASL failure.
    """

    def __init__(self, jid, password, mechanisms=None):
        super().__init__(jid, password)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.auto_authorize = None
        self.auto_subscribe = False
        if mechanisms:
            self.plugin["feature_mechanisms"].use_mechs = set(mechanisms)
        loop = asyncio.get_running_loop()
        self.started = loop.create_future()
        self.auth_failed = loop.create_future()
        self.ended = loop.create_future()
        self.messages = asyncio.Queue()
        self.message_errors = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.roster_pushes = asyncio.Queue()
        self.stream_errors = asyncio.Queue()
        self.add_event_handler("session_start", lambda _: self._settle(self.started, True))
        self.add_event_handler("failed_auth", lambda stanza: self._settle(self.auth_failed, stanza))
        self.add_event_handler("disconnected", lambda _: self._settle(self.ended, True))
        self.add_event_handler("message", self._message)
        self.add_event_handler("message_error", self.message_errors.put_nowait)
        self.add_event_handler("presence", self.presences.put_nowait)
        self.add_event_handler("stream_error", self.stream_errors.put_nowait)
        self.add_event_handler("roster_update", self._roster_update)

    @staticmethod
    def _settle(future, value):
        if not future.done():
            future.set_result(value)

    def _message(self, message):
        if message["type"] != "error":
            self.messages.put_nowait(message)

    def _roster_update(self, iq):
        if iq["type"] == "set":
            self.roster_pushes.put_nowait(iq)

    def watch(self, xpath):
        """A queue of the incoming stanzas that match ``xpath`` (they get no automatic answer)."""
        found = asyncio.Queue()
        self.register_handler(Callback(f"watch {xpath}", MatchXPath(xpath), found.put_nowait))
        return found

    def start(self, port, direct_tls=False):
        """Connect to 127.0.0.1:port by STARTTLS (default) or direct TLS, never both."""
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        self.connect(host="127.0.0.1", port=port)

    @property
    def mechanism(self):
        """The SASL mechanism slixmpp authenticated with."""
        mech = self.plugin["feature_mechanisms"].mech
        return mech.name if mech is not None else None

    async def query(self, kind, to, payload, timeout=TIMEOUT):
        """Send an IQ of type ``kind`` carrying the XML ``payload``; the reply (result or error)."""
        iq = self.make_iq(ito=to, itype=kind)
        if payload:
            iq.append(ET.fromstring(payload))
        try:
            return await iq.send(timeout=timeout)
        except IqError as error:
            return error.iq
        except IqTimeout:
            raise AssertionError(f"no answer from {to} to {payload!r} within {timeout}s") from None

    async def close(self):
        await close_stream(self)


async def close_stream(xmpp):
    """End a slixmpp stream and wait (bounded) for the connection to go; abort if it lingers."""
    if xmpp.transport is None:
        xmpp.cancel_connection_attempt()
        return
    try:
        await asyncio.wait_for(xmpp.disconnect(wait=2), 5)
    except (asyncio.TimeoutError, Exception):
        xmpp.abort()


async def login(jid, password, port, direct_tls=False, mechanisms=None, presence=True, roster=True,
                timeout=TIMEOUT, plugins=None):
    """A connected, bound client; it fetched its roster and sent presence unless told not to.

    ``plugins``: {slixmpp plugin name: its configuration}, registered before connecting.
    """
    client = Client(jid, password, mechanisms=mechanisms)
    for name, plugin_config in (plugins or {}).items():
        client.register_plugin(name, plugin_config)
    client.start(port, direct_tls=direct_tls)
    done, _ = await asyncio.wait([client.started, client.auth_failed], timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    if client.started not in done:
        reason = "authentication failed" if client.auth_failed.done() else f"no session within {timeout}s"
        await client.close()
        raise AssertionError(f"{jid} could not log in: {reason}")
    if roster:
        await asyncio.wait_for(client.get_roster(), timeout)
    if presence:
        client.send_presence()
    return client


async def next_item(source, predicate=lambda item: True, timeout=TIMEOUT, what="a stanza"):
    """The first item of an asyncio queue that satisfies ``predicate``; others are skipped."""
    skipped = []

    async def scan():
        while True:
            item = await source.get()
            if predicate(item):
                return item
            skipped.append(item)

    try:
        return await asyncio.wait_for(scan(), timeout)
    except asyncio.TimeoutError:
        shown = "\n".join(str(item) for item in skipped[-10:])
        raise AssertionError(f"no {what} within {timeout}s; received instead:\n{shown}") from None


def child(stanza, tag):
    """The first descendant of a slixmpp stanza's XML with this {namespace}name, or None."""
    return stanza.xml.find(f".//{tag}")


def error_condition(stanza):
    """The defined condition of an error stanza ('' when it has none)."""
    error = stanza.xml.find(f"{{{NS_CLIENT}}}error")
    if error is None:
        return ""
    for item in error:
        if item.tag.startswith(f"{{{NS_STANZAS}}}") and not item.tag.endswith("}text"):
            return item.tag.split("}", 1)[1]
    return ""


class Component(slixmpp.ComponentXMPP):
    """A slixmpp XEP-0114 component for a test: ``start(port)`` waits for its session, ``close()`` for its end."""

    def __init__(self, domain, secret):
        super().__init__(domain, secret)
        loop = asyncio.get_running_loop()
        self.started = loop.create_future()
        self.ended = loop.create_future()
        self.add_event_handler("session_start", lambda _: self._settle(self.started))
        self.add_event_handler("disconnected", lambda _: self._settle(self.ended))

    @staticmethod
    def _settle(future):
        if not future.done():
            future.set_result(True)

    async def start(self, port):
        self.connect(host="127.0.0.1", port=port)
        await asyncio.wait_for(asyncio.shield(self.started), TIMEOUT)

    async def close(self):
        if self.transport is None:
            self.cancel_connection_attempt()
            return
        await close_stream(self)
        await asyncio.wait_for(asyncio.shield(self.ended), TIMEOUT)


class Clients:
    """An async context that logs clients in and closes all of them at its end."""

    def __init__(self, server):
        self.server = server
        self.clients = []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await asyncio.gather(*(client.close() for client in self.clients), return_exceptions=True)

    async def login(self, jid, password=None, **options):
        port = options.pop("port", None) or (self.server.tls_port if options.get("direct_tls")
                                             else self.server.port)
        client = await login(jid, password or self.server.password(jid), port, **options)
        self.clients.append(client)
        return client

    def track(self, client):
        self.clients.append(client)
        return client


def roster_items(iq):
    """{bare JID: item values} of a roster result or push."""
    return {str(jid): values for jid, values in iq["roster"]["items"].items()}


def subscription_of(iq, jid):
    return roster_items(iq).get(jid, {}).get("subscription")


async def barrier(client, timeout=TIMEOUT):
    """A ping to the server answered: everything the client sent before has been processed."""
    reply = await client.query("get", client.boundjid.domain, "<ping xmlns='urn:xmpp:ping'/>", timeout)
    assert reply["type"] == "result", f"ping failed: {reply}"


async def befriend(a, b):
    """Make a mutual subscription between two online clients (each answers the other's request)."""
    a_bare, b_bare = a.boundjid.bare, b.boundjid.bare
    a.send_presence(pto=b_bare, ptype="subscribe")
    await next_item(b.presences, lambda p: p["type"] == "subscribe" and p["from"].bare == a_bare,
                    what=f"subscription request from {a_bare}")
    b.send_presence(pto=a_bare, ptype="subscribed")
    b.send_presence(pto=a_bare, ptype="subscribe")
    await next_item(a.presences, lambda p: p["type"] == "subscribe" and p["from"].bare == b_bare,
                    what=f"subscription request from {b_bare}")
    a.send_presence(pto=b_bare, ptype="subscribed")
    for client, contact in ((a, b_bare), (b, a_bare)):
        await next_item(client.roster_pushes, lambda iq: subscription_of(iq, contact) == "both",
                        what=f"roster push of {contact} with subscription 'both'")


async def collect(source, wanted, timeout=TIMEOUT):
    """Read a queue until each predicate of ``wanted`` ({name: predicate}) matched an item.

    Returns {name: (arrival index, item)}, so a test may check the order of arrival.
    """
    found = {}
    received = []

    async def scan():
        while len(found) < len(wanted):
            item = await source.get()
            received.append(item)
            for name, predicate in wanted.items():
                if name not in found and predicate(item):
                    found[name] = (len(received) - 1, item)
                    break

    try:
        await asyncio.wait_for(scan(), timeout)
    except asyncio.TimeoutError:
        shown = "\n".join(str(item) for item in received[-10:])
        missing = ", ".join(name for name in wanted if name not in found)
        raise AssertionError(f"not received within {timeout}s: {missing}; received:\n{shown}") from None
    return found


# -- several nodes on one Redis (docs/scaling.md) ------------------------------------

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                                  else None)


def free_port():
    """A loopback TCP port free now (for programs that cannot listen on port 0 and report it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisProcess:
    """A redis-server of the tests' own: loopback, a free port, a temporary folder, nothing saved,
    and a password kept in a 0600 file (``password_file``)."""

    def __init__(self, directory):
        self.directory = directory
        self.port = None
        self.process = None
        self.password_file = os.path.join(directory, "redis.password")
        self.password = base64.b32encode(os.urandom(10)).decode("ascii")

    def start(self, timeout=SERVER_START_TIMEOUT):
        descriptor = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(self.password + "\n")
        self.port = free_port()
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.directory,
             "--save", "", "--appendonly", "no", "--requirepass", self.password],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        for raw in self.process.stdout:
            if b"Ready to accept connections" in raw:
                break
            if time.monotonic() > deadline:
                break
        else:
            raise AssertionError(f"redis-server exited with status {self.process.wait()}")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        return self

    def stop(self):
        stop_process(self.process)


def cluster_table(redis_server, node_name, lease_seconds=2):
    """The [cluster] table of one node on ``redis_server``."""
    return (f'[cluster]\nenabled = true\nnode_name = "{node_name}"\nredis_address = "127.0.0.1:{redis_server.port}"\n'
            f'password_file = "{redis_server.password_file}"\nlease_seconds = {lease_seconds}\n')


def start_nodes(directory, redis_server, count, accounts, lease_seconds=2, c2s_options="", tables="",
                wait_for=("c2s", "c2s-direct-tls"), sip=SIP_OFF):
    """``count`` bridge nodes of one cluster, each with its own data folder and the same accounts; the
    processes, started (a test stops them).  ``c2s_options``, ``tables``, ``sip``: as for ``write_config``;
    ``wait_for``: the listeners each start waits for."""
    nodes = []
    try:
        for index in range(count):
            node_directory = os.path.join(directory, f"node{index + 1}")
            os.makedirs(node_directory)
            config_path = write_config(node_directory, c2s_options=c2s_options, sip=sip,
                                       tables=cluster_table(redis_server, f"node{index + 1}", lease_seconds) + tables)
            add_users(config_path, accounts)
            nodes.append(ServerProcess(config_path, accounts))
            nodes[-1].start(wait_for=wait_for)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def start_mux(directory, nodes, listener, secret, accounts, options="", wait_for=("mux-c2s",)):
    """A multiplexor (``twistd bridge-mux``, a certificate of its own) in front of ``nodes``, reached on their
    ``listener`` ports with the secret in the file ``secret``; ``options``: further [mux] lines.  Started,
    with two links up to every node; the process (a test stops it)."""
    certificate, key = self_signed(directory, ["localhost"], file_name="mux")
    mux_directory = os.path.join(directory, "mux")
    os.makedirs(mux_directory)
    config_path = os.path.join(mux_directory, "bridge-mux.toml")
    addresses = ", ".join(f'"127.0.0.1:{node.ports[listener]}"' for node in nodes)
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(f'[mux]\nendpoints = ["tcp:0:interface=127.0.0.1"]\n{options}'
                     f'certificate = "{certificate}"\nprivate_key = "{key}"\nnodes = [{addresses}]\n'
                     f'secret_file = "{secret}"\nreconnect_max_seconds = 1\n')
    mux = ServerProcess(config_path, accounts, command=[sys.executable, "-c", TWISTD, "-n", "--pidfile=",
                                                        "bridge-mux", "--config", config_path])
    try:
        mux.start(wait_for=wait_for)
        for node in nodes:
            address = f"127.0.0.1:{node.ports[listener]}"
            if not any(f"link to node {address} up (2 links)" in line for line in mux.lines):
                mux.wait_for_line(lambda line: f"link to node {address} up (2 links)" in line, 30,
                                  what=f"two links to {address}")
    except BaseException:
        mux.stop()
        raise
    return mux


def wait_for_members(nodes):
    """Until the log of each of ``nodes`` (named node1, node2... in order, started in any order) says it saw
    every other one join."""
    names = [f"node{number}" for number in range(1, len(nodes) + 1)]
    for name, node in zip(names, nodes):
        for other in names:
            joined = f"cluster: node {other} is a member"
            if other != name and not any(joined in line for line in node.lines):
                node.wait_for_line(lambda line: joined in line, 30, what=f"{other} seen by {name}")

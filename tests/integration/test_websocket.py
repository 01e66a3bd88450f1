"""XMPP over WebSocket (RFC 7395) against the real server: xmpp.js in Node.js next to slixmpp on TCP.

The WebSocket peer is @xmpp/client (tests/integration/xmppjs/client.mjs), a
real browser-style client; `.ci/install-test-peers` installs it with npm.
Without Node.js the tests are skipped.
"""

import asyncio
import json
import os
import shutil
import subprocess
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from .harness import NS_CLIENT, TIMEOUT, Clients, ServerProcess, collect, next_item

XMPPJS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xmppjs")
SCRIPT = os.path.join(XMPPJS, "client.mjs")
INSTALL = "npm install --prefix tests/integration/xmppjs --no-audit --no-fund"
PRESENCE = f"{{{NS_CLIENT}}}presence"
MESSAGE = f"{{{NS_CLIENT}}}message"
ACCOUNTS = ["romeo@localhost", "juliet@localhost", "mercutio@localhost", "tybalt@localhost"]


@pytest.fixture(scope="module")
def node_command():
    """The command line that runs client.mjs; skips when Node.js or @xmpp/client cannot be had."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the xmpp.js WebSocket peer cannot run (install node >= 20.10)")
    if not os.path.isdir(os.path.join(XMPPJS, "node_modules", "@xmpp", "client")):
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip(f"@xmpp/client is not installed and npm is missing; run: {INSTALL}")
        done = subprocess.run([npm, "install", "--prefix", XMPPJS, "--no-audit", "--no-fund"], capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"npm could not install @xmpp/client ({INSTALL}):\n{done.stderr[-2000:]}")
    # Node 20 has WebSocket behind a flag; later versions have it by default.
    probe = subprocess.run([node, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], timeout=60)
    return [node] + ([] if probe.returncode == 0 else ["--experimental-websocket"]) + [SCRIPT]


@pytest.fixture(scope="module")
def web_server(start_server):
    return start_server("websocket", ACCOUNTS)


def listener_port(process, kind):
    """The port the server logged for its listener ``kind`` ("http", "https")."""
    def port_of(line):
        match = ServerProcess.LISTENING.search(line)
        return int(match.group(2)) if match and match.group(1) == kind else None

    for line in list(process.lines):
        if port_of(line):
            return port_of(line)
    return port_of(process.wait_for_line(lambda line: port_of(line) is not None, TIMEOUT,
                                         what=f"the {kind} listener"))


class NodeClient:
    """One client.mjs process; its stanzas (parsed) and other events land in asyncio queues."""

    def __init__(self, process):
        self.process = process
        self.events = asyncio.Queue()
        self.stanzas = asyncio.Queue()
        self.lines = []
        self.jid = None
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._read_errors())]

    @classmethod
    async def start(cls, command, service, jid, password, resource, insecure_tls=False):
        user, domain = jid.split("@")
        env = dict(os.environ)
        if insecure_tls:
            env["NODE_TLS_REJECT_UNAUTHORIZED"] = "0"  # the server's self-signed certificate
        process = await asyncio.create_subprocess_exec(*command, service, domain, user, password, resource,
                                                       stdin=asyncio.subprocess.PIPE,
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE, cwd=XMPPJS, env=env)
        return cls(process)

    async def _read(self):
        async for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "stanza":
                self.stanzas.put_nowait(ET.fromstring(event["xml"]))
            else:
                self.events.put_nowait(event)
        self.events.put_nowait({"event": "exit"})

    async def _read_errors(self):
        async for raw in self.process.stderr:
            self.lines.append("stderr: " + raw.decode("utf-8", "replace").rstrip())

    def transcript(self):
        return "\n".join(self.lines[-40:])

    async def online(self):
        event = await next_item(self.events, lambda e: e["event"] in ("online", "error", "exit"),
                                what="xmpp.js going online")
        assert event["event"] == "online", f"xmpp.js did not log in: {event}\n{self.transcript()}"
        self.jid = event["jid"]
        return self.jid

    def send(self, text):
        self.process.stdin.write((json.dumps({"send": text}) + "\n").encode("utf-8"))

    async def stanza(self, predicate, what):
        try:
            return await next_item(self.stanzas, predicate, what=f"{what} at xmpp.js")
        except AssertionError as error:
            raise AssertionError(f"{error}\nxmpp.js output:\n{self.transcript()}") from None

    async def collect(self, wanted):
        """Wait until each predicate of ``wanted`` ({what: predicate}) matched a stanza, in any order."""
        try:
            return await collect(self.stanzas, wanted)
        except AssertionError as error:
            raise AssertionError(f"{error}\nxmpp.js output:\n{self.transcript()}") from None

    async def stop(self):
        """<close/> then the end of the process (bounded)."""
        if self.process.returncode is None:
            self.process.stdin.write(b'{"stop": true}\n')
            try:
                await asyncio.wait_for(self.process.wait(), TIMEOUT)
            except asyncio.TimeoutError:
                pass
        await self.kill()

    async def kill(self):
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def test_xmppjs_over_websocket_with_slixmpp_over_tcp(web_server, node_command):
    """xmpp.js logs in over ws:// (SCRAM, bind), subscribes to a slixmpp user on TCP and is
    subscribed back; each sees the other's presence, they exchange chat messages both ways, and
    when xmpp.js closes its stream (<close/>) the TCP client sees it go unavailable."""

    async def scenario():
        port = listener_port(web_server, "http")
        async with Clients(web_server) as clients:
            romeo = await clients.login("romeo@localhost/tcp")
            juliet = await NodeClient.start(node_command, f"ws://127.0.0.1:{port}/xmpp-websocket",
                                            "juliet@localhost", web_server.password("juliet@localhost"), "ws")
            try:
                assert await juliet.online() == "juliet@localhost/ws"
                juliet.send("<presence/>")
                juliet.send("<presence to='romeo@localhost' type='subscribe'/>")
                await next_item(romeo.presences, lambda p: p["type"] == "subscribe"
                                and p["from"].bare == "juliet@localhost", what="juliet's subscription request")
                romeo.send_presence(pto="juliet@localhost", ptype="subscribed")
                romeo.send_presence(pto="juliet@localhost", ptype="subscribe")
                # Approved, juliet gets romeo's presence; and romeo's own request.  Either may come first.
                await juliet.collect({
                    "romeo's subscription request": lambda s: s.tag == PRESENCE and s.get("type") == "subscribe"
                    and s.get("from") == "romeo@localhost",
                    "romeo's presence": lambda s: s.tag == PRESENCE and s.get("type") is None
                    and s.get("from") == "romeo@localhost/tcp",
                })
                juliet.send("<presence to='romeo@localhost' type='subscribed'/>")
                await next_item(romeo.presences, lambda p: p["type"] == "available"
                                and p["from"] == "juliet@localhost/ws", what="juliet's presence")

                romeo.send_message(mto="juliet@localhost/ws", mbody="over TCP, to a WebSocket", mtype="chat")
                message = await juliet.stanza(lambda s: s.tag == MESSAGE and s.find(f"{{{NS_CLIENT}}}body") is not None,
                                              what="romeo's message")
                assert message.get("from") == "romeo@localhost/tcp"
                assert message.find(f"{{{NS_CLIENT}}}body").text == "over TCP, to a WebSocket"
                assert message.get("type") == "chat"

                juliet.send("<message to='romeo@localhost' type='chat'><body>over a WebSocket, to TCP</body></message>")
                reply = await next_item(romeo.messages, what="juliet's message")
                assert reply["body"] == "over a WebSocket, to TCP"
                assert reply["from"] == "juliet@localhost/ws"

                await juliet.stop()
                await next_item(romeo.presences, lambda p: p["type"] == "unavailable"
                                and p["from"] == "juliet@localhost/ws", what="juliet going unavailable")
            finally:
                await juliet.kill()

    asyncio.run(scenario())


def test_xmppjs_over_wss_on_the_tls_listener(web_server, node_command):
    """On the TLS listener (TLS from the first byte) xmpp.js logs in over wss:// and exchanges
    messages with a slixmpp client on direct TLS."""

    async def scenario():
        port = listener_port(web_server, "https")
        async with Clients(web_server) as clients:
            tybalt = await clients.login("tybalt@localhost/tls", direct_tls=True)
            mercutio = await NodeClient.start(node_command, f"wss://localhost:{port}/xmpp-websocket",
                                              "mercutio@localhost", web_server.password("mercutio@localhost"),
                                              "wss", insecure_tls=True)
            try:
                assert await mercutio.online() == "mercutio@localhost/wss"
                mercutio.send("<message to='tybalt@localhost/tls' type='chat'><body>secure</body></message>")
                message = await next_item(tybalt.messages, what="mercutio's message")
                assert (message["body"], message["from"]) == ("secure", "mercutio@localhost/wss")
                tybalt.send_message(mto="mercutio@localhost/wss", mbody="indeed", mtype="chat")
                reply = await mercutio.stanza(lambda s: s.tag == MESSAGE and s.find(f"{{{NS_CLIENT}}}body") is not None,
                                              what="tybalt's answer")
                assert reply.find(f"{{{NS_CLIENT}}}body").text == "indeed"
            finally:
                await mercutio.stop()

    asyncio.run(scenario())


def test_web_page_and_refusals(web_server):
    """GET / answers the web client page (here: that Converse.js is not installed, with no path of the
    server), and the WebSocket path refuses a plain GET with 426 and an upgrade without the 'xmpp'
    subprotocol with 400."""
    port = listener_port(web_server, "http")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/html")
        page = answer.read()
        assert b"Converse.js" in page and b"not installed" in page
        assert os.path.dirname(web_server.config_path).encode() not in page
    for headers, status in (({}, 426), ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, 400)):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/xmpp-websocket", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=TIMEOUT)
        assert refused.value.code == status

"""Real browser clients against the real server process: Strophe.js and Converse.js in headless
Chromium (Debian's chromium, driven by playwright-core from node) beside slixmpp clients on c2s.
(@xmpp/client over WebSocket in node is test_websocket.py's.)

The pages come from tests/integration/browser/pages, served on 127.0.0.1 from another port than
the server's [http] listener, so every request is cross-origin and the listener's
allowed_origins names the pages' origin.  tests/integration/browser/support.py has the harness;
BROWSER_TEST_SERVER=prosody runs the same tests against Prosody as a reference.
"""

import asyncio
import base64
import os
import struct
import urllib.request
import zlib
from urllib.parse import urlencode, urlsplit

import pytest

from . import harness
from .browser import support
from .browser.support import Driver, JSAgent, SlixAgent

MISSING = support.missing_tools()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"browser tests need chromium and node: {MISSING}")

USERS = {
    "strophe-bosh": "sbosh@localhost/strophe-bosh",
    "strophe-ws": "sws@localhost/strophe-ws",
    "slixmpp-tcp": "slix@localhost/slixmpp",
    "converse-websocket": "conv-ws@localhost",
    "peer-websocket": "peer-ws@localhost/slixmpp",
    "converse-bosh": "conv-bosh@localhost",
    "peer-bosh": "peer-bosh@localhost/slixmpp",
    "history-websocket": "hist-ws@localhost",
    "history-peer-websocket": "hist-peer-ws@localhost/slixmpp",
    "history-bosh": "hist-bosh@localhost",
    "history-peer-bosh": "hist-peer-bosh@localhost/slixmpp",
    "files-converse": "conv-files@localhost",
    "files-peer": "peer-files@localhost/slixmpp",
}
PASSWORDS = {support.bare(jid): support.bare(jid).split("@")[0] + "-browser-secret" for jid in USERS.values()}


@pytest.fixture(scope="module")
def pages():
    """The pages' HTTP server on 127.0.0.1 (its own port: another origin than the server's)."""
    support.check_node_modules()
    server = support.PageServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def xmpp_server(pages, tmp_path_factory):
    """The server under test with its [http] listener; allowed_origins lists the pages' origin."""
    server = support.server_under_test(str(tmp_path_factory.mktemp("browser-server")), pages.origin, PASSWORDS)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(request, tmp_path, xmpp_server):
    """A directory and log for one test's driver; on failure, the browser log and the server log
    lines of the test are printed."""
    log = support.BrowserLog(str(tmp_path / "browser.log"))
    mark = len(xmpp_server.process.lines)
    yield tmp_path, log
    log.close()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"--- browser log (all of it in {log.path}), last lines ---")
        print(log.tail(120))
        print(f"--- {xmpp_server.name} log during the test ({xmpp_server.process.log_path}) ---")
        print(xmpp_server.process.tail(count=120, start=mark))
        shots = sorted(name for name in os.listdir(tmp_path) if name.endswith(".png"))
        if shots:
            print("--- screenshots: " + ", ".join(str(tmp_path / name) for name in shots))


async def run_with_screenshots(driver, directory, targets, scenario):
    """Run ``scenario``; when it fails, save a screenshot of each page in ``targets`` first."""
    try:
        await scenario
    except BaseException:
        for target in targets:
            await driver.screenshot(target, str(directory / f"{target}.png"))
        raise


async def converse_login(driver, jid):
    """Log in through the login form of the Converse page named "converse"; the bound full JID."""
    await driver.request("fill", target="converse", selector="converse-login-form input[name=jid]", text=jid)
    await driver.request("fill", target="converse", selector="converse-login-form input[name=password]",
                         text=PASSWORDS[jid])
    await driver.request("click", target="converse",
                         selector="converse-login-form button[type=submit]:not(.login-anon)")
    full_jid = await driver.call("converse", "waitConnected", int(support.TIMEOUT * 1000))
    assert support.bare(full_jid) == jid, f"Converse bound {full_jid}"
    return full_jid


async def converse_send(driver, peer, text):
    """Type ``text`` in Converse's open chat with ``peer`` and send it with Enter."""
    textarea = f'converse-chat[jid="{peer}"] textarea.chat-textarea'
    await driver.request("fill", target="converse", selector=textarea, text=text)
    await driver.request("press", target="converse", selector=textarea, key="Enter")


async def converse_shown(driver, peer, text):
    """Wait until a message containing ``text`` is displayed in Converse's chat with ``peer``; its text."""
    return await driver.request("waitVisible", target="converse",
                                selector=f'converse-chat[jid="{peer}"] .chat-msg__text',
                                text=text, timeout=int(support.TIMEOUT * 1000))


def test_strophe_over_bosh_and_websocket_and_slixmpp_exchange_presence_and_messages(browser, pages, xmpp_server):
    """Three clients on three transports, at once: Strophe.js over BOSH and Strophe.js over
    WebSocket in Chromium, slixmpp on c2s.  Each logs in (SASL, bind, session, roster, initial
    presence) and asks every other for a presence subscription; each approves every request and
    gets the approvals and roster pushes with subscription 'both'.  Then each one's new presence
    (its own status text) reaches every other one from its full JID, each one's chat message to
    every other bare JID arrives from its full JID with its body, and when the two browser clients
    end their sessions (BOSH terminate, WebSocket <close/>) the slixmpp client sees each go
    unavailable."""
    directory, log = browser

    async def scenario():
        async with Driver(str(directory), log) as driver:
            names = ["strophe-bosh", "strophe-ws", "slixmpp-tcp"]
            await driver.open("strophe-bosh", pages.url("strophe.html"))
            await driver.open("strophe-ws", pages.url("strophe.html"))

            def js(name, service):
                jid = USERS[name]
                return JSAgent(driver, name, jid, PASSWORDS[support.bare(jid)], service)

            slix_jid = USERS["slixmpp-tcp"]
            agents = {
                "strophe-bosh": js("strophe-bosh", xmpp_server.bosh_url),
                "strophe-ws": js("strophe-ws", xmpp_server.websocket_url),
                "slixmpp-tcp": SlixAgent("slixmpp-tcp", slix_jid, PASSWORDS[support.bare(slix_jid)],
                                         xmpp_server.c2s_port),
            }

            async def each(step):
                await asyncio.gather(*(step(agents[name], [agents[other] for other in names if other != name])
                                       for name in names))

            async def scene():
                try:
                    # Every client's login is tried to its end, so that a failure names each
                    # transport that fails and not only the first one.
                    outcomes = await asyncio.gather(*(agent.login() for agent in agents.values()),
                                                    return_exceptions=True)
                    failed = [f"{agent.name}: {outcome}" for agent, outcome in zip(agents.values(), outcomes)
                              if isinstance(outcome, BaseException)]
                    if failed:
                        raise AssertionError("login failed:\n" + "\n".join(failed))
                    for agent in agents.values():
                        assert support.bare(agent.jid) == agent.bare, f"{agent.name} bound {agent.jid}"

                    async def subscribe(agent, others):
                        for other in others:
                            await agent.presence(to=other.bare, type="subscribe")
                        await agent.wait_all([{"kind": "presence", "type": "subscribe", "from": other.bare}
                                              for other in others])

                    async def approve(agent, others):
                        for other in others:
                            await agent.presence(to=other.bare, type="subscribed")
                        await agent.wait_all([{"kind": "presence", "type": "subscribed", "from": other.bare}
                                              for other in others])
                        await agent.wait_all([{"kind": "roster", "jid": other.bare, "subscription": "both"}
                                              for other in others])

                    async def announce(agent, others):
                        await agent.presence(status=f"{agent.name} is here")
                        await agent.wait_all([{"kind": "presence", "type": None, "from": other.jid,
                                               "status": f"{other.name} is here"} for other in others])

                    async def chat(agent, others):
                        for other in others:
                            await agent.message(to=other.bare, body=f"from {agent.name} to {other.name}")
                        await agent.wait_all([{"kind": "message", "type": "chat", "from": other.jid,
                                               "body": f"from {other.name} to {agent.name}"} for other in others])

                    await each(subscribe)
                    await each(approve)
                    await each(announce)
                    await each(chat)

                    leaving = [agents[name] for name in names if name != "slixmpp-tcp"]
                    await asyncio.gather(*(agent.disconnect() for agent in leaving))
                    await agents["slixmpp-tcp"].wait_all([{"kind": "presence", "type": "unavailable",
                                                           "from": agent.jid} for agent in leaving])
                finally:
                    await agents["slixmpp-tcp"].disconnect()

            await run_with_screenshots(driver, directory, ["strophe-bosh", "strophe-ws"], scene())

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_only_allowed_origins_may_use_bosh_and_websocket(browser, pages, xmpp_server):
    """The browser's own origin checks, against the listener's answers: a page from the origin
    listed in allowed_origins may create (and terminate) a BOSH session after the CORS preflight
    and may open a WebSocket with subprotocol 'xmpp'; the same page from an origin not listed
    (another port) has its BOSH request blocked by the browser and its WebSocket handshake refused
    by the server (browsers apply no CORS to WebSockets: the Origin check is the server's; the
    Prosody reference makes none, so there that last check is left out)."""
    directory, log = browser
    other = support.PageServer().start()
    ms = int(support.TIMEOUT * 1000)

    async def scenario():
        async with Driver(str(directory), log) as driver:
            await driver.open("listed", pages.url("strophe.html"))
            await driver.open("unlisted", other.url("strophe.html"))
            outcomes = {}
            for name in ("listed", "unlisted"):
                outcomes[name] = (await driver.call(name, "probeBosh", xmpp_server.bosh_url, ms),
                                  await driver.call(name, "probeWebSocket", xmpp_server.websocket_url, ms))
            listed_bosh, listed_websocket = outcomes["listed"]
            unlisted_bosh, unlisted_websocket = outcomes["unlisted"]
            assert listed_bosh == "allowed: HTTP 200 with a session", outcomes
            assert listed_websocket == "open (subprotocol xmpp)", outcomes
            assert unlisted_bosh.startswith("blocked: TypeError"), outcomes
            if xmpp_server.checks_websocket_origin:
                assert unlisted_websocket.startswith("refused"), outcomes

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        other.stop()


@pytest.mark.parametrize("transport", ["websocket", "bosh"])
def test_converse_logs_in_and_chats_with_slixmpp(browser, pages, xmpp_server, transport):
    """Converse.js in Chromium, configured for one transport (WebSocket or BOSH) and nothing else,
    logs in through its login form; a message typed in its chat with a slixmpp user and sent with
    Enter reaches that user from Converse's full JID with the typed text, and the slixmpp user's
    answer is displayed in Converse's chat (the text is in the page)."""
    directory, log = browser
    converse_jid = USERS[f"converse-{transport}"]
    peer_jid = USERS[f"peer-{transport}"]
    service = xmpp_server.websocket_url if transport == "websocket" else xmpp_server.bosh_url

    async def scenario():
        async with Driver(str(directory), log) as driver:
            peer = SlixAgent("peer", peer_jid, PASSWORDS[support.bare(peer_jid)], xmpp_server.c2s_port)

            async def scene():
                try:
                    await peer.login()
                    await driver.open("converse", pages.url("converse.html?" + urlencode({transport: service})))
                    full_jid = await converse_login(driver, converse_jid)

                    await driver.call("converse", "openChat", peer.bare)
                    typed = f"typed in Converse over {transport}"
                    await converse_send(driver, peer.bare, typed)
                    await peer.wait_all([{"kind": "message", "from": full_jid, "body": typed}])

                    answer = f"slixmpp answers Converse over {transport}"
                    await peer.message(to=converse_jid, body=answer)
                    shown = await converse_shown(driver, peer.bare, answer)
                    assert answer in shown
                finally:
                    await peer.disconnect()

            await run_with_screenshots(driver, directory, ["converse"], scene())

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.parametrize("transport", ["websocket", "bosh"])
def test_converse_loads_its_history_by_mam_after_a_reload(browser, pages, xmpp_server, transport):
    """Converse.js and a slixmpp user exchange four messages (two typed in Converse, two sent by
    slixmpp, alternately); then Converse's page is loaded again with nothing kept in the browser
    (its tab closed, its origin's IndexedDB, localStorage and caches deleted, a new tab: so a new
    Converse with no stored history), logs in through its form again and opens the chat with the
    slixmpp user.  The four messages are displayed in the order they were sent, two as Converse's
    own and two as the contact's, and Converse reports each as taken from a MAM result (XEP-0313):
    the server's archive is the only place they can come from.  (Converse's defaults ask for one
    page, the newest archived_messages_page_size = 50 messages, when a chat opens.)"""
    directory, log = browser
    converse_jid = USERS[f"history-{transport}"]
    peer_jid = USERS[f"history-peer-{transport}"]
    service = xmpp_server.websocket_url if transport == "websocket" else xmpp_server.bosh_url
    conversation = [("me", f"first from Converse over {transport}"), ("them", f"first from slixmpp over {transport}"),
                    ("me", f"second from Converse over {transport}"), ("them", f"second from slixmpp over {transport}")]

    async def scenario():
        async with Driver(str(directory), log) as driver:
            peer = SlixAgent("peer", peer_jid, PASSWORDS[support.bare(peer_jid)], xmpp_server.c2s_port)

            async def scene():
                try:
                    await peer.login()
                    await driver.open("converse", pages.url("converse.html?" + urlencode({transport: service})))
                    full_jid = await converse_login(driver, converse_jid)
                    await driver.call("converse", "openChat", peer.bare)
                    for sender, body in conversation:
                        if sender == "me":
                            await converse_send(driver, peer.bare, body)
                            await peer.wait_all([{"kind": "message", "from": full_jid, "body": body}])
                        else:
                            await peer.message(to=converse_jid, body=body)
                            await converse_shown(driver, peer.bare, body)

                    await driver.reopen("converse")
                    await converse_login(driver, converse_jid)
                    await driver.call("converse", "openChat", peer.bare)
                    for _, body in conversation:
                        await converse_shown(driver, peer.bare, body)
                    shown = await driver.request("texts", target="converse",
                                                 selector=f'converse-chat[jid="{peer.bare}"] .chat-msg__text')
                    assert [text.strip() for text in shown] == [body for _, body in conversation], shown
                    messages = await driver.call("converse", "messages", peer.bare)
                    assert [(message["sender"], message["body"]) for message in messages] == conversation, messages
                    assert all(message["archived"] for message in messages), messages
                finally:
                    await peer.disconnect()

            await run_with_screenshots(driver, directory, ["converse"], scene())

    asyncio.run(asyncio.wait_for(scenario(), 90))


def png(width, height, rgb):
    """A PNG of one colour (an avatar Chromium can draw)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_converse_shows_a_pep_avatar_and_sends_a_file_by_http_upload(browser, pages, xmpp_server):
    """A slixmpp user publishes an avatar by PEP (XEP-0084); Converse.js, opening a chat with that user,
    draws that very picture (the server keeps the vCard's PHOTO in step with PEP, XEP-0398, and Converse
    reads the vCard).  Then a file chosen in Converse's file input goes up by HTTP upload (XEP-0363: slot
    from upload.localhost, PUT from the browser across origins) and reaches the slixmpp user as a message
    whose body is the GET URL, which serves the same bytes."""
    directory, log = browser
    if xmpp_server.name != "bridge":
        pytest.skip("the Prosody reference runs no PEP avatar sync nor upload service")
    converse_jid = USERS["files-converse"]
    peer_jid = USERS["files-peer"]
    picture = png(8, 8, (200, 40, 90))
    document = b"%PDF-1.4 a document sent from Converse\n" + os.urandom(4096)

    async def scenario():
        async with Driver(str(directory), log) as driver:
            peer = await harness.login(peer_jid, PASSWORDS[support.bare(peer_jid)], xmpp_server.c2s_port,
                                       plugins={"xep_0030": {}, "xep_0060": {}, "xep_0084": {}})

            async def scene():
                try:
                    avatar = peer.plugin["xep_0084"]
                    await avatar.publish_avatar(picture, timeout=support.TIMEOUT)
                    await avatar.publish_avatar_metadata(
                        {"id": avatar.generate_id(picture), "type": "image/png", "bytes": len(picture)},
                        timeout=support.TIMEOUT)
                    await driver.open("converse", pages.url("converse.html?" + urlencode(
                        {"websocket": xmpp_server.websocket_url})))
                    full_jid = await converse_login(driver, converse_jid)
                    await driver.call("converse", "openChat", peer.boundjid.bare)
                    drawn = base64.b64encode(picture).decode("ascii")
                    await driver.request("waitAttached", target="converse",
                                         selector=f'converse-chat[jid="{peer.boundjid.bare}"] svg.avatar '
                                                  f'image[href="data:image/png;base64,{drawn}"]',
                                         timeout=int(support.TIMEOUT * 1000))

                    await driver.request("chooseFile", target="converse",
                                         selector=f'converse-chat[jid="{peer.boundjid.bare}"] input.fileupload',
                                         name="report.pdf", mimeType="application/pdf",
                                         base64=base64.b64encode(document).decode("ascii"))
                    message = await harness.next_item(
                        peer.messages, lambda m: str(m["from"]) == full_jid and m["body"].startswith("http"),
                        timeout=support.TIMEOUT, what="the upload's URL from Converse")
                    received.append(message["body"])
                finally:
                    await peer.close()

            await run_with_screenshots(driver, directory, ["converse"], scene())

    received = []
    asyncio.run(asyncio.wait_for(scenario(), 60))
    url = received[0]
    assert urlsplit(url).path.startswith("/upload/") and url.endswith("/report.pdf"), url
    with urllib.request.urlopen(url, timeout=support.TIMEOUT) as response:
        assert (response.headers["Content-Type"], response.read()) == ("application/pdf", document)


@pytest.mark.skipif(os.environ.get("BROWSER_TEST_SERVER", "bridge") != "bridge",
                    reason="the reference Prosody of these tests serves no chat rooms")
def test_converse_talks_in_a_room_with_slixmpp(browser, pages, xmpp_server):
    """A slixmpp user creates a chat room (XEP-0045) and Converse.js in Chromium, over WebSocket, enters
    it under a nickname; a message typed in Converse's room view reaches the slixmpp occupant as
    groupchat from Converse's occupant JID, and the slixmpp occupant's message is displayed in
    Converse's room view."""
    from .test_muc import create

    directory, log = browser
    converse_jid = USERS["converse-websocket"]
    peer_jid = USERS["peer-websocket"]
    room = "browsers@conference.localhost"

    async def scenario():
        async with Driver(str(directory), log) as driver:
            peer = SlixAgent("peer", peer_jid, PASSWORDS[support.bare(peer_jid)], xmpp_server.c2s_port)

            async def scene():
                try:
                    await peer.login()
                    for plugin in ("xep_0030", "xep_0004", "xep_0045"):
                        peer.client.register_plugin(plugin)
                    await create(peer.client, room, "Slix")
                    await driver.open("converse", pages.url("converse.html?" + urlencode(
                        {"websocket": xmpp_server.websocket_url})))
                    await converse_login(driver, converse_jid)
                    await driver.call("converse", "openRoom", room, "Conv", int(support.TIMEOUT * 1000))

                    typed = "typed in Converse's room view"
                    textarea = f'converse-muc[jid="{room}"] textarea.chat-textarea'
                    await driver.request("fill", target="converse", selector=textarea, text=typed)
                    await driver.request("press", target="converse", selector=textarea, key="Enter")
                    await peer.wait_all([{"kind": "message", "from": f"{room}/Conv", "type": "groupchat",
                                          "body": typed}])

                    answer = "slixmpp answers in the room"
                    peer.client.send_message(mto=room, mbody=answer, mtype="groupchat")
                    shown = await driver.request("waitVisible", target="converse",
                                                 selector=f'converse-muc[jid="{room}"] .chat-msg__text',
                                                 text=answer, timeout=int(support.TIMEOUT * 1000))
                    assert answer in shown
                finally:
                    await peer.disconnect()

            await run_with_screenshots(driver, directory, ["converse"], scene())

    asyncio.run(asyncio.wait_for(scenario(), 90))

"""The SIP gateway end to end: the real bridge process with [sip] enabled on loopback, driven by sipp
(Debian package sip-tester; scenarios in tests/integration/sipp/) and by a raw UDP socket."""

import hashlib
import os
import re
import shutil
import socket
import subprocess
import uuid

import asyncio

import pytest

from .harness import Clients, next_item

SIPP = shutil.which("sipp")
SCENARIOS = os.path.join(os.path.dirname(__file__), "sipp")
USERS = ("alice@localhost", "bob@localhost", "carol@localhost")

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is missing (Debian package sip-tester, "
                                                     ".ci/install-test-peers)")

SIP_SECTION = """
[sip]
enabled = true
udp_endpoints = ["udp:0:interface=127.0.0.1"]
tcp_endpoints = ["tcp:0:interface=127.0.0.1"]
tls_endpoints = ["tcp:0:interface=127.0.0.1"]
advertised_address = "127.0.0.1"
"""  # the rest, digest_algorithms among it, on the embedded defaults


@pytest.fixture(scope="module")
def bridge(start_server):
    """bridge with the SIP gateway on kernel-chosen loopback ports (in ``sip_ports`` by listener kind)."""
    return start_server("sip", USERS, sip=SIP_SECTION, wait_for=("c2s", "sip-udp", "sip-tcp", "sip-tls"))


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sipp(bridge, tmp_path, scenario, user="alice", password=None, transport="u1", auth_uri="localhost",
         local_port=None, keys=()):
    """Run one call of ``scenario`` against the bridge; (exit status, output, log actions' text).

    ``auth_uri``: the digest uri sipp answers with (sipp's default would be the bridge's address);
    ``local_port``: sipp's port, by default a free one; ``keys``: (keyword, value) pairs, the
    scenario's [keyword]s."""
    port = bridge.sip_ports["sip-udp" if transport == "u1" else "sip-tcp"]
    log_file = tmp_path / f"{scenario}.log"
    command = [SIPP, f"127.0.0.1:{port}", "-sf", os.path.join(SCENARIOS, f"{scenario}.xml"), "-m", "1",
               "-i", "127.0.0.1", "-p", str(local_port or free_port()), "-t", transport, "-s", user, "-au", user,
               "-ap", password or bridge.password(f"{user}@localhost"), "-nostdin", "-timeout", "20s",
               "-timeout_error", "-trace_err", "-error_file", str(tmp_path / f"{scenario}.errors"),
               "-trace_logs", "-log_file", str(log_file)]
    command += ["-auth_uri", auth_uri]
    for keyword, value in keys:
        command += ["-key", keyword, value]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    errors = tmp_path / f"{scenario}.errors"
    output = done.stdout[-3000:] + done.stderr + (errors.read_text() if errors.exists() else "")
    logged = log_file.read_text() if log_file.exists() else ""
    return done.returncode, output, logged


def test_register_with_digest(bridge, tmp_path):
    """sipp registers alice with her XMPP password (401 challenge, then 200 listing her contact with
    expires), and un-registers with Contact: * (challenged again, then 200)."""
    status, output, _ = sipp(bridge, tmp_path, "register_digest")
    assert status == 0, output + bridge.tail(30)
    assert any("alice@localhost: 1 contact(s) bound" in line for line in bridge.lines), bridge.tail(30)


def test_register_over_tcp(bridge, tmp_path):
    """The same registration over a TCP connection (Content-Length framing)."""
    status, output, _ = sipp(bridge, tmp_path, "register_digest", user="bob", transport="t1")
    assert status == 0, output + bridge.tail(30)


def test_wrong_password_refused(bridge, tmp_path):
    """A digest answer computed with a wrong password gets 403 Forbidden."""
    status, output, _ = sipp(bridge, tmp_path, "wrong_password", password="not-the-password")
    assert status == 0, output + bridge.tail(30)


def test_options_answered(bridge, tmp_path):
    """OPTIONS gets 200 with Allow (REGISTER among the methods) and Accept."""
    status, output, _ = sipp(bridge, tmp_path, "options")
    assert status == 0, output + bridge.tail(30)


def test_malformed_request_answered_400(bridge, tmp_path):
    """A request with a malformed header gets 400; the next request on the same socket gets 200."""
    status, output, _ = sipp(bridge, tmp_path, "malformed")
    assert status == 0, output + bridge.tail(30)


def test_message_round_trip_with_xmpp(bridge, tmp_path):
    """sipp registers alice and sends MESSAGE (digest) to bob@localhost on slixmpp: 202, and bob gets
    it from alice@localhost; bob answers (same thread), alice has no XMPP session, so the answer goes
    to her SIP binding as MESSAGE, which sipp receives and answers 200."""

    port = free_port()
    status, output, _ = sipp(bridge, tmp_path, "message_register", local_port=port)
    assert status == 0, output + bridge.tail(30)

    async def scenario():
        async with Clients(bridge) as clients:
            bob = await clients.login("bob@localhost/pc")
            run = asyncio.ensure_future(asyncio.to_thread(sipp, bridge, tmp_path, "message_roundtrip",
                                                          auth_uri="bob@localhost", local_port=port,
                                                          keys=[("peer", "bob")]))
            message = await next_item(bob.messages, lambda m: m["body"], timeout=20, what="alice's MESSAGE")
            assert message["from"].bare == "alice@localhost"
            assert message["body"].strip() == "hello bob, from sipp"
            reply = message.reply("hello alice, from XMPP")
            reply["thread"] = message["thread"]
            reply.send()
            return await run

    status, output, logged = asyncio.run(scenario())
    assert status == 0, output + bridge.tail(40)
    assert "reply from=sip:bob@localhost body=hello alice, from XMPP" in logged, logged


def test_message_over_tcp_after_the_phone_connection_closed(bridge, tmp_path):
    """Over TCP: sipp registers bob from its port and exits, closing that connection; a second sipp
    on the same port sends MESSAGE to alice on slixmpp (202), alice answers in the thread, bob has
    no XMPP session, so the bridge opens a new connection to bob's Contact and delivers it as
    MESSAGE, which sipp answers 200."""

    port = free_port(socket.SOCK_STREAM)
    status, output, _ = sipp(bridge, tmp_path, "message_register", user="bob", transport="t1", local_port=port)
    assert status == 0, output + bridge.tail(30)

    async def scenario():
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@localhost/pc")
            run = asyncio.ensure_future(asyncio.to_thread(sipp, bridge, tmp_path, "message_roundtrip",
                                                          user="bob", transport="t1", auth_uri="alice@localhost",
                                                          local_port=port, keys=[("peer", "alice")]))
            message = await next_item(alice.messages, lambda m: m["body"], timeout=20, what="bob's MESSAGE")
            assert message["from"].bare == "bob@localhost"
            reply = message.reply("hello bob, from XMPP")
            reply["thread"] = message["thread"]
            reply.send()
            return await run

    status, output, logged = asyncio.run(scenario())
    assert status == 0, output + bridge.tail(40)
    assert "reply from=sip:alice@localhost body=hello bob, from XMPP" in logged, logged
    assert any(f"new TCP connection to sip:bob@127.0.0.1:{port}" in line for line in bridge.lines), bridge.tail(40)


def test_message_to_user_who_blocked_the_sender(bridge, tmp_path):
    """carol blocked alice (XEP-0191): alice's MESSAGE from sipp is answered 503, not 202, and never
    reaches carol, whose next message is one bob sends afterwards."""

    async def scenario():
        async with Clients(bridge) as clients:
            carol = await clients.login("carol@localhost/pc")
            bob = await clients.login("bob@localhost/desk")
            reply = await carol.query("set", None, "<block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block>")
            assert reply["type"] == "result", reply
            outcome = await asyncio.to_thread(sipp, bridge, tmp_path, "message_blocked", auth_uri="carol@localhost")
            bob.send_message(mto="carol@localhost", mbody="after the blocked one", mtype="chat")
            message = await next_item(carol.messages, lambda m: m["body"], timeout=20, what="bob's message")
            return outcome, message

    (status, output, _), message = asyncio.run(scenario())
    assert status == 0, output + bridge.tail(30)
    assert (message["from"].bare, message["body"]) == ("bob@localhost", "after the blocked one"), message


# -- a raw UDP socket, for what sipp cannot check byte for byte ------------------
# (sipp takes an identical response to a repeated request for a retransmitted response and holds
# it back, so a retransmission is checked here, comparing the two answers' bytes.)

def udp_exchange(sock, port, data):
    sock.sendto(data, ("127.0.0.1", port))
    return sock.recvfrom(65535)[0]


def register_text(port, cseq, branch, call_id, auth=""):
    local = 5060
    return (f"REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=raw\r\nTo: <sip:alice@localhost>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@127.0.0.1:{port}>\r\n"
            f"Expires: 120\r\n{auth}Content-Length: 0\r\n\r\n").encode()


def md5_authorization(password, nonce, method="REGISTER", uri="sip:localhost"):
    """The Authorization header line of alice's ``method`` to ``uri`` answering an MD5 challenge (qop=auth)."""
    ha1 = hashlib.md5(f"alice:localhost:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:00000001:abc:auth:{ha2}".encode()).hexdigest()
    return (f'Authorization: Digest username="alice", realm="localhost", nonce="{nonce}", '
            f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc=00000001, '
            f'cnonce="abc"\r\n')


def register_authorization(challenge, password):
    """The Authorization header line of alice's REGISTER to sip:localhost answering the 401 ``challenge``
    (its text)."""
    return md5_authorization(password, re.search(r'nonce="([^"]+)", algorithm=MD5', challenge).group(1))


def test_retransmitted_authenticated_register_handled_once(bridge):
    """An authenticated REGISTER sent twice gets byte-identical 200s; handled twice, the second
    would reuse a nonce count and be challenged (401).  Responses follow rport to the source port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.bind(("127.0.0.1", 0))
        port = bridge.sip_ports["sip-udp"]
        call_id = f"{uuid.uuid4()}@127.0.0.1"
        challenge = udp_exchange(sock, port, register_text(port, 1, "z9hG4bK-raw-1", call_id)).decode()
        assert challenge.startswith("SIP/2.0 401 "), challenge
        assert f"rport={sock.getsockname()[1]}" in challenge, challenge
        auth = register_authorization(challenge, bridge.password("alice@localhost"))
        request = register_text(port, 2, "z9hG4bK-raw-2", call_id, auth)
        first = udp_exchange(sock, port, request)
        second = udp_exchange(sock, port, request)
        assert first.startswith(b"SIP/2.0 200 "), first
        assert second == first


def test_simple_subscribe_gets_notify_with_pidf(bridge, tmp_path):
    """sipp SUBSCRIBEs (Event: presence, digest) to alice's own presence: 200 with Expires, then a NOTIFY
    with Subscription-State active and a PIDF body, which sipp answers 200.  (-auth_uri names the
    Request-URI, sip:alice@localhost, which the digest uri must equal.)"""
    log_file = tmp_path / "simple_subscribe.log"
    command = [SIPP, f"127.0.0.1:{bridge.sip_ports['sip-udp']}", "-sf", os.path.join(SCENARIOS, "simple_subscribe.xml"),
               "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()), "-t", "u1", "-s", "alice", "-au", "alice",
               "-ap", bridge.password("alice@localhost"), "-auth_uri", "alice@localhost", "-nostdin", "-timeout", "20s",
               "-timeout_error",
               "-trace_err", "-error_file", str(tmp_path / "simple_subscribe.errors"),
               "-trace_logs", "-log_file", str(log_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    errors = tmp_path / "simple_subscribe.errors"
    output = done.stdout[-3000:] + done.stderr + (errors.read_text() if errors.exists() else "")
    assert done.returncode == 0, output + bridge.tail(30)
    logged = log_file.read_text() if log_file.exists() else ""
    assert re.search(r"notify active;expires=\d+ <basic>(open|closed)</basic>", logged), logged


# -- SIMPLE presence between sipp and slixmpp -------------------------------------

def sipp_simple(bridge, tmp_path, scenario, auth_uri, user="alice"):
    """Run ``scenario`` once as ``user`` over UDP; (exit status, output, log actions' text)."""
    log_file = tmp_path / f"{scenario}.log"
    errors = tmp_path / f"{scenario}.errors"
    command = [SIPP, f"127.0.0.1:{bridge.sip_ports['sip-udp']}", "-sf", os.path.join(SCENARIOS, f"{scenario}.xml"),
               "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()), "-t", "u1", "-s", user, "-au", user,
               "-ap", bridge.password(f"{user}@localhost"), "-auth_uri", auth_uri, "-nostdin",
               "-timeout", "30s", "-timeout_error", "-trace_err", "-error_file", str(errors),
               "-trace_logs", "-log_file", str(log_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=str(tmp_path))
    output = done.stdout[-3000:] + done.stderr + (errors.read_text() if errors.exists() else "")
    return done.returncode, output, log_file.read_text() if log_file.exists() else ""


async def make_friends(alice, bob):
    """A mutual subscription between alice and bob, unless an earlier test made it already."""
    from .harness import befriend

    # The clients fetched their rosters at login.
    if alice.client_roster[bob.boundjid.bare]["subscription"] != "both":
        await befriend(alice, bob)


def test_publish_seen_as_presence_by_xmpp_contact(bridge, tmp_path):
    """alice and bob are mutual contacts (set up on XMPP); sipp as alice PUBLISHes PIDF (open, note "in
    a meeting", RPID meeting) with digest: bob, on slixmpp, gets presence from alice@localhost/sip with
    show dnd and that status.  sipp then removes the publication (SIP-If-Match, Expires: 0) and bob gets
    unavailable from alice@localhost/sip."""

    async def scenario():
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@localhost/pc")
            bob = await clients.login("bob@localhost/pc")
            await make_friends(alice, bob)
            await alice.close()
            run = asyncio.ensure_future(asyncio.to_thread(sipp_simple, bridge, tmp_path, "simple_publish",
                                                          "alice@localhost"))
            from_sip = lambda p: str(p["from"]) == "alice@localhost/sip"  # noqa: E731
            published = await next_item(bob.presences, lambda p: from_sip(p) and p["type"] != "unavailable",
                                        timeout=20, what="alice's published presence")
            assert published["show"] == "dnd", published
            assert published["status"] == "in a meeting", published
            removed = await next_item(bob.presences, lambda p: from_sip(p) and p["type"] == "unavailable",
                                      timeout=20, what="alice's publication removed")
            return (await run), removed

    (status, output, logged), _ = asyncio.run(scenario())
    assert status == 0, output + bridge.tail(40)
    assert re.search(r"published etag=[0-9a-f]+", logged), logged
    assert "removed expires=0" in logged, logged


def test_xmpp_presence_change_seen_as_notify(bridge, tmp_path):
    """sipp as alice SUBSCRIBEs to bob@localhost, authorised by bob's roster (subscription both, set up
    on XMPP): 200 and a NOTIFY with PIDF open.  bob, on slixmpp, then sends <show>away</show> with a
    status: a second NOTIFY carries <rpid:away/> and the status as the note."""

    async def scenario():
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@localhost/pc")
            bob = await clients.login("bob@localhost/pc")
            await make_friends(alice, bob)
            await alice.close()
            start = len(bridge.lines)
            run = asyncio.ensure_future(asyncio.to_thread(sipp_simple, bridge, tmp_path, "simple_watch",
                                                          "bob@localhost"))
            wanted = "SIP alice@localhost subscribed to the presence of bob@localhost: active"
            deadline = asyncio.get_running_loop().time() + 20
            while not any(wanted in line for line in bridge.lines[start:]):
                assert not run.done(), (await run)[1] + bridge.tail(30)
                assert asyncio.get_running_loop().time() < deadline, bridge.tail(30)
                await asyncio.sleep(0.05)
            bob.send_presence(pshow="away", pstatus="out for lunch")
            return await run

    status, output, logged = asyncio.run(scenario())
    assert status == 0, output + bridge.tail(40)
    assert re.search(r"first notify active;expires=\d+ <basic>open</basic>", logged), logged
    assert "second notify" in logged and "<rpid:away/> <note>out for lunch</note>" in logged, logged


def test_phone_posts_to_a_room_and_receives_its_messages(bridge, tmp_path):
    """bob creates a chat room on slixmpp; sipp registers alice and sends MESSAGE to the room's SIP
    address (202): alice joins as the occupant 'alice' and bob reads her text from room/alice; bob
    answers in the room (same thread), and the room's message reaches alice's binding as MESSAGE from
    the room's address with bob's nick as display name, which sipp answers 200."""
    from .test_muc import MUC_PLUGINS, create

    room = "phones@conference.localhost"
    port = free_port()
    status, output, _ = sipp(bridge, tmp_path, "message_register", local_port=port)
    assert status == 0, output + bridge.tail(30)

    async def scenario():
        async with Clients(bridge) as clients:
            bob = await clients.login("bob@localhost/room", plugins=MUC_PLUGINS)
            await create(bob, room, "Bob")
            run = asyncio.ensure_future(asyncio.to_thread(sipp, bridge, tmp_path, "room_post",
                                                          auth_uri=room, local_port=port,
                                                          keys=[("room", "phones")]))
            heard = await next_item(bob.messages, lambda m: m["body"].strip() == "hello room, from sipp", timeout=20,
                                    what="alice's MESSAGE in the room")
            assert str(heard["from"]) == f"{room}/alice"
            assert heard["type"] == "groupchat"
            answer = bob.make_message(mto=room, mbody="hello alice, from the room", mtype="groupchat")
            answer["thread"] = heard["thread"]
            answer.send()
            return await run

    status, output, logged = asyncio.run(scenario())
    assert status == 0, output + bridge.tail(40)
    assert 'room message from="Bob" <sip:phones@conference.localhost> body=hello alice, from the room' in logged, \
        logged

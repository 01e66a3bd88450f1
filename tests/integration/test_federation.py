"""Federation (RFC 6120 server-to-server streams): bridge with a real Prosody, and two bridges.

Every server has a loopback address of its own and its s2s listener on port
5269 there (Prosody reaches a.test on that fixed port): in a 127.X.Y.0/24
block drawn for the run, bridge a.test on .2, Prosody b.test on .3, bridge
c.test on .4; nothing listens on .5 (a peer that is down) and a mute socket
on .6 (a silent peer).  bridge finds its peers by ``static_routes``, Prosody
by a hosts file read by libunbound (see ``federation.py``).  Certificates
come from a CA made for the test run, which every server trusts.
"""

import asyncio
import socket
import time
from types import SimpleNamespace

import pytest

from tests.pki import CertificateAuthority, self_signed

from .federation import (CONNECT_TIMEOUT, S2S_PORT, ProsodyProcess, logged, loopback_block,
                         prosody_available, start_bridge, wait_logged)
from .harness import (NS_STREAMS, Clients, error_condition, next_item, parse_stream_document,
                      stream_error_conditions, subscription_of)

TIMEOUT = 10.0

needs_prosody = pytest.mark.skipif(not prosody_available(),
                                   reason="the prosody and prosodyctl binaries are not installed "
                                          "(apt-get install -y prosody)")


def password_for(jid):
    user, host = jid.split("@")
    return f"{user}-federation-{host}"


def accounts_for(*jids):
    return {jid: password_for(jid) for jid in jids}


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority(tmp_path_factory.mktemp("federation-ca"))


@pytest.fixture(scope="module")
def net():
    """The addresses of the run: a (bridge a.test), b (Prosody b.test), c (bridge c.test), down
    (nothing listens), silent (a mute socket); ``routes``: every domain to its address:5269."""
    a, b, c, down, silent = loopback_block(5)
    names = {"a.test": a, "b.test": b, "c.test": c, "down.test": down, "silent.test": silent}
    return SimpleNamespace(a=a, b=b, c=c, down=down, silent=silent,
                           routes={name: f"{address}:{S2S_PORT}" for name, address in names.items()})


@pytest.fixture
def servers(request, tmp_path, ca, net):
    """Starts servers for one test; stops them all at its end, printing their logs if it failed.

    ``bridge(domain, ...)`` and ``prosody(domain, ...)`` serve ``domain`` on its address of ``net``.
    """
    started = []

    class Servers:
        def bridge(self, domain, jids, dialback=True, s2s_options=""):
            certificate, key = ca.issue(tmp_path / f"certs-{domain}", [domain])
            address = net.routes[domain].rpartition(":")[0]
            peers = {name: target for name, target in net.routes.items() if name != domain}
            process = start_bridge(tmp_path / f"bridge-{domain}", domain, address, accounts_for(*jids),
                                   certificate=certificate, private_key=key, ca_file=ca.ca_file, routes=peers,
                                   dialback=dialback, s2s_options=s2s_options)
            started.append(process)
            return process

        def prosody(self, domain, jids, secure_auth=True, wrong_certificate=False):
            directory = tmp_path / f"prosody-{domain}"
            address = net.routes[domain].rpartition(":")[0]
            # Prosody finds bridge a.test through its hosts file.
            hosts = {"a.test": net.a}
            if wrong_certificate:
                certificate, key = self_signed(tmp_path / f"self-signed-{domain}", [domain])
            else:
                certificate, key = ca.issue(tmp_path / f"certs-{domain}", [domain])
            process = ProsodyProcess(directory, domain, address, certificate, key, ca.ca_file, hosts,
                                     accounts_for(*jids), secure_auth=secure_auth)
            started.append(process)
            return process.start()

    yield Servers()
    report = getattr(request.node, "report_call", None)
    for process in reversed(started):
        process.stop()
    if report is not None and report.failed:
        for process in started:
            print(f"--- log of {process.command[0]} ({process.log_path}) ---")
            print(process.tail(count=120))


def is_available(presence, sender):
    return presence.xml.get("type") is None and presence["from"] == sender


async def subscribe_both_ways(a, b):
    """Mutual subscription of two online clients on different servers, checked step by step.

    Each request reaches the contact, each approval reaches the requester with the contact's
    current presence, and both rosters end with subscription 'both'.
    """
    for requester, contact in ((a, b), (b, a)):
        requester_bare, contact_bare = requester.boundjid.bare, contact.boundjid.bare
        requester.send_presence(pto=contact_bare, ptype="subscribe")
        await next_item(contact.presences, lambda p: p["type"] == "subscribe" and p["from"].bare == requester_bare,
                        timeout=TIMEOUT, what=f"subscription request from {requester_bare} at {contact_bare}")
        contact.send_presence(pto=requester_bare, ptype="subscribed")
        await collect_all(requester.presences, {
            "subscribed": lambda p: p["type"] == "subscribed" and p["from"].bare == contact_bare,
            "presence": lambda p: is_available(p, contact.boundjid.full),
        }, what=f"approval and presence of {contact_bare} at {requester_bare}")
    for client, contact in ((a, b), (b, a)):
        await next_item(client.roster_pushes, lambda iq: subscription_of(iq, contact.boundjid.bare) == "both",
                        timeout=TIMEOUT, what=f"roster push of {contact.boundjid.bare} with subscription 'both'")


async def collect_all(source, wanted, timeout=TIMEOUT, what="stanzas"):
    """Read a queue until every predicate of ``wanted`` matched an item, in any order."""
    found, received = {}, []

    async def scan():
        while len(found) < len(wanted):
            item = await source.get()
            received.append(item)
            for name, predicate in wanted.items():
                if name not in found and predicate(item):
                    found[name] = item
                    break

    try:
        await asyncio.wait_for(scan(), timeout)
    except asyncio.TimeoutError:
        missing = ", ".join(name for name in wanted if name not in found)
        shown = "\n".join(str(item) for item in received[-10:])
        raise AssertionError(f"{what}: not received within {timeout}s: {missing}; received:\n{shown}") from None
    return found


async def check_presence_update(sender, receiver, status):
    """A new presence of ``sender`` (broadcast, no 'to') reaches its contact ``receiver``."""
    sender.send_presence(pstatus=status, pshow="away")
    presence = await next_item(receiver.presences,
                               lambda p: p["from"] == sender.boundjid.full and p["status"] == status,
                               timeout=TIMEOUT, what=f"presence '{status}' of {sender.boundjid.full}")
    assert presence["show"] == "away"
    assert presence["to"].bare == receiver.boundjid.bare


async def check_chat(sender, receiver, body):
    """A chat message to the bare JID of a contact on the other server arrives intact."""
    sender.send_message(mto=receiver.boundjid.bare, mbody=body, mtype="chat")
    message = await next_item(receiver.messages, lambda m: m["body"] == body, timeout=TIMEOUT,
                              what=f"message {body!r} from {sender.boundjid.full}")
    assert message["from"] == sender.boundjid.full
    assert message["to"].bare == receiver.boundjid.bare
    assert message["type"] == "chat"


async def check_server_ping(client, domain):
    """An IQ to the other server is answered across the link (a result, not an error)."""
    reply = await client.query("get", domain, "<ping xmlns='urn:xmpp:ping'/>", timeout=TIMEOUT)
    assert reply["type"] == "result", f"ping of {domain} from {client.boundjid.full}: {reply}"
    assert reply["from"] == domain


async def check_unknown_account(client, jid):
    """A message to an account the other server does not have comes back as an error from it."""
    client.send_message(mto=jid, mbody="is anyone there?", mtype="chat")
    error = await next_item(client.message_errors, lambda e: e["from"].bare == jid, timeout=TIMEOUT,
                            what=f"error from {jid}")
    assert error_condition(error) in ("service-unavailable", "item-not-found"), error


async def check_probe(clients, contact, jid, password, port):
    """A new session of a subscribed user probes its contact on the other server and receives
    the contact's current presence."""
    second = await clients.login(jid, password, port=port)
    await next_item(second.presences, lambda p: is_available(p, contact.boundjid.full), timeout=TIMEOUT,
                    what=f"{contact.boundjid.full}'s presence at {jid} (answer to its probe)")
    await second.close()


async def federate(clients, alice, bob, bob_port, tag):
    """Subscriptions, presence, probes, chat, IQs and errors, each in both directions."""
    await subscribe_both_ways(alice, bob)
    await check_presence_update(alice, bob, f"alice away ({tag})")
    await check_presence_update(bob, alice, f"bob away ({tag})")
    await check_chat(alice, bob, f"hello bob, from alice ({tag})")
    await check_chat(bob, alice, f"hello alice, from bob ({tag})")
    await check_server_ping(alice, bob.boundjid.domain)
    await check_server_ping(bob, alice.boundjid.domain)
    await check_unknown_account(alice, f"nobody@{bob.boundjid.domain}")
    await check_unknown_account(bob, f"nobody@{alice.boundjid.domain}")
    await check_probe(clients, bob, f"{alice.boundjid.bare}/second", password_for(alice.boundjid.bare),
                      clients.server.port)
    await check_probe(clients, alice, f"{bob.boundjid.bare}/second", password_for(bob.boundjid.bare), bob_port)


@needs_prosody
def test_bridge_and_prosody_federate_with_certificates(servers):
    """bridge (a.test) and Prosody (b.test), each with a certificate of the test CA and Prosody
    requiring authenticated peers (s2s_secure_auth): alice@a.test and bob@b.test subscribe to each
    other in both directions, each sees the other's presence (at approval, when it changes, and
    in answer to the probe of a new session), chat messages go both ways with their addresses
    intact, each pings the other's server and gets an error for an unknown account there.  Both
    links are authenticated by SASL EXTERNAL, never by dialback: bridge's (bridge log) and
    Prosody's (Prosody log).

    Prosody 0.12 offers ALPN "xmpp-server" in the ClientHello of its STARTTLS; bridge's TLS
    server must complete that handshake (without selecting a protocol) or Prosody's link, and
    so everything bob sends, fails."""
    bridge = servers.bridge("a.test", ["alice@a.test"])
    prosody = servers.prosody("b.test", ["bob@b.test"])

    async def scenario():
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@a.test/pc")
            bob = await clients.login("bob@b.test/phone", password_for("bob@b.test"), port=prosody.port)
            await federate(clients, alice, bob, prosody.port, "prosody")

    asyncio.run(scenario())
    wait_logged(bridge, r"link a\.test -> b\.test ready \(SASL EXTERNAL\)", what="the SASL EXTERNAL link")
    assert not logged(bridge, r"dialback"), "\n".join(logged(bridge, r"dialback"))
    # Prosody 0.12's own words (debug level) for its outgoing link and for bridge's incoming one.
    wait_logged(prosody, r"Outgoing s2s connection b\.test->a\.test complete", what="Prosody's link")
    wait_logged(prosody, r"Sending\[s2sout_unauthed\]: <auth [^>]*mechanism='EXTERNAL'",
                what="Prosody's SASL EXTERNAL")
    wait_logged(prosody, r"Accepting SASL EXTERNAL identity from a\.test", what="bridge's SASL EXTERNAL")


@needs_prosody
def test_wrong_peer_certificate_without_dialback_is_refused(servers):
    """Prosody (b.test) presents a self-signed certificate and bridge has dialback off: the link
    is refused because of the certificate, and alice's message to bob@b.test comes back to her as
    an error from bob's address (remote-server-not-found or remote-server-timeout)."""
    bridge = servers.bridge("a.test", ["alice@a.test"], dialback=False)
    servers.prosody("b.test", ["bob@b.test"], secure_auth=False, wrong_certificate=True)

    async def scenario():
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@a.test/pc")
            alice.send_message(mto="bob@b.test", mbody="will you get this?", mtype="chat")
            error = await next_item(alice.message_errors, timeout=TIMEOUT, what="bounce of the message to bob@b.test")
            assert error["from"].bare == "bob@b.test"
            assert error_condition(error) in ("remote-server-not-found", "remote-server-timeout"), error
            assert alice.messages.empty()

    asyncio.run(scenario())
    wait_logged(bridge, r"link a\.test -> b\.test failed: untrusted certificate", what="the refusal")
    assert not logged(bridge, r"link a\.test -> b\.test ready")


@needs_prosody
def test_wrong_peer_certificate_is_not_used_by_default(servers):
    """Prosody (b.test) presents a self-signed certificate and allows dialback, bridge has dialback on
    but b.test is not in dialback_fallback_domains: bridge does not use its link to b.test (alice's
    message comes back as an error, the refusal naming the option is logged), while Prosody's own link
    to bridge, authenticated by dialback, still carries bob's message to alice."""
    bridge = servers.bridge("a.test", ["alice@a.test"], dialback=True)
    prosody = servers.prosody("b.test", ["bob@b.test"], secure_auth=False, wrong_certificate=True)

    async def scenario():
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@a.test/pc")
            bob = await clients.login("bob@b.test/phone", password_for("bob@b.test"), port=prosody.port)
            alice.send_message(mto="bob@b.test", mbody="will you get this?", mtype="chat")
            error = await next_item(alice.message_errors, timeout=TIMEOUT, what="bounce of the message to bob@b.test")
            assert error_condition(error) in ("remote-server-not-found", "remote-server-timeout"), error
            await check_chat(bob, alice, "only this way")

    asyncio.run(scenario())
    wait_logged(bridge, r"link a\.test -> b\.test failed: untrusted certificate.*dialback_fallback_domains",
                what="the refusal")
    assert not logged(bridge, r"link a\.test -> b\.test ready")


@needs_prosody
def test_wrong_peer_certificate_downgrades_to_dialback(servers):
    """Prosody (b.test) presents a self-signed certificate and allows dialback
    (s2s_secure_auth = false), bridge has dialback on and b.test in dialback_fallback_domains: bridge's
    link is authenticated by dialback (logged 'link a.test -> b.test ready (dialback)') and alice's
    message reaches bob; bob's answer comes back over Prosody's own link, which bridge authenticates
    by dialback too."""
    bridge = servers.bridge("a.test", ["alice@a.test"], dialback=True,
                            s2s_options='dialback_fallback_domains = ["b.test"]')
    prosody = servers.prosody("b.test", ["bob@b.test"], secure_auth=False, wrong_certificate=True)

    async def scenario():
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@a.test/pc")
            bob = await clients.login("bob@b.test/phone", password_for("bob@b.test"), port=prosody.port)
            await check_chat(alice, bob, "over dialback")
            await check_chat(bob, alice, "back over dialback")
            assert alice.message_errors.empty() and bob.message_errors.empty()

    asyncio.run(scenario())
    wait_logged(bridge, r"link a\.test -> b\.test ready \(dialback\)", what="the dialback link")
    wait_logged(bridge, r"b\.test authenticated by dialback", what="Prosody's link authenticated by dialback")


def test_two_bridges_federate(servers):
    """Two bridge processes, a.test and c.test (each on an address of its own), with static routes to each
    other and certificates of the test CA: subscriptions, presence (changes and probes), chat,
    server pings and errors for unknown accounts work both ways, and both outgoing links are
    authenticated by SASL EXTERNAL."""
    a = servers.bridge("a.test", ["alice@a.test"])
    c = servers.bridge("c.test", ["carol@c.test"])

    async def scenario():
        async with Clients(a) as clients:
            alice = await clients.login("alice@a.test/pc")
            carol = await clients.login("carol@c.test/laptop", password_for("carol@c.test"), port=c.port)
            await federate(clients, alice, carol, c.port, "bridge")

    asyncio.run(scenario())
    wait_logged(a, r"link a\.test -> c\.test ready \(SASL EXTERNAL\)", what="a.test's link")
    wait_logged(c, r"link c\.test -> a\.test ready \(SASL EXTERNAL\)", what="c.test's link")


def test_peer_down_bounces_promptly(servers):
    """A message to a domain whose static route names an address where nothing listens comes
    back at once (well within the connect timeout) as remote-server-not-found, from the
    recipient's address; a second message, sent after the failure, is bounced the same way."""
    bridge = servers.bridge("a.test", ["alice@a.test"])

    async def scenario():
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@a.test/pc")
            for attempt in range(2):
                started = time.monotonic()
                alice.send_message(mto="nobody@down.test", mbody=f"anyone there? {attempt}", mtype="chat")
                error = await next_item(alice.message_errors, timeout=TIMEOUT, what="bounce from down.test")
                elapsed = time.monotonic() - started
                assert error["from"].bare == "nobody@down.test"
                assert error_condition(error) == "remote-server-not-found", error
                assert elapsed < 3, f"bounced after {elapsed:.1f}s"

    asyncio.run(scenario())
    wait_logged(bridge, r"cannot reach down\.test", what="the failed link")


def test_silent_peer_bounces_with_timeout(servers, net):
    """A peer that accepts the TCP connection but never says a word (a listening socket that
    nobody reads): the message is bounced with remote-server-timeout once the negotiation has
    taken longer than the configured timeout (connect_timeout_seconds = 5 here), not held until
    the idle timeout (600 s) closes the stream."""
    bridge = servers.bridge("a.test", ["alice@a.test"])
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind((net.silent, S2S_PORT))
    silent.listen(8)  # the kernel completes the handshakes; nothing is ever read or written

    async def scenario():
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@a.test/pc")
            started = time.monotonic()
            alice.send_message(mto="nobody@silent.test", mbody="hello?", mtype="chat")
            error = await next_item(alice.message_errors, timeout=3 * CONNECT_TIMEOUT,
                                    what="bounce from silent.test")
            elapsed = time.monotonic() - started
            assert error["from"].bare == "nobody@silent.test"
            assert error_condition(error) == "remote-server-timeout", error
            assert elapsed >= CONNECT_TIMEOUT - 1, f"bounced after {elapsed:.1f}s, before the timeout"

    try:
        asyncio.run(scenario())
    finally:
        silent.close()


def test_peer_stream_error_closes_incoming_stream_quietly(servers, net):
    """A peer that ends its stream with a stream error (as Prosody does when it shuts down:
    <system-shutdown/>) gets the stream closed, without a stream error of bridge's own in
    answer: <stream:error/> is part of the stream protocol, not an unsupported stanza."""
    bridge = servers.bridge("a.test", ["alice@a.test"])
    with socket.create_connection((net.a, S2S_PORT), timeout=TIMEOUT) as peer:
        peer.sendall(f"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
                     "xmlns:db='jabber:server:dialback' from='b.test' to='a.test' version='1.0'>".encode())
        received = b""
        while b"</stream:features>" not in received and b"<stream:features/>" not in received:
            data = peer.recv(65536)
            assert data, f"connection closed before the features: {received!r}"
            received += data
        peer.sendall(b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                     b"</stream:error></stream:stream>")
        while True:
            data = peer.recv(65536)  # bounded by the socket timeout
            if not data:
                break
            received += data
    assert received.endswith(b"</stream:stream>"), f"bridge did not close its stream: {received!r}"
    conditions = stream_error_conditions(parse_stream_document(received))
    assert conditions == [], f"bridge answered the peer's stream error with {conditions}: {received!r}"
    assert bridge.alive()

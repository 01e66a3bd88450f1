"""The SMS gateway end to end: the real bridge process, the smpp npm package's server as the SMSC
(tests/integration/smsc/server.js, with fault injection), slixmpp users."""

import asyncio
import ipaddress
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest
from slixmpp.xmlstream import ET

from tests.pki import CertificateAuthority

from .conftest import accounts_for
from .harness import (REPO, Clients, ServerProcess, add_users, barrier, next_item, server_env,
                      write_config)

SMSC_DIR = os.path.join(os.path.dirname(__file__), "smsc")
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None or not os.path.isdir(os.path.join(SMSC_DIR, "node_modules", "smpp")),
                                reason="node or the smpp package (.ci/install-test-peers) is missing")


class SMSC:
    """server.js as a process: its JSON events in a queue, commands on its stdin."""

    def __init__(self, *faults):
        self.process = subprocess.Popen([NODE, os.path.join(SMSC_DIR, "server.js"), "--port", "0", *faults],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.events = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self.wait(lambda e: e["event"] == "listening")["port"]

    def _read(self):
        for line in self.process.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "output", "line": line})

    def wait(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"the SMSC saw no such event in {timeout}s; saw {self.seen[-10:]}") from None
            self.seen.append(event)
            if predicate(event):
                return event

    def mo(self, source, text):
        command = {"cmd": "mo", "source_addr": source, "destination_addr": "1000", "hex": text.encode().hex()}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def accepted_until(self, marker, timeout=20.0):
        """Wait for the submit_sm whose text contains ``marker``; every submit_sm accepted so far
        (those consumed by earlier waits too), the marker last."""
        self.wait(lambda e: e["event"] == "submit_sm" and marker in e["message"], timeout)
        return self.seen_events("submit_sm")

    def seen_events(self, name):
        """The events of this kind consumed so far by ``wait``."""
        return [event for event in self.seen if event["event"] == name]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_bridge(tmp_path, smsc, jids, smsc_options=""):
    """bridge with the SMS gateway bound to ``smsc``; ``smsc_options``: more lines for [smsc.test]."""
    config_path = write_config(str(tmp_path))
    with open(config_path, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace("[hosts.localhost]\n", "[hosts.localhost]\noffline_notification = \"sms\"\n", 1)
    text += ("[sms]\nenabled = true\ndomain = \"sms.localhost\"\nquiet_window_minutes = 0\nretry_seconds = 0.2\n"
             f"[smsc.test]\nport = {smsc.port}\nsystem_id = \"bridge\"\npassword = \"pw\"\nsource_addr = \"1000\"\n"
             "reconnect_min_seconds = 0.2\nreconnect_max_seconds = 0.5\nthrottle_backoff_seconds = 0.2\n"
             + smsc_options)
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(text)
    accounts = accounts_for(jids)
    add_users(config_path, accounts)
    done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, "notify", "bob@localhost",
                           "--mobile", "+15551234567"], env=server_env(), capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    process = ServerProcess(config_path, accounts)
    process.start()
    return process


@pytest.fixture
def smsc_factory():
    started = []

    def make(*faults):
        smsc = SMSC(*faults)
        started.append(smsc)
        return smsc

    yield make
    for smsc in started:
        smsc.stop()


def test_offline_user_gets_sms_parts_and_answers(tmp_path, smsc_factory):
    """Alice writes a long Cyrillic message to offline Bob: the SMSC receives UCS-2 parts with one
    concatenation UDH reference and Bob's number; Bob's SMS answer reaches Alice from bob@localhost."""
    smsc = smsc_factory()
    bridge = start_bridge(tmp_path, smsc, ["alice@localhost", "bob@localhost"])
    try:
        smsc.wait(lambda e: e["event"] == "bind")
        body = "Привет, Боб! " * 10

        async def scenario():
            async with Clients(bridge) as clients:
                alice = await clients.login("alice@localhost/pc")
                alice.send_message(mto="bob@localhost", mbody=body, mtype="chat")
                parts = [await asyncio.to_thread(smsc.wait, lambda e: e["event"] == "submit_sm")
                         for _ in range(3)]
                assert {p["destination_addr"] for p in parts} == {"15551234567"}
                assert {p["data_coding"] for p in parts} == {8}
                assert all(p["esm_class"] & 0x40 for p in parts)
                udhs = [bytes.fromhex(p["udh"]) for p in parts]
                # The package reports the information elements: IEI 0, length 3, reference, total, number.
                assert {u[:2] for u in udhs} == {b"\x00\x03"} and len({u[2] for u in udhs}) == 1
                assert [u[3:] for u in udhs] == [b"\x03\x01", b"\x03\x02", b"\x03\x03"]
                assert "".join(p["message"] for p in parts) == "Alice: " + body.strip()
                smsc.mo("15551234567", "yes, on my way")
                answer = await next_item(alice.messages, what="Bob's SMS answer")
                assert answer["from"].bare == "bob@localhost"
                assert answer["body"] == "yes, on my way"

        asyncio.run(scenario())
    finally:
        bridge.stop()


def test_faults_lose_nothing_and_send_nothing_twice(tmp_path, smsc_factory):
    """A refused bind, two ESME_RTHROTTLED and one ESME_RSYSERR: every message still reaches the
    SMSC exactly once."""
    smsc = smsc_factory("--refuse-binds", "1", "--throttle", "2", "--syserr", "1")
    bridge = start_bridge(tmp_path, smsc, ["alice@localhost", "bob@localhost"])
    try:
        smsc.wait(lambda e: e["event"] == "bind")

        async def scenario():
            async with Clients(bridge) as clients:
                alice = await clients.login("alice@localhost/pc")
                for n in range(4):
                    alice.send_message(mto=f"+1555000000{n}@sms.localhost", mbody=f"note {n}", mtype="chat")
                accepted = [await asyncio.to_thread(smsc.wait, lambda e: e["event"] == "submit_sm")
                            for _ in range(4)]
                assert sorted(e["message"] for e in accepted) == [f"Alice: note {n}" for n in range(4)]

        asyncio.run(scenario())
        # Nothing more arrives (a bounded wait on the SMSC's event queue, not a sleep).
        with pytest.raises(AssertionError):
            smsc.wait(lambda e: e["event"] == "submit_sm", timeout=1.5)
    finally:
        bridge.stop()


NS_RECEIPTS = "urn:xmpp:receipts"
MARKER = "end-of-test marker"


def concatenated(parts):
    """{(reference, total): {number: text}} of concatenated parts (8-bit reference UDH)."""
    found = {}
    for part in parts:
        udh = bytes.fromhex(part["udh"])
        assert udh[:2] == b"\x00\x03", part
        pieces = found.setdefault((udh[2], udh[3]), {})
        assert udh[4] not in pieces, f"part {udh[4]} of {udh[3]} twice: {parts}"
        pieces[udh[4]] = part["message"]
    return found


async def send_marker(alice):
    """A one-part message behind everything already queued: when the SMSC has it, nothing older is left."""
    alice.send_message(mto="+15550009999@sms.localhost", mbody=MARKER, mtype="chat")


def test_drop_in_the_middle_of_a_multipart_message(tmp_path, smsc_factory):
    """The SMSC closes the connection on the second part of a four-part message (parts three and
    four in flight behind it): after the reconnect every part is accepted exactly once, none of
    the part already answered is sent again, and the parts make up the whole text."""
    smsc = smsc_factory("--drop-after", "2")
    bridge = start_bridge(tmp_path, smsc, ["alice@localhost", "bob@localhost"],
                          "submit_rate_per_second = 1000.0\nwindow = 10\n")
    try:
        smsc.wait(lambda e: e["event"] == "bind")
        body = "word " * 100

        async def scenario():
            async with Clients(bridge) as clients:
                alice = await clients.login("alice@localhost/pc")
                alice.send_message(mto="bob@localhost", mbody=body, mtype="chat")
                await asyncio.to_thread(smsc.wait, lambda e: e["event"] == "dropped")
                await asyncio.to_thread(smsc.wait, lambda e: e["event"] == "bind")
                await send_marker(alice)
                return await asyncio.to_thread(smsc.accepted_until, MARKER)

        accepted = asyncio.run(scenario())
        parts, marker = accepted[:-1], accepted[-1]
        assert marker["destination_addr"] == "15550009999" and marker["udh"] == ""
        assert {p["destination_addr"] for p in parts} == {"15551234567"}
        messages = concatenated(parts)
        assert list(messages) and len(messages) == 1, messages
        (reference, total), pieces = next(iter(messages.items()))
        assert total == 4 and sorted(pieces) == [1, 2, 3, 4], pieces
        assert "".join(pieces[n] for n in range(1, 5)) == "Alice: " + body.strip()
        # The first part was answered before the drop: it was never sent again.
        assert [e["udh"][-2:] for e in smsc.seen if e["event"] == "dropped"] == ["02"]
        assert len(smsc.seen_events("bind")) == 2
    finally:
        bridge.stop()


def test_slow_answers_within_the_response_timeout_fill_the_window(tmp_path, smsc_factory):
    """Every submit_sm answered 300 ms late, well within the response timeout: bridge keeps
    exactly `window` (3) outstanding, never more, keeps its one link, and each of 9 messages is
    accepted exactly once."""
    smsc = smsc_factory("--delay-ms", "300")
    bridge = start_bridge(tmp_path, smsc, ["alice@localhost", "bob@localhost"],
                          "submit_rate_per_second = 1000.0\nwindow = 3\nresponse_timeout_seconds = 3.0\n")
    try:
        smsc.wait(lambda e: e["event"] == "bind")

        async def scenario():
            async with Clients(bridge) as clients:
                alice = await clients.login("alice@localhost/pc")
                for n in range(9):
                    alice.send_message(mto=f"+1555000010{n}@sms.localhost", mbody=f"slow {n}", mtype="chat")
                await barrier(alice)
                await send_marker(alice)
                return await asyncio.to_thread(smsc.accepted_until, MARKER)

        accepted = asyncio.run(scenario())
        assert sorted(e["message"] for e in accepted[:-1]) == [f"Alice: slow {n}" for n in range(9)]
        assert max(e["outstanding"] for e in accepted) == 3
        assert len(smsc.seen_events("bind")) == 1 and not smsc.seen_events("close")
        assert not smsc.seen_events("submit_sm_unanswered")
    finally:
        bridge.stop()


def test_answers_beyond_the_response_timeout_are_sent_again_once(tmp_path, smsc_factory):
    """The first two submit_sm are answered after bridge's response timeout (1 s): bridge drops
    the link, binds again and sends them again; the late answers go to a closed connection, so
    the SMSC accepted each of the 5 messages exactly once (and the third, answered at once
    while the first two waited, is not sent again)."""
    smsc = smsc_factory("--delay-ms", "2500", "--delay-count", "2")
    bridge = start_bridge(tmp_path, smsc, ["alice@localhost", "bob@localhost"],
                          "submit_rate_per_second = 1000.0\nwindow = 3\nresponse_timeout_seconds = 1.0\n")
    try:
        smsc.wait(lambda e: e["event"] == "bind")

        async def scenario():
            async with Clients(bridge) as clients:
                alice = await clients.login("alice@localhost/pc")
                for n in range(5):
                    alice.send_message(mto=f"+1555000020{n}@sms.localhost", mbody=f"late {n}", mtype="chat")
                await barrier(alice)
                await asyncio.to_thread(smsc.wait, lambda e: e["event"] == "close")
                await send_marker(alice)
                accepted = await asyncio.to_thread(smsc.accepted_until, MARKER)
                # The two late answers, written after bridge gave up on them, reach no one.
                for _ in range(2):
                    await asyncio.to_thread(smsc.wait, lambda e: e["event"] == "submit_sm_unanswered")
                return accepted

        accepted = asyncio.run(scenario())
        assert sorted(e["message"] for e in accepted[:-1]) == [f"Alice: late {n}" for n in range(5)]
        late = sorted(e["message"] for e in smsc.seen_events("submit_sm_unanswered"))
        assert len(late) == 2 and set(late) <= {e["message"] for e in accepted}
        assert len(smsc.seen_events("bind")) == 2
        assert not [e for e in smsc.seen if e["event"] == "submit_sm" and e not in accepted]
    finally:
        bridge.stop()


def test_restart_mid_queue_after_sigkill_sends_once(tmp_path, smsc_factory):
    """One SMS is accepted by the SMSC (awaiting its receipt); the SMSC goes away; Alice writes a
    two-part message to offline Bob (stored, queued); bridge is killed with SIGKILL and started
    again on the same data folder with a working SMSC: the queued SMS arrives exactly once, the
    one already accepted is not sent again, and Bob still gets his offline message once."""
    first = smsc_factory()
    accounts = ["alice@localhost", "bob@localhost"]
    bridge = start_bridge(tmp_path, first, accounts)
    restarted = None
    long_body = "Are you coming tonight? " * 8
    try:
        first.wait(lambda e: e["event"] == "bind")

        async def before_kill():
            async with Clients(bridge) as clients:
                alice = await clients.login("alice@localhost/pc")
                alice.send_message(mto="bob@localhost", mbody="first one", mtype="chat")
                await asyncio.to_thread(first.wait, lambda e: e["event"] == "submit_sm")
                first.stop()
                await asyncio.to_thread(bridge.wait_for_line, lambda line: "SMSC test: link down" in line, 15,
                                        "the link going down")
                alice.send_message(mto="bob@localhost", mbody=long_body, mtype="chat")
                await asyncio.to_thread(bridge.wait_for_line,
                                        lambda line: "SMS 000000000002: bob@localhost is offline; 2 parts" in line,
                                        15, "the second SMS queued")
                await barrier(alice)
                assert alice.message_errors.empty(), alice.message_errors.get_nowait()

        asyncio.run(before_kill())
        bridge.process.kill()
        assert bridge.process.wait(timeout=10) == -9
        bridge._reader.join(timeout=5)

        second = smsc_factory()
        with open(bridge.config_path, encoding="utf-8") as handle:
            text = handle.read()
        assert text.count(f"port = {first.port}\n") == 1
        with open(bridge.config_path, "w", encoding="utf-8") as handle:
            handle.write(text.replace(f"port = {first.port}\n", f"port = {second.port}\n"))
        restarted = ServerProcess(bridge.config_path, bridge.accounts)
        restarted.start()
        second.wait(lambda e: e["event"] == "bind")
        assert any("SMS queue: 2 unfinished messages, 2 parts to send" in line for line in restarted.lines), \
            restarted.tail()

        async def after_restart():
            async with Clients(restarted) as clients:
                alice = await clients.login("alice@localhost/pc")
                await send_marker(alice)
                accepted = await asyncio.to_thread(second.accepted_until, MARKER)
                bob = await clients.login("bob@localhost/phone")
                stored = await next_item(bob.messages, lambda m: m["body"], what="the offline messages")
                again = await next_item(bob.messages, lambda m: m["body"], what="the second offline message")
                await barrier(bob)
                assert [stored["body"], again["body"]] == ["first one", long_body]
                extra = [bob.messages.get_nowait() for _ in range(bob.messages.qsize())]
                assert not [m for m in extra if m["body"]], extra
                return accepted

        accepted = asyncio.run(after_restart())
        assert [e["destination_addr"] for e in accepted] == ["15551234567", "15551234567", "15550009999"]
        pieces = concatenated(accepted[:2])
        assert len(pieces) == 1 and sorted(next(iter(pieces.values()))) == [1, 2]
        assert "".join(p["message"] for p in sorted(accepted[:2], key=lambda p: p["udh"])) == \
            "Alice: " + long_body.strip()
        assert "first one" not in "".join(e["message"] for e in accepted)
    finally:
        bridge.stop()
        if restarted is not None:
            restarted.stop()


@pytest.mark.parametrize("base", ["hex", "dec"])
def test_delivery_receipts_become_xep0184_receipts(tmp_path, smsc_factory, base):
    """The SMSC reports each accepted part DELIVRD with its message id in hex or in decimal:
    a two-part message to a number and one to offline Bob that asked for a receipt each give
    the sender one XEP-0184 <received/> (from the number's JID, from bob@localhost) with the
    original id, once every part is delivered; a message that did not ask gets none."""
    smsc = smsc_factory("--receipts", base)
    bridge = start_bridge(tmp_path, smsc, ["alice@localhost", "bob@localhost"])
    try:
        smsc.wait(lambda e: e["event"] == "bind")

        async def scenario():
            async with Clients(bridge) as clients:
                alice = await clients.login("alice@localhost/pc")
                receipts = alice.watch("{jabber:client}message/{urn:xmpp:receipts}received")
                plain = alice.make_message(mto="+15550003000@sms.localhost", mbody="no receipt please",
                                           mtype="chat")
                plain["id"] = "plain-1"
                plain.send()
                for to, msg_id, body in (("+15550003001@sms.localhost", "long-1", "twice as long " * 20),
                                         ("bob@localhost", "offline-1", "call me")):
                    message = alice.make_message(mto=to, mbody=body, mtype="chat")
                    message["id"] = msg_id
                    message.append(ET.fromstring(f"<request xmlns='{NS_RECEIPTS}'/>"))
                    message.send()
                got = {}
                for _ in range(2):
                    receipt = await next_item(receipts, timeout=15, what="a XEP-0184 receipt")
                    received = receipt.xml.find(f"{{{NS_RECEIPTS}}}received")
                    assert received.get("id") not in got, "a receipt twice"
                    got[received.get("id")] = (str(receipt["from"]), str(receipt["to"]))
                await send_marker(alice)
                await asyncio.to_thread(smsc.accepted_until, MARKER)
                # The marker's own receipt comes back too; by then any for plain-1 would be here.
                while len(smsc.seen_events("deliver_sm_resp")) < 5:  # one receipt per part, marker's too
                    await asyncio.to_thread(smsc.wait, lambda e: e["event"] == "deliver_sm_resp")
                await barrier(alice)
                late = [receipts.get_nowait() for _ in range(receipts.qsize())]
                assert not late, [str(r) for r in late]
                return got

        got = asyncio.run(scenario())
        assert got == {"long-1": ("+15550003001@sms.localhost", "alice@localhost/pc"),
                       "offline-1": ("bob@localhost", "alice@localhost/pc")}
        resps = smsc.seen_events("deliver_sm_resp")
        assert len(resps) == 5 and {e["status"] for e in resps} == {0}
        assert not any("receipt for unknown message id" in line for line in bridge.lines), bridge.tail()
    finally:
        bridge.stop()


# -- TLS to the SMSC ------------------------------------------------------------

SMSC_NAMES = ["localhost", ipaddress.ip_address("127.0.0.1")]


def test_tls_to_the_smsc_checks_its_certificate(tmp_path, smsc_factory):
    """`tls = true` with `ca_file` the test CA, the SMSC on TLS from the first byte: Alice's message
    to +15551234567@sms.localhost reaches the SMSC.  An SMSC whose certificate another CA signed:
    bridge logs the failed handshake and never binds, the SMSC sees only handshakes the client
    refused (no SMPP in clear), nothing is submitted, and the message stays queued: bridge
    restarted towards the trusted SMSC reports it unfinished and submits it once."""
    trusted_ca = CertificateAuthority(tmp_path / "trusted-ca", "sms-ca.bridge.test")
    rogue_ca = CertificateAuthority(tmp_path / "rogue-ca", "other-ca.bridge.test")
    ca_file = trusted_ca.ca_file
    good_cert, good_key = trusted_ca.issue(tmp_path / "good", SMSC_NAMES, "smsc")
    rogue_cert, rogue_key = rogue_ca.issue(tmp_path / "rogue", SMSC_NAMES, "smsc")
    # optionsForClientTLS(host) checks the certificate against this name: an IP address SAN.
    tls_options = f"host = \"127.0.0.1\"\ntls = true\nca_file = \"{ca_file}\"\n"
    accounts = ["alice@localhost", "bob@localhost"]

    async def send(bridge, body, wait_for):
        async with Clients(bridge) as clients:
            alice = await clients.login("alice@localhost/pc")
            alice.send_message(mto="+15551234567@sms.localhost", mbody=body, mtype="chat")
            await barrier(alice)
            assert alice.message_errors.empty(), alice.message_errors.get_nowait()
            return await asyncio.to_thread(wait_for)

    # The trusted SMSC: bound over TLS, the message accepted.
    good = smsc_factory("--tls-cert", good_cert, "--tls-key", good_key)
    (tmp_path / "trusted").mkdir()
    bridge = start_bridge(tmp_path / "trusted", good, accounts, tls_options)
    try:
        good.wait(lambda e: e["event"] == "bind")
        accepted = asyncio.run(send(bridge, "over TLS",
                                    lambda: good.wait(lambda e: e["event"] == "submit_sm")))
        assert (accepted["destination_addr"], accepted["message"]) == ("15551234567", "Alice: over TLS")
        assert not good.seen_events("tls_error"), good.seen
    finally:
        bridge.stop()

    # The SMSC with a certificate from another CA: the handshake fails, nothing is bound or sent.
    rogue = smsc_factory("--tls-cert", rogue_cert, "--tls-key", rogue_key)
    (tmp_path / "untrusted").mkdir()
    bridge = start_bridge(tmp_path / "untrusted", rogue, accounts, tls_options)
    restarted = None
    try:
        rogue.wait(lambda e: e["event"] == "tls_error")
        asyncio.run(send(bridge, "not in clear", lambda: bridge.wait_for_line(
            lambda line: "SMSC test" in line and "certificate verify failed" in line, 15,
            "the failed TLS handshake")))
        rogue.wait(lambda e: e["event"] == "tls_error")  # a reconnection after the message, failing too
        with pytest.raises(AssertionError):
            rogue.wait(lambda e: e["event"] in ("bind", "submit_sm", "submit_sm_refused"), timeout=1.5)
        errors = rogue.seen_events("tls_error")
        assert errors and all("unknown ca" in e["error"] for e in errors), errors
        assert not [e for e in rogue.seen if e["event"] not in ("listening", "tls_error")], rogue.seen
        bridge.stop()

        # Not lost: started again towards the trusted SMSC, bridge finds it unfinished and sends it once.
        with open(bridge.config_path, encoding="utf-8") as handle:
            text = handle.read()
        assert text.count(f"port = {rogue.port}\n") == 1
        with open(bridge.config_path, "w", encoding="utf-8") as handle:
            handle.write(text.replace(f"port = {rogue.port}\n", f"port = {good.port}\n"))
        restarted = ServerProcess(bridge.config_path, bridge.accounts)
        restarted.start()
        restarted.wait_for_line(lambda line: "SMS queue: 1 unfinished messages, 1 parts to send" in line, 15,
                                "the unfinished message found again")
        accepted = good.wait(lambda e: e["event"] == "submit_sm")
        assert (accepted["destination_addr"], accepted["message"]) == ("15551234567", "Alice: not in clear")
        with pytest.raises(AssertionError):
            good.wait(lambda e: e["event"] == "submit_sm", timeout=1.5)
    finally:
        bridge.stop()
        if restarted is not None:
            restarted.stop()

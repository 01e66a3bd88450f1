"""Group commit loses nothing acknowledged: the real server, killed with SIGKILL in the middle of a load.

Three kinds of message accepted for later delivery run at once against one
bridge (SQLite storage) until the server is killed:

* SIP MESSAGEs from alice's phone (a raw UDP client answering the digest
  challenge) to carol, who is offline: the 202 says the message is stored;
* XMPP messages from alice to carol, offline storage: alice has enabled
  stream management, and the h of the server's <a/> says how many are handled;
* XMPP messages from alice to a phone number: the SMS queue has no SMSC to
  reach, so they wait in it; the same <a/> covers them.

After the restart, carol reads every acknowledged message (the SIP ones said
again at start, then stored offline), and the SMS queue holds every
acknowledged SMS.
"""

import json
import os
import re
import signal
import socket
import sqlite3
import threading
import uuid
import xml.etree.ElementTree as ET

from .conftest import accounts_for
from .harness import NS_CLIENT, RawClient, ServerProcess, add_users, write_config
from .test_sip import md5_authorization

USERS = ("alice@localhost", "carol@localhost")
NS_SM = "urn:xmpp:sm:3"
SMS_NUMBER = "+15557654321"
# Acknowledged messages of each kind wanted before the kill, so that it falls in the middle of the load.
BEFORE_KILL = 100
# The first request is padded past the 401's length: bridge answers an unverified UDP source with no more
# bytes than it sent.
PADDING = "." * 600

SIP_SECTION = """
[sip]
enabled = true
udp_endpoints = ["udp:0:interface=127.0.0.1"]
tcp_endpoints = []
tls_endpoints = []
advertised_address = "127.0.0.1"
"""


def free_tcp_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tables():
    """Limits raised past the load; an SMSC address where nothing listens, so that SMS stay queued."""
    return (f"[quotas]\nmax_offline_messages_per_user = 1000000\nmax_offline_bytes_per_user = 1000000000\n"
            f"[sms]\nenabled = true\ndomain = \"sms.localhost\"\noutbound_sms_per_minute_per_user = 1000000\n"
            f"outbound_sms_per_day_per_user = 1000000\noutbound_sms_per_minute_per_host = 1000000\n"
            f"outbound_sms_per_day_per_host = 1000000\n"
            f"[smsc.nowhere]\nport = {free_tcp_port()}\nsystem_id = \"bridge\"\npassword = \"pw\"\n"
            f"source_addr = \"1000\"\n")


def message_request(port, call_id, cseq, body, auth=""):
    return (f"MESSAGE sip:carol@localhost SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{uuid.uuid4().hex};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=durable\r\nTo: <sip:carol@localhost>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} MESSAGE\r\n{auth}Content-Type: text/plain\r\n"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}").encode()


class SIPPhone(threading.Thread):
    """Sends MESSAGEs one after another until the server stops answering; ``acknowledged``: the bodies
    answered 202."""

    def __init__(self, port, password, enough):
        super().__init__(daemon=True)
        self.port, self.password, self.enough = port, password, enough
        self.acknowledged = []
        self.problem = None

    def exchange(self, sock, data):
        sock.sendto(data, ("127.0.0.1", self.port))
        return sock.recvfrom(65535)[0].decode()

    def run(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.bind(("127.0.0.1", 0))
            local = sock.getsockname()[1]
            number = 0
            try:
                while True:
                    number += 1
                    body = f"sip-{number} {PADDING}"
                    call_id = f"{uuid.uuid4()}@127.0.0.1"
                    challenge = self.exchange(sock, message_request(local, call_id, 1, body))
                    if not challenge.startswith("SIP/2.0 401 "):
                        self.problem = challenge
                        return
                    nonce = re.search(r'nonce="([^"]+)", algorithm=MD5', challenge).group(1)
                    auth = md5_authorization(self.password, nonce, "MESSAGE", "sip:carol@localhost")
                    answer = self.exchange(sock, message_request(local, call_id, 2, body, auth))
                    if answer.startswith("SIP/2.0 202 "):
                        self.acknowledged.append(f"sip-{number}")
                        if len(self.acknowledged) == BEFORE_KILL:
                            self.enough.set()
            except OSError:
                return  # the server is gone


class XMPPSender(threading.Thread):
    """alice with stream management, writing to carol and to a phone number in turn, a request for an
    acknowledgement after every ten; ``acknowledged``: the bodies the last <a/> covers."""

    def __init__(self, port, password, enough):
        super().__init__(daemon=True)
        self.client = RawClient(port, timeout=5)
        self.client.login("alice", password, resource="durable")
        self.client.send(f"<enable xmlns='{NS_SM}'/>")
        enabled = self.client.next()
        assert enabled.tag == f"{{{NS_SM}}}enabled", ET.tostring(enabled, "unicode")
        self.enough = enough
        self.sent = []  # the bodies in the order sent: h counts them
        self.handled = 0

    def run(self):
        try:
            while True:
                for _ in range(10):
                    number = len(self.sent) + 1
                    kind = "offline" if number % 2 else "sms"
                    to = "carol@localhost" if kind == "offline" else f"{SMS_NUMBER}@sms.localhost"
                    body = f"xmpp-{kind}-{number}"
                    self.sent.append(body)
                    self.client.send(f"<message to='{to}' id='{body}' type='chat'><body>{body}</body></message>")
                self.client.send(f"<r xmlns='{NS_SM}'/>")
                while True:
                    element = self.client.next()
                    if element.tag == f"{{{NS_SM}}}a":
                        self.handled = int(element.get("h"))
                        break
                if self.handled >= 2 * BEFORE_KILL:
                    self.enough.set()
        except Exception:
            return  # the server is gone

    @property
    def acknowledged(self):
        return self.sent[:self.handled]


def carol_reads(port, password, expected):
    """The bodies carol receives once logged in, read until every one of ``expected`` is among them."""
    carol = RawClient(port, timeout=30)
    carol.login("carol", password, resource="later")
    carol.send("<presence/>")
    received = set()
    try:
        while not expected <= received:
            element = carol.next()
            body = element.find(f"{{{NS_CLIENT}}}body")
            if element.tag == f"{{{NS_CLIENT}}}message" and body is not None:
                received.add(body.text.split(" ")[0])
    except Exception as error:
        raise AssertionError(f"acknowledged and never received by carol: {sorted(expected - received)[:20]} "
                             f"({len(expected - received)} of {len(expected)}): {error}") from None
    finally:
        carol.close()
    return received


def queued_sms(database):
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT value FROM keyval WHERE store = 'sms-out'").fetchall()
    return {json.loads(value)["meta"]["id"] for (value,) in rows}


def test_nothing_acknowledged_is_lost_to_sigkill(tmp_path):
    """SIGKILL in the middle of SIP, offline and SMS traffic: after the restart, every message answered 202
    or covered by an XEP-0198 <a/> is there (read by its recipient, or waiting in the SMS queue)."""
    config_path = write_config(str(tmp_path), sip=SIP_SECTION, tables=tables())
    accounts = accounts_for(USERS)
    add_users(config_path, accounts)
    server = ServerProcess(config_path, accounts)
    server.start(wait_for=("c2s", "sip-udp"))
    try:
        sip_enough, xmpp_enough = threading.Event(), threading.Event()
        phone = SIPPhone(server.ports["sip-udp"], accounts["alice@localhost"], sip_enough)
        sender = XMPPSender(server.port, accounts["alice@localhost"], xmpp_enough)
        phone.start()
        sender.start()
        for enough, thread in ((sip_enough, phone), (xmpp_enough, sender)):
            while not enough.wait(1):
                assert thread.is_alive(), f"{thread.name} stopped early: {getattr(thread, 'problem', '')}"
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        phone.join(30)
        sender.join(30)
        sender.client.abort()
    finally:
        server.stop()
    sip = set(phone.acknowledged)
    offline = {body for body in sender.acknowledged if "-offline-" in body}
    sms = {body for body in sender.acknowledged if "-sms-" in body}
    assert len(sip) >= BEFORE_KILL and len(offline) >= BEFORE_KILL and len(sms) >= BEFORE_KILL

    restarted = ServerProcess(config_path, accounts)
    restarted.start(wait_for=("c2s",))
    try:
        carol_reads(restarted.port, accounts["carol@localhost"], sip | offline)
    finally:
        restarted.stop()
    missing = sms - queued_sms(os.path.join(str(tmp_path), "data", "bridge.sqlite"))
    assert not missing, f"acknowledged SMS not in the queue: {sorted(missing)[:20]} ({len(missing)} of {len(sms)})"

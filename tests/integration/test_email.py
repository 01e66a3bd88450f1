"""Offline email end to end: the real server, a slixmpp sender, and a capturing SMTP relay.

The relay is Twisted's own ESMTP server (``twisted.mail.smtp``) run as a
subprocess on 127.0.0.1: it writes every message it accepts to a folder and
prints one line per message, so the test waits on its output with a bound.
"""

import asyncio
import email
import email.policy
import os
import queue
import socket
import subprocess
import sys
import threading

import pytest

from .conftest import RUNNING, accounts_for
from .harness import Clients, ServerProcess, add_users, next_item, server_env, write_config

TIMEOUT = 20.0

RELAY = r'''
import os, sys
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.mail import smtp
from zope.interface import implementer

folder, port = sys.argv[1], int(sys.argv[2])
count = [0]

@implementer(smtp.IMessage)
class Message:
    def __init__(self, envelope):
        self.envelope, self.lines = envelope, []
    def lineReceived(self, line):
        self.lines.append(line)
    def eomReceived(self):
        count[0] += 1
        path = os.path.join(folder, "%d.eml" % count[0])
        with open(path + ".tmp", "wb") as handle:
            handle.write(b"\n".join(self.lines))
        os.rename(path + ".tmp", path)
        print("received %s from %s to %s" % (path, *self.envelope), flush=True)
        return defer.succeed(None)
    def connectionLost(self):
        pass

@implementer(smtp.IMessageDelivery)
class Delivery:
    def receivedHeader(self, helo, origin, recipients):
        return None
    def validateFrom(self, helo, origin):
        self.origin = str(origin)
        return origin
    def validateTo(self, user):
        return lambda: Message((self.origin, str(user.dest)))

class RelayFactory(Factory):
    def buildProtocol(self, addr):
        protocol = smtp.ESMTP()
        protocol.delivery = Delivery()
        protocol.factory = self
        return protocol

listening = reactor.listenTCP(port, RelayFactory(), interface="127.0.0.1")
print("listening %d" % listening.getHost().port, flush=True)
reactor.run()
'''


class CapturingRelay:
    """Twisted's ESMTP server in a subprocess; ``next_mail`` waits for the next accepted message."""

    def __init__(self, folder, port=0):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.lines = queue.Queue()
        self.process = subprocess.Popen([sys.executable, "-c", RELAY, folder, str(port)], env=server_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        line = self._next_line("listening")
        self.port = int(line.split()[1])

    def _drain(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next_line(self, prefix):
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"the test relay printed no '{prefix}' line within {TIMEOUT}s") from None
            if line is None:
                raise AssertionError(f"the test relay exited (status {self.process.wait()})")
            if line.startswith(prefix):
                return line

    def next_mail(self):
        """(MAIL FROM, RCPT TO, parsed message) of the next message the relay accepted."""
        _, path, _, mail_from, _, rcpt_to = self._next_line("received").split(" ")
        with open(path, "rb") as handle:
            return mail_from, rcpt_to, email.message_from_bytes(handle.read(), policy=email.policy.default)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_bridge(directory, relay_port, jids, smtp_options=""):
    os.makedirs(directory, exist_ok=True)
    config_path = write_config(str(directory))
    with open(config_path, "a", encoding="utf-8") as handle:
        handle.write(f'[smtp]\nrelay = "127.0.0.1:{relay_port}"\nstarttls = "off"\n'
                     'from_address = "im@bridge.test"\ndigest_seconds = 1\n'
                     "retry_initial_seconds = 0.5\nretry_max_seconds = 2\ntimeout_seconds = 10\n" + smtp_options)
    accounts = accounts_for(jids)
    add_users(config_path, accounts)
    done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, "notify", "bob@localhost",
                           "--policy", "email", "--email", "bob@example.org"], env=server_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    process = ServerProcess(config_path, accounts)
    RUNNING.append(process)
    process.start()
    return process


@pytest.fixture
def cleanup(request):
    """Register relays and servers to stop at the end; a failed test prints the server's log."""
    things = []
    yield things.append
    report = getattr(request.node, "report_call", None)
    for thing in reversed(things):
        thing.stop()
        if thing in RUNNING:
            if report is not None and report.failed:
                print(f"--- server log ({thing.log_path}) ---\n" + thing.tail(count=80))
            RUNNING.remove(thing)


async def write_to_bob(server, text):
    async with Clients(server) as clients:
        alice = await clients.login("alice@localhost/pc")
        alice.send_message(mto="bob@localhost", mbody=text, mtype="chat")
        reply = await alice.query("get", "localhost", "<ping xmlns='urn:xmpp:ping'/>")
        assert reply["type"] == "result"


def test_offline_message_arrives_by_email(tmp_path, cleanup):
    """alice writes to bob, who is offline with the email policy: bob's address gets a mail with
    the configured From, his To, a Subject naming alice and the text in a UTF-8 plain-text body."""
    relay = CapturingRelay(str(tmp_path / "mail"))
    cleanup(relay)
    server = start_bridge(tmp_path / "bridge", relay.port, ["alice@localhost", "bob@localhost"])
    cleanup(server)
    asyncio.run(write_to_bob(server, "Are you coming? ☕"))
    mail_from, rcpt_to, mail = relay.next_mail()
    assert (mail_from, rcpt_to) == ("im@bridge.test", "bob@example.org")
    assert mail["From"] == "im@bridge.test"
    assert mail["To"] == "bob@example.org"
    assert mail["Subject"] == "Message from alice@localhost"
    assert mail["Message-ID"] and mail["Date"]
    assert mail.get_content_type() == "text/plain" and mail.get_content_charset() == "utf-8"
    assert "Are you coming? ☕" in mail.get_content()


def test_relay_down_then_up_still_gets_the_mail(tmp_path, cleanup):
    """With the relay down the mail waits in the queue (retry logged); once the relay listens on
    its port, the next retry delivers it, once."""
    port = free_port()
    server = start_bridge(tmp_path / "bridge", port, ["alice@localhost", "bob@localhost"])
    cleanup(server)
    asyncio.run(write_to_bob(server, "sent while the relay was down"))
    server.wait_for_line(lambda line: "did not take the offline mail to bob@example.org" in line, TIMEOUT,
                         what="a failed attempt at the relay")
    relay = CapturingRelay(str(tmp_path / "mail"), port)
    cleanup(relay)
    _, rcpt_to, mail = relay.next_mail()
    assert rcpt_to == "bob@example.org"
    assert "sent while the relay was down" in mail.get_content()
    server.wait_for_line(lambda line: "offline mail to bob@example.org accepted" in line, TIMEOUT,
                         what="the relay's acceptance in the log")
    assert len(os.listdir(relay.folder)) == 1


def test_conversation_archive_by_email(tmp_path, cleanup):
    """With archive_recipients set, a chat between two local users reaches the archive address
    with the X-Bridge headers, while the messages themselves are delivered as usual."""
    relay = CapturingRelay(str(tmp_path / "mail"))
    cleanup(relay)
    server = start_bridge(tmp_path / "bridge", relay.port, ["alice@localhost", "bob@localhost"],
                          'archive_recipients = ["audit@bridge.test"]\narchive_interval_seconds = 2\n')
    cleanup(server)

    async def scenario():
        async with Clients(server) as clients:
            alice = await clients.login("alice@localhost/pc")
            bob = await clients.login("bob@localhost/phone")
            alice.send_message(mto="bob@localhost", mbody="meeting at noon?", mtype="chat")
            message = await next_item(bob.messages, what="alice's message")
            assert message["body"] == "meeting at noon?"
            bob.send_message(mto="alice@localhost/pc", mbody="yes", mtype="chat")
            await next_item(alice.messages, what="bob's answer")

    asyncio.run(scenario())
    _, rcpt_to, mail = relay.next_mail()
    assert rcpt_to == "audit@bridge.test"
    assert mail["X-Bridge-Conversation"] == "alice@localhost bob@localhost"
    assert mail["X-Bridge-Sender"] == "alice@localhost, bob@localhost"
    assert mail["X-Bridge-Recipients"] == "bob@localhost, alice@localhost"
    body = mail.get_content()
    assert body.index("meeting at noon?") < body.index("yes")

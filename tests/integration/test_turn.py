"""External service discovery (XEP-0215) against a real coturn: the TURN credentials bridge hands a client
are accepted by a ``turnserver`` started here (use-auth-secret with the same static-auth-secret).

The test speaks just enough STUN/TURN (RFC 5389, RFC 5766) to make an Allocate with long-term credentials:
the first request is challenged (401 with a realm and nonce), the second carries USERNAME, REALM, NONCE and
MESSAGE-INTEGRITY.  Skipped when coturn is not installed.
"""

import asyncio
import hashlib
import hmac
import os
import shutil
import socket
import struct
import subprocess
import time

import pytest

from .harness import TIMEOUT, Clients, stop_process

NS = "urn:xmpp:extdisco:2"
SECRET = "a-secret-shared-with-coturn"
MAGIC = 0x2112A442
BINDING, ALLOCATE = 0x0001, 0x0003
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, REALM, NONCE = 0x0006, 0x0008, 0x0009, 0x0014, 0x0015
REQUESTED_TRANSPORT, XOR_RELAYED_ADDRESS = 0x0019, 0x0016
UDP = 17

pytestmark = pytest.mark.skipif(shutil.which("turnserver") is None,
                                reason="coturn's turnserver is not installed (Debian package coturn)")


def attribute(kind, value):
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def message(kind, attributes, key=None):
    """A STUN message; with ``key``, MESSAGE-INTEGRITY (HMAC-SHA1) at its end (RFC 5389 section 15.4)."""
    transaction = os.urandom(12)
    body = b"".join(attribute(k, v) for k, v in attributes)
    if key is not None:
        header = struct.pack("!HHI", kind, len(body) + 24, MAGIC) + transaction
        body += attribute(MESSAGE_INTEGRITY, hmac.new(key, header + body, hashlib.sha1).digest())
    return struct.pack("!HHI", kind, len(body), MAGIC) + transaction + body


def parse(data):
    """(message type, {attribute type: value}) of a STUN message."""
    kind, length, _ = struct.unpack("!HHI", data[:8])
    attributes, offset = {}, 20
    while offset < 20 + length:
        attr, size = struct.unpack("!HH", data[offset:offset + 4])
        attributes[attr] = data[offset + 4:offset + 4 + size]
        offset += 4 + size + (-size % 4)
    return kind, attributes


def error_code(attributes):
    value = attributes.get(ERROR_CODE)
    return value[2] * 100 + value[3] if value else None


class TurnClient:
    def __init__(self, port):
        self.address = ("127.0.0.1", port)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.settimeout(0.5)

    def ask(self, data):
        """Send ``data``, the parsed answer (or None when none came within the socket's timeout)."""
        self.socket.sendto(data, self.address)
        try:
            return parse(self.socket.recvfrom(2048)[0])
        except socket.timeout:
            return None

    def allocate(self, username, password):
        """An Allocate answered with a challenge, then with credentials: (type, attributes) of the second answer."""
        transport = (REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))
        answer = self.ask(message(ALLOCATE, [transport]))
        assert answer is not None, "turnserver did not answer the Allocate"
        kind, challenge = answer
        assert (kind, error_code(challenge)) == (0x0113, 401), (hex(kind), challenge)
        realm, nonce = challenge[REALM], challenge[NONCE]
        key = hashlib.md5(f"{username}:{realm.decode()}:{password}".encode()).digest()
        answer = self.ask(message(ALLOCATE, [transport, (USERNAME, username.encode()), (REALM, realm),
                                             (NONCE, nonce)], key))
        assert answer is not None, "turnserver did not answer the authenticated Allocate"
        return answer

    def close(self):
        self.socket.close()


def free_udp_port():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    """A turnserver on 127.0.0.1 (no TLS, no CLI, no daemon) with the shared secret; its UDP port."""
    directory = tmp_path_factory.mktemp("coturn")
    port = free_udp_port()
    config = directory / "turnserver.conf"
    config.write_text("\n".join([
        "listening-ip=127.0.0.1", "relay-ip=127.0.0.1", f"listening-port={port}", "use-auth-secret",
        f"static-auth-secret={SECRET}", "realm=localhost", "no-tls", "no-dtls", "no-cli",
        f"userdb={directory / 'turndb'}", f"pidfile={directory / 'turnserver.pid'}", "log-file=stdout",
        "simple-log", ""]))
    process = subprocess.Popen(["turnserver", "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    client = TurnClient(port)
    deadline = time.monotonic() + TIMEOUT
    try:
        while client.ask(message(BINDING, [])) is None:  # each try waits at most the socket's timeout
            assert process.poll() is None, "turnserver exited at start"
            assert time.monotonic() < deadline, "turnserver does not answer STUN"
    finally:
        client.close()
    yield port
    stop_process(process)


@pytest.fixture(scope="module")
def turn_server(start_server, coturn, tmp_path_factory):
    secret = tmp_path_factory.mktemp("turn-secret") / "turn.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    tables = (f'[external_services]\nservices = ["stun:127.0.0.1:{coturn}", "turn:127.0.0.1:{coturn}?transport=udp"]\n'
              f'turn_secret_file = "{secret}"\n')
    return start_server("turn", ["kai@localhost"], tables=tables)


def test_issued_credentials_allocate_on_coturn(turn_server, coturn):
    """kai asks bridge for its services (XEP-0215): STUN and TURN on the coturn instance, TURN with a user
    name and password; coturn grants an Allocate (a relayed address) with them, and refuses the same user
    name with a password not made from the secret."""

    async def scenario():
        async with Clients(turn_server) as clients:
            kai = await clients.login("kai@localhost/phone")
            reply = await kai.query("get", "localhost", f"<services xmlns='{NS}'/>")
            assert reply["type"] == "result", reply
            return [dict(service.attrib) for service in reply.xml.iter(f"{{{NS}}}service")]

    services = asyncio.run(scenario())
    assert [(s["type"], s["port"]) for s in services] == [("stun", str(coturn)), ("turn", str(coturn))]
    turn = services[1]
    assert turn["username"].endswith(":kai@localhost")
    granted, refused = TurnClient(coturn), TurnClient(coturn)  # an allocation per client address and port
    try:
        kind, attributes = granted.allocate(turn["username"], turn["password"])
        assert kind == 0x0103, (hex(kind), error_code(attributes))
        assert XOR_RELAYED_ADDRESS in attributes
        kind, attributes = refused.allocate(turn["username"], "not-the-password")
        assert (kind, error_code(attributes)) == (0x0113, 401)
    finally:
        granted.close()
        refused.close()

"""Federation with a foreign SIP domain: Kamailio (Debian package kamailio) serves pbx.test on
127.0.0.41:5060 with tests/integration/kamailio/kamailio.cfg (registrar, location in memory, no
authentication, requests for localhost and sip.localhost relayed to bridge's UDP listener).

sipp, as carol@pbx.test on 127.0.0.43, registers at Kamailio and sends MESSAGE to bob@localhost
through it; bridge (on 127.0.0.42, ``allowed_domains = ["pbx.test"]``, ``static_routes`` to
Kamailio) delivers it to bob on slixmpp; bob answers to ``carol\\40pbx.test@sip.localhost`` and the
answer reaches carol through Kamailio.  Kamailio sends from its listening socket, 127.0.0.41, the address of
pbx.test's static route, so bridge takes its requests as pbx.test's (an allowed domain's requests must come
from one of its addresses)."""

import asyncio
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from .conftest import accounts_for
from .harness import Clients, ServerProcess, add_users, next_item, stop_process, write_config

SIPP = shutil.which("sipp")
KAMAILIO = shutil.which("kamailio") or ("/usr/sbin/kamailio" if os.path.exists("/usr/sbin/kamailio") else None)
HERE = os.path.join(os.path.dirname(__file__), "kamailio")
KAMAILIO_CFG = os.path.join(HERE, "kamailio.cfg")
PBX = ("127.0.0.41", 5060)  # Kamailio, the registrar of pbx.test
BRIDGE_ADDRESS = "127.0.0.42"  # bridge's SIP listener (port chosen by the kernel)
SIPP_ADDRESS = "127.0.0.43"  # carol's user agent
LISTENING = re.compile(r"listening sip-udp on 127\.0\.0\.42:(\d+)")
USERS = ("bob@localhost",)

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp is missing (Debian package sip-tester, .ci/install-test-peers)"),
    pytest.mark.skipif(KAMAILIO is None, reason="kamailio is missing (Debian package kamailio, "
                                                ".ci/install-test-peers)"),
]

SIP_SECTION = f"""
[sip]
enabled = true
udp_endpoints = ["udp:0:interface={BRIDGE_ADDRESS}"]
tcp_endpoints = []
tls_endpoints = []
advertised_address = "{BRIDGE_ADDRESS}"
allowed_domains = ["pbx.test"]
static_routes = {{ "pbx.test" = "{PBX[0]}:{PBX[1]}" }}
"""


def write_sip_config(directory, section):
    """The harness's configuration with ``section`` as its [sip] table."""
    return write_config(directory, sip=section)


def sip_options_answered(address, timeout=0.5):
    """True when something answers an OPTIONS sent to ``address`` over UDP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((SIPP_ADDRESS, 0))
        sock.settimeout(timeout)
        port = sock.getsockname()[1]
        request = (f"OPTIONS sip:{address[0]}:{address[1]} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {SIPP_ADDRESS}:{port};branch=z9hG4bK-probe-{time.monotonic_ns()};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:probe@pbx.test>;tag=probe\r\nTo: <sip:{address[0]}>\r\n"
                   f"Call-ID: probe-{time.monotonic_ns()}@{SIPP_ADDRESS}\r\nCSeq: 1 OPTIONS\r\n"
                   f"Content-Length: 0\r\n\r\n").encode()
        sock.sendto(request, address)
        try:
            return sock.recvfrom(65535)[0].startswith(b"SIP/2.0 ")
        except (socket.timeout, ConnectionRefusedError):
            return False


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((SIPP_ADDRESS, 0))
        return probe.getsockname()[1]


class Kamailio:
    """kamailio in the foreground (-DD -E), its log drained into ``lines``."""

    def __init__(self, directory, listen, bridge_uri, children=2, shm_mb=128, config=KAMAILIO_CFG):
        self.directory = str(directory)
        self.listen = listen
        self.lines = []
        self.command = [KAMAILIO, "-f", config, "-DD", "-E", "-Y", self.directory,
                        "-P", os.path.join(self.directory, "kamailio.pid"),
                        "-A", f"LISTEN=udp:{listen[0]}:{listen[1]}", "-A", f'BRIDGE="{bridge_uri}"',
                        "-A", f"CHILDREN={children}", "-m", str(shm_mb)]
        self.process = None

    def start(self, timeout=20):
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        cwd=self.directory)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not sip_options_answered(self.listen):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("kamailio did not start:\n" + self.tail())
        return self

    def _drain(self):
        with open(os.path.join(self.directory, "kamailio.log"), "w", encoding="utf-8") as log:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                log.write(line + "\n")
                log.flush()

    def tail(self, count=40):
        return "\n".join(self.lines[-count:])

    def stop(self):
        if self.process is None:
            return
        stop_process(self.process)
        self._reader.join(timeout=5)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    """bridge with the SIP gateway on 127.0.0.42 (UDP only), pbx.test allowed and routed to Kamailio."""
    directory = tmp_path_factory.mktemp("sip-kamailio")
    config_path = write_sip_config(str(directory), SIP_SECTION)
    accounts = accounts_for(USERS)
    add_users(config_path, accounts)
    process = ServerProcess(config_path, accounts)
    process.start()
    ports = [int(m.group(1)) for m in map(LISTENING.search, process.lines) if m]
    assert ports, process.tail()
    process.sip_port = ports[0]
    yield process
    process.stop()


@pytest.fixture(scope="module")
def kamailio(bridge, tmp_path_factory):
    if sip_options_answered(PBX):
        pytest.fail(f"something already answers SIP on {PBX[0]}:{PBX[1]} (a packaged kamailio service?)")
    server = Kamailio(tmp_path_factory.mktemp("kamailio"), PBX, f"sip:{BRIDGE_ADDRESS}:{bridge.sip_port}")
    server.start()
    yield server
    server.stop()


def test_kamailio_relays_message_to_xmpp_and_back(bridge, kamailio, tmp_path):
    """carol@pbx.test (sipp, registered at Kamailio) -> Kamailio -> bridge -> bob@localhost (slixmpp):
    202 back to carol, bob sees carol\\40pbx.test@sip.localhost; bob's answer -> bridge -> Kamailio
    (static route) -> carol's binding, which sipp answers 200."""
    log_file = tmp_path / "carol.log"
    errors = tmp_path / "carol.errors"
    command = [SIPP, f"{PBX[0]}:{PBX[1]}", "-sf", os.path.join(HERE, "carol_roundtrip.xml"), "-m", "1",
               "-i", SIPP_ADDRESS, "-p", str(free_port()), "-t", "u1", "-s", "carol", "-nostdin", "-timeout", "20s",
               "-timeout_error", "-trace_err", "-error_file", str(errors), "-trace_logs", "-log_file", str(log_file)]

    def run_sipp():
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))

    async def scenario():
        async with Clients(bridge) as clients:
            bob = await clients.login("bob@localhost/pc")
            run = asyncio.ensure_future(asyncio.to_thread(run_sipp))
            message = await next_item(bob.messages, lambda m: m["body"], timeout=20, what="carol's MESSAGE")
            assert str(message["from"].bare) == "carol\\40pbx.test@sip.localhost", message
            assert message["body"].strip() == "hello bob, from carol at pbx.test"
            assert message["thread"], message
            reply = message.reply("hello carol, from XMPP")
            reply["thread"] = message["thread"]
            reply.send()
            return await run

    done = asyncio.run(scenario())
    output = done.stdout[-3000:] + done.stderr + (errors.read_text() if errors.exists() else "")
    evidence = output + "\n-- bridge --\n" + bridge.tail(40) + "\n-- kamailio --\n" + kamailio.tail(30)
    assert done.returncode == 0, evidence
    logged = log_file.read_text() if log_file.exists() else ""
    assert "reply from=sip:bob@localhost to=sip:carol@pbx.test body=hello carol, from XMPP" in logged, \
        logged + evidence
    # Both requests crossed Kamailio, each way once.
    assert any("to bridge: MESSAGE sip:bob@localhost from sip:carol@pbx.test" in line for line in kamailio.lines), \
        kamailio.tail()
    assert any("to a user of pbx.test: MESSAGE sip:carol@pbx.test from sip:bob@localhost" in line
               for line in kamailio.lines), kamailio.tail()

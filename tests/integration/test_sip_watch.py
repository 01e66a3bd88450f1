"""An XMPP user watching a foreign SIP user through the gateway, end to end (docs/sip.md, "Foreign
contacts' presence"): the real bridge process, slixmpp as the watcher and sipp (Debian package
sip-tester) as the user agent of the foreign domain pbx.example, reached by a static route."""

import asyncio
import os
import shutil
import socket
import subprocess

import pytest

from .conftest import accounts_for
from .harness import Clients, ServerProcess, add_users, next_item, write_config

SIPP = shutil.which("sipp")
SCENARIOS = os.path.join(os.path.dirname(__file__), "sipp")
USERS = ("alice@localhost",)
CAROL = "carol\\40pbx.example@sip.localhost"
NOTE = "at the front desk"

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is missing (Debian package sip-tester, "
                                                     ".ci/install-test-peers)")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sip_section(foreign_port):
    """The [sip] table: loopback listeners, pbx.example allowed and routed to sipp's port."""
    return f"""
[sip]
enabled = true
udp_endpoints = ["udp:0:interface=127.0.0.1"]
tcp_endpoints = ["tcp:0:interface=127.0.0.1"]
tls_endpoints = ["tcp:0:interface=127.0.0.1"]
advertised_address = "127.0.0.1"
allowed_domains = ["pbx.example"]
static_routes = {{ "pbx.example" = "127.0.0.1:{foreign_port}" }}
"""


@pytest.fixture(scope="module")
def watched_bridge(tmp_path_factory):
    """bridge whose gateway routes pbx.example to a loopback port (``foreign_port``) where sipp listens."""
    directory = tmp_path_factory.mktemp("sip-watch")
    foreign_port = free_port()
    config_path = write_config(str(directory), sip=sip_section(foreign_port))
    accounts = accounts_for(USERS)
    add_users(config_path, accounts)
    process = ServerProcess(config_path, accounts)
    process.start(wait_for=("c2s", "sip-udp"))
    process.foreign_port = foreign_port
    yield process
    process.stop()


def run_foreign_agent(port, tmp_path):
    """sipp as carol@pbx.example (UAS, one call of watch_foreign.xml on ``port``); (status, output, log)."""
    log_file = tmp_path / "watch_foreign.log"
    errors = tmp_path / "watch_foreign.errors"
    command = [SIPP, "-sf", os.path.join(SCENARIOS, "watch_foreign.xml"), "-m", "1", "-i", "127.0.0.1",
               "-p", str(port), "-t", "u1", "-nostdin", "-timeout", "30s", "-timeout_error",
               "-trace_err", "-error_file", str(errors), "-trace_logs", "-log_file", str(log_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    output = done.stdout[-3000:] + done.stderr + (errors.read_text() if errors.exists() else "")
    return done.returncode, output, log_file.read_text() if log_file.exists() else ""


def test_xmpp_user_watches_foreign_sip_user(watched_bridge, tmp_path):
    """alice (slixmpp) subscribes to carol\\40pbx.example@sip.localhost: the gateway SUBSCRIBEs from
    sip:alice@localhost to sip:carol@pbx.example at sipp, which answers 200 (To tag, Contact, Expires), and
    alice gets ``subscribed`` from carol's bare JID.  sipp then NOTIFYs in that dialog a PIDF open with a
    note: alice gets available presence from carol's JID/sip with the note as status; a second NOTIFY
    with basic closed gives her unavailable presence from there.  Both NOTIFYs must be answered 200.

    sipp may still be binding its port when the first SUBSCRIBE leaves; the gateway's UDP client
    transaction retransmits it (Timer E), so no wait for sipp's start is needed."""
    bridge = watched_bridge

    async def scenario():
        async with Clients(bridge) as clients:
            agent = asyncio.ensure_future(asyncio.to_thread(run_foreign_agent, bridge.foreign_port, tmp_path))
            alice = await clients.login("alice@localhost/pc")
            from_carol = lambda p: p["from"].bare == CAROL  # noqa: E731
            alice.send_presence(pto=CAROL, ptype="subscribe")
            try:
                subscribed = await next_item(alice.presences,
                                             lambda p: from_carol(p) and p["type"] in ("subscribed", "unsubscribed"),
                                             timeout=20, what="carol's answer to the subscription")
                assert subscribed["type"] == "subscribed", subscribed
                assert str(subscribed["from"]) == CAROL, subscribed
                available = await next_item(alice.presences,
                                            lambda p: from_carol(p) and p["type"] not in ("subscribed",),
                                            timeout=20, what="carol's available presence")
                assert str(available["from"]) == f"{CAROL}/sip", available
                assert available["type"] == "available", available
                assert available["status"] == NOTE, available
                gone = await next_item(alice.presences,
                                       lambda p: from_carol(p) and p["type"] == "unavailable",
                                       timeout=20, what="carol's unavailable presence")
                assert str(gone["from"]) == f"{CAROL}/sip", gone
            except AssertionError as problem:
                if agent.done():
                    raise AssertionError(f"{problem}\nsipp:\n{agent.result()[1]}\n{bridge.tail(40)}") from None
                raise AssertionError(f"{problem}\n{bridge.tail(40)}") from None
            return await asyncio.wait_for(agent, 60)

    status, output, logged = asyncio.run(scenario())
    assert status == 0, output + bridge.tail(40)
    assert ("subscribe from=sip:alice@localhost to=sip:carol@pbx.example contact=sip:alice@127.0.0.1:"
            in logged), logged
    assert "event=presence" in logged and "second notify answered" in logged, logged

"""`bridgectl import-prosody` on a data folder written by a real Prosody (the Debian package): its users
log in to bridge with their old passwords and find their rosters, vCards and offline messages."""

import asyncio
import os
import subprocess
import sys
import threading

import pytest

from tests import pki

from .federation import PROSODY, PROSODYCTL, _lua_string, free_port, prosody_available
from .harness import ServerProcess, login, next_item, server_env, write_config

pytestmark = pytest.mark.skipif(not prosody_available(), reason="prosody and prosodyctl are not installed")

DOMAIN = "example.test"  # a host of the test configuration (tests/integration/harness.py)
PASSWORDS = {"ana": "ana's old pässword", "bob": "bob old pw"}


def prosody_folder(directory):
    """A Prosody data folder: ana and bob registered with prosodyctl (internal_hashed, Prosody's default),
    then, on the running Prosody, ana's roster item, vCard and private XML, and a message to bob, who is
    offline.  The data_path."""
    data = os.path.join(directory, "data")
    certs = os.path.join(directory, "certs")
    os.makedirs(data)
    os.makedirs(certs)
    pki.self_signed(certs, [DOMAIN], file_name=DOMAIN)
    port = free_port()
    config_path = os.path.join(directory, "prosody.cfg.lua")
    lines = [
        f"pidfile = {_lua_string(os.path.join(directory, 'prosody.pid'))}",
        f"data_path = {_lua_string(data)}",
        f"certificates = {_lua_string(certs)}",
        'log = { { levels = { min = "info" }, to = "console" } }',
        'c2s_interfaces = { "127.0.0.1" }',
        f"c2s_ports = {{ {port} }}",
        "c2s_direct_tls_ports = { }",
        "s2s_ports = { }",
        "s2s_direct_tls_ports = { }",
        'modules_enabled = { "roster", "saslauth", "tls", "disco", "vcard", "private", "offline" }',
        'authentication = "internal_hashed"',
        'storage = "internal"',
    ]
    if os.getuid() == 0:
        lines.append("run_as_root = true")
    lines.append(f"VirtualHost {_lua_string(DOMAIN)}")
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    for user, password in PASSWORDS.items():
        done = subprocess.run([PROSODYCTL, "--config", config_path, "register", user, DOMAIN, password],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    process = ServerProcess(config_path, command=[PROSODY, "--config", config_path, "-F"])
    process.process = subprocess.Popen(process.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       cwd=directory)
    process._reader = threading.Thread(target=process._drain, daemon=True)
    process._reader.start()
    try:
        process.wait_for_line(lambda line: "Activated service 'c2s'" in line, 30, what="Prosody's c2s listener")

        async def fill():
            ana = await login(f"ana@{DOMAIN}/desk", PASSWORDS["ana"], port, presence=False)
            for payload in ("<query xmlns='jabber:iq:roster'><item jid='bob@example.test' name='Bobby'>"
                            "<group>Team</group></item></query>",
                            "<vCard xmlns='vcard-temp'><FN>Ana Example</FN></vCard>"):
                reply = await ana.query("set", None, payload)
                assert reply["type"] == "result", reply
            ana.send_message(mto=f"bob@{DOMAIN}", mbody="kept for bob by prosody", mtype="chat")
            # A ping answered after the message: Prosody has stored it.
            reply = await ana.query("get", DOMAIN, "<ping xmlns='urn:xmpp:ping'/>")
            assert reply["type"] in ("result", "error")
            await ana.close()

        asyncio.run(fill())
    finally:
        process.stop()
    assert os.path.exists(os.path.join(data, "example%2etest", "offline", "bob.list")), os.listdir(
        os.path.join(data, "example%2etest"))
    return data


def test_prosody_users_keep_their_passwords(tmp_path):
    """bridgectl import-prosody reads the folder; ana logs in to bridge with her Prosody password (SCRAM-SHA-1,
    which Prosody's keys are) and finds her roster item and vCard; bob logs in with PLAIN, gets the offline
    message, and then logs in with SCRAM-SHA-256 too."""
    data = prosody_folder(str(tmp_path / "prosody"))
    (tmp_path / "bridge").mkdir()
    config_path = write_config(str(tmp_path / "bridge"))
    done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, "import-prosody", data],
                          env=server_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 accounts imported" in done.stdout
    server = ServerProcess(config_path).start()
    try:
        async def check():
            ana = await login(f"ana@{DOMAIN}/desk", PASSWORDS["ana"], server.port, roster=False,
                              mechanisms=["SCRAM-SHA-1"])
            roster = await ana.get_roster()
            item = roster["roster"]["items"][f"bob@{DOMAIN}"]
            assert item["name"] == "Bobby" and item["groups"] == ["Team"], item
            vcard = await ana.query("get", f"ana@{DOMAIN}", "<vCard xmlns='vcard-temp'/>")
            assert "Ana Example" in str(vcard), vcard
            await ana.close()
            bob = await login(f"bob@{DOMAIN}/phone", PASSWORDS["bob"], server.port, mechanisms=["PLAIN"])
            message = await next_item(bob.messages, lambda m: m["body"] == "kept for bob by prosody",
                                      what="the offline message kept by Prosody")
            delay = message.xml.find("{urn:xmpp:delay}delay")
            assert delay is not None and delay.get("stamp"), message
            await bob.close()
            # The PLAIN login completed bob's keys: a client's own choice (SCRAM-SHA-256) now works.
            again = await login(f"bob@{DOMAIN}/laptop", PASSWORDS["bob"], server.port)
            assert again.mechanism.startswith("SCRAM-SHA-256"), again.mechanism
            await again.close()

        asyncio.run(check())
    finally:
        server.stop()

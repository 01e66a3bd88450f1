"""Day-two operations on the real server: reload on SIGHUP and bridgectl's commands to the running server
(docs/operations.md)."""

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests import pki

from .conftest import accounts_for
from .harness import (SIP_OFF, Clients, ServerProcess, add_users, barrier, client_tls_context, next_item, server_env,
                      write_config)

RELOADED = "configuration reloaded from"


def bridgectl(config_path, *args):
    return subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, *args], env=server_env(),
                          capture_output=True, text=True, timeout=60)


def served_certificate(port):
    """The SHA-256 fingerprint of the certificate a new direct TLS connection to ``port`` is shown."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_tls_context().wrap_socket(raw, server_hostname="localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def fingerprint(cert_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(cert_path, "rb") as handle:
        certificate = x509.load_pem_x509_certificate(handle.read())
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture
def certified_server(tmp_path):
    """A server whose [tls] certificate is a file the test can replace; stopped at the end."""
    directory = str(tmp_path)
    cert_path, key_path = pki.self_signed(directory, ["localhost"], file_name="site")
    tables = f'[tls]\ncertificate = "{cert_path}"\nprivate_key = "{key_path}"\n'
    config_path = write_config(directory, sip=SIP_OFF, tables=tables)
    accounts = accounts_for(["alice@localhost", "bob@localhost"])
    add_users(config_path, accounts)
    process = ServerProcess(config_path, accounts)
    process.cert_path, process.key_path = cert_path, key_path
    process.directory = directory
    process.start()
    yield process
    process.stop()


def rewrite(path, old, new):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert old in text, f"{old!r} not in {path}"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace(old, new, 1))


def test_sighup_keeps_sessions_and_serves_the_renewed_certificate(certified_server):
    """A slixmpp session stays up across a SIGHUP after the certificate files were replaced and a limit and a
    listening address changed; a new TLS connection is shown the new certificate; the limit applies, the
    address change is logged as needing a restart and the old listener stays."""
    server = certified_server
    before = fingerprint(server.cert_path)
    assert served_certificate(server.tls_port) == before

    async def scenario():
        async with Clients(server) as clients:
            alice = await clients.login("alice@localhost/desk")
            pki.self_signed(server.directory, ["localhost"], file_name="site")  # renewed, same files
            rewrite(server.config_path, "[c2s]\n", "[c2s]\nmax_sessions_per_user = 4\n")
            rewrite(server.config_path, 'endpoints = ["tcp:0:interface=127.0.0.1"]\ndirect_tls',
                    'endpoints = ["tcp:15222:interface=127.0.0.1"]\ndirect_tls')
            start = len(server.lines)
            server.process.send_signal(signal.SIGHUP)
            await asyncio.to_thread(server.wait_for_line, lambda line: RELOADED in line, 30, "the reload")
            assert server.alive()
            log = server.tail(start=start)
            assert "c2s.max_sessions_per_user applied" in log, log
            assert "c2s.endpoints changed" in log and "needs a restart" in log, log
            await barrier(alice)
            alice.send_message(mto="alice@localhost/desk", mbody="still here", mtype="chat")
            message = await next_item(alice.messages, what="a message after the reload")
            assert message["body"] == "still here"
            renewed = await asyncio.to_thread(served_certificate, server.tls_port)
            assert renewed == fingerprint(server.cert_path) != before
            # The old listener still listens, on the old address.
            bob = await clients.login("bob@localhost/pc")
            await barrier(bob)

    asyncio.run(scenario())


def test_a_broken_file_is_refused_and_the_running_configuration_stays(certified_server):
    """A file with an error: bridgectl reload fails naming the file and key (it checks the file before it
    asks the server); a SIGHUP makes the server log the same refusal, and it keeps its sessions and still
    serves the certificate it had."""
    server = certified_server
    before = served_certificate(server.tls_port)

    async def scenario():
        async with Clients(server) as clients:
            alice = await clients.login("alice@localhost/desk")
            pki.self_signed(server.directory, ["localhost"], file_name="site")
            rewrite(server.config_path, "[c2s]\n", "[c2s]\nmax_sessions_per_user = 0\n")
            done = await asyncio.to_thread(bridgectl, server.config_path, "reload")
            assert done.returncode == 1, done.stdout + done.stderr
            assert f"{server.config_path}: c2s.max_sessions_per_user: must be at least 1" in done.stderr
            start = len(server.lines)
            server.process.send_signal(signal.SIGHUP)
            await asyncio.to_thread(server.wait_for_line, lambda line: "reload refused" in line, 30, "the refusal")
            await asyncio.to_thread(server.wait_for_line, lambda line: "c2s.max_sessions_per_user" in line, 30,
                                    "the reason of the refusal")
            assert server.alive()
            assert RELOADED not in server.tail(start=start)
            await barrier(alice)

    asyncio.run(scenario())
    assert served_certificate(server.tls_port) == before


def test_status_sessions_announce_and_kick(certified_server):
    """bridgectl status and sessions list a live slixmpp session; announce reaches it as a headline; kick
    ends it with a stream error while another account's session stays."""
    server = certified_server

    async def scenario():
        async with Clients(server) as clients:
            alice = await clients.login("alice@localhost/desk")
            bob = await clients.login("bob@localhost/pc")
            status = await asyncio.to_thread(bridgectl, server.config_path, "status")
            assert status.returncode == 0, status.stderr
            assert "sessions: 2" in status.stdout and "localhost: tcp 2" in status.stdout, status.stdout
            listed = await asyncio.to_thread(bridgectl, server.config_path, "sessions", "alice@localhost")
            assert listed.returncode == 0, listed.stderr
            assert listed.stdout.startswith("alice@localhost/desk\ttcp\t127.0.0.1:"), listed.stdout
            assert "bob@" not in listed.stdout

            announced = await asyncio.to_thread(bridgectl, server.config_path, "announce", "localhost", "restart at 6")
            assert announced.stdout.strip() == "announce: localhost: sent to 2 sessions", announced.stderr
            for client in (alice, bob):
                message = await next_item(client.messages, lambda m: m["type"] == "headline", what="the announcement")
                assert (message["body"], str(message["from"])) == ("restart at 6", "localhost")

            kicked = await asyncio.to_thread(bridgectl, server.config_path, "kick", "alice@localhost")
            assert kicked.stdout.strip() == "kick: alice@localhost: done, 1 sessions ended", kicked.stderr
            error = await next_item(alice.stream_errors, what="the stream error")
            assert error["condition"] == "policy-violation"
            await asyncio.wait_for(asyncio.shield(alice.ended), 10)
            await barrier(bob)

    asyncio.run(scenario())


def test_deluser_ends_the_live_session(certified_server):
    """bridgectl deluser with the server running deletes the account through it and ends the live session;
    the account can no longer log in."""
    server = certified_server

    async def scenario():
        async with Clients(server) as clients:
            alice = await clients.login("alice@localhost/desk")
            deleted = await asyncio.to_thread(bridgectl, server.config_path, "deluser", "alice@localhost")
            assert deleted.stdout.strip() == "deluser: alice@localhost: done, 1 sessions ended", deleted.stderr
            error = await next_item(alice.stream_errors, what="the stream error")
            assert error["condition"] == "not-authorized"
            await asyncio.wait_for(asyncio.shield(alice.ended), 10)
            with pytest.raises(AssertionError, match="authentication failed"):
                await clients.login("alice@localhost/again")

    asyncio.run(scenario())


def test_commands_to_a_server_that_is_not_running(tmp_path):
    """Aimed at a server that does not run, bridgectl says so in one line and fails."""
    config_path = write_config(str(tmp_path))
    os.makedirs(os.path.join(str(tmp_path), "data"))
    done = bridgectl(config_path, "status")
    assert done.returncode == 1
    assert done.stderr == (f"bridgectl: the server is not running (no control socket at "
                           f"{os.path.join(str(tmp_path), 'data', 'control.sock')})\n")


def test_the_control_socket_is_for_the_servers_user_only(certified_server):
    """The control socket is mode 0600, in the data folder."""
    path = os.path.join(certified_server.directory, "data", "control.sock")
    assert os.stat(path).st_mode & 0o777 == 0o600

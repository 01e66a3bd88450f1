"""Listeners on IPv6 and IPv4: the default dual-stack ``tcp:PORT`` and an IPv6-only ``tcp6`` listener.

Traffic only ever goes to 127.0.0.1 and ::1.  The IPv6 tests are skipped, saying so, where ::1 cannot be
bound (a host without IPv6).
"""

import re
import socket

import pytest

from .harness import NS_STREAMS, ServerProcess, write_config


def ipv6_loopback():
    """Whether ::1 can be bound here."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="::1 is not available: this host has no IPv6 loopback")


def open_stream(host, port):
    """Open an XMPP stream to (host, port) over a plain socket; the first bytes of the server's answer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect((host, port))
        connection.sendall(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' "
                           "to='localhost' version='1.0'>".encode())
        received = b""
        while b"</stream:features>" not in received:
            data = connection.recv(65536)
            if not data:
                break
            received += data
        return received


def config_with_c2s_endpoint(tmp_path, endpoint):
    """A test configuration whose (STARTTLS) client listener is ``endpoint``; its path."""
    config_path = write_config(str(tmp_path))
    with open(config_path, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace('endpoints = ["tcp:0:interface=127.0.0.1"]\ndirect_tls_endpoints',
                        f'endpoints = ["{endpoint}"]\ndirect_tls_endpoints', 1)
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return config_path


def listening_port(process, kind, host):
    pattern = re.compile(rf"listening {kind} on {re.escape(host)}:(\d+)")
    for line in process.lines:
        match = pattern.search(line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"no 'listening {kind} on {host}' line:\n" + process.tail())


@needs_ipv6
def test_dual_stack_default(tmp_path):
    """``tcp:0`` (no interface: how the default listeners are written) takes clients over IPv6 and IPv4."""
    config_path = config_with_c2s_endpoint(tmp_path, "tcp:0")
    process = ServerProcess(config_path).start(wait_for=("c2s-direct-tls",))
    try:
        port = listening_port(process, "c2s", "::")
        for host in ("::1", "127.0.0.1"):
            assert b"<stream:features" in open_stream(host, port), host
    finally:
        process.stop()


@needs_ipv6
def test_ipv6_only_listener(tmp_path):
    """A ``tcp6`` listener on ::1 serves XMPP clients over IPv6."""
    config_path = config_with_c2s_endpoint(tmp_path, "tcp6:0:interface=\\\\:\\\\:1")
    process = ServerProcess(config_path).start(wait_for=("c2s-direct-tls",))
    try:
        port = listening_port(process, "c2s", "::1")
        assert b"<stream:features" in open_stream("::1", port)
    finally:
        process.stop()

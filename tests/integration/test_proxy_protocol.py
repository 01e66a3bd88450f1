"""The real server's client listener behind a TCP proxy that speaks the PROXY protocol (played by this test,
from the trusted address 127.0.0.1): the address in the header is the one counted and listed."""

import socket
import struct

from bridge.core.proxyprotocol import V2_SIGNATURE

from .harness import NS_STREAMS, NS_STREAM_ERRORS, RawClient, ServerProcess, add_users, write_config
from .test_operations import bridgectl

V1_HEADER = b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 5222\r\n"


def v2_header(source, port):
    """A version 2 PROXY header of a TCP over IPv4 connection from ``source``:``port``."""
    payload = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 5222)
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(payload)) + payload


def test_v1_and_v2_headers_give_the_client_address(tmp_path):
    """With one connection per address, a client behind the proxy (v1 header) is listed with its own
    address; a second connection of that address (v2 header) is refused and logged with that address, one of
    another address is served;
    on the direct TLS listener the header before the handshake gives the address too."""
    config_path = write_config(str(tmp_path), c2s_options='proxy_protocol_trusted_proxies = ["127.0.0.1"]\n'
                                                          "max_connections_per_address = 1")
    add_users(config_path, {"alice@localhost": "pw-alice"})
    server = ServerProcess(config_path, {"alice@localhost": "pw-alice"}).start()
    clients = []
    try:
        first = RawClient(server.port)
        clients.append(first)
        first.send(V1_HEADER)
        first.login("alice", "pw-alice")
        listed = bridgectl(config_path, "sessions", "alice@localhost")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith("alice@localhost/raw\ttcp\t192.0.2.9:40000\t"), listed.stdout

        same = RawClient(server.port)
        clients.append(same)
        same.send(v2_header("192.0.2.9", 40001))
        same.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                  f"xmlns:stream='{NS_STREAMS}' to='localhost' version='1.0'>")
        error = same.expect(f"{{{NS_STREAMS}}}error")
        assert error.find(f"{{{NS_STREAM_ERRORS}}}policy-violation") is not None, same.dump()
        server.wait_for_line(lambda line: "stream error policy-violation for 192.0.2.9:40001" in line, 10,
                             what="the refusal logged with the client's address")

        other = RawClient(server.port)
        clients.append(other)
        other.send(v2_header("192.0.2.10", 40002))
        other.open()

        # On the direct TLS listener the header comes before the handshake.
        direct = RawClient(server.tls_port)
        clients.append(direct)
        direct.send(b"PROXY TCP4 192.0.2.11 127.0.0.1 40003 5223\r\n")
        direct._wrap("localhost")
        direct.login("alice", "pw-alice", resource="tls")
        listed = bridgectl(config_path, "sessions", "alice@localhost/tls")
        assert listed.stdout.startswith("alice@localhost/tls\ttcp\t192.0.2.11:40003\t"), listed.stdout
    finally:
        for client in clients:
            client.close()
        server.stop()

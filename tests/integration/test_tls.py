"""TLS on the client listeners: the per-listener version policy and SCRAM-PLUS with tls-exporter."""

import select
import socket
import ssl
import time

import pytest
from OpenSSL import SSL

from .harness import NS_BIND, NS_SASL, NS_TLS, RawClient, ServerProcess, add_users, scram_login, write_config


class OpenSSLSocket:
    """The few socket methods RawClient uses, over a pyOpenSSL connection (which can export
    keying material, unlike the standard library's ssl module)."""

    def __init__(self, sock):
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        self.timeout = 10.0
        sock.setblocking(False)
        self.conn = SSL.Connection(context, sock)
        self.conn.set_connect_state()
        self._retry(self.conn.do_handshake)

    def _retry(self, operation, *args):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return operation(*args)
            except SSL.WantReadError:
                wanted = ([self.conn], [])
            except SSL.WantWriteError:
                wanted = ([], [self.conn])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(*wanted, [], remaining)[:2]):
                raise socket.timeout()

    def settimeout(self, timeout):
        self.timeout = timeout

    def sendall(self, data):
        while data:
            sent = self._retry(self.conn.send, data)
            data = data[sent:]

    def recv(self, size):
        try:
            return self._retry(self.conn.recv, size)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return b""

    def close(self):
        self.conn.close()


def tls13_client(port):
    """A raw client that did STARTTLS with pyOpenSSL; its features after TLS."""
    raw = RawClient(port)
    raw.open("localhost")
    raw.send(f"<starttls xmlns='{NS_TLS}'/>")
    raw.expect(f"{{{NS_TLS}}}proceed")
    raw.sock = OpenSSLSocket(raw.sock)
    raw.tls = True
    return raw, raw.open("localhost")


def test_scram_plus_with_tls_exporter(server):
    """On TLS 1.3 the server offers SCRAM-SHA-256-PLUS; a client bound to the same TLS channel
    logs in, and one whose binding data differs (a man in the middle) is refused."""
    password = server.password("alice@localhost")
    raw, features = tls13_client(server.port)
    try:
        assert raw.sock.conn.get_protocol_version_name() == "TLSv1.3"
        offered = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        assert "SCRAM-SHA-256-PLUS" in offered, raw.dump()
        binding = raw.sock.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        outcome = scram_login(raw, "alice", password, "SCRAM-SHA-256-PLUS", binding)
        assert outcome.tag == f"{{{NS_SASL}}}success", raw.dump()
        raw.open("localhost")
        raw.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'><resource>plus</resource></bind></iq>")
        assert raw.next().get("type") == "result", raw.dump()
    finally:
        raw.close()

    raw, _ = tls13_client(server.port)
    try:
        outcome = scram_login(raw, "alice", password, "SCRAM-SHA-256-PLUS", b"\x00" * 32)
        assert outcome.tag == f"{{{NS_SASL}}}failure", raw.dump()
        assert outcome.find(f"{{{NS_SASL}}}not-authorized") is not None, raw.dump()
    finally:
        raw.close()


@pytest.fixture(scope="module")
def tls13_only_server(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tls13"))
    config = write_config(directory, c2s_options='tls_min_version = "1.3"')
    add_users(config, {"alice@localhost": "pw13"})
    process = ServerProcess(config, {"alice@localhost": "pw13"})
    process.start()
    yield process
    process.stop()


def client_context(maximum):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = maximum
    return context


def handshake(port, maximum):
    """STARTTLS with a client capped at ``maximum``; the negotiated version or the SSL error."""
    raw = RawClient(port)
    try:
        raw.open("localhost")
        raw.send(f"<starttls xmlns='{NS_TLS}'/>")
        raw.expect(f"{{{NS_TLS}}}proceed")
        try:
            tls = client_context(maximum).wrap_socket(raw.sock, server_hostname="localhost")
        except ssl.SSLError as error:
            return error
        version = tls.version()
        tls.close()
        return version
    finally:
        raw.close()


def test_listener_tls_policy(server, tls13_only_server):
    """tls_min_version is the listener's own: the default listener accepts a TLS 1.2 client,
    one configured for 1.3 refuses it and accepts TLS 1.3."""
    assert handshake(server.port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    refused = handshake(tls13_only_server.port, ssl.TLSVersion.TLSv1_2)
    assert isinstance(refused, ssl.SSLError), refused
    assert handshake(tls13_only_server.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"

"""Listening endpoints: ``tcp:PORT`` on IPv6 and IPv4 at once, IPv4 alone where the system has no IPv6."""

import errno
import socket

from twisted.internet import endpoints
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.listening import DualStackEndpoint, listening_endpoint


class FakeSocket:
    """Records what is done to it; ``bind`` fails with ``bind_error`` when one is given."""

    def __init__(self, family, kind, bind_error=None):
        self.family = family
        self.options = {}
        self.bound = None
        self.listening = None
        self.closed = False
        self.bind_error = bind_error

    def setsockopt(self, level, option, value):
        self.options[(level, option)] = value

    def bind(self, address):
        if self.bind_error is not None:
            raise OSError(self.bind_error, "fake failure")
        self.bound = address

    def listen(self, backlog):
        self.listening = backlog

    def setblocking(self, flag):
        pass

    def fileno(self):
        return 42

    def close(self):
        self.closed = True


class ListeningEndpointTests(SynchronousTestCase):
    def test_which_strings_are_dual_stack(self):
        """``tcp:PORT`` (with or without a backlog) is dual-stack; an interface, tcp6 or unix is Twisted's own."""
        reactor = MemoryReactor()
        endpoint = listening_endpoint(reactor, "tcp:5222:backlog=10")
        self.assertIsInstance(endpoint, DualStackEndpoint)
        self.assertEqual((endpoint.port, endpoint.backlog), (5222, 10))
        self.assertEqual(listening_endpoint(reactor, "tcp:port=5269").port, 5269)
        for description in ("tcp:5222:interface=127.0.0.1", "tcp:5222:interface=\\:\\:1", "tcp6:5222",
                            "unix:/tmp/bridge.sock"):
            self.assertNotIsInstance(listening_endpoint(reactor, description), DualStackEndpoint)
        self.assertIsInstance(listening_endpoint(reactor, "tcp:5222:interface=0.0.0.0"), endpoints.TCP4ServerEndpoint)


class DualStackTests(SynchronousTestCase):
    def listen(self, make_socket):
        reactor = MemoryReactor()
        endpoint = DualStackEndpoint(reactor, 5222, 50, make_socket=make_socket)
        return reactor, endpoint.listen(Factory())

    def test_one_ipv6_socket_for_both_families(self):
        """The socket is IPv6 on ``::`` with IPV6_V6ONLY off (IPv4 clients come as mapped addresses),
        handed to the reactor, and our copy of it is closed."""
        made = []

        def make_socket(family, kind):
            made.append(FakeSocket(family, kind))
            return made[-1]

        reactor, listening = self.listen(make_socket)
        self.successResultOf(listening)
        [fake] = made
        self.assertEqual(fake.family, socket.AF_INET6)
        self.assertEqual(fake.options[(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)], 0)
        self.assertEqual((fake.bound, fake.listening, fake.closed), (("::", 5222), 50, True))
        self.assertEqual([(number, family) for number, family, _ in reactor.adoptedPorts], [(42, socket.AF_INET6)])
        self.assertEqual(reactor.tcpServers, [])

    def test_no_ipv6_falls_back_to_ipv4(self):
        """Without IPv6 (no AF_INET6 sockets, or ``::`` not bindable) the port listens on IPv4 alone."""
        def no_family(family, kind):
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

        for make_socket in (no_family, lambda family, kind: FakeSocket(family, kind, errno.EADDRNOTAVAIL)):
            reactor, listening = self.listen(make_socket)
            self.successResultOf(listening)
            self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers], [(5222, "")])
            self.assertEqual(reactor.adoptedPorts, [])

    def test_port_in_use_is_an_error(self):
        """A port already taken fails the listen (the server stops with the reason), without a fallback."""
        reactor, listening = self.listen(lambda family, kind: FakeSocket(family, kind, errno.EADDRINUSE))
        self.assertEqual(self.failureResultOf(listening, OSError).value.errno, errno.EADDRINUSE)
        self.assertEqual(reactor.tcpServers, [])

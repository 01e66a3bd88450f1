"""Listening endpoints: Twisted's endpoint strings, with ``tcp:PORT`` meaning IPv6 and IPv4.

Twisted reads ``tcp:5222`` as every IPv4 address only.  bridge reads a
``tcp`` endpoint that names no ``interface`` as every address of both
families: one IPv6 socket on ``::`` with ``IPV6_V6ONLY`` off (whatever the
system's ``bindv6only`` default), which also takes IPv4 clients as
IPv4-mapped addresses.  On a system without IPv6 (no AF_INET6 sockets, or
``::`` that cannot be bound) the same endpoint listens on IPv4 alone and
says so in the log, so such a host still starts.  Every other string
(``tcp:PORT:interface=ADDRESS``, ``tcp6:...``, ``unix:...``) means what
Twisted says it means.
"""

import errno
import re
import socket

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

DEFAULT_BACKLOG = 50
_UNESCAPED_COLON = re.compile(r"(?<!\\):")
# What binding ``::`` fails with when the system has no IPv6 (rather than when the port is taken).
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def _options(description):
    """{option: value} of a ``tcp:`` description (the port as ``port``), or None for any other kind."""
    kind, _, rest = description.partition(":")
    if kind != "tcp":
        return None
    options = {}
    for part in _UNESCAPED_COLON.split(rest):
        name, separator, value = part.partition("=")
        if separator:
            options[name] = value
        else:
            options["port"] = part
    return options


def listening_endpoint(reactor, description):
    """The server endpoint of ``description``: dual-stack for ``tcp`` without ``interface``."""
    options = _options(description)
    if options is not None and "interface" not in options:
        return DualStackEndpoint(reactor, int(options["port"]), int(options.get("backlog", DEFAULT_BACKLOG)))
    return endpoints.serverFromString(reactor, description)


@implementer(IStreamServerEndpoint)
class DualStackEndpoint:
    """Every address, IPv6 and IPv4, on ``port``; IPv4 alone where the system has no IPv6.

    ``make_socket``: ``socket.socket``, or a stand-in in tests.
    """

    def __init__(self, reactor, port, backlog=DEFAULT_BACKLOG, make_socket=socket.socket):
        self.reactor = reactor
        self.port = port
        self.backlog = backlog
        self.make_socket = make_socket

    def listen(self, factory):
        try:
            listening = self._dual_stack_socket()
        except OSError as error:
            if error.errno not in _NO_IPV6:
                return defer.fail(error)
            log.info("no IPv6 on this system ({reason}): listening on IPv4 only, port {port}",
                     reason=error.strerror, port=self.port)
            return defer.execute(self.reactor.listenTCP, self.port, factory, self.backlog, "")
        try:
            return defer.succeed(self.reactor.adoptStreamPort(listening.fileno(), socket.AF_INET6, factory))
        finally:
            listening.close()  # the reactor holds its own duplicate of the descriptor

    def _dual_stack_socket(self):
        listening = self.make_socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.bind(("::", self.port))
            listening.listen(self.backlog)
            listening.setblocking(False)
        except OSError:
            listening.close()
            raise
        return listening

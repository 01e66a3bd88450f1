"""SOCKS5 bytestreams (XEP-0065) through bridge's proxy.localhost, with slixmpp's own xep_0065 plugin on both
sides: the initiator discovers the proxy, offers it, the target connects, the initiator connects and activates,
and a file goes through the proxy's listener on 127.0.0.1."""

import asyncio
import hashlib
import os

import pytest

from .harness import TIMEOUT, Clients

USERS = ("ida@localhost", "tim@localhost")
PLUGINS = {"xep_0030": {}, "xep_0065": {"auto_accept": True}}
PROXY_TABLE = """\
[proxy65]
enabled = true
endpoints = ["tcp:0:interface=127.0.0.1"]
"""


@pytest.fixture(scope="module")
def proxy_server(start_server):
    return start_server("proxy65", USERS, tables=PROXY_TABLE, wait_for=("c2s", "c2s-direct-tls", "proxy65"))


def test_file_goes_through_the_proxy(proxy_server):
    """A 1 MB file written by the initiator in 16 KB pieces arrives whole and in order at the target, through
    proxy.localhost (the only streamhost offered); the streamhost the proxy announced is its loopback listener;
    the initiator's close ends the target's stream too."""
    content = os.urandom(1024 * 1024)

    async def scenario():
        async with Clients(proxy_server) as clients:
            ida = await clients.login("ida@localhost/a", plugins=PLUGINS)
            tim = await clients.login("tim@localhost/b", plugins=PLUGINS)
            received, closed = bytearray(), asyncio.get_running_loop().create_future()
            tim.add_event_handler("socks5_data", received.extend)
            tim.add_event_handler("socks5_closed", lambda _: closed.done() or closed.set_result(None))
            proxies = await ida.plugin["xep_0065"].discover_proxies(timeout=TIMEOUT)
            assert proxies == {"proxy.localhost": ("127.0.0.1", str(proxy_server.ports["proxy65"]))}
            stream = await asyncio.wait_for(ida.plugin["xep_0065"].handshake(tim.boundjid, timeout=TIMEOUT),
                                            TIMEOUT)
            for offset in range(0, len(content), 16384):
                await stream.write(content[offset:offset + 16384])
            stream.transport.close()
            await asyncio.wait_for(closed, TIMEOUT)
            return bytes(received)

    received = asyncio.run(scenario())
    assert len(received) == len(content)
    assert hashlib.sha256(received).digest() == hashlib.sha256(content).digest()

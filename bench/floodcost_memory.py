"""The Python side of a few hostile events, in memory (``python -m bench.floodcost --in-memory``).

Run as a script with a tree first on PYTHONPATH (``bench/floodcost.py`` does
it for this tree and --baseline): that tree's unit tests' server (``tests/unit/helpers.py``),
with the reactor's own timers (never run) instead of the fake clock, whose
``callLater`` sorts every call.  Each kind is replayed ``--events`` times
and timed with ``time.process_time``: spoofed SIP INVITEs and REGISTERs
handed to the SIP gateway as datagrams, and BOSH session creations,
refusals past the per-address cap and bare connections handed to the HTTP
listener's protocol over a StringTransport (no pace: the requests are
handled as they come).  No sockets and no kernel: what bridge's own code
costs.  Prints one JSON object {kind: µs per event}.
"""

import argparse
import gc
import json
import random
import time

from twisted.internet import reactor

import tests.unit.helpers as helpers
from bench.hostile import Flood
from bench.load import NS_HTTPBIND, NS_XBOSH
from bridge.gateways.bosh import BoshService
from bridge.gateways.http import HTTPFactory
from bridge.gateways.sip.gateway import SIPGateway
from bridge.gateways.sip.message import parse_datagram
from tests.unit.test_http import HTTPClient, http_config
from tests.unit.test_sip_registrar import make_config as sip_config


def harness_of(config):
    """The unit tests' server, on the reactor's timers."""
    helpers.Clock = lambda: reactor
    return helpers.Harness(config)


class Answers:
    """A UDP transport as the SIP transaction layer sees it: serialises what is sent, and drops it."""
    name = "UDP"
    reliable = False

    def send(self, message, address):
        message.to_bytes()

    def local_address(self):
        return ("127.0.0.1", 5060)


def timed(n, one):
    gc.collect()
    t0 = time.process_time()
    for i in range(n):
        one(i)
    return round((time.process_time() - t0) / n * 1e6, 1)


def sip(n):
    harness = harness_of(sip_config())
    for i in range(1, 51):
        harness.add_user("bench%d@localhost" % i, "benchpass")
    gateway = SIPGateway(helpers.gateway_context(harness.server, "sip", harness.config.sip))
    transport = Answers()
    flood = Flood.__new__(Flood)
    flood.args = argparse.Namespace(domain="localhost")
    out = {}
    for method in ("INVITE", "REGISTER"):
        data = [flood.sip_request(method, 2 * i, 40000 + i % 50) for i in range(n)]
        out["sip-" + method.lower()] = timed(n, lambda i: gateway.message_received(
            parse_datagram(data[i]), transport, ("127.0.9.%d" % (i % 50 + 1), 40000 + i % 50)))
    return out


def bosh(n):
    harness = harness_of(http_config(bosh_sessionless_requests_per_second_per_address=100000,
                                          bosh_sessionless_requests_burst=100000))
    service = BoshService(harness.server, harness.config.http)
    factory = HTTPFactory(harness.server, harness.config.http, service, False)
    per = harness.config.http.bosh_max_sessions_per_address
    addresses = ["127.0.%d.%d" % (i // 250, i % 250 + 1) for i in range(max(1, n // per))]

    def creations(i):
        client = HTTPClient(factory, address=addresses[i])
        for _ in range(per):
            body = ("<body content='text/xml; charset=utf-8' hold='1' rid='%d' to='localhost' ver='1.6' "
                    "wait='60' xml:lang='en' xmpp:version='1.0' xmlns='%s' xmlns:xmpp='%s'/>"
                    % (random.randrange(1 << 40), NS_HTTPBIND, NS_XBOSH)).encode()
            client.request("POST", "/http-bind", body)
            client.transport.clear()
        client.drop()

    def connection(i):
        HTTPClient(factory, address=addresses[i % len(addresses)]).drop()

    out = {"bosh-create": timed(len(addresses), creations) / per,
           "bosh-refuse": timed(len(addresses), creations) / per,
           "http-connection": timed(n, connection)}
    return {k: round(v, 1) for k, v in out.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=2000)
    args = p.parse_args()
    print(json.dumps({**sip(args.events), **bosh(args.events)}))


if __name__ == "__main__":
    main()

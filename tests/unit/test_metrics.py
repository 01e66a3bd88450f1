"""The metrics listener: what a scrape shows of the counters and levels, and who may scrape."""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.cluster import Cluster, Envelope
from bridge.gateways.http import HTTPFactory
from bridge.metrics import metrics_site
from tests.unit.helpers import Harness, gateway_context, make_config
from tests.unit.test_cluster import FakeLink, record
from tests.unit.test_http import HTTPClient, StubBosh


class NoFederation:
    """The federation's tables as the collector reads them: no links, no streams."""

    links = {}
    streams = set()


def scrape(site, address=IPv4Address("TCP", "127.0.0.1", 40000)):
    """{(sample name, sorted label items): value} of one GET /metrics, or None when the connection is refused."""
    protocol = site.buildProtocol(address)
    if protocol is None:
        return None
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsTestCase(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness()
        for user in ("alice", "bob"):
            self.harness.add_user(f"{user}@localhost")
        self.site = metrics_site(self.harness.server, NoFederation())


class CounterTests(MetricsTestCase):
    def test_sessions_by_transport_and_host(self):
        """Bound sessions are shown by transport and host, and leave the count when they end."""
        alice = self.harness.login("alice@localhost/a")
        self.harness.login("bob@localhost/b")
        self.assertEqual(scrape(self.site)[("bridge_sessions", (("host", "localhost"), ("transport", "tcp")))], 2)
        alice.drop()
        self.assertEqual(scrape(self.site)[("bridge_sessions", (("host", "localhost"), ("transport", "tcp")))], 1)

    def test_stanzas_in_out_and_routed(self):
        """Each message a client sends is counted once read, once routed, and once written to its recipient."""
        alice = self.harness.login("alice@localhost/a")
        bob = self.harness.login("bob@localhost/b")
        bob.send("<presence/>")
        before = scrape(self.site)
        for number in range(3):
            alice.send(f"<message to='bob@localhost/b' type='chat' id='m{number}'><body>hi</body></message>")
        after = scrape(self.site)

        def grown(name, **labels):
            key = (name, tuple(sorted(labels.items())))
            return after[key] - before[key]

        self.assertEqual(grown("bridge_stanzas_received_total", stream="c2s", stanza="message"), 3)
        self.assertEqual(grown("bridge_stanzas_routed_total", stanza="message"), 3)
        self.assertEqual(grown("bridge_stanzas_sent_total", stream="c2s", stanza="message"), 3)
        self.assertEqual(grown("bridge_stanzas_received_total", stream="c2s", stanza="iq"), 0)

    def test_bounces_and_authentication_failures(self):
        """A stanza no route takes, and a wrong password, are counted."""
        client = self.harness.connect()
        client.open_stream()
        client.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHdyb25n</auth>")
        alice = self.harness.login("alice@localhost/a")
        alice.send("<message to='nobody@unknown.invalid' type='chat'><body>hi</body></message>")
        samples = scrape(self.site)
        self.assertEqual(samples[("bridge_authentication_failures_total", ())], 1)
        self.assertEqual(samples[("bridge_stanzas_bounced_total", (("stanza", "message"),))], 1)

    def test_refusals_by_kind(self):
        """Stream errors sent to peers are counted by kind."""
        client = self.harness.connect()
        client.send("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                    "to='unknown.invalid' version='1.0'>")
        self.assertEqual(scrape(self.site)[("bridge_refusals_total", (("kind", "stream errors"),))], 1)

    def test_http_refusals(self):
        """HTTP connections refused past the connections per address are counted."""
        config = self.harness.config
        factory = HTTPFactory(self.harness.server, config.http, StubBosh(), False)
        for _ in range(config.c2s.max_connections_per_address + 2):
            HTTPClient(factory, address="192.0.2.7")
        self.assertEqual(scrape(self.site)[("bridge_refusals_total", (("kind", "HTTP refusals"),))], 2)

    def test_process_metrics(self):
        """The process's resident memory and open file descriptors come from prometheus-client's collector."""
        samples = scrape(self.site)
        self.assertGreater(samples[("process_resident_memory_bytes", ())], 0)
        self.assertGreater(samples[("process_open_fds", ())], 0)


class LevelTests(MetricsTestCase):
    def test_levels_of_gateways(self):
        """A gateway's level is read at each scrape (directly or through a Deferred) until it unloads."""
        context = gateway_context(self.harness.server, "test", None)
        queue = []
        context.level("test_queue_messages", "messages in the test queue", lambda: len(queue))
        context.level("test_outbox_messages", "messages in storage", lambda: defer.succeed(7))
        queue += ["a", "b"]
        samples = scrape(self.site)
        self.assertEqual(samples[("bridge_test_queue_messages", ())], 2)
        self.assertEqual(samples[("bridge_test_outbox_messages", ())], 7)
        context.unload()
        self.assertNotIn(("bridge_test_queue_messages", ()), scrape(self.site))

    def test_failing_level_is_left_out(self):
        """A level whose reader fails is left out of the scrape (and logged); the rest is served."""
        context = gateway_context(self.harness.server, "test", None)
        context.level("broken", "a reader that fails", lambda: 1 / 0)
        samples = scrape(self.site)
        self.assertNotIn(("bridge_broken", ()), samples)
        self.assertIn(("bridge_authentication_failures_total", ()), samples)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ClusterTests(MetricsTestCase):
    """node1 of a cluster on the fake Redis link of test_cluster; node2 is another member, with bob's session."""

    def setUp(self):
        super().setUp()
        self.link = FakeLink()
        section = configuration.ClusterConfig(enabled=True, node_name="node1", lease_seconds=9)
        self.cluster = Cluster(self.harness.server, self.link, self.harness.clock, section)
        self.harness.server.cluster = self.cluster
        self.link.members_answer = {"node1": "i1", "node2": "i2"}
        self.link.snapshots["node2"] = (1, {"bob@localhost/far": record()})
        self.cluster.start()
        self.addCleanup(self.cluster.stop)

    def cluster_samples(self):
        return {key: value for key, value in scrape(self.site).items() if key[0].startswith("bridge_cluster_")}

    def test_lease_members_and_messages_between_nodes(self):
        """The lease, the other members, and the messages forwarded, received and dropped by reason; only
        this node's own sessions are counted in bridge_sessions."""
        alice = self.harness.login("alice@localhost/a")
        alice.send("<message to='bob@localhost/far' type='chat'><body>hi</body></message>")
        self.link.on_entries([
            Envelope("stanza", "node2", "alice@localhost/a", "<message><body>back</body></message>").fields(),
            Envelope("stanza", "node2", "alice@localhost/a", "<message><body>x</body>").fields(),
            Envelope("stanza", "node1", "alice@localhost/a", "<message/>").fields(),
            {b"v": b"0"}])
        self.assertEqual(self.cluster_samples(), {
            ("bridge_cluster_lease_held", ()): 1, ("bridge_cluster_accepting_sessions", ()): 1,
            ("bridge_cluster_peers", ()): 1, ("bridge_cluster_messages_forwarded_total", ()): 1,
            ("bridge_cluster_messages_received_total", ()): 2,
            ("bridge_cluster_messages_dropped_total", (("reason", "foreign"),)): 1,
            ("bridge_cluster_messages_dropped_total", (("reason", "malformed"),)): 2})
        self.assertEqual(scrape(self.site)[("bridge_sessions", (("host", "localhost"), ("transport", "tcp")))], 1)

    def test_redis_away_then_lease_lapsed(self):
        """Redis away: the node accepts no sessions while its lease runs; once it lapsed, no lease and no
        members seen."""
        self.link.reachable = False
        self.harness.clock.advance(3)
        samples = self.cluster_samples()
        self.assertEqual((samples[("bridge_cluster_lease_held", ())],
                          samples[("bridge_cluster_accepting_sessions", ())]), (1, 0))
        self.harness.clock.advance(6)
        samples = self.cluster_samples()
        self.assertEqual((samples[("bridge_cluster_lease_held", ())], samples[("bridge_cluster_peers", ())]), (0, 0))


class FailureTests(MetricsTestCase):
    def test_failing_collector_answers_500(self):
        """A scrape whose collection fails is answered 500 (and logged), not left without an answer."""
        self.patch(self.site.resource.children[b"metrics"].collector, "collect", lambda: 1 / 0)
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500"), transport.value()[:40])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class AccessTests(SynchronousTestCase):
    def site(self, **metrics):
        harness = Harness(configuration.parse({"metrics": metrics, "hosts": {"localhost": {}}}, "test.toml"))
        return metrics_site(harness.server, NoFederation())

    def test_loopback_only_by_default(self):
        """By default 127.0.0.1, ::1 and IPv4-mapped loopback may scrape; other addresses are not answered."""
        site = self.site()
        self.assertIsNotNone(scrape(site))
        self.assertIsNotNone(scrape(site, IPv6Address("TCP", "::1", 40000)))
        self.assertIsNotNone(scrape(site, IPv6Address("TCP", "::ffff:127.0.0.1", 40000)))
        self.assertIsNone(scrape(site, IPv4Address("TCP", "192.0.2.10", 40000)))
        self.assertIsNone(scrape(site, IPv6Address("TCP", "2001:db8::1", 40000)))

    def test_configured_addresses(self):
        """``allowed_addresses`` replaces the default: a listed network may scrape, loopback no more."""
        site = self.site(allowed_addresses=["192.0.2.0/24"])
        self.assertIsNotNone(scrape(site, IPv4Address("TCP", "192.0.2.10", 40000)))
        self.assertIsNone(scrape(site))

    def test_bad_address_is_a_config_error(self):
        """An entry that is not an address or network is an error naming the key."""
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.parse({"metrics": {"allowed_addresses": ["localhost"]}}, "test.toml")
        self.assertIn("test.toml: metrics.allowed_addresses: 'localhost'", str(caught.exception))

    def test_off_by_default(self):
        """No metrics listener unless endpoints are configured."""
        self.assertEqual(make_config().metrics.endpoints, [])

"""Prometheus metrics of the running server, on a listener of their own (``[metrics]``, off by default).

Nothing is counted for metrics alone: a scrape reads the counters the hot
paths keep anyway (``bridge.core.counters``, the routing table's, the log
budget's), looks at the tables that exist anyway (sessions, s2s links) and
asks the modules that own a queue for its depth (``Levels``; a reader may
answer with a Deferred, as storage does).  prometheus-client's collector
registry and text exposition turn these into the page; its process
collector adds the process's memory, file descriptors and CPU time.

The listener answers ``GET /metrics`` only, and only to connections from
``allowed_addresses`` (loopback by default): others are closed at once,
unanswered.  Session counts by host and the names of refusal kinds are
worth nothing to a stranger, but the load they show is.
"""

import ipaddress

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server as web_server

from bridge.gateways.http import parse_address

log = Logger()

PATH = b"metrics"


class ServerCollector:
    """A prometheus-client collector of one ``Server`` and its federation (``remote``)."""

    def __init__(self, server, remote):
        self.server = server
        self.remote = remote
        self.levels = {}  # name -> (documentation, value): what the readers of ``server.levels`` gave last

    def read_levels(self):
        """Deferred: every registered level read (a reader that fails is logged and left out)."""
        readers = list(self.server.levels.readers.items())

        def failed(failure, name):
            log.failure("reading the level {name} for metrics failed", failure, name=name)
            return None

        reads = [defer.maybeDeferred(read).addErrback(failed, name) for name, (_, read, _) in readers]

        def keep(values):
            self.levels = {name: (entry[0], value) for (name, entry), value in zip(readers, values)
                           if value is not None}

        return defer.gatherResults(reads).addCallback(keep)

    def collect(self):
        server = self.server
        sessions = GaugeMetricFamily("bridge_sessions", "Bound sessions, by transport and host",
                                     labels=["transport", "host"])
        counts = {}
        for session in server.sessions:
            if not session.local:
                continue  # another node's, mirrored here (docs/scaling.md): that node counts it
            stream = session.stream
            transport = getattr(getattr(stream, "framing", stream), "kind", "other")
            key = (transport, session.jid.host)
            counts[key] = counts.get(key, 0) + 1
        for (transport, host), count in sorted(counts.items()):
            sessions.add_metric([transport, host], count)
        yield sessions
        for direction, tables, verb in (("received", server.counters.stanzas_in, "read from"),
                                        ("sent", server.counters.stanzas_out, "written to")):
            family = CounterMetricFamily(f"bridge_stanzas_{direction}", f"Stanzas {verb} streams, by stream and name",
                                         labels=["stream", "stanza"])
            for stream, table in tables.items():
                for name, count in table.items():
                    family.add_metric([stream, name], count)
            yield family
        router = server.router
        for name, table, documentation in (
                ("bridge_stanzas_routed", router.routed, "Stanzas handed to a route (a host, gateway or server)"),
                ("bridge_stanzas_bounced", router.bounced, "Stanzas answered with an error: no route, or refused")):
            family = CounterMetricFamily(name, documentation, labels=["stanza"])
            for stanza, count in table.items():
                family.add_metric([stanza], count)
            yield family
        yield histogram("bridge_route_seconds", "Time a stanza takes through the routing table: to the write on a "
                        "local session's stream, or into a queue", [], [((), router.route_seconds)])
        timings = getattr(server.storage, "operation_seconds", None)
        if timings is not None:
            yield histogram("bridge_storage_seconds", "Storage operations, from the call to the answer, by operation",
                            ["operation"], [((name,), timing) for name, timing in sorted(timings.items())])
        refusals = CounterMetricFamily("bridge_refusals", "Connections refused and streams ended with an error, "
                                       "by kind", labels=["kind"])
        for kind, count in sorted(server.log_budget.totals.items()):
            refusals.add_metric([kind], count)
        yield refusals
        counters = server.counters
        yield CounterMetricFamily("bridge_authentication_failures", "SASL authentications that failed",
                                  value=counters.authentication_failures)
        yield CounterMetricFamily("bridge_offline_messages_stored", "Messages stored for users who were away",
                                  value=counters.offline_stored)
        yield CounterMetricFamily("bridge_offline_messages_delivered", "Stored messages given to their users",
                                  value=counters.offline_delivered)
        transactions = CounterMetricFamily("bridge_sip_transactions", "SIP transactions finished, by side, method "
                                           "and the class of the final response (or timeout)",
                                           labels=["side", "method", "outcome"])
        for labels, count in counters.sip_transactions.items():
            if count:
                transactions.add_metric(list(labels), count)
        yield transactions
        for name, table, documentation in (
                ("bridge_sms_submits", counters.sms_submits, "SMS parts handed to an SMSC, by result"),
                ("bridge_sms_receipts", counters.sms_receipts, "SMS delivery receipts, by result")):
            family = CounterMetricFamily(name, documentation, labels=["result"])
            for result, count in table.items():
                family.add_metric([result], count)
            yield family
        links = sum(1 for link in self.remote.links.values() if link.stream is not None and not link.stream.closed)
        yield GaugeMetricFamily("bridge_s2s_outgoing_links", "Streams to remote servers that are up", value=links)
        yield GaugeMetricFamily("bridge_s2s_incoming_streams", "Streams from remote servers",
                                value=len(self.remote.streams))
        backlog = getattr(server.storage, "archive_backlog_bytes", None)
        if backlog is not None:
            yield GaugeMetricFamily("bridge_archive_backlog_bytes", "Archived messages handed to the archive "
                                    "writer and not yet stored", value=backlog)
        for name, (documentation, value) in sorted(self.levels.items()):
            yield GaugeMetricFamily(f"bridge_{name}", documentation, value=value)
        if server.cluster is not None:
            yield from cluster_families(server.cluster)


def cluster_families(cluster):
    """This node's part in a cluster ([cluster], docs/scaling.md): its lease, the members it sees, and the
    messages between nodes (the counters ``Cluster`` keeps anyway)."""
    yield GaugeMetricFamily("bridge_cluster_lease_held", "1 while this node holds its cluster lease",
                            value=int(cluster.lease_held()))
    yield GaugeMetricFamily("bridge_cluster_accepting_sessions", "1 while this node binds new sessions (its "
                            "lease held and Redis answering)", value=int(cluster.accepting()))
    yield GaugeMetricFamily("bridge_cluster_peers", "Other member nodes whose sessions this node mirrors",
                            value=len(cluster.peers()))
    yield CounterMetricFamily("bridge_cluster_messages_forwarded", "Stanzas handed to other nodes' inboxes",
                              value=cluster.forwarded)
    yield CounterMetricFamily("bridge_cluster_messages_received", "Entries taken from this node's inbox "
                              "(stanzas, session changes, kicks)", value=cluster.received)
    dropped = CounterMetricFamily("bridge_cluster_messages_dropped", "Messages between nodes dropped, by reason",
                                  labels=["reason"])
    for reason, count in sorted(cluster.dropped.items()):
        dropped.add_metric([reason], count)
    yield dropped


def histogram(name, documentation, labels, series):
    """A histogram family of ``series``: [(label values, ``Histogram``)]."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, timing in series:
        buckets = [(floatToGoString(bound), count) for bound, count in timing.cumulative()]
        family.add_metric(list(values), buckets, timing.total)
    return family


class MetricsPage(resource.Resource):
    isLeaf = True

    def __init__(self, collector, registry):
        super().__init__()
        self.collector = collector
        self.registry = registry

    def render_GET(self, request):
        def write(_):
            body = generate_latest(self.registry)
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
            request.write(body)
            request.finish()

        def failed(failure):
            log.failure("metrics scrape failed", failure)
            request.setResponseCode(500)
            request.finish()

        self.collector.read_levels().addCallback(write).addErrback(failed)  # a collector's failure too: 500
        return web_server.NOT_DONE_YET


class MetricsSite(web_server.Site):
    """``GET /metrics`` for connections from ``allowed_addresses``; others are closed unanswered."""

    noisy = False

    def __init__(self, collector, allowed_addresses, clock):
        registry = CollectorRegistry(auto_describe=True)
        registry.register(collector)
        ProcessCollector(registry=registry)
        root = resource.Resource()
        root.putChild(PATH, MetricsPage(collector, registry))
        super().__init__(root, reactor=clock)
        self.registry = registry
        self.allowed = [ipaddress.ip_network(network, strict=False) for network in allowed_addresses]

    def allows(self, host):
        """Whether a connection from ``host`` (an address's text) may read the metrics."""
        address = parse_address(host) if host else None
        return address is not None and any(address in network for network in self.allowed)

    def buildProtocol(self, address):
        if not self.allows(getattr(address, "host", None)):
            log.info("metrics: refused a connection from {host}, not in [metrics] allowed_addresses",
                     host=getattr(address, "host", address))
            return None
        return super().buildProtocol(address)


def metrics_site(server, remote):
    """The factory of the ``[metrics]`` listener."""
    config = server.config.metrics
    return MetricsSite(ServerCollector(server, remote), config.allowed_addresses, server.clock)

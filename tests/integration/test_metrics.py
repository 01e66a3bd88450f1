"""The metrics listener of the real server, scraped over HTTP and read with prometheus-client's parser."""

import asyncio
import http.client
import importlib.util
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import REDIS_SERVER, Clients, RawClient, ServerProcess, add_users, next_item, write_config

PASSWORD = "metrics-pw-1"


def metrics_server(tmp_path, allowed='["127.0.0.0/8", "::1/128"]'):
    tables = f'[metrics]\nendpoints = ["tcp:0:interface=127.0.0.1"]\nallowed_addresses = {allowed}\n'
    config_path = write_config(str(tmp_path), tables=tables)
    add_users(config_path, {"alice@localhost": PASSWORD})
    return ServerProcess(config_path, {"alice@localhost": PASSWORD}).start(wait_for=("c2s", "metrics"))


def get(port, path):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def samples(body):
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_scrape(tmp_path):
    """A scrape shows a logged-in client's session and the messages it sent, in Prometheus's text format."""
    process = metrics_server(tmp_path)
    raw = RawClient(process.port)
    try:
        jid = raw.login("alice", PASSWORD)
        for number in range(2):
            raw.send(f"<message to='{jid}' type='chat' id='m{number}'><body>hi</body></message>")
            raw.expect("{jabber:client}message")
        status, content_type, body = get(process.ports["metrics"], "/metrics")
        assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
        found = samples(body)
        assert found[("bridge_sessions", (("host", "localhost"), ("transport", "tcp")))] == 1
        assert found[("bridge_stanzas_received_total", (("stanza", "message"), ("stream", "c2s")))] == 2
        assert found[("bridge_stanzas_routed_total", (("stanza", "message"),))] >= 2
        assert found[("process_open_fds", ())] > 0
        assert get(process.ports["metrics"], "/")[0] == 404
    finally:
        raw.close()
        process.stop()


def test_address_not_allowed(tmp_path):
    """A connection from an address not in allowed_addresses is closed without an answer."""
    process = metrics_server(tmp_path, allowed='["127.0.0.2/32"]')
    try:
        with socket.create_connection(("127.0.0.1", process.ports["metrics"]), timeout=10) as connection:
            try:
                connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            except OSError:
                pass
            try:
                answer = connection.recv(65536)
            except ConnectionResetError:
                answer = b""
        assert answer == b""
    finally:
        process.stop()


@pytest.mark.skipif(REDIS_SERVER is None or importlib.util.find_spec("redis") is None,
                    reason="needs redis-server (Debian package redis-server) and redis-py (pip install -e '.[cluster]')")
def test_cluster_node(tmp_path):
    """Two nodes of a cluster: node1's scrape shows its lease, node2 as the member it mirrors, and the
    message it handed to node2 (which shows it received); bridge_sessions counts each node's own sessions,
    not those it mirrors."""
    from .test_cluster import seen_by, started_cluster

    metrics = '[metrics]\nendpoints = ["tcp:0:interface=127.0.0.1"]\n'
    cluster = started_cluster(str(tmp_path), tables=metrics, wait_for=("c2s", "c2s-direct-tls", "metrics"))
    _, (node1, node2) = next(cluster)
    try:
        async def scenario():
            async with Clients(node1) as clients:
                bob = await clients.login("bob@localhost/home", port=node2.port)
                alice = await clients.login("alice@localhost/one", port=node1.port)
                await seen_by(bob, alice)
                alice.send_message(mto="bob@localhost/home", mbody="across", mtype="chat")
                await next_item(bob.messages, what="alice's message on node2")
                return samples(get(node1.ports["metrics"], "/metrics")[2]), \
                    samples(get(node2.ports["metrics"], "/metrics")[2])

        first, second = asyncio.run(scenario())
        for found in (first, second):
            assert (found[("bridge_cluster_lease_held", ())], found[("bridge_cluster_accepting_sessions", ())],
                    found[("bridge_cluster_peers", ())]) == (1, 1, 1)
            assert found[("bridge_sessions", (("host", "localhost"), ("transport", "tcp")))] == 1
        assert first[("bridge_cluster_messages_forwarded_total", ())] >= 1
        assert second[("bridge_cluster_messages_received_total", ())] >= 1
    finally:
        cluster.close()

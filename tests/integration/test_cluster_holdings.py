"""The take-over script of bridge.core.redislink on a real redis-server: one survivor takes a dead node's
held hash, only once, only without the dead node's lease and only with its own."""

import pytest

from bridge import config as configuration

from .harness import REDIS_SERVER, RedisProcess

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (Debian package "
                                                             "redis-server; .ci/install-test-peers installs it)")
redislink = pytest.importorskip("bridge.core.redislink", reason="redis-py is not installed "
                                                                "(pip install -e '.[cluster]')")


@pytest.fixture
def redis_server(tmp_path):
    server = RedisProcess(str(tmp_path)).start()
    yield server
    server.stop()


def link_of(redis_server, node):
    """A RedisLink of ``node`` whose calls the test makes in its own thread, its lease set."""
    section = configuration.ClusterConfig(enabled=True, node_name=node, redis_address=f"127.0.0.1:{redis_server.port}",
                                          password_file=redis_server.password_file)
    made = redislink.RedisLink(section, reactor=None)
    made.incarnation = f"{node}-incarnation"
    made.client.set(made.key("lease"), made.incarnation)
    return made


def test_take_over_moves_a_dead_nodes_hash_once(redis_server):
    """node2 takes nothing while node1's lease lives, nor while its own is gone; once node1's lease is
    gone it takes node1's fields but one it holds itself, and node1's hash is gone: a second call
    takes nothing."""
    node1, node2 = link_of(redis_server, "node1"), link_of(redis_server, "node2")
    node1.client.hset(node1.key("held:sip"), mapping={"alice@localhost": "a1", "bob@localhost": "b1"})
    node2.client.hset(node2.key("held:sip"), "bob@localhost", "b2")
    assert node2._take_over_now("sip", "node1") == {}
    node2.client.delete(node2.key("lease"))
    node1.client.delete(node1.key("lease"))
    assert node2._take_over_now("sip", "node1") is None
    node2.client.set(node2.key("lease"), node2.incarnation)
    assert node2._take_over_now("sip", "node1") == {"alice@localhost": "a1"}
    assert node2._take_over_now("sip", "node1") == {}
    assert node2.client.hgetall(node2.key("held:sip")) == {b"alice@localhost": b"a1", b"bob@localhost": b"b2"}
    assert not node2.client.exists(node1.key("held:sip"))


def test_shared_secret_is_made_once(redis_server):
    """The first node to ask makes the secret; every node gets the same 32 bytes."""
    node1, node2 = link_of(redis_server, "node1"), link_of(redis_server, "node2")
    key = redislink.PREFIX + "secret:dialback"
    secret = node1._shared_secret(key)
    assert len(secret) == 32
    assert node2._shared_secret(key) == secret == node1._shared_secret(key)

"""One owner at a time (bridge/core/ownership.py) on a fake clock and a fake Redis shared by two nodes:
one owner, takeover after the owner's death, the owner letting go first, fencing by incarnation, a
clean release, and the claim of a process alone."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.ownership import Ownership, SoleOwnership

LIFETIME = 9.0


class FakeRedis:
    """The keys the claim scripts of redislink.py touch, each with its expiry on ``clock``."""

    def __init__(self, clock):
        self.clock = clock
        self.keys = {}  # key -> (value, expires at)

    def get(self, key):
        value, expires_at = self.keys.get(key, (None, 0))
        return value if self.clock.seconds() < expires_at else None


class FakeLink:
    """The claim and release calls of one node's RedisLink, on the shared FakeRedis."""

    def __init__(self, redis, node, incarnation="a"):
        self.redis = redis
        self.node = node
        self.incarnation = incarnation
        self.reachable = True

    def claim(self, resources):
        if not self.reachable:
            return defer.fail(ConnectionError("Redis away"))
        me = f"{self.node} {self.incarnation}"
        alive = self.redis.get(f"lease:{self.node}") == self.incarnation
        owners = []
        for resource in resources:
            key = f"owner:{resource}"
            owner = self.redis.get(key)
            if alive and owner in (None, me):
                owner = me
                self.redis.keys[key] = (me, self.redis.clock.seconds() + LIFETIME)
            owners.append(owner)
        return defer.succeed(owners)

    def release(self, resources):
        for resource in resources:
            if self.redis.get(f"owner:{resource}") == f"{self.node} {self.incarnation}":
                del self.redis.keys[f"owner:{resource}"]
        return defer.succeed(1)


class Node:
    """One node's ownership, its lease in the fake Redis, and what its claim heard."""

    def __init__(self, redis, clock, name):
        self.redis = redis
        self.clock = clock
        self.link = FakeLink(redis, name)
        self.ownership = Ownership(self.link, clock, name, LIFETIME)
        self.events = []
        self.claim = self.ownership.claim("sms:sms.localhost", lambda: self.events.append("gained"),
                                          lambda: self.events.append("lost"))
        self.renew_lease()

    def renew_lease(self):
        self.redis.keys[f"lease:{self.link.node}"] = (self.link.incarnation, self.clock.seconds() + LIFETIME)

    def round(self):
        """One round of the node's lease: the lease renewed, then the claims (a failure is the cluster's to
        log); the round's Deferred."""
        self.renew_lease()
        return self.ownership.refresh(self.clock.seconds())


class OwnershipTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.redis = FakeRedis(self.clock)
        self.one = Node(self.redis, self.clock, "node1")
        self.two = Node(self.redis, self.clock, "node2")

    def test_one_owner_at_a_time(self):
        """Two nodes claim one resource: the first to try owns it, the other is told who does and waits."""
        self.one.round()
        self.two.round()
        self.assertEqual((self.one.events, self.two.events), (["gained"], []))
        self.assertTrue(self.one.claim.owned)
        self.assertFalse(self.two.claim.owned)
        self.assertEqual(self.two.ownership.owners(), {"sms:sms.localhost": "node1"})
        for _ in range(10):
            self.clock.advance(LIFETIME / 3)
            self.one.round()
            self.two.round()
        self.assertEqual((self.one.events, self.two.events), (["gained"], []))

    def test_a_survivor_takes_over_after_the_owner_dies_and_the_owner_lets_go_first(self):
        """node1 owns the resource and stops renewing (it hangs, or Redis no longer hears it): on its own
        clock it stops owning at the end of its lifetime counted from the last renewal it SENT, and lost()
        is called then; node2 takes the key only once it expired in Redis, counted from when Redis
        received that renewal (here half a second later)."""
        self.one.round()
        sent_at = self.clock.seconds()
        self.clock.advance(0.5)  # the renewal reaches Redis late
        self.one.link.claim(["sms:sms.localhost"])
        self.clock.advance(LIFETIME - 0.5 - 0.01)
        self.assertTrue(self.one.claim.owned)
        self.two.round()
        self.assertEqual(self.two.events, [])
        self.clock.advance(0.02)
        self.assertEqual(self.clock.seconds() > sent_at + LIFETIME, True)
        self.assertFalse(self.one.claim.owned)
        self.assertEqual(self.one.events, ["gained", "lost"])
        self.two.round()
        self.assertEqual(self.two.events, [], "Redis still holds node1's key")
        self.clock.advance(0.5)
        self.two.round()
        self.assertEqual(self.two.events, ["gained"])
        self.assertTrue(self.two.claim.owned)

    def test_owned_is_read_on_the_clock_not_from_a_timer(self):
        """Between the end of the lifetime and the timer that calls lost() (a busy reactor), ``owned``
        is already False."""
        self.one.round()
        self.clock.rightNow += LIFETIME + 1  # time passes without the reactor running any timer
        self.assertFalse(self.one.claim.owned)
        self.assertEqual(self.one.events, ["gained"])

    def test_lease_lapse_loses_every_claim_at_once(self):
        """The node's lease lapsed (cluster.py): lost() at once, and the claim is not owned."""
        self.one.round()
        self.one.ownership.lapse("the node's lease lapsed")
        self.assertEqual(self.one.events, ["gained", "lost"])
        self.assertFalse(self.one.claim.owned)

    def test_redis_unreachable_the_owner_stops_at_the_end_of_its_lifetime(self):
        """Renewals fail: the owner keeps the resource while its lifetime runs, then loses it."""
        self.one.round()
        self.one.link.reachable = False
        self.clock.advance(LIFETIME / 3)
        self.failureResultOf(self.one.round(), ConnectionError)
        self.assertTrue(self.one.claim.owned)
        self.clock.advance(LIFETIME * 2 / 3)
        self.assertEqual(self.one.events, ["gained", "lost"])

    def test_a_new_incarnation_is_fenced_from_its_old_key(self):
        """node1 joins again under a new incarnation while Redis still holds its old key: it does not own
        the resource (the old key is not its), and nobody does until that key expires; then it takes it."""
        self.one.round()
        self.one.ownership.lapse("the node's lease lapsed")
        self.one.link.incarnation = "b"
        self.one.round()
        self.assertEqual(self.one.events, ["gained", "lost"])
        self.assertFalse(self.one.claim.owned)
        self.clock.advance(LIFETIME)
        self.one.round()
        self.assertEqual(self.one.events, ["gained", "lost", "gained"])

    def test_a_node_whose_lease_is_gone_takes_nothing(self):
        """A node that claims while its lease is not in Redis (it expired, or survivors removed it) gets
        nothing, though the resource is free."""
        del self.redis.keys["lease:node2"]
        self.two.ownership.refresh(self.clock.seconds())
        self.assertEqual(self.two.events, [])

    def test_release_on_a_clean_stop_hands_over_at_the_next_round(self):
        """A clean stop releases the claim: lost() first, the key deleted, and the other node owns it at
        its next round without waiting for an expiry."""
        self.one.round()
        self.two.round()
        stopped = self.one.ownership.stop()
        self.assertNoResult(stopped)  # until the holder has finished and released its claim
        self.successResultOf(self.one.claim.release())
        self.successResultOf(stopped)
        self.assertEqual(self.one.events, ["gained", "lost"])
        self.two.round()
        self.assertEqual(self.two.events, ["gained"])

    def test_the_same_resource_twice_on_one_node_is_refused(self):
        """A resource is claimed once per node (two claims would both think they own it)."""
        self.assertRaises(ValueError, self.one.ownership.claim, "sms:sms.localhost", lambda: None, lambda: None)
        self.assertRaises(ValueError, self.one.ownership.claim, "has space", lambda: None, lambda: None)


class SoleOwnershipTests(SynchronousTestCase):
    def test_a_process_alone_owns_at_once_until_released(self):
        """Without a cluster a claim is owned from the moment it is made until it is released."""
        events = []
        ownership = SoleOwnership()
        claim = ownership.claim("email:outbox", lambda: events.append("gained"), lambda: events.append("lost"))
        self.assertTrue(claim.owned)
        self.successResultOf(claim.release())
        self.assertEqual(events, ["gained", "lost"])
        self.assertFalse(claim.owned)

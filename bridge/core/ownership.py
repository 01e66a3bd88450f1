"""One owner at a time: a resource (a queue, a link, a registration) that one node of a cluster serves.

A node claims a resource by name; of all the nodes that claim it, one owns
it at a time, and a survivor takes it over when the owner dies.  In Redis
(``bridge.core.redislink``) a resource is a key ``bridge:owner:RESOURCE``
holding "NODE INCARNATION", set only if absent (NX) and only while the
node's own lease holds that incarnation, with the node's lease lifetime as
its expiry.  Every round of the node's lease (``Cluster._tick``) renews the
keys it holds and tries the others in one call; a clean stop deletes them.

The API (docs/scaling.md, "One owner at a time"):

* ``ownership.claim(resource, gained, lost)`` -> ``Claim``: ``gained()``
  is called when this node becomes the owner, ``lost()`` when it stops
  being it (another node or nobody holds the key, the node's lease lapsed,
  or the claim was released).  Both are called in the reactor thread;
  ``gained()`` may be called before ``claim()`` returns (at once, without
  a cluster).
* ``claim.owned``: whether this node owns it NOW.  It is counted on this
  node's clock from when the last renewal was SENT (Redis counts from when
  it received it), so an owner lets go before anyone else can take over:
  check it right before every action only the owner may take.
* ``claim.release()`` -> Deferred: give it up (``lost()`` is called
  first), deleting the key if it is still this node's.  At a clean stop
  the node waits (at most the lease's lifetime, still renewing) for its
  holders to release their claims before it leaves the cluster.
* ``ownership.owners()``: {resource: the node seen owning it, or None}.

Without a cluster, ``SoleOwnership`` grants every claim at once.  This
module does no I/O: ``link`` does the Redis calls, ``clock`` gives the time.
"""

import re

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

RESOURCE_NAME = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no space: a part of a Redis key


class Claim:
    """One resource this node wants to own; made by ``claim()`` of an ownership."""

    def __init__(self, ownership, resource, gained, lost):
        if not RESOURCE_NAME.match(resource):
            raise ValueError(f"resource name {resource!r}: 1 to 200 printable ASCII characters, no space")
        self.ownership = ownership
        self.resource = resource
        self.owner = None  # the node seen owning it at the last round, this one included
        self._gained = gained
        self._lost = lost
        self.holding = False  # whether gained() was called and lost() not since

    @property
    def owned(self):
        return self.holding and self.ownership.holds_now()

    def release(self):
        return self.ownership.release(self)

    def _become_owner(self):
        if not self.holding:
            self.holding = True
            self._call(self._gained, "gained")

    def _stop_owning(self):
        if self.holding:
            self.holding = False
            self._call(self._lost, "lost")

    def _call(self, callback, what):
        try:
            callback()
        except Exception:
            log.failure("ownership: the {what} handler of {resource} failed", what=what, resource=self.resource)


class SoleOwnership:
    """One process, no cluster: every claim is owned from when it is made until released."""

    node = None

    def __init__(self):
        self.claims = {}

    def holds_now(self):
        return True

    def claim(self, resource, gained, lost):
        claim = Claim(self, resource, gained, lost)
        self.claims[resource] = claim
        claim._become_owner()
        return claim

    def release(self, claim):
        if self.claims.get(claim.resource) is claim:
            del self.claims[claim.resource]
        claim._stop_owning()
        return defer.succeed(None)

    def owners(self):
        return {resource: "" for resource in self.claims}


class Ownership:
    """The claims of one cluster node.  ``link``: ``claim(resources)`` -> Deferred [owner "NODE INCARNATION"
    or None] (renewing those held, taking those free), ``release(resources)`` and ``incarnation`` (of the
    node's lease); ``node``: this node's name."""

    def __init__(self, link, clock, node, lifetime_seconds):
        self.link = link
        self.clock = clock
        self.node = node
        self.lifetime_seconds = lifetime_seconds
        self.claims = {}  # resource -> Claim
        self.expires_at = None  # when this node's claims lapse unless renewed
        self._expiry = None  # the DelayedCall that ends them then
        self._stopped = None  # at a clean stop: fires once every claim was released

    def claim(self, resource, gained, lost):
        """Claim ``resource``; tried at the next round of the node's lease."""
        if resource in self.claims:
            raise ValueError(f"resource {resource!r} is claimed twice on this node")
        claim = Claim(self, resource, gained, lost)
        self.claims[resource] = claim
        return claim

    def holds_now(self):
        return self.expires_at is not None and self.clock.seconds() < self.expires_at

    def owners(self):
        return {resource: claim.owner for resource, claim in self.claims.items()}

    # -- the rounds, called by the Cluster --------------------------------------------

    def refresh(self, sent_at):
        """One round, made at ``sent_at`` while the node's lease is held: renew the keys this node holds and
        try to take the free ones; a Deferred firing once the answers are applied."""
        if not self.claims:
            return defer.succeed(None)
        resources = sorted(self.claims)
        d = self.link.claim(resources)
        d.addCallback(self._answered, resources, sent_at)
        return d

    def _answered(self, owners, resources, sent_at):
        self.expires_at = sent_at + self.lifetime_seconds
        self._schedule_expiry()
        me = f"{self.node} {self.link.incarnation}"
        for resource, owner in zip(resources, owners):
            claim = self.claims.get(resource)
            if claim is None:
                continue  # released meanwhile
            node = owner.split(" ", 1)[0] if owner else None
            previous, claim.owner = claim.owner, node
            if owner == me:  # fenced: a key of this node's earlier incarnation is not this one's
                if not claim.holding:
                    if previous not in (None, self.node):
                        log.warn("ownership: node {node} took over {resource} from node {previous}",
                                 node=self.node, resource=resource, previous=previous)
                    else:
                        log.info("ownership: node {node} owns {resource}", node=self.node, resource=resource)
                claim._become_owner()
            else:
                if claim.holding:
                    log.warn("ownership: node {node} lost {resource} (now {owner})", node=self.node,
                             resource=resource, owner=owner or "nobody")
                elif node != previous and node is not None:
                    log.info("ownership: {resource} is owned by node {owner}", resource=resource, owner=node)
                claim._stop_owning()

    def _schedule_expiry(self):
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        delay = max(0.0, self.expires_at - self.clock.seconds())
        self._expiry = self.clock.callLater(delay, self.lapse, "its lease was not renewed in time")

    def lapse(self, why):
        """This node may own nothing any more (its lease lapsed or is gone): every claim is lost at once."""
        self.expires_at = None
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        for claim in self.claims.values():
            if claim.holding:
                log.warn("ownership: node {node} gives up {resource}: {why}", node=self.node,
                         resource=claim.resource, why=why)
            claim.owner = None
            claim._stop_owning()

    def release(self, claim):
        """Give up one claim: lost() at once, then its key deleted if it is still this node's."""
        if self.claims.get(claim.resource) is not claim:
            return defer.succeed(None)
        del self.claims[claim.resource]
        held = claim.holding
        claim._stop_owning()
        if not held:
            d = defer.succeed(None)
        else:
            log.info("ownership: node {node} releases {resource}", node=self.node, resource=claim.resource)
            d = self.link.release([claim.resource])
            d.addErrback(lambda failure: log.warn("ownership: releasing {resource} failed ({error}); it expires",
                                                  resource=claim.resource, error=failure.getErrorMessage()))
        if self._stopped is not None and not self.claims:
            d.addBoth(lambda _: self._all_released())
        return d

    def stop(self):
        """A clean stop, before the node leaves: each holder releases its claim once it finished what it had
        under way (an SMS gateway unbinds, recording the answers on their way), while the node's lease and
        claims are still renewed; what is not released within ``lifetime_seconds`` is released then.
        Fires once every claim was released (its key deleted while it was still this node's)."""
        self._stopped = defer.Deferred()
        stopped = self._stopped
        if not self.claims:
            self._all_released()
            return stopped
        give_up = self.clock.callLater(self.lifetime_seconds, self._release_the_rest)
        stopped.addBoth(lambda result: (give_up.cancel() if give_up.active() else None, result)[1])
        return stopped

    def _release_the_rest(self):
        for claim in list(self.claims.values()):
            self.release(claim)

    def _all_released(self):
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self.expires_at = None
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)

"""What one node of a cluster holds and a survivor takes over when it dies (docs/scaling.md).

A feature that keeps state only one node may serve at a time (the SIP
registrations a node accepted) writes it, field by field, to a Redis hash
of its node, ``bridge:held:KIND:NODE``.  When a node's lease is gone (it
died, its lease lapsed, or it left), every survivor asks Redis to move that
node's hash into its own; the move is one script that runs only while the
dead node has no lease and the claiming node holds its own, so the first
survivor to ask takes everything and the others get nothing: one owner at
a time.  The feature is handed what it took (``adopt``), and serves it
from then on.

A node that lost its lease gives up what it holds (``release``): a
survivor may take it over meanwhile.  A node that joins again under the
same name adopts what its hash still holds (nobody took it).

This module does no I/O: the Redis calls are ``bridge.core.redislink``'s
(``held_put``, ``held_remove``, ``held``, ``take_over``).
"""

from twisted.logger import Logger

log = Logger()


class Holdings:
    """The state of one ``kind`` that this node holds.

    ``adopt({field: value})`` is told what this node took over (or found
    again in its own hash at its join); ``release()`` that it must serve
    none of it any more (its lease lapsed).  The feature writes what it
    holds with ``put`` and ``remove``.
    """

    def __init__(self, link, kind, adopt, release):
        self.link = link
        self.kind = kind
        self.adopt = adopt
        self.release = release
        self.waiting = set()  # nodes whose hash this node has still to claim (a claim failed, or not yet tried)
        self.taken = 0  # fields taken over from dead nodes

    def put(self, field, value):
        return self.link.held_put(self.kind, field, value).addErrback(self._write_failed)

    def remove(self, field):
        return self.link.held_remove(self.kind, field).addErrback(self._write_failed)

    def _write_failed(self, failure):
        log.warn("cluster: writing a {kind} record failed ({error}); a survivor may miss it", kind=self.kind,
                 error=failure.getErrorMessage())

    # -- told by bridge.core.cluster.Cluster ----------------------------------------------

    def joined(self):
        """This node joined (again): what its hash still holds is its own."""
        return self.link.held(self.kind).addCallbacks(self._adopt, self._claim_failed, errbackArgs=(None,))

    def gone(self, node):
        """``node`` has no lease any more: claim its hash (now, and on every round until a claim answers)."""
        self.waiting.add(node)

    def claim_waiting(self):
        for node in sorted(self.waiting):
            self.link.take_over(self.kind, node).addCallbacks(self._claimed, self._claim_failed, callbackArgs=(node,),
                                                          errbackArgs=(node,))

    def _claimed(self, records, node):
        """``records``: what was moved, or None when this node holds no lease now (tried again later)."""
        if records is None:
            return
        self.waiting.discard(node)
        if records:
            self.taken += len(records)
            log.info("cluster: took over {count} {kind} record(s) of node {node}", count=len(records),
                     kind=self.kind, node=node)
            self._adopt(records)

    def _adopt(self, records):
        if records:
            try:
                self.adopt(records)
            except Exception:
                log.failure("cluster: adopting {kind} records failed", kind=self.kind)

    def _claim_failed(self, failure, node):
        """The next round tries again (a node's own hash is read again at its next join)."""
        log.warn("cluster: reading {kind} records of node {node} failed: {error}", kind=self.kind,
                 node=node or "(this node)", error=failure.getErrorMessage())

    def lapsed(self):
        """This node lost its lease: what it held may be taken over now; it serves none of it."""
        try:
            self.release()
        except Exception:
            log.failure("cluster: releasing {kind} records failed", kind=self.kind)

"""Documents of one store kept in memory, for what is read on every stanza or changed in steps.

Storage answers later than the call that asks it.  Two things follow, and
this cache handles both for a store: a document read on every stanza (a
block list, a roster) should not cost a read each time; and two changes of
one document that overlap (two subscription requests arriving together)
must not each read the old version and write over the other.  Every caller
of ``load`` gets the same object, read once however many ask at the same
time, so changes made to it in memory compose; ``save`` writes the object as
it is then.  The most recently used ``limit`` documents stay in memory.

In a cluster (docs/scaling.md, "Documents kept in memory") other nodes
change the same stored documents.  ``share`` makes the caches of a node
(``DocumentCaches``) keep, beside each document, what storage held when it
was read or last written: a save is then a compare-and-set
(``IStorage.replace``) that fails with ``StaleDocument`` when another node
wrote first, and each save that succeeds is told to the other nodes, which
forget their copy.  ``KeyedLock`` runs a step that met a stale document
again, on a fresh read.  Outside a cluster none of this runs.
"""

import collections
import copy
import weakref

from twisted.internet import defer
from twisted.python.failure import Failure

_ABSENT = object()
STALE_RETRIES = 5  # times a step that met a stale document runs again (several nodes changing one document)


class StaleDocument(Exception):
    """A save based on a copy that another node changed since it was read: nothing was written, the copy is
    forgotten, and the change must be made again on a fresh read."""


class DocumentCaches:
    """Every ``DocumentCache`` of a server (a feature loaded on several hosts has one per host; one that a
    reload unloads goes with it), so that a cluster can share them."""

    def __init__(self):
        self._by_store = collections.defaultdict(weakref.WeakSet)
        self.cluster = None

    def add(self, cache):
        self._by_store[cache.store].add(cache)
        cache.cluster = self.cluster

    def share(self, cluster):
        """From now on every save is checked against storage and told to the other nodes through
        ``cluster.document_changed(store, host, user)`` (the copies read before are read again)."""
        self.cluster = cluster
        for caches in self._by_store.values():
            for cache in caches:
                cache.cluster = cluster
        self.forget_all()

    def forget(self, store, host, user):
        """Another node changed this document: the next use reads it again."""
        for cache in self._by_store.get(store, ()):
            cache.drop(host, user)

    def forget_all(self):
        """This node may have missed other nodes' changes (it joined the cluster again)."""
        for caches in self._by_store.values():
            for cache in caches:
                cache.forget_all()


class DocumentCache:
    def __init__(self, storage, store, decode=lambda value: value, encode=lambda document: document,
                 limit=10000, caches=None):
        self.storage = storage
        self.store = store
        self.decode = decode
        self.encode = encode
        self.limit = limit
        self._documents = collections.OrderedDict()  # (host, user) -> decoded document
        self._loading = {}  # (host, user) -> [Deferred] waiting for the read under way
        self.cluster = None  # in a cluster (set by ``DocumentCaches.share``): saves are compare-and-set
        self._stored = {}  # in a cluster: (host, user) -> what storage held when its copy was read or written
        self._unkept = set()  # (host, user) forgotten while read: the answer is used once, not kept
        if caches is not None:
            caches.add(self)

    def cached(self, host, user, default=None):
        """The document if it is in memory, else ``default``."""
        key = (host, user)
        documents = self._documents
        document = documents.get(key, _ABSENT)
        if document is _ABSENT:
            return default
        documents.move_to_end(key)
        return document

    def load(self, host, user):
        """Deferred: the document (decoded from None when there is none)."""
        key = (host, user)
        if key in self._documents:
            self._documents.move_to_end(key)
            return defer.succeed(self._documents[key])
        waiter = defer.Deferred()
        waiting = self._loading.get(key)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._loading[key] = [waiter]
        self.storage.get(host, user, self.store).addCallbacks(self._read, self._unreadable, (key,), None, (key,))
        return waiter

    def _read(self, stored, key):
        base = copy.deepcopy(stored) if self.cluster is not None else None  # decode may change ``stored``
        document = self.decode(stored)
        if key in self._unkept:
            self._unkept.discard(key)
        else:
            self._keep(key, document)
            if self.cluster is not None:
                self._stored[key] = base
        for waiter in self._loading.pop(key):
            waiter.callback(document)

    def _unreadable(self, failure, key):
        for waiter in self._loading.pop(key):
            waiter.errback(failure)

    def _keep(self, key, document):
        self._documents[key] = document
        self._documents.move_to_end(key)
        while len(self._documents) > self.limit:
            self._stored.pop(self._documents.popitem(last=False)[0], None)
        return document

    def save(self, host, user, document, read=None):
        """Keep ``document`` and write it (an encoding of None deletes the stored one).  ``read``: the copy
        ``load`` gave that ``document`` was made from, when it is another object.  In a cluster, fails with
        ``StaleDocument`` when that copy is no longer this cache's (another node changed the document, and
        this node was told) or another node wrote first."""
        if self.cluster is not None:
            return self._save_shared((host, user), document, document if read is None else read)
        self._keep((host, user), document)
        return self.storage.set(host, user, self.store, self.encode(document))

    def _save_shared(self, key, document, read):
        expected = self._stored.get(key, _ABSENT)
        if expected is _ABSENT or self._documents.get(key, _ABSENT) is not read:
            return defer.fail(StaleDocument(f"{self.store} of {key[1]}@{key[0]}: read again since"))
        self._keep(key, document)
        value = copy.deepcopy(self.encode(document))
        self._stored[key] = value  # a save that follows expects this one's
        d = self.storage.replace(key[0], key[1], self.store, expected, value)
        d.addCallbacks(self._replaced, self._not_replaced, (key, document), None, (key, document))
        return d

    def _replaced(self, done, key, document):
        if not done:
            self._not_replaced(None, key, document)
            raise StaleDocument(f"{self.store} of {key[1]}@{key[0]}: changed by another node")
        self.cluster.document_changed(self.store, *key)

    def _not_replaced(self, failure, key, document):
        """What storage holds is not known (any more): the copy goes."""
        if self._documents.get(key) is document:
            self.drop(*key)
        return failure

    def forget(self, host, user):
        """Drop a document from memory: its account was deleted from storage (in a cluster the other nodes
        are told, as of a change)."""
        self.drop(host, user)
        if self.cluster is not None:
            self.cluster.document_changed(self.store, host, user)

    def drop(self, host, user):
        """Drop this node's copy of a document; a read under way is answered but not kept."""
        key = (host, user)
        self._documents.pop(key, None)
        self._stored.pop(key, None)
        if key in self._loading:
            self._unkept.add(key)

    def forget_all(self):
        self._documents.clear()
        self._stored.clear()
        self._unkept.update(self._loading)


class KeyedLock:
    """Runs the read-modify-write steps on one document one after the other.

    ``run(key, function, *args)`` calls ``function`` (which returns a Deferred)
    once every earlier ``run`` with the same key has finished, so that two
    changes of one document never both read the old version.  Keys with
    nothing waiting take no memory.  A step that fails with ``StaleDocument``
    (in a cluster) runs again, up to ``STALE_RETRIES`` times.  Steps that finish at once (a cached
    document) run in a loop, not as callbacks nested in each other's: a
    queue of hundreds (a login shown the presence of every colleague) must
    not reach Python's recursion limit.
    """

    def __init__(self):
        self._waiting = {}  # key -> deque of (function, args, result, tries) queued behind the step running

    def run(self, key, function, *args):
        result = defer.Deferred()
        if key in self._waiting:
            self._waiting[key].append((function, args, result, 0))
        else:
            self._waiting[key] = collections.deque()
            self._run_from(key, (function, args, result, 0))
        return result

    def _run_from(self, key, step):
        while step is not None:
            function, args, _, _ = step
            outcome = []
            d = defer.maybeDeferred(function, *args)
            d.addBoth(outcome.append)
            if not outcome:  # it waits: the queue goes on when it ends
                d.addCallback(lambda _, step=step, outcome=outcome:
                              self._run_from(key, self._settle(key, step, outcome[0])))
                return
            step = self._settle(key, step, outcome[0])

    def _settle(self, key, step, outcome):
        """The same step again when it met a document another node changed (in a cluster); else give its
        outcome to its caller: the next step of ``key``, or None (the key is free)."""
        function, args, result, tries = step
        failed = isinstance(outcome, Failure)
        if failed and tries < STALE_RETRIES and outcome.check(StaleDocument):
            return function, args, result, tries + 1
        queue = self._waiting[key]
        step = queue.popleft() if queue else None
        if step is None:
            del self._waiting[key]
        if failed:
            result.errback(outcome)
        else:
            result.callback(outcome)
        return step

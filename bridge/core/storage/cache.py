"""Documents of one store kept in memory, for what is read on every stanza or changed in steps.

Storage answers later than the call that asks it.  Two things follow, and
this cache handles both for a store: a document read on every stanza (a
block list, a roster) should not cost a read each time; and two changes of
one document that overlap (two subscription requests arriving together)
must not each read the old version and write over the other.  Every caller
of ``load`` gets the same object, read once however many ask at the same
time, so changes made to it in memory compose; ``save`` writes the object as
it is then.  The most recently used ``limit`` documents stay in memory.
"""

import collections

from twisted.internet import defer
from twisted.python.failure import Failure

_ABSENT = object()


class DocumentCache:
    def __init__(self, storage, store, decode=lambda value: value, encode=lambda document: document,
                 limit=10000):
        self.storage = storage
        self.store = store
        self.decode = decode
        self.encode = encode
        self.limit = limit
        self._documents = collections.OrderedDict()  # (host, user) -> decoded document
        self._loading = {}  # (host, user) -> [Deferred] waiting for the read under way

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
        document = self._keep(key, self.decode(stored))
        for waiter in self._loading.pop(key):
            waiter.callback(document)

    def _unreadable(self, failure, key):
        for waiter in self._loading.pop(key):
            waiter.errback(failure)

    def _keep(self, key, document):
        self._documents[key] = document
        self._documents.move_to_end(key)
        while len(self._documents) > self.limit:
            self._documents.popitem(last=False)
        return document

    def save(self, host, user, document):
        """Keep ``document`` and write it (an encoding of None deletes the stored one)."""
        self._keep((host, user), document)
        return self.storage.set(host, user, self.store, self.encode(document))

    def forget(self, host, user):
        """Drop a document from memory (its account was deleted)."""
        self._documents.pop((host, user), None)


class KeyedLock:
    """Runs the read-modify-write steps on one document one after the other.

    ``run(key, function, *args)`` calls ``function`` (which returns a Deferred)
    once every earlier ``run`` with the same key has finished, so that two
    changes of one document never both read the old version.  Keys with
    nothing waiting take no memory.  Steps that finish at once (a cached
    document) run in a loop, not as callbacks nested in each other's: a
    queue of hundreds (a login shown the presence of every colleague) must
    not reach Python's recursion limit.
    """

    def __init__(self):
        self._waiting = {}  # key -> deque of (function, args, result) queued behind the step running

    def run(self, key, function, *args):
        result = defer.Deferred()
        if key in self._waiting:
            self._waiting[key].append((function, args, result))
        else:
            self._waiting[key] = collections.deque()
            self._run_from(key, (function, args, result))
        return result

    def _run_from(self, key, step):
        while step is not None:
            function, args, result = step
            outcome = []
            d = defer.maybeDeferred(function, *args)
            d.addBoth(outcome.append)
            if not outcome:  # it waits: the queue goes on when it ends
                d.addCallback(lambda _, result=result, outcome=outcome:
                              self._run_from(key, self._settle(key, result, outcome[0])))
                return
            step = self._settle(key, result, outcome[0])

    def _settle(self, key, result, outcome):
        """Give a finished step's outcome to its caller; the next step of ``key``, or None (the key is free)."""
        queue = self._waiting[key]
        step = queue.popleft() if queue else None
        if step is None:
            del self._waiting[key]
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)
        return step

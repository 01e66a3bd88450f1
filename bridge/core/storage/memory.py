"""``IStorage`` in the process's memory: for tests, and for a server that keeps nothing.

Values are kept as JSON text, so what a caller changes in a document it
read never changes the stored one, as with a database.  Answers come at
once, in already-fired Deferreds.
"""

import itertools
import json

from twisted.internet import defer
from zope.interface import implementer

from bridge.core.storage import IStorage, stored_bytes


@implementer(IStorage)
class MemoryStorage:
    def __init__(self):
        self._documents = {}  # (host, user, store) -> JSON text
        self._queues = {}  # (host, user, store) -> {id: JSON text}, in id order
        self._sizes = {}  # (host, user, store) -> the stored_bytes of its queue's items together
        self._ids = itertools.count(1)

    def get(self, host, user, store):
        text = self._documents.get((host, user, store))
        return defer.succeed(None if text is None else json.loads(text))

    def set(self, host, user, store, value):
        if value is None:
            self._documents.pop((host, user, store), None)
        else:
            self._documents[(host, user, store)] = json.dumps(value)
        return defer.succeed(None)

    def users(self, host, store):
        return defer.succeed(sorted(u for (h, u, s) in self._documents if h == host and s == store))

    def append(self, host, user, store, value):
        item = next(self._ids)
        key = (host, user, store)
        self._queues.setdefault(key, {})[item] = json.dumps(value)
        self._sizes[key] = self._sizes.get(key, 0) + stored_bytes(value)
        return defer.succeed(item)

    def items(self, host, user, store, limit=None):
        queue = self._queues.get((host, user, store), {})
        found = [(item, json.loads(text)) for item, text in queue.items()]
        return defer.succeed(found if limit is None else found[:limit])

    def count(self, host, user, store):
        return defer.succeed(len(self._queues.get((host, user, store), {})))

    def size(self, host, user, store):
        return defer.succeed(self._sizes.get((host, user, store), 0))

    def remove(self, host, user, store, ids):
        key = (host, user, store)
        queue = self._queues.get(key, {})
        for item in ids:
            text = queue.pop(item, None)
            if text is not None:
                self._sizes[key] -= len(text.encode("utf-8"))
        if not queue:
            self._queues.pop(key, None)
            self._sizes.pop(key, None)
        return defer.succeed(None)

    def delete_user(self, host, user):
        for table in (self._documents, self._queues, self._sizes):
            for key in [key for key in table if key[:2] == (host, user)]:
                del table[key]
        return defer.succeed(None)

    def close(self):
        return defer.succeed(None)

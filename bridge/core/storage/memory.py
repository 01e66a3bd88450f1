"""``IStorage`` in the process's memory: for tests, and for a server that keeps nothing.

Values are kept as JSON text, so what a caller changes in a document it
read never changes the stored one, as with a database.  Answers come at
once, in already-fired Deferreds.
"""

import itertools
import json

from twisted.internet import defer
from zope.interface import implementer

from bridge.core.storage import ArchiveItemNotFound, ArchivePage, IStorage, stored_bytes


@implementer(IStorage)
class MemoryStorage:
    available = True  # the data are in this process

    def __init__(self):
        self._documents = {}  # (host, user, store) -> JSON text
        self._queues = {}  # (host, user, store) -> {id: JSON text}, in id order
        self._sizes = {}  # (host, user, store) -> the stored_bytes of its queue's items together
        self._archives = {}  # (host, user) -> [ArchiveRecord], oldest first
        self._archive_time = 0  # the latest time of a record (see ``IStorage.archive_append``)
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

    def archive_append(self, host, user, record):
        self._archive_time = max(record.timestamp, self._archive_time + 1)
        if record.timestamp != self._archive_time:
            record = record._replace(timestamp=self._archive_time)
        self._archives.setdefault((host, user), []).append(record)

    def archive_query(self, host, user, query):
        try:
            return defer.succeed(select(self._archives.get((host, user), []), query))
        except ArchiveItemNotFound:
            return defer.fail()

    def archive_replace(self, host, user, record_id, stanza):
        records = self._archives.get((host, user), [])
        for index, record in enumerate(records):
            if record.id == record_id:
                records[index] = record._replace(stanza=stanza)
                return defer.succeed(None)
        return defer.fail(ArchiveItemNotFound(record_id))

    def archive_remove(self, host, user, before=None):
        return defer.succeed(self._remove_records(host, user, before))

    def archive_expire(self, host, before):
        users = [user for (h, user) in self._archives if h == host]
        return defer.succeed(sum(self._remove_records(host, user, before) for user in users))

    def _remove_records(self, host, user, before):
        records = self._archives.pop((host, user), [])
        kept = [] if before is None else [record for record in records if record.timestamp >= before]
        if kept:
            self._archives[(host, user)] = kept
        return len(records) - len(kept)

    def delete_user(self, host, user):
        self._archives.pop((host, user), None)
        for table in (self._documents, self._queues, self._sizes):
            for key in [key for key in table if key[:2] == (host, user)]:
                del table[key]
        return defer.succeed(None)

    def close(self):
        return defer.succeed(None)


def select(records, query):
    """The ``ArchivePage`` of ``records`` (oldest first) that ``query`` selects, as the SQLite backend reads it."""
    position = {record.id: index for index, record in enumerate(records)}

    def index_of(record_id):
        if record_id not in position:
            raise ArchiveItemNotFound(record_id)
        return position[record_id]

    low = index_of(query.after_id) if query.after_id is not None else -1
    high = index_of(query.before_id) if query.before_id is not None else len(records)
    wanted = None if query.ids is None else {index_of(record_id) for record_id in query.ids}
    matching = [index for index, record in enumerate(records)
                if low < index < high and (wanted is None or index in wanted)
                and (query.with_jid is None or record.with_jid == query.with_jid)
                and (query.with_resource is None or record.with_resource == query.with_resource)
                and (query.start is None or record.timestamp >= query.start)
                and (query.end is None or record.timestamp <= query.end)]
    if query.backwards:
        bound = index_of(query.page_before) if query.page_before is not None else len(records)
        candidates = [index for index in matching if index < bound]
        page = candidates[max(0, len(candidates) - query.limit):] if query.limit else []
        complete = len(candidates) <= query.limit
    else:
        bound = index_of(query.page_after) if query.page_after is not None else -1
        candidates = [index for index in matching if index > bound]
        page = candidates[:query.limit]
        complete = len(candidates) <= query.limit
    return ArchivePage([records[index] for index in page], len(matching), complete)

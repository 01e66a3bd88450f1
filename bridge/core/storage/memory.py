"""``IStorage`` in the process's memory: for tests, and for a server that keeps nothing.

Values are kept as JSON text, so what a caller changes in a document it
read never changes the stored one, as with a database.  Answers come at
once, in already-fired Deferreds; given a ``clock``, they come as the SQLite
backend's do (group commit): those of the calls of one turn together, in
order, at the end of the turn (``clock.callLater(0)``), so that a test can
check that an answer sent from a callback waits for its group.
"""

import itertools
import json

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from bridge.core.storage import ArchiveItemNotFound, ArchivePage, ArchiveRecord, IStorage, stored_bytes


@implementer(IStorage)
class MemoryStorage:
    available = True  # the data are in this process

    def __init__(self, clock=None):
        self.clock = clock
        self._turn = []  # (Deferred, result) answered at the end of the turn, with a clock
        self._documents = {}  # (host, user, store) -> JSON text
        self._queues = {}  # (host, user, store) -> {id: JSON text}, in id order
        self._sizes = {}  # (host, user, store) -> the stored_bytes of its queue's items together
        self._archives = {}  # (host, user) -> [ArchiveRecord], oldest first
        self._archive_time = 0  # the latest time of a record (see ``IStorage.archive_append``)
        self._ids = itertools.count(1)

    def _answer(self, result):
        """A Deferred of ``result`` (a value or a Failure): fired now, or at the end of the turn."""
        if self.clock is None:
            return defer.fail(result) if isinstance(result, Failure) else defer.succeed(result)
        d = defer.Deferred()
        if not self._turn:
            self.clock.callLater(0, self._commit_turn)
        self._turn.append((d, result))
        return d

    def _commit_turn(self):
        answers, self._turn = self._turn, []
        for d, result in answers:
            d.callback(result)

    def get(self, host, user, store):
        text = self._documents.get((host, user, store))
        return self._answer(None if text is None else json.loads(text))

    def set(self, host, user, store, value):
        if value is None:
            self._documents.pop((host, user, store), None)
        else:
            self._documents[(host, user, store)] = json.dumps(value)
        return self._answer(None)

    def replace(self, host, user, store, expected, value):
        text = self._documents.get((host, user, store))
        if (None if text is None else json.loads(text)) != expected:
            return self._answer(False)
        self.set(host, user, store, value)
        return self._answer(True)

    def users(self, host, store):
        return self._answer(sorted(u for (h, u, s) in self._documents if h == host and s == store))

    def append(self, host, user, store, value):
        item = next(self._ids)
        key = (host, user, store)
        self._queues.setdefault(key, {})[item] = json.dumps(value)
        self._sizes[key] = self._sizes.get(key, 0) + stored_bytes(value)
        return self._answer(item)

    def items(self, host, user, store, limit=None):
        queue = self._queues.get((host, user, store), {})
        found = [(item, json.loads(text)) for item, text in queue.items()]
        return self._answer(found if limit is None else found[:limit])

    def count(self, host, user, store):
        return self._answer(len(self._queues.get((host, user, store), {})))

    def size(self, host, user, store):
        return self._answer(self._sizes.get((host, user, store), 0))

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
        return self._answer(None)

    def archive_append(self, host, user, record):
        time = record.timestamp
        if time <= self._archive_time:  # both ends of a local message share their time
            time = self._archive_time + 1
            record = ArchiveRecord(record.id, time, *record[2:])
        self._archive_time = time
        self._archives.setdefault((host, user), []).append(record)

    def archive_query(self, host, user, query):
        try:
            return self._answer(select(self._archives.get((host, user), []), query))
        except ArchiveItemNotFound:
            return self._answer(Failure())

    def archive_replace(self, host, user, record_id, stanza):
        records = self._archives.get((host, user), [])
        for index, record in enumerate(records):
            if record.id == record_id:
                records[index] = record._replace(stanza=stanza)
                return self._answer(None)
        return self._answer(Failure(ArchiveItemNotFound(record_id)))

    def archive_remove(self, host, user, before=None):
        return self._answer(self._remove_records(host, user, before))

    def archive_expire(self, host, before):
        users = [user for (h, user) in self._archives if h == host]
        return self._answer(sum(self._remove_records(host, user, before) for user in users))

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
        return self._answer(None)

    def close(self):
        return self._answer(None)


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

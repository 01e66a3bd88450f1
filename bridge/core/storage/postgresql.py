"""PostgreSQL implementation of ``IStorage``: a database server that several bridge nodes share.

The database is worked by a thread of a bounded pool, never the reactor's,
as ``twisted.enterprise.adbapi`` does, over a psycopg connection pool
(``postgresql_ops.py``).  As with SQLite, calls queue up in the order they
were made and the waiting ones (up to ``BATCH_LIMIT``) go together, in one
transaction, one batch at a time: that keeps the order of the calls.  The
archive's records are gathered for ``ARCHIVE_HANDOVER_SECONDS`` and written
as one call of a batch (docs/decisions.md says why no writer process).

The loss of the database for a while (a restart, a failover to a standby
named next in the connection string) is survived:

- the calls of a batch the database did not take stay at the head of the
  queue and are sent again every ``retry_interval_seconds``, after asking
  whether the lost batch was committed after all (then its writes are not
  carried out twice, and its reads fail with ``StorageUnavailable``);
- calls made meanwhile queue behind them, up to ``max_queued_bytes``
  (their arguments' text); past it they fail with ``StorageUnavailable``;
- ``available`` is false meanwhile: a login answers temporary-auth-failure
  rather than wait (``Accounts.credentials``).
"""

import collections
import json
import uuid

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from bridge.core.storage import IStorage, StorageUnavailable, json_text, sqlite_ops
from bridge.core.storage.postgresql_ops import READS, DatabaseUnavailable
from bridge.core.storage.sqlite import ARCHIVE_HANDOVER_SECONDS, BATCH_LIMIT

log = Logger()

# What a queued call costs beyond its arguments' text (its tuple, its Deferred), counted in the bound.
CALL_OVERHEAD_BYTES = 200


class _Call:
    __slots__ = ("name", "args", "deferred", "size")

    def __init__(self, name, args, size):
        self.name = name
        self.args = args
        self.deferred = defer.Deferred()
        self.size = size


def _size(args):
    """The bytes a call's arguments hold (their text), for the queue's bound."""
    total = CALL_OVERHEAD_BYTES
    for value in args:
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, list):
            total += sum(len(item) if isinstance(item, str) else 8 for item in value)
    return total


@implementer(IStorage)
class PostgreSQLStorage:
    """``database``: a ``postgresql_ops.Database``; ``retry_interval_seconds``: None to wait for no
    database (bridgectl: calls fail at once when it is away); ``pool``: the threads that work it (by
    default one, started with the first call: one batch is carried out at a time)."""

    def __init__(self, database, reactor, max_queued_bytes, retry_interval_seconds, pool=None):
        self._database = database
        self._reactor = reactor
        self._max_queued_bytes = max_queued_bytes
        self._retry_interval = retry_interval_seconds
        self._pool = pool or ThreadPool(minthreads=1, maxthreads=1, name="bridge-postgresql")
        self._started = False
        self._writer = uuid.uuid4().hex  # this storage's name in batch_commits
        self._serial = 0
        self._waiting = collections.deque()  # calls not yet carried out, in order
        self._queued_bytes = 0  # the size of the calls waiting or under way
        self._running = False
        self._lost = None  # (serial, number of calls) of a batch lost with the database, to ask about
        self._retry = None  # the timer of the next try while the database is away
        self.available = True
        self._refused = 0  # calls refused for want of room since the database last answered, for the log
        self._archive_values = []
        self._archive_last = 0
        self._handover = None
        self._closed = None

    # -- the calls ------------------------------------------------------------------

    def get(self, host, user, store):
        return self._call("_get", host, user, store)

    def set(self, host, user, store, value):
        return self._call("_set", host, user, store, None if value is None else json.dumps(value))

    def replace(self, host, user, store, expected, value):
        return self._call("_replace", host, user, store, json_text(expected), json_text(value))

    def users(self, host, store):
        return self._call("_users", host, store)

    def append(self, host, user, store, value):
        return self._call("_append", host, user, store, json.dumps(value))

    def items(self, host, user, store, limit=None):
        return self._call("_items", host, user, store, limit)

    def count(self, host, user, store):
        return self._call("_count", host, user, store)

    def size(self, host, user, store):
        return self._call("_size", host, user, store)

    def remove(self, host, user, store, ids):
        return self._call("_remove", host, user, store, list(ids))

    def delete_user(self, host, user):
        return self._call("_delete_user", host, user)

    def archive_append(self, host, user, record):
        if self._handover is None:
            self._handover = self._reactor.callLater(ARCHIVE_HANDOVER_SECONDS, self._hand_over_archive)
        self._archive_last = sqlite_ops.archive_row(self._archive_values, self._archive_last, host, user, record)

    def archive_query(self, host, user, query):
        return self._call("_archive_query", host, user, query)

    def archive_replace(self, host, user, record_id, stanza):
        return self._call("_archive_replace", host, user, record_id, stanza)

    def archive_remove(self, host, user, before=None):
        return self._call("_archive_remove", host, user, before)

    def archive_expire(self, host, before):
        return self._call("_archive_expire", host, before)

    def close(self):
        """Deferred: fires once every call made before is carried out (or refused), the threads ended."""
        if self._closed is None:
            self._hand_over_archive()
            self._closed = defer.Deferred()
            self._closing()
        return self._closed

    # -- the queue --------------------------------------------------------------------

    def _call(self, name, *args):
        if self._archive_values:
            self._hand_over_archive()  # the calls are carried out in the order they were made
        return self._queue(name, args)

    def _queue(self, name, args):
        if self._closed is not None:
            return defer.fail(RuntimeError("the storage is closed"))
        size = _size(args)
        if self._queued_bytes + size > self._max_queued_bytes:
            return self._refuse(f"{self._queued_bytes} bytes of calls wait for the database")
        call = _Call(name, args, size)
        self._queued_bytes += size
        self._waiting.append(call)
        self._next()
        return call.deferred

    def _refuse(self, reason):
        self._refused += 1
        if self._refused == 1:
            log.error("storage calls refused: {reason}", reason=reason)
        return defer.fail(StorageUnavailable(reason))

    def _hand_over_archive(self):
        """The records appended since the last hand-over go to the queue as one call, at once."""
        handover, self._handover = self._handover, None
        if handover is not None and handover.active():
            handover.cancel()
        values, self._archive_values = self._archive_values, []
        if values:
            self._queue("_archive_insert", (values,)).addErrback(
                lambda failure: log.failure("{count} archived messages not stored", failure,
                                            count=len(values) // sqlite_ops.ARCHIVE_COLUMNS))

    def _next(self):
        """Send the waiting calls as one batch, unless one is under way or the database is awaited."""
        if self._running or self._retry is not None or not self._waiting:
            return
        if not self._started:
            self._started = True
            self._database.open()
            self._pool.start()
        self._running = True
        if self._lost is not None:
            serial, _ = self._lost
            d = threads.deferToThreadPool(self._reactor, self._pool, self._database.committed, self._writer, serial)
            d.addCallbacks(self._settled, self._unavailable)
            return
        batch = [self._waiting.popleft() for _ in range(min(BATCH_LIMIT, len(self._waiting)))]
        serial = None
        if any(call.name not in READS for call in batch):
            self._serial += 1
            serial = self._serial
        d = threads.deferToThreadPool(self._reactor, self._pool, self._database.run,
                                      [(call.name, call.args) for call in batch], self._writer, serial)
        d.addCallbacks(self._answered, self._failed, (batch,), None, (batch, serial))

    def _answered(self, outcomes, batch):
        self._back()
        for call, (succeeded, result) in zip(batch, outcomes):
            self._queued_bytes -= call.size
            if succeeded:
                call.deferred.callback(result)
            else:
                call.deferred.errback(Failure(result))
        self._done()

    def _failed(self, failure, batch, serial):
        """The database failed the batch: if it is away, the batch waits at the head of the queue; any other
        failure (a commit refused) fails every call."""
        if not failure.check(DatabaseUnavailable):
            for call in batch:
                self._queued_bytes -= call.size
                call.deferred.errback(failure)
            self._done()
            return
        self._waiting.extendleft(reversed(batch))
        if serial is not None:
            self._lost = (serial, len(batch))
        self._unavailable(failure)

    def _settled(self, outcomes):
        """The answer to whether the lost batch was committed: its writes' outcomes (its reads, not known,
        fail), or None (the batch is sent again)."""
        _, count = self._lost
        self._lost = None
        self._back()
        if outcomes is None:
            self._done()
            return
        batch = [self._waiting.popleft() for _ in range(count)]
        for call in batch:
            if call.name in READS:
                self._queued_bytes -= call.size
                call.deferred.errback(StorageUnavailable("the database was lost while it answered"))
        self._answered(outcomes, [call for call in batch if call.name not in READS])

    def _unavailable(self, failure):
        failure.trap(DatabaseUnavailable)
        if self._retry_interval is None:
            self._give_up(failure)
            return
        if self.available:
            self.available = False
            log.error("the database cannot be reached ({reason}): {count} calls wait, logins are refused; "
                      "trying again every {interval} s", reason=failure.value, count=len(self._waiting),
                      interval=self._retry_interval)
        self._running = False
        self._retry = self._reactor.callLater(self._retry_interval, self._try_again)

    def _give_up(self, failure):
        """No waiting for the database (bridgectl): every call waiting fails, the lost batch's perhaps done."""
        self._lost = None
        while self._waiting:
            call = self._waiting.popleft()
            self._queued_bytes -= call.size
            call.deferred.errback(StorageUnavailable(f"the database cannot be reached ({failure.value}); calls "
                                                     "under way when it was lost may or may not be done"))
        self._done()

    def _try_again(self):
        self._retry = None
        self._next()

    def _back(self):
        if not self.available:
            log.info("the database answers again; {count} calls wait", count=len(self._waiting))
        self.available = True

    def _done(self):
        self._running = False
        if self._refused and not self._waiting:
            log.info("storage calls are accepted again ({refused} were refused for want of room)",
                     refused=self._refused)
            self._refused = 0
        self._next()
        self._closing()

    def _closing(self):
        """Once closed and every call is carried out, the threads and connections end."""
        if self._closed is None or self._closed.called or self._running or self._waiting:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self._started:
            self._closed.callback(None)
            return
        d = threads.deferToThreadPool(self._reactor, self._pool, self._database.close)
        d.addErrback(lambda failure: log.failure("closing the database", failure))
        d.addCallback(lambda _: self._pool.stop())
        d.addCallback(self._closed.callback)

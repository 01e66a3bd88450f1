"""SQLite implementation of ``IStorage``: the default, one file under data_dir.

The database is worked by one thread of its own, never the reactor's: a
slow disk stalls no stream.  Group commit: the calls made during one
reactor turn reach the thread together, at the end of the turn, in the order
they were made; the thread takes all that are waiting (up to about
``BATCH_LIMIT``) and carries them out in one transaction, so one commit
serves a burst of writes (the SIP MESSAGEs, SMS and offline messages of a
turn).  Each call's Deferred fires on the reactor thread after the commit
that covers it: an answer (a 202 to a SIP phone, an SMS accepted, an
XEP-0198 <a/>) sent from its callback is sent only once what it answers
for is in the database, where a killed process finds it again (WAL, with
``synchronous=NORMAL``: a power cut may lose the last commits, a crash of
the process none).

The archive's records are gathered for ``ARCHIVE_HANDOVER_SECONDS`` and
handed over together: to the archive writer's process when the server has one
(``archive_writer.py``), else to the thread as one call.

The file (and the journal files SQLite makes beside it, which take its
permissions) is created 0600 in a folder created 0700: the accounts' SCRAM
keys and SIP digest secrets are in it.
"""

import json
import os
import queue
import threading

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bridge.core.storage import IStorage, json_text, sqlite_ops as sql

log = Logger()

BATCH_LIMIT = 512
_STOP = object()
# How long the archive's records are gathered before they are handed over together: a frame for the
# writer costs the reactor a system call and a timer; one every 10 ms rather than one every reactor
# turn raised the rate with the archive on by 8 % (docs/performance.md).  Any other call hands them
# over first, so that it sees them.
ARCHIVE_HANDOVER_SECONDS = 0.01


@implementer(IStorage)
class SQLiteStorage:
    """``archive_writer``: an ``ArchiveWriter`` that inserts the archive's records from a process of its
    own; without one, the database thread does."""

    available = True  # the database is a file of this machine

    def __init__(self, path, reactor, archive_writer=None):
        self.path = path
        self._reactor = reactor
        self._calls = queue.SimpleQueue()
        self._db = sql.connect(path)  # opened here, so that a bad path stops the start at once
        self._closed = None
        self._archive_values = []  # the row values of the records appended since the last hand-over
        self._handover = None  # the timer of the next hand-over
        # This process is the archive's only writer: it numbers the records.
        self._archive_last = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM archive").fetchone()[0]
        self._writer = archive_writer
        self._pid = None  # the process whose thread works the database (see ``_start_thread``)
        self._thread = None
        self._turn = []  # the calls made during this reactor turn, handed to the thread at its end

    @property
    def archive_backlog_bytes(self):
        """Bytes of archived records handed to the archive writer and not yet stored (0 without a writer)."""
        return self._writer.backlog_bytes if self._writer is not None else 0

    def _call(self, operation, *args):
        if self._archive_values:
            self._hand_over_archive()  # the calls are carried out in the order they were made
        return self._queue(operation, *args)

    def _call_after_archive(self, operation, *args):
        """A call that reads or deletes archived records: once those appended before it are stored."""
        if self._writer is None:
            return self._call(operation, *args)
        if self._archive_values:
            self._hand_over_archive()
        d = self._writer.settled()
        d.addCallback(lambda _: self._queue(operation, *args))
        return d

    def _queue(self, operation, *args):
        if self._closed is not None:
            return defer.fail(RuntimeError("the storage is closed"))
        if self._pid != os.getpid():
            self._start_thread()
        d = defer.Deferred()
        if not self._turn:
            self._reactor.callLater(0, self._hand_over_turn)
        self._turn.append((operation, args, d))
        return d

    def _hand_over_turn(self):
        """The calls of the turn go to the thread as one: it commits them together."""
        if self._turn:
            calls, self._turn = self._turn, []
            self._calls.put(calls)

    def _start_thread(self):
        """The database thread of this process, started by its first call.  twistd builds the service,
        then forks to become a daemon (without -n): a thread does not follow a fork, and an SQLite
        connection must not be used across one, so a forked process opens a connection of its own."""
        if self._pid is not None:
            self._db = sql.connect(self.path)
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._work, name="bridge-sqlite", daemon=True)
        self._thread.start()

    def _work(self):
        """The database thread: batches of calls in, their outcomes to the reactor thread."""
        while True:
            first = self._calls.get()
            if first is _STOP:
                break
            batch = list(first)
            while len(batch) < BATCH_LIMIT:
                try:
                    calls = self._calls.get_nowait()
                except queue.Empty:
                    break
                if calls is _STOP:
                    self._calls.put(_STOP)
                    break
                batch.extend(calls)
            outcomes = sql.run_batch(self._db, [(operation, args) for operation, args, _ in batch])
            self._reactor.callFromThread(_answer, [call[2] for call in batch], outcomes)
        self._db.close()

    def get(self, host, user, store):
        return self._call(sql._get, host, user, store)

    def set(self, host, user, store, value):
        return self._call(sql._set, host, user, store, None if value is None else json.dumps(value))

    def replace(self, host, user, store, expected, value):
        return self._call(sql._replace, host, user, store, json_text(expected), json_text(value))

    def users(self, host, store):
        return self._call(sql._users, host, store)

    def append(self, host, user, store, value):
        return self._call(sql._append, host, user, store, json.dumps(value))

    def items(self, host, user, store, limit=None):
        return self._call(sql._items, host, user, store, limit)

    def count(self, host, user, store):
        return self._call(sql._count, host, user, store)

    def size(self, host, user, store):
        return self._call(sql._size, host, user, store)

    def remove(self, host, user, store, ids):
        return self._call(sql._remove, host, user, store, list(ids))

    def delete_user(self, host, user):
        return self._call_after_archive(sql._delete_user, host, user)

    def archive_append(self, host, user, record):
        if self._handover is None:
            self._handover = self._reactor.callLater(ARCHIVE_HANDOVER_SECONDS, self._hand_over_archive)
        self._archive_last = sql.archive_row(self._archive_values, self._archive_last, host, user, record)

    def _hand_over_archive(self):
        """The records appended since the last hand-over go to the writer, or to the database thread, at once."""
        handover, self._handover = self._handover, None
        if handover is not None and handover.active():
            handover.cancel()
        values, self._archive_values = self._archive_values, []
        if not values:
            return
        if self._writer is not None:
            self._writer.write(values)
        else:
            self._queue(sql._archive_insert, values).addErrback(
                lambda failure: log.failure("{count} archived messages not stored", failure,
                                            count=len(values) // sql.ARCHIVE_COLUMNS))

    def archive_query(self, host, user, query):
        return self._call_after_archive(sql._archive_query, host, user, query)

    def archive_replace(self, host, user, record_id, stanza):
        return self._call_after_archive(sql._archive_replace, host, user, record_id, stanza)

    def archive_remove(self, host, user, before=None):
        return self._call_after_archive(sql._archive_remove, host, user, before)

    def archive_expire(self, host, before):
        return self._call_after_archive(sql._archive_expire, host, before)

    def close(self):
        """Deferred: fires once every call made before is committed, the thread and the writer ended."""
        if self._closed is None:
            self._hand_over_archive()
            writer_ended = defer.succeed(None) if self._writer is None else self._writer.close()
            thread_ended = defer.Deferred()
            self._closed = defer.gatherResults([writer_ended, thread_ended])
            self._closed.addCallback(lambda _: None)
            if self._pid != os.getpid():
                self._start_thread()  # to close the database it opened
            self._hand_over_turn()
            self._calls.put(_STOP)
            threading.Thread(target=self._await_thread, args=(thread_ended,), name="bridge-sqlite-close",
                             daemon=True).start()
        return self._closed

    def _await_thread(self, ended):
        self._thread.join()
        self._reactor.callFromThread(ended.callback, None)


def _answer(deferreds, outcomes):
    for d, (succeeded, result) in zip(deferreds, outcomes):
        if succeeded:
            d.callback(result)
        else:
            d.errback(Failure(result))

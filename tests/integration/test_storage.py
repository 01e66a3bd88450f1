"""SQLite storage on its database thread (core/storage/sqlite.py), on a real file and the real reactor:
answers come later than the calls and in their order, a burst shares one transaction, one failing call
fails alone, close waits for what was asked before, and the files are private to their owner."""

import fcntl
import os
import shutil
import signal
import sqlite3
import stat
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bridge.core.storage import ArchiveQuery, ArchiveRecord, archive_writer, archive_writer_main, sqlite, sqlite_ops
from bridge.core.storage.archive_writer import ArchiveWriter
from bridge.core.storage.sqlite import SQLiteStorage
from bridge.core.storage.sqlite_ops import connect, run_batch


def scratch_folder(case):
    """A new folder, removed after ``case``'s other cleanups (trial's mktemp would leave it in the working tree)."""
    folder = tempfile.mkdtemp(prefix="bridge-test-")
    case.addCleanup(shutil.rmtree, folder, True)
    return os.path.join(folder, "run")


class ThreadedStorageTests(TestCase):
    def setUp(self):
        self.folder = os.path.join(scratch_folder(self), "data")
        self.path = os.path.join(self.folder, "bridge.sqlite")
        self.storage = SQLiteStorage(self.path, reactor)
        self.addCleanup(self.storage.close)

    @defer.inlineCallbacks
    def test_answers_later_in_order(self):
        """No answer within the call; the answers come in the order of the calls, a read seeing the
        writes asked before it."""
        order = []
        written = self.storage.set("h", "u", "doc", {"n": 1})
        self.assertNoResult(written)
        written.addCallback(lambda _: order.append("set"))
        appended = self.storage.append("h", "u", "q", "first")
        appended.addCallback(lambda item: order.append(("append", item)))
        read = self.storage.get("h", "u", "doc")
        read.addCallback(lambda value: order.append(("get", value)))
        items = yield self.storage.items("h", "u", "q")
        self.assertEqual([value for _, value in items], ["first"])
        self.assertEqual([entry if isinstance(entry, str) else entry[0] for entry in order], ["set", "append", "get"])
        self.assertEqual(order[2][1], {"n": 1})

    @defer.inlineCallbacks
    def test_close_commits_what_was_asked_and_files_are_private(self):
        """Calls made before close are committed before it fires; the database file and its journal
        files are 0600 in a 0700 folder."""
        yield self.storage.set("h", "u", "doc", {"secret": True})
        names = os.listdir(self.folder)
        self.assertIn("bridge.sqlite-wal", names)
        for name in names:
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.folder, name)).st_mode), 0o600, name)
        for index in range(50):
            self.storage.append("h", "u", "q", index)
        yield self.storage.close()
        self.assertEqual(stat.S_IMODE(os.stat(self.folder).st_mode), 0o700)
        with sqlite3.connect(self.path) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM queue").fetchone()[0], 50)
        self.failureResultOf(self.storage.get("h", "u", "doc"), RuntimeError)

    @defer.inlineCallbacks
    def test_archive_appends_go_together_before_later_calls(self):
        """Archive records appended together reach the database thread as one call, once
        ARCHIVE_HANDOVER_SECONDS have passed or before any call made after them (a query sees them);
        close writes those left."""
        handed_over = []
        queue_call = self.storage._queue
        self.storage._queue = lambda operation, *args: handed_over.append(operation) or queue_call(operation, *args)

        def append(*numbers):
            for number in numbers:
                self.storage.archive_append("h", "u", ArchiveRecord(f"id{number}", number, "b@h", "", "in", "<m/>"))

        append(0, 1)
        self.assertEqual(handed_over, [])
        yield task.deferLater(reactor, sqlite.ARCHIVE_HANDOVER_SECONDS * 2, lambda: None)
        self.assertEqual(handed_over, [sqlite_ops._archive_insert])
        append(2, 3)
        page = yield self.storage.archive_query("h", "u", ArchiveQuery())
        self.assertEqual([record.id for record in page.records], ["id0", "id1", "id2", "id3"])
        self.assertEqual(handed_over, [sqlite_ops._archive_insert] * 2 + [sqlite_ops._archive_query])
        append(4)
        yield self.storage.close()
        with sqlite3.connect(self.path) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM archive").fetchone()[0], 5)


class ArchiveWriterProcessTests(TestCase):
    """The archive's writer as a real process beside the database thread, on a real file."""

    def setUp(self):
        self.path = os.path.join(scratch_folder(self), "data", "bridge.sqlite")
        self.writer = ArchiveWriter(reactor, self.path)
        self.storage = SQLiteStorage(self.path, reactor, self.writer)
        self.addCleanup(self.storage.close)
        self.patch(archive_writer, "RESTART_DELAY_SECONDS", 0.05)

    def append(self, *numbers):
        for number in numbers:
            self.storage.archive_append("h", "u", ArchiveRecord(f"id{number}", number, "b@h", "", "in", "<m/>"))

    @defer.inlineCallbacks
    def ids(self):
        page = yield self.storage.archive_query("h", "u", ArchiveQuery(limit=100))
        return [record.id for record in page.records]

    @defer.inlineCallbacks
    def test_records_survive_signals_and_a_killed_writer(self):
        """A query sees the records appended before it; the writer ignores SIGINT and SIGTERM; when it
        is killed, another is started and stores what was not answered; close commits the rest and
        ends the writer."""
        self.append(0, 1, 2)
        self.assertEqual((yield self.ids()), ["id0", "id1", "id2"])
        first = self.writer.transport.pid
        os.kill(first, signal.SIGINT)
        os.kill(first, signal.SIGTERM)
        self.append(3)
        self.assertEqual((yield self.ids()), ["id0", "id1", "id2", "id3"])
        self.assertEqual(self.writer.transport.pid, first)
        os.kill(first, signal.SIGKILL)
        self.append(4, 5)
        self.assertEqual((yield self.ids()), [f"id{n}" for n in range(6)])
        self.assertNotEqual(self.writer.transport.pid, first)
        self.append(6)
        yield self.storage.close()
        self.assertIsNone(self.writer.transport)
        with sqlite3.connect(self.path) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM archive").fetchone()[0], 7)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_the_writer_runs_below_the_server_behind_a_wide_pipe(self):
        """The writer's commits can wait, the reactor cannot: it runs at a lower priority than the server,
        and its input holds a mebibyte (a busy reactor writes to it once per turn)."""
        self.append(0)
        self.assertEqual((yield self.ids()), ["id0"])
        with open(f"/proc/{self.writer.transport.pid}/stat") as status:
            niceness = int(status.read().rsplit(")", 1)[1].split()[16])
        self.assertEqual(niceness, min(19, os.nice(0) + archive_writer_main.NICENESS))
        pipe = self.writer.transport.pipes[0].fileno()
        self.assertEqual(fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ), archive_writer.INPUT_PIPE_BYTES)


class BatchTests(SynchronousTestCase):
    def test_journals_of_statements_stay_in_memory(self):
        """Every connection, the archive writer's included, keeps the journals of its statements and
        savepoints in memory (each hand-over of archive rows has a savepoint): in a temporary file, a
        page at a time, they doubled the writer's CPU."""
        db = connect(os.path.join(scratch_folder(self), "bridge.sqlite"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA temp_store").fetchone()[0], 2)  # 2: MEMORY

    def test_the_writer_holds_a_commit_in_its_cache(self):
        """The archive writer's cache holds the pages of one commit: with SQLite's default, pages spilled
        during a commit were read back and written again, three reads and three writes a row."""
        db = archive_writer_main.open_database(os.path.join(scratch_folder(self), "bridge.sqlite"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA cache_size").fetchone()[0], -archive_writer_main.CACHE_KIB)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_every_connection_lets_the_log_hold_several_commits(self):
        """The log holds several of the writer's commits before one copies them into the database, on every
        connection alike: the database thread's commits do not copy what the writer's left there."""
        folder = scratch_folder(self)
        for db in (connect(os.path.join(folder, "bridge.sqlite")),
                   archive_writer_main.open_database(os.path.join(folder, "bridge.sqlite"))):
            self.addCleanup(db.close)
            self.assertEqual(db.execute("PRAGMA wal_autocheckpoint").fetchone()[0], sqlite_ops.CHECKPOINT_PAGES)

    def test_one_transaction_one_failure_alone(self):
        """A batch runs in one transaction; an operation that raises fails alone, and the others'
        results and writes stand."""
        db = connect(":memory:")

        def broken(db):
            raise ValueError("no")

        outcomes = run_batch(db, [(sqlite_ops._set, ("h", "u", "doc", '"v"')), (broken, ()),
                                  (sqlite_ops._get, ("h", "u", "doc"))])
        self.assertEqual([succeeded for succeeded, _ in outcomes], [True, False, True])
        self.assertEqual(outcomes[2][1], "v")
        self.assertIsInstance(outcomes[1][1], ValueError)
        self.assertFalse(db.in_transaction)

    def test_failed_commit_fails_every_call(self):
        """When the commit fails, every call of the batch fails: none is answered as done."""

        class Refusing:
            """A connection whose COMMIT fails (a full disk)."""

            def __init__(self, db):
                self.db = db

            def execute(self, statement, *args):
                if statement == "COMMIT":
                    raise sqlite3.OperationalError("database or disk is full")
                return self.db.execute(statement, *args)

        outcomes = run_batch(Refusing(connect(":memory:")), [(sqlite_ops._append, ("h", "u", "q", '"x"')),
                                                              (sqlite_ops._count, ("h", "u", "q"))])
        self.assertEqual([succeeded for succeeded, _ in outcomes], [False, False])

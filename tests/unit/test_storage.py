"""The byte totals of queues (``IStorage.size``), in memory and in SQLite, kept without reading the items."""

import json
import os
import shutil
import sqlite3
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.storage import sqlite, stored_bytes
from bridge.core.storage.memory import MemoryStorage
from tests.unit.helpers import result_of

VALUES = ["short", "<message>" + "é" * 300 + "</message>", {"a": "quote \" and <tag/>"}]


class MemorySizeTests(SynchronousTestCase):
    def test_size_follows_appends_removals_and_deletion(self):
        """size() is the sum of stored_bytes of the items there, per queue, as they come and go."""
        storage = MemoryStorage()
        ids = [result_of(storage.append("h", "u", "offline", value)) for value in VALUES]
        result_of(storage.append("h", "u", "other", "x"))
        self.assertEqual(result_of(storage.size("h", "u", "offline")), sum(map(stored_bytes, VALUES)))
        result_of(storage.remove("h", "u", "offline", ids[1:2] + [999]))
        self.assertEqual(result_of(storage.size("h", "u", "offline")),
                         stored_bytes(VALUES[0]) + stored_bytes(VALUES[2]))
        result_of(storage.remove("h", "u", "offline", ids))
        self.assertEqual(result_of(storage.size("h", "u", "offline")), 0)
        result_of(storage.delete_user("h", "u"))
        self.assertEqual(result_of(storage.size("h", "u", "other")), 0)


class SQLiteSizeTests(SynchronousTestCase):
    """The SQL operations, run on the test's thread as the database thread runs them."""

    def run_ops(self, db, *operations):
        outcomes = sqlite.run_batch(db, operations)
        for succeeded, result in outcomes:
            if not succeeded:
                result.raiseException()
        return [result for _, result in outcomes]

    def test_size_follows_appends_removals_and_deletion(self):
        """The database keeps size() equal to the sum of stored_bytes of a queue's items."""
        db = sqlite.connect(":memory:")
        ids = self.run_ops(db, *[(sqlite._append, ("h", "u", "offline", json.dumps(value))) for value in VALUES])
        self.run_ops(db, (sqlite._append, ("h", "u", "other", json.dumps("x"))))
        [size] = self.run_ops(db, (sqlite._size, ("h", "u", "offline")))
        self.assertEqual(size, sum(map(stored_bytes, VALUES)))
        _, size = self.run_ops(db, (sqlite._remove, ("h", "u", "offline", ids[1:2])),
                               (sqlite._size, ("h", "u", "offline")))
        self.assertEqual(size, stored_bytes(VALUES[0]) + stored_bytes(VALUES[2]))
        self.run_ops(db, (sqlite._delete_user, ("h", "u")))
        self.assertEqual(db.execute("SELECT COUNT(*) FROM queue_bytes").fetchone()[0], 0)

    def test_a_database_made_before_the_totals_gets_them(self):
        """A database whose queues were written before queue_bytes existed has the totals filled
        when it is next opened, and kept from then on."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "old.sqlite")
        old = sqlite3.connect(path, isolation_level=None)
        old.execute("CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL, "
                    "user TEXT NOT NULL, store TEXT NOT NULL, value TEXT NOT NULL)")
        for value in VALUES:
            old.execute("INSERT INTO queue (host, user, store, value) VALUES ('h', 'u', 'offline', ?)",
                        (json.dumps(value),))
        old.close()
        db = sqlite.connect(path)
        [size] = self.run_ops(db, (sqlite._size, ("h", "u", "offline")))
        self.assertEqual(size, sum(map(stored_bytes, VALUES)))
        _, size = self.run_ops(db, (sqlite._append, ("h", "u", "offline", json.dumps("more"))),
                               (sqlite._size, ("h", "u", "offline")))
        self.assertEqual(size, sum(map(stored_bytes, VALUES + ["more"])))
        db.close()
        again = sqlite.connect(path)
        self.addCleanup(again.close)
        [size] = self.run_ops(again, (sqlite._size, ("h", "u", "offline")))
        self.assertEqual(size, sum(map(stored_bytes, VALUES + ["more"])))

    def test_reads_take_no_write_lock(self):
        """A batch of reads answers while another process writes (bridgectl adding an account):
        it takes no write lock, so it neither waits for one nor fails with "database is locked".  A
        write that cannot have the lock fails as an outcome, not as an exception that would end
        the database thread."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "bridge.sqlite")
        db = sqlite.connect(path)
        self.addCleanup(db.close)
        self.run_ops(db, (sqlite._set, ("h", "u", "accounts", json.dumps({"k": 1}))))
        writer = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(writer.close)
        writer.execute("BEGIN IMMEDIATE")
        self.addCleanup(writer.execute, "ROLLBACK")
        db.execute("PRAGMA busy_timeout = 0")  # a lock it waited for would fail at once
        self.assertEqual(self.run_ops(db, (sqlite._get, ("h", "u", "accounts")),
                                      (sqlite._count, ("h", "u", "offline"))), [{"k": 1}, 0])
        [(succeeded, failure)] = sqlite.run_batch(db, [(sqlite._set, ("h", "v", "accounts", "2"))])
        self.assertFalse(succeeded)
        self.assertIn("locked", str(failure.value))

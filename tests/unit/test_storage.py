"""Storage in memory and in SQLite: the byte totals of queues (``IStorage.size``), kept without reading
the items, and the archive shape (XEP-0313), the same in both."""

import json
import os
import shutil
import sqlite3
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.storage import (ArchiveItemNotFound, ArchiveQuery, ArchiveRecord, json_text, sqlite_ops,
                                 stored_bytes)
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
        outcomes = sqlite_ops.run_batch(db, operations)
        for succeeded, result in outcomes:
            if not succeeded:
                raise result
        return [result for _, result in outcomes]

    def test_size_follows_appends_removals_and_deletion(self):
        """The database keeps size() equal to the sum of stored_bytes of a queue's items."""
        db = sqlite_ops.connect(":memory:")
        ids = self.run_ops(db, *[(sqlite_ops._append, ("h", "u", "offline", json.dumps(value))) for value in VALUES])
        self.run_ops(db, (sqlite_ops._append, ("h", "u", "other", json.dumps("x"))))
        [size] = self.run_ops(db, (sqlite_ops._size, ("h", "u", "offline")))
        self.assertEqual(size, sum(map(stored_bytes, VALUES)))
        _, size = self.run_ops(db, (sqlite_ops._remove, ("h", "u", "offline", ids[1:2])),
                               (sqlite_ops._size, ("h", "u", "offline")))
        self.assertEqual(size, stored_bytes(VALUES[0]) + stored_bytes(VALUES[2]))
        self.run_ops(db, (sqlite_ops._delete_user, ("h", "u")))
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
        db = sqlite_ops.connect(path)
        [size] = self.run_ops(db, (sqlite_ops._size, ("h", "u", "offline")))
        self.assertEqual(size, sum(map(stored_bytes, VALUES)))
        _, size = self.run_ops(db, (sqlite_ops._append, ("h", "u", "offline", json.dumps("more"))),
                               (sqlite_ops._size, ("h", "u", "offline")))
        self.assertEqual(size, sum(map(stored_bytes, VALUES + ["more"])))
        db.close()
        again = sqlite_ops.connect(path)
        self.addCleanup(again.close)
        [size] = self.run_ops(again, (sqlite_ops._size, ("h", "u", "offline")))
        self.assertEqual(size, sum(map(stored_bytes, VALUES + ["more"])))

    def test_reads_take_no_write_lock(self):
        """A batch of reads answers while another process writes (bridgectl adding an account):
        it takes no write lock, so it neither waits for one nor fails with "database is locked".  A
        write that cannot have the lock fails as an outcome, not as an exception that would end
        the database thread."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "bridge.sqlite")
        db = sqlite_ops.connect(path)
        self.addCleanup(db.close)
        self.run_ops(db, (sqlite_ops._set, ("h", "u", "accounts", json.dumps({"k": 1}))))
        writer = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(writer.close)
        writer.execute("BEGIN IMMEDIATE")
        self.addCleanup(writer.execute, "ROLLBACK")
        db.execute("PRAGMA busy_timeout = 0")  # a lock it waited for would fail at once
        self.assertEqual(self.run_ops(db, (sqlite_ops._get, ("h", "u", "accounts")),
                                      (sqlite_ops._count, ("h", "u", "offline"))), [{"k": 1}, 0])
        [(succeeded, failure)] = sqlite_ops.run_batch(db, [(sqlite_ops._set, ("h", "v", "accounts", "2"))])
        self.assertFalse(succeeded)
        self.assertIn("locked", str(failure))


def record(number, with_jid="bob@localhost", resource="", direction="in"):
    return ArchiveRecord(f"id{number}", 1000 * number, with_jid, resource, direction, f"<message id='m{number}'/>")


class ArchiveContract:
    """The archive shape (``IStorage.archive_*``), and the compare-and-set of documents (``replace``), the same
    for every backend; ``call`` runs one operation, given documents as ``as_stored`` makes them."""

    as_stored = staticmethod(lambda document: document)

    def test_replace_is_a_compare_and_set(self):
        """A document is replaced (or made, or deleted) only when it is what the caller expects, compared
        as JSON; otherwise nothing is written."""
        def replace(expected, value):
            return self.call("replace", "h", "u", "doc", self.as_stored(expected), self.as_stored(value))

        self.assertTrue(replace(None, {"a": 1, "b": [1, 2]}))
        self.assertFalse(replace(None, {"a": 2}))
        self.assertFalse(replace({"a": 1}, {"a": 3}))
        self.assertEqual(self.call("get", "h", "u", "doc"), {"a": 1, "b": [1, 2]})
        self.assertTrue(replace({"b": [1, 2], "a": 1}, {"a": 4}))
        self.assertFalse(replace({"a": 1, "b": [1, 2]}, None))
        self.assertTrue(replace({"a": 4}, None))
        self.assertIsNone(self.call("get", "h", "u", "doc"))
        self.assertTrue(replace(None, None))

    def fill(self, records):
        for item in records:
            self.append("h", "u", item)

    def page(self, **query):
        return self.call("archive_query", "h", "u", ArchiveQuery(**query))

    def ids(self, page):
        return [item.id for item in page.records]

    def test_times_order_the_archive(self):
        """A record whose time is not later than the latest stored (two in one microsecond, a clock set
        back) is kept one microsecond after it, so that dates are read along the archive's order."""
        self.fill([record(5), record(5), record(3)])
        self.assertEqual([item.timestamp for item in self.page(limit=5).records], [5000, 5001, 5002])
        self.assertEqual(self.ids(self.page(start=5001, end=5001)), ["id5"])

    def test_forward_pages_with_count_and_completeness(self):
        """Pages read forward by RSM <after/>: oldest first, the count of all, and complete only on the
        page that reaches the end."""
        self.fill([record(n) for n in range(5)])
        first = self.page(limit=2)
        self.assertEqual((self.ids(first), first.count, first.complete), (["id0", "id1"], 5, False))
        last = self.page(limit=2, page_after="id3")
        self.assertEqual((self.ids(last), last.complete), (["id4"], True))
        self.assertEqual(self.page(limit=2, page_after="id1").complete, False)
        self.assertEqual(self.page(limit=3, page_after="id1").complete, True)
        empty = self.page(limit=2, page_after="id4")
        self.assertEqual((self.ids(empty), empty.count, empty.complete), ([], 5, True))

    def test_backward_pages(self):
        """<before/> empty is the last page, <before>id</before> the page before it; records stay oldest
        first; complete on the page that reaches the start."""
        self.fill([record(n) for n in range(5)])
        last = self.page(limit=2, last_page=True)
        self.assertEqual((self.ids(last), last.complete), (["id3", "id4"], False))
        earlier = self.page(limit=2, page_before="id1")
        self.assertEqual((self.ids(earlier), earlier.complete), (["id0"], True))
        self.assertEqual(self.page(limit=2, page_before="id2").complete, True)
        self.assertEqual(self.ids(self.page(limit=3, page_before="id2")), ["id0", "id1"])

    def test_filters(self):
        """with (bare, and with a resource), start and end (inclusive), after-id and before-id
        (exclusive), ids; the count follows the filters."""
        self.fill([record(0), record(1, "carol@localhost"), record(2, resource="phone"), record(3),
                   record(4, "carol@localhost")])
        self.assertEqual(self.ids(self.page(with_jid="bob@localhost")), ["id0", "id2", "id3"])
        self.assertEqual(self.ids(self.page(with_jid="bob@localhost", with_resource="phone")), ["id2"])
        self.assertEqual(self.ids(self.page(start=1000, end=3000)), ["id1", "id2", "id3"])
        self.assertEqual(self.ids(self.page(after_id="id1", before_id="id4")), ["id2", "id3"])
        page = self.page(ids=("id4", "id0"), limit=1)
        self.assertEqual((self.ids(page), page.count, page.complete), (["id0"], 2, False))
        page = self.page(with_jid="carol@localhost", limit=1, page_after="id1")
        self.assertEqual((self.ids(page), page.count, page.complete), (["id4"], 2, True))

    def test_unknown_ids_are_not_found(self):
        """An id the query names that is not in this user's archive fails with ArchiveItemNotFound,
        another user's record included."""
        self.fill([record(0)])
        self.append("h", "other", record(9))
        for query in ({"after_id": "nope"}, {"before_id": "id9"}, {"ids": ("id0", "x")}, {"page_after": "x"},
                      {"page_before": "id9"}):
            self.assertRaises(ArchiveItemNotFound, self.page, **query)

    def test_replace_keeps_the_place(self):
        """A replaced record keeps its id, time and place with the new stanza; an id not in this user's
        archive fails with ArchiveItemNotFound and changes nothing."""
        self.fill([record(n) for n in range(3)])
        self.append("h", "other", record(9))
        self.call("archive_replace", "h", "u", "id1", "<message>gone</message>")
        page = self.page()
        self.assertEqual([(item.id, item.timestamp, item.stanza) for item in page.records][1],
                         ("id1", 1000, "<message>gone</message>"))
        self.assertEqual(page.records[0].stanza, record(0).stanza)
        for user, record_id in (("u", "nope"), ("u", "id9")):
            self.assertRaises(ArchiveItemNotFound, self.call, "archive_replace", "h", user, record_id, "<x/>")
        self.assertNotEqual(self.call("archive_query", "h", "other", ArchiveQuery()).records[0].stanza, "<x/>")

    def test_max_zero_counts(self):
        """A page of 0 records still gives the count, and is complete only when nothing matches."""
        self.fill([record(n) for n in range(3)])
        page = self.page(limit=0)
        self.assertEqual((self.ids(page), page.count, page.complete), ([], 3, False))

    def test_remove_expire_and_delete_user(self):
        """A user's archive goes whole or older than a time; retention removes every user's old records
        of one host; deleting the user deletes the archive."""
        self.fill([record(n) for n in range(4)])
        self.append("h", "v", record(7))
        self.append("other-host", "u", record(8))
        self.assertEqual(self.call("archive_remove", "h", "u", 2000), 2)
        self.assertEqual(self.ids(self.page()), ["id2", "id3"])
        self.assertEqual(self.call("archive_expire", "h", 7000), 2)
        self.assertEqual(self.ids(self.page()), [])
        self.assertEqual(self.ids(self.call("archive_query", "h", "v", ArchiveQuery())), ["id7"])
        self.call("delete_user", "h", "v")
        self.assertEqual(self.call("archive_query", "h", "v", ArchiveQuery()).count, 0)
        self.assertEqual(self.call("archive_remove", "other-host", "u"), 1)


class MemoryArchiveTests(ArchiveContract, SynchronousTestCase):
    def setUp(self):
        self.storage = MemoryStorage()

    def call(self, name, *args):
        return result_of(getattr(self.storage, name)(*args))

    def append(self, host, user, item):
        self.storage.archive_append(host, user, item)


class SQLiteArchiveTests(ArchiveContract, SynchronousTestCase):
    """The SQL operations, run on the test's thread as the database thread runs them, in batches."""

    as_stored = staticmethod(json_text)

    def setUp(self):
        self.db = sqlite_ops.connect(":memory:")
        self.addCleanup(self.db.close)
        self.last = 0

    def call(self, name, *args):
        [(succeeded, result)] = sqlite_ops.run_batch(self.db, [(getattr(sqlite_ops, "_" + name), args)])
        if not succeeded:
            raise result
        return result

    def append(self, host, user, item):
        self.call("archive_insert", self.values([(host, user, item)]))

    def values(self, appended):
        """The row values of ``appended`` [(host, user, record)], numbered as ``SQLiteStorage`` does."""
        values = []
        for host, user, item in appended:
            self.last = sqlite_ops.archive_row(values, self.last, host, user, item)
        return values

    def test_a_turns_appends_are_written_together(self):
        """The records of one turn go in past the rows of one statement, in their order; a row already
        stored (a frame that the archive writer committed, sent again) is kept once."""
        count = sqlite_ops.ARCHIVE_ROWS_PER_STATEMENT + 5
        values = self.values([("h", "u", record(n)) for n in range(count)])
        self.call("archive_insert", values)
        self.call("archive_insert", values)
        self.assertEqual(self.ids(self.page(limit=count + 1)), [f"id{n}" for n in range(count)])

    def test_a_failed_group_of_appends_writes_none(self):
        """When one row of a hand-over's records cannot be written, none of them is, and the call fails."""
        count = sqlite_ops.ARCHIVE_ROWS_PER_STATEMENT + 5  # the refused row in the group's second statement
        self.db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON archive WHEN NEW.id = 'id{count - 2}' "
                        "BEGIN SELECT RAISE(ABORT, 'refused'); END")
        values = self.values([("h", "u", record(n)) for n in range(count)])
        [(succeeded, _)] = sqlite_ops.run_batch(self.db, [(sqlite_ops._archive_insert, (values,))])
        self.assertFalse(succeeded)
        self.assertEqual(self.page(limit=10).count, 0)

    def test_queries_use_the_indexes(self):
        """A page of one user's archive, of one party, and an id lookup are read through indexes,
        never by scanning the table."""
        for sql, args in (("SELECT seq FROM archive WHERE host=? AND user=? ORDER BY seq DESC LIMIT 51", ("h", "u")),
                          ("SELECT seq FROM archive WHERE host=? AND user=? AND with_jid=? ORDER BY seq LIMIT 51",
                           ("h", "u", "b")),
                          ("SELECT seq FROM archive WHERE host=? AND user=? AND seq>=? AND seq<=? ORDER BY seq LIMIT 51",
                           ("h", "u", 1, 2)),
                          ("SELECT seq FROM archive WHERE id=? AND host=? AND user=?", ("x", "h", "u")),
                          ("DELETE FROM archive WHERE seq<? AND host=?", (1, "h"))):
            plan = " ".join(row[-1] for row in self.db.execute("EXPLAIN QUERY PLAN " + sql, args))
            self.assertRegex(plan, "SEARCH archive USING (COVERING )?INDEX|SEARCH archive USING INTEGER PRIMARY KEY",
                             sql)
            self.assertNotIn("TEMP B-TREE", plan, sql)


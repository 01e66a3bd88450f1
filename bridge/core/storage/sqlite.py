"""SQLite implementation of ``IStorage``: the default, one file under data_dir.

Queries are short and indexed, and WAL journaling keeps a commit cheap, so
they run on the reactor thread and return already-fired Deferreds; a
database reached over the network would use a thread pool or an async
driver behind the same interface.
"""

import json
import os
import sqlite3

from twisted.internet import defer
from zope.interface import implementer

from bridge.core.storage import IStorage

SCHEMA = """
CREATE TABLE IF NOT EXISTS keyval (
    host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (host, user, store));
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS queue_owner ON queue (host, user, store, id);
"""


@implementer(IStorage)
class SQLiteStorage:
    def __init__(self, path):
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def get(self, host, user, store):
        row = self._db.execute(
            "SELECT value FROM keyval WHERE host=? AND user=? AND store=?", (host, user, store)
        ).fetchone()
        return defer.succeed(None if row is None else json.loads(row[0]))

    def set(self, host, user, store, value):
        if value is None:
            self._db.execute("DELETE FROM keyval WHERE host=? AND user=? AND store=?", (host, user, store))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO keyval (host, user, store, value) VALUES (?, ?, ?, ?)",
                (host, user, store, json.dumps(value)),
            )
        return defer.succeed(None)

    def users(self, host, store):
        rows = self._db.execute(
            "SELECT user FROM keyval WHERE host=? AND store=? ORDER BY user", (host, store)
        ).fetchall()
        return defer.succeed([row[0] for row in rows])

    def append(self, host, user, store, value):
        cursor = self._db.execute(
            "INSERT INTO queue (host, user, store, value) VALUES (?, ?, ?, ?)",
            (host, user, store, json.dumps(value)),
        )
        return defer.succeed(cursor.lastrowid)

    def items(self, host, user, store, limit=None):
        rows = self._db.execute(
            "SELECT id, value FROM queue WHERE host=? AND user=? AND store=? ORDER BY id LIMIT ?",
            (host, user, store, -1 if limit is None else limit),
        ).fetchall()
        return defer.succeed([(row[0], json.loads(row[1])) for row in rows])

    def count(self, host, user, store):
        row = self._db.execute(
            "SELECT COUNT(*) FROM queue WHERE host=? AND user=? AND store=?", (host, user, store)
        ).fetchone()
        return defer.succeed(row[0])

    def remove(self, host, user, store, ids):
        self._db.executemany(
            "DELETE FROM queue WHERE host=? AND user=? AND store=? AND id=?",
            [(host, user, store, item) for item in ids],
        )
        return defer.succeed(None)

    def delete_user(self, host, user):
        self._db.execute("DELETE FROM keyval WHERE host=? AND user=?", (host, user))
        self._db.execute("DELETE FROM queue WHERE host=? AND user=?", (host, user))
        return defer.succeed(None)

    def close(self):
        self._db.close()

"""The SQLite database itself: the schema, and the operations that the database thread and the archive
writer carry out, in batches.

Nothing here imports Twisted: the archive writer (``archive_writer.py``), a
process of its own, imports this module and the standard library alone, and
stays small.  An operation that fails gives its exception back, and the
reactor side makes a Failure of it.  The operations written in SQL that
PostgreSQL speaks as well (the column "user" quoted: a keyword there) are
PostgreSQL's too (``postgresql_ops.py``).
"""

import json
import os
import sqlite3

from bridge.core.storage import ArchiveItemNotFound, ArchivePage, ArchiveRecord

SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS keyval (
    host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (host, user, store));
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS queue_owner ON queue (host, user, store, id);
CREATE TABLE IF NOT EXISTS queue_bytes (
    host TEXT NOT NULL, user TEXT NOT NULL, store TEXT NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (host, user, store));
INSERT INTO queue_bytes (host, user, store, bytes)
    SELECT host, user, store, SUM(LENGTH(CAST(value AS BLOB))) FROM queue
    WHERE NOT EXISTS (SELECT 1 FROM queue_bytes) GROUP BY host, user, store;
CREATE TRIGGER IF NOT EXISTS queue_bytes_added AFTER INSERT ON queue BEGIN
    INSERT INTO queue_bytes (host, user, store, bytes)
        VALUES (NEW.host, NEW.user, NEW.store, LENGTH(CAST(NEW.value AS BLOB)))
        ON CONFLICT (host, user, store) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS queue_bytes_removed AFTER DELETE ON queue BEGIN
    UPDATE queue_bytes SET bytes = bytes - LENGTH(CAST(OLD.value AS BLOB))
        WHERE host = OLD.host AND user = OLD.user AND store = OLD.store;
    DELETE FROM queue_bytes WHERE host = OLD.host AND user = OLD.user AND store = OLD.store AND bytes <= 0;
END;
CREATE TABLE IF NOT EXISTS archive (
    seq INTEGER PRIMARY KEY,
    host TEXT NOT NULL, user TEXT NOT NULL, id TEXT NOT NULL,
    with_jid TEXT NOT NULL, with_resource TEXT NOT NULL, direction TEXT NOT NULL, stanza TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS archive_owner ON archive (host, user, seq);
CREATE INDEX IF NOT EXISTS archive_with ON archive (host, user, with_jid, seq);
CREATE INDEX IF NOT EXISTS archive_id ON archive (id);
COMMIT;
"""
# An archived record's time, in microseconds, is its ``seq`` (the row id):
# the order of the archive, a page read along archive_owner (or archive_with
# for one party), a date range along the same, retention along the row ids,
# with no index of its own.  The ids a query names (XEP-0359 stanza ids,
# which begin with their time, so that this index grows at its end) are
# found through archive_id.  Each index costs every message a write: these
# three are the fewest that serve the queries.
# queue_bytes holds the bytes of each queue (``IStorage.size``), kept by the
# database in the statement that adds or removes an item, so that the two
# never disagree.  It is empty only while every queue is: a database made
# before it existed has it filled, once, when it is created.


# The pages the write-ahead log holds before the commit that passes them copies them into the database
# (SQLite's default: 1,000).  Each copy writes every page changed since the last, and syncs the files: fed
# frames like the archive bench's, the writer synced 298 times for 600,000 rows with the default, 52 with this
# (docs/performance.md).  The same on every connection: with the default on the database thread's, its
# next commit would copy what the writer's commits left in the log.
CHECKPOINT_PAGES = 10_000


def connect(path):
    """A connection to ``path`` with the schema in place, the file private to its owner."""
    if path != ":memory:":
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # The journals of statements and savepoints (every archive hand-over has one) in memory: in a temporary
    # file, each page an insert changed was written there one system call at a time, some six for every
    # archived row, which doubled the archive writer's CPU (docs/performance.md).
    db.execute("PRAGMA temp_store=MEMORY")
    db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    db.executescript(SCHEMA)
    return db


# -- the operations, each run on the database thread -------------------------------

def _get(db, host, user, store):
    row = db.execute('SELECT value FROM keyval WHERE host=? AND "user"=? AND store=?', (host, user, store)).fetchone()
    return None if row is None else json.loads(row[0])


def _set(db, host, user, store, text):
    if text is None:
        db.execute("DELETE FROM keyval WHERE host=? AND user=? AND store=?", (host, user, store))
    else:
        db.execute("INSERT OR REPLACE INTO keyval (host, user, store, value) VALUES (?, ?, ?, ?)",
                   (host, user, store, text))


def _replace(db, host, user, store, expected, text):
    """``_set`` if the document is ``expected`` (JSON text, compared as JSON; None: none); whether it was.
    One writer thread: nothing comes between the read and the write."""
    row = db.execute('SELECT value FROM keyval WHERE host=? AND "user"=? AND store=?', (host, user, store)).fetchone()
    if (None if row is None else json.loads(row[0])) != (None if expected is None else json.loads(expected)):
        return False
    _set(db, host, user, store, text)
    return True


def _users(db, host, store):
    rows = db.execute('SELECT "user" FROM keyval WHERE host=? AND store=? ORDER BY "user"', (host, store)).fetchall()
    return [row[0] for row in rows]


def _append(db, host, user, store, text):
    return db.execute("INSERT INTO queue (host, user, store, value) VALUES (?, ?, ?, ?)",
                      (host, user, store, text)).lastrowid


def _items(db, host, user, store, limit):
    rows = db.execute("SELECT id, value FROM queue WHERE host=? AND user=? AND store=? ORDER BY id LIMIT ?",
                      (host, user, store, -1 if limit is None else limit)).fetchall()
    return [(row[0], json.loads(row[1])) for row in rows]


def _count(db, host, user, store):
    return db.execute('SELECT COUNT(*) FROM queue WHERE host=? AND "user"=? AND store=?',
                      (host, user, store)).fetchone()[0]


def _size(db, host, user, store):
    row = db.execute('SELECT bytes FROM queue_bytes WHERE host=? AND "user"=? AND store=?',
                     (host, user, store)).fetchone()
    return 0 if row is None else row[0]


def _remove(db, host, user, store, ids):
    db.executemany('DELETE FROM queue WHERE host=? AND "user"=? AND store=? AND id=?',
                   [(host, user, store, item) for item in ids])


def _delete_user(db, host, user):
    db.execute('DELETE FROM keyval WHERE host=? AND "user"=?', (host, user))
    db.execute('DELETE FROM queue WHERE host=? AND "user"=?', (host, user))
    db.execute('DELETE FROM archive WHERE host=? AND "user"=?', (host, user))


# The columns of an archived record, in the order of the values its row is handed over in.
ARCHIVE_ROW = ("seq", "host", "user", "id", "with_jid", "with_resource", "direction", "stanza")
ARCHIVE_COLUMNS = len(ARCHIVE_ROW)
_ARCHIVE_PLACES = "(" + ", ".join("?" * ARCHIVE_COLUMNS) + ")"
# Rows in one INSERT statement: well under SQLite's limit of parameters.
ARCHIVE_ROWS_PER_STATEMENT = 100


def archive_row(values, last, host, user, record):
    """Add the row values of ``record`` to ``values``, at a time later than ``last`` (see
    ``IStorage.archive_append``); its time."""
    record_id, seq, with_jid, with_resource, direction, stanza = record  # two for every message: kept cheap
    if seq <= last:
        seq = last + 1
    values += (seq, host, user, record_id, with_jid, with_resource, direction, stanza)
    return seq


def _archive_insert(db, values):
    """The row values of a hand-over's records (``SQLiteStorage.archive_append``), in one statement per
    ``ARCHIVE_ROWS_PER_STATEMENT``: all of them or none.  A row already stored (the same ``seq``: a
    frame the archive writer committed, then was sent again) is stored once."""
    db.execute("SAVEPOINT archive_insert")
    step = ARCHIVE_ROWS_PER_STATEMENT * ARCHIVE_COLUMNS
    try:
        for start in range(0, len(values), step):
            chunk = values[start:start + step]
            db.execute(f"INSERT OR IGNORE INTO archive ({', '.join(ARCHIVE_ROW)}) VALUES "
                       + ",".join([_ARCHIVE_PLACES] * (len(chunk) // ARCHIVE_COLUMNS)), chunk)
    except Exception:
        db.execute("ROLLBACK TO archive_insert")
        raise
    finally:
        db.execute("RELEASE archive_insert")


def _archive_seq(db, host, user, record_id):
    row = db.execute('SELECT seq FROM archive WHERE id=? AND host=? AND "user"=?', (record_id, host, user)).fetchone()
    if row is None:
        raise ArchiveItemNotFound(record_id)
    return row[0]


def _archive_query(db, host, user, query):
    """The filters as SQL, then the page read along the sequence, one record past it to tell if it is complete."""
    where, args = ["host=?", '"user"=?'], [host, user]
    for column, operator, value in (("with_jid", "=", query.with_jid), ("with_resource", "=", query.with_resource),
                                    ("seq", ">=", query.start), ("seq", "<=", query.end)):
        if value is not None:
            where.append(f"{column}{operator}?")
            args.append(value)
    for operator, record_id in ((">", query.after_id), ("<", query.before_id)):
        if record_id is not None:
            where.append(f"seq{operator}?")
            args.append(_archive_seq(db, host, user, record_id))
    if query.ids is not None:
        seqs = [_archive_seq(db, host, user, record_id) for record_id in query.ids]
        where.append(f"seq IN ({','.join('?' * len(seqs))})")
        args.extend(seqs)
    base = " AND ".join(where)
    count = db.execute(f"SELECT COUNT(*) FROM archive WHERE {base}", args).fetchone()[0]
    page, page_args = base, list(args)
    if query.page_after is not None:
        page += " AND seq>?"
        page_args.append(_archive_seq(db, host, user, query.page_after))
    elif query.page_before is not None:
        page += " AND seq<?"
        page_args.append(_archive_seq(db, host, user, query.page_before))
    order = "DESC" if query.backwards else "ASC"
    rows = db.execute(f"SELECT id, seq, with_jid, with_resource, direction, stanza FROM archive "
                      f"WHERE {page} ORDER BY seq {order} LIMIT ?", page_args + [query.limit + 1]).fetchall()
    complete = len(rows) <= query.limit
    rows = rows[:query.limit]
    if query.backwards:
        rows.reverse()
    return ArchivePage([ArchiveRecord(*row) for row in rows], count, complete)


def _archive_replace(db, host, user, record_id, stanza):
    changed = db.execute('UPDATE archive SET stanza=? WHERE id=? AND host=? AND "user"=?',
                         (stanza, record_id, host, user)).rowcount
    if not changed:
        raise ArchiveItemNotFound(record_id)


def _archive_remove(db, host, user, before=None):
    if before is None:
        return db.execute('DELETE FROM archive WHERE host=? AND "user"=?', (host, user)).rowcount
    return db.execute('DELETE FROM archive WHERE host=? AND "user"=? AND seq<?', (host, user, before)).rowcount


def _archive_expire(db, host, before):
    return db.execute("DELETE FROM archive WHERE seq<? AND host=?", (before, host)).rowcount


_READS = frozenset((_get, _users, _items, _count, _size, _archive_query))


def run_batch(db, batch):
    """Carry out ``batch`` [(operation, args)] in one transaction: [(succeeded, result or exception)].

    An operation that fails fails alone (SQLite undoes just its statement);
    a transaction that cannot begin or commit fails them all.  A batch of
    reads alone (a login's credentials) takes no write lock and commits
    nothing.
    """
    if all(operation in _READS for operation, _ in batch):
        return _run_each(db, batch)
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as error:
        # The write lock stayed with another process (bridgectl) past the busy timeout.
        return [(False, error)] * len(batch)
    outcomes = _run_each(db, batch)
    try:
        db.execute("COMMIT")
    except Exception as error:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        return [(False, error)] * len(batch)
    return outcomes


def _run_each(db, batch):
    outcomes = []
    for operation, args in batch:
        try:
            outcomes.append((True, operation(db, *args)))
        except Exception as error:
            outcomes.append((False, error))
    return outcomes

"""The PostgreSQL storage's queue (core/storage/postgresql.py) without a database server: the calls go
in order and in batches, a database loss keeps the writes and refuses the reads, the writes' bytes are
bounded, and a batch lost while it committed is not written twice.  Its configuration, and the login
that meets a database away.  tests/integration/test_postgresql.py runs the same on a real server."""

import os
import stat
import tempfile

from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core import sasl
from bridge.core.accounts import Accounts
from bridge.core.storage import ArchiveQuery, ArchiveRecord, StorageUnavailable, sqlite_ops
from bridge.core.storage.postgresql import PostgreSQLStorage
from bridge.core.storage.postgresql_ops import READS, DatabaseUnavailable
from tests.unit.helpers import result_of


class Reactor(task.Clock):
    """A clock whose threads' answers arrive at once."""

    def callFromThread(self, function, *args, **kwargs):
        function(*args, **kwargs)


class Threads:
    """A thread pool that runs its work at once, on the test's thread."""

    def start(self):
        pass

    def stop(self):
        pass

    def callInThreadWithCallback(self, on_result, function, *args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


class FakeDatabase:
    """``postgresql_ops.Database`` on SQLite in memory (the same operations by name), with switches: ``down``
    (every batch fails: the database is away), ``lose_commit`` (the next batch commits, then the
    connection is lost before the answer); ``batches`` records the names of every batch run."""

    def __init__(self):
        self.db = sqlite_ops.connect(":memory:")
        self.down = False
        self.lose_commit = False
        self.batches = []
        self.commits = {}  # writer -> (serial, outcomes of the writes)

    def open(self):
        pass

    def close(self):
        self.db.close()

    def run(self, batch, writer, serial):
        if self.down:
            raise DatabaseUnavailable("connection refused")
        self.batches.append([name for name, _ in batch])
        outcomes = sqlite_ops.run_batch(self.db, [(getattr(sqlite_ops, name), args) for name, args in batch])
        if serial is not None:
            self.commits[writer] = (serial, [outcome for (name, _), outcome in zip(batch, outcomes) if name not in READS])
        if self.lose_commit:
            self.lose_commit = False
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        return outcomes

    def committed(self, writer, serial):
        if self.down:
            raise DatabaseUnavailable("connection refused")
        recorded = self.commits.get(writer)
        return recorded[1] if recorded and recorded[0] == serial else None


class QueueTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = Reactor()
        self.database = FakeDatabase()
        self.storage = PostgreSQLStorage(self.database, self.reactor, 64 * 1024, 1.0, pool=Threads())

    def offline(self):
        return [value for _, value in result_of(self.storage.items("h", "u", "offline"))]

    def test_calls_in_order_reads_see_writes(self):
        """Every call is carried out in order: a read sees the writes made before it."""
        self.storage.set("h", "u", "doc", {"n": 1})
        self.storage.append("h", "u", "offline", "one")
        self.assertEqual(result_of(self.storage.get("h", "u", "doc")), {"n": 1})
        self.assertEqual(self.offline(), ["one"])

    def test_a_database_loss_keeps_the_calls_and_refuses_logins(self):
        """While the database is away, calls wait in order and the storage says it is not available, so
        that logins are refused (Accounts.credentials fails with StorageUnavailable); when it is back every
        call is carried out, once, in order."""
        self.database.down = True
        first = self.storage.append("h", "u", "offline", "one")
        self.assertNoResult(first)
        self.assertFalse(self.storage.available)
        self.failureResultOf(Accounts(self.storage, lambda host: ()).credentials("h", "u"), StorageUnavailable)
        count = self.storage.count("h", "u", "offline")
        second = self.storage.append("h", "u", "offline", "two")
        self.reactor.advance(1.0)
        self.assertNoResult(second)
        self.database.down = False
        self.reactor.advance(1.0)
        self.assertTrue(self.storage.available)
        self.assertEqual(result_of(count), 1)
        self.assertLess(result_of(first), result_of(second))
        self.assertEqual(self.offline(), ["one", "two"])
        self.assertIsNone(result_of(Accounts(self.storage, lambda host: ()).credentials("h", "u")))

    def test_calls_waiting_are_bounded_in_bytes(self):
        """Calls that would take the waiting ones past max_queued_bytes fail with StorageUnavailable; those
        accepted are all carried out when the database is back."""
        self.database.down = True
        accepted = []
        refused = None
        while refused is None:
            d = self.storage.append("h", "u", "offline", "x" * 4000)
            if d.called:
                refused = self.failureResultOf(d, StorageUnavailable)
            else:
                accepted.append(d)
        self.assertTrue(10 < len(accepted) < 17, len(accepted))
        self.database.down = False
        self.reactor.advance(1.0)
        self.assertEqual(len(self.offline()), len(accepted))
        self.assertEqual(self.storage._queued_bytes, 0)
        self.flushLoggedErrors()

    def test_a_batch_lost_while_it_committed_is_not_written_twice(self):
        """When the connection is lost after the commit, the storage asks whether the batch was
        committed and answers its writes from the record (its reads, not known, fail with
        StorageUnavailable) rather than write them again."""
        self.database.down = True  # the two calls wait, then go in one batch
        appended = self.storage.append("h", "u", "offline", "once")
        read = self.storage.count("h", "u", "offline")
        self.database.down = False
        self.database.lose_commit = True
        self.reactor.advance(1.0)
        self.assertNoResult(appended)
        self.reactor.advance(1.0)
        self.assertIsInstance(result_of(appended), int)
        self.failureResultOf(read, StorageUnavailable)
        self.assertEqual(self.offline(), ["once"])
        self.assertEqual(self.database.batches, [["_append", "_count"], ["_items"]])

    def test_archive_appends_wait_with_the_writes(self):
        """Archived records handed over while the database is away are stored once it is back."""
        self.database.down = True
        self.storage.archive_append("h", "u", ArchiveRecord("id1", 1, "b@h", "", "in", "<m/>"))
        self.reactor.advance(0.5)
        self.database.down = False
        self.reactor.advance(1.0)
        page = result_of(self.storage.archive_query("h", "u", ArchiveQuery()))
        self.assertEqual([record.id for record in page.records], ["id1"])

    def test_close_waits_for_the_writes(self):
        """close fires once every write made before it is carried out."""
        self.database.down = True
        self.storage.set("h", "u", "doc", 1)
        closed = self.storage.close()
        self.reactor.advance(1.0)
        self.assertNoResult(closed)
        self.database.down = False
        self.database.close = lambda: None
        self.reactor.advance(1.0)
        self.assertIsNone(result_of(closed))
        self.assertEqual(self.database.db.execute("SELECT value FROM keyval").fetchone(), ("1",))

    def test_bridgectl_waits_for_no_database(self):
        """Without a retry interval (bridgectl), a call fails at once when the database is away."""
        storage = PostgreSQLStorage(self.database, self.reactor, 64 * 1024, None, pool=Threads())
        self.database.down = True
        self.failureResultOf(storage.set("h", "u", "doc", 1), StorageUnavailable)
        self.database.down = False
        self.assertIsNone(result_of(storage.set("h", "u", "doc", 2)))


class LoginTests(SynchronousTestCase):
    def test_a_database_away_is_a_temporary_failure(self):
        """A login whose credentials cannot be read (StorageUnavailable) fails with temporary-auth-failure."""
        for exchange in (sasl.PlainExchange(lambda name, password: defer.fail(StorageUnavailable("away"))),
                         sasl.ScramExchange("SCRAM-SHA-1", lambda name: defer.fail(StorageUnavailable("away")),
                                            decoy=lambda name: {})):
            message = b"\0juliet\0pw" if isinstance(exchange, sasl.PlainExchange) else b"n,,n=juliet,r=abc"
            failure = self.failureResultOf(exchange.receive(message), sasl.SASLFailure)
            self.assertEqual(failure.value.condition, "temporary-auth-failure")


class ConfigTests(SynchronousTestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp()

    def file(self, name, text, mode=0o600):
        path = os.path.join(self.folder, name)
        with open(path, "w") as handle:
            handle.write(text + "\n")
        os.chmod(path, mode)
        return path

    def load(self, storage):
        return configuration.load(self.file("bridge.toml", "[storage]\nbackend = 'postgresql'\n" + storage))

    def problems(self, storage):
        return self.assertRaises(configuration.ConfigError, self.load, storage).problems

    def test_connection_strings_and_their_secrets(self):
        """The connection string comes inline without a password, plus a 0600 password file, or from a
        0600 file; each mistake is a problem naming the key (and file)."""
        self.file("password", "s3cret")
        config = self.load("postgresql_dsn = 'host=a,b port=5432 dbname=bridge target_session_attrs=read-write'\n"
                           "postgresql_password_file = 'password'\n")
        conninfo = config.storage.postgresql_conninfo()
        self.assertIn("password=s3cret", conninfo)
        self.assertIn("host=a,b", conninfo)
        self.file("dsn", "host=db password=inside dbname=bridge")
        self.assertIn("password=inside", self.load("postgresql_dsn_file = 'dsn'\n").storage.postgresql_conninfo())
        cases = {
            "": "storage: backend postgresql needs one of postgresql_dsn and postgresql_dsn_file",
            "postgresql_dsn = 'host=db password=x'\n": "storage.postgresql_dsn: must not hold a password",
            "postgresql_dsn = 'host=db bogus=1'\n": "storage.postgresql_dsn: not a PostgreSQL connection string",
            "postgresql_dsn_file = 'missing'\n": f"storage.postgresql_dsn_file: {self.folder}/missing: No such file",
            "postgresql_retry_interval_seconds = 0\n": "storage.postgresql_retry_interval_seconds: must be at least",
        }
        for text, expected in cases.items():
            problems = self.problems(text)
            self.assertTrue(any(expected in problem for problem in problems), (expected, problems))
        loose = self.file("loose", "s3cret", 0o644)
        problems = self.problems("postgresql_dsn = 'host=db'\npostgresql_password_file = 'loose'\n")
        self.assertIn(f"storage.postgresql_password_file: {loose}: readable by others (mode 644); a secret's file is 0600",
                      problems[0])
        self.assertEqual(stat.S_IMODE(os.stat(loose).st_mode), 0o644)


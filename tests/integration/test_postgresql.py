"""PostgreSQL storage on a real PostgreSQL server of the tests' own (tests/integration/postgresql.py):
the archive contract of the other backends, the queue totals, the migrations, the copy of a SQLite
database, a database restarted and a standby promoted under the storage, and a bridge server whose
offline messages survive a database restart."""

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from bridge import ctl
from bridge.core.accounts import Accounts
from bridge.core.storage import StorageUnavailable, json_text, sqlite_ops, stored_bytes
from tests.integration.harness import (SIP_OFF, Clients, RawClient, ServerProcess, add_users, barrier, next_item,
                                       server_env, write_config)
from tests.integration.postgresql import PostgreSQLServer, skip_reason
from tests.unit.test_storage import VALUES, ArchiveContract, record

SKIP = skip_reason()
if SKIP is None:
    import psycopg

    from bridge.core.storage import postgresql_ops
    from bridge.core.storage.postgresql import PostgreSQLStorage
    from bridge.core.storage.postgresql_ops import Database


class ServerPerClass:
    """A PostgreSQL server for the class's tests, migrated; each test starts from empty tables."""

    @classmethod
    def setUpClass(cls):
        if SKIP:
            raise SkipTest(SKIP)
        cls.server = PostgreSQLServer().init().start().create_database()
        with psycopg.connect(cls.server.dsn, autocommit=True) as conn:
            postgresql_ops.migrate(conn)

    @classmethod
    def tearDownClass(cls):
        cls.server.remove()

    def empty(self):
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE keyval, queue, queue_bytes, archive, batch_commits")


class PostgreSQLArchiveTests(ServerPerClass, ArchiveContract, SynchronousTestCase):
    """The archive contract of memory and SQLite (tests/unit/test_storage.py), on PostgreSQL: the
    operations run on the test's thread as the storage's pool thread runs them, in batches."""

    as_stored = staticmethod(json_text)

    def setUp(self):
        self.empty()
        self.database = Database(self.server.dsn, 5)
        self.database.open()
        self.addCleanup(self.database.close)
        self.last = 0
        self.serial = 0

    def run_batch(self, batch):
        self.serial += 1
        return self.database.run(batch, "test", self.serial)

    def call(self, name, *args):
        [(succeeded, result)] = self.run_batch([("_" + name, args)])
        if not succeeded:
            raise result
        return result

    def append(self, host, user, item):
        values = []
        self.last = sqlite_ops.archive_row(values, self.last, host, user, item)
        self.call("archive_insert", values)

    def test_a_time_another_node_took_is_kept_after_it(self):
        """A record whose time another writer (a node) already gave a record of the same archive is
        stored after that archive's latest, not dropped."""
        self.fill([record(1)])
        values = []
        sqlite_ops.archive_row(values, 0, "h", "u", record(1)._replace(id="other"))
        self.call("archive_insert", values)
        self.assertEqual([(item.id, item.timestamp) for item in self.page().records], [("id1", 1000), ("other", 1001)])

    def test_queue_totals_and_one_failure_alone(self):
        """size() follows appends and removals, as on SQLite; a call that fails in a batch fails alone and
        the others' writes stand."""
        ids = [outcome[1] for outcome in self.run_batch([("_append", ("h", "u", "offline", json.dumps(value)))
                                                          for value in VALUES])]
        self.assertEqual(self.call("size", "h", "u", "offline"), sum(map(stored_bytes, VALUES)))
        outcomes = self.run_batch([("_remove", ("h", "u", "offline", ids[1:2])),
                                   ("_archive_replace", ("h", "u", "nope", "<x/>")),
                                   ("_set", ("h", "u", "doc", '{"a": 1}'))])
        self.assertEqual([succeeded for succeeded, _ in outcomes], [True, False, True])
        self.assertEqual(self.call("size", "h", "u", "offline"), stored_bytes(VALUES[0]) + stored_bytes(VALUES[2]))
        self.assertEqual(self.call("get", "h", "u", "doc"), {"a": 1})
        self.assertEqual(self.call("users", "h", "doc"), ["u"])
        self.assertEqual([value for _, value in self.call("items", "h", "u", "offline", None)], [VALUES[0], VALUES[2]])
        self.call("delete_user", "h", "u")
        self.assertEqual(self.call("size", "h", "u", "offline"), 0)

    def test_a_committed_batch_is_recorded(self):
        """A batch of writes records its serial and the outcomes of its writes in its transaction, so that
        one whose answer was lost is known to be committed; a batch of reads records nothing."""
        [(_, item)] = self.run_batch([("_append", ("h", "u", "q", '"x"'))])
        self.assertEqual(self.database.committed("test", self.serial), [(True, item)])
        self.run_batch([("_count", ("h", "u", "q"))])
        self.assertIsNone(self.database.committed("test", self.serial))
        self.assertIsNone(self.database.committed("another", 1))


class MigrationTests(ServerPerClass, SynchronousTestCase):
    def test_migrate_once_and_refuse_an_old_schema(self):
        """migrate brings an empty database to the current version once; a second run does nothing; a
        database without the schema is refused at start with a message naming bridgectl migrate."""
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            self.assertEqual(postgresql_ops.migrate(conn), (postgresql_ops.SCHEMA_VERSION,) * 2)
            conn.execute("CREATE DATABASE blank")
        blank = self.server.dsn.replace("dbname=bridge", "dbname=blank")
        error = self.assertRaises(postgresql_ops.SchemaError, Database(blank, 5).check_schema_at_start)
        self.assertIn("run 'bridgectl migrate'", str(error))
        with psycopg.connect(blank, autocommit=True) as conn:
            self.assertEqual(postgresql_ops.migrate(conn), (0, postgresql_ops.SCHEMA_VERSION))
            self.assertEqual(postgresql_ops.schema_version(conn), postgresql_ops.SCHEMA_VERSION)
        self.assertIsNone(Database(blank, 5).check_schema_at_start())


class CopyTests(ServerPerClass, SynchronousTestCase):
    def setUp(self):
        self.empty()
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.config = os.path.join(self.folder, "bridge.toml")
        with open(self.config, "w") as handle:
            handle.write(f"data_dir = 'data'\n[storage]\nbackend = 'postgresql'\npostgresql_dsn = '{self.server.dsn}'\n")

    def test_bridgectl_copies_a_sqlite_database(self):
        """bridgectl copy-sqlite-to-postgresql copies documents, queues (ids kept, totals made) and
        archives; a later append gets a new id; a second copy into the filled database is refused."""
        source = sqlite_ops.connect(os.path.join(self.folder, "data", "bridge.sqlite"))
        sqlite_ops.run_batch(source, [(sqlite_ops._set, ("h", "u", "accounts", '{"k": 1}')),
                                      (sqlite_ops._append, ("h", "u", "offline", '"one"')),
                                      (sqlite_ops._append, ("h", "u", "offline", '"two"')),
                                      (sqlite_ops._archive_insert, ((5, "h", "u", "id5", "b@h", "", "in", "<m/>"),))])
        source.close()
        out = io.StringIO()
        self.assertEqual(ctl.main(["--config", self.config, "copy-sqlite-to-postgresql"], out=out), 0)
        self.assertIn("1 keyval rows, 2 queue rows, 1 archive rows", out.getvalue())
        database = Database(self.server.dsn, 5)
        database.open()
        self.addCleanup(database.close)
        outcomes = database.run([("_get", ("h", "u", "accounts")), ("_items", ("h", "u", "offline", None)),
                                 ("_size", ("h", "u", "offline")), ("_append", ("h", "u", "offline", '"three"'))],
                                "test", 1)
        self.assertEqual([result for _, result in outcomes], [{"k": 1}, [(1, "one"), (2, "two")], 10, 3])
        self.assertEqual(ctl.main(["--config", self.config, "copy-sqlite-to-postgresql"], out=io.StringIO()), 1)


class OutageTests(TestCase):
    """The storage on the real reactor while its database stops, starts again, or fails over."""

    def setUp(self):
        if SKIP:
            raise SkipTest(SKIP)

    def start_server(self, server):
        self.addCleanup(server.remove)  # after the storage closes (cleanups run last first)
        return server.init().start().create_database()

    def storage(self, dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            postgresql_ops.migrate(conn)
        storage = PostgreSQLStorage(Database(dsn, 2), reactor, 1024 * 1024, 0.1)
        self.addCleanup(storage.close)
        return storage

    @defer.inlineCallbacks
    def test_writes_survive_a_restart(self):
        """Writes made while the database is stopped wait and are all stored, in order, once it is back;
        logins meanwhile fail with StorageUnavailable."""
        server = self.start_server(PostgreSQLServer())
        storage = self.storage(server.dsn)
        yield storage.append("h", "u", "offline", 0)
        yield threads.deferToThread(server.stop)
        written = [storage.append("h", "u", "offline", n) for n in range(1, 30)]
        while storage.available:
            yield task.deferLater(reactor, 0.1, lambda: None)
        yield self.assertFailure(Accounts(storage, lambda host: ()).credentials("h", "u"), StorageUnavailable)
        yield threads.deferToThread(server.start)
        yield defer.gatherResults(written)
        items = yield storage.items("h", "u", "offline")
        self.assertEqual([value for _, value in items], list(range(30)))
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_a_standby_named_second_takes_over(self):
        """With 'host=a,b target_session_attrs=read-write', the storage writes to the primary; when it stops
        and the standby is promoted, the waiting writes go to the standby, beside those replicated."""
        primary = self.start_server(PostgreSQLServer())
        standby = PostgreSQLServer()
        self.addCleanup(standby.remove)
        with psycopg.connect(primary.dsn, autocommit=True) as conn:
            postgresql_ops.migrate(conn)
        standby.base_backup_of(primary).start()
        dsn = (f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} user=bridge dbname=bridge "
               "target_session_attrs=read-write")
        storage = self.storage(dsn)
        yield storage.append("h", "u", "offline", "before")
        yield threads.deferToThread(primary.stop)
        after = storage.append("h", "u", "offline", "after")
        while storage.available:
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertNoResult(after)
        yield threads.deferToThread(standby.promote)
        yield after
        items = yield storage.items("h", "u", "offline")
        self.assertEqual([value for _, value in items], ["before", "after"])
        with psycopg.connect(standby.dsn) as conn:
            self.assertEqual(conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0], 2)
        self.flushLoggedErrors()


# -- a bridge server on PostgreSQL ------------------------------------------------------

@pytest.fixture
def database():
    if SKIP:
        pytest.skip(SKIP)
    server = PostgreSQLServer().init().start().create_database()
    yield server
    server.remove()


def bridgectl(config_path, *args):
    done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, *args], env=server_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"bridgectl {' '.join(args)} failed: {done.stdout}{done.stderr}"
    return done.stdout


def test_offline_messages_survive_a_database_restart(database, tmp_path):
    """A bridge on PostgreSQL: a slixmpp client sends messages to an offline user while the database is
    stopped and started again; a login meanwhile is answered temporary-auth-failure; the offline user
    then receives every message sent, in order, once."""
    tables = (f"[storage]\nbackend = 'postgresql'\npostgresql_dsn = '{database.dsn}'\n"
              "postgresql_retry_interval_seconds = 0.2\npostgresql_connect_timeout_seconds = 2\n")
    config_path = write_config(str(tmp_path), sip=SIP_OFF, tables=tables)
    assert "schema version 0 -> 1" in bridgectl(config_path, "migrate")
    accounts = {"romeo@localhost": "romeo-secret", "juliet@localhost": "juliet-secret"}
    add_users(config_path, accounts)
    server = ServerProcess(config_path, accounts).start()
    try:
        asyncio.run(_restart_scenario(server, database))
    finally:
        server.stop()


async def _restart_scenario(server, database):
    count = 60
    async with Clients(server) as clients:
        romeo = await clients.login("romeo@localhost/pc")
        for n in range(count // 3):
            romeo.send_message(mto="juliet@localhost", mbody=f"m{n}", mtype="chat")
        await barrier(romeo)
        await asyncio.to_thread(database.stop)
        for n in range(count // 3, 2 * count // 3):
            romeo.send_message(mto="juliet@localhost", mbody=f"m{n}", mtype="chat")
        await barrier(romeo)
        await asyncio.to_thread(server.wait_for_line, lambda line: "the database cannot be reached" in line, 30,
                                "the storage noticing the database is away")
        refused = await _login_failure(server, "juliet", "juliet-secret")
        assert refused == "temporary-auth-failure", refused
        await asyncio.to_thread(database.start)
        await asyncio.to_thread(server.wait_for_line, lambda line: "the database answers again" in line, 30,
                                "the storage noticing the database is back")
        for n in range(2 * count // 3, count):
            romeo.send_message(mto="juliet@localhost", mbody=f"m{n}", mtype="chat")
        await barrier(romeo)
        await asyncio.to_thread(_stored, database, count)
        assert romeo.message_errors.empty(), romeo.message_errors.get_nowait()
        juliet = await clients.login("juliet@localhost/phone")
        received = [await next_item(juliet.messages, what=f"offline message {n}") for n in range(count)]
        assert [message["body"] for message in received] == [f"m{n}" for n in range(count)]


def _stored(database, count, timeout=30):
    """Wait until ``count`` offline messages are in the database: the server stores them after it has
    answered the sender's ping, and a message stored after the recipient's login waits for the next one."""
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while conn.execute("SELECT COUNT(*) FROM queue WHERE store = 'offline'").fetchone()[0] < count:
            assert time.monotonic() < deadline, f"fewer than {count} offline messages stored after {timeout}s"
            conn.execute("SELECT pg_sleep(0.05)")


async def _login_failure(server, user, password):
    """The SASL failure condition a PLAIN login gets now (None when it succeeds)."""

    def attempt():
        client = RawClient(server.port)
        try:
            client.secure()
            answer = client.authenticate_plain(user, password)
            return None if answer.tag.endswith("success") else answer[0].tag.split("}")[1]
        finally:
            client.close()

    return await asyncio.to_thread(attempt)

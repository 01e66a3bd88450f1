"""Persistent storage behind one small asynchronous interface.

Three shapes cover every feature, as in Prosody: a *key-value* store holds
one JSON document per (host, user, store) (accounts, rosters, vCards,
private XML, block lists); a *queue* holds an ordered list of JSON documents
per (host, user, store) (offline messages, outbound SMS); an *archive* holds
one user's messages (XEP-0313), each an ``ArchiveRecord``, in the order they
were appended, queried by the other party, time and id in pages (XEP-0059).
Every call but ``archive_append`` returns a Deferred that fires later than
the call, once the database has answered, so no caller may rely on an answer
within the same call; calls are carried out in the order they were made.
A write's Deferred fires once it is committed, and the writes of one reactor
turn are committed together (group commit): an acknowledgement sent from
its callback (a SIP 202, an XEP-0198 <a/>) is sent once the message is
durable.  SQLite (``sqlite.py``, the default) works on a
thread of its own; ``memory.py`` keeps everything in the process;
``postgresql.py`` works a PostgreSQL server that several nodes may share.
"""

import dataclasses
import json
import typing

from twisted.logger import Logger
from zope.interface import Attribute, Interface


def json_text(value):
    """A document as the SQL backends store it; None stays None (no document)."""
    return None if value is None else json.dumps(value)


def stored_bytes(value):
    """The bytes ``value`` takes in storage: its JSON text (``json.dumps`` defaults) in UTF-8."""
    return len(json.dumps(value).encode("utf-8"))


class ArchiveRecord(typing.NamedTuple):
    """One archived message of one user (a named tuple, cheap to make: one is made for each message
    archived by each of its parties).

    ``id``: its stanza id (XEP-0359), unique and chosen by the caller;
    ``timestamp``: microseconds since the epoch (UTC); ``with_jid``: the other
    party's bare JID, ``with_resource`` its resource ("" when none);
    ``direction``: "in" (delivered to the user) or "out" (sent by the user);
    ``stanza``: the message, serialised.
    """

    id: str
    timestamp: int
    with_jid: str
    with_resource: str
    direction: str
    stanza: str


@dataclasses.dataclass(frozen=True)
class ArchiveQuery:
    """What to read of an archive: filters, then a page of at most ``limit`` records.

    Filters (all optional, combined): ``with_jid`` (a bare JID) and
    ``with_resource``; ``start`` and ``end`` (microseconds, inclusive);
    ``after_id`` and ``before_id`` (records after / before the one with that
    id, exclusive); ``ids`` (only these).  The page: the first ``limit``
    matching records, or the first after the record ``page_after``, or the
    last before the record ``page_before``, or the last (``last_page``).
    """

    with_jid: str = None
    with_resource: str = None
    start: int = None
    end: int = None
    after_id: str = None
    before_id: str = None
    ids: tuple = None
    page_after: str = None
    page_before: str = None
    last_page: bool = False
    limit: int = 50

    @property
    def backwards(self):
        """Whether the page is counted from the end (RSM <before/>)."""
        return self.last_page or self.page_before is not None


@dataclasses.dataclass(frozen=True)
class ArchivePage:
    """An answer to an ``ArchiveQuery``: ``records`` oldest first; ``count`` the records
    matching the filters; ``complete``: no matching record lies beyond the page in
    the direction it was read."""

    records: list
    count: int
    complete: bool


class ArchiveItemNotFound(KeyError):
    """An id named by a query (after_id, before_id, ids, page_after, page_before) is not in the archive."""


class StorageUnavailable(Exception):
    """The database cannot carry out the call now (it is away, or too many writes wait for it); a
    later call may succeed.  A login then answers temporary-auth-failure."""


class IStorage(Interface):
    available = Attribute("Whether the database answers now; while it does not, calls wait (a server "
                          "database: postgresql.py) and a login is refused with temporary-auth-failure.")

    def get(host, user, store):
        """Deferred: the document stored under (host, user, store), or None."""

    def set(host, user, store, value):
        """Deferred: store ``value`` (JSON-serialisable); None deletes."""

    def replace(host, user, store, expected, value):
        """Deferred: True once ``value`` is stored (None deletes) if the document was ``expected`` (equal as
        JSON; None: there was none), else False, nothing written (a compare-and-set: a cluster's nodes
        change one document, core/storage/cache.py)."""

    def users(host, store):
        """Deferred: the sorted user names that have a document in ``store``."""

    def append(host, user, store, value):
        """Deferred: add ``value`` at the end of a queue; fires with its id."""

    def items(host, user, store, limit=None):
        """Deferred: [(id, value)] of a queue, oldest first."""

    def count(host, user, store):
        """Deferred: the number of items in a queue."""

    def size(host, user, store):
        """Deferred: the bytes the items of a queue take, the sum of their ``stored_bytes``.

        The total is kept as items are appended and removed, so that asking
        reads none of them.
        """

    def remove(host, user, store, ids):
        """Deferred: delete the queue items with these ids."""

    def archive_append(host, user, record):
        """Add an ``ArchiveRecord`` at the end of the user's archive; no answer.

        Two are appended for every message between local users, so an append
        costs no Deferred: a backend may gather appends for a moment and
        write them together (SQLite: ``ARCHIVE_HANDOVER_SECONDS``), always
        before any call made after them, and logs a failure (the message was
        delivered all the same).  Its time orders the archive: a record
        whose time is not later than that of every record stored before it
        (two in one microsecond, the two ends of a local message, a clock set
        back) is kept one microsecond after the latest.
        """

    def archive_query(host, user, query):
        """Deferred: the ``ArchivePage`` that an ``ArchiveQuery`` selects.

        Fails with ``ArchiveItemNotFound`` when the query names an id not in
        this user's archive.  Exporting an archive is paging through it.
        """

    def archive_replace(host, user, record_id, stanza):
        """Deferred: the record ``record_id`` of a user's archive keeps its place but holds ``stanza``
        (serialised) from now on (a moderated message's tombstone); fails with ``ArchiveItemNotFound``
        when that archive has no such record."""

    def archive_remove(host, user, before=None):
        """Deferred: delete a user's archive, or its records older than ``before``
        (microseconds); fires with the number deleted."""

    def archive_expire(host, before):
        """Deferred: delete the records of every user of ``host`` older than ``before``
        (microseconds, the retention); fires with the number deleted."""

    def delete_user(host, user):
        """Deferred: delete every document, queue item and archived message of one user."""

    def close():
        """Deferred: release the database once every call made before has been carried out."""


def open_storage(config, reactor):
    """The storage named by ``config.storage``."""
    from twisted.internet.interfaces import IReactorProcess

    if config.storage.backend == "memory":
        from bridge.core.storage.memory import MemoryStorage

        return MemoryStorage()
    # A reactor that runs processes is a server's; bridgectl's is not.
    server = IReactorProcess.providedBy(reactor)
    if config.storage.backend == "postgresql":
        from bridge.core.storage.postgresql import PostgreSQLStorage
        from bridge.core.storage.postgresql_ops import Database

        section = config.storage
        database = Database(section.postgresql_conninfo(), section.postgresql_connect_timeout_seconds)
        unchecked = database.check_schema_at_start() if server else None
        if unchecked:
            Logger().warn("the database's schema is not checked: {reason}", reason=unchecked)
        # bridgectl waits for no database: a call fails at once when it is away.
        return PostgreSQLStorage(database, reactor, section.postgresql_max_queued_bytes,
                                 section.postgresql_retry_interval_seconds if server else None)

    from bridge.core.storage.archive_writer import ArchiveWriter
    from bridge.core.storage.sqlite import SQLiteStorage

    path = config.data_path(config.storage.path)
    writer = ArchiveWriter(reactor, path) if server else None
    return SQLiteStorage(path, reactor, writer)

"""Persistent storage behind one small asynchronous interface.

Two shapes cover every feature, as in Prosody: a *key-value* store holds one
JSON document per (host, user, store) (accounts, rosters, vCards, private
XML, block lists), and a *queue* holds an ordered list of JSON documents per
(host, user, store) (offline messages, outbound SMS).  Every call returns a
Deferred that fires later than the call, once the database has answered, so
no caller may rely on an answer within the same call; calls are carried out
in the order they were made.  SQLite (``sqlite.py``, the default) works on a
thread of its own; ``memory.py`` keeps everything in the process; a server
database reached over the network implements the same interface.
"""

import json

from zope.interface import Interface


def stored_bytes(value):
    """The bytes ``value`` takes in storage: its JSON text (``json.dumps`` defaults) in UTF-8."""
    return len(json.dumps(value).encode("utf-8"))


class IStorage(Interface):
    def get(host, user, store):
        """Deferred: the document stored under (host, user, store), or None."""

    def set(host, user, store, value):
        """Deferred: store ``value`` (JSON-serialisable); None deletes."""

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

    def delete_user(host, user):
        """Deferred: delete every document and queue item of one user."""

    def close():
        """Deferred: release the database once every call made before has been carried out."""


def open_storage(config, reactor):
    """The storage named by ``config.storage``."""
    if config.storage.backend == "memory":
        from bridge.core.storage.memory import MemoryStorage

        return MemoryStorage()
    from bridge.core.storage.sqlite import SQLiteStorage

    return SQLiteStorage(config.data_path(config.storage.path), reactor)

"""Persistent storage behind one small interface.

Two shapes cover every feature, as in Prosody: a *key-value* store holds one
JSON document per (host, user, store) (accounts, rosters, vCards, private
XML, block lists), and a *queue* holds an ordered list of JSON documents per
(host, user, store) (offline messages, outbound SMS).  Every call returns a
Deferred, so a server database with an asynchronous driver can implement
``Storage`` without changing a caller.
"""

from zope.interface import Interface


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

    def remove(host, user, store, ids):
        """Deferred: delete the queue items with these ids."""

    def delete_user(host, user):
        """Deferred: delete every document and queue item of one user."""

    def close():
        """Release the database."""


def open_storage(config):
    """The storage named by ``config.storage``."""
    from bridge.core.storage.sqlite import SQLiteStorage

    if config.storage.backend == "memory":
        return SQLiteStorage(":memory:")
    return SQLiteStorage(config.data_path(config.storage.path))

"""Accounts: one per (host, user), holding only the SCRAM records of its password."""

from twisted.internet import defer

from bridge.core import sasl

STORE = "accounts"


class AccountError(Exception):
    pass


class Accounts:
    def __init__(self, storage):
        self.storage = storage

    def credentials(self, host, user):
        """Deferred: the stored SASL records, or None for no such account."""
        return self.storage.get(host, user, STORE)

    @defer.inlineCallbacks
    def exists(self, host, user):
        return (yield self.storage.get(host, user, STORE)) is not None

    @defer.inlineCallbacks
    def create(self, host, user, password):
        if (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} already exists")
        yield self.storage.set(host, user, STORE, sasl.make_credentials(password))

    @defer.inlineCallbacks
    def set_password(self, host, user, password):
        if not (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} does not exist")
        yield self.storage.set(host, user, STORE, sasl.make_credentials(password))

    @defer.inlineCallbacks
    def delete(self, host, user):
        if not (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} does not exist")
        yield self.storage.delete_user(host, user)

    def users(self, host):
        return self.storage.users(host, STORE)

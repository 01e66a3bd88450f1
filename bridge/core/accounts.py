"""Accounts: one per (host, user), holding the SCRAM records of its password and its SIP digest secrets.

No password is stored.  Beside the SCRAM records (``bridge.core.sasl``) the
account keeps, under ``DIGEST``, the HA1 values that SIP digest
authentication (RFC 7616, RFC 2617) checks against: ``H(user:realm:password)``
for realm = the host's name and for MD5 and SHA-256, as Kamailio does.  They
are written whenever a password is set (account creation, ``bridgectl
adduser/passwd``, in-band registration and its password change), since they
cannot be derived from SCRAM keys later.  An HA1 is as good as the password
for its realm: it is kept with the same care as the SCRAM keys.
"""

import hashlib

from twisted.internet import defer

from bridge.core import sasl
from bridge.core.storage.cache import KeyedLock

STORE = "accounts"
# The key of the digest secrets in an account's record: {realm: {algorithm: HA1 hex}}.
DIGEST = "SIP-DIGEST"
DIGEST_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class AccountError(Exception):
    pass


def digest_secrets(user, realm, password):
    """{algorithm: H(user:realm:password)} for MD5 and SHA-256 (RFC 7616 3.4.2, without -sess)."""
    text = f"{user}:{realm}:{password}".encode("utf-8")
    return {algorithm: new(text).hexdigest() for algorithm, new in DIGEST_HASHES.items()}


def make_records(host, user, password):
    """What an account stores for ``password``: SCRAM records and the digest secrets of realm ``host``."""
    records = sasl.make_credentials(password)
    records[DIGEST] = {host: digest_secrets(user, host, password)}
    return records


class Accounts:
    def __init__(self, storage):
        self.storage = storage
        self._changes = KeyedLock()  # two creations of one name: the second finds the first

    def credentials(self, host, user):
        """Deferred: the stored SASL records, or None for no such account."""
        return self.storage.get(host, user, STORE)

    @defer.inlineCallbacks
    def digest_ha1(self, host, user, realm, algorithm):
        """Deferred: the stored HA1 of ``user@host`` for ``realm`` and ``algorithm`` (MD5 or
        SHA-256; a -sess variant uses its base's), or None: no such account, or its password
        was set before digest secrets were kept."""
        records = yield self.storage.get(host, user, STORE)
        if not records:
            return None
        base = algorithm[:-5] if algorithm.endswith("-sess") else algorithm
        return records.get(DIGEST, {}).get(realm, {}).get(base)

    @defer.inlineCallbacks
    def exists(self, host, user):
        return (yield self.storage.get(host, user, STORE)) is not None

    def create(self, host, user, password):
        return self._changes.run((host, user), self._create, host, user, password)

    @defer.inlineCallbacks
    def _create(self, host, user, password):
        if (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} already exists")
        yield self.storage.set(host, user, STORE, make_records(host, user, password))

    def set_password(self, host, user, password):
        return self._changes.run((host, user), self._set_password, host, user, password)

    @defer.inlineCallbacks
    def _set_password(self, host, user, password):
        if not (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} does not exist")
        yield self.storage.set(host, user, STORE, make_records(host, user, password))

    def delete(self, host, user):
        return self._changes.run((host, user), self._delete, host, user)

    @defer.inlineCallbacks
    def _delete(self, host, user):
        if not (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} does not exist")
        yield self.storage.delete_user(host, user)

    def users(self, host):
        return self.storage.users(host, STORE)

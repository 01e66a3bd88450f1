"""Accounts: one per (host, user), holding the SCRAM records of its password and its SIP digest secrets.

No password is stored.  Beside the SCRAM records (``bridge.core.sasl``) the
account of a host that uses SIP keeps, under ``DIGEST``, the HA1 values that
SIP digest authentication (RFC 7616, RFC 2617) checks against:
``H(user:realm:password)`` for realm = the host's name, as Kamailio does.
They are written whenever a password is set (account creation, ``bridgectl
adduser/passwd``, in-band registration and its password change), since they
cannot be derived from SCRAM keys later.  An HA1 is as good as the password
for its realm, and an MD5 one is guessed at MD5's speed, so one is kept only
where SIP needs it (``sip_digest_algorithms``): for the algorithms of ``[sip]
digest_algorithms``, on hosts with ``sip_digest = true``, while the gateway
is on.  Setting a password writes exactly that, so it also removes the HA1
of a host that stopped using SIP.
"""

import hashlib

from twisted.internet import defer

from bridge.core import sasl
from bridge.core.storage import StorageUnavailable
from bridge.core.storage.cache import KeyedLock

STORE = "accounts"
# The key of the digest secrets in an account's record: {realm: {algorithm: HA1 hex}}.
DIGEST = "SIP-DIGEST"
DIGEST_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


# The characters that begin an escape in some form of an address: % a SIP URI's %HH
# (RFC 3261 19.1.2), \ XEP-0106's \HH and a quoted string's \x.  A name holding one
# could read as another name once decoded, so no new account may have one.
ESCAPE_CHARACTERS = "%\\"


class AccountError(Exception):
    pass


class InvalidName(AccountError):
    """A user name that no new account may have."""


def check_new_name(user):
    """Refuse a new account's name that holds an escape character (InvalidName)."""
    found = sorted({char for char in user if char in ESCAPE_CHARACTERS})
    if found:
        raise InvalidName(f"{user!r}: a user name may not contain {' or '.join(found)}: in SIP and in "
                          "XEP-0106 addresses it begins an escape, so the name could be read as another")


def digest_secrets(user, realm, password, algorithms=tuple(DIGEST_HASHES)):
    """{algorithm: H(user:realm:password)} for each of ``algorithms`` (RFC 7616 3.4.2, without -sess)."""
    text = f"{user}:{realm}:{password}".encode("utf-8")
    return {algorithm: DIGEST_HASHES[algorithm](text).hexdigest() for algorithm in algorithms}


def make_records(host, user, password, algorithms=tuple(DIGEST_HASHES)):
    """What an account stores for ``password``: SCRAM records, and the digest secrets of realm ``host``
    for ``algorithms`` (none: no digest secret at all)."""
    records = sasl.make_credentials(password)
    if algorithms:
        records[DIGEST] = {host: digest_secrets(user, host, password, algorithms)}
    return records


def sip_digest_algorithms(config):
    """host name -> the algorithms whose HA1 its accounts keep: ``[sip] digest_algorithms`` on a host
    with ``sip_digest = true`` while the SIP gateway is on, else none."""

    def algorithms(host):
        if not config.sip.enabled or not config.hosts[host].sip_digest:
            return ()
        return tuple(config.sip.digest_algorithms)

    return algorithms


class Accounts:
    def __init__(self, storage, digest_algorithms):
        """``digest_algorithms(host)``: the algorithms whose HA1 to keep for ``host``'s accounts
        (``sip_digest_algorithms``)."""
        self.storage = storage
        self.digest_algorithms = digest_algorithms
        self._changes = KeyedLock()  # two creations of one name: the second finds the first

    def credentials(self, host, user):
        """Deferred: the stored SASL records, or None for no such account; fails with ``StorageUnavailable``
        at once while the database is away, so that a login is refused (temporary-auth-failure) rather
        than wait for it."""
        if not self.storage.available:
            return defer.fail(StorageUnavailable("the account database cannot be reached"))
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
        check_new_name(user)
        if (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} already exists")
        yield self.storage.set(host, user, STORE, make_records(host, user, password, self.digest_algorithms(host)))

    def set_password(self, host, user, password):
        return self._changes.run((host, user), self._set_password, host, user, password)

    @defer.inlineCallbacks
    def _set_password(self, host, user, password):
        if not (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} does not exist")
        yield self.storage.set(host, user, STORE, make_records(host, user, password, self.digest_algorithms(host)))

    def delete(self, host, user):
        return self._changes.run((host, user), self._delete, host, user)

    @defer.inlineCallbacks
    def _delete(self, host, user):
        if not (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} does not exist")
        yield self.storage.delete_user(host, user)

    def users(self, host):
        return self.storage.users(host, STORE)

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

A host may keep its users in an LDAP directory instead (``DirectoryAccounts``,
docs/directory.md): PLAIN is then checked by binding as the user, and the
records above are derived from the password of a successful bind and kept
under ``DIRECTORY_STORE``, so that SCRAM and SIP digest work from the user's
first PLAIN login on, until the entry changes in the directory.
"""

import hashlib

from twisted.internet import defer
from twisted.logger import Logger

from bridge.core import sasl
from bridge.core.directory import (AttributeMap, DirectoryUnavailable, equality_filter, map_entry, restrict,
                                  substring_filter, text_value)
from bridge.core.storage import StorageUnavailable
from bridge.core.storage.cache import KeyedLock

log = Logger()

STORE = "accounts"
# The most directory groups read for shared rosters.
MAX_GROUPS = 1000
# The records derived at a directory user's last successful PLAIN login:
# {"dn": the entry's DN, "changed": its change attribute then, "records": make_records(...)}.
DIRECTORY_STORE = "directory-credentials"
# The key of the digest secrets in an account's record: {realm: {algorithm: HA1 hex}}.
DIGEST = "SIP-DIGEST"
DIGEST_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
# The mark of a disabled account in its record (its text: why); no login succeeds while it is there.
DISABLED = "DISABLED"


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


def usable(records):
    """``records`` as a login may use them: None for no account, or a disabled one."""
    return None if records is None or DISABLED in records else records


def sip_digest_algorithms(config):
    """host name -> the algorithms whose HA1 its accounts keep: ``[sip] digest_algorithms`` on a host
    with ``sip_digest = true`` while the SIP gateway is on, else none."""

    def algorithms(host):
        if not config.sip.enabled or not config.hosts[host].sip_digest:
            return ()
        return tuple(config.sip.digest_algorithms)

    return algorithms


def stored_ha1(records, realm, algorithm):
    """The HA1 in ``records`` for ``realm`` and ``algorithm`` (a -sess variant uses its base's), or None."""
    base = algorithm[:-5] if algorithm.endswith("-sess") else algorithm
    return (records or {}).get(DIGEST, {}).get(realm, {}).get(base)


class DirectoryAccounts:
    """The accounts of one host whose users are entries of an LDAP directory.

    ``client`` is the host's ``bridge.core.ldap.DirectoryClient``.  A user is
    the one entry under the base DN that matches ``user_filter`` and whose uid
    attribute equals the name (RFC 4515 escaped); none or several: no such user.
    The records kept at a successful PLAIN login are used for SCRAM and SIP
    digest only while the entry has the same DN and change attribute (an
    administrator's password change moves modifyTimestamp); they are dropped
    when the password that made them no longer binds.  Every question that
    needs the directory fails with ``DirectoryUnavailable`` when no server
    answers, never with a yes or a no.
    """

    def __init__(self, host, client, storage, config, digest_algorithms):
        """``config``: the directory's ``LDAPConfig``."""
        self.host = host
        self.client = client
        self.storage = storage
        self.attribute_map = AttributeMap(uid=config.uid_attribute, name=config.name_attribute,
                                          mail=config.mail_attribute, mobile=config.mobile_attribute,
                                          photo=config.photo_attribute, changed=config.changed_attribute)
        self.user_filter = config.user_filter
        self.max_photo_bytes = config.max_photo_bytes
        self.max_search_results = config.max_search_results
        self.group_base_dn = config.group_base_dn
        self.group_filter = config.group_filter
        self.group_name_attribute = config.group_name_attribute
        self.group_member_attribute = config.group_member_attribute
        self.max_group_members = config.max_group_members
        self.group_refresh_seconds = config.group_refresh_seconds
        # Site policy: the groups whose members are the MUC service's admins or may create rooms.
        self.policy_groups = {"admins": config.admins_group, "room_creators": config.room_creators_group}
        self._members = {}  # group name -> frozenset of member uids (casefolded), as last read
        self.digest_algorithms = digest_algorithms

    @defer.inlineCallbacks
    def find(self, user, photo=False):
        """Deferred: the user's ``DirectoryEntry``, with the photo if ``photo``, or None (no entry, more
        than one, or one whose uid is not the name but for case: the server's matching rule may
        ignore spaces or more, and the name becomes the user's JID)."""
        found = yield self.client.search(restrict(self.user_filter, equality_filter(self.attribute_map.uid, user)),
                                         self.attribute_map.names(photo), 2)
        entries = [entry for entry in (map_entry(dn, attributes, self.attribute_map, self.max_photo_bytes)
                                       for dn, attributes in found) if entry is not None]
        if len(entries) != 1 or entries[0].uid.casefold() != user.casefold():
            return None
        return entries[0]

    @defer.inlineCallbacks
    def search(self, criteria, limit):
        """Deferred: at most ``limit`` ``DirectoryEntry`` whose attributes contain every value of
        ``criteria`` ({"uid" | "name" | "mail": text}, empty values ignored), sorted by uid."""
        conditions = [substring_filter(getattr(self.attribute_map, key), value)
                      for key, value in sorted(criteria.items()) if value]
        if not conditions:
            return []
        found = yield self.client.search(restrict(self.user_filter, *conditions), self.attribute_map.names(), limit)
        entries = (map_entry(dn, attributes, self.attribute_map, self.max_photo_bytes) for dn, attributes in found)
        return sorted((entry for entry in entries if entry is not None), key=lambda entry: entry.uid)[:limit]

    @defer.inlineCallbacks
    def groups(self):
        """Deferred {group name: sorted uids of its members that are users} of the groups under
        ``group_base_dn`` (at most ``MAX_GROUPS``); a group of more than ``max_group_members``
        members is left out, since each member's roster would hold every other."""
        if not self.group_base_dn:
            return {}
        member_attribute = self.group_member_attribute.lower()
        found = yield self.client.search(self.group_filter, [self.group_name_attribute, self.group_member_attribute],
                                         MAX_GROUPS, base=self.group_base_dn)
        uids = {}  # member DN -> uid (None: not a user), read once per call
        groups = {}
        for dn, attributes in found:
            values = {name.lower(): values for name, values in attributes.items()}
            name = text_value(values.get(self.group_name_attribute.lower(), []))
            members = [text_value([member]) for member in values.get(member_attribute, [])]
            if not name or len(members) > self.max_group_members:
                if name:
                    log.warn("directory group {name} has more than {limit} members: not shared", name=name,
                             limit=self.max_group_members)
                continue
            for member in members:
                if member and member not in uids:
                    entries = yield self.client.search(self.user_filter, [self.attribute_map.uid], 1, base=member,
                                                       whole_subtree=False)
                    uids[member] = next((entry.uid for entry in (
                        map_entry(found_dn, found_attributes, self.attribute_map, 0)
                        for found_dn, found_attributes in entries) if entry is not None), None)
            groups[name] = sorted({uids[member] for member in members if member and uids[member]})
        self._members = {name: frozenset(uid.casefold() for uid in group) for name, group in groups.items()}
        return groups

    def in_policy_group(self, role, user):
        """Whether ``user`` was, at the last reading of the groups, a member of the group that
        ``role`` ("admins", "room_creators") names; None when no group is named for it."""
        group = self.policy_groups[role]
        if not group:
            return None
        return user.casefold() in self._members.get(group, ())

    def _cached(self, user):
        return self.storage.get(self.host, user, DIRECTORY_STORE)

    def _forget(self, user):
        return self.storage.set(self.host, user, DIRECTORY_STORE, None)

    @defer.inlineCallbacks
    def check_password(self, user, password):
        """Deferred: True when the user's entry binds with ``password``; the records of the
        password are then kept, and dropped when a password that made them is refused."""
        entry = yield self.find(user)
        if entry is None:
            return False
        cached = yield self._cached(user)
        known = bool(cached) and sasl.check_password(cached["records"], password)
        if (yield self.client.check_password(entry.dn, password)):
            if not (known and cached["dn"] == entry.dn and cached["changed"] == entry.changed):
                records = make_records(self.host, user, password, self.digest_algorithms(self.host))
                yield self.storage.set(self.host, user, DIRECTORY_STORE,
                                       {"dn": entry.dn, "changed": entry.changed, "records": records})
            return True
        if known:
            yield self._forget(user)
        return False

    @defer.inlineCallbacks
    def credentials(self, user):
        """Deferred: the records kept at the last PLAIN login, while the entry is unchanged; else None."""
        cached = yield self._cached(user)
        if not cached:
            return None
        entry = yield self.find(user)
        if entry is None or (entry.dn, entry.changed) != (cached["dn"], cached["changed"]):
            yield self._forget(user)
            return None
        return cached["records"]

    @defer.inlineCallbacks
    def exists(self, user):
        """Deferred: whether the directory has the user; while it cannot be asked, whether the
        user has logged in before."""
        try:
            return (yield self.find(user)) is not None
        except DirectoryUnavailable:
            return bool((yield self._cached(user)))


class Accounts:
    def __init__(self, storage, digest_algorithms, directories=None):
        """``digest_algorithms(host)``: the algorithms whose HA1 to keep for ``host``'s accounts
        (``sip_digest_algorithms``); ``directories``: {host: ``DirectoryAccounts``} for the hosts
        whose users live in a directory."""
        self.storage = storage
        self.digest_algorithms = digest_algorithms
        self.directories = directories or {}
        self._changes = KeyedLock()  # two creations of one name: the second finds the first

    def credentials(self, host, user):
        """Deferred: the SASL records, or None for no such account.  A directory host's fail with
        ``DirectoryUnavailable`` when its directory does not answer; the others with ``StorageUnavailable``
        at once while the database is away, so that a login is refused (temporary-auth-failure) rather
        than wait for it."""
        if host in self.directories:
            return self.directories[host].credentials(user)
        if not self.storage.available:
            return defer.fail(StorageUnavailable("the account database cannot be reached"))
        return self.storage.get(host, user, STORE).addCallback(usable)

    @defer.inlineCallbacks
    def check_password(self, host, user, password, decoy):
        """Deferred: True when ``password`` is the user's.  ``decoy(user)``: the made-up records an
        unknown name is checked against (``sasl.Decoys``), at the cost of a wrong password."""
        if host in self.directories:
            return (yield self.directories[host].check_password(user, password))
        credentials = yield self.credentials(host, user)
        matches = sasl.password_matches(credentials, password, None if credentials else decoy(user))
        if matches and any(mechanism not in credentials for mechanism in sasl.SCRAM_HASHES):
            # An account imported with the keys of one SCRAM hash only (Prosody's SCRAM-SHA-1): the
            # password at hand completes them, so that the next SCRAM login may use any hash.
            yield self.set_password(host, user, password)
            log.info("the SCRAM keys of {user}@{host} were completed at a PLAIN login", user=user, host=host)
        return matches

    @defer.inlineCallbacks
    def digest_ha1(self, host, user, realm, algorithm):
        """Deferred: the stored HA1 of ``user@host`` for ``realm`` and ``algorithm`` (MD5 or
        SHA-256; a -sess variant uses its base's), or None: no such account, or its password
        was set before digest secrets were kept (a directory user: not logged in with PLAIN
        since the entry changed)."""
        return stored_ha1((yield self.credentials(host, user)), realm, algorithm)

    def exists(self, host, user):
        if host in self.directories:
            return self.directories[host].exists(user)
        return self.storage.get(host, user, STORE).addCallback(lambda records: records is not None)

    def directory(self, host):
        """The ``DirectoryAccounts`` of ``host``, or None: its users are bridge's own accounts."""
        return self.directories.get(host)

    def _check_local(self, host):
        if host in self.directories:
            raise AccountError(f"the accounts of {host} are kept in its LDAP directory")

    def create(self, host, user, password):
        return self._changes.run((host, user), self._create, host, user, password)

    @defer.inlineCallbacks
    def _create(self, host, user, password):
        self._check_local(host)
        check_new_name(user)
        if (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} already exists")
        yield self.storage.set(host, user, STORE, make_records(host, user, password, self.digest_algorithms(host)))

    def set_password(self, host, user, password):
        return self._changes.run((host, user), self._set_password, host, user, password)

    @defer.inlineCallbacks
    def _set_password(self, host, user, password):
        self._check_local(host)
        records = yield self.storage.get(host, user, STORE)
        if records is None:
            raise AccountError(f"{user}@{host} does not exist")
        new = make_records(host, user, password, self.digest_algorithms(host))
        if DISABLED in records:
            new[DISABLED] = records[DISABLED]
        yield self.storage.set(host, user, STORE, new)

    def disable(self, host, user, reason=""):
        """Refuse every login of the account (SASL, SIP digest) until ``enable``; its data stays."""
        return self._changes.run((host, user), self._mark, host, user, reason)

    def enable(self, host, user):
        return self._changes.run((host, user), self._mark, host, user, None)

    @defer.inlineCallbacks
    def _mark(self, host, user, reason):
        self._check_local(host)
        records = yield self.storage.get(host, user, STORE)
        if records is None:
            raise AccountError(f"{user}@{host} does not exist")
        records.pop(DISABLED, None)
        if reason is not None:
            records[DISABLED] = reason
        yield self.storage.set(host, user, STORE, records)

    def delete(self, host, user):
        return self._changes.run((host, user), self._delete, host, user)

    @defer.inlineCallbacks
    def _delete(self, host, user):
        self._check_local(host)
        if not (yield self.exists(host, user)):
            raise AccountError(f"{user}@{host} does not exist")
        yield self.storage.delete_user(host, user)


"""Whether, and where, a user who is away hears of the messages stored for them.

Each host has an ``offline_notification`` policy ("none", "sms", "email",
"both"); a user's own choice, kept in storage, overrides it, which is how a
user opts out.  The same document holds the user's mobile number and email
address; without a stored number, the vCard's TEL marked CELL is used.  On a
host whose users live in an LDAP directory, the entry's mobile and mail
attributes take the vCard's place, and the directory's number counts as
verified: only its administrators set it (docs/directory.md).  The SMS and
email gateways read this through ``NotificationPreferences`` when the
``offline/stored`` event fires; ``bridgectl notify`` writes it.
"""

from twisted.internet import defer
from twisted.logger import Logger

from bridge.core.directory import DirectoryUnavailable

from bridge.core.storage.cache import KeyedLock
from bridge.core.xmlstream import parse_element

log = Logger()

STORE = "notifications"
VCARD_STORE = "vcard"  # the document of the vCard feature: {"xml": "<vCard .../>", ...}
NS_VCARD = "vcard-temp"
POLICIES = {"none": frozenset(), "sms": frozenset({"sms"}), "email": frozenset({"email"}),
            "both": frozenset({"sms", "email"})}


def cell_number(vcard):
    """The number of the vCard's first TEL marked CELL, or None."""
    for tel in vcard.elements(NS_VCARD, "TEL"):
        if any(True for _ in tel.elements(NS_VCARD, "CELL")):
            for number in tel.elements(NS_VCARD, "NUMBER"):
                text = str(number).strip()
                if text:
                    return text
    return None


class NotificationPreferences:
    def __init__(self, storage, host_config, directory=lambda host: None):
        """``host_config(name)``: the HostConfig of a local host, whose policy is the default;
        ``directory(name)``: the host's ``DirectoryAccounts``, or None (``Accounts.directory``)."""
        self.storage = storage
        self.host_config = host_config
        self.directory = directory
        self._changes = KeyedLock()

    @defer.inlineCallbacks
    def directory_entry(self, host, user):
        """The user's ``DirectoryEntry`` on a directory host; None elsewhere, or while the directory
        does not answer."""
        directory = self.directory(host)
        if directory is None:
            return None
        try:
            return (yield directory.find(user))
        except DirectoryUnavailable:
            log.warn("no directory entry for {user}@{host}: the directory does not answer", user=user, host=host)
            return None

    @defer.inlineCallbacks
    def get(self, host, user):
        """{"policy": None or a POLICIES key, "mobile": str or None, "email": str or None}."""
        stored = yield self.storage.get(host, user, STORE)
        return {"policy": None, "mobile": None, "email": None, **(stored or {})}

    def update(self, host, user, **changes):
        """Change some of policy, mobile, email; a value of None returns to the default."""
        unknown = set(changes) - {"policy", "mobile", "email"}
        if unknown or changes.get("policy") not in (None, *POLICIES):
            return defer.fail(ValueError(f"unknown preference {sorted(unknown) or changes.get('policy')}"))
        return self._changes.run((host, user), self._update, host, user, changes)

    @defer.inlineCallbacks
    def _update(self, host, user, changes):
        current = yield self.get(host, user)
        current.update(changes)
        kept = {key: value for key, value in current.items() if value is not None}
        yield self.storage.set(host, user, STORE, kept or None)

    @defer.inlineCallbacks
    def channels(self, host, user):
        """The channels ("sms", "email") on which ``user`` is told of stored messages."""
        preferences = yield self.get(host, user)
        policy = preferences["policy"] or self.host_config(host).offline_notification
        return POLICIES[policy]

    @defer.inlineCallbacks
    def mobile(self, host, user):
        """The user's mobile number: the stored one, else the vCard's TEL/CELL."""
        preferences = yield self.get(host, user)
        if preferences["mobile"]:
            return preferences["mobile"]
        if self.directory(host) is not None:
            return (yield self.assigned_mobile(host, user))
        vcard = yield self.storage.get(host, user, VCARD_STORE)
        return cell_number(parse_element(vcard["xml"])) if vcard else None

    @defer.inlineCallbacks
    def assigned_mobile(self, host, user):
        """The mobile number the host's directory gives the user, or None."""
        entry = yield self.directory_entry(host, user)
        return entry.mobile if entry else None

    @defer.inlineCallbacks
    def email(self, host, user):
        """The user's email address: the stored one, else the directory's mail attribute."""
        preferences = yield self.get(host, user)
        if preferences["email"]:
            return preferences["email"]
        entry = yield self.directory_entry(host, user)
        return entry.mail if entry else None

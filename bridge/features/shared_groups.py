"""Directory groups as shared rosters, as ejabberd's mod_shared_roster_ldap does.

Loaded on every host, active on one whose users live in an LDAP directory
with ``group_base_dn`` set (docs/directory.md).  Every
``group_refresh_seconds`` the groups are read, and each member's roster gets
every other member of its groups as an item with subscription "both", under
the groups' names, so that presence flows between them through the ordinary
roster rules.  The groups of site policy (``admins_group``,
``room_creators_group``) are read by the same refresh and not shared.  The items the refresh added are remembered per user
(``STORE``); when someone leaves a group, the items that only the group gave
are removed, while items a user made themselves are never touched.  A roster
that is full (``max_roster_items_per_user``) takes no more shared items.
"""

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from bridge.core.directory import DirectoryUnavailable

log = Logger()

STORE = "directory-groups"  # {"contacts": [bare JIDs the refresh put in the user's roster]}


def shared_contacts(groups):
    """{uid: {other uid: sorted names of the groups they share}} of ``groups`` ({name: [uids]})."""
    contacts = {}
    for name, members in groups.items():
        for uid in members:
            for other in members:
                if other != uid:
                    contacts.setdefault(uid, {}).setdefault(other, []).append(name)
    return {uid: {other: sorted(names) for other, names in others.items()} for uid, others in contacts.items()}


def _node(uid):
    try:
        return nodeprep.prepare(uid)
    except UnicodeError:
        return None  # no JID's local part: nobody logs in with it


class SharedGroups:
    def __init__(self, ctx, directory):
        self.ctx = ctx
        self.host = ctx.host.name
        self.directory = directory
        self.loop = task.LoopingCall(self.refresh)
        self.loop.clock = ctx.clock

    def start(self, interval):
        self.loop.start(interval, now=True).addErrback(
            lambda failure: log.failure("shared groups of {host} stopped", failure, host=self.host))

    @defer.inlineCallbacks
    def refresh(self):
        """Read the groups and bring every member's roster, and every former member's, up to date."""
        try:
            groups = yield self.directory.groups()
        except DirectoryUnavailable:
            log.warn("shared groups of {host} not refreshed: the directory does not answer", host=self.host)
            return
        policy = set(self.directory.policy_groups.values())
        wanted = {}
        for uid, others in shared_contacts({name: members for name, members in groups.items()
                                            if name not in policy}).items():
            node = _node(uid)
            if node:
                wanted[node] = {f"{other_node}@{self.host}": names for other_node, names in
                                ((_node(other), names) for other, names in others.items()) if other_node}
        former = yield self.ctx.storage.users(self.host, STORE)
        for node in sorted(set(wanted) | set(former)):
            yield self._apply(node, wanted.get(node, {}))

    @defer.inlineCallbacks
    def _apply(self, node, contacts):
        """Make ``node``'s roster hold ``contacts`` ({bare JID: group names}) as shared items, and drop
        the shared items of before that are no longer wanted."""
        bare = f"{node}@{self.host}"
        stored = yield self.ctx.storage.get(self.host, node, STORE)
        previous = set((stored or {}).get("contacts", []))
        roster = yield self.ctx.rosters.load(bare)
        added = set()
        for contact, names in sorted(contacts.items()):
            item = roster.get(contact)
            if item is not None and not item.hidden and contact not in previous:
                continue  # the user's own item
            item = roster.ensure(contact)
            if item is None:
                log.warn("the roster of {bare} is full: shared groups left out", bare=bare)
                break
            added.add(contact)
            if (item.hidden, item.subscription, item.ask, item.groups) != (False, "both", False, names):
                item.hidden, item.subscription, item.ask, item.groups = False, "both", False, names
                yield self.ctx.rosters.update(bare, roster, item)
        for contact in sorted(previous - added):
            item = roster.get(contact)
            if item is not None:
                yield self.ctx.rosters.update(bare, roster, item, removed=True)
        if added != previous:
            yield self.ctx.storage.set(self.host, node, STORE, {"contacts": sorted(added)} if added else None)


def setup(ctx):
    directory = ctx.accounts.directory(ctx.host.name) if ctx.has_accounts else None
    if directory is None or not directory.group_base_dn:
        return None
    groups = SharedGroups(ctx, directory)
    groups.start(directory.group_refresh_seconds)
    return groups

"""Rosters (RFC 6121 section 2): stored per account, versioned, pushed on change.

The roster is core state because presence, blocking and the gateways all
consult it: the roster decides who may see whose presence.  The stored
form keeps what the XML form hides: a pending inbound request (with what is
needed to show it again at the next login) and a pre-approval.  A roster
holds at most ``max_roster_items_per_user`` items, hidden ones included.
"""

from twisted.internet import defer
from twisted.words.xish import domish

from bridge.core.stanza import make
from bridge.core.storage.cache import DocumentCache

NS_ROSTER = "jabber:iq:roster"
INTERESTED = "roster"  # the session mark of a resource that asked for the roster: it gets roster pushes
STORE = "roster"


class RosterItem:
    __slots__ = ("jid", "name", "groups", "subscription", "ask", "pending_in", "approved", "hidden")

    def __init__(self, jid, name=None, groups=(), subscription="none", ask=False, pending_in=None,
                 approved=False, hidden=False):
        self.jid = jid
        self.name = name
        self.groups = list(groups)
        self.subscription = subscription
        self.ask = ask
        # A pending inbound request: None, or what is kept of it to show it
        # again, {"status": text or None, "nick": text or None}.
        self.pending_in = pending_in
        self.approved = approved
        # An item that only records a pending request or a pre-approval is
        # not part of the roster the user sees (RFC 6121 section 3.1.3).
        self.hidden = hidden

    @property
    def records_nothing(self):
        """A hidden item whose request was answered or withdrawn: nothing left to keep."""
        return (self.hidden and self.subscription == "none" and not self.ask and self.pending_in is None
                and not self.approved)

    @property
    def has_to(self):
        return self.subscription in ("to", "both")

    @property
    def has_from(self):
        return self.subscription in ("from", "both")

    def set_flags(self, to=None, from_=None):
        """Change one direction of the subscription, keeping the other."""
        has_to = self.has_to if to is None else to
        has_from = self.has_from if from_ is None else from_
        self.subscription = {(False, False): "none", (True, False): "to", (False, True): "from",
                             (True, True): "both"}[(has_to, has_from)]

    def to_element(self, removed=False):
        item = domish.Element((NS_ROSTER, "item"))
        item["jid"] = self.jid
        if removed:
            item["subscription"] = "remove"
            return item
        if self.name:
            item["name"] = self.name
        item["subscription"] = self.subscription
        if self.ask:
            item["ask"] = "subscribe"
        if self.approved and not self.has_from:
            item["approved"] = "true"
        for group in self.groups:
            item.addElement("group", content=group)
        return item

    def to_json(self):
        return {"name": self.name, "groups": self.groups, "subscription": self.subscription,
                "ask": self.ask, "pending_in": self.pending_in, "approved": self.approved, "hidden": self.hidden}

    @classmethod
    def from_json(cls, jid, data):
        pending_in = data.get("pending_in")
        if isinstance(pending_in, str):
            # A request stored whole, before only its text was kept: kept without its text.
            pending_in = {"status": None, "nick": None}
        return cls(jid, data.get("name"), data.get("groups", ()), data.get("subscription", "none"),
                   data.get("ask", False), pending_in, data.get("approved", False),
                   data.get("hidden", False))


class Roster:
    """One account's roster: items by bare JID, a version counter, and the most items it may hold."""

    def __init__(self, version=0, items=None, max_items=None):
        self.version = version
        self.items = items or {}
        self.max_items = max_items

    def get(self, jid):
        return self.items.get(jid)

    def ensure(self, jid, hidden=False):
        """The item for ``jid``, created (with subscription none) if missing; None when the roster is full."""
        item = self.items.get(jid)
        if item is None:
            if self.max_items is not None and len(self.items) >= self.max_items:
                return None
            item = self.items[jid] = RosterItem(jid, hidden=hidden)
        return item

    def visible(self):
        return [item for item in self.items.values() if not item.hidden]


def _decode(data, max_items):
    if not data:
        return Roster(max_items=max_items)
    return Roster(data["version"], {jid: RosterItem.from_json(jid, value) for jid, value in data["items"].items()},
                  max_items)


def _encode(roster):
    return {"version": roster.version, "items": {jid: item.to_json() for jid, item in roster.items.items()}}


class Rosters:
    """Loads, saves and pushes rosters.

    Rosters are read on every presence broadcast and changed by several
    stanzas at once, so they are kept in a ``DocumentCache``: every change
    is made to the one Roster object of an account and written as a whole.
    """

    def __init__(self, storage, sessions, router, max_items, caches=None):
        self.documents = DocumentCache(storage, STORE, decode=lambda data: _decode(data, max_items),
                                       encode=_encode, caches=caches)
        self.sessions = sessions
        self.router = router

    def load(self, bare):
        user, host = bare.split("@", 1)
        return self.documents.load(host, user)

    def save(self, bare, roster):
        roster.version += 1
        user, host = bare.split("@", 1)
        return self.documents.save(host, user, roster)

    def forget(self, bare):
        user, host = bare.split("@", 1)
        self.documents.forget(host, user)

    @defer.inlineCallbacks
    def update(self, bare, roster, item, removed=False):
        """Save ``roster`` after a change of ``item`` and push it to interested resources.

        A hidden item left recording nothing goes, so that answered requests
        never take the room of new ones.
        """
        if removed or item.records_nothing:
            roster.items.pop(item.jid, None)
        yield self.save(bare, roster)
        if item.hidden and not removed:
            return
        for session in self.sessions.resources(bare):
            if INTERESTED in session.marks:
                push = make("iq", to=session.full, type="set", id=f"push{roster.version}")
                query = push.addElement((NS_ROSTER, "query"))
                query["ver"] = str(roster.version)
                query.addChild(item.to_element(removed))
                session.send(push)

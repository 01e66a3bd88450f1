"""One account's privacy lists (XEP-0016), of which the block list (XEP-0191) is a view.

Both protocols change one document, as ejabberd keeps them: a set of named
lists of ordered rules, and the name of the default list.  The XEP-0191
block list is the set of rules of the default list that deny everything to
a JID; blocking a JID puts such a rule first in the default list (a list
named "Blocked contacts" is created and made the default when there is
none), unblocking removes it.  Which list applies to a session (its active
list, else the default) is per session and not stored here.

A rule matches a JID (as XEP-0191 section 3.2 matches: full JID, bare JID,
domain/resource or domain), a roster group, a subscription state, or anyone
(the fall-through rule); it applies to the stanza kinds it names, or to all
of them when it names none.  Only a rule that names none applies to what the
user sends (messages and IQs, refused as XEP-0191 refuses them) beside
outbound presence notifications (``presence-out``).

This module does no I/O: it reads and writes XML elements and plain data.
"""

import json

from twisted.words.xish import domish

from bridge.core.stanza import parse_jid

NS_PRIVACY = "jabber:iq:privacy"
BLOCK_LIST_NAME = "Blocked contacts"
# The kinds a rule may name, and those only a rule naming none covers.
NAMED_KINDS = ("message", "iq", "presence-in", "presence-out")
RULE_TYPES = ("jid", "group", "subscription")
SUBSCRIPTIONS = ("none", "to", "from", "both")
MAX_ORDER = 2 ** 32 - 1  # XEP-0016: an unsigned integer


def candidates(jid):
    """The rule values that would match ``jid`` (XEP-0191 section 3.2, XEP-0016 section 2.1)."""
    keys = {jid.full(), jid.userhost(), jid.host}
    if jid.resource:
        keys.add(f"{jid.host}/{jid.resource}")
    return keys


def inbound_kind(stanza):
    """The kind of a stanza arriving for the user; other presence than notifications has none of its own."""
    if stanza.name == "presence":
        return "presence-in" if stanza.getAttribute("type") in (None, "unavailable") else "presence-other"
    return stanza.name


def outbound_kind(stanza):
    """The kind of a stanza leaving the user: only presence notifications have a named kind."""
    if stanza.name == "presence":
        return "presence-out" if stanza.getAttribute("type") in (None, "unavailable") else "presence-other-out"
    return stanza.name + "-out"


class Rule:
    """One item of a list: ``type`` None for the fall-through rule; ``kinds`` empty for all."""

    __slots__ = ("type", "value", "allow", "order", "kinds")

    def __init__(self, type, value, allow, order, kinds=frozenset()):
        self.type = type
        self.value = value
        self.allow = allow
        self.order = order
        self.kinds = frozenset(kinds)

    @property
    def blocks_jid(self):
        """True for a rule XEP-0191 shows: deny everything to a JID."""
        return self.type == "jid" and not self.allow and not self.kinds

    def applies(self, kind, keys, contact):
        """True when this rule decides a stanza of ``kind`` from or to the entity of ``keys``
        (``contact``: the roster item of that entity's bare JID, or None)."""
        if self.kinds and kind not in self.kinds:
            return False
        if self.type is None:
            return True
        if self.type == "jid":
            return self.value in keys
        if self.type == "group":
            return contact is not None and self.value in contact.groups
        subscription = contact.subscription if contact is not None else "none"
        return subscription == self.value

    def to_json(self):
        return [self.type, self.value, self.allow, self.order, sorted(self.kinds)]

    @classmethod
    def from_json(cls, data):
        return cls(data[0], data[1], data[2], data[3], data[4])

    def to_element(self):
        item = domish.Element((NS_PRIVACY, "item"))
        if self.type is not None:
            item["type"] = self.type
            item["value"] = self.value
        item["action"] = "allow" if self.allow else "deny"
        item["order"] = str(self.order)
        for kind in NAMED_KINDS:
            if kind in self.kinds:
                item.addElement(kind)
        return item


def allowed(rules, kind, jid, roster):
    """The decision of ``rules`` (ordered) on a stanza of ``kind`` from or to ``jid``; no rule allows."""
    if not rules:
        return True
    keys = candidates(jid)
    contact = roster.get(jid.userhost()) if roster is not None else None
    for rule in rules:
        if rule.applies(kind, keys, contact):
            return rule.allow
    return True


def parse_rules(element, roster):
    """The rules of a <list/> element, in order; ValueError (condition, text) when one is not valid.

    Group rules must name a group of the user's roster (XEP-0016 section 2.5:
    item-not-found); anything else malformed is bad-request.
    """
    rules = []
    orders = set()
    for item in element.elements():
        if item.name != "item" or item.uri != NS_PRIVACY:
            raise ValueError("bad-request", f"unexpected <{item.name}/> in a list")
        kind, value = item.getAttribute("type"), item.getAttribute("value")
        action, order = item.getAttribute("action"), item.getAttribute("order")
        if action not in ("allow", "deny"):
            raise ValueError("bad-request", "an item's action is allow or deny")
        if order is None or not order.isdigit() or int(order) > MAX_ORDER or order in orders:
            raise ValueError("bad-request", "an item's order is an unsigned integer unique in its list")
        orders.add(order)
        if kind is None:
            if value is not None:
                raise ValueError("bad-request", "a value needs a type")
        elif kind not in RULE_TYPES or value is None:
            raise ValueError("bad-request", "an item's type is jid, group or subscription, with a value")
        elif kind == "jid":
            jid = parse_jid(value)
            if jid is None:
                raise ValueError("bad-request", f"not a JID: {value}")
            value = jid.full()
        elif kind == "subscription" and value not in SUBSCRIPTIONS:
            raise ValueError("bad-request", "a subscription is none, to, from or both")
        elif kind == "group" and not any(value in contact.groups for contact in roster.items.values()):
            raise ValueError("item-not-found", f"no roster group {value}")
        kinds = set()
        for child in item.elements():
            if child.name not in NAMED_KINDS or child.uri != NS_PRIVACY or child.children:
                raise ValueError("bad-request", f"unexpected <{child.name}/> in an item")
            kinds.add(child.name)
        rules.append(Rule(kind, value, action == "allow", int(order), kinds))
    rules.sort(key=lambda rule: rule.order)
    return tuple(rules)


class PrivacyLists:
    """An account's lists (name -> ordered tuple of rules) and its default list's name.

    Never changed in place: each change makes a new one, so that a session
    deciding with one sees a whole version.
    """

    __slots__ = ("lists", "default", "blocked", "uses_roster")

    def __init__(self, lists=None, default=None):
        self.lists = lists or {}
        self.default = default if default in self.lists else None
        default_rules = self.lists.get(self.default, ())
        self.blocked = frozenset(rule.value for rule in default_rules if rule.blocks_jid)
        self.uses_roster = any(rule.type in ("group", "subscription")
                               for rules in self.lists.values() for rule in rules)

    def rules_for(self, session_data):
        """The rules that apply to a session (its ``data``), or to the account when it has none."""
        name = session_data.get("privacy-active") if session_data is not None else None
        if name is None:
            name = self.default
        return self.lists.get(name, ())

    def with_list(self, name, rules):
        lists = dict(self.lists)
        if rules:
            lists[name] = rules
        else:
            lists.pop(name, None)
        return PrivacyLists(lists, self.default)

    def with_default(self, name):
        return PrivacyLists(self.lists, name)

    def block(self, jids):
        """Deny-all rules for ``jids`` first in the default list (made if there is none)."""
        name = self.default or BLOCK_LIST_NAME
        kept = [rule for rule in self.lists.get(name, ()) if not (rule.blocks_jid and rule.value in jids)]
        new = [Rule("jid", jid, False, 0) for jid in sorted(jids)]
        rules = tuple(Rule(rule.type, rule.value, rule.allow, order, rule.kinds)
                      for order, rule in enumerate(new + kept))
        return PrivacyLists({**self.lists, name: rules}, name)

    def unblock(self, jids=None):
        """Without the deny-all rules of the default list for ``jids`` (None: all of them)."""
        if self.default is None:
            return self
        rules = tuple(rule for rule in self.lists[self.default]
                      if not (rule.blocks_jid and (jids is None or rule.value in jids)))
        return self.with_list(self.default, rules)

    def to_json(self):
        if not self.lists:
            return None
        return {"default": self.default,
                "lists": {name: [rule.to_json() for rule in rules] for name, rules in self.lists.items()}}

    def size_bytes(self):
        """The bytes of the stored form, for the quota."""
        return len(json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8"))

    @classmethod
    def from_json(cls, stored):
        if not stored:
            return NO_PRIVACY_LISTS
        if isinstance(stored, list):
            # A block list stored before privacy lists: its JIDs, now the default list.
            return cls().block(stored)
        lists = {name: tuple(Rule.from_json(rule) for rule in rules) for name, rules in stored["lists"].items()}
        return cls(lists, stored.get("default"))


# The lists of every account that has none (most): shared, as a PrivacyLists never changes.
NO_PRIVACY_LISTS = PrivacyLists()

"""Bookmarks kept in private storage (XEP-0048) and in PEP (XEP-0402) alike (XEP-0411, XEP-0402 section 5.3).

Older clients keep the chat rooms they bookmarked in one ``storage:bookmarks``
fragment of private storage; newer clients keep one item per room in the
``urn:xmpp:bookmarks:1`` node, its id the room's JID.  A client's new
fragment becomes the node's items (those gone are retracted); a client's
publish or retract in the node becomes the fragment's conferences, its
other children (URL bookmarks) kept.  What XEP-0402 holds beyond
XEP-0048 (``<extensions/>``) has no place in the fragment, so a change
made through the fragment drops it.  The private storage and PEP features
each keep their own store; this module listens to one and writes to the
other (``bridge.core.account_data``), and what it writes is not told back.
"""

from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core import account_data
from bridge.core.stanza import parse_jid
from bridge.core.xmlstream import parse_element

log = Logger()

NS_LEGACY = "storage:bookmarks"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
FRAGMENT = f"{NS_LEGACY} storage"
NS_COMPAT = NS_BOOKMARKS + "#compat"
TRUE = ("1", "true")


def _text_children(source, uri, target):
    for name in ("nick", "password"):
        for child in source.elements(uri, name):
            target.addElement(name, content=str(child))
            break


def pep_items(storage):
    """The XEP-0402 items ([(room JID, <conference/>)]) of a XEP-0048 <storage/>, each room once."""
    items = {}
    for conference in storage.elements(NS_LEGACY, "conference"):
        room = parse_jid(conference.getAttribute("jid") or "")
        if room is None or room.user is None or room.resource is not None:
            continue
        payload = domish.Element((NS_BOOKMARKS, "conference"))
        if conference.getAttribute("name"):
            payload["name"] = conference["name"]
        payload["autojoin"] = "true" if conference.getAttribute("autojoin") in TRUE else "false"
        _text_children(conference, NS_LEGACY, payload)
        items[room.userhost()] = payload
    return list(items.items())


def legacy_storage(items, previous):
    """The XEP-0048 <storage/> of XEP-0402 ``items`` ([id, payload XML]), keeping the other children of
    ``previous`` (the stored <storage/>, or None)."""
    storage = domish.Element((NS_LEGACY, "storage"))
    if previous is not None:
        for child in previous.elements():
            if child.name != "conference":
                storage.addChild(child)
    for room, payload_xml in items:
        payload = parse_element(payload_xml)
        conference = storage.addElement("conference")
        conference["jid"] = room
        if payload.getAttribute("name"):
            conference["name"] = payload["name"]
        conference["autojoin"] = "true" if payload.getAttribute("autojoin") in TRUE else "false"
        _text_children(payload, NS_BOOKMARKS, conference)
    return storage


class BookmarkConversion:
    def __init__(self, ctx):
        self.ctx = ctx
        # XEP-0402 section 5.2's node configuration, the node as full as PEP lets it be.
        self.options = {"persist_items": True, "max_items": ctx.config.pep.max_items_per_node,
                        "access_model": "whitelist", "send_last_published_item": "never"}

    def private_changed(self, change):
        """``private/changed``: a client's new XEP-0048 fragment becomes the node's items."""
        if change.name != FRAGMENT:
            return False
        d = account_data.ask(self.ctx, "pep/write", change.owner, NS_BOOKMARKS, pep_items(change.value),
                               self.options)
        change.wait_for(d, "bookmarks")
        return False

    def pep_changed(self, change):
        """``pep/changed``: the node's items become the fragment's conferences."""
        if change.name != NS_BOOKMARKS:
            return False
        d = account_data.ask(self.ctx, "private/read", change.owner, FRAGMENT, None)
        if d is not None:
            d.addCallback(lambda previous: account_data.ask(self.ctx, "private/write", change.owner, FRAGMENT,
                                                              legacy_storage(change.value, previous)))
        change.wait_for(d, "bookmarks")
        return False


def setup(ctx):
    if not ctx.has_accounts:
        return None
    conversion = BookmarkConversion(ctx)
    ctx.add_feature(NS_COMPAT, where="account")
    ctx.hook("private/changed", conversion.private_changed)
    ctx.hook("pep/changed", conversion.pep_changed)
    return conversion

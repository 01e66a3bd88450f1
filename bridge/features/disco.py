"""Service discovery (XEP-0030): info and items of a host and of its accounts.

What is listed comes from the modules loaded on the host, each having
added its own identities, features and items (``ctx.add_feature``,
``GatewayContext.add_item``), so disco never announces something that is
not there and forgets what a module took with it when it was unloaded.

A host's items (the rooms of a chat service can be thousands) are paged by
XEP-0059 in the order of their JIDs: ``<after/>`` and ``<before/>`` name a
JID, a page holds at most ``MAX_ITEMS_PER_PAGE`` items, and a request
without ``<set/>`` gets the first page, with a ``<set/>`` telling the count,
when there are more.
"""

import bisect
import types

from twisted.words.xish import domish

from bridge.core.mam_query import NS_RSM, QueryError, parse_rsm
from bridge.core.stanza import error_reply, result_reply

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
MAX_ITEMS_PER_PAGE = 500
ITEM_PAGES = types.SimpleNamespace(default_page_size=100, max_page_size=MAX_ITEMS_PER_PAGE)


class Disco:
    def __init__(self, ctx):
        self.entries = ctx.host.disco
        self.domain = ctx.host.name

    def _answer(self, event, namespace, where):
        query = event.stanza.query
        node = query.getAttribute("node")
        if node:
            return self._answer_node(event, namespace, where, node)
        reply = result_reply(event.stanza)
        answer = reply.addElement((namespace, "query"))
        if namespace == NS_INFO:
            for category, kind, name in self.entries.identities_of(where):
                identity = answer.addElement("identity")
                identity["category"], identity["type"] = category, kind
                if name:
                    identity["name"] = name
            for feature in sorted({NS_INFO, NS_ITEMS, *self.entries.features_of(where)}):
                answer.addElement("feature")["var"] = feature
            for form in self.entries.forms_of(where):
                answer.addChild(form)
        elif where == "host":
            items = sorted((jid, name) for jid, name, _ in self.entries.items)
            try:
                page, first_index = item_page(items, next(query.elements(NS_RSM, "set"), None))
            except QueryError as error:
                event.reply(error_reply(event.stanza, error.condition, error.text))
                return True
            for jid, name in page:
                item = answer.addElement("item")
                item["jid"] = jid
                if name:
                    item["name"] = name
            for source, _ in self.entries.node_sources:
                for child in source(self.domain, namespace, None, event.sender) or ():
                    answer.addChild(child)
            if first_index is not None:
                answer.addChild(rsm_set(page, first_index, len(items)))
        event.reply(reply)
        return True

    def _answer_node(self, event, namespace, where, node):
        """A query about a node: answered by the module whose node it is (a pubsub service's)."""
        for source, _ in self.entries.node_sources if where == "host" else ():
            children = source(self.domain, namespace, node, event.sender)
            if children is not None:
                reply = result_reply(event.stanza)
                answer = reply.addElement((namespace, "query"))
                answer["node"] = node
                for child in children:
                    answer.addChild(child)
                event.reply(reply)
                return True
        event.reply(error_reply(event.stanza, "item-not-found"))
        return True

    def host_info(self, event):
        return self._answer(event, NS_INFO, "host")

    def host_items(self, event):
        return self._answer(event, NS_ITEMS, "host")

    def account_info(self, event):
        return self._answer(event, NS_INFO, "account")

    def account_items(self, event):
        return self._answer(event, NS_ITEMS, "account")


def item_page(items, rsm):
    """(the page of ``items`` (sorted by JID) that the XEP-0059 ``rsm`` asks for, the index of its first
    item), the index None when every item fits and none was asked for; ``QueryError`` for a bad <set/>."""
    if rsm is None:
        if len(items) <= MAX_ITEMS_PER_PAGE:
            return items, None
        return items[:MAX_ITEMS_PER_PAGE], 0
    wanted = parse_rsm(rsm, ITEM_PAGES)
    limit = wanted["limit"]
    jids = [jid for jid, _ in items]
    if "page_before" in wanted or wanted.get("last_page"):
        end = bisect.bisect_left(jids, wanted["page_before"]) if "page_before" in wanted else len(items)
        start = max(0, end - limit)
        return items[start:end], start
    start = bisect.bisect_right(jids, wanted["page_after"]) if "page_after" in wanted else 0
    return items[start:start + limit], start


def rsm_set(page, first_index, count):
    """The XEP-0059 <set/> that ends a page: its first (with its index) and last JIDs, and the count."""
    rsm = domish.Element((NS_RSM, "set"))
    if page:
        first = rsm.addElement("first", content=page[0][0])
        first["index"] = str(first_index)
        rsm.addElement("last", content=page[-1][0])
    rsm.addElement("count", content=str(count))
    return rsm


def setup(ctx):
    disco = Disco(ctx)
    ctx.hook(f"iq-get/host/{NS_INFO}:query", disco.host_info)
    ctx.hook(f"iq-get/host/{NS_ITEMS}:query", disco.host_items)
    if ctx.has_accounts:
        ctx.add_identity("server", "im", "bridge")
        ctx.add_identity("account", "registered", None, where="account")
        ctx.hook(f"iq-get/bare/{NS_INFO}:query", disco.account_info)
        ctx.hook(f"iq-get/bare/{NS_ITEMS}:query", disco.account_items)
    return disco

"""Service discovery (XEP-0030): info and items of a host and of its accounts.

What is listed comes from the modules loaded on the host, each having
added its own identities, features and items (``ctx.add_feature``,
``GatewayContext.add_item``), so disco never announces something that is
not there and forgets what a module took with it when it was unloaded.
"""

from bridge.core.stanza import error_reply, result_reply

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"


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
            for jid, name, _ in sorted(self.entries.items, key=lambda entry: entry[0]):
                item = answer.addElement("item")
                item["jid"] = jid
                if name:
                    item["name"] = name
            for source, _ in self.entries.node_sources:
                for child in source(self.domain, namespace, None, event.sender) or ():
                    answer.addChild(child)
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

"""Gateway interaction (XEP-0100, jabber:iq:gateway) on the domain of a protocol gateway.

A client asks the gateway how to write a contact's address (a get answers
with a description and a prompt) and what JID a typed address becomes (a
set with <prompt/> answers with <jid/>).  What the prompt means is the
gateway's own business: its ``translator`` (on the component host) has
``description``, ``prompt`` and ``jid_for(text)``, which returns the contact's
JID or raises ValueError saying why the text is no address.
"""

from bridge.core.stanza import error_reply, result_reply

NS_GATEWAY = "jabber:iq:gateway"


class Translation:
    def __init__(self, translator):
        self.translator = translator

    def prompt(self, event):
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_GATEWAY, "query"))
        query.addElement("desc", content=self.translator.description)
        query.addElement("prompt", content=self.translator.prompt)
        event.reply(reply)
        return True

    def translate(self, event):
        stanza = event.stanza
        prompt = next((str(child) for child in stanza.query.elements() if child.name == "prompt"), None)
        if prompt is None:
            event.reply(error_reply(stanza, "bad-request", "a <prompt/> is needed"))
            return True
        try:
            jid = self.translator.jid_for(prompt)
        except ValueError as problem:
            event.reply(error_reply(stanza, "not-acceptable", str(problem)))
            return True
        reply = result_reply(stanza)
        query = reply.addElement((NS_GATEWAY, "query"))
        query.addElement("jid", content=jid)
        # XEP-0100 section 6.3: the legacy <prompt/> too, for older clients.
        query.addElement("prompt", content=jid)
        event.reply(reply)
        return True


def setup(ctx):
    if getattr(ctx.host, "translator", None) is None:
        return None  # a service that is no gateway (conferences, upload)
    translation = Translation(ctx.host.translator)
    ctx.add_feature(NS_GATEWAY)
    ctx.hook(f"iq-get/host/{NS_GATEWAY}:query", translation.prompt)
    ctx.hook(f"iq-set/host/{NS_GATEWAY}:query", translation.translate)
    return translation

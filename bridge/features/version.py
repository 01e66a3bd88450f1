"""Software version (XEP-0092) of the server; the operating system is not disclosed."""

from bridge import __version__
from bridge.core.stanza import result_reply

NS_VERSION = "jabber:iq:version"


def answer(event):
    reply = result_reply(event.stanza)
    query = reply.addElement((NS_VERSION, "query"))
    query.addElement("name", content="bridge")
    query.addElement("version", content=__version__)
    event.reply(reply)
    return True


def setup(ctx):
    ctx.add_feature(NS_VERSION)
    ctx.hook(f"iq-get/host/{NS_VERSION}:query", answer)

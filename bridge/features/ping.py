"""XMPP Ping (XEP-0199): a host answers pings to itself, and a local host to its accounts.

Pinging idle clients, the other direction, is done by the client stream
(``ping_interval_seconds``), which closes a connection that does not answer.
"""

from bridge.core.stanza import result_reply

NS_PING = "urn:xmpp:ping"


def answer(event):
    event.reply(result_reply(event.stanza))
    return True


def setup(ctx):
    ctx.add_feature(NS_PING)
    ctx.hook(f"iq-get/host/{NS_PING}:ping", answer)
    if ctx.has_accounts:
        ctx.hook(f"iq-get/bare/{NS_PING}:ping", answer)

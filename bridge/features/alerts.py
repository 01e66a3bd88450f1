"""Who may send alerts: a host's site policy on headline messages (bridge/core/sitepolicy.py).

The planning guide's alerts are headline messages (RFC 6121 section
5.2.2), which clients show as notices rather than conversations.  A
host's ``alerts`` policy ("everyone", "listed" or "admins") decides which
of its users may send them; a headline from anyone else is refused with
``forbidden`` before it is routed.  Headlines the server itself sends
(PubSub events, announcements of the admin tools) do not pass here.
"""

from bridge.core import sitepolicy
from bridge.core.hooks import POLICY
from bridge.core.stanza import error_reply


class Alerts:
    def __init__(self, ctx):
        self.ctx = ctx

    def outbound(self, event):
        """A headline from a user the policy does not let send alerts is refused."""
        stanza, sender = event.stanza, event.sender
        if stanza.name != "message" or stanza.getAttribute("type") != "headline" or sender is None:
            return False
        if sitepolicy.may_send_alerts(self.ctx.host.config, sender):
            return False
        if event.origin is not None:
            event.origin.send(error_reply(stanza, "forbidden", "only the host's alert senders send headlines"))
        return True


def setup(ctx):
    alerts = Alerts(ctx)
    ctx.hook("stanza/out", alerts.outbound, priority=POLICY)
    return alerts

"""In-band registration (XEP-0077), off by default and switched on per host.

Before authentication a client may create an account when its host has
``registration = true``.  After authentication a user may change their
password or delete their account on any host.
"""

from twisted.internet import defer
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from bridge.core.accounts import AccountError, InvalidName
from bridge.core.hooks import in_background
from bridge.core.stanza import error_reply, result_reply

NS_REGISTER = "jabber:iq:register"
NS_FEATURE = "http://jabber.org/features/iq-register"


class Registration:
    def __init__(self, ctx):
        self.ctx = ctx

    def _enabled(self, host):
        return self.ctx.config.hosts[host].registration

    def advertise(self, stream_and_features):
        stream, features = stream_and_features
        if stream.host and self._enabled(stream.host):
            features.addElement((NS_FEATURE, "register"))

    def unauthenticated(self, stream_and_iq):
        """Account creation before login; answered on the stream itself."""
        stream, iq = stream_and_iq
        if stream.host is None:
            return False
        if not self._enabled(stream.host) or (stream.listener.require_encryption and not stream.secure):
            stream.send(error_reply(iq, "service-unavailable"))
            return True
        if iq.getAttribute("type") == "get":
            reply = result_reply(iq)
            query = reply.addElement((NS_REGISTER, "query"))
            query.addElement("instructions", content="Choose a user name and password.")
            query.addElement("username")
            query.addElement("password")
            stream.send(reply)
            return True
        if iq.getAttribute("type") == "set":
            self._create(stream, iq).addErrback(stream._internal_error)
            return True
        return False

    @defer.inlineCallbacks
    def _create(self, stream, iq):
        username = str(iq.query.username or "").strip()
        password = str(iq.query.password or "")
        try:
            username = nodeprep.prepare(username)
        except UnicodeError:
            username = ""
        if not username or not password:
            stream.send(error_reply(iq, "not-acceptable", "a user name and a password are required"))
            return
        try:
            yield self.ctx.accounts.create(stream.host, username, password)
        except InvalidName as refused:
            stream.send(error_reply(iq, "not-acceptable", str(refused)))
            return
        except AccountError:
            stream.send(error_reply(iq, "conflict"))
            return
        stream.send(result_reply(iq))

    @in_background()
    @defer.inlineCallbacks
    def manage(self, event):
        """Password change and account removal by a logged-in user."""
        stanza = event.stanza
        user = event.sender.user if event.sender else None
        if user is None or event.sender.host != event.host.name:
            event.reply(error_reply(stanza, "forbidden"))
            return
        if self.ctx.accounts.directory(event.host.name) is not None:
            event.reply(error_reply(stanza, "not-allowed", "accounts of this host are managed in its directory"))
            return
        if stanza.query.remove is not None:
            event.reply(result_reply(stanza))
            yield self.ctx.accounts.delete(event.host.name, user)
            self.ctx.rosters.forget(event.sender.userhost())
            self.ctx.fire("account/deleted", event.sender.userhost())
            for session in self.ctx.sessions.resources(event.sender.userhost()):
                session.close("not-authorized", "the account was removed")
            return
        password = str(stanza.query.password or "")
        if not password:
            event.reply(error_reply(stanza, "bad-request", "a password is required"))
            return
        yield self.ctx.accounts.set_password(event.host.name, user, password)
        event.reply(result_reply(stanza))

    def status(self, event):
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_REGISTER, "query"))
        query.addElement("registered")
        if event.sender is not None and event.sender.user:
            query.addElement("username", content=event.sender.user)
        event.reply(reply)
        return True


def setup(ctx):
    registration = Registration(ctx)
    ctx.add_feature(NS_REGISTER)
    ctx.hook("stream-features/pre-auth", registration.advertise)
    ctx.hook(f"unauthenticated-iq/{NS_REGISTER}:query", registration.unauthenticated)
    ctx.hook(f"iq-get/host/{NS_REGISTER}:query", registration.status)
    ctx.hook(f"iq-set/host/{NS_REGISTER}:query", registration.manage)
    return registration

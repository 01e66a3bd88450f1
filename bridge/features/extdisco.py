"""External service discovery (XEP-0215): the STUN and TURN servers a client needs for calls (Jingle).

The host's users ask their server (``<services/>``, ``<credentials/>`` in
``urn:xmpp:extdisco:2``) which STUN and TURN servers to use.  TURN servers
want credentials; they are made here as the TURN REST API of coturn
expects (``use-auth-secret`` with ``static-auth-secret``): the user name is
"<expiry as Unix time>:<the user's bare JID>", the password the base64 of
its HMAC-SHA1 under the secret shared with the TURN server.  Nothing is
stored, and a credential stops working by itself at its expiry
(``credential_lifetime_seconds``).  Only the host's own users are
answered: a TURN server relays for whoever holds a credential.
"""

import base64
import datetime
import hashlib
import hmac

from bridge.config import parse_service_uri
from bridge.core.stanza import error_reply, result_reply

NS_EXTDISCO = "urn:xmpp:extdisco:2"


def turn_credentials(secret, bare, now, lifetime):
    """(user name, password, expiry as Unix time) of the TURN REST API for ``bare``, valid ``lifetime`` seconds."""
    expires = int(now) + lifetime
    username = f"{expires}:{bare}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii"), expires


class ExternalServices:
    def __init__(self, ctx, section):
        self.ctx = ctx
        self.services = [parse_service_uri(uri) for uri in section.services]
        self.secret = section.read_secret()
        self.lifetime = section.credential_lifetime_seconds

    def _local_user(self, event):
        sender = event.sender
        if sender is None or sender.user is None or sender.host != event.host.name:
            event.reply(error_reply(event.stanza, "forbidden", "only this server's users may ask"))
            return None
        return sender.userhost()

    def _add_service(self, parent, service, bare):
        kind, host, port, transport = service
        element = parent.addElement("service")
        element["type"], element["host"], element["port"] = kind, host, str(port)
        if transport:
            element["transport"] = transport
        if kind.startswith("turn"):
            username, password, expires = turn_credentials(self.secret, bare, self.ctx.clock.seconds(), self.lifetime)
            element["username"], element["password"] = username, password
            element["expires"] = datetime.datetime.fromtimestamp(expires, datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
            element["restricted"] = "1"

    def _reply(self, event, name, wanted):
        bare = self._local_user(event)
        if bare is None:
            return True
        reply = result_reply(event.stanza)
        answer = reply.addElement((NS_EXTDISCO, name))
        for service in self.services:
            if wanted(service):
                self._add_service(answer, service, bare)
        event.reply(reply)
        return True

    def on_services(self, event):
        """``<services/>``, all or those of one type."""
        kind = event.stanza.services.getAttribute("type")
        return self._reply(event, "services", lambda service: kind is None or service[0] == kind)

    def on_credentials(self, event):
        """``<credentials/>``: fresh credentials for the TURN service named by host (and type, port)."""
        asked = next(event.stanza.credentials.elements(NS_EXTDISCO, "service"), None)
        if asked is None or not asked.getAttribute("host"):
            event.reply(error_reply(event.stanza, "bad-request", "name the service by its host"))
            return True
        host, kind, port = asked["host"], asked.getAttribute("type"), asked.getAttribute("port")

        def wanted(service):
            return (service[1] == host and service[0].startswith("turn") and kind in (None, service[0])
                    and port in (None, str(service[2])))

        if not any(wanted(service) for service in self.services):
            event.reply(error_reply(event.stanza, "item-not-found", "no such TURN service here"))
            return True
        return self._reply(event, "credentials", wanted)


def setup(ctx):
    section = ctx.config.external_services
    if not ctx.has_accounts or not section.services:
        return None
    services = ExternalServices(ctx, section)
    ctx.add_feature(NS_EXTDISCO)
    ctx.hook(f"iq-get/host/{NS_EXTDISCO}:services", services.on_services)
    ctx.hook(f"iq-get/host/{NS_EXTDISCO}:credentials", services.on_credentials)
    return services

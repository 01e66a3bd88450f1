"""An HTTP API for calendars and ticket systems: a user's presence, and alerts (docs/operations.md, "HTTP API").

The planning guide's calendar alerts and presence integration, over the
HTTP listener under ``[api] path``, off by default:

* ``GET {path}v1/presence/USER@HOST``: ``{"jid", "status", "text",
  "resources"}``; ``status`` is "unavailable", "available", "away", "chat",
  "dnd" or "xa" (the show of the resource of highest priority).
* ``POST {path}v1/alerts`` with a JSON object: ``body`` (and ``subject``)
  for ``to`` (a bare JID or a list of them) or for ``group`` (with ``host``:
  the members of a group of the host's LDAP directory, docs/directory.md).
  Each recipient is sent a headline message from the host itself; one with
  no available resource hears of it by SMS as the SMS gateway hears of
  every headline, and by email as for a stored message, per the user's
  notification choice and within those gateways' caps.  The answer is 202
  with ``{"sent", "online"}``.

Every request carries ``Authorization: Bearer TOKEN``, the first line of
``token_file`` (0600), compared in constant time.  The token is good for
the hosts of ``[api] hosts`` (empty: every host).  Errors are JSON
``{"error": text}``: 400 malformed, 401 no or a wrong token, 403 a host the
token is not for, 404 unknown user, group or path, 405, 413 a body past
``max_request_bytes``.
"""

import dataclasses
import hmac
import json

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from bridge.core.directory import DirectoryUnavailable
from bridge.core.stanza import make, parse_jid

log = Logger()

SHOWS = ("away", "chat", "dnd", "xa")
JSON_TYPE = ("Content-Type", "application/json")


class APIError(Exception):
    """A request refused: its HTTP status and the reason given to the caller."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def presence_summary(bare, sessions):
    """The presence of an account from its available sessions: what ``GET presence`` answers."""
    if not sessions:
        return {"jid": bare, "status": "unavailable", "text": "", "resources": 0}
    best = max(sessions, key=lambda session: session.priority)
    show = _child_text(best.presence, "show")
    return {"jid": bare, "status": show if show in SHOWS else "available",
            "text": _child_text(best.presence, "status"), "resources": len(sessions)}


def _child_text(stanza, name):
    if stanza is None:
        return ""
    return next((str(child) for child in stanza.elements() if child.name == name), "")


def bearer_token(headers):
    """The token of an ``Authorization: Bearer`` header (bytes), or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8")


def parse_alert(body, max_recipients, max_text_bytes):
    """(recipients, group, host, subject, text) of an alert request's JSON body, or raise ``APIError`` 400."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise APIError(400, "the body is not JSON") from None
    if not isinstance(document, dict):
        raise APIError(400, "the body must be a JSON object")
    unknown = set(document) - {"to", "group", "host", "subject", "body"}
    if unknown:
        raise APIError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    text, subject = document.get("body"), document.get("subject", "")
    if not isinstance(text, str) or not text.strip() or not isinstance(subject, str):
        raise APIError(400, "body must be a non-empty string, subject a string")
    if len(text.encode("utf-8")) + len(subject.encode("utf-8")) > max_text_bytes:
        raise APIError(413, f"body and subject may take at most {max_text_bytes} bytes")
    to, group, host = document.get("to"), document.get("group"), document.get("host")
    if (to is None) == (group is None):
        raise APIError(400, "give either to (a JID or a list of JIDs) or group (with host)")
    if group is not None:
        if not isinstance(group, str) or not isinstance(host, str):
            raise APIError(400, "group and host must be strings")
        return [], group, host.lower(), subject, text
    recipients = [to] if isinstance(to, str) else to
    if not isinstance(recipients, list) or not recipients or not all(isinstance(jid, str) for jid in recipients):
        raise APIError(400, "to must be a JID or a non-empty list of JIDs")
    if len(recipients) > max_recipients:
        raise APIError(413, f"at most {max_recipients} recipients")
    return [_bare_jid(jid) for jid in recipients], None, None, subject, text


def _bare_jid(text):
    jid = parse_jid(text)
    if jid is None or not jid.user or jid.resource:
        raise APIError(400, f"{text!r} is not a bare JID (user@host)")
    return jid.userhost()


class HTTPAPI:
    """The API's requests under ``[api] path`` of the HTTP listener (``bridge.gateways.http``)."""

    def __init__(self, ctx, config, token):
        self.ctx = ctx
        self.config = config
        self.token = token

    # -- lifetime (the Gateway shape of tap.py) -------------------------------------

    def listeners(self):
        return []

    def start(self):
        self.ctx.serve_http(self.config.path, self)

    def stop(self):
        pass

    def prepare_reload(self, config):
        """A reloaded [api] section: its token file is read now (one that cannot be read refuses the reload);
        the path stays until a restart."""
        token = config.read_token().encode("utf-8")
        return lambda: self._configure(config, token)

    def _configure(self, config, token):
        # The path stays the one served since the start: the listener's routes are not reloaded.
        self.config = dataclasses.replace(config, path=self.config.path)
        self.token = token

    # -- requests -------------------------------------------------------------------

    def open_body(self, method, path, query, headers):
        """Bodies are small JSON documents, read in memory within the listener's bound."""
        return None

    def handle(self, request, responder):
        d = defer.maybeDeferred(self._answer, request)
        d.addCallback(lambda answer: self._respond(responder, *answer))
        d.addErrback(self._failed, request, responder)

    def _respond(self, responder, status, document):
        responder.respond(status, [JSON_TYPE, ("Cache-Control", "no-store")],
                          json.dumps(document).encode("utf-8") + b"\n")

    def _failed(self, failure, request, responder):
        if failure.check(APIError):
            status, reason = failure.value.status, failure.value.reason
        else:
            log.failure("API request {request!r} failed", failure, request=request)
            status, reason = 500, "internal error"
        headers = [JSON_TYPE]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="bridge"'))
        responder.respond(status, headers, json.dumps({"error": reason}).encode("utf-8") + b"\n")

    def _answer(self, request):
        token = bearer_token(request.headers)
        if token is None or not hmac.compare_digest(token, self.token):
            raise APIError(401, "a valid bearer token is needed")
        if len(request.body) > self.config.max_request_bytes:
            raise APIError(413, f"a request body may have at most {self.config.max_request_bytes} bytes")
        route = request.path[len(self.config.path):]
        if route.startswith("v1/presence/"):
            if request.method != "GET":
                raise APIError(405, "presence is read with GET")
            return self._presence(route[len("v1/presence/"):])
        if route == "v1/alerts":
            if request.method != "POST":
                raise APIError(405, "alerts are sent with POST")
            return self._alert(request.body)
        raise APIError(404, f"no such API path: {request.path}")

    def _host_of(self, bare):
        """The local host of ``bare``, if the token is for it; else raise 403 (or 404: not hosted here)."""
        host = self.ctx.local_host(bare.split("@", 1)[1])
        if host is None:
            raise APIError(404, f"{bare.split('@', 1)[1]} is not hosted here")
        if self.config.hosts and host not in self.config.hosts:
            raise APIError(403, f"the token is not for {host}")
        return host

    @defer.inlineCallbacks
    def _presence(self, text):
        bare = _bare_jid(text)
        host = self._host_of(bare)
        user = bare.split("@", 1)[0]
        bare = f"{user}@{host}"
        if not (yield self.ctx.accounts.exists(host, user)):
            raise APIError(404, f"no user {bare}")
        return 200, presence_summary(bare, self.ctx.sessions.available(bare))

    @defer.inlineCallbacks
    def _alert(self, body):
        recipients, group, host, subject, text = parse_alert(body, self.config.max_recipients,
                                                             self.config.max_alert_text_bytes)
        if group is not None:
            recipients = yield self._group_members(group, host)
        accounts = []
        for bare in dict.fromkeys(recipients):
            host = self._host_of(bare)
            user = bare.split("@", 1)[0]
            if not (yield self.ctx.accounts.exists(host, user)):
                raise APIError(404, f"no user {bare}")
            accounts.append((f"{user}@{host}", host))
        online = 0
        for bare, host in accounts:
            alert = make("message", to=bare, sender=host, type="headline")
            if subject:
                alert.addElement("subject", content=subject)
            alert.addElement("body", content=text)
            online += bool(self.ctx.sessions.available(bare))
            self.ctx.route(alert)
        log.info("API alert sent to {count} users ({online} online)", count=len(accounts), online=online)
        return 202, {"sent": len(accounts), "online": online}

    @defer.inlineCallbacks
    def _group_members(self, group, host):
        """The bare JIDs of the members of a directory group of ``host``."""
        name = self.ctx.local_host(host)
        if name is None:
            raise APIError(404, f"{host} is not hosted here")
        directory = self.ctx.accounts.directory(name)
        if directory is None:
            raise APIError(404, f"{name} has no directory groups")
        try:
            groups = yield directory.groups()
        except DirectoryUnavailable:
            raise APIError(503, "the directory does not answer") from None
        if group not in groups:
            raise APIError(404, f"no group {group!r} on {name}")
        members = []
        for uid in groups[group]:
            try:
                members.append(f"{nodeprep.prepare(uid)}@{name}")
            except UnicodeError:
                continue  # not a JID's local part: nobody logs in with it
        if len(members) > self.config.max_recipients:
            raise APIError(413, f"the group has more than {self.config.max_recipients} members")
        return members


def attach(ctx, reactor, tls_context):
    """The API of ``ctx.config`` (the [api] section), or None when it is off."""
    if not ctx.config.enabled:
        return None
    return HTTPAPI(ctx, ctx.config, ctx.config.read_token().encode("utf-8"))

"""Push Notifications (XEP-0357): a phone asleep in a pocket hears of new messages through its app server.

A client registers its app server with ``<enable xmlns='urn:xmpp:push:0'
jid='APP SERVER' node='NODE'/>`` (optionally carrying a publish-options data
form, often with a secret) in an IQ set from one of the account's own
resources, and removes it with ``<disable jid='...' node='...'/>`` (without a
node: every node at that app server).  Registrations are kept per account in
storage and outlive a restart.  A registration belongs to the client that
made it (XEP-0357 section 5), so each remembers the resource that enabled
it; enabling the same jid and node again replaces it, for the resource that
did so.

A push is a pubsub publish, from the account's bare JID to the app server,
of a ``urn:xmpp:push:summary`` form (message-count, last-message-sender,
and last-message-body only when ``[push] include_body`` says so), with the
publish-options given at enable.  It is sent for a message that interests
the user (one with a body, an end-to-end encrypted one, a call proposal;
never chat states, receipts or markers alone, nor errors, headlines or
groupchat) that is

- delivered to a session that XEP-0198 holds for resumption (its connection
  dropped): to the registrations of that session's resource, as Prosody's
  mod_cloud_notify and ejabberd's mod_push tell only the sleeping client;
- stored offline for an account with no available session
  (``offline/stored``): to every registration of the account.

Bounds: a registration is told at most once per ``[push]
min_interval_seconds``; messages within that time are counted and told in
one push at its end.  One message causes at most one push per registration:
a message pushed for a held session that, when the session ends unresumed,
goes on to offline storage is recognised (by the stanza object, weakly) and
not pushed again.  An account keeps at most
``[quotas] max_push_registrations_per_user`` registrations, of at most
``max_push_bytes_per_user`` bytes together.

An app server that answers a push with an error of any type but ``wait``
(item-not-found, not-authorized, forbidden...) has lost the registration: it
is removed, and that is logged once.  A push with no answer within
``reply_timeout_seconds`` is forgotten quietly.
"""

import base64
import os
import weakref

from twisted.internet import defer
from twisted.logger import Logger

from bridge.core.hooks import OBSERVE, in_background
from bridge.core.stanza import NS_DATA, NS_STANZAS, error_reply, first_child, make, parse_jid, result_reply, simple_form
from bridge.core.storage import stored_bytes
from bridge.core.storage.cache import DocumentCache, KeyedLock
from bridge.core.xmlstream import parse_element, serialize

log = Logger()

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_CLIENT = "jabber:client"
SUMMARY = "urn:xmpp:push:summary"
STORE = "push"
# Accounts whose registrations stay in memory (each at most max_push_bytes_per_user).
CACHED_ACCOUNTS = 1000
# Beside a <body/>, what makes a message worth waking a phone for: end-to-end encryption
# (OMEMO, in its old and new namespaces; OpenPGP for XMPP; legacy OpenPGP) and a call proposal (XEP-0353).
INTERESTING = frozenset((("eu.siacs.conversations.axolotl", "encrypted"), ("urn:xmpp:omemo:2", "encrypted"),
                         ("urn:xmpp:openpgp:0", "openpgp"), ("jabber:x:encrypted", "x"),
                         ("urn:xmpp:jingle-message:0", "propose")))


def interesting(stanza):
    """Whether a message is one the user would want to be woken for."""
    if stanza.name != "message" or stanza.getAttribute("type") in ("error", "groupchat", "headline"):
        return False
    for child in stanza.elements():
        if (child.name == "body" and child.uri in (None, NS_CLIENT)) or (child.uri, child.name) in INTERESTING:
            return True
    return False


def body_of(stanza):
    for child in stanza.elements():
        if child.name == "body" and child.uri in (None, NS_CLIENT):
            return str(child)
    return None


def summary_form(count, sender, body):
    """The urn:xmpp:push:summary form of a push."""
    return simple_form("submit", SUMMARY, (("message-count", str(count)), ("last-message-sender", sender),
                                           ("last-message-body", body)))


class Window:
    """The time after a push to one registration during which further messages are only counted."""

    def __init__(self, host, user, registration, timer):
        self.host = host
        self.user = user
        self.registration = registration
        self.timer = timer
        self.count = 0
        self.sender = None
        self.body = None


class Awaited:
    """A push sent, waiting for the app server's answer."""

    def __init__(self, host, user, registration, timer):
        self.host = host
        self.user = user
        self.registration = registration
        self.timer = timer


class Push:
    def __init__(self, ctx):
        self.ctx = ctx
        self.settings = ctx.config.push
        self.max_registrations = ctx.config.quotas.max_push_registrations_per_user
        self.max_bytes = ctx.config.quotas.max_push_bytes_per_user
        self.registrations = DocumentCache(ctx.storage, STORE, decode=lambda stored: stored or [],
                                           encode=lambda document: document or None, limit=CACHED_ACCOUNTS,
                                           caches=ctx.document_caches)
        self._changes = KeyedLock()  # one account's registrations are changed one request at a time
        self._windows = {}  # registration id -> Window, while pushes to it are held back
        self._awaited = {}  # IQ id -> Awaited
        self._told = weakref.WeakKeyDictionary()  # message -> ids of the registrations pushed for it

    # -- enable and disable ------------------------------------------------------------

    def _client(self, event):
        """The session of the account's own that sent ``event``; else it is answered forbidden and None."""
        if not event.from_owner():
            return None
        session = self.ctx.sessions.get(event.sender.full())
        if session is None:
            event.reply(error_reply(event.stanza, "forbidden", "push is enabled by a resource of the account"))
        return session

    @in_background()
    def enable(self, event):
        session = self._client(event)
        if session is None:
            return None
        request = first_child(event.stanza)
        app_server = parse_jid(request.getAttribute("jid"))
        node = request.getAttribute("node")
        forms = [child for child in request.elements() if child.uri == NS_DATA and child.name == "x"]
        if app_server is None or not node or len(forms) > 1 or \
                (forms and forms[0].getAttribute("type", "submit") != "submit"):
            event.reply(error_reply(event.stanza, "bad-request",
                                    "enable needs the app server's jid, a node and at most one submitted form"))
            return None
        registration = {"id": base64.urlsafe_b64encode(os.urandom(12)).decode("ascii"), "jid": app_server.full(),
                        "node": node, "resource": session.jid.resource,
                        "options": serialize(forms[0]) if forms else None}
        return self._changes.run((event.host.name, event.to.user), self._enable, event, registration)

    @defer.inlineCallbacks
    def _enable(self, event, registration):
        host, user = event.host.name, event.to.user
        document = yield self.registrations.load(host, user)
        replaced = [r for r in document if (r["jid"], r["node"]) == (registration["jid"], registration["node"])]
        kept = [r for r in document if r not in replaced] + [registration]
        if len(kept) > self.max_registrations:
            event.reply(error_reply(event.stanza, "resource-constraint",
                                    f"at most {self.max_registrations} push registrations per account"))
            return
        if stored_bytes(kept) > self.max_bytes:
            event.reply(error_reply(event.stanza, "resource-constraint",
                                    f"push registrations are limited to {self.max_bytes} bytes per account"))
            return
        document[:] = kept
        yield self.registrations.save(host, user, document)
        self._forget(replaced)
        event.reply(result_reply(event.stanza))

    @in_background()
    def disable(self, event):
        if self._client(event) is None:
            return None
        request = first_child(event.stanza)
        app_server = parse_jid(request.getAttribute("jid"))
        if app_server is None:
            event.reply(error_reply(event.stanza, "bad-request", "disable needs the app server's jid"))
            return None
        node = request.getAttribute("node")

        def matches(registration):
            return registration["jid"] == app_server.full() and node in (None, registration["node"])

        d = self._changes.run((event.host.name, event.to.user), self._remove, event.host.name, event.to.user, matches)
        d.addCallback(lambda _: event.reply(result_reply(event.stanza)))
        return d

    @defer.inlineCallbacks
    def _remove(self, host, user, matches):
        """Remove the registrations of an account that ``matches``; the removed ones."""
        document = yield self.registrations.load(host, user)
        removed = [r for r in document if matches(r)]
        if removed:
            document[:] = [r for r in document if not matches(r)]
            yield self.registrations.save(host, user, document)
            self._forget(removed)
        return removed

    def _forget(self, registrations):
        """Stop holding back pushes to registrations that are gone."""
        for registration in registrations:
            window = self._windows.pop(registration["id"], None)
            if window is not None and window.timer.active():
                window.timer.cancel()

    def forget_account(self, bare):
        """``account/deleted``: storage dropped the account's registrations; so does memory."""
        jid = parse_jid(bare)
        self._forget(self.registrations.cached(jid.host, jid.user, ()))
        self.registrations.forget(jid.host, jid.user)
        return False

    # -- when to push -------------------------------------------------------------------

    def delivering(self, payload):
        """``message/delivering``: a message for sessions held for resumption tells their clients' app servers."""
        event, sessions = payload
        held = [session for session in sessions if session.sm is not None and session.sm.awaiting_resumption]
        if held and interesting(event.stanza):
            for session in held:
                self._notify(session.jid.host, session.jid.user, event.stanza, session.jid.resource)
        return False

    def stored(self, payload):
        """``offline/stored``: a message kept for an account with no available session tells all its app servers."""
        host, user, stanza = payload
        if interesting(stanza):
            self._notify(host, user, stanza, None)
        return False

    def _notify(self, host, user, stanza, resource):
        d = self.registrations.load(host, user)
        d.addCallback(self._tell, host, user, stanza, resource)
        d.addErrback(lambda failure: log.failure("push for {user}@{host} not sent", failure, user=user, host=host))

    def _tell(self, document, host, user, stanza, resource):
        """Push ``stanza`` to the account's registrations (of ``resource`` only, if given), once each."""
        if not document:
            return
        told = self._told.setdefault(stanza, set())
        for registration in list(document):
            if (resource is not None and registration["resource"] != resource) or registration["id"] in told:
                continue
            told.add(registration["id"])
            sender = stanza.getAttribute("from")
            body = body_of(stanza) if self.settings.include_body else None
            window = self._windows.get(registration["id"])
            if window is None:
                self._publish(host, user, registration, 1, sender, body)
            else:
                window.count += 1
                window.sender, window.body = sender, body

    def _hold_back(self, host, user, registration):
        timer = self.ctx.clock.callLater(self.settings.min_interval_seconds, self._window_over, registration["id"])
        self._windows[registration["id"]] = Window(host, user, registration, timer)

    def _window_over(self, registration_id):
        window = self._windows.pop(registration_id)
        if window.count:
            self._publish(window.host, window.user, window.registration, window.count, window.sender, window.body)

    # -- the push and its answer --------------------------------------------------------

    def _publish(self, host, user, registration, count, sender, body):
        iq_id = "push-" + base64.urlsafe_b64encode(os.urandom(9)).decode("ascii")
        iq = make("iq", to=registration["jid"], sender=f"{user}@{host}", type="set", id=iq_id)
        pubsub = iq.addElement((NS_PUBSUB, "pubsub"))
        publish = pubsub.addElement("publish")
        publish["node"] = registration["node"]
        publish.addElement("item").addElement((NS_PUSH, "notification")).addChild(summary_form(count, sender, body))
        if registration["options"]:
            pubsub.addElement("publish-options").addChild(parse_element(registration["options"]))
        self._hold_back(host, user, registration)
        timer = self.ctx.clock.callLater(self.settings.reply_timeout_seconds, self._awaited.pop, iq_id, None)
        self._awaited[iq_id] = Awaited(host, user, registration, timer)
        self.ctx.route(iq)

    def answered(self, event):
        """``iq-result/bare``, ``iq-error/bare``: the app server's answer to a push, if it is one."""
        stanza = event.stanza
        iq_id = stanza.getAttribute("id")
        awaited = self._awaited.get(iq_id)
        sender = parse_jid(stanza.getAttribute("from"))
        if awaited is None or f"{awaited.user}@{awaited.host}" != event.to.userhost() or \
                sender is None or sender.full() != awaited.registration["jid"]:
            return False
        del self._awaited[iq_id]
        if awaited.timer.active():
            awaited.timer.cancel()
        if stanza.getAttribute("type") == "error":
            error = stanza.error
            kind = error.getAttribute("type") if error is not None else None
            if kind != "wait":
                condition = next((child.name for child in error.elements() if child.uri == NS_STANZAS),
                                 "undefined-condition") if error is not None else "undefined-condition"
                self._disable_failed(awaited, condition)
        return True

    def _disable_failed(self, awaited, condition):
        registration = awaited.registration
        d = self._changes.run((awaited.host, awaited.user), self._remove, awaited.host, awaited.user,
                              lambda r: r["id"] == registration["id"])

        def removed(gone):
            if gone:
                log.info("push to {app} node {node} for {user}@{host} disabled: the app server answered {condition}",
                         app=registration["jid"], node=registration["node"], user=awaited.user, host=awaited.host,
                         condition=condition)

        d.addCallback(removed)
        d.addErrback(lambda failure: log.failure("push registration not removed", failure))


def setup(ctx):
    push = Push(ctx)
    ctx.add_feature(NS_PUSH, where="account")
    ctx.hook(f"iq-set/bare/{NS_PUSH}:enable", push.enable)
    ctx.hook(f"iq-set/bare/{NS_PUSH}:disable", push.disable)
    ctx.hook("message/delivering", push.delivering, priority=OBSERVE)
    ctx.hook("offline/stored", push.stored, priority=OBSERVE)
    ctx.hook("iq-result/bare", push.answered)
    ctx.hook("iq-error/bare", push.answered)
    ctx.hook("account/deleted", push.forget_account)
    return push

"""SIMPLE presence: SUBSCRIBE, NOTIFY and PUBLISH for the presence event (docs/sip.md, Presence).

``SimplePresence`` is what the gateway calls for SUBSCRIBE, NOTIFY and
PUBLISH (``request_received(transaction, request)``).  It keeps everything
in memory, on the clock it is given:

* **Watchers** (RFC 3856, RFC 6665).  A SUBSCRIBE for ``Event: presence``
  from a SIP user, authenticated with digest exactly as REGISTER is (the
  registrar's authenticator, the account's HA1), to a local XMPP account
  creates a dialog.  The roster decides, as for an XMPP contact: the
  presentity's roster item for the watcher's bare JID must have
  subscription ``from`` or ``both``, unless the host's site policy
  (``presence_access`` "domain" or "everyone") lets the watcher see it
  anyway, so a SIP-only user is seen by colleagues.  Otherwise the
  subscription is pending and ``<presence type='subscribe'/>`` is said by the watcher's phone session
  (``phones.py``) to the presentity, whose client shows the request; the ``subscribed`` that
  approves it (or ``unsubscribed`` that refuses it) is seen on its way to
  the watcher (hook ``presence/bare``) and activates (or terminates) the
  SIP subscription.  The answer is 200 (active) or 202 (pending) with
  Expires, then a NOTIFY at once, and one whenever the presentity's
  presence changes (hooks ``pre-presence/self`` and ``session/ended``).
  Refresh and un-SUBSCRIBE (Expires: 0) come inside the dialog; expiry
  ends the subscription with a ``terminated;reason=timeout`` NOTIFY.
* **Publications** (RFC 3903).  A PUBLISH with a PIDF body from a SIP user
  for their own address becomes the presence of the user's phone session
  (``alice@localhost/sip``), said through the one way in: the presence
  module sends it to the roster's subscribers and the user's own resources,
  and answers probes with it, as for any client.  An entity tag
  (SIP-ETag, SIP-If-Match) refreshes or modifies it; expiry or Expires: 0
  removes it, which is said as unavailable presence.  RPID activities and
  moods in it become the user's PEP activity (XEP-0108) and mood
  (XEP-0107), published by the phone session when they change and
  withdrawn (an empty payload) when they go or the publication ends.
* **NOTIFY received**: one of a dialog of ``watch.ForeignWatch`` (an XMPP
  user watching a foreign SIP presentity) is handed to it; any other is
  answered 481.

The PIDF and Subscription-State translation is the pure functions of
``presence.py``.
"""

import dataclasses
import secrets

from twisted.internet import defer
from twisted.logger import Logger

from bridge.core import sitepolicy
from bridge.core.hooks import OBSERVE
from bridge.core.pubsub import NS_PUBSUB
from bridge.core.stanza import make, priority_of
from bridge.gateways.sip import presence as pidf
from bridge.gateways.sip.addressing import local_user
from bridge.gateways.sip.message import GrammarError, Request, make_response
from bridge.gateways.sip.phones import PRIORITY

log = Logger()

METHODS = ("SUBSCRIBE", "NOTIFY", "PUBLISH")


@dataclasses.dataclass(eq=False)
class Subscription:
    """A SIP watcher's subscription to a local user's presence: one dialog (RFC 6665 4.1.2.3)."""

    presentity: str  # bare JID watched
    watcher: str  # bare JID of the authenticated SIP user
    call_id: str
    local_tag: str
    remote_tag: str
    local: object  # Address: the SUBSCRIBE's To (our From in NOTIFY), without tag
    remote: object  # Address: the SUBSCRIBE's From (our To in NOTIFY), without tag
    remote_target: str  # the watcher's Contact URI
    route_set: list
    event: str  # the Event value to echo (with its id)
    transport: object
    address: tuple
    remote_cseq: int
    expires_at: float = 0.0
    state: str = "pending"  # active, pending, terminated
    cseq: int = dataclasses.field(default_factory=lambda: secrets.randbelow(2**16) + 1)
    timer: object = None
    last_body: bytes = None

    @property
    def key(self):
        return (self.call_id, self.remote_tag, self.local_tag)

    def remaining(self, now):
        return max(0, int(round(self.expires_at - now)))


@dataclasses.dataclass(eq=False)
class Publication:
    """One event state published by a SIP user (RFC 3903), known by its entity tag."""

    etag: str
    bare: str
    availability: object  # presence.Availability
    rich: tuple  # the XEP-0108 <activity/> and XEP-0107 <mood/> of the document
    expires_at: float
    updated: int
    timer: object = None


class SimplePresence:
    """SUBSCRIBE/NOTIFY/PUBLISH for ``Event: presence``: one per SIP gateway."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.ctx = gateway.ctx
        self.clock = gateway.clock
        self.registrar = gateway.registrar
        self.phones = gateway.phones
        sip = gateway.sip
        self.expiry = dict(default=sip.default_expires_seconds, minimum=sip.min_expires_seconds,
                           maximum=sip.max_expires_seconds)
        self.subscriptions = {}  # (Call-ID, remote tag, local tag) -> Subscription
        self.publications = {}  # entity tag -> Publication
        self._notifies = {}  # NOTIFY client transaction -> Subscription
        self._updates = 0
        # (host, user) -> the XML of the activity and mood last published to their PEP (not empty ones)
        self.rich_published = {}
        self._rich_ids = 0
        self.ctx.hook_local("pre-presence/self", self._own_presence, OBSERVE)
        self.ctx.hook_local("session/ended", self._session_ended)
        self.ctx.hook_local("presence/bare", self._inbound_presence, OBSERVE)

    def stop(self):
        """Cancel every timer (subscriptions and publications are soft state)."""
        for item in list(self.subscriptions.values()) + list(self.publications.values()):
            if item.timer is not None and item.timer.active():
                item.timer.cancel()
        self.subscriptions.clear()
        self.publications.clear()

    # -- requests ----------------------------------------------------------------

    def request_received(self, transaction, request):
        """Handle a SUBSCRIBE, NOTIFY or PUBLISH server transaction; a Deferred (for tests)."""
        handler = {"SUBSCRIBE": self._subscribe, "PUBLISH": self._publish,
                   "NOTIFY": self._notify_received}.get(request.method)
        if handler is None:
            self._respond(transaction, self._response(request, 501))
            return defer.succeed(None)
        d = defer.maybeDeferred(handler, transaction, request)
        d.addCallback(self._answer, transaction)
        d.addErrback(self._failed, transaction, request)
        return d

    handle = request_received  # the gateway's dispatch point (SIPGateway.simple)

    def _answer(self, outcome, transaction):
        response, then = outcome if isinstance(outcome, tuple) else (outcome, None)
        self._respond(transaction, response)
        if then is not None:
            then()

    def _failed(self, failure, transaction, request):
        log.failure("SIP {method} could not be handled", failure, method=request.method)
        self._respond(transaction, self._response(request, 500))

    def _response(self, request, status, reason=None, tag=None):
        return make_response(request, status, reason, to_tag=tag or secrets.token_hex(6))

    def _respond(self, transaction, response):
        if response.headers.get("Server") is None:
            response.headers.add("Server", self.gateway.agent)
        try:
            transaction.respond(response)
        except ValueError:
            log.info("SIP response {status} not sent: the transaction is over", status=response.status)

    def _bad_event(self, request):
        response = self._response(request, 489)
        response.headers.add("Allow-Events", pidf.PRESENCE_EVENT)
        return response

    def _expires(self, request):
        """The granted expiry, or the response refusing the request's Expires."""
        header = request.headers.get("Expires")
        try:
            requested = int(header) if header is not None else None
            if requested is not None and requested < 0:
                raise ValueError(header)
            return pidf.negotiate_expires(requested, **self.expiry), None
        except pidf.IntervalTooBrief as e:
            response = self._response(request, 423)
            response.headers.add("Min-Expires", str(e.minimum))
            return None, response
        except ValueError:
            return None, self._response(request, 400, "Bad Request (bad Expires)")

    def _local(self, uri):
        """(host, user) an address names, as the registrar reads an address of record, or None."""
        user = local_user(uri) if uri.scheme in ("sip", "sips") else None
        return None if user is None else (self.registrar.host_for(uri.host), user)

    @defer.inlineCallbacks
    def _authenticate(self, request, source):
        """((host, user), None) when digest authenticates the From user, else (None, response)."""
        try:
            sender = request.from_address
        except GrammarError:
            return None, self._response(request, 400, "Bad Request (bad From)")
        local = self._local(sender.uri)
        if local is None:
            return None, self._response(request, 403, "Forbidden (From is not a local user)")
        host, user = local
        refusal = yield self.registrar.authenticate(request, host, user, host, source)
        if refusal is not None:
            return None, refusal
        return (host, user), None

    @defer.inlineCallbacks
    def _account(self, uri):
        """The bare JID of the local account ``uri`` names, or None."""
        local = self._local(uri)
        if local is None:
            return None
        host, user = local
        exists = yield self.ctx.accounts.exists(host, user)
        return f"{user}@{host}" if exists else None

    # -- SUBSCRIBE (RFC 6665 4.2.1, RFC 3856) -----------------------------------

    @defer.inlineCallbacks
    def _subscribe(self, transaction, request):
        if not pidf.is_presence_event(request.headers.get("Event")):
            return self._bad_event(request)
        if not pidf.accepts_pidf(request.headers.get_all("Accept")):
            response = self._response(request, 406)
            response.headers.add("Accept", pidf.PIDF_CONTENT_TYPE)
            return response
        expires, refusal = self._expires(request)
        if refusal is not None:
            return refusal
        try:
            sender, to = request.from_address, request.to_address
            contacts = [c for c in request.contacts if c != "*"]
        except GrammarError:
            return self._response(request, 400, "Bad Request (bad From, To or Contact)")
        if not sender.tag:
            return self._response(request, 400, "Bad Request (From without a tag)")
        account, refusal = yield self._authenticate(request, transaction.address)
        if refusal is not None:
            return refusal
        watcher = "@".join(reversed(account))
        if to.tag:
            return (yield self._resubscribe(transaction, request, expires, watcher, contacts))
        if len(contacts) != 1:
            return self._response(request, 400, "Bad Request (a SUBSCRIBE needs one Contact)")
        presentity = yield self._account(request.uri)
        if presentity is None:
            return self._response(request, 404)
        authorised = yield self._authorised(presentity, watcher)
        local_tag = secrets.token_hex(6)
        sub = Subscription(
            presentity=presentity, watcher=watcher, call_id=request.call_id, local_tag=local_tag,
            remote_tag=sender.tag, local=dataclasses.replace(to, params={}),
            remote=dataclasses.replace(sender, params={}), remote_target=str(contacts[0].uri),
            route_set=request.headers.get_all("Record-Route"), event=request.headers.get("Event"),
            transport=transaction.transport, address=transaction.address,
            remote_cseq=request.cseq.number, state="active" if authorised else "pending")
        if not authorised:
            # As for an XMPP contact: the watcher asks, the user is shown the request and decides.
            self.phones.submit(*account, make("presence", to=presentity, type="subscribe"))
        response = self._accepted(request, sub, expires)
        if expires == 0:  # a fetch (RFC 6665 4.4.3): one NOTIFY, no subscription
            return response, lambda: self._end(sub, "timeout")
        self.subscriptions[sub.key] = sub
        self._arm(sub, expires)
        log.info("SIP {watcher} subscribed to the presence of {presentity}: {state}",
                 watcher=watcher, presentity=presentity, state=sub.state)
        return response, lambda: self._send_notify(sub)

    @defer.inlineCallbacks
    def _resubscribe(self, transaction, request, expires, watcher, contacts):
        """A refresh or un-SUBSCRIBE inside the dialog (RFC 6665 4.2.1.2, 4.2.1.3)."""
        sub = self.subscriptions.get((request.call_id, request.from_address.tag, request.to_address.tag))
        if sub is None or sub.watcher != watcher:
            return self._response(request, 481)
        if request.cseq.number <= sub.remote_cseq:
            return self._response(request, 500, "Server Internal Error (CSeq out of order)")
        sub.remote_cseq = request.cseq.number
        if contacts:
            sub.remote_target = str(contacts[0].uri)
        if expires == 0:
            self._forget(sub)
            return self._accepted(request, sub, 0), lambda: self._end(sub, "timeout")
        if sub.state == "pending" and (yield self._authorised(sub.presentity, watcher)):
            sub.state = "active"
        self._arm(sub, expires)
        sub.last_body = None  # a refresh is answered with the full state
        return self._accepted(request, sub, expires), lambda: self._send_notify(sub)

    def _accepted(self, request, sub, expires):
        response = self._response(request, 200 if sub.state == "active" else 202, tag=sub.local_tag)
        response.headers.add("Expires", str(expires))
        response.headers.add("Contact", self._contact(sub.presentity, sub.transport))
        return response

    @defer.inlineCallbacks
    def _authorised(self, presentity, watcher):
        """True when ``watcher`` may see ``presentity``'s presence: the roster's from/both, oneself, or the
        site policy of the presentity's host (``presence_access``, bridge/core/sitepolicy.py)."""
        if presentity == watcher:
            return True
        host = self.ctx.local_host(presentity.split("@", 1)[1])
        if host is not None and sitepolicy.sees_presence(self.ctx.host_config(host), host, watcher):
            return True
        roster = yield self.ctx.rosters.load(presentity)
        item = roster.get(watcher)
        return item is not None and item.has_from

    def _arm(self, sub, expires):
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.expires_at = self.clock.seconds() + expires
        sub.timer = self.clock.callLater(expires, self._expired, sub)

    def _expired(self, sub):
        sub.timer = None
        if self.subscriptions.get(sub.key) is sub:
            self._forget(sub)
            self._end(sub, "timeout")

    def _forget(self, sub):
        if self.subscriptions.get(sub.key) is sub:
            del self.subscriptions[sub.key]
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.timer = None

    def _end(self, sub, reason):
        """Forget ``sub`` and send its final NOTIFY (with the state, if it was active)."""
        self._forget(sub)
        self._send_notify(sub, final=reason)
        sub.state = "terminated"

    # -- NOTIFY to watchers ---------------------------------------------------------

    def _contact(self, bare, transport):
        host, port = self.gateway.sent_by(transport)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        user = bare.split("@", 1)[0]
        name = getattr(transport, "name", "UDP")
        params = "" if name == "UDP" else f";transport={name.lower()}"
        return f"<sip:{user}@{host}:{port}{params}>"

    def tuples_of(self, bare, changed=None, gone=None):
        """[(tuple id, Availability)] of ``bare``'s resources (its phone session among them), most relevant first.

        ``changed`` is (session, presence stanza or None) for a presence not yet stored in the
        session; ``gone`` a session that is ending.
        """
        entries = []
        for session in self.ctx.sessions.resources(bare):
            if session is gone:
                continue
            stanza = session.presence
            if changed is not None and session is changed[0]:
                stanza = changed[1]
            if stanza is None:
                continue
            try:
                state = pidf.availability_from_stanza(stanza)
            except ValueError:
                continue
            if state.available:
                entries.append((-priority_of(stanza), session.jid.resource or "", state))
        entries.sort(key=lambda entry: entry[:2])
        if not entries:
            return [(pidf.tuple_id_for(None), pidf.Availability(False))]
        return [(pidf.tuple_id_for(resource), state) for _, resource, state in entries]

    def _body(self, bare, changed=None, gone=None):
        return pidf.build_pidf(f"sip:{bare}", self.tuples_of(bare, changed, gone))

    def _send_notify(self, sub, body=None, final=None):
        """Send a NOTIFY in ``sub``'s dialog: its current state, or ``terminated;reason=final``."""
        now = self.clock.seconds()
        if final is not None:
            state = f"terminated;reason={final}"
        elif sub.state == "active":
            state = f"active;expires={sub.remaining(now)}"
        else:
            state = f"pending;expires={sub.remaining(now)}"
        if sub.state == "active" and final != "rejected":
            body = body if body is not None else self._body(sub.presentity)
        else:
            body = None  # nothing of the presence until the user decides
        sub.cseq += 1
        request = Request("NOTIFY", sub.remote_target)
        headers = request.headers
        headers.add("Via", self.gateway.via_for(sub.transport))
        for route in sub.route_set:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", dataclasses.replace(sub.local, params={"tag": sub.local_tag}))
        headers.add("To", dataclasses.replace(sub.remote, params={"tag": sub.remote_tag}))
        headers.add("Call-ID", sub.call_id)
        headers.add("CSeq", f"{sub.cseq} NOTIFY")
        headers.add("Contact", self._contact(sub.presentity, sub.transport))
        headers.add("Event", sub.event)
        headers.add("Subscription-State", state)
        headers.add("User-Agent", self.gateway.agent)
        if body is not None:
            headers.add("Content-Type", pidf.PIDF_CONTENT_TYPE)
            request.body = body
            sub.last_body = body
        try:
            transaction = self.gateway.transactions.send_request(request, sub.transport, sub.address)
        except Exception:
            log.failure("SIP NOTIFY to {watcher} could not be sent", watcher=sub.watcher)
            self._forget(sub)
            return None
        if transaction.state == "terminated":  # the transport refused it at once
            self._forget(sub)
            return None
        if final is None:
            for done in [t for t in self._notifies if t.state in ("completed", "terminated")]:
                del self._notifies[done]  # answered, when the gateway does not pass responses on
            self._notifies[transaction] = sub
        return transaction

    def presence_changed(self, bare, changed=None, gone=None):
        """NOTIFY every active watcher of ``bare`` whose last NOTIFY showed another state."""
        body = None
        for sub in list(self.subscriptions.values()):
            if sub.presentity == bare and sub.state == "active":
                body = body or self._body(bare, changed, gone)
                if body != sub.last_body:
                    self._send_notify(sub, body)

    def _watched(self, bare):
        return any(sub.presentity == bare for sub in self.subscriptions.values())

    # responses to our NOTIFYs, if the gateway passes them on

    def owns(self, transaction):
        """True for a NOTIFY client transaction of ours (the gateway passes its responses here)."""
        return transaction in self._notifies

    def response_received(self, transaction, response):
        """A final non-2xx to a NOTIFY ends the subscription (RFC 6665 4.2.2)."""
        sub = self._notifies.get(transaction)
        if sub is None or response.status < 200:
            return sub is not None
        del self._notifies[transaction]
        if response.status >= 300:
            log.info("SIP NOTIFY to {watcher} answered {status}: subscription removed",
                     watcher=sub.watcher, status=response.status)
            self._forget(sub)
        return True

    def final(self, transaction, response):
        """A final response to a client transaction (the gateway's own 408 or 503 for a timeout or a
        transport error too): True when it was one of our NOTIFYs."""
        return self.response_received(transaction, response)

    def transaction_timed_out(self, transaction):
        sub = self._notifies.pop(transaction, None)
        if sub is not None:
            self._forget(sub)
        return sub is not None

    def transport_error(self, transaction, error):
        return self.transaction_timed_out(transaction)

    # -- XMPP side: hooks ----------------------------------------------------------

    def _own_presence(self, event):
        """pre-presence/self: a local user's new presence; NOTIFY their SIP watchers.  Never handles it."""
        try:
            session, stanza = event.origin, event.stanza
            kind = stanza.getAttribute("type")
            if session is not None and kind in (None, "unavailable") and self._watched(session.bare):
                self.presence_changed(session.bare, changed=(session, stanza if kind is None else None))
        except Exception:
            log.failure("SIP presence NOTIFY failed")
        return False

    def _session_ended(self, session):
        try:
            # Not session.available: the presence feature may have cleared it already.
            if self._watched(session.bare):
                self.presence_changed(session.bare, gone=session)
        except Exception:
            log.failure("SIP presence NOTIFY failed")
        return False

    def _inbound_presence(self, event):
        """presence/bare: a user's answer to a SIP watcher.  Never handles it."""
        kind = event.stanza.getAttribute("type")
        if event.sender is not None and kind in ("subscribed", "unsubscribed"):
            self._decided(event.sender.userhost(), event.to.userhost(), kind)
        return False

    def _decided(self, presentity, watcher, kind):
        """``presentity`` approved (subscribed) or refused (unsubscribed) ``watcher``."""
        for sub in list(self.subscriptions.values()):
            if sub.presentity != presentity or sub.watcher != watcher:
                continue
            if kind == "subscribed" and sub.state == "pending":
                sub.state = "active"
                self._send_notify(sub)
            elif kind == "unsubscribed":
                self._end(sub, "rejected")

    # -- NOTIFY received --------------------------------------------------------------

    def _notify_received(self, transaction, request):
        # Our own subscriptions (XMPP users watching foreign SIP presentities) are watch.py's.
        if self.gateway.watch.owns(request):
            return self.gateway.watch.notify_received(transaction, request)
        return self._response(request, 481)

    # -- PUBLISH (RFC 3903) -----------------------------------------------------------

    def publication_of(self, bare):
        """The publication that stands for ``bare``'s SIP presence: the latest one updated."""
        found = [p for p in self.publications.values() if p.bare == bare]
        return max(found, key=lambda p: p.updated) if found else None

    @defer.inlineCallbacks
    def _publish(self, transaction, request):
        if not pidf.is_presence_event(request.headers.get("Event")):
            return self._bad_event(request)
        expires, refusal = self._expires(request)
        if refusal is not None:
            return refusal
        state = rich = None
        if request.body:
            content_type = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            if content_type != pidf.PIDF_CONTENT_TYPE:
                response = self._response(request, 415)
                response.headers.add("Accept", pidf.PIDF_CONTENT_TYPE)
                return response
            try:
                document = pidf.parse_pidf(request.body)
            except pidf.PresenceDocumentError as e:
                return self._response(request, 400, f"Bad Request ({e})"[:200])
            state, rich = document.availability, (pidf.activity_payload(document), pidf.mood_payload(document))
        account, refusal = yield self._authenticate(request, transaction.address)
        if refusal is not None:
            return refusal
        bare = "@".join(reversed(account))
        target = yield self._account(request.uri)
        if target != bare:
            return self._response(request, 403, "Forbidden (only one's own presence may be published)")
        etag = request.headers.get("SIP-If-Match")
        if etag is None:
            if state is None:
                return self._response(request, 400, "Bad Request (an initial PUBLISH needs a body)")
            if expires == 0:
                return self._response(request, 400, "Bad Request (an initial PUBLISH with Expires: 0)")
            publication = Publication(secrets.token_hex(8), bare, state, rich, 0.0, 0)
        else:
            publication = self.publications.get(etag.strip())
            if publication is None or publication.bare != bare:
                return self._response(request, 412)
            del self.publications[publication.etag]
            if publication.timer is not None and publication.timer.active():
                publication.timer.cancel()
            if expires == 0:
                response = self._response(request, 200)
                response.headers.add("Expires", "0")
                return response, lambda: self._announce(*account)
            publication.etag = secrets.token_hex(8)  # a new tag for each successful PUBLISH
            if state is not None:
                publication.availability, publication.rich = state, rich
        self._updates += 1
        publication.updated = self._updates
        publication.expires_at = self.clock.seconds() + expires
        publication.timer = self.clock.callLater(expires, self._publication_expired, publication)
        self.publications[publication.etag] = publication
        response = self._response(request, 200)
        response.headers.add("SIP-ETag", publication.etag)
        response.headers.add("Expires", str(expires))
        log.info("SIP {user} published presence ({available})", user=bare,
                 available="available" if publication.availability.available else "unavailable")
        return response, (lambda: self._announce(*account)) if state is not None or etag is None else None

    def _publication_expired(self, publication):
        publication.timer = None
        if self.publications.get(publication.etag) is publication:
            del self.publications[publication.etag]
            self._announce(*reversed(publication.bare.split("@", 1)))

    def _announce(self, host, user):
        """Say the SIP presence of ``user@host`` as the presence of the user's phone session."""
        publication = self.publication_of(f"{user}@{host}")
        if publication is not None and publication.availability.available:
            self.phones.bind(host, user)
            stanza = pidf.presence_stanza(publication.availability, None)
            stanza.addElement("priority", content=PRIORITY)
            self.phones.submit(host, user, stanza)
        elif (host, user) in self.phones.sessions:
            self.phones.submit(host, user, make("presence", type="unavailable"))
            self.phones.registered(host, user)
        self._publish_rich(host, user, publication.rich if publication is not None else None)

    def _publish_rich(self, host, user, rich):
        """Publish the activity and mood of ``rich`` that differ from those last published (``None``:
        withdraw them) to the user's PEP, as the phone session."""
        empty = ("", "")
        wanted = tuple(payload.toXml() if payload.children else "" for payload in rich) if rich else empty
        before = self.rich_published.get((host, user), empty)
        payloads = rich or (pidf.activity_payload(None), pidf.mood_payload(None))
        for payload, old, new in zip(payloads, before, wanted):
            if old != new:
                self._rich_ids += 1
                iq = make("iq", type="set", id=f"sip-pep-{self._rich_ids}")
                publish = iq.addElement((NS_PUBSUB, "pubsub")).addElement("publish")
                publish["node"] = payload.uri
                item = publish.addElement("item")
                item["id"] = "current"
                item.addChild(payload)
                for refusal in self.phones.submit(host, user, iq):
                    log.warn("SIP {user}@{host}: PEP {node} refused: {error}", user=user, host=host,
                             node=payload.uri, error=refusal.toXml())
        if wanted == empty:
            self.rich_published.pop((host, user), None)
        else:
            self.rich_published[(host, user)] = wanted


__all__ = ["SimplePresence", "Subscription", "Publication", "METHODS"]

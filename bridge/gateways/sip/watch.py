"""Presence of foreign SIP users for XMPP users: outgoing SUBSCRIBE, incoming NOTIFY (docs/sip.md).

``ForeignWatch`` is the other half of SIMPLE: ``simple.py`` serves SIP
watchers of our users; here our XMPP users watch SIP presentities of
foreign domains, which they know as gateway JIDs
(``carol\\40pbx.example@sip.localhost``).  The presence events of the
gateway's domain bring it every presence stanza addressed there:

* ``subscribe`` from a local user: SUBSCRIBE (``Event: presence``,
  ``Accept: application/pidf+xml``, ``Expires``) from ``sip:alice@localhost``
  to ``sip:carol@pbx.example``, through the route ``Messaging.destination``
  chooses, when the domain is in ``[sip] allowed_domains``; otherwise (or for
  an unmappable address) ``unsubscribed`` goes back at once.  A 200 gives
  ``subscribed`` from the contact's bare JID, routed so that the core's
  roster machinery sees it (a 202 waits
  for a NOTIFY saying ``active``).  The subscription is refreshed before it
  expires, on the clock given.
* each NOTIFY of the dialog (``SimplePresence`` passes NOTIFYs here) is
  answered 200; its PIDF becomes ``<presence/>`` from the contact's JID with
  the resource ``sip`` (``SIP_RESOURCE``, as for published presence) to the
  watcher's bare JID.  ``terminated`` with reason deactivated, timeout,
  probation or giveup subscribes again (after Retry-After, at least
  ``RETRY_SECONDS``); any other ``terminated``, and a final error response
  to a SUBSCRIBE (timeouts and transport errors too), give ``unsubscribed``
  and unavailable.
* ``unsubscribe``: SUBSCRIBE with ``Expires: 0`` in the dialog; the final
  NOTIFY it brings is answered 200 and not translated.
* ``probe`` (the core, when the watcher logs in): answered with the state of
  the last NOTIFY.  Dialogs are soft state in memory: after a restart a probe
  finds none and subscribes again, so presence comes back at the watcher's
  next login.

In-dialog requests (refreshes, un-SUBSCRIBE) go to the address the first
SUBSCRIBE went to (the foreign domain's route), with the dialog's route set
as Route headers.  A NOTIFY is trusted when it names a dialog of ours: the
Call-ID and our tag are random; there is no authentication between domains.
"""

import dataclasses
import secrets

from twisted.logger import Logger

from bridge.core.stanza import make
from bridge.gateways.sip import presence as pidf
from bridge.gateways.sip.addressing import AddressError
from bridge.gateways.sip.message import GrammarError, Request, make_response

log = Logger()

SIP_RESOURCE = "sip"
REQUESTED_EXPIRES = 3600
REFRESH_MARGIN_SECONDS = 60
RETRY_SECONDS = 5
LINGER_SECONDS = 32  # how long an ended dialog still answers its last NOTIFYs with 200
RESUBSCRIBE_REASONS = ("deactivated", "timeout", "probation", "giveup")


@dataclasses.dataclass(eq=False)
class Watching:
    """One outgoing subscription: a local user watching a foreign SIP presentity (one dialog)."""

    watcher: str  # local bare JID
    contact: str  # the presentity's gateway bare JID
    uri: object  # URI of the presentity
    local_uri: object  # URI of the watcher
    call_id: str
    local_tag: str
    transport: object = None
    address: tuple = None
    remote_tag: str = None
    remote_target: str = None
    route_set: list = dataclasses.field(default_factory=list)
    cseq: int = dataclasses.field(default_factory=lambda: secrets.randbelow(2**16) + 1)
    remote_cseq: int = -1
    state: str = "subscribing"  # subscribing, pending, active, ending, ended
    confirmed: bool = False  # `subscribed` sent to the watcher
    last: object = None  # presence.Availability of the last NOTIFY with a body
    timer: object = None
    expires: int = REQUESTED_EXPIRES

    @property
    def key(self):
        return (self.call_id, self.local_tag)


class ForeignWatch:
    """Outgoing SUBSCRIBE for ``Event: presence``, and the NOTIFYs of those dialogs: one per gateway."""

    def __init__(self, gateway, expires=REQUESTED_EXPIRES):
        self.gateway = gateway
        self.ctx = gateway.ctx
        self.clock = gateway.clock
        self.messaging = gateway.messaging
        self.expires = expires
        self.watching = {}  # (watcher bare, contact bare) -> Watching
        self.dialogs = {}  # (Call-ID, our tag) -> Watching
        self.retrying = set()  # (watcher, contact) to subscribe again after a terminated NOTIFY
        self.ctx.hook("presence/bare", self.presence_out)
        self.ctx.hook("presence/full", self.presence_out)

    def stop(self):
        """Cancel every timer; the dialogs are soft state and are forgotten."""
        for sub in list(self.dialogs.values()) + list(self.watching.values()):
            self._cancel(sub)
        self.watching.clear()
        self.dialogs.clear()
        self.retrying.clear()

    # -- XMPP side ------------------------------------------------------------------

    def presence_out(self, event):
        """A presence stanza to a contact of the gateway's domain."""
        stanza = event.stanza
        kind = stanza.getAttribute("type")
        sender, to = event.sender, event.to
        if sender is None or self.ctx.local_host(sender.host) is None:
            return True  # only local users watch through the gateway
        watcher, contact = sender.userhost(), to.userhost()
        if kind == "subscribe":
            self.subscribe(watcher, contact)
        elif kind == "unsubscribe":
            self.unsubscribe(watcher, contact)
        elif kind == "probe":
            self.probe(watcher, contact, sender.full())
        # Available/unavailable presence, subscribed and unsubscribed: SIP users watch our users by
        # SUBSCRIBE to them directly (simple.py), so nothing is sent.
        return True

    def subscribe(self, watcher, contact, announce=True):
        """Start watching ``contact`` for ``watcher`` (nothing new when a subscription exists)."""
        sub = self.watching.get((watcher, contact))
        if sub is not None:
            if sub.confirmed and announce:
                self._route(make("presence", to=watcher, sender=contact, type="subscribed"))
                if sub.last is not None:
                    self._route(pidf.presence_stanza(sub.last, f"{contact}/{SIP_RESOURCE}", watcher))
            return sub
        try:
            uri = self.messaging.addresses.uri_for_jid(contact)
            local_uri = self.messaging.addresses.uri_for_jid(watcher)
        except AddressError as problem:
            log.info("SIP: {watcher} cannot watch {contact}: {problem}", watcher=watcher, contact=contact,
                     problem=problem)
            uri = None
        host = (getattr(uri, "host", None) or "").lower().strip("[]")
        if uri is None or uri.scheme not in ("sip", "sips") or host not in self.messaging.allowed:
            log.info("SIP: subscription of {watcher} to {contact} refused (domain not allowed)",
                     watcher=watcher, contact=contact)
            self._route(make("presence", to=watcher, sender=contact, type="unsubscribed"))
            return None
        sub = Watching(watcher=watcher, contact=contact, uri=uri, local_uri=local_uri,
                       call_id=self.messaging.new_call_id(), local_tag=secrets.token_hex(6), expires=self.expires)
        sub.remote_target = str(uri)
        self.watching[(watcher, contact)] = sub
        self.dialogs[sub.key] = sub
        transport = self.gateway.outbound_transport()
        if transport is None:
            self._failed(sub, 503)
            return None
        sub.transport = transport
        d = self.messaging.destination(uri)

        def send(address):
            sub.address = address
            if sub.state == "subscribing":
                self._send(sub, sub.expires)

        def no_route(failure):
            log.info("SIP: no route to {uri}: {reason}", uri=str(uri), reason=failure.value)
            self._failed(sub, 404)

        d.addCallbacks(send, no_route)
        d.addErrback(lambda failure: log.failure("SIP: SUBSCRIBE to {uri} not sent", failure, uri=str(uri)))
        return sub

    def unsubscribe(self, watcher, contact):
        """End ``watcher``'s subscription to ``contact``: SUBSCRIBE with Expires: 0 in its dialog."""
        self.retrying.discard((watcher, contact))
        sub = self.watching.pop((watcher, contact), None)
        if sub is None:
            return
        self._cancel(sub)
        active = sub.state in ("pending", "active") and sub.address is not None
        sub.state = "ending"
        if active:
            self._send(sub, 0)
        self._linger(sub)

    def probe(self, watcher, contact, prober):
        """The core's probe at ``watcher``'s login: the last state, or a new subscription (soft state)."""
        sub = self.watching.get((watcher, contact))
        if sub is None:
            self.subscribe(watcher, contact, announce=False)
            return
        if sub.last is not None:
            self._route(pidf.presence_stanza(sub.last, f"{contact}/{SIP_RESOURCE}", prober))

    def _route(self, stanza):
        self.ctx.route(stanza)

    # -- SUBSCRIBE out --------------------------------------------------------------

    def _contact(self, sub):
        host, port = self.gateway.sent_by(sub.transport)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"<sip:{sub.local_uri.user}@{host}:{port}>"

    def _send(self, sub, expires):
        sub.cseq += 1
        request = Request("SUBSCRIBE", sub.remote_target)
        add = request.headers.add
        for route in sub.route_set:
            add("Route", route)
        add("Max-Forwards", "70")
        add("From", f"<{sub.local_uri}>;tag={sub.local_tag}")
        add("To", f"<{sub.uri}>" + (f";tag={sub.remote_tag}" if sub.remote_tag else ""))
        add("Call-ID", sub.call_id)
        add("CSeq", f"{sub.cseq} SUBSCRIBE")
        add("Contact", self._contact(sub))
        add("Event", pidf.PRESENCE_EVENT)
        add("Accept", pidf.PIDF_CONTENT_TYPE)
        add("Expires", str(expires))
        add("User-Agent", self.gateway.agent)
        try:
            self.messaging.send(request, sub.transport, sub.address,
                                lambda response: self._answered(sub, expires, response))
        except Exception:
            log.failure("SIP: SUBSCRIBE to {uri} not sent", uri=str(sub.uri))
            self._answered(sub, expires, make_response(request, 503))

    def _answered(self, sub, expires, response):
        """The final response to a SUBSCRIBE of ``sub`` (408 and 503 made up for timeouts and errors)."""
        if expires == 0 or sub.state in ("ending", "ended"):
            return
        status = response.status
        if status == 423 and sub.remote_tag is None:
            try:
                minimum = int(response.headers.get("Min-Expires") or "")
            except ValueError:
                minimum = 0
            if sub.expires < minimum <= 86400:
                sub.expires = minimum
                self._send(sub, minimum)
                return
        if not 200 <= status < 300:
            log.info("SIP SUBSCRIBE to {uri} answered {status}", uri=str(sub.uri), status=status)
            self._failed(sub, status)
            return
        try:
            if sub.remote_tag is None:
                sub.remote_tag = response.to_address.tag
                contacts = [c for c in response.contacts if c != "*"]
                if contacts:
                    sub.remote_target = str(contacts[0].uri)
                sub.route_set = list(reversed(response.headers.get_all("Record-Route")))
        except GrammarError:
            log.info("SIP: unreadable 2xx to a SUBSCRIBE to {uri}", uri=str(sub.uri))
        try:
            granted = int(response.headers.get("Expires") or expires)
        except ValueError:
            granted = expires
        if granted <= 0:
            granted = expires
        if sub.state == "subscribing":
            sub.state = "active" if status == 200 else "pending"
        if status == 200:
            self._confirm(sub)
        self._arm(sub, granted)

    def _arm(self, sub, granted):
        """Refresh before the granted expiry: a margin of a minute, or half of short intervals."""
        self._cancel(sub)
        delay = max(granted - REFRESH_MARGIN_SECONDS, granted / 2)
        sub.timer = self.clock.callLater(delay, self._refresh, sub)

    def _refresh(self, sub):
        sub.timer = None
        if self.watching.get((sub.watcher, sub.contact)) is sub and sub.state in ("pending", "active"):
            self._send(sub, sub.expires)

    def _cancel(self, sub):
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.timer = None

    def _linger(self, sub):
        """Keep an ended dialog a little, so its last NOTIFYs get 200 rather than 481."""
        self._cancel(sub)
        sub.timer = self.clock.callLater(LINGER_SECONDS, self._drop, sub)

    def _drop(self, sub):
        sub.timer = None
        if self.dialogs.get(sub.key) is sub:
            del self.dialogs[sub.key]

    def _confirm(self, sub):
        if not sub.confirmed:
            sub.confirmed = True
            self._route(make("presence", to=sub.watcher, sender=sub.contact, type="subscribed"))

    def _failed(self, sub, status=None):
        """The subscription is over for good: ``unsubscribed`` and unavailable for the watcher."""
        self._end(sub)
        self._route(make("presence", to=sub.watcher, sender=sub.contact, type="unsubscribed"))
        self._unavailable(sub)

    def _unavailable(self, sub):
        if sub.last is None or sub.last.available:
            self._route(make("presence", to=sub.watcher, sender=f"{sub.contact}/{SIP_RESOURCE}",
                             type="unavailable"))
        sub.last = pidf.Availability(False)

    def _end(self, sub):
        if self.watching.get((sub.watcher, sub.contact)) is sub:
            del self.watching[(sub.watcher, sub.contact)]
        sub.state = "ended"
        self._linger(sub)

    # -- NOTIFY in ----------------------------------------------------------------------

    def owns(self, request):
        """True when ``request`` (a NOTIFY) belongs to one of our dialogs."""
        try:
            return (request.call_id, request.to_address.tag) in self.dialogs
        except GrammarError:
            return False

    def notify_received(self, transaction, request):
        """A NOTIFY: the response to send, or (response, what to do once it is sent)."""
        respond = lambda status, reason=None: make_response(request, status, reason)  # noqa: E731
        try:
            key = (request.call_id, request.to_address.tag)
            remote_tag = request.from_address.tag
            contacts = [c for c in request.contacts if c != "*"]
        except GrammarError:
            return respond(400, "Bad Request (bad From, To or Contact)")
        sub = self.dialogs.get(key)
        if sub is None or (sub.remote_tag is not None and remote_tag != sub.remote_tag):
            return respond(481)
        if not pidf.is_presence_event(request.headers.get("Event")):
            response = respond(489)
            response.headers.add("Allow-Events", pidf.PRESENCE_EVENT)
            return response
        try:
            state = pidf.parse_subscription_state(request.headers.get("Subscription-State"))
        except pidf.PresenceDocumentError as problem:
            return respond(400, f"Bad Request ({problem})"[:200])
        if request.cseq.number <= sub.remote_cseq:
            return respond(500, "Server Internal Error (CSeq out of order)")
        sub.remote_cseq = request.cseq.number
        if sub.state in ("ending", "ended"):
            if state.state == "terminated":
                self._drop(sub)
            return respond(200)
        if sub.remote_tag is None:
            sub.remote_tag = remote_tag  # the NOTIFY overtook the 2xx (RFC 6665 4.1.2.4)
        if contacts:
            sub.remote_target = str(contacts[0].uri)
        availability = None
        content_type = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if request.body and content_type == pidf.PIDF_CONTENT_TYPE:
            try:
                availability = pidf.parse_pidf(request.body).availability
            except pidf.PresenceDocumentError as problem:
                log.info("SIP NOTIFY from {uri}: PIDF ignored: {problem}", uri=str(sub.uri), problem=problem)
        return respond(200), lambda: self._notified(sub, state, availability)

    def _notified(self, sub, state, availability):
        if state.state == "active":
            if sub.state != "active":
                sub.state = "active"
            self._confirm(sub)
        if availability is not None and state.state != "pending":
            sub.last = availability
            self._route(pidf.presence_stanza(availability, f"{sub.contact}/{SIP_RESOURCE}", sub.watcher))
        if state.state == "active" and state.expires:
            self._arm(sub, state.expires)
        if state.state != "terminated":
            return
        if state.reason in RESUBSCRIBE_REASONS:
            log.info("SIP subscription to {uri} ended ({reason}); subscribing again", uri=str(sub.uri),
                     reason=state.reason)
            self._end(sub)
            self._unavailable(sub)
            delay = max(state.retry_after or 0, RETRY_SECONDS)
            self.retrying.add((sub.watcher, sub.contact))
            self.clock.callLater(delay, self._again, sub)
        else:
            log.info("SIP subscription to {uri} terminated ({reason})", uri=str(sub.uri), reason=state.reason)
            self._failed(sub)

    def _again(self, sub):
        pair = (sub.watcher, sub.contact)
        if pair in self.retrying and pair not in self.watching:
            self.retrying.discard(pair)
            self.subscribe(sub.watcher, sub.contact, announce=False)


__all__ = ["ForeignWatch", "Watching", "SIP_RESOURCE"]

"""The SMS gateway: offline users reached by SMS, phone numbers as JIDs, replies by SMS.

``attach(ctx, reactor, tls_context)`` makes the gateway of the ``[sms]``
section and its ``[smsc.NAME]`` links.  Its domain is a component host
served by the ordinary disco, version, ping and XEP-0100 modules.

* ``offline/stored``: a message stored for an offline user whose channels
  include "sms" and whose mobile number is verified is sent as "Sender:
  body", within a per-user daily cap and one SMS per conversation per quiet
  window.  Headlines (alerts) to an account with no available resource go
  out the same way (hooked on ``message/bare``; the core drops them).
* The message events of ``[sms] domain``: a message from a local user to
  ``+15551234567@sms.localhost`` is sent to that number, within the
  sending limits (``limits.py``); a message to the domain itself is a
  command: "verify" asks for a code by SMS, the code sent back verifies the
  number (``verification.py``).
* A mobile-originated SMS from a user's verified number is said by that user
  (resource ``sms``, through the one way in) to the person who last reached
  them by SMS, and "STOP" from it sets that user's policy to none.  From any
  other number (sender IDs are not authenticated), a message from
  ``+number@domain`` to the local user who last wrote to that number; from a
  number nobody wrote to, it is dropped and logged.

In a cluster (docs/scaling.md) every node accepts SMS into the shared queue;
the node that owns ``sms:<domain>`` (``bridge.core.ownership``) alone holds
the SMSC binds and sends, and a survivor takes the queue over when it dies.
"""

import ipaddress

from twisted.internet import defer, endpoints, ssl
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID

from bridge.core.hooks import OBSERVE
from bridge.core.notifications import NotificationPreferences
from bridge.core.server import looping_call
from bridge.core.sessions import Session
from bridge.core.storage.cache import KeyedLock
from bridge.core.stanza import error_reply, make, parse_jid
from bridge.core.tls import trust_roots
from bridge.gateways.sms import pdu as pdus, text as texts
from bridge.gateways.sms.esme import SMSCLink
from bridge.gateways.sms.fragments import Reassembly
from bridge.gateways.sms.limits import SendingLimits
from bridge.gateways.sms.queue import OutboundQueue
from bridge.gateways.sms.text import normalize_number
from bridge.gateways.sms.verification import Verification

log = Logger()

NS_RECEIPTS = "urn:xmpp:receipts"
LIMITS_STORE = "sms-limits"  # (host, user): {"day": n, "count": n, "last": {sender: time}}
LAST_SENDER_STORE = "sms-last-sender"  # (host, user): {"jid": who last reached the user by SMS}
PEERS_STORE = "sms-peers"  # (domain, number): {"jid": the local user who last wrote to the number}
MOBILES_STORE = "sms-mobiles"  # (domain, number): {"host", "user"} who last verified the number
OPT_OUT_WORDS = ("STOP", "STOPALL", "UNSUBSCRIBE")
RESOURCE = "sms"  # of a user's session when their own mobile phone speaks
HELP = ("Commands: 'verify' sends a code by SMS to your mobile number, 'verify +15551234567' to that number; "
        "send the code back here to verify the number.  Only a verified number gets your SMS notifications, "
        "speaks as you when it answers by SMS, and may turn your notifications off with STOP.")


def body_of(stanza):
    for child in stanza.elements():
        if child.name == "body" and child.uri in (None, "jabber:client", stanza.uri):
            text = str(child)
            return text if text.strip() else None
    return None


class MobileLine:
    """The stream of a user's mobile phone seen as a session: what comes back to it is only logged."""

    def send(self, stanza):
        log.info("SMS: {kind} for a mobile phone dropped", kind=stanza.name)

    def stream_error(self, condition, text=None):
        pass


def wants_receipt(stanza):
    return any(child.name == "request" and child.uri == NS_RECEIPTS for child in stanza.elements())


class NumberPrompt:
    """What XEP-0100 asks of the SMS gateway (``features/gateway.py``)."""

    description = "Enter the mobile number of the contact in international form (+15551234567)."
    prompt = "Mobile number"

    def __init__(self, domain):
        self.domain = domain

    def jid_for(self, text):
        number = normalize_number(text)
        if number is None:
            raise ValueError(f"{text!r} is not a phone number in international form")
        return f"{number}@{self.domain}"


def smsc_connector(reactor):
    """``connect(name, smsc_config)`` for SMSGateway: an endpoint's connect, TLS when configured."""

    def connect(name, smsc):
        endpoint = endpoints.HostnameEndpoint(reactor, smsc.host, smsc.port, timeout=30)
        if smsc.tls:
            trust = trust_roots(smsc.ca_file) if smsc.ca_file else None
            endpoint = endpoints.wrapClientTLS(ssl.optionsForClientTLS(smsc.host, trustRoot=trust), endpoint)
        return endpoint.connect

    return connect


def password_in_clear(smsc):
    """True when the bind password of ``smsc`` would cross a network unencrypted (no TLS, not loopback)."""
    if smsc.tls or not (smsc.password or smsc.password_file):
        return False
    if smsc.host.lower().rstrip(".") == "localhost":
        return False
    try:
        return not ipaddress.ip_address(smsc.host.strip("[]")).is_loopback
    except ValueError:
        return True


def attach(ctx, reactor, tls_context):
    """The gateway of ``ctx.config`` (the [sms] section), or None when it is off."""
    if not ctx.config.enabled:
        return None
    return SMSGateway(ctx, smsc_connector(reactor))


class SMSGateway:
    def __init__(self, ctx, connect):
        """``connect(name, smsc_config)``: a function ``factory -> Deferred`` for that SMSC."""
        self.ctx = ctx
        self.config = ctx.config
        self.domain = self.config.domain.lower()
        self.clock = ctx.clock
        self.storage = ctx.storage
        self.preferences = NotificationPreferences(ctx.storage, ctx.host_config, ctx.accounts.directory)
        self.queue = OutboundQueue(ctx.storage, self.domain, ctx.clock, self.config, self._final,
                                   self._mobile_originated, ctx.counters, node=ctx.node_name, serving=False)
        self.links = [SMSCLink(name, smsc, ctx.clock, connect(name, smsc), self.queue)
                      for name, smsc in sorted(ctx.section("smsc").items())]
        self.queue.links = self.links
        ctx.level("sms_queue_messages", "SMS not yet sent or given up (on the node that owns the queue)",
                  lambda: len(self.queue.docs))
        ctx.level("sms_queue_held_parts", "SMS parts held, not sent again: their submit_sm may have reached the "
                  "SMSC before the queue's last owner stopped (docs/scaling.md)", self.queue.held_parts)
        self.claim = None
        self._poll = None  # the owner's looking for what other nodes queued, in a cluster
        self._serving = None  # the Deferred of the last takeover of the queue
        self.fragments = Reassembly(ctx.clock, self.config)
        self._limits = KeyedLock()  # the daily counts of one user, changed one SMS at a time
        self.sending = SendingLimits(ctx.storage, ctx.clock, self.config, ctx.document_caches)
        self.verification = Verification(ctx.storage, ctx.clock, self.config, self.preferences)
        ctx.serve(self.domain, ("gateway", "sms", "SMS gateway"), NumberPrompt(self.domain))
        ctx.hook("message/bare", self.to_number)
        ctx.hook("message/host", self.command)
        ctx.hook_local("offline/stored", self.offline_stored)
        ctx.hook_local("muc/mention", self.offline_stored)  # a room message naming a member who is away
        ctx.hook_local("message/bare", self.headline, OBSERVE)

    # -- lifetime (the Gateway shape of tap.py) -------------------------------------

    def listeners(self):
        return []

    def start(self):
        """Claim the queue: its owner (this process at once, without a cluster) binds the SMSCs and sends;
        the Deferred of the start of sending when it begins at once."""
        for link in self.links:
            if password_in_clear(link.config):
                log.warn("SMSC {name}: the bind password goes in clear to {host}:{port}; set tls = true "
                         "(docs/sms.md, TLS to the SMSC)", name=link.name, host=link.config.host,
                         port=link.config.port)
        self.claim = self.queue.claim = self.ctx.claim(f"sms:{self.domain}", self._gained, self._lost)
        return self._serving

    def _gained(self):
        """This node owns the queue now: read it, bind the SMSCs, and look for other nodes' SMS."""
        log.info("SMS queue of {domain}: this node sends it", domain=self.domain)
        self._serving = self.queue.serve()
        self._serving.addCallback(lambda _: [link.start() for link in self.links if self.queue.serving])
        self._later(self._serving, "taking the SMS queue")
        interval = self.ctx.shared_queue_poll_seconds
        if interval is not None:
            self._poll = looping_call(self.ctx.clock, interval, self._look_for_new)
        return self._serving

    def _look_for_new(self):
        self._later(self.queue.load(), "reading the SMS queue")

    def _lost(self):
        """Another node owns the queue now (or none may): no submit_sm from here from this moment
        (``queue.may_send``); the links unbind, the answers on the way are recorded, then the queue is
        forgotten here."""
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        d = self._unbind()
        d.addBoth(lambda _: self.queue.unserve() if not (self.claim is not None and self.claim.owned) else None)
        return d

    def _unbind(self):
        return defer.DeferredList([link.stop() for link in self.links])

    def stop(self):
        """Unbind (the answers on the way are recorded), then give the queue up for another node."""
        d = self._unbind()
        d.addBoth(lambda _: self.claim.release() if self.claim is not None else None)
        d.addBoth(lambda _: self.queue.stop())
        return d

    def _later(self, d, what):
        d.addErrback(lambda failure: log.failure("SMS gateway: {what} failed", failure, what=what))

    # -- offline users --------------------------------------------------------

    def offline_stored(self, payload):
        """The offline hook: never takes the event (the email gateway hears it too)."""
        host, user, stanza = payload
        self._later(self.notify(host, user, stanza), "offline notification")
        return False

    def headline(self, event):
        stanza = event.stanza
        if stanza.getAttribute("type") != "headline" or event.to is None or not event.to.user:
            return False
        if any(s.priority >= 0 for s in self.ctx.sessions.available(event.to.userhost())):
            return False
        self._later(self.notify(event.host.name, event.to.user, stanza), "SMS alert")
        return False

    @defer.inlineCallbacks
    def notify(self, host, user, stanza):
        """Queue an SMS for ``user`` about ``stanza`` when policy, number and limits allow; the key or None."""
        body = body_of(stanza)
        sender = parse_jid(stanza.getAttribute("from"))
        if body is None or sender is None:
            return None
        if "sms" not in (yield self.preferences.channels(host, user)):
            return None
        number = yield self.verification.verified_number(host, user)
        if number is None:
            log.debug("SMS: {user}@{host} has no verified number", user=user, host=host)
            return None
        sender_bare = sender.userhost()
        if not (yield self._limits.run((host, user), self._within_limits, host, user, sender_bare)):
            return None
        yield self.storage.set(host, user, LAST_SENDER_STORE, {"jid": sender_bare})
        name = texts.display_name(sender.user or sender.host)
        meta = {"to": stanza.getAttribute("from"), "from": f"{user}@{host}", "id": stanza.getAttribute("id"),
                "receipt": wants_receipt(stanza)}
        text = texts.with_sender(name, body)
        key = yield self.queue.add(number, text, meta)
        log.info("SMS {key}: {user}@{host} is offline; {parts} parts to {number}", key=key, user=user, host=host,
                 parts=self.parts_of(text), number=number)
        return key

    @defer.inlineCallbacks
    def _within_limits(self, host, user, sender):
        """The per-user daily cap and the quiet window of one conversation; records the SMS if allowed."""
        now = self.clock.seconds()
        day = int(now // 86400)
        limits = (yield self.storage.get(host, user, LIMITS_STORE)) or {}
        if limits.get("day") != day:
            limits = {"day": day, "count": 0, "last": {}}
        last = limits["last"].get(sender)
        if last is not None and now - last < self.config.quiet_window_minutes * 60:
            return False
        if limits["count"] >= self.config.daily_cap_per_user:
            log.info("SMS: {user}@{host} reached the daily cap", user=user, host=host)
            return False
        limits["count"] += 1
        limits["last"][sender] = now
        yield self.storage.set(host, user, LIMITS_STORE, limits)
        return True

    # -- the SMS domain ---------------------------------------------------------

    def _local_sender(self, event):
        """The local host of the sender of ``event``; None (the stanza refused) for anyone else."""
        host = self.ctx.local_host(event.sender.host) if event.sender is not None else None
        if host is None:
            self.ctx.bounce(event.stanza, "forbidden", "only local users may send SMS")
        return host

    def to_number(self, event):
        """A message to ``+number@domain``: one with a body from a local user is sent as SMS."""
        stanza = event.stanza
        if stanza.getAttribute("type") in ("error", "groupchat"):
            return True
        sender, to = event.sender, event.to
        number = normalize_number(to.user)
        if self._local_sender(event) is None:
            return True
        if number is None:
            self.ctx.bounce(stanza, "jid-malformed", "address a phone number: +15551234567@" + self.domain)
            return True
        body = body_of(stanza)
        if body is not None:
            # Held until the SMS is in the queue, on disk: the sender's XEP-0198 <a/> covers it only then.
            held = event.hold()
            d = self._send_to_number(stanza, sender, number, body)
            d.addErrback(self._not_queued, stanza)
            d.addBoth(_finishing, held)
            self._later(d, "SMS to a number")
        return True

    @defer.inlineCallbacks
    def _send_to_number(self, stanza, sender, number, body):
        """Queue the SMS within the sender's and their host's limits, else refuse it; the key or None."""
        text = texts.with_sender(texts.display_name(sender.user), body)
        host = self.ctx.local_host(sender.host)
        refusal = yield self.sending.charge(host, sender.user, self.parts_of(text))
        if refusal is not None:
            log.info("SMS from {user}@{host} to {number} refused: {why}", user=sender.user, host=host,
                     number=number, why=refusal[1])
            self.ctx.bounce(stanza, *refusal)
            return None
        yield self.storage.set(self.domain, number, PEERS_STORE, {"jid": sender.userhost()})
        meta = {"to": stanza.getAttribute("from"), "from": f"{number}@{self.domain}",
                "id": stanza.getAttribute("id"), "receipt": wants_receipt(stanza)}
        key = yield self.queue.add(number, text, meta)
        return key

    def _not_queued(self, failure, stanza):
        """The SMS could not be charged or queued (storage failed, or other nodes kept changing the host's
        counts): the sender is told, to send it again later, rather than left to believe it went."""
        self.ctx.bounce(stanza, "resource-constraint", "the SMS could not be queued: send it again later")
        return failure

    def parts_of(self, text):
        """The SMS parts ``text`` is sent as (what the SMSC bills)."""
        return len(texts.split(text, 0, self.config.max_parts)[2])

    # -- commands to the domain: verifying a number -------------------------------

    def command(self, event):
        """A message from a local user to the domain itself: "verify", a code, or anything else (the help)."""
        stanza = event.stanza
        if stanza.getAttribute("type") in ("error", "groupchat"):
            return True
        host = self._local_sender(event)
        body = body_of(stanza)
        if host is not None and body is not None:
            self._later(self._command(stanza, host, event.sender, body.split()), "SMS command")
        return True

    @defer.inlineCallbacks
    def _command(self, stanza, host, sender, words):
        if words[0].lower() == "verify":
            answer = yield self.request_code(host, sender.user, " ".join(words[1:]))
        elif len(words) == 1 and words[0].isdigit():
            answer = yield self.check_code(host, sender.user, words[0])
        else:
            answer = HELP
        reply = make("message", to=stanza.getAttribute("from"), sender=self.domain,
                     type=stanza.getAttribute("type") or "normal")
        reply.addElement("body", content=answer)
        self.ctx.route(reply)

    @defer.inlineCallbacks
    def request_code(self, host, user, given):
        """Send a code by SMS to ``given`` (else the user's number); the answer for the user."""
        number = normalize_number(given or (yield self.preferences.mobile(host, user)))
        if number is None:
            return (f"{given!r} is not a number in international form (+15551234567)." if given else
                    "You have no mobile number: send 'verify +15551234567' with yours.")
        if (yield self.verification.verified_number(host, user)) == number:
            return f"{number} is already verified."

        def send(code):
            text = (f"{code} is the code that links this number to {user}@{host}: send it to {self.domain} "
                    "from that account. Not you? Ignore this SMS.")
            d = self.sending.charge(host, user, self.parts_of(text))
            d.addCallback(lambda refusal: refusal[1] if refusal else self._send_code(number, text))
            return d

        code, why = yield self.verification.issue(host, user, number, send)
        if code is None:
            return why
        log.info("SMS: a verification code for {user}@{host} to {number}", user=user, host=host, number=number)
        minutes = self.config.verification_code_lifetime_minutes
        return f"A code was sent by SMS to {number}: send it here within {minutes:g} minutes."

    def _send_code(self, number, text):
        d = self.queue.add(number, text, {})
        d.addCallback(lambda _: None)
        return d

    @defer.inlineCallbacks
    def check_code(self, host, user, code):
        """Verify the number the code went to when ``code`` is right; the answer for the user."""
        number, why = yield self.verification.check(host, user, code)
        if number is None:
            return why
        if normalize_number((yield self.preferences.mobile(host, user))) != number:
            yield self.preferences.update(host, user, mobile=number)
        yield self.storage.set(self.domain, number, MOBILES_STORE, {"host": host, "user": user})
        log.info("SMS: {user}@{host} verified {number}", user=user, host=host, number=number)
        return (f"{number} is verified: it gets your SMS notifications, its SMS answers come from you, "
                "and STOP from it turns your notifications off.")

    # -- outcomes ---------------------------------------------------------------

    def _final(self, doc, outcome, reason):
        meta = doc["meta"]
        if not meta.get("to"):
            return
        if outcome == "delivered" and meta.get("receipt") and meta.get("id"):
            message = make("message", to=meta["to"], sender=meta["from"])
            message.addElement((NS_RECEIPTS, "received"))["id"] = meta["id"]
            self.ctx.route(message)
        elif outcome == "failed":
            text = f"SMS to {doc['number']} failed: {reason or 'not delivered'}"
            log.info("{text}", text=text)
            if self.config.failure_report == "error":
                original = make("message", to=meta["from"], sender=meta["to"], id=meta.get("id"))
                self.ctx.route(error_reply(original, "recipient-unavailable", text))
            elif self.config.failure_report == "notice":
                notice = make("message", to=meta["to"], sender=self.domain, type="normal")
                notice.addElement("body", content=text)
                self.ctx.route(notice)

    # -- mobile-originated ---------------------------------------------------------

    def _mobile_originated(self, link, received):
        number = normalize_number(pdus.text_field(received.source_addr))
        if number is None:
            log.info("SMSC {name}: MO from an unusable address", name=link.name)
            return None
        data = received.short_message or b""
        coding = received.data_coding or 0
        if (received.esm_class or 0) & texts.ESM_CLASS_UDHI:
            concat, data = texts.parse_udh(data)
            if concat is not None and concat[1] > 1:
                reference, total, part = concat
                body = self.fragments.add(number, reference, total, part, texts.decode(data, coding), len(data))
                return None if body is None else self.mobile_message(number, body)
        return self.mobile_message(number, texts.decode(data, coding))

    @defer.inlineCallbacks
    def mobile_message(self, number, body):
        """Route one SMS from ``number`` into XMPP (or act on STOP); the stanza routed, or None."""
        owner = yield self.owner_of(number)
        if body.strip().upper() in OPT_OUT_WORDS:
            if owner is not None:
                yield self.preferences.update(owner[0], owner[1], policy="none")
                log.info("SMS: {user}@{host} opted out by SMS", user=owner[1], host=owner[0])
            else:
                log.info("SMS: {word} from {number}, the verified number of no user: ignored",
                         word=body.strip().upper(), number=number)
            return None
        if owner is not None:
            host, user = owner
            last = yield self.storage.get(host, user, LAST_SENDER_STORE)
            if not last:
                log.info("SMS from {user}@{host}'s mobile, but nobody reached them by SMS", user=user, host=host)
                return None
            message = make("message", to=last["jid"], type="chat")
            message.addElement("body", content=body)
            self.ctx.submit(Session(JID(tuple=(user, host, RESOURCE)), MobileLine()), message)
            return message
        peer = yield self.storage.get(self.domain, number, PEERS_STORE)
        if not peer:
            log.info("SMS from {number}, who no user wrote to: dropped", number=number)
            return None
        message = make("message", to=peer["jid"], sender=f"{number}@{self.domain}", type="chat")
        message.addElement("body", content=body)
        self.ctx.route(message)
        return message

    @defer.inlineCallbacks
    def owner_of(self, number):
        """(host, user) who verified ``number`` last and whose verified number it still is, or None."""
        known = yield self.storage.get(self.domain, number, MOBILES_STORE)
        if known and known["host"] in self.ctx.host_names():
            if (yield self.verification.verified_number(known["host"], known["user"])) == number:
                return known["host"], known["user"]
        return None


def _finishing(result, held):
    held.finish()
    return result

"""Email through an SMTP relay: offline notification and the conversation archive.

Two producers feed one persisted outbox:

- **Offline email.**  When ``offline/stored`` fires for a user whose
  notification channels include "email" and who has an address, the
  message's sender, time and text are appended to that user's digest queue.
  ``digest_seconds`` after the first of them, everything in the queue becomes
  one email (a digest when there are several) and moves to the outbox.  A
  headline (an alert, RFC 6121 section 5.2.2), which is not stored, joins
  the same queue when the user has no available resource, as the SMS
  gateway texts it.
- **Conversation archive.**  When ``archive_recipients`` is set, every chat
  message one local user sends another (seen on ``stanza/out``, once the
  block lists let it pass, whether a client or a SIP phone said it) is
  appended to the queue of its conversation (the pair of bare JIDs).  ``archive_interval_seconds`` after the first message not yet
  mailed, the collected messages go to the outbox as one email with the
  ``X-Bridge-Sender``, ``X-Bridge-Recipients`` and ``X-Bridge-Conversation``
  headers.

The outbox is a storage queue of finished RFC 5322 messages, sent one at a
time, oldest first, with Twisted's ESMTP client.  An item leaves the queue
only when the relay accepted it (or refused it for good with a 5xx for its
recipients or its data), so a relay outage or a restart loses nothing and a
message is not sent twice.  A connection failure, a timeout, a 4xx or a
refusal before the recipients (TLS, authentication, MAIL FROM) retries with
exponential backoff.  Every timer runs on the reactor passed in.

In a cluster (docs/scaling.md) every node collects into the shared storage,
and only the node that owns ``email:outbox`` (``bridge.core.ownership``)
turns digests and archives into mail and sends the outbox; it looks for
what the others collected every ``[cluster] queue_poll_seconds``, and a
survivor takes over when it dies.
"""

import datetime
import email.policy
import email.utils
import io
from email.message import EmailMessage

from twisted.internet import defer
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.mail import smtp

from bridge.core.hooks import OBSERVE
from bridge.core.notifications import NotificationPreferences
from bridge.core.server import looping_call

log = Logger()

OUTBOX = "smtp-outbox"                # queue of (host "", user ""): {"to": [...], "mail": str, "kind": str}
DIGEST = "smtp-digest"                # queue per (host, user): {"sender", "time", "text"}
DIGEST_DUE = "smtp-digest-due"        # document per (host, user): {"due": epoch seconds}
ARCHIVE = "smtp-archive"              # queue per ("", conversation): {"sender", "to", "time", "text"}
ARCHIVE_DUE = "smtp-archive-due"      # document per ("", conversation): {"due": epoch seconds}
GLOBAL = ""
RESOURCE = "email:outbox"             # what one node at a time sends (bridge.core.ownership)


def message_text(stanza):
    """The text of a message stanza's <body/>, or None when it has none (chat states, receipts)."""
    for child in stanza.elements():
        if child.name == "body":
            text = str(child)
            return text if text.strip() else None
    return None


def bare(jid_text):
    return (jid_text or "").split("/", 1)[0]


def conversation_id(first, second):
    """The name of the conversation between two bare JIDs, the same both ways."""
    return " ".join(sorted((first, second)))


def format_time(epoch):
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def render_lines(entries, with_recipient=False):
    """The plain-text body: one paragraph per message (sender, time, text)."""
    parts = []
    for entry in entries:
        head = f"{entry['sender']}"
        if with_recipient:
            head += f" to {entry['to']}"
        head += f", {format_time(entry['time'])}:"
        parts.append(head + "\n" + entry["text"].rstrip("\n"))
    return "\n\n".join(parts) + "\n"


def senders_phrase(entries):
    senders = []
    for entry in entries:
        if entry["sender"] not in senders:
            senders.append(entry["sender"])
    return ", ".join(senders)


class Mailer:
    """Builds EmailMessages stamped with the clock's time."""

    def __init__(self, config, clock, domain):
        self.config = config
        self.clock = clock
        self.domain = domain
        self.from_address = config.from_address or f"bridge@{domain}"

    def _message(self, to, subject, body):
        message = EmailMessage(policy=email.policy.default)
        message["From"] = self.from_address
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(self.clock.seconds(), localtime=False, usegmt=True)
        message["Message-ID"] = email.utils.make_msgid("bridge", domain=self.domain)
        message["Auto-Submitted"] = "auto-generated"
        # Quoted-printable: 7-bit safe for any relay, still readable as source.
        message.set_content(body, charset="utf-8", cte="quoted-printable")
        return message

    def offline(self, address, jid, entries):
        """The email telling ``jid`` (at ``address``) of messages stored while away."""
        if len(entries) == 1:
            subject = f"Message from {entries[0]['sender']}"
            intro = f"While you were away, {entries[0]['sender']} wrote to {jid}:\n\n"
        else:
            subject = f"{len(entries)} messages from {senders_phrase(entries)}"
            intro = f"While you were away, {len(entries)} messages were sent to {jid}:\n\n"
        return self._message([address], subject, intro + render_lines(entries))

    def archive(self, recipients, conversation, entries):
        """One conversation's collected messages, with the filtering headers."""
        participants = conversation.split(" ")
        subject = f"Conversation {' and '.join(participants)} ({len(entries)} message{'s' * (len(entries) != 1)})"
        message = self._message(recipients, subject, render_lines(entries, with_recipient=True))
        message["X-Bridge-Sender"] = senders_phrase(entries)
        destinations = []
        for entry in entries:
            if entry["to"] not in destinations:
                destinations.append(entry["to"])
        message["X-Bridge-Recipients"] = ", ".join(destinations)
        message["X-Bridge-Conversation"] = conversation
        return message


class BridgeSenderFactory(smtp.ESMTPSenderFactory):
    """Twisted's one-message ESMTP sender, its timeouts on our reactor."""

    def __init__(self, *args, reactor, helo, **kwargs):
        super().__init__(*args, **kwargs)
        self.reactor = reactor
        self.domain = helo.encode("ascii", "replace")

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.callLater = self.reactor.callLater
        return protocol


class Outcome:
    SENT, RETRY, DROP = "sent", "retry", "drop"


def classify(failure):
    """(Outcome, text) for a failed send.

    A 5xx for the recipients or for the data is final; everything else (a
    connection failure, a timeout, a 4xx, a refusal of TLS, authentication
    or MAIL FROM) may succeed later.
    """
    error = failure.value
    if isinstance(error, smtp.SMTPDeliveryError) and error.addresses and 500 <= error.code < 600:
        return Outcome.DROP, str(error)
    return Outcome.RETRY, str(error) or repr(error)


def attach(ctx, reactor, tls_context):
    """The gateway of ``ctx.config`` (the [smtp] section), or None when it names no relay."""
    if not ctx.config.relay:
        return None
    return EmailGateway(ctx, reactor)


class EmailGateway:
    """Offline email and the conversation archive; one instance per server."""

    def __init__(self, ctx, reactor):
        self.ctx = ctx
        self.config = ctx.config
        self.reactor = reactor
        self.storage = ctx.storage
        self.preferences = NotificationPreferences(ctx.storage, ctx.host_config, ctx.accounts.directory)
        self._configure(self.config, self.config.read_password())
        self.running = False
        self._digest_timers = {}      # (host, user) -> DelayedCall
        self._archive_timers = {}     # conversation -> DelayedCall
        self._draining = None         # the Deferred of the outbox loop while it runs
        self._retry_call = None
        ctx.level("email_outbox_messages", "mails waiting for the relay",
                  lambda: self.storage.count(GLOBAL, GLOBAL, OUTBOX))
        self._failures = 0
        self.claim = None             # of the outbox, while the gateway runs
        self._owner = False           # between gained() and lost() of that claim
        self._poll = None             # the owner's looking for what other nodes collected, in a cluster
        self.delivered = 0            # counters, for logs and tests
        self.dropped = 0
        ctx.hook_local("offline/stored", self.offline_stored)
        ctx.hook_local("message/bare", self.headline, OBSERVE)
        ctx.hook_local("muc/mention", self.offline_stored)  # a room message naming a member who is away
        if self.config.archive_recipients:
            ctx.hook_local("stanza/out", self.stanza_out, OBSERVE)

    def _configure(self, config, password):
        domain = self.ctx.host_names()[0]
        self.ctx.config = self.config = config
        self.helo = config.helo_name or domain
        self.mailer = Mailer(config, self.reactor, domain)
        self.relay_host, self.relay_port = config.relay_address()
        self.password = password

    def prepare_reload(self, config):
        """A reloaded [smtp] section (bridge.core.reload): its password file is read now, so that one
        that cannot be read refuses the reload; the function returned puts it in force for the next mail."""
        password = config.read_password()
        return lambda: self._configure(config, password)

    # -- lifetime (the Gateway shape of tap.py) -------------------------------

    def listeners(self):
        return []

    def start(self):
        self.running = True
        self.claim = self.ctx.claim(RESOURCE, self._gained, self._lost)
        log.info("email: relay {relay}, STARTTLS {starttls}, archive to {archive}", relay=self.config.relay,
                 starttls=self.config.starttls, archive=", ".join(self.config.archive_recipients) or "nobody")

    def stop(self):
        """Stop the timers; a send under way is let finish (each step is bounded by
        ``timeout_seconds``) so that a mail the relay accepted leaves the queue; then the outbox is
        given up for another node."""
        self.running = False
        self._stop_timers()
        finished = defer.Deferred()
        if self._draining is not None:
            self._draining.addBoth(lambda result: (finished.callback(None), result)[1])
        else:
            finished.callback(None)
        finished.addCallback(lambda _: self.claim.release() if self.claim is not None else None)
        return finished

    def _stop_timers(self):
        for call in [*self._digest_timers.values(), *self._archive_timers.values(), self._retry_call]:
            if call is not None and call.active():
                call.cancel()
        self._digest_timers.clear()
        self._archive_timers.clear()
        self._retry_call = None
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None

    def owns(self):
        """Whether this node mails digests and archives and sends the outbox now."""
        return self.running and self._owner and (self.claim is None or self.claim.owned)

    def _gained(self):
        self._owner = True
        log.info("email: this node sends the outbox")
        self.resume().addErrback(lambda failure: log.failure("email: resuming the queues failed", failure))
        interval = self.ctx.shared_queue_poll_seconds
        if interval is not None:
            self._poll = looping_call(self.reactor, interval, self._look_for_new)

    def _look_for_new(self):
        self.resume().addErrback(lambda failure: log.failure("email: reading the queues failed", failure))

    def _lost(self):
        """Another node sends now: no timer here; a send under way ends (bounded by ``timeout_seconds``)."""
        self._owner = False
        self._stop_timers()

    @defer.inlineCallbacks
    def resume(self):
        """Once this node owns the outbox (and at each look for what other nodes collected): the timers
        of the digests and archives due, then the outbox."""
        now = self.reactor.seconds()
        for host in self.ctx.host_names():
            for user in (yield self.storage.users(host, DIGEST_DUE)):
                if (host, user) not in self._digest_timers:
                    due = yield self.storage.get(host, user, DIGEST_DUE)
                    if due is not None and self.owns():
                        self._schedule_digest(host, user, max(0.0, due["due"] - now))
        for conversation in (yield self.storage.users(GLOBAL, ARCHIVE_DUE)):
            if conversation not in self._archive_timers:
                due = yield self.storage.get(GLOBAL, conversation, ARCHIVE_DUE)
                if due is not None and self.owns():
                    self._schedule_archive(conversation, max(0.0, due["due"] - now))
        self.kick()

    @defer.inlineCallbacks
    def _mark_due(self, host, user, store, timers, timer_key, schedule, delay):
        """Note when what was just collected is to be mailed: the owner of the outbox schedules it (once);
        another node writes the time unless one is written, for the owner to find."""
        if self.owns():
            if timer_key not in timers:
                schedule(delay)
                yield self.storage.set(host, user, store, {"due": self.reactor.seconds() + delay})
        elif (yield self.storage.get(host, user, store)) is None:
            yield self.storage.set(host, user, store, {"due": self.reactor.seconds() + delay})

    # -- offline email ------------------------------------------------------

    def offline_stored(self, payload):
        """``offline/stored`` handler: never claims the event (SMS may want it too)."""
        host, user, stanza = payload
        self._collect_offline(host, user, stanza).addErrback(
            lambda failure: log.failure("email: queuing for {user}@{host} failed", failure, user=user, host=host))
        return False

    def headline(self, event):
        """An alert for a user with no available resource is mailed as a stored message is; never claims it."""
        stanza = event.stanza
        if stanza.getAttribute("type") != "headline" or event.to is None or not event.to.user:
            return False
        if any(s.priority >= 0 for s in self.ctx.sessions.available(event.to.userhost())):
            return False
        return self.offline_stored((event.host.name, event.to.user, stanza))

    @defer.inlineCallbacks
    def _collect_offline(self, host, user, stanza):
        text = message_text(stanza)
        if text is None or "email" not in (yield self.preferences.channels(host, user)):
            return
        if not (yield self.preferences.email(host, user)):
            return
        entry = {"sender": bare(stanza.getAttribute("from")), "time": self.reactor.seconds(), "text": text}
        yield self.storage.append(host, user, DIGEST, entry)
        yield self._mark_due(host, user, DIGEST_DUE, self._digest_timers, (host, user),
                             lambda delay: self._schedule_digest(host, user, delay), self.config.digest_seconds)

    @defer.inlineCallbacks
    def _flushed(self, host, user, store, due_store, timers, timer_key, schedule, delay):
        """After a flush: the due time cleared, unless entries were collected meanwhile (on any node): they
        are due in ``delay``.  The count follows the clearing, so an entry is never left without one."""
        yield self.storage.set(host, user, due_store, None)
        if (yield self.storage.count(host, user, store)):
            yield self.storage.set(host, user, due_store, {"due": self.reactor.seconds() + delay})
            if self.owns() and timer_key not in timers:
                schedule(delay)

    def _schedule_digest(self, host, user, delay):
        if (host, user) in self._digest_timers:
            return
        self._digest_timers[(host, user)] = self.reactor.callLater(delay, self._digest_due, host, user)

    def _digest_due(self, host, user):
        self.flush_digest(host, user).addErrback(
            lambda failure: log.failure("email: digest for {user}@{host} failed", failure, user=user, host=host))

    @defer.inlineCallbacks
    def flush_digest(self, host, user):
        """Turn a user's collected messages into one email in the outbox."""
        self._digest_timers.pop((host, user), None)
        entries = yield self.storage.items(host, user, DIGEST)
        address = yield self.preferences.email(host, user)
        if entries and address:
            message = self.mailer.offline(address, f"{user}@{host}", [value for _, value in entries])
            yield self.enqueue([address], message, "offline")
            log.info("email: {count} message(s) for {user}@{host} queued to {address}", count=len(entries),
                     user=user, host=host, address=address)
        elif entries:
            log.warn("email: {user}@{host} has no address any more; {count} notice(s) discarded", user=user,
                     host=host, count=len(entries))
        yield self.storage.remove(host, user, DIGEST, [item_id for item_id, _ in entries])
        yield self._flushed(host, user, DIGEST, DIGEST_DUE, self._digest_timers, (host, user),
                            lambda delay: self._schedule_digest(host, user, delay), self.config.digest_seconds)

    # -- the archive ----------------------------------------------------------

    def stanza_out(self, event):
        """``stanza/out`` handler: records chat between local users; routing goes on (False)."""
        stanza = event.stanza
        if stanza.name != "message" or stanza.getAttribute("type", "normal") not in ("chat", "normal"):
            return False
        host = self.ctx.local_host(event.to.host) if event.to is not None and event.to.user else None
        if host is None:
            return False
        text = message_text(stanza)
        if text is None:
            return False
        sender = event.sender.userhost()
        recipient = f"{event.to.user}@{host}"
        if sender == recipient:
            return False
        self._collect_archive(sender, recipient, text).addErrback(
            lambda failure: log.failure("email: archiving failed", failure))
        return False

    @defer.inlineCallbacks
    def _collect_archive(self, sender, recipient, text):
        conversation = conversation_id(sender, recipient)
        entry = {"sender": sender, "to": recipient, "time": self.reactor.seconds(), "text": text}
        yield self.storage.append(GLOBAL, conversation, ARCHIVE, entry)
        yield self._mark_due(GLOBAL, conversation, ARCHIVE_DUE, self._archive_timers, conversation,
                             lambda delay: self._schedule_archive(conversation, delay),
                             self.config.archive_interval_seconds)

    def _schedule_archive(self, conversation, delay):
        if conversation not in self._archive_timers:
            self._archive_timers[conversation] = self.reactor.callLater(delay, self._archive_due, conversation)

    def _archive_due(self, conversation):
        self.flush_archive(conversation).addErrback(
            lambda failure: log.failure("email: archive of {conversation} failed", failure,
                                        conversation=conversation))

    @defer.inlineCallbacks
    def flush_archive(self, conversation):
        """Mail a conversation's collected messages to the archive recipients."""
        self._archive_timers.pop(conversation, None)
        entries = yield self.storage.items(GLOBAL, conversation, ARCHIVE)
        if entries and self.config.archive_recipients:
            message = self.mailer.archive(list(self.config.archive_recipients), conversation,
                                          [value for _, value in entries])
            yield self.enqueue(list(self.config.archive_recipients), message, "archive")
        yield self.storage.remove(GLOBAL, conversation, ARCHIVE, [item_id for item_id, _ in entries])
        yield self._flushed(GLOBAL, conversation, ARCHIVE, ARCHIVE_DUE, self._archive_timers, conversation,
                            lambda delay: self._schedule_archive(conversation, delay),
                            self.config.archive_interval_seconds)

    # -- the outbox -----------------------------------------------------------

    @defer.inlineCallbacks
    def enqueue(self, recipients, message, kind):
        """Persist ``message`` for ``recipients``, then send when the relay is free."""
        text = message.as_bytes(policy=email.policy.default).decode("ascii", "replace")
        yield self.storage.append(GLOBAL, GLOBAL, OUTBOX, {"to": recipients, "mail": text, "kind": kind})
        self.kick()

    def kick(self):
        """Start sending unless a send or a backoff is under way."""
        if self._draining is not None or self._retry_call is not None or not self.owns():
            return
        self._draining = defer.Deferred()
        self._drain().addErrback(lambda failure: log.failure("email: outbox failed", failure)).addBoth(
            self._drained)

    def _drained(self, _):
        draining, self._draining = self._draining, None
        draining.callback(None)

    @defer.inlineCallbacks
    def _drain(self):
        while self.owns():
            head = yield self.storage.items(GLOBAL, GLOBAL, OUTBOX, limit=1)
            if not head:
                return
            item_id, item = head[0]
            # A local fault (an unreadable ca_file) is retried like a relay's.
            attempt = defer.maybeDeferred(self._send, item)
            outcome, detail = yield attempt.addErrback(lambda failure: (Outcome.RETRY, str(failure.value)))
            if outcome == Outcome.RETRY:
                self._back_off(item, detail)
                return
            if outcome == Outcome.DROP:
                self.dropped += 1
                log.error("email: relay {relay} refused the {kind} mail to {to} for good, dropped: {detail}",
                          relay=self.config.relay, kind=item["kind"], to=", ".join(item["to"]), detail=detail)
            else:
                self.delivered += 1
                log.info("email: {kind} mail to {to} accepted by {relay}", kind=item["kind"],
                         to=", ".join(item["to"]), relay=self.config.relay)
                if detail:
                    # Some recipients answered 4xx: a copy for them alone, after the backoff.
                    yield self.storage.append(GLOBAL, GLOBAL, OUTBOX, {**item, "to": detail})
            yield self.storage.remove(GLOBAL, GLOBAL, OUTBOX, [item_id])
            if outcome == Outcome.SENT and detail:
                self._back_off({**item, "to": detail}, "4xx for some recipients")
                return
            self._failures = 0

    def _back_off(self, item, detail):
        """Wait retry_initial_seconds, doubling at each failure in a row up to retry_max_seconds."""
        if not self.running:
            return
        self._failures += 1
        delay = min(self.config.retry_max_seconds, self.config.retry_initial_seconds * 2 ** (self._failures - 1))
        log.warn("email: relay {relay} did not take the {kind} mail to {to} ({detail}); retry in {delay:.1f}s",
                 relay=self.config.relay, kind=item["kind"], to=", ".join(item["to"]), detail=detail, delay=delay)
        self._retry_call = self.reactor.callLater(delay, self._retry)

    def _retry(self):
        self._retry_call = None
        self.kick()

    def _send(self, item):
        """Deferred (Outcome, detail): one attempt at handing ``item`` to the relay."""
        result = defer.Deferred()
        starttls = self.config.starttls
        context = None
        if starttls != "off":
            trust = {}
            if self.config.ca_file:
                with open(self.config.ca_file, "rb") as handle:
                    trust["trustRoot"] = Certificate.loadPEM(handle.read())
            context = optionsForClientTLS(self.relay_host, **trust)
        username = self.config.username.encode("utf-8") or None
        factory = BridgeSenderFactory(
            username, self.password.encode("utf-8") or None, self.mailer.from_address, item["to"],
            io.BytesIO(item["mail"].encode("utf-8")), result, retries=0, timeout=self.config.timeout_seconds,
            contextFactory=context, heloFallback=True, requireAuthentication=bool(username),
            requireTransportSecurity=starttls == "required", reactor=self.reactor, helo=self.helo)
        self.reactor.connectTCP(self.relay_host, self.relay_port, factory, timeout=self.config.timeout_seconds)

        def done(value):
            _, addresses = value
            later = [address.decode("ascii", "replace") for address, code, _ in addresses if 400 <= code < 500]
            refused = [f"{address.decode('ascii', 'replace')}: {code}" for address, code, _ in addresses
                       if code >= 500]
            if refused:
                log.error("email: recipients refused for good: {refused}", refused=", ".join(refused))
            return Outcome.SENT, later

        def failed(failure):
            return classify(failure)

        return result.addCallbacks(done, failed)

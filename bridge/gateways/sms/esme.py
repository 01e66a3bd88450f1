"""The ESME side of SMPP v3.4 on Twisted: no blocking call, time from the clock given.

``ESMEProtocol`` is one connection: it binds as a transceiver, keeps the
link alive with enquire_link, answers the SMSC's enquire_link, deliver_sm and
unbind, answers garbage with generic_nack, and matches responses to requests
by sequence number, each with a response timeout.

``SMSCLink`` keeps one SMSC bound: it reconnects with exponential backoff,
pulls parts from a dispatcher (the outbound queue) within a window of
outstanding submit_sm and a submit rate, backs off on ESME_RTHROTTLED, and
unbinds cleanly at shutdown.
"""

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from bridge.gateways.sms import pdu as pdus

log = Logger()

INTERFACE_VERSION = 0x34
MAX_SEQUENCE = 0x7FFFFFFF


class LinkLost(Exception):
    """The connection ended (or timed out) before the SMSC answered."""


class ResponseTimeout(LinkLost):
    pass


class ESMEProtocol(Protocol):
    """One SMPP connection to an SMSC, bound as a transceiver."""

    def __init__(self, link):
        self.link = link
        self.clock = link.clock
        self.config = link.config
        self.state = "open"
        self.was_bound = False
        self._sequence = 0
        self._outstanding = {}  # sequence -> (Deferred, timer)
        self._keepalive = None
        self._lost = defer.Deferred()
        self.framer = pdus.Framer()

    # -- output ------------------------------------------------------------

    def next_sequence(self):
        self._sequence = self._sequence % MAX_SEQUENCE + 1
        return self._sequence

    def send(self, command, sequence, status=pdus.ESME_ROK, **fields):
        if self.transport is not None and self.state not in ("closed", "closing"):
            self.transport.write(pdus.encode(command, sequence, status, **fields))

    def request(self, command, **fields):
        """Send a request; a Deferred firing with the response PDU (any status)."""
        if self.state in ("closed", "closing"):
            return defer.fail(LinkLost("the connection is closed"))
        sequence = self.next_sequence()
        d = defer.Deferred()
        timer = self.clock.callLater(self.config.response_timeout_seconds, self._timed_out, sequence, command)
        self._outstanding[sequence] = (d, timer)
        self.send(command, sequence, **fields)
        return d

    def _timed_out(self, sequence, command):
        entry = self._outstanding.pop(sequence, None)
        if entry is None:
            return
        log.warn("SMSC {name}: no answer to {command} in {seconds}s; dropping the link", name=self.link.name,
                 command=command, seconds=self.config.response_timeout_seconds)
        self._closing()
        entry[0].errback(ResponseTimeout(command))

    def _closing(self):
        """Close the connection; nothing more is submitted on it meanwhile."""
        if self.state in ("bound", "unbinding"):
            self.was_bound = True
        if self.state != "closed":
            self.state = "closing"
            self.transport.loseConnection()

    def submit(self, **fields):
        """submit_sm; a Deferred firing with the submit_sm_resp PDU."""
        return self.request("submit_sm", **fields)

    def unbind(self):
        """Unbind and close; a Deferred firing when the connection is gone."""
        if self.state == "closed":
            return defer.succeed(None)
        if self.state == "bound":
            self.state = "unbinding"
            self.request("unbind").addBoth(lambda _: self._closing())
        else:
            self._closing()
        return self.when_lost()

    def when_lost(self):
        d = defer.Deferred()
        if self.state == "closed":
            d.callback(None)
        else:
            self._lost.addBoth(lambda result: (d.callback(None), result)[1])
        return d

    # -- connection --------------------------------------------------------

    def connectionMade(self):
        self.state = "binding"
        config = self.config
        self.request("bind_transceiver", system_id=config.system_id, password=config.read_password(),
                     system_type=config.system_type, interface_version=INTERFACE_VERSION,
                     addr_ton=0, addr_npi=0, address_range="").addCallbacks(self._bind_answered, lambda _: None)

    def _bind_answered(self, response):
        if response.command == "generic_nack" or response.status != pdus.ESME_ROK:
            log.warn("SMSC {name} refused the bind: status 0x{status:02x}", name=self.link.name,
                     status=response.status)
            self.link.bind_refused(self, response.status)
            self._closing()
            return
        self.state = "bound"
        self._schedule_keepalive()
        self.link.bound(self)

    def _schedule_keepalive(self):
        if self.config.enquire_link_seconds > 0:
            self._keepalive = self.clock.callLater(self.config.enquire_link_seconds, self._enquire)

    def _enquire(self):
        self._keepalive = None
        if self.state != "bound":
            return
        self.request("enquire_link").addCallbacks(lambda _: None, lambda _: None)
        self._schedule_keepalive()

    def connectionLost(self, reason=None):
        if self.state == "closed":
            return
        if self.state == "binding" and reason is not None:
            # Ended before the bind was answered: a failed TLS handshake (an untrusted certificate) ends here.
            log.warn("SMSC {name}: connection lost before the bind was answered: {error}", name=self.link.name,
                     error=reason.getErrorMessage())
        was_bound = self.was_bound or self.state in ("bound", "unbinding")
        self.state = "closed"
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
        outstanding, self._outstanding = self._outstanding, {}
        for d, timer in outstanding.values():
            if timer.active():
                timer.cancel()
            d.errback(LinkLost("the connection was lost"))
        self.link.connection_lost(self, was_bound)
        self._lost.callback(None)

    # -- input -------------------------------------------------------------

    def dataReceived(self, data):
        try:
            frames, error = self.framer.feed(data), None
        except pdus.FramingError as failure:
            frames, error = failure.frames, failure
        for frame in frames:
            if self.state == "closed":
                return
            self._frame_received(frame)
        if error is not None:
            log.warn("SMSC {name}: {error}; closing", name=self.link.name, error=error)
            self.send("generic_nack", 0, pdus.ESME_RINVCMDLEN)
            self._closing()

    def _frame_received(self, frame):
        try:
            received = pdus.decode(frame)
        except pdus.PDUError as error:
            _, command_id, _, _ = pdus.header(frame)
            log.warn("SMSC {name}: {error}", name=self.link.name, error=error)
            if command_id & 0x80000000:
                entry = self._outstanding.pop(error.sequence, None)
                if entry is not None:
                    entry[1].cancel()
                    entry[0].errback(LinkLost(str(error)))
            else:
                self.send("generic_nack", error.sequence, error.status)
            return
        command = received.command
        if command == "generic_nack" or command.endswith("_resp"):
            entry = self._outstanding.pop(received.sequence, None)
            if entry is None:
                log.info("SMSC {name}: unexpected {command} #{sequence}", name=self.link.name, command=command,
                         sequence=received.sequence)
                return
            entry[1].cancel()
            entry[0].callback(received)
        elif command == "enquire_link":
            self.send("enquire_link_resp", received.sequence)
        elif command == "deliver_sm":
            self._deliver(received)
        elif command == "unbind":
            self.send("unbind_resp", received.sequence)
            self._closing()
        elif command in ("alert_notification", "outbind"):
            pass
        else:
            self.send("generic_nack", received.sequence, pdus.ESME_RINVCMDID)

    def _deliver(self, received):
        if self.state != "bound":
            self.send("deliver_sm_resp", received.sequence, pdus.ESME_RINVBNDSTS)
            return
        d = defer.maybeDeferred(self.link.deliver_received, received)

        def failed(failure):
            log.failure("SMSC {name}: deliver_sm not handled", failure, name=self.link.name)
            return pdus.ESME_RX_T_APPN

        d.addCallbacks(lambda _: pdus.ESME_ROK, failed)
        d.addCallback(lambda status: self.send("deliver_sm_resp", received.sequence, status))


class SMSCLink:
    """One configured SMSC kept bound, fed by ``dispatcher``.

    ``connect(factory)`` opens a connection and returns a Deferred (an
    endpoint's ``connect``).  The dispatcher offers ``take(link)`` (the next
    job or None; its ``recorded`` Deferred fires once the attempt is on
    disk), ``may_send()``, ``submitted(link, job, message_id)``,
    ``retry(link, job)``, ``rejected(link, job, status)`` and
    ``deliver_received(link, pdu)``.
    """

    def __init__(self, name, config, clock, connect, dispatcher):
        self.name = name
        self.config = config
        self.clock = clock
        self.connect = connect
        self.dispatcher = dispatcher
        self.protocol = None
        self.running = False
        self.in_flight = set()
        self.reconnect_delay = config.reconnect_min_seconds
        self.throttle_delay = config.throttle_backoff_seconds
        self._reconnect_timer = None
        self._pump_timer = None
        self._next_submit = 0.0
        self._paused_until = 0.0
        self._connecting = None
        self.stats = {"submitted": 0, "throttled": 0, "binds": 0, "refused_binds": 0}

    # -- lifetime ----------------------------------------------------------

    def start(self):
        self.running = True
        self._connect()

    def stop(self):
        """Stop reconnecting and unbind; a Deferred firing when the link is down."""
        self.running = False
        for timer in (self._reconnect_timer, self._pump_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._reconnect_timer = self._pump_timer = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self.protocol is not None:
            return self.protocol.unbind()
        return defer.succeed(None)

    def _connect(self):
        self._reconnect_timer = None
        if not self.running:
            return
        factory = Factory.forProtocol(lambda: ESMEProtocol(self))
        self._connecting = d = self.connect(factory)

        def failed(failure):
            self._connecting = None
            if self.running:
                log.info("SMSC {name}: cannot connect ({error})", name=self.name, error=failure.getErrorMessage())
                self._schedule_reconnect()

        d.addCallbacks(lambda _: setattr(self, "_connecting", None), failed)

    def _schedule_reconnect(self):
        if not self.running or self._reconnect_timer is not None:
            return
        delay = self.reconnect_delay
        self.reconnect_delay = min(delay * 2, self.config.reconnect_max_seconds)
        log.info("SMSC {name}: reconnecting in {delay}s", name=self.name, delay=delay)
        self._reconnect_timer = self.clock.callLater(delay, self._connect)

    # -- protocol callbacks -----------------------------------------------

    def bound(self, protocol):
        log.info("SMSC {name}: bound", name=self.name)
        self.protocol = protocol
        self.stats["binds"] += 1
        self.reconnect_delay = self.config.reconnect_min_seconds
        self.pump()

    def bind_refused(self, protocol, status):
        self.stats["refused_binds"] += 1

    def connection_lost(self, protocol, was_bound):
        if self.protocol is protocol:
            self.protocol = None
        if was_bound:
            log.info("SMSC {name}: link down", name=self.name)
        self._schedule_reconnect()

    def deliver_received(self, received):
        return self.dispatcher.deliver_received(self, received)

    # -- submitting ---------------------------------------------------------

    def wake(self):
        """The dispatcher has work: submit what the window and the rate allow."""
        self.pump()

    def pump(self):
        if self._pump_timer is not None:
            if self._pump_timer.active():
                return
            self._pump_timer = None
        while self.protocol is not None and self.protocol.state == "bound" and len(self.in_flight) < self.config.window:
            now = self.clock.seconds()
            ready = max(self._next_submit, self._paused_until)
            if now < ready:
                self._pump_timer = self.clock.callLater(ready - now, self.pump)
                return
            job = self.dispatcher.take(self)
            if job is None:
                return
            self._next_submit = max(now, self._next_submit) + 1.0 / self.config.submit_rate_per_second
            self._submit(job)

    def _submit(self, job):
        """Write the submit_sm once the queue has recorded the attempt (a part whose submit_sm may have
        left is never sent again by another owner: queue.py), unless the link or the right to send
        went meanwhile."""
        self.in_flight.add(job)
        job.recorded.addCallbacks(self._recorded, self._not_recorded, (job,), None, (job,))

    def _recorded(self, _, job):
        protocol = self.protocol
        if protocol is None or protocol.state != "bound" or not self.dispatcher.may_send():
            self.in_flight.discard(job)
            self.dispatcher.retry(self, job)
            return
        config = self.config
        d = protocol.submit(
            source_addr_ton=config.source_addr_ton, source_addr_npi=config.source_addr_npi,
            source_addr=config.source_addr, dest_addr_ton=1, dest_addr_npi=1,
            destination_addr=job.destination, esm_class=job.esm_class, data_coding=job.data_coding,
            registered_delivery=1 if job.receipt else 0, short_message=job.short_message)
        d.addCallbacks(self._answered, self._lost, (job,), None, (job,))

    def _not_recorded(self, failure, job):
        """Storage refused the attempt: nothing left; the part waits a throttle backoff and goes back."""
        log.warn("SMSC {name}: the attempt could not be recorded ({error}); not sent yet", name=self.name,
                 error=failure.getErrorMessage())
        self.in_flight.discard(job)
        self._paused_until = max(self._paused_until, self.clock.seconds() + self.config.throttle_backoff_seconds)
        self.dispatcher.retry(self, job)
        self.pump()

    def _answered(self, response, job):
        self.in_flight.discard(job)
        status = response.status
        if response.command == "submit_sm_resp" and status == pdus.ESME_ROK:
            self.stats["submitted"] += 1
            self.throttle_delay = self.config.throttle_backoff_seconds
            self.dispatcher.submitted(self, job, pdus.text_field(response.message_id))
        elif status == pdus.ESME_RTHROTTLED:
            self.stats["throttled"] += 1
            delay = self.throttle_delay
            self.throttle_delay = min(delay * 2, self.config.reconnect_max_seconds)
            self._paused_until = max(self._paused_until, self.clock.seconds() + delay)
            log.info("SMSC {name}: throttled; pausing {delay}s", name=self.name, delay=delay)
            self.dispatcher.retry(self, job)
        else:
            self.dispatcher.rejected(self, job, status)
        self.pump()

    def _lost(self, failure, job):
        self.in_flight.discard(job)
        failure.trap(LinkLost)
        self.dispatcher.retry(self, job)

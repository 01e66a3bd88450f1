"""SIP transactions (RFC 3261 section 17).

A ``TransactionLayer`` sits between the transports and the transaction user
(the gateway's registrar, MESSAGE, SUBSCRIBE... handlers).  It has no socket
and no clock of its own: it is given an ``IReactorTime`` and, per message,
the transport it came by, an object with ``send(message, address)`` and a
``reliable`` flag (false for UDP, true for TCP and TLS).

* ``send_request(request, transport, address)`` starts a client transaction;
  the request's top Via must already carry a branch (``new_branch()``).
* ``receive(message, transport, address)`` takes a parsed message: a request
  is matched to a server transaction (by branch, RFC 3261 17.2.3, or by the
  RFC 2543 fallback) and retransmissions are absorbed; a response is matched
  to its client transaction (17.1.3).
* The user is told through ``request_received(transaction, request)`` (the
  transaction is None for an ACK, which never has one here),
  ``response_received(transaction, response)``,
  ``transaction_timed_out(transaction)``, ``transport_error(transaction,
  error)`` and, if it has it, ``stray_response(response, transport,
  address)``.  It answers with ``transaction.respond(response)``.

Server transactions are non-INVITE only (17.2.2).  The gateway has no
calls, so an INVITE is answered statelessly (8.2.7): the user gets a
``StatelessResponder`` that sends its one response once, with no
retransmission until an ACK that a spoofed source never sends; the ACK
then matches nothing.  Past ``max_transactions`` live server transactions,
or ``max_transaction_bytes`` of the requests they hold, a new request is
answered 503 with Retry-After, statelessly, and not handed on.  Once
answered, a transaction over UDP is kept only as the bytes of its answer
(``Answered``), for timer J, so that a retransmission gets them again and
never reaches the user twice: those are bounded apart, by
``max_transaction_bytes`` again, the oldest forgotten first when they pass
it (they are the nearest to the end of their 32 s).

A response to a UDP request whose sender has not proved who it is
(``Request.verified``) is never longer than that request
(``message.fit_response``), so a spoofed source cannot use the gateway to
amplify traffic towards its victim; what its smallest form still exceeds
is paid from a per-address allowance (``ExcessAllowance``) that a flood
exhausts at once.

Timers follow RFC 3261 table 4 (A, B, D, E, F and K for client
transactions, J for server ones); retransmissions (A, E) run only on
unreliable transports, and D, J and K are zero on reliable ones.
"""

import secrets
from dataclasses import dataclass

from twisted.logger import Logger

from bridge.core.counters import sip_method, sip_transaction_table
from bridge.gateways.sip.message import (
    CSeq, GrammarError, Request, fit_response, make_response, parse_address,
)

log = Logger()

MAGIC_COOKIE = "z9hG4bK"
RETRY_AFTER_SECONDS = 5  # what a request refused past the transaction limits is told


def new_branch():
    """A fresh RFC 3261 branch, magic cookie first."""
    return MAGIC_COOKIE + secrets.token_hex(10)


@dataclass(frozen=True)
class Timers:
    """The base intervals of RFC 3261 table 4, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def timeout(self):
        return 64 * self.t1


def stamp_via(request, source):
    """Set received and fill rport in the top Via (RFC 3261 18.2.1, RFC 3581 4).

    ``received`` is the transport's peer address whenever it differs from
    the sent-by or rport was asked for; otherwise a ``received`` the client
    wrote itself is removed, so the top Via never carries an address the
    peer chose.
    """
    via = request.top_via
    host, port = source
    before = dict(via.params)
    if "rport" in via.params:
        via.params["rport"] = str(port)
    if via.host.strip("[]") != host or "rport" in via.params:
        via.params["received"] = host
    else:
        via.params.pop("received", None)
    if via.params != before:
        request.headers.replace_first("Via", str(via))


def response_address(request, transport, source):
    """Where responses to ``request`` go (RFC 3261 18.2.2, RFC 3581 4).

    Over a reliable transport, back to the connection's peer.  Over UDP,
    to the source address when rport was asked for, else to the source
    address at the port of the Via's sent-by (5060 by default); maddr is
    not honoured.
    """
    if transport.reliable:
        return source
    via = request.top_via
    if via.rport is not None:
        return source
    return (source[0], via.port or 5060)


def _tag(address_text):
    try:
        return parse_address(address_text).tag
    except GrammarError:
        return None


def server_key(request):
    """The key a (non-INVITE) server transaction is found by (RFC 3261 17.2.3).

    Without the magic cookie the RFC 2543 rule applies: Request-URI, From
    and To tags, Call-ID, CSeq number and top Via.
    """
    via = request.top_via
    if via.branch and via.branch.startswith(MAGIC_COOKIE):
        return ("3261", via.branch, via.sent_by, request.method)
    headers = request.headers
    return ("2543", str(request.uri), _tag(headers.get("From", "")), _tag(headers.get("To", "")),
            request.call_id, request.cseq.number, request.method, str(via))


class ExcessAllowance:
    """How many bytes beyond their requests' size unverified sources may still be answered with.

    A response cut to its smallest form (``fit_response``) can still be a
    little longer than a short request: a 200 to a bare OPTIONS ping, a
    challenge to a bare REGISTER.  Each source address has ``BURST_BYTES``
    of such excess, refilled over ``REFILL_SECONDS``: a phone that pings or
    authenticates now and then never runs out, while a flood of short
    spoofed requests in one victim's name soon does, and then gets only the
    answers that fit in their requests.  At most ``MAX_SOURCES`` addresses
    are tracked; past that, those whose allowance is whole again are
    forgotten, and new ones get none.  The transports share one
    (``SourcePolicy.allowance``) with the transaction layer.
    """

    BURST_BYTES = 4096
    REFILL_SECONDS = 60.0
    MAX_SOURCES = 10000

    def __init__(self, clock):
        self.clock = clock
        self._left = {}  # source host -> (bytes left, time of the last refill)

    def _refilled(self, host, now):
        left, since = self._left.get(host, (self.BURST_BYTES, now))
        return min(self.BURST_BYTES, left + (now - since) * self.BURST_BYTES / self.REFILL_SECONDS)

    def take(self, host, size):
        """True (and ``size`` bytes spent) when ``host`` may be sent ``size`` bytes beyond its request."""
        now = self.clock.seconds()
        if host not in self._left and len(self._left) >= self.MAX_SOURCES:
            self._left = {h: entry for h, entry in self._left.items() if self._refilled(h, now) < self.BURST_BYTES}
            if len(self._left) >= self.MAX_SOURCES:
                return False
        left = self._refilled(host, now)
        if left < size:
            self._left[host] = (left, now)
            return False
        self._left[host] = (left - size, now)
        return True


def answer_bytes(response, request_size, address, allowance):
    """What may be sent to the unverified UDP source ``address`` for a request of ``request_size`` bytes,
    as bytes: ``response`` cut down to fit (``fit_response``), any excess left paid from ``allowance``
    (None: no excess at all); None when it cannot be paid (then nothing is sent)."""
    data = response.to_bytes()
    if len(data) > request_size:
        data = fit_response(response, request_size).to_bytes()
    excess = len(data) - request_size
    if excess <= 0 or (allowance is not None and allowance.take(address[0], excess)):
        return data
    log.debug("SIP {status} to {address} not sent: longer than the request, allowance spent",
              status=response.status, address=address)
    return None


class Encoded:
    """A message as it goes on the wire, encoded once: what transports are handed for an answer."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def to_bytes(self):
        return self.data


def _encoded(response, request, transport, address, allowance):
    """``response`` encoded, or for a UDP request whose sender has not proved who it is,
    ``answer_bytes``; and the excess over the request that each sending of it costs the allowance."""
    if transport.reliable or request.verified or request.size is None:
        return response.to_bytes(), 0
    data = answer_bytes(response, request.size, address, allowance)
    return data, 0 if data is None else max(0, len(data) - request.size)


def client_key(message):
    """Client transactions are found by top Via branch and CSeq method (17.1.3)."""
    return (message.top_via.branch, message.cseq.method)


class _Transaction:
    """What client and server transactions share: timers, sending, termination."""

    def __init__(self, layer, request, transport, address):
        self.layer = layer
        self.request = request
        self.transport = transport
        self.address = address
        self.timers = layer.timers
        self.state = None
        self._calls = {}

    @property
    def invite(self):
        return self.request.method == "INVITE"

    @property
    def reliable(self):
        return self.transport.reliable

    def _start(self, name, delay, function):
        self._stop(name)
        self._calls[name] = self.layer.clock.callLater(delay, self._fire, name, function)

    def _fire(self, name, function):
        self._calls.pop(name, None)
        function()

    def _stop(self, *names):
        for name in names:
            call = self._calls.pop(name, None)
            if call is not None and call.active():
                call.cancel()

    def _send(self, message):
        try:
            self.transport.send(message, self.address)
        except Exception as error:
            log.failure("SIP transport error")
            self.terminate()
            self.layer.user.transport_error(self, error)
            return False
        return True

    def _wait_then_terminate(self, name, delay):
        if self.reliable or delay == 0:
            self.terminate()
        else:
            self._start(name, delay, self.terminate)

    def terminate(self):
        if self.state == "terminated":
            return
        self.state = "terminated"
        self._stop(*list(self._calls))
        self.layer._forget(self)


class ClientTransaction(_Transaction):
    """An INVITE (17.1.1) or non-INVITE (17.1.2) client transaction."""

    def __init__(self, layer, request, transport, address):
        super().__init__(layer, request, transport, address)
        self.key = client_key(request)
        self.ack = None
        self.last_response = None

    def start(self):
        self.state = "calling" if self.invite else "trying"
        if not self._send(self.request):
            return
        if not self.reliable:
            self._interval = self.timers.t1
            self._start("A" if self.invite else "E", self._interval, self._retransmit)
        self._start("B" if self.invite else "F", self.timers.timeout, self._timed_out)

    def _retransmit(self):
        if self.invite:
            if self.state != "calling":
                return
            self._interval *= 2
        else:
            if self.state not in ("trying", "proceeding"):
                return
            self._interval = self.timers.t2 if self.state == "proceeding" else min(
                2 * self._interval, self.timers.t2)
        if self._send(self.request):
            self._start("A" if self.invite else "E", self._interval, self._retransmit)

    def _timed_out(self):
        if self.state in ("calling", "trying", "proceeding"):
            self.layer.count("client", self.request.method, "timeout")
            self.terminate()
            self.layer.user.transaction_timed_out(self)

    def receive_response(self, response):
        status = response.status
        if status >= 200 and self.state in ("calling", "trying", "proceeding"):
            self.layer.count("client", self.request.method, status)
        if self.invite:
            self._receive_invite_response(response, status)
        else:
            self._receive_non_invite_response(response, status)

    def _receive_invite_response(self, response, status):
        if self.state in ("calling", "proceeding"):
            self._stop("A")
            if status < 200:
                self.state = "proceeding"
                self._stop("B")
                self.layer.user.response_received(self, response)
            elif status < 300:
                self.terminate()
                self.layer.user.response_received(self, response)
            else:
                self.state = "completed"
                self._stop("B")
                self.last_response = response
                self.ack = self._make_ack(response)
                self._send(self.ack)
                self.layer.user.response_received(self, response)
                self._wait_then_terminate("D", 32.0 if not self.reliable else 0)
        elif self.state == "completed" and status >= 300:
            self._send(self.ack)

    def _receive_non_invite_response(self, response, status):
        if self.state not in ("trying", "proceeding"):
            return
        if status < 200:
            self.state = "proceeding"
            self.layer.user.response_received(self, response)
            return
        self.state = "completed"
        self._stop("E", "F")
        self.last_response = response
        self.layer.user.response_received(self, response)
        self._wait_then_terminate("K", self.timers.t4)

    def _make_ack(self, response):
        """The ACK of a non-2xx final response (17.1.1.3)."""
        request = self.request
        ack = Request("ACK", request.uri)
        ack.headers.add("Via", request.headers.get("Via"))
        for name in ("Route",):
            for value in request.headers.get_all(name):
                ack.headers.add(name, value)
        ack.headers.add("Max-Forwards", "70")
        ack.headers.add("From", request.headers.get("From"))
        ack.headers.add("To", response.headers.get("To"))
        ack.headers.add("Call-ID", request.call_id)
        ack.headers.add("CSeq", str(CSeq(request.cseq.number, "ACK")))
        return ack


class ServerTransaction(_Transaction):
    """A non-INVITE server transaction (17.2.2) until its final answer; then ``Answered``, over UDP."""

    def __init__(self, layer, request, transport, address, key, size):
        super().__init__(layer, request, transport, address)
        self.key = key
        self.size = size  # the request's bytes, counted against the layer's limit
        self.provisional = None  # the last provisional answer sent (an ``Answered``)
        self.address = response_address(request, transport, address)

    def start(self):
        self.state = "trying"

    def respond(self, response):
        """Send a response from the transaction user."""
        if self.state not in ("trying", "proceeding"):
            raise ValueError(f"cannot respond in state {self.state}")
        self.layer.count("server", self.request.method, response.status)
        data, charge = _encoded(response, self.request, self.transport, self.address, self.layer.allowance)
        if data is not None and not self._send(Encoded(data)):
            return
        if response.status < 200:
            self.state = "proceeding"
            self.provisional = Answered(data, charge, self.transport, self.address)
        else:
            self.state = "completed"
            self.terminate()
            if not self.reliable:  # over TCP and TLS there are no retransmissions to answer
                self.layer.answered.keep(self.key, Answered(data, charge, self.transport, self.address))

    def receive_request(self, request):
        """A retransmission of the request before the final answer: the last provisional one again."""
        if self.provisional is not None:
            self.provisional.resend(self.layer.allowance)


class Answered:
    """An answer's bytes (None when it could not be sent), to send again to each retransmission of its
    request: what is left of a server transaction over UDP once it has sent its final answer, until
    timer J, and a transaction's last provisional answer."""

    __slots__ = ("data", "charge", "transport", "address", "expires")

    def __init__(self, data, charge, transport, address):
        self.data = data
        self.charge = charge  # bytes taken from the allowance each time it is sent (see ``_encoded``)
        self.transport = transport
        self.address = address
        self.expires = None

    def resend(self, allowance):
        if self.data is None or (self.charge and not allowance.take(self.address[0], self.charge)):
            return
        try:
            self.transport.send(Encoded(self.data), self.address)
        except Exception:
            log.failure("SIP answer to a retransmission from {address} not sent", address=self.address)


class AnsweredTable:
    """The answered server transactions (``Answered``) by key, oldest first, each until timer J.

    One timer for the whole table, not one per transaction, firing at most
    once every ``SWEEP_SECONDS`` (an answer may be kept that much past its
    timer J); past ``max_bytes`` of answers (each counted with
    ``OVERHEAD_BYTES`` for its entry), the oldest are forgotten at once.
    """

    OVERHEAD_BYTES = 256
    SWEEP_SECONDS = 1.0

    def __init__(self, clock, lifetime, max_bytes):
        self.clock = clock
        self.lifetime = lifetime
        self.max_bytes = max_bytes
        self.entries = {}  # key -> Answered, in the order they were kept, which is the order they expire
        self.bytes = 0
        self._sweep = None
        self._full = False  # whether the bound was reached (logged once each time)

    def get(self, key):
        return self.entries.get(key)

    def keep(self, key, answered):
        answered.expires = self.clock.seconds() + self.lifetime
        self.entries[key] = answered
        self.bytes += self._cost(answered)
        full = self.max_bytes is not None and self.bytes > self.max_bytes
        if full and not self._full:
            log.warn("SIP: the answers kept for retransmissions passed {size} bytes: the oldest are forgotten "
                     "before their timer J", size=self.max_bytes)
        self._full = full
        while self.max_bytes is not None and self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))
        if self._sweep is None:
            self._sweep = self.clock.callLater(self.lifetime, self._expire)

    def _cost(self, answered):
        return self.OVERHEAD_BYTES + (len(answered.data) if answered.data is not None else 0)

    def _drop(self, key):
        self.bytes -= self._cost(self.entries.pop(key))

    def _expire(self):
        self._sweep = None
        now = self.clock.seconds()
        entries = self.entries
        while entries:
            key = next(iter(entries))
            expires = entries[key].expires
            if expires > now:
                self._sweep = self.clock.callLater(max(expires - now, self.SWEEP_SECONDS), self._expire)
                return
            self._drop(key)


class StatelessResponder:
    """Answers one request once, keeping no state (RFC 3261 8.2.7): what an INVITE gets."""

    def __init__(self, layer, request, transport, address):
        self.layer = layer
        self.request = request
        self.transport = transport
        self.address = response_address(request, transport, address)

    def respond(self, response):
        self.layer.count("server", self.request.method, response.status)
        data, _ = _encoded(response, self.request, self.transport, self.address, self.layer.allowance)
        if data is not None:
            try:
                self.transport.send(Encoded(data), self.address)
            except Exception:
                log.failure("SIP response to {address} not sent", address=self.address)


class TransactionLayer:
    """All transactions of one SIP element, keyed for matching.

    ``max_transactions`` and ``max_transaction_bytes`` bound the server
    transactions (None: no bound): how many, and the bytes of the requests
    they hold.  ``allowance`` is the ``ExcessAllowance`` of the answers to
    unverified sources (one of its own when not given).  ``counts``: the
    table (``sip_transaction_table``) where finished transactions are
    counted (one of its own when not given).
    """

    def __init__(self, clock, user, timers=Timers(), max_transactions=None, max_transaction_bytes=None,
                 allowance=None, counts=None):
        self.clock = clock
        # Finished transactions by (side, method, outcome): the server's ``Counters.sip_transactions``.
        self.counts = counts if counts is not None else sip_transaction_table()
        self.user = user
        self.timers = timers
        self.max_transactions = max_transactions
        self.max_transaction_bytes = max_transaction_bytes
        self.client = {}
        self.server = {}  # the server transactions not answered yet
        self.server_bytes = 0  # the bytes of the requests they hold
        self.answered = AnsweredTable(clock, timers.timeout, max_transaction_bytes)
        self.allowance = allowance or ExcessAllowance(clock)  # for answers longer than their requests
        self._full = False  # whether the limits were reached (logged once each time)

    def send_request(self, request, transport, address):
        """Start a client transaction for ``request`` (not ACK: an ACK has none)."""
        if request.method == "ACK":
            raise ValueError("ACK is sent outside transactions")
        transaction = ClientTransaction(self, request, transport, address)
        if transaction.key in self.client:
            raise ValueError("a client transaction with this branch exists")
        self.client[transaction.key] = transaction
        transaction.start()
        return transaction

    def receive(self, message, transport, address):
        """Hand a parsed message from ``transport``, sent from ``address``."""
        if isinstance(message, Request):
            self._receive_request(message, transport, address)
        else:
            transaction = self.client.get(client_key(message))
            if transaction is not None:
                transaction.receive_response(message)
            else:
                stray = getattr(self.user, "stray_response", None)
                if stray is not None:
                    stray(message, transport, address)

    def _receive_request(self, request, transport, address):
        stamp_via(request, address)
        if request.method == "ACK":
            self.user.request_received(None, request)  # no INVITE transaction ever exists
            return
        if request.method == "INVITE":
            self.user.request_received(StatelessResponder(self, request, transport, address), request)
            return
        key = server_key(request)
        transaction = self.server.get(key)
        if transaction is not None:
            transaction.receive_request(request)
            return
        answered = self.answered.get(key)
        if answered is not None:
            answered.resend(self.allowance)
            return
        size = _size(request)
        if not self._admits(size):
            busy = make_response(request, 503, to_tag=secrets.token_hex(6))
            busy.headers.add("Retry-After", str(RETRY_AFTER_SECONDS))
            StatelessResponder(self, request, transport, address).respond(busy)
            return
        transaction = ServerTransaction(self, request, transport, address, key, size)
        self.server[key] = transaction
        self.server_bytes += size
        transaction.start()
        self.user.request_received(transaction, request)

    def _admits(self, size):
        """Whether a new server transaction holding ``size`` bytes stays within the limits."""
        full = ((self.max_transactions is not None and len(self.server) >= self.max_transactions)
                or (self.max_transaction_bytes is not None
                    and self.server_bytes + size > self.max_transaction_bytes))
        if full and not self._full:
            log.warn("SIP: {count} server transactions holding {size} bytes: new requests get 503 until some end",
                     count=len(self.server), size=self.server_bytes)
        self._full = full
        return not full

    def count(self, side, method, outcome):
        """One more transaction of ``method`` finished on ``side`` with ``outcome`` (a status, or "timeout")."""
        if not isinstance(outcome, str):
            if outcome < 200:
                return
            outcome = f"{min(outcome // 100, 6)}xx"
        self.counts[(side, sip_method(method), outcome)] += 1

    def _forget(self, transaction):
        table = self.client if isinstance(transaction, ClientTransaction) else self.server
        if table.get(transaction.key) is transaction:
            del table[transaction.key]
            if table is self.server:
                self.server_bytes -= transaction.size


def _size(request):
    return request.size if request.size is not None else len(request.to_bytes())


__all__ = [
    "ClientTransaction", "ServerTransaction", "StatelessResponder", "TransactionLayer", "Timers", "ExcessAllowance",
    "Answered", "AnsweredTable", "Encoded", "answer_bytes",
    "new_branch", "stamp_via", "response_address", "server_key", "client_key",
    "MAGIC_COOKIE", "RETRY_AFTER_SECONDS",
]

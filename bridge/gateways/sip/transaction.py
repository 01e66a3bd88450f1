"""SIP transactions (RFC 3261 section 17, with the Accepted state of RFC 6026).

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
  transaction is None for an ACK outside any transaction: the ACK of a 2xx),
  ``response_received(transaction, response)``,
  ``transaction_timed_out(transaction)``, ``transport_error(transaction,
  error)`` and, if it has it, ``stray_response(response, transport,
  address)``.  It answers with ``ServerTransaction.respond(response)``.

Timers A to K follow RFC 3261 table 4; retransmissions (A, E, G) run only on
unreliable transports, and D, I, J and K are zero on reliable ones.
"""

import secrets
from dataclasses import dataclass

from twisted.logger import Logger

from bridge.gateways.sip.message import (
    CSeq, GrammarError, Request, make_response, parse_address,
)

log = Logger()

MAGIC_COOKIE = "z9hG4bK"


def new_branch():
    """A fresh RFC 3261 branch, magic cookie first."""
    return MAGIC_COOKIE + secrets.token_hex(10)


@dataclass(frozen=True)
class Timers:
    """The base intervals of RFC 3261 table 4, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    trying_delay: float = 0.2  # an INVITE server transaction sends 100 after this

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
    """The key a server transaction is found by (RFC 3261 17.2.3).

    An ACK gets the key of the INVITE it acknowledges.  Without the magic
    cookie the RFC 2543 rule applies: Request-URI, From tag, Call-ID, CSeq
    number and top Via; the To tag is compared apart for ACK.
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    if via.branch and via.branch.startswith(MAGIC_COOKIE):
        return ("3261", via.branch, via.sent_by, method)
    headers = request.headers
    key = ("2543", str(request.uri), _tag(headers.get("From", "")), request.call_id,
           request.cseq.number, method, str(via))
    if method != "INVITE":
        key += (_tag(headers.get("To", "")),)
    return key


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
            self.terminate()
            self.layer.user.transaction_timed_out(self)

    def receive_response(self, response):
        status = response.status
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
    """An INVITE (17.2.1) or non-INVITE (17.2.2) server transaction."""

    def __init__(self, layer, request, transport, address, key):
        super().__init__(layer, request, transport, address)
        self.key = key
        self.last_response = None
        self.address = response_address(request, transport, address)

    @property
    def to_tag(self):
        if self.last_response is None:
            return None
        return _tag(self.last_response.headers.get("To", ""))

    def start(self):
        if self.invite:
            self.state = "proceeding"
            self._start("trying", self.timers.trying_delay, self._send_trying)
        else:
            self.state = "trying"

    def _send_trying(self):
        if self.state == "proceeding" and self.last_response is None:
            self.respond(make_response(self.request, 100))

    def respond(self, response):
        """Send a response from the transaction user."""
        status = response.status
        if self.invite:
            if self.state == "accepted" and 200 <= status < 300:
                self._send(response)
                return
            if self.state != "proceeding":
                raise ValueError(f"cannot respond in state {self.state}")
            self._stop("trying")
            self.last_response = response
            if not self._send(response):
                return
            if status < 200:
                return
            if status < 300:
                self.state = "accepted"
                self._start("L", self.timers.timeout, self.terminate)
            else:
                self.state = "completed"
                if not self.reliable:
                    self._interval = self.timers.t1
                    self._start("G", self._interval, self._retransmit_final)
                self._start("H", self.timers.timeout, self._no_ack)
        else:
            if self.state not in ("trying", "proceeding"):
                raise ValueError(f"cannot respond in state {self.state}")
            self.last_response = response
            if not self._send(response):
                return
            if status < 200:
                self.state = "proceeding"
            else:
                self.state = "completed"
                self._wait_then_terminate("J", self.timers.timeout)

    def _retransmit_final(self):
        if self.state != "completed":
            return
        if self._send(self.last_response):
            self._interval = min(2 * self._interval, self.timers.t2)
            self._start("G", self._interval, self._retransmit_final)

    def _no_ack(self):
        if self.state == "completed":
            self.terminate()
            self.layer.user.transaction_timed_out(self)

    def receive_request(self, request):
        """A retransmission of the request, or the ACK of an INVITE."""
        if request.method == "ACK":
            if self.state == "completed":
                self.state = "confirmed"
                self._stop("G", "H")
                self._wait_then_terminate("I", self.timers.t4)
            elif self.state == "accepted":
                self.layer.user.request_received(None, request)
            return
        if self.state in ("proceeding", "completed") and self.last_response is not None:
            self._send(self.last_response)


class TransactionLayer:
    """All transactions of one SIP element, keyed for matching."""

    def __init__(self, clock, user, timers=Timers()):
        self.clock = clock
        self.user = user
        self.timers = timers
        self.client = {}
        self.server = {}

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
        key = server_key(request)
        transaction = self.server.get(key)
        if request.method == "ACK":
            if transaction is not None and key[0] == "2543":
                if _tag(request.headers.get("To", "")) != transaction.to_tag:
                    transaction = None
            if transaction is None:
                self.user.request_received(None, request)
            else:
                transaction.receive_request(request)
            return
        if transaction is not None:
            transaction.receive_request(request)
            return
        transaction = ServerTransaction(self, request, transport, address, key)
        self.server[key] = transaction
        transaction.start()
        self.user.request_received(transaction, request)

    def matching_invite(self, cancel):
        """The INVITE server transaction a CANCEL is for (RFC 3261 9.2), or None."""
        key = list(server_key(cancel))
        key[3 if key[0] == "3261" else 5] = "INVITE"
        if key[0] == "2543":
            key = key[:7]
        return self.server.get(tuple(key))

    def _forget(self, transaction):
        table = self.client if isinstance(transaction, ClientTransaction) else self.server
        if table.get(transaction.key) is transaction:
            del table[transaction.key]


__all__ = [
    "ClientTransaction", "ServerTransaction", "TransactionLayer", "Timers",
    "new_branch", "stamp_via", "response_address", "server_key", "client_key",
    "MAGIC_COOKIE",
]

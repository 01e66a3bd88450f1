"""The SIP registrar (RFC 3261 section 10.3) with digest authentication against the XMPP accounts.

A REGISTER names its address of record in To: ``sip:alice@localhost`` is
the account ``alice`` of host ``localhost`` (an alias names its host).  A
To domain that is no host of this server (an IP address, a SIP domain name a
phone was set up with) falls back to the configured realm's host.  The
digest realm is the host's name, because that is the realm whose HA1 the
account keeps (``bridge.core.accounts``).

Authentication (RFC 7616, RFC 2617, RFC 8760):

* no credentials for our realm: 401 with one challenge per algorithm;
* credentials on a nonce we did not issue (forged, or from before a
  restart, since the nonce secret lives in memory): 401 with a fresh one;
* a right answer on an expired nonce: 401 with ``stale=true``;
* a right answer whose nonce count was already used: 401, fresh nonce;
* a wrong answer on a live nonce of ours, an unknown user, or a user who
  may not change this address of record: 403 Forbidden, so a phone with a
  wrong password stops instead of looping on challenges (RFC 3261 22.4
  lets a UAS answer 403 when it will not accept the credentials).

Bindings live in memory (``Bindings``; in a cluster also in Redis, ``clustered.py``), several per address of record, each
with its own expiry, Call-ID and CSeq as section 10.3 step 7 requires.
``Contact: *`` with ``Expires: 0`` removes every binding; ``expires=0`` on
a contact removes that one.  The 200 OK lists every current contact with
the seconds it has left.  A bound contact remembers the transport and
source address its REGISTER came by, so requests to it can reuse the flow
(a phone behind NAT, a TCP connection).
"""

import dataclasses
import email.utils
import math
import secrets

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from bridge.core.attempts import FailedAttempts
from bridge.core.directory import DirectoryUnavailable
from bridge.gateways.sip import digest
from bridge.gateways.sip.addressing import local_user
from bridge.gateways.sip.message import GrammarError, make_response, parse_uri

log = Logger()

# What the accounts keep an HA1 for; the configuration chooses which of them to offer, in which order.
ALGORITHMS = ("SHA-256", "MD5")


@dataclasses.dataclass
class Binding:
    """One contact of an address of record."""

    uri: str
    contact: object  # the Address as registered (parameters kept)
    call_id: str
    cseq: int
    expires_at: float
    transport: object = None  # the flow the REGISTER came by, None once a stream closed
    source: tuple = None
    protocol: str = None  # that flow's transport name (UDP, TCP, TLS), kept after it closed

    def remaining(self, now):
        return max(0, int(round(self.expires_at - now)))


def contact_key(uri):
    """What makes two contact URIs the same binding (a simplified RFC 3261 19.1.4).

    Scheme and host compare without case, the user part with it, the port
    as given; of the URI parameters only ``transport`` counts.
    """
    return (uri.scheme, uri.user, uri.host.lower(), uri.port,
            (uri.params.get("transport") or "").lower())


class Bindings:
    """Every binding, in memory: (host, user) -> {contact key: Binding}."""

    def __init__(self, clock):
        self.clock = clock
        self._table = {}

    def current(self, host, user):
        """The live bindings of ``user@host``, those that expired removed."""
        now = self.clock.seconds()
        bindings = self._table.get((host, user), {})
        for key in [k for k, b in bindings.items() if b.expires_at <= now]:
            del bindings[key]
        if not bindings:
            self._table.pop((host, user), None)
        return list(bindings.values())

    def table(self, host, user):
        self.current(host, user)
        return self._table.setdefault((host, user), {})

    def discard_empty(self, host, user):
        if not self._table.get((host, user)):
            self._table.pop((host, user), None)

    def prune(self):
        """Forget every expired binding (the gateway calls this periodically)."""
        for host, user in list(self._table):
            self.current(host, user)

    def clear(self):
        """Forget every binding (a node of a cluster that lost its lease, ``clustered.py``)."""
        self._table.clear()

    def forget_transport(self, transport):
        """A stream closed: its bindings can no longer be reached through it."""
        for bindings in self._table.values():
            for binding in bindings.values():
                if binding.transport is transport:
                    binding.transport = None

    def __len__(self):
        return sum(len(b) for b in self._table.values())


class ProvenAlgorithms:
    """Which digest algorithms to challenge a source with, by what it proved it supports (RFC 8760).

    Many phones answer only the first challenge, and some (Debian's baresip
    1.0) give up on a 401 that names any algorithm they lack, even with one
    they know beside it.  So, per source address (host, port):

    * a source that answered a challenge of ours with an algorithm (right or
      wrong: it computed one) is challenged with that algorithm alone from
      then on;
    * a source challenged with several algorithms that comes back without
      credentials (it could answer none of them) gets the next challenge
      with MD5 alone, the one nearly every phone knows, when MD5 is offered;
    * anyone else gets every algorithm of ``digest_algorithms``.

    An entry lasts ``lifetime_seconds`` after it was last confirmed; at most
    ``MAX_SOURCES`` are kept, the oldest going first (forgetting only means
    being offered every algorithm again).
    """

    MAX_SOURCES = 10000
    FALLBACK = "MD5"

    def __init__(self, clock, algorithms, lifetime_seconds):
        self.clock = clock
        self.algorithms = tuple(algorithms)
        self.lifetime_seconds = lifetime_seconds
        self._sources = {}  # (host, port) -> (time, proven algorithm or None when offered several unanswered)

    def _remember(self, source, value):
        self._sources.pop(source, None)
        now = self.clock.seconds()
        if len(self._sources) >= self.MAX_SOURCES:
            cutoff = now - self.lifetime_seconds
            self._sources = {key: entry for key, entry in self._sources.items() if entry[0] > cutoff}
            while len(self._sources) >= self.MAX_SOURCES:
                del self._sources[next(iter(self._sources))]
        self._sources[source] = (now, value)

    def _known(self, source):
        entry = self._sources.get(source)
        if entry is None or entry[0] <= self.clock.seconds() - self.lifetime_seconds:
            return None
        return entry

    def offer(self, source):
        """The algorithms to challenge ``source`` with now (recorded: several offered, none answered yet)."""
        entry = self._known(source)
        if entry is not None and entry[1] in self.algorithms:
            return (entry[1],)
        if entry is not None and self.FALLBACK in self.algorithms:
            offered = (self.FALLBACK,)
        else:
            offered = self.algorithms
        if len(offered) > 1:
            self._remember(source, None)
        return offered

    def answered(self, source, algorithm):
        """``source`` answered a challenge of ours with ``algorithm``: it supports it."""
        self._remember(source, algorithm)

    def __len__(self):
        return len(self._sources)


class Registrar:
    """Answers REGISTER requests; ``register(request, transport, source)`` gives a Deferred response."""

    def __init__(self, ctx, secret=None, changed=lambda host, user: None, vouch=lambda address: None):
        """``changed(host, user)`` is told after every REGISTER that changed the bindings of ``user@host``;
        ``vouch(address)`` of every source address that answered a digest challenge right."""
        self.ctx = ctx
        self.accounts = ctx.accounts
        self.sip = ctx.config
        self.clock = ctx.clock
        self.secret = secret or secrets.token_bytes(32)
        self.bindings = Bindings(ctx.clock)
        self.failures = FailedAttempts(ctx.clock)  # wrong digest answers per source address
        self.proven = ProvenAlgorithms(ctx.clock, self.sip.digest_algorithms,
                                       max(self.sip.nonce_lifetime_seconds, self.sip.max_expires_seconds))
        self.changed = changed
        self.vouch = vouch
        self._authenticators = {}
        self.default_host = ctx.local_host(self.sip.realm) if self.sip.realm else ctx.host_names()[0]

    def authenticator(self, realm):
        if realm not in self._authenticators:
            self._authenticators[realm] = digest.DigestAuthenticator(
                realm, self.secret, self.clock, nonce_lifetime_seconds=self.sip.nonce_lifetime_seconds,
                algorithms=tuple(self.sip.digest_algorithms))
        return self._authenticators[realm]

    def host_for(self, domain):
        """The host whose accounts answer for ``domain``: itself or its alias's host, else the realm's."""
        return self.ctx.local_host(domain.strip("[]")) or self.default_host

    # -- the request ----------------------------------------------------------

    def register(self, request, transport=None, source=None):
        return defer.maybeDeferred(self._register, request, transport, source)

    @defer.inlineCallbacks
    def _register(self, request, transport, source):
        try:
            to = request.to_address
        except GrammarError:
            return self._response(request, 400, "Bad To")
        if to.uri.scheme not in ("sip", "sips") or not to.uri.user:
            return self._response(request, 404, "Not Found (To has no SIP user)")
        host = self.host_for(to.uri.host)
        user = local_user(to.uri)
        if user is None:
            return self._response(request, 404)
        refusal = self._refusal_without_lease(request)
        if refusal is not None:
            return refusal
        realm = host
        # 1. authentication
        outcome = yield self.authenticate(request, host, user, realm, source)
        if outcome is not None:
            return outcome
        # 2. the contacts
        response = self._update(request, host, user, transport, source)
        if response.status == 200:
            self.changed(host, user)
        return response

    def _refusal_without_lease(self, request):
        """503 while this node of a cluster accepts no new sessions (Redis away, or no lease), as XMPP
        binding is refused then (docs/scaling.md): this node's view of who holds the phones may be
        stale.  Retry-After is one lease, within which Redis answers again or the node joins again."""
        cluster = self.ctx.cluster
        if cluster is None or cluster.accepting():
            return None
        response = self._response(request, 503, "Service Unavailable (this node is out of its cluster)")
        response.headers.add("Retry-After", str(max(1, math.ceil(cluster.lease.lifetime_seconds))))
        return response

    def _challenge(self, request, realm, source, stale=False):
        """401 with the challenges ``source`` is offered (``ProvenAlgorithms``)."""
        response = self._response(request, 401)
        algorithms = self.proven.offer(source) if source else None
        for value in self.authenticator(realm).challenges(stale=stale, algorithms=algorithms):
            response.headers.add("WWW-Authenticate", value)
        return response

    @defer.inlineCallbacks
    def authenticate(self, request, host, user, realm, source):
        """None when the request is authenticated for ``user@host``, else the response to send.

        ``source`` is the (address, port) the request came from: wrong answers are counted against
        the address, never against what the request says of itself (Via ``received``)."""
        credentials = None
        for value in request.headers.get_all("Authorization"):
            try:
                parsed = digest.parse_authorization(value)
            except digest.DigestError:
                return self._response(request, 400, "Bad Request (malformed Authorization)")
            if parsed.realm == realm:
                credentials = parsed
                break
        if credentials is None:
            return self._challenge(request, realm, source)
        peer = source[0] if source else "?"
        if self.failures.blocked(peer):
            log.info("SIP {method} from {source} refused unread: too many failed attempts", method=request.method,
                     source=peer)
            return self._response(request, 403, "Forbidden (too many failed attempts)")
        authenticator = self.authenticator(realm)
        if authenticator.nonce_status(credentials.nonce) == digest.INVALID:
            return self._challenge(request, realm, source)
        try:
            if str(parse_uri(credentials.uri)) != str(request.uri):
                return self._response(request, 400, "Bad Request (digest uri differs from the Request-URI)")
        except GrammarError:
            return self._response(request, 400, "Bad Request (bad digest uri)")
        try:
            username = nodeprep.prepare(credentials.username)
        except UnicodeError:
            username = None
        stored = None
        algorithm = credentials.algorithm
        known = algorithm in ALGORITHMS + tuple(a + "-sess" for a in ALGORITHMS)
        if known and source:
            self.proven.answered(source, digest.base_algorithm(algorithm))
        if username == user and known:
            try:
                stored = yield self.accounts.digest_ha1(host, user, realm, algorithm)
            except DirectoryUnavailable:
                log.warn("SIP {method} for {user}@{host}: the directory does not answer", method=request.method,
                         user=user, host=host)
                return self._response(request, 503, "Service Unavailable (the directory does not answer)")
        if stored is None:
            # Unknown user, no digest secret yet, or another user's address: compute anyway
            # against a value that never matches, so timing reveals nothing.
            stored = digest.ha1(algorithm if algorithm in ALGORITHMS else "MD5", "", realm, secrets.token_hex(8))
            authenticator.check(credentials, request.method, stored)
            log.info("SIP {method} for {user}@{host} refused: no digest secret for {username!r}", method=request.method,
                     user=user, host=host, username=credentials.username)
            self.failures.failed(peer)
            return self._response(request, 403)
        verdict = authenticator.check(credentials, request.method, stored)
        if verdict.outcome == digest.OK:
            request.verified = True
            self.vouch(source[0])
            return None
        if verdict.outcome == digest.STALE:
            return self._challenge(request, realm, source, stale=True)
        if verdict.outcome == digest.REPLAYED:
            return self._challenge(request, realm, source)
        log.info("SIP {method} for {user}@{host} refused: {reason}", method=request.method, user=user, host=host,
                 reason=verdict.reason)
        self.failures.failed(peer)
        return self._response(request, 403)

    def _update(self, request, host, user, transport, source):
        """RFC 3261 10.3 steps 6 to 8, all or nothing."""
        sip = self.sip
        now = self.clock.seconds()
        contacts = request.contacts
        header = request.headers.get("Expires")
        default = int(header) if header is not None else sip.default_expires_seconds
        call_id = request.call_id
        cseq = request.cseq.number
        table = self.bindings.table(host, user)
        changes = {}  # key -> Binding, or None to remove
        if "*" in contacts:
            if header is None or int(header) != 0:
                return self._response(request, 400, "Bad Request (Contact * needs Expires: 0)")
            for key, binding in table.items():
                if binding.call_id == call_id and cseq <= binding.cseq:
                    return self._response(request, 500, "Server Internal Error (CSeq out of order)")
                changes[key] = None
        else:
            for address in contacts:
                expires = address.expires if address.expires is not None else default
                if 0 < expires < sip.min_expires_seconds:
                    response = self._response(request, 423)
                    response.headers.add("Min-Expires", str(sip.min_expires_seconds))
                    return response
                expires = min(expires, sip.max_expires_seconds)
                key = contact_key(address.uri)
                existing = table.get(key)
                if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
                    return self._response(request, 500, "Server Internal Error (CSeq out of order)")
                if expires == 0:
                    changes[key] = None
                else:
                    contact = dataclasses.replace(address, params={
                        k: v for k, v in address.params.items() if k != "expires"})
                    changes[key] = Binding(str(address.uri), contact, call_id, cseq, now + expires,
                                           transport, source, getattr(transport, "name", None))
        remaining = {k for k in table if changes.get(k, table[k]) is not None} | {
            k for k, b in changes.items() if b is not None}
        if len(remaining) > sip.max_contacts_per_user:
            return self._response(request, 403, "Forbidden (too many contacts)")
        for key, binding in changes.items():
            if binding is None:
                table.pop(key, None)
            else:
                table[key] = binding
        self.bindings.discard_empty(host, user)
        if changes:
            log.info("SIP {user}@{host}: {count} contact(s) bound", user=user, host=host, count=len(remaining))
        response = self._response(request, 200)
        for binding in self.bindings.current(host, user):
            response.headers.add("Contact", f"{binding.contact};expires={binding.remaining(now)}")
        response.headers.add("Date", email.utils.formatdate(now, usegmt=True))
        return response

    def _response(self, request, status, reason=None):
        return make_response(request, status, reason, to_tag=secrets.token_hex(6))


__all__ = ["Registrar", "Bindings", "Binding", "contact_key"]

"""Client-to-server streams (RFC 6120): features, STARTTLS, SASL, binding,
stream management (XEP-0198), client state indication (XEP-0352) and
keepalive pings.

``ClientStream`` holds the logic of one client stream and knows nothing of
the framing: it is driven by ``stream_opened``, ``element_received`` and
``connection_lost``, and writes through a *framing* object (``open``,
``send``, ``close``, ``reset``, ``start_tls``, ``tls_transport``, and
``answered``, told when the server has answered enough of the client's
requests for it to take more).  ``TCPClientProtocol`` is the
framing for TCP; the BOSH and WebSocket gateways supply theirs and reuse
everything here.
"""

import base64
import functools
import os

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from bridge.core import sasl
from bridge.core.directory import DirectoryUnavailable
from bridge.core.sessions import Session
from bridge.core.stanza import first_child, make
from bridge.core.tls import channel_binding
from bridge.core.streams.base import NS_TLS, ConnectionsPerAddress, XMLStreamProtocol, stream_error_element
from bridge.core.streams.csi import NS_CSI, HeldStanzas
from bridge.core.streams.sm import MODULUS, NS_SM, AckError, SessionState
from bridge.core.xmlstream import NS_STREAMS

log = Logger()

NS_CLIENT = "jabber:client"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_PING = "urn:xmpp:ping"
MAX_SASL_FAILURES = 3
# Requests of one client to the server (IQ get or set to itself or its host) that may be in work at
# once: storage answers later than the request, so reading must stop somewhere else than at the output.
MAX_REQUESTS_IN_WORK = 16
STANZAS = ("message", "presence", "iq")


def attempted_jid(username, host):
    """The JID a login tried, named once: a client that sends a whole JID as its user name
    (``alice@example.com``) is not logged as ``alice@example.com@example.com``."""
    name = username if username is not None else "(no user name)"
    return name if "@" in name else f"{name}@{host}"


def _directory_unavailable(failure):
    """A host's directory that does not answer: temporary-auth-failure (RFC 6120 6.5.12), not a verdict."""
    failure.trap(DirectoryUnavailable)
    log.warn("authentication deferred: {why}", why=failure.value)
    raise sasl.SASLFailure("temporary-auth-failure")


class EndedFraming:
    """The framing of a stream whose connection has ended: it sends nothing.

    An answer may still reach the stream after the end (a storage read
    during SASL, say); it goes nowhere.
    """

    can_start_tls = False
    may_authenticate_in_clear = False

    def __init__(self, peer):
        self.peer = peer

    def send(self, element):
        pass

    def open(self, stream_id, host):
        pass

    def close(self):
        pass

    def reset(self):
        pass

    def answered(self):
        pass

    def start_tls(self):
        return False

    def tls_transport(self):
        return None


class ClientStream:
    """The state of one client connection, from stream header to unbinding."""

    def __init__(self, server, framing, listener, secure=False):
        self.server = server
        self.framing = framing
        self.listener = listener
        self.secure = secure
        self.host = None
        self.username = None
        self.jid = None
        self.session = None
        self.sasl_exchange = None
        self.sasl_failures = 0
        self.stream_id = None  # set when our stream header is sent
        self.closed = False
        # Only a connection that drops unexpectedly leaves a resumable session waiting.
        self.ended_on_purpose = False
        self._ack_request = None
        clock = server.clock
        self._pre_auth_timer = clock.callLater(listener.pre_auth_timeout_seconds, self._pre_auth_timeout)
        self._last_activity = clock.seconds()
        self._ping_timer = None
        self._ping_id = None
        self._in_work = {}  # id -> how many of the client's requests to the server with it await an answer
        self._in_work_total = 0  # the sum of those counts
        self._resuming = False  # a resumption from another node is under way: nothing else is read
        self.held = None  # XEP-0352: while the client says it is inactive, what waits for it
        self._stanzas_in = server.counters.stanzas_in["c2s"]
        self._stanzas_out = server.counters.stanzas_out["c2s"]

    # -- input -------------------------------------------------------------

    def data_seen(self):
        """Called for any bytes from the client: the connection is alive."""
        self._last_activity = self.server.clock.seconds()

    def stream_opened(self, header):
        to = header.getAttribute("to")
        host_name = self.server.config.host_for((to or "").lower())
        self._open(host_name or to)
        if header.getAttribute("version", "0.0").split(".")[0] != "1":
            self.stream_error("unsupported-version")
            return
        if host_name is None:
            self.stream_error("host-unknown", f"{to!r} is not served here")
            return
        if self.host is not None and host_name != self.host:
            self.stream_error("host-unknown", "the host changed within the session")
            return
        self.host = host_name
        self.framing.send(self._features())

    def _open(self, host):
        self.stream_id = base64.urlsafe_b64encode(os.urandom(12)).decode("ascii")
        self.framing.open(self.stream_id, host or next(iter(self.server.hosts)))

    def _features(self):
        features = domish.Element((NS_STREAMS, "features"))
        config = self.listener
        if not self.secure and self.framing.can_start_tls:
            starttls = features.addElement((NS_TLS, "starttls"))
            if config.require_encryption:
                starttls.addElement("required")
        if self.username is None:
            if self._may_authenticate():
                mechanisms = features.addElement((NS_SASL, "mechanisms"))
                for mechanism in self._mechanisms():
                    mechanisms.addElement("mechanism", content=mechanism)
            self._hooks().fire("stream-features/pre-auth", (self, features))
        else:
            features.addElement((NS_BIND, "bind"))
            features.addElement((NS_SESSION, "session")).addElement("optional")
            features.addElement((NS_SM, "sm"))
            features.addElement((NS_CSI, "csi"))
            self._hooks().fire("stream-features/post-auth", (self, features))
        return features

    def _mechanisms(self):
        names = []
        if channel_binding(self.framing.tls_transport()) is not None:
            names += ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]
        names += list(sasl.SCRAM_HASHES)
        if self.secure:
            names.append("PLAIN")
        return names

    def element_received(self, element):
        if self.closed:
            return
        if element.uri == NS_TLS and element.name == "starttls":
            self._starttls()
        elif element.uri == NS_SASL:
            self._sasl(element)
        elif element.uri == NS_SM:
            self._stream_management(element)
        elif element.uri == NS_CSI and element.name in ("active", "inactive"):
            self._client_state(element.name)
        elif element.name in STANZAS and element.uri is None:
            self._stanzas_in[element.name] += 1
            if self.session is not None:
                self._stanza(element)
            elif self.username is not None and element.name == "iq":
                self._bind_phase_iq(element)
            elif element.name == "iq" and self._unauthenticated_iq(element):
                pass
            else:
                self.stream_error("not-authorized")
        else:
            self.stream_error("unsupported-stanza-type", f"<{element.name}/> in {element.uri}")

    def _stanza(self, stanza):
        sm = self.session.sm
        if sm is None:
            self._take_stanza(stanza)
            return
        # XEP-0198: counted handled once the core is done with it (see sm.py).
        settling = stanza.settling = sm.handled.settling()
        settling.enter()
        try:
            self._take_stanza(stanza)
        finally:
            settling.leave()

    def _take_stanza(self, stanza):
        if stanza.name == "iq" and stanza.getAttribute("id") == self._ping_id and self._ping_id:
            self._ping_id = None
            return
        payload = first_child(stanza) if stanza.name == "iq" else None
        if payload is not None and payload.uri == NS_SESSION and stanza.getAttribute("type") == "set":
            # RFC 3921 session establishment: a no-op that older clients (Strophe, Converse) still send.
            self.send(make("iq", to=self.session.full, sender=self.host, type="result", id=stanza.getAttribute("id")))
            return
        if stanza.name == "iq" and stanza.getAttribute("type") in ("get", "set") and self._to_server(stanza):
            key = stanza.getAttribute("id")
            self._in_work[key] = self._in_work.get(key, 0) + 1
            self._in_work_total += 1
        self.server.stanza_from_session(self.session, stanza)

    def _to_server(self, iq):
        """True for a request the server answers: to the user's own account or to the host (one to
        the session's own full JID goes back to the client, which may never answer it)."""
        to = iq.getAttribute("to")
        return to is None or to in (self.host, self.session.bare)

    @property
    def busy(self):
        """True while the client has as many requests in work as it may, or waits for a resumption
        from another node: its framing reads no more."""
        return self._resuming or self._in_work_total >= MAX_REQUESTS_IN_WORK

    def _answered(self, stanza):
        key = stanza.getAttribute("id")
        count = self._in_work.get(key)
        if count is None or stanza.getAttribute("type") not in ("result", "error"):
            return
        was_busy = self.busy
        self._in_work_total -= 1
        if count > 1:
            self._in_work[key] = count - 1
        else:
            del self._in_work[key]
        if was_busy:
            self.framing.answered()

    # -- client state indication (XEP-0352) ----------------------------------

    def _client_state(self, state):
        """<active/> or <inactive/>: nonzas, neither routed nor counted by stream management."""
        if self.username is None:
            self.stream_error("not-authorized", "client state before authentication")
        elif state == "inactive":
            if self.held is None:
                self.held = HeldStanzas(self.listener.csi_max_held_stanzas, self.listener.csi_max_held_bytes)
        else:
            self._release_held()

    def _release_held(self):
        """Back to active (or ending): what was held goes out, in order, before anything else."""
        for stanza in self._take_held():
            self._deliver(stanza)

    def _take_held(self):
        held, self.held = self.held, None
        return held.take() if held is not None else []

    # -- stream management (XEP-0198) ----------------------------------------

    def _stream_management(self, element):
        if element.name == "enable":
            self._enable(element)
        elif element.name == "resume":
            self._resume(element)
        elif element.name == "r" and self.session is not None and self.session.sm is not None:
            # Answered once the stanzas received before it are counted: the <a/> covers all it can.
            self.session.sm.handled.when_counted(functools.partial(self._send_ack, self.session.sm))
        elif element.name == "a" and self.session is not None and self.session.sm is not None:
            try:
                self.session.sm.acks.received_ack(int(element.getAttribute("h", "")))
            except (ValueError, AckError) as error:
                self.stream_error("undefined-condition", f"bad acknowledgement: {error}")
        elif element.name not in ("r", "a"):
            self._sm_failed("feature-not-implemented")

    def _sm_failed(self, condition, h=None):
        failed = domish.Element((NS_SM, "failed"))
        if h is not None:
            failed["h"] = str(h)
        failed.addElement(("urn:ietf:params:xml:ns:xmpp-stanzas", condition))
        self.framing.send(failed)

    def _send_ack(self, sm):
        if not self.closed and self.session is not None and self.session.sm is sm:
            ack = domish.Element((NS_SM, "a"))
            ack["h"] = str(sm.handled.h)
            self.framing.send(ack)
            if sm.resumable and self.server.cluster is not None:
                self.server.cluster.remember_resumption(self.session)

    def _enable(self, element):
        if self.session is None or self.session.sm is not None:
            self._sm_failed("unexpected-request")
            return
        timeout = self.listener.resumption_timeout_seconds
        wants_resume = element.getAttribute("resume") in ("true", "1") and timeout > 0
        resume_id = base64.urlsafe_b64encode(os.urandom(18)).decode("ascii") if wants_resume else None
        self.session.sm = SessionState(resume_id)
        enabled = domish.Element((NS_SM, "enabled"))
        if resume_id:
            self.server.resumable_sessions[resume_id] = self.session
            enabled["id"] = resume_id
            enabled["resume"] = "true"
            enabled["max"] = str(int(timeout))
        self.framing.send(enabled)
        if resume_id and self.server.cluster is not None:
            self.server.cluster.remember_resumption(self.session)

    def _resume(self, element):
        """Take over a waiting (or dying) session of the same account, over any transport."""
        if self.username is None or self.session is not None:
            self._sm_failed("unexpected-request")
            return
        previd = element.getAttribute("previd", "")
        session = self.server.resumable_sessions.get(previd)
        if session is None and self.server.cluster is not None and previd:
            self._resume_from_cluster(previd, element.getAttribute("h", ""))
            return
        if session is None or session.bare != f"{self.username}@{self.host}":
            self._sm_failed("item-not-found")
            return
        try:
            acknowledged = int(element.getAttribute("h", ""))
            session.sm.acks.received_ack(acknowledged)
        except (ValueError, AckError):
            self._sm_failed("unexpected-request", session.sm.handled.h)
            return
        old = session.stream
        # XEP-0352: the client state is the stream's and starts active again; what the old
        # stream held is newer than anything it sent, so it follows the unacknowledged stanzas.
        held = old._take_held()
        old.session = None
        if not old.closed:
            old.stream_error("conflict", "the session was resumed on another connection")
        if session.sm.expiry is not None and session.sm.expiry.active():
            session.sm.expiry.cancel()
        session.sm.expiry = None
        session.stream = self
        self.session = session
        self.jid = session.jid
        resumed = domish.Element((NS_SM, "resumed"))
        resumed["previd"] = session.sm.resume_id
        resumed["h"] = str(session.sm.handled.h)
        self.framing.send(resumed)
        for stanza in session.sm.acks.take_unacked() + held:
            self.send(stanza)
        log.info("session {jid} resumed from {peer}", jid=session.full, peer=self.framing.peer)

    def _resume_from_cluster(self, previd, acknowledged):
        """Resume here a session of a node that died (docs/stream-management.md, "On another node").
        Nothing else is read from the client until it is done: it waits for <resumed/> or <failed/>."""
        try:
            acknowledged = int(acknowledged) % MODULUS
        except ValueError:
            self._sm_failed("unexpected-request")
            return
        self._resuming = True
        d = self.server.cluster.take_resumption(previd, f"{self.username}@{self.host}")
        d.addCallback(self._resumed_from_cluster, previd, acknowledged)
        d.addErrback(self._internal_error)
        d.addBoth(self._resumption_done)

    def _resumption_done(self, _):
        self._resuming = False
        self.framing.answered()

    def _resumed_from_cluster(self, taken, previd, acknowledged):
        if self.closed or self.session is not None:
            return
        existing = self.server.sessions.get(taken.jid.full()) if taken is not None else None
        if taken is None or (existing is not None and existing.local):
            self._sm_failed("item-not-found")
            return
        # The stanzas the dead node wrote and the client did not acknowledge are gone with it: the
        # counts go on from the client's h, and the archive holds the messages among them.
        session = Session(taken.jid, self)
        session.marks = taken.marks
        session.sm = SessionState(previd)
        session.sm.handled.h = taken.handled
        session.sm.acks.acknowledged = acknowledged
        self.server.resumable_sessions[previd] = session
        self.jid = taken.jid
        self.session = session
        resumed = domish.Element((NS_SM, "resumed"))
        resumed["previd"] = previd
        resumed["h"] = str(taken.handled)
        self.framing.send(resumed)
        self.server.bind(session)
        self.server.cluster.remember_resumption(session)
        log.info("session {jid} of a dead node resumed from {peer}", jid=session.full, peer=self.framing.peer)
        if taken.presence is not None:
            # The client's last presence, as if it sent it again: its contacts and resources may have
            # heard it gone from the survivor that announced the dead node's users.
            self._take_stanza(taken.presence)

    def _request_ack(self):
        self._ack_request = None
        if not self.closed:
            self.framing.send(domish.Element((NS_SM, "r")))

    # -- TLS and SASL ------------------------------------------------------

    def _starttls(self):
        if self.secure or not self.framing.can_start_tls:
            self.stream_error("policy-violation", "TLS is already in place")
            return
        # The framing answers <proceed/> and starts TLS, unless something came
        # with <starttls/> (then the stream has ended with an error).
        if self.framing.start_tls():
            self.secure = True
            self.stream_id = None

    def _restart(self):
        """After STARTTLS or SASL success the client opens a new stream."""
        self.stream_id = None
        self.framing.reset()

    def _hooks(self):
        """The events of the stream's host."""
        return self.server.hosts[self.host].hooks

    def _unauthenticated_iq(self, iq):
        """IQs allowed before authentication (in-band registration)."""
        payload = first_child(iq)
        if payload is None or self.host is None:
            return False
        return self._hooks().fire(f"unauthenticated-iq/{payload.uri}:{payload.name}", (self, iq))

    def _may_authenticate(self):
        """SASL on this stream now: over TLS, where encryption is not required, or where the framing
        says a clear connection will do (no TLS to wait for; a browser on loopback)."""
        return self.secure or not self.listener.require_encryption or self.framing.may_authenticate_in_clear

    def _lookup(self, username):
        return self.server.accounts.credentials(self.host, username).addErrback(_directory_unavailable)

    def _check_password(self, username, password):
        return self.server.accounts.check_password(self.host, username, password, self._decoy).addErrback(
            _directory_unavailable)

    def _decoy(self, username):
        return self.server.decoys.credentials(self.host, username)

    def _sasl(self, element):
        if self.host is None or self.username is not None:
            self.stream_error("policy-violation", "SASL is not expected now")
            return
        if not self._may_authenticate():
            self._sasl_failure("encryption-required")
            return
        if element.name == "auth":
            if self.server.failed_logins.blocked(self._peer_host()):
                self._sasl_failure("temporary-auth-failure")
                return
            mechanism = element.getAttribute("mechanism")
            if mechanism not in self._mechanisms():
                self._sasl_failure("invalid-mechanism")
                return
            if mechanism == "PLAIN":
                self.sasl_exchange = sasl.PlainExchange(self._check_password)
            else:
                binding = channel_binding(self.framing.tls_transport())
                self.sasl_exchange = sasl.ScramExchange(mechanism, self._lookup, binding,
                                                        plus_offered=binding is not None, decoy=self._decoy)
            self._sasl_step(str(element).strip())
        elif element.name == "response" and self.sasl_exchange is not None:
            self._sasl_step(str(element).strip())
        elif element.name == "abort":
            self.sasl_exchange = None
            self._sasl_failure("aborted")
        else:
            self._sasl_failure("malformed-request")

    def _sasl_step(self, text):
        try:
            data = b"" if text in ("", "=") else base64.b64decode(text, validate=True)
        except ValueError:
            self._sasl_failure("incorrect-encoding")
            return
        exchange = self.sasl_exchange
        d = defer.maybeDeferred(exchange.receive, data)

        def answered(result):
            reply, finished = result
            if self.closed:
                return
            encoded = base64.b64encode(reply).decode("ascii") if reply else None
            if not finished:
                challenge = domish.Element((NS_SASL, "challenge"))
                challenge.addContent(encoded or "=")
                self.framing.send(challenge)
                return
            success = domish.Element((NS_SASL, "success"))
            if encoded:
                success.addContent(encoded)
            self._authenticated(exchange.username)
            log.info("{jid} logged in from {peer} over {transport}", jid=f"{exchange.username}@{self.host}",
                     peer=self.framing.peer, transport=self._transport_name())
            self.framing.send(success)
            self._restart()

        def failed(failure):
            failure.trap(sasl.SASLFailure)
            self.sasl_exchange = None
            self._sasl_failure(failure.value.condition)
            if failure.value.condition == "not-authorized":
                self.server.failed_logins.failed(self._peer_host())
                log.info("authentication failed for {jid} from {peer} over {transport}",
                         jid=attempted_jid(exchange.username, self.host), peer=self.framing.peer,
                         transport=self._transport_name())

        d.addCallbacks(answered, failed).addErrback(self._internal_error)

    def _transport_name(self):
        """What carries the stream, as the logs name it: tcp, bosh or websocket, and whether over TLS."""
        kind = getattr(self.framing, "kind", "tcp")
        return f"{kind}+tls" if self.framing.tls_transport() is not None else kind

    def _peer_host(self):
        """The client's address without its port (how failed logins are counted)."""
        return self.framing.peer.rsplit(":", 1)[0]

    def _sasl_failure(self, condition):
        failure = domish.Element((NS_SASL, "failure"))
        failure.addElement(condition)
        self.framing.send(failure)
        self.sasl_failures += 1
        self.server.counters.authentication_failures += 1
        if self.sasl_failures >= MAX_SASL_FAILURES:
            self.stream_error("policy-violation", "too many failed authentications")

    def _authenticated(self, username):
        self.username = username
        self.sasl_exchange = None
        if self._pre_auth_timer.active():
            self._pre_auth_timer.cancel()
        self._schedule_ping()

    # -- resource binding --------------------------------------------------

    def _bind_phase_iq(self, iq):
        payload = first_child(iq)
        if iq.getAttribute("type") == "set" and payload is not None and payload.uri == NS_BIND:
            self._bind(iq, payload)
        else:
            reply = make("iq", type="error", id=iq.getAttribute("id"))
            error = reply.addElement("error")
            error["type"] = "auth"
            error.addElement(("urn:ietf:params:xml:ns:xmpp-stanzas", "not-authorized"))
            self.framing.send(reply)

    def _bind(self, iq, payload):
        requested = (str(payload.resource).strip() if payload.resource else "") or None
        bare = f"{self.username}@{self.host}"
        policy = self.listener.resource_conflict
        cluster = self.server.cluster
        if cluster is not None and not cluster.accepting():
            # Without Redis or a lease, this node's view of the cluster may be stale (docs/scaling.md).
            self._bind_error(iq, "resource-constraint", "wait")
            return
        try:
            jid = JID(f"{bare}/{requested or self._random_resource()}")
        except Exception:
            self._bind_error(iq, "bad-request", "modify")
            return
        existing = self.server.sessions.get(jid.full())
        if existing is not None:
            if policy == "refuse":
                self._bind_error(iq, "conflict", "cancel")
                return
            if policy == "rename":
                jid = JID(f"{bare}/{requested}-{self._random_resource()[:8]}")
            else:
                existing.close("conflict", "replaced by a new session")
        sessions = self.server.sessions.resources(bare)
        if len([s for s in sessions if s.full != jid.full()]) >= self.listener.max_sessions_per_user:
            self._bind_error(iq, "resource-constraint", "wait")
            return
        self.jid = jid
        self.session = Session(jid, self)
        reply = make("iq", type="result", id=iq.getAttribute("id"))
        reply.addElement((NS_BIND, "bind")).addElement("jid", content=jid.full())
        self.framing.send(reply)
        self.server.bind(self.session)

    def _bind_error(self, iq, condition, kind):
        reply = make("iq", type="error", id=iq.getAttribute("id"))
        error = reply.addElement("error")
        error["type"] = kind
        error.addElement(("urn:ietf:params:xml:ns:xmpp-stanzas", condition))
        self.framing.send(reply)

    @staticmethod
    def _random_resource():
        return base64.b32encode(os.urandom(10)).decode("ascii").lower()

    # -- output and end ----------------------------------------------------

    def send(self, stanza):
        """Deliver a routed stanza to this client, unless it is inactive and the stanza may wait (XEP-0352)."""
        held = self.held
        if held is not None and not self.closed:
            if held.hold(stanza):
                return
            for waiting in held.take():
                self._deliver(waiting)
        self._deliver(stanza)

    def _deliver(self, stanza):
        """Write a stanza to the client (counted, and kept until acknowledged, under XEP-0198)."""
        if stanza.name == "iq" and self._in_work:
            self._answered(stanza)
        sm = self.session.sm if self.session is not None else None
        if sm is not None and stanza.name in STANZAS:
            sm.acks.sent(stanza)
            if self.closed:
                # Closing, or waiting for resumption: kept, up to the configured queue.
                if len(sm.acks.unacked) > self.listener.resumption_max_queue:
                    if sm.expiry is not None and sm.expiry.active():
                        sm.expiry.cancel()
                    session, self.session = self.session, None
                    self.end_session(session)
                return
            if len(sm.acks.unacked) > 2 * self.listener.resumption_max_queue:
                self.stream_error("policy-violation", "too many unacknowledged stanzas")
                return
            if self._ack_request is None and not self.closed:
                self._ack_request = self.server.clock.callLater(0, self._request_ack)
        if not self.closed:
            if stanza.name in self._stanzas_out:
                self._stanzas_out[stanza.name] += 1
            self.framing.send(stanza)

    def stream_error(self, condition, text=None):
        """Send a stream error and close the stream (RFC 6120 section 4.9).  On a stream already gone, the
        session it keeps for a resumption ends: the server ended it (bridgectl kick or deluser)."""
        if self.closed:
            self._end_held_session()
            return
        self.ended_on_purpose = True
        self._release_held()
        if self.server.log_budget.allows("stream errors"):
            log.info("stream error {condition} for {peer}: {text}", condition=condition, peer=self.framing.peer,
                     text=text or "")
        if self.stream_id is None:
            # RFC 6120 section 4.9.1.1: an error before our header still opens the stream.
            self._open(self.host)
        self.framing.send(stream_error_element(condition, text))
        self.close()

    def close(self):
        if not self.closed:
            self._release_held()
            self.closed = True
            self.framing.close()

    def stream_closed(self):
        """The client sent </stream:stream>: a clean end, never resumed."""
        self.ended_on_purpose = True
        self.close()

    def connection_lost(self):
        self.closed = True
        # What was held is written nowhere now: under XEP-0198 it joins the unacknowledged
        # stanzas (sent again on resumption, messages rerouted when the session ends).
        self._release_held()
        for timer in (self._pre_auth_timer, self._ping_timer, self._ack_request):
            if timer is not None and timer.active():
                timer.cancel()
        if self.session is not None:
            sm = self.session.sm
            if sm is not None and sm.resumable and not self.ended_on_purpose:
                # The session stays bound to this closed stream, which keeps what
                # is sent to it, until a resumption takes it or the time runs out.
                log.info("session {jid} waits {seconds}s for resumption", jid=self.session.full,
                         seconds=self.listener.resumption_timeout_seconds)
                sm.expiry = self.server.clock.callLater(self.listener.resumption_timeout_seconds, self._expire)
                return
            session, self.session = self.session, None
            self.end_session(session)
        # Nothing waits for this stream any more: let go of the framing, which
        # refers back to it, so that the connection is freed with its last
        # reference rather than by the cycle collector.
        self.framing = EndedFraming(self.framing.peer)

    def _end_held_session(self):
        sm = self.session.sm if self.session is not None else None
        if sm is not None and sm.awaiting_resumption:
            sm.expiry.cancel()
            self._expire()

    def _expire(self):
        session, self.session = self.session, None
        if session is not None:
            self.end_session(session)

    def end_session(self, session):
        """The session is over: unavailable presence, and unacknowledged messages delivered again.

        A message the client never acknowledged is routed once more to the
        full JID it was for; with that resource gone, the delivery rules send
        it to another resource or to offline storage, so it is never dropped.
        """
        server = self.server
        sm = session.sm
        if sm is not None and sm.resume_id:
            server.resumable_sessions.pop(sm.resume_id, None)
            if server.cluster is not None:
                server.cluster.forget_resumption(sm.resume_id)
        server.unbind(session)
        if sm is not None:
            for stanza in sm.acks.take_unacked():
                if stanza.name == "message" and stanza.getAttribute("type") != "error":
                    server.router.route(stanza)

    def _internal_error(self, failure):
        log.failure("internal error on the stream of {peer}", failure, peer=self.framing.peer)
        self.stream_error("internal-server-error")

    def _pre_auth_timeout(self):
        self.stream_error("connection-timeout", "no authentication in time")

    # -- keepalive: ping a client that stays silent ------------------------

    def _schedule_ping(self):
        interval = self.listener.ping_interval_seconds
        if interval:
            self._ping_timer = self.server.clock.callLater(interval, self._check_idle)

    def _check_idle(self):
        idle = self.server.clock.seconds() - self._last_activity
        interval = self.listener.ping_interval_seconds
        if self._ping_id is not None:
            self.stream_error("connection-timeout", "no answer to ping")
            return
        if idle < interval:
            self._ping_timer = self.server.clock.callLater(interval - idle, self._check_idle)
            return
        if self.jid is not None:
            self._ping_id = "ping-" + self._random_resource()[:8]
            ping = make("iq", to=self.jid.full(), sender=self.host, type="get", id=self._ping_id)
            ping.addElement((NS_PING, "ping"))
            self.framing.send(ping)
        self._ping_timer = self.server.clock.callLater(self.listener.ping_timeout_seconds, self._check_idle)


class TCPClientProtocol(XMLStreamProtocol):
    """RFC 6120 framing of a client stream over TCP: STARTTLS, per-address accounting."""

    content_namespace = NS_CLIENT
    can_start_tls = True
    kind = "tcp"  # what carries the session, as bridgectl and the metrics show it

    def __init__(self, server, listener, tls_context, direct_tls):
        super().__init__(server.clock, listener, server.dormancy)
        self.server = server
        self.triage = server.triage
        self.listener = listener
        self.tls_context = tls_context
        self.direct_tls = direct_tls

    def connectionMade(self):
        waits = not self.triage.allows()
        self.triage.measure(self._made)
        if waits and not self.closed:
            # Not even the TLS handshake of a direct TLS connection until triage lets the peer in.
            self._gate.wait()

    def _made(self):
        super().connectionMade()
        self.can_start_tls = self.tls_context is not None and not self.direct_tls
        self.stream = ClientStream(self.server, self, self.listener, secure=self.direct_tls)
        if not self.factory.admit(self):
            self.stream.stream_error("policy-violation", "too many connections from your address")

    def authenticated(self):
        return self.stream.username is not None

    def dataReceived(self, data):
        self.stream.data_seen()
        super().dataReceived(data)

    def header_received(self, header):
        self.stream.stream_opened(header)

    def element_received(self, element):
        self.stream.element_received(element)

    def end_received(self):
        self.stream.stream_closed()

    def stream_error(self, condition, text=None):
        self.stream.stream_error(condition, text)

    # -- the framing interface used by ClientStream --------------------------

    def open(self, stream_id, host):
        self.write_header({"id": stream_id, "from": host, "version": "1.0", "xml:lang": "en"})

    def reset(self):
        self.restart_stream()

    def busy(self):
        return self.stream.busy

    def answered(self):
        """Requests were answered: the elements that waited are handled, and reading goes on."""
        self.handle_parsed()

    def start_tls(self):
        """<proceed/> and TLS; False (the stream has ended) when bytes came with <starttls/>."""
        return self.switch_to_tls(self.tls_context, domish.Element((NS_TLS, "proceed")))

    @property
    def may_authenticate_in_clear(self):
        """A listener without a certificate cannot meet require_encryption: SASL goes ahead in clear."""
        return not self.can_start_tls

    def tls_transport(self):
        return self.transport if (self.direct_tls or self.stream.secure) else None

    def connectionLost(self, reason):
        if self.authenticated():
            self._lost(reason)
        else:
            self.triage.measure(self._lost, reason)

    def _lost(self, reason):
        super().connectionLost(reason)
        self.factory.release(self)
        self.stream.connection_lost()


class ClientFactory(Factory):
    """Builds client connections and counts them per address."""

    noisy = False

    def __init__(self, server, listener, tls_context, direct_tls=False):
        self.server = server
        self.listener = listener
        self.tls_context = tls_context
        self.direct_tls = direct_tls
        self.connections = ConnectionsPerAddress(listener.max_connections_per_address)

    def buildProtocol(self, address):
        protocol = TCPClientProtocol(self.server, self.listener, self.tls_context, self.direct_tls)
        protocol.factory = self
        protocol.address_key = getattr(address, "host", None)
        return protocol

    def admit(self, protocol):
        return self.connections.admit(protocol.address_key)

    def release(self, protocol):
        self.connections.release(protocol.address_key)

"""Several nodes as one service: the shared session table and node-to-node stanzas (docs/scaling.md).

Each node publishes its own sessions (full JID, priority, last presence) to
Redis and mirrors the other nodes' sessions in its ``SessionTable`` as
``RemoteSession`` entries, so that every feature that looks up a JID or an
account's resources sees the whole cluster.  A ``RemoteSession``'s ``send``
hands the stanza to the node that holds the session.

A node holds a lease (a Redis key with an expiry) and renews it on a timer.
Survivors drop the sessions of a node whose lease is gone; a node that could
not renew its lease within its lifetime gives up its own sessions, so that
two nodes never both serve one session from stale tables.

This module does no I/O: the Redis side is ``bridge.core.redislink``, passed
in as ``link``; the clock is passed in too.
"""

import hashlib
import json
import re
from collections import Counter

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.core.holdings import Holdings
from bridge.core.ownership import Ownership
from bridge.core.stanza import parse_jid
from bridge.core.xmlstream import StreamError, parse_document, serialize

log = Logger()

PROTOCOL_VERSION = "1"
KINDS = ("stanza", "session", "kick", "room", "remote", "document")
NODE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
STORE_NAME = re.compile(r"^[a-z0-9_.:-]{1,64}$")
MAX_UNSENT_CHANGES = 10000  # documents changed here that the other nodes were not yet told of (Redis away)
PRIORITY_RANGE = (-128, 127)
MARK = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
MAX_MARKS = 16
RESUME_ATTEMPTS = 3  # looks at a dead node's resumable session: its lease may have up to a lifetime left
RESUME_RETRY_MARGIN_SECONDS = 0.05


class MalformedEnvelope(ValueError):
    """A message on the inter-node channel that is not ours or not whole; its reason is the text."""


class Envelope:
    """One message between nodes.

    ``kind``: "stanza" (``body``: a stanza for the session ``jid``),
    "session" (``body``: the session's record, or "" once it ended; ``seq``
    orders one node's changes), "kick" (close the session ``jid``: a
    newer one took its resource), "room" (``body``: a stanza for the chat
    room or occupant JID ``jid``, which the receiving node hosts:
    bridge/gateways/muc/placement.py) or "remote" (``body``: a stanza for the
    remote domain of ``jid``, any JID, which the receiving node sends over
    its s2s link: it owns the link to that domain) or "document" (``body``: the
    name of a store of documents kept in memory; ``jid``: the bare JID of the
    document's owner, or a domain for the user "": the sending node changed it
    in the shared storage, the others forget their copy: core/storage/cache.py).
    """

    __slots__ = ("kind", "node", "jid", "seq", "body")

    def __init__(self, kind, node, jid, body="", seq=0):
        self.kind = kind
        self.node = node
        self.jid = jid
        self.body = body
        self.seq = seq

    def fields(self):
        """The stream entry's fields."""
        return {"v": PROTOCOL_VERSION, "kind": self.kind, "node": self.node, "jid": self.jid,
                "seq": str(self.seq), "body": self.body}


def decode_envelope(fields, max_body_bytes):
    """An ``Envelope`` from a stream entry's fields (bytes or text); ``MalformedEnvelope`` if it is not one."""
    try:
        text = {(key.decode() if isinstance(key, bytes) else key): (value.decode() if isinstance(value, bytes)
                                                                   else value)
                for key, value in fields.items()}
    except UnicodeDecodeError:
        raise MalformedEnvelope("not UTF-8") from None
    if text.get("v") != PROTOCOL_VERSION:
        raise MalformedEnvelope(f"protocol version {text.get('v')!r}")
    kind = text.get("kind")
    if kind not in KINDS:
        raise MalformedEnvelope(f"kind {kind!r}")
    node = text.get("node", "")
    if not NODE_NAME.match(node):
        raise MalformedEnvelope(f"node name {node!r}")
    jid = parse_jid(text.get("jid", ""))
    if kind == "document":
        if jid is None or jid.resource is not None:
            raise MalformedEnvelope(f"not a bare JID: {text.get('jid')!r}")
    elif jid is None or (kind != "remote" and (jid.user is None or (jid.resource is None and kind != "room"))):
        raise MalformedEnvelope(f"not a full JID: {text.get('jid')!r}")
    seq = text.get("seq", "")
    if not (seq.isascii() and seq.isdigit()) or len(seq) > 20:
        raise MalformedEnvelope(f"sequence number {seq!r}")
    body = text.get("body", "")
    if len(body.encode()) > max_body_bytes:
        raise MalformedEnvelope(f"body over {max_body_bytes} bytes")
    if kind in ("stanza", "room", "remote") and not body:
        raise MalformedEnvelope("stanza without a body")
    if kind == "document" and not STORE_NAME.match(body):
        raise MalformedEnvelope(f"store name {body[:80]!r}")
    return Envelope(kind, node, jid.full(), body, int(seq))


def parse_stanza(text, max_bytes):
    """The one stanza ``text`` holds; ``MalformedEnvelope`` if it is anything else."""
    try:
        found, _ = parse_document([b"<s:stream xmlns:s='http://etherx.jabber.org/streams'>", text.encode()],
                                  max_bytes)
    except StreamError as error:
        raise MalformedEnvelope(f"stanza: {error}") from None
    if len(found) != 1 or found[0].name not in ("message", "presence", "iq"):
        raise MalformedEnvelope("not one message, presence or iq")
    return found[0]


def encode_record(session):
    """What the table shows of a local session: its priority, last presence and marks (the features'
    flags that other nodes act on: carbons enabled, roster interest; ``SessionTable.mark``)."""
    presence = serialize(session.presence) if session.presence is not None else None
    record = {"priority": session.priority, "presence": presence}
    if session.marks:
        record["marks"] = sorted(session.marks)
    return json.dumps(record, separators=(",", ":"))


def decode_record(text, max_bytes):
    """(priority, presence element or None, marks) of a record; ``MalformedEnvelope`` if it is not one."""
    try:
        record = json.loads(text)
    except ValueError:
        raise MalformedEnvelope("record is not JSON") from None
    if not isinstance(record, dict) or set(record) - {"marks"} != {"priority", "presence"}:
        raise MalformedEnvelope("record keys")
    marks = record.get("marks", [])
    if not isinstance(marks, list) or len(marks) > MAX_MARKS or not all(
            isinstance(mark, str) and MARK.match(mark) for mark in marks):
        raise MalformedEnvelope(f"marks {marks!r:.100}")
    priority, presence = record["priority"], record["presence"]
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
            PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]):
        raise MalformedEnvelope(f"priority {priority!r}")
    if presence is None:
        return priority, None, set(marks)
    if not isinstance(presence, str):
        raise MalformedEnvelope("presence is not text")
    element = parse_stanza(presence, max_bytes)
    if element.name != "presence":
        raise MalformedEnvelope("presence record holds another stanza")
    return priority, element, set(marks)


class Resumable:
    """A resumable session of a dead node as Redis kept it: enough to go on with it here."""

    def __init__(self, jid, handled, presence, marks):
        self.jid = jid
        self.handled = handled
        self.presence = presence  # the client's last presence (its priority in it)
        self.marks = marks


def decode_resumable(state, record, max_bytes):
    """A ``Resumable`` from the node's resume state (JSON) and session record; None if either is
    malformed (a clean failure: the client binds a new session)."""
    try:
        parsed = json.loads(state)
        jid = parse_jid(parsed["jid"]) if isinstance(parsed, dict) and isinstance(parsed.get("jid"), str) else None
        handled = parsed.get("h") if jid is not None else None
        if jid is None or jid.resource is None or isinstance(handled, bool) or not isinstance(handled, int) or not (
                0 <= handled < 2 ** 32):
            raise MalformedEnvelope(f"resumption state {state!r:.200}")
        _, presence, marks = decode_record(record, max_bytes)
    except (ValueError, MalformedEnvelope) as error:
        log.warn("cluster: a resumption state in Redis is not whole: {error}", error=str(error))
        return None
    return Resumable(jid, handled, presence, marks)


def rendezvous(nodes, key):
    """The node of ``nodes`` that owns ``key`` (rendezvous hashing: removing a node moves only its keys)."""
    return max(nodes, key=lambda node: hashlib.sha256(f"{node}\0{key}".encode()).digest())


class Lease:
    """This node's view of its lease: held until its lifetime, counted from when the renewal was
    sent, has passed.  Redis counts from when it received it, so the node always lets go first."""

    def __init__(self, clock, lifetime_seconds):
        self.clock = clock
        self.lifetime_seconds = lifetime_seconds
        self.expires_at = None
        self.reachable = False

    def renewed(self, sent_at):
        self.expires_at = sent_at + self.lifetime_seconds
        self.reachable = True

    def unreachable(self):
        """A renewal failed: no new sessions, though the lease may still run for a while."""
        self.reachable = False

    def lost(self):
        """Redis says the lease is gone (it expired, or survivors removed this node)."""
        self.expires_at = None

    def held(self):
        return self.expires_at is not None and self.clock.seconds() < self.expires_at

    def accepting(self):
        """Whether new sessions may be bound here: the lease is held and Redis answers."""
        return self.reachable and self.held()


class RemoteSession:
    """A session held by another node, as this node's session table shows it."""

    local = False

    def __init__(self, cluster, node, jid, priority, presence, marks=frozenset()):
        self.cluster = cluster
        self.node = node
        self.jid = jid
        self.full = jid.full()
        self.bare = jid.userhost()
        self.priority = priority
        self.presence = presence
        self.marks = marks
        # What features keep on local sessions; not shared between nodes (docs/scaling.md).
        self.directed = set()
        self.data = {}
        self.sm = None

    @property
    def available(self):
        return self.presence is not None

    def send(self, stanza):
        self.cluster.forward(self, stanza)

    def close(self, condition, text=None):
        """Ask the owning node to end the session (a newer one took its resource)."""
        self.cluster.kick(self)


class Cluster:
    """This node's part in the cluster: its lease, its published sessions and its mirror of the others'.

    ``link`` (``bridge.core.redislink.RedisLink``) does the Redis calls, each
    returning a Deferred; ``config`` is the [cluster] section.
    """

    def __init__(self, server, link, clock, config):
        self.server = server
        self.link = link
        self.clock = clock
        self.node = config.node_name
        self.lease = Lease(clock, config.lease_seconds)
        # The resources (queues, links) one node at a time serves, renewed with the lease.
        self.ownership = Ownership(link, clock, self.node, config.lease_seconds)
        self.max_body_bytes = server.config.c2s.stanza_size_limit_bytes
        self.dropped = Counter()  # reason -> inter-node messages dropped
        self.forwarded = 0  # stanzas handed to other nodes
        self.received = 0  # inbox entries taken (stanzas, session changes, kicks)
        self._member = False
        self._seq = 0
        # node -> {"incarnation", "seq" (None while its hash loads), "sessions": {full: RemoteSession},
        #          "pending": the changes that arrived while its hash loads}
        self._peers = {}
        self._timer = task.LoopingCall(self._tick)
        self._timer.clock = clock
        self._renew_interval = config.lease_seconds / 3
        self._ticking = False
        self._said_unreachable = False
        # What the MUC service (bridge/gateways/muc/placement.py) sets: the receiver of "room" envelopes,
        # and those told ``node_gone(node, incarnation, sessions)`` when a node (this one too) is gone.
        self.room_receiver = None
        self.node_observers = []
        self.holdings = {}  # kind -> Holdings: what this node holds one at a time (bridge.core.holdings)
        self._secrets = {}  # name -> what to tell of the cluster's secret of that name, at each join
        self._secrets_wanted = set()  # names whose secret this node has not had since it joined
        self._unsent_changes = set()  # (store, host, user) changed here; telling the other nodes failed

    def hold(self, kind, adopt, release):
        """Hold state of ``kind`` that a survivor takes over when this node dies (``Holdings``)."""
        holdings = self.holdings[kind] = Holdings(self.link, kind, adopt, release)
        if self._member:
            holdings.joined()
        return holdings

    def shared_secret(self, name, use):
        """``use(secret bytes)``, at each join, with the secret of ``name`` every node of the cluster
        shares (the first node to ask makes it)."""
        self._secrets[name] = use
        self._secrets_wanted.add(name)
        if self._member:
            self._fetch_secrets()

    def _fetch_secrets(self):
        """Ask for the secrets not had since the join (again at every round until they come)."""
        for name in sorted(self._secrets_wanted):
            self.link.shared_secret(name).addCallbacks(self._secret_came, self._link_failed, callbackArgs=(name,))

    def _secret_came(self, secret, name):
        self._secrets_wanted.discard(name)
        self._secrets[name](secret)

    # -- lifetime ------------------------------------------------------------------

    def start(self):
        self.server.sessions.observer = self
        self.server.document_caches.share(self)
        self.link.start(self.received_entries)
        self._timer.start(self._renew_interval, now=True)

    def stop(self):
        """Leave the cluster once what this node owns was released by its holders (renewed meanwhile, at
        most ``lease_seconds``): then the node's lease and keys go, and it sends nothing more."""
        d = self.ownership.stop()
        d.addBoth(lambda _: self._leave())
        return d

    def _leave(self):
        self._member = False
        if self._timer.running:
            self._timer.stop()
        self.server.sessions.observer = None
        return self.link.stop()

    def accepting(self):
        return self._member and self.lease.accepting()

    def lease_held(self):
        """Whether this node is a member and its lease runs (Redis may be away meanwhile)."""
        return self._member and self.lease.held()

    def peers(self):
        """The other members whose sessions this node mirrors, by name."""
        return sorted(self._peers)

    def incarnation(self):
        """This node's incarnation in Redis (new at every join), or None before the first."""
        return self.link.incarnation

    def _tick(self):
        if self._ticking:
            return  # the last round's calls are still out (Redis slow or away)
        self._ticking = True
        sent_at = self.clock.seconds()
        d = self.link.renew() if self._member else self.link.join(self._local_records(), self._seq)
        d.addCallbacks(self._renewal_answered, self._link_failed, callbackArgs=(sent_at,))
        d.addCallback(lambda _: self._check_lease())
        d.addCallback(lambda _: self.ownership.refresh(sent_at) if self._member else None)
        d.addCallback(lambda _: self._tell_unsent_changes())
        d.addCallback(lambda _: self.link.members() if self._member else None)
        d.addCallback(self._update_peers)
        d.addErrback(self._link_failed)
        d.addBoth(self._tick_done)

    def _tick_done(self, _):
        self._ticking = False

    def _renewal_answered(self, held, sent_at):
        if not held:
            log.warn("cluster: the lease of node {node} expired in Redis; giving up its sessions", node=self.node)
            self.lease.lost()
            self._member = False
            return
        if not self._member:
            self._member = True
            log.info("cluster: node {node} joined; accepting sessions", node=self.node)
            # Changes other nodes made before this node's inbox existed (again) were not told to it.
            self.server.document_caches.forget_all()
            for holdings in self.holdings.values():
                holdings.joined()
            self._secrets_wanted.update(self._secrets)
        elif self._said_unreachable:
            log.info("cluster: Redis answers again; node {node} accepts sessions", node=self.node)
        self._said_unreachable = False
        self.lease.renewed(sent_at)

    def _link_failed(self, failure):
        """A Redis call failed: said once, until Redis answers again."""
        if not self._said_unreachable:
            self._said_unreachable = True
            log.error("cluster: Redis unreachable ({error}); node {node} accepts no new sessions",
                      error=failure.getErrorMessage(), node=self.node)
        self.lease.unreachable()

    def _check_lease(self):
        """Split-brain prevention: without a lease, this node serves no session."""
        if self.lease.held():
            return
        for holdings in self.holdings.values():
            holdings.lapsed()  # a survivor may take it over from now on: this node serves none of it
        if self._member:
            log.warn("cluster: the lease of node {node} lapsed; giving up its sessions", node=self.node)
            self._member = False
        self.ownership.lapse("the node's lease lapsed")
        local = [session for session in self.server.sessions.all() if session.local]
        for session in local:
            session.close("system-shutdown", "this node lost its cluster lease")
        for node in list(self._peers):
            self._drop_node(node)
        self._tell_gone(self.node, None, [])

    # -- the other nodes ---------------------------------------------------------------

    def _update_peers(self, members):
        """``members``: {node: incarnation, or None when its lease is gone}."""
        if members is None:
            return None
        loads = []
        for node, incarnation in members.items():
            if node == self.node:
                continue
            known = self._peers.get(node)
            if incarnation is None:
                log.info("cluster: node {node} lost its lease; dropping its sessions", node=node)
                self._gone(node, members)
                self._take_over(node)
                keep = int(self.server.config.c2s.resumption_timeout_seconds * 1000)
                loads.append(self.link.remove_node(node, keep).addCallback(self._route_left, node))
            elif known is None or known["incarnation"] != incarnation:
                log.info("cluster: node {node} is a member (incarnation {incarnation})", node=node,
                         incarnation=incarnation)
                self._gone(node, members)
                self._peers[node] = {"incarnation": incarnation, "seq": None, "sessions": {}, "pending": []}
                loads.append(self.link.load_sessions(node).addCallbacks(
                    self._loaded, self._load_failed, callbackArgs=(node, incarnation),
                    errbackArgs=(node, incarnation)))
        for node in set(self._peers) - set(members):
            # It left, or another survivor removed it after its lease lapsed.
            log.info("cluster: node {node} left the cluster; dropping its sessions", node=node)
            self._gone(node, members)
            self._take_over(node)
        for holdings in self.holdings.values():
            holdings.claim_waiting()
        self._fetch_secrets()
        return defer.gatherResults(loads, consumeErrors=True) if loads else None

    def _take_over(self, node):
        for holdings in self.holdings.values():
            holdings.gone(node)

    def _loaded(self, snapshot, node, incarnation):
        """``snapshot``: (seq, {full: record}) of a node's hash; then the changes that arrived meanwhile
        and are newer than it."""
        peer = self._peers.get(node)
        if peer is None or peer["incarnation"] != incarnation:
            return
        seq, records = snapshot
        for full, record in records.items():
            self._apply_record(node, peer, full, record)
        peer["seq"] = seq
        pending, peer["pending"] = peer["pending"], []
        for envelope in pending:
            self._received_session(envelope)

    def _load_failed(self, failure, node, incarnation):
        """The next round loads the node's hash again."""
        peer = self._peers.get(node)
        if peer is not None and peer["incarnation"] == incarnation:
            self._drop_node(node)
        return failure

    def _drop_node(self, node):
        """Take a node's sessions out of the table; the sessions taken."""
        peer = self._peers.pop(node, None)
        if peer is None:
            return []
        for remote in peer["sessions"].values():
            self.server.sessions.remove(remote)
        return list(peer["sessions"].values())

    def _gone(self, node, members):
        """A node (as this node knew it: one incarnation) died, left or came back as a new incarnation."""
        peer = self._peers.get(node)
        sessions = self._drop_node(node)
        self._announce_gone(sessions, members)
        if peer is not None:
            self._tell_gone(node, peer["incarnation"], sessions)

    def _tell_gone(self, node, incarnation, sessions):
        for observer in self.node_observers:
            try:
                observer.node_gone(node, incarnation, sessions)
            except Exception:
                log.failure("cluster: an observer of node {node}'s end failed", node=node)

    def _announce_gone(self, sessions, members):
        """A dead node cannot say that its users went offline: the first live node by name does it for
        it (one node, so contacts hear it once), as its own sessions' ends are announced:
        ``session/ended`` on their host, where the presence feature broadcasts unavailable presence.
        A resource its user has bound again meanwhile (the client came back before the lease ran out) is
        not announced: its new session's presence went out first, and an unavailable after it would hide it."""
        alive = sorted(node for node, incarnation in members.items() if incarnation is not None)
        if not alive or alive[0] != self.node:
            return
        for session in sessions:
            if self.server.sessions.get(session.full) is not None:
                continue  # bound again, or resumed on a survivor (XEP-0198)
            host = self.server.hosts.get(session.jid.host)
            if host is not None:
                host.hooks.fire("session/ended", session)

    def _apply_record(self, node, peer, full, record):
        jid = parse_jid(full)
        if jid is None or jid.resource is None or jid.user is None:
            self._drop("record", MalformedEnvelope(f"not a full JID: {full!r}"))
            return
        existing = peer["sessions"].pop(full, None)
        if existing is not None:
            self.server.sessions.remove(existing)
        if not record:
            return
        try:
            priority, presence, marks = decode_record(record, self.max_body_bytes)
        except MalformedEnvelope as error:
            self._drop("record", error)
            return
        current = self.server.sessions.get(full)
        if current is not None and current.local:
            return  # this node's own session of that resource wins until the other is kicked
        remote = RemoteSession(self, node, jid, priority, presence, marks)
        peer["sessions"][full] = remote
        self.server.sessions.add(remote)

    def _route_left(self, left, node):
        """What a dead node's inbox held and it never read (``left``: field dicts, or None when
        another survivor removed it).  A stanza whose full JID is held again (resumed, or bound again,
        here or on another node) goes to that session as it is: its sending node ran the hooks
        (archive, carbons).  Otherwise the router takes it, as for a session that ended before a stanza
        arrived: a message goes to the account's other resources or offline storage."""
        if not left:
            return
        log.info("cluster: routing again {count} entries that node {node} never read", count=len(left),
                 node=node)
        for fields in left:
            try:
                envelope = decode_envelope(fields, self.max_body_bytes)
                if envelope.kind != "stanza":
                    continue
                stanza = parse_stanza(envelope.body, self.max_body_bytes)
            except MalformedEnvelope as error:
                self._drop("malformed", error)
                continue
            session = self.server.sessions.get(envelope.jid)
            if session is not None:
                session.send(stanza)
            else:
                self.server.router.route(stanza)

    # -- XEP-0198 resumption on another node ---------------------------------------------

    def remember_resumption(self, session):
        """Keep in Redis what a survivor needs to resume ``session`` if this node dies: its full JID and
        the count of its client's stanzas handled (the h of the last <a/> sent)."""
        if self._member:
            state = json.dumps({"jid": session.full, "h": session.sm.handled.h}, separators=(",", ":"))
            self.link.remember_resumption(session.sm.resume_id, state).addErrback(self._link_failed)

    def forget_resumption(self, resume_id):
        if self._member:
            self.link.forget_resumption(resume_id).addErrback(self._link_failed)

    @defer.inlineCallbacks
    def take_resumption(self, resume_id, bare):
        """The ``Resumable`` session of ``bare`` that ``resume_id`` names on a dead node, taken from Redis
        (once); None when there is none.  The node of a session a client resumes here at once after it
        died still holds its lease: wait for it to lapse (at most ``RESUME_ATTEMPTS`` times), since only
        then is the session sure to be served nowhere else.  Redis away: None too (the client binds a
        new session once Redis is back)."""
        for _ in range(RESUME_ATTEMPTS):
            if not self.accepting():
                return None
            try:
                answer = yield self.link.take_resumption(resume_id, bare)
            except Exception:
                self._link_failed(Failure())
                return None
            if answer is None:
                return None
            if answer[0] == "taken":
                return decode_resumable(answer[1], answer[2], self.max_body_bytes)
            yield task.deferLater(self.clock, int(answer[1]) / 1000 + RESUME_RETRY_MARGIN_SECONDS, lambda: None)
        return None

    # -- what arrives --------------------------------------------------------------------

    def received_entries(self, entries):
        """Stream entries (field dicts) that arrived for this node, in order."""
        for fields in entries:
            try:
                envelope = decode_envelope(fields, self.max_body_bytes)
            except MalformedEnvelope as error:
                self._drop("malformed", error)
                continue
            if envelope.node == self.node:
                self._drop("foreign", MalformedEnvelope("claims to come from this node"))
                continue
            if envelope.kind == "session" and envelope.node not in self._peers:
                continue  # a node joining: its hash, loaded once this node sees it, holds this change
            self.received += 1
            try:
                getattr(self, "_received_" + envelope.kind)(envelope)
            except Exception:
                log.failure("cluster: a {kind} from node {node} for {jid} failed", kind=envelope.kind,
                            node=envelope.node, jid=envelope.jid)

    def _drop(self, reason, error):
        self.dropped[reason] += 1
        if self.server.log_budget.allows("cluster-dropped"):
            log.warn("cluster: dropped an inter-node message ({reason}): {error}", reason=reason, error=str(error))

    def _received_stanza(self, envelope):
        try:
            stanza = parse_stanza(envelope.body, self.max_body_bytes)
        except MalformedEnvelope as error:
            self._drop("malformed", error)
            return
        session = self.server.sessions.get(envelope.jid)
        if session is not None and session.local:
            session.send(stanza)
        elif session is None:
            # The session ended before the stanza arrived: the rules for a gone resource apply here.
            self.server.router.route(stanza)
        else:
            self._drop("stale", MalformedEnvelope(f"{envelope.jid} is on node {session.node}, not here"))

    def _received_remote(self, envelope):
        """A stanza for a remote domain whose link another node found this one owns: sent from here,
        whatever this node's own view of the owner (so that two views never pass it back and forth)."""
        try:
            stanza = parse_stanza(envelope.body, self.max_body_bytes)
        except MalformedEnvelope as error:
            self._drop("malformed", error)
            return
        to = parse_jid(envelope.jid)
        if self.server.router.is_local(to.host):
            self._drop("malformed", MalformedEnvelope(f"remote stanza for the local domain {to.host}"))
            return
        if parse_jid(stanza.getAttribute("to") or "") != to:
            self._drop("malformed", MalformedEnvelope(f"remote stanza not addressed to {envelope.jid}"))
            return
        self.server.router.default_route.deliver(stanza, handed_over=True)

    def _received_session(self, envelope):
        peer = self._peers[envelope.node]
        if peer["seq"] is None:
            # (As many as arrive within one Redis call, whose socket timeout bounds the load.)
            peer["pending"].append(envelope)
            return
        if envelope.seq <= peer["seq"]:
            return  # already in the snapshot this node loaded
        peer["seq"] = envelope.seq
        self._apply_record(envelope.node, peer, envelope.jid, envelope.body)

    def _received_room(self, envelope):
        try:
            stanza = parse_stanza(envelope.body, self.max_body_bytes)
        except MalformedEnvelope as error:
            self._drop("malformed", error)
            return
        if self.room_receiver is None:
            self._drop("no-room-service", MalformedEnvelope(f"a stanza for {envelope.jid}, and no MUC service here"))
            return
        self.room_receiver(stanza)

    def _received_document(self, envelope):
        owner = parse_jid(envelope.jid)
        self.server.document_caches.forget(envelope.body, owner.host, owner.user or "")

    def _received_kick(self, envelope):
        session = self.server.sessions.get(envelope.jid)
        if session is not None and session.local:
            session.close("conflict", "replaced by a new session on another node")

    # -- what leaves ---------------------------------------------------------------------

    def forward(self, remote, stanza):
        """Send ``stanza`` to the node holding ``remote``."""
        if not self._member:
            self._drop("no-lease", MalformedEnvelope(f"stanza for {remote.full} while not a member"))
            return
        self.forwarded += 1
        envelope = Envelope("stanza", self.node, remote.full, serialize(stanza))
        self.link.send(remote.node, envelope.fields()).addErrback(self._send_failed, remote.node)

    def link_owner(self, domain):
        """The node that owns the s2s link to the remote ``domain``, when it is another member (None
        when it is this node, or this node is no member): rendezvous hashing over the live members
        this node knows, so that every node agrees once their views agree, and when the owner dies
        only its domains move."""
        if not self._member or not self._peers:
            return None
        owner = rendezvous([self.node, *self._peers], domain)
        return None if owner == self.node else owner

    def hand_over(self, node, stanza, to_domain):
        """Give ``stanza`` to ``node``, which owns the link to its domain; if it cannot be reached
        (its inbox is gone: it died), ``to_domain(stanza)`` sends it from here."""
        envelope = Envelope("remote", self.node, stanza.getAttribute("to"), serialize(stanza))
        self.forwarded += 1

        def unreachable(failure):
            self._send_failed(failure, node)
            to_domain(stanza)

        self.link.send(node, envelope.fields()).addErrback(unreachable)

    def forward_to_room(self, node, room_jid, stanza):
        """Send ``stanza`` for the chat room (or occupant) ``room_jid`` to ``node``, which hosts the room; a
        Deferred that fails when the node has no inbox (bridge/gateways/muc/placement.py)."""
        if not self._member:
            return defer.fail(LookupError("this node is not a member of the cluster"))
        self.forwarded += 1
        envelope = Envelope("room", self.node, room_jid, serialize(stanza))
        return self.link.send(node, envelope.fields())

    def claim_room(self, room_jid):
        """(node, incarnation) of the node that hosts the room ``room_jid``: its live host's, or this node's
        once claimed; None when this node holds no lease."""
        return self.link.claim_room(room_jid).addCallback(
            lambda owner: tuple(owner.split(" ", 1)) if owner else None)

    def release_room(self, room_jid):
        self.link.release_room(room_jid).addErrback(self._link_failed)

    def release_rooms_of(self, node, incarnation):
        """Forget the rooms a gone incarnation of ``node`` claimed (every survivor may; it is idempotent)."""
        self.link.release_rooms_of(node, incarnation).addErrback(self._link_failed)

    def document_changed(self, store, host, user):
        """A document kept in memory was changed in the shared storage: the other nodes forget their copy
        (core/storage/cache.py).  What cannot be told now is told again at the next round."""
        envelope = Envelope("document", self.node, f"{user}@{host}" if user else host, store)
        self.link.broadcast(envelope.fields()).addErrback(self._change_unsent, store, host, user)

    def _change_unsent(self, failure, store, host, user):
        self._link_failed(failure)
        if len(self._unsent_changes) < MAX_UNSENT_CHANGES:
            self._unsent_changes.add((store, host, user))
        elif self.server.log_budget.allows("cluster-unsent-changes"):
            log.error("cluster: {count} document changes wait to be told to the other nodes; their copies of "
                      "further ones may stay stale", count=len(self._unsent_changes))

    def _tell_unsent_changes(self):
        unsent, self._unsent_changes = self._unsent_changes, set()
        for change in sorted(unsent):
            self.document_changed(*change)

    def kick(self, remote):
        envelope = Envelope("kick", self.node, remote.full)
        self.link.send(remote.node, envelope.fields()).addErrback(self._send_failed, remote.node)

    def _send_failed(self, failure, node):
        self._drop("send-failed", MalformedEnvelope(f"to node {node}: {failure.getErrorMessage()}"))

    def _local_records(self):
        return {session.full: encode_record(session) for session in self.server.sessions.all() if session.local}

    # SessionTable's observer: a local session was added or changed, or removed.

    def session_changed(self, session):
        self._publish(session.full, encode_record(session))

    def session_removed(self, session):
        self._publish(session.full, "")

    def _publish(self, full, record):
        if not self._member:
            return  # joining publishes every local session at once
        self._seq += 1
        envelope = Envelope("session", self.node, full, record, self._seq)
        self.link.publish(envelope.fields()).addErrback(self._link_failed)

"""The Redis side of a cluster node (bridge.core.cluster): redis-py, off the reactor thread.

redis-py is blocking, so every call runs in a thread pool of ONE thread: a
node's writes reach Redis in the order it made them (its session records
before the stanzas that follow them).  The session changes and stanzas that
wait while the thread is busy go together in one pipeline.  A second thread
blocks on the node's
stream (XREADGROUP) and hands what arrives to the reactor, then acknowledges
it (XACK).  docs/decisions.md says why redis-py rather than txredisapi.

Keys, under ``bridge:``:

* ``nodes``: the set of member node names;
* ``lease:NODE``: the node's incarnation (random), with an expiry;
* ``sessions:NODE``: a hash, full JID -> record (JSON), and "" -> the
  sequence number of the node's last change;
* ``stream:NODE``: the node's inbox, a stream with the consumer group
  ``bridge``, capped near ``stream_max_entries``;
* ``owner:RESOURCE``: "NODE INCARNATION" of the one node that owns a
  resource (``bridge.core.ownership``), with the lease's expiry;
* ``resume:NODE``: a hash, XEP-0198 resumption id -> the session's full JID
  and the count of its client's stanzas handled (JSON), one field per
  resumable session of the node;
* ``orphan:ID``: a resumable session of a removed node, kept for its client
  (resume state and record), expiring after the resumption timeout;
* ``rooms``: a hash, chat room JID -> "NODE INCARNATION" of the node that
  hosts it (bridge/gateways/muc/placement.py), and ``rooms:NODE`` the set
  of the rooms NODE claimed, so that survivors can forget them.
"""

import os
import threading

import redis
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from bridge.config import parse_host_port

log = Logger()

PREFIX = "bridge:"
GROUP = "bridge"
READ_BLOCK_MILLISECONDS = 1000
SOCKET_TIMEOUT_SECONDS = 5.0
BATCH = 100

# A node's session change: its hash, then a copy into the inbox of every other member, at once, so that
# a node joining between the two can neither miss the change nor see it twice (it loads the hash after
# it entered the set, and skips changes whose sequence number its snapshot already holds).
PUBLISH = """
local hash, members = KEYS[1], KEYS[2]
local prefix, me, full, record, seq, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if record == '' then redis.call('HDEL', hash, full) else redis.call('HSET', hash, full, record) end
redis.call('HSET', hash, '', seq)
for _, node in ipairs(redis.call('SMEMBERS', members)) do
  if node ~= me then
    redis.call('XADD', prefix .. 'stream:' .. node, 'NOMKSTREAM', 'MAXLEN', '~', maxlen, '*',
               'v', ARGV[7], 'kind', 'session', 'node', me, 'jid', full, 'seq', seq, 'body', record)
  end
end
return 1
"""

# An envelope (ARGV from 4: its fields, name and value) for the inbox of every member but this node, as the
# member set is when the script runs (a node that joins later forgets its documents as it joins).
BROADCAST = """
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[1] then
    redis.call('XADD', ARGV[2] .. 'stream:' .. node, 'NOMKSTREAM', 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
  end
end
return 1
"""

# A survivor takes over what a node without a lease held, ``held:KIND:NODE`` (bridge.core.holdings;
# KEYS: that node's lease, its hash, the claimer's hash, the claimer's lease; ARGV: the claimer's
# incarnation).  Only while the claimer holds its own lease (else false: try again later); a field the
# claimer already holds stays its own.
TAKE_OVER = """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return false end
if redis.call('EXISTS', KEYS[1]) == 1 then return {} end
local entries, moved = redis.call('HGETALL', KEYS[2]), {}
for i = 1, #entries, 2 do
  if redis.call('HSETNX', KEYS[3], entries[i], entries[i + 1]) == 1 then
    moved[#moved + 1] = entries[i]
    moved[#moved + 1] = entries[i + 1]
  end
end
redis.call('DEL', KEYS[2])
return moved
"""

# Renew the lease only while it is still this incarnation's.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# A survivor removes a node whose lease is gone (several survivors may race: one wins, the others get 0).
# The winner gets what the node's inbox held and the node never read, so that it routes the stanzas
# among them again.  (What the node read it handed to its sessions before acknowledging it: those
# entries count as delivered, as what it wrote to its clients does, and are not routed twice.)  Each resumable
# session of the node is kept for its client as ``orphan:ID`` (its resume state and record), expiring
# after the resumption timeout (ARGV[4] milliseconds).
REMOVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 and redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
local left = {}
if redis.call('EXISTS', KEYS[4]) == 1 then
  local last = '0-0'
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[4])) do
    for i = 1, #group, 2 do
      if group[i] == 'name' and group[i + 1] ~= ARGV[2] then break end
      if group[i] == 'last-delivered-id' then last = group[i + 1] end
    end
  end
  for _, entry in ipairs(redis.call('XRANGE', KEYS[4], '(' .. last, '+', 'COUNT', ARGV[3])) do
    table.insert(left, entry)
  end
end
if tonumber(ARGV[4]) > 0 then
  local states = redis.call('HGETALL', KEYS[5])
  for i = 1, #states, 2 do
    local ok, state = pcall(cjson.decode, states[i + 1])
    local record = ok and type(state) == 'table' and type(state['jid']) == 'string'
                   and redis.call('HGET', KEYS[3], state['jid'])
    if record then
      redis.call('SET', ARGV[5] .. states[i], cjson.encode({state = states[i + 1], record = record}), 'PX', ARGV[4])
    end
  end
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
return {1, left}
"""

# A survivor takes over a resumable session (XEP-0198) of another node, by its resumption id: from
# ``orphan:ID`` once the node was removed, else from the node's resume hash once its lease is gone
# (while it runs: {'alive', milliseconds left}).  Only for the account that asks (its bare JID, then
# '/'), and only once (the id goes).  The answer: {'taken', resume state, session record}.
TAKE = """
local prefix, id, bare = ARGV[1], ARGV[2], ARGV[3]
local function owned(state)
  local ok, parsed = pcall(cjson.decode, state)
  return ok and type(parsed) == 'table' and type(parsed['jid']) == 'string'
         and string.sub(parsed['jid'], 1, #bare + 1) == bare .. '/' and parsed['jid']
end
local orphan = redis.call('GET', prefix .. 'orphan:' .. id)
if orphan then
  local ok, kept = pcall(cjson.decode, orphan)
  if not (ok and type(kept) == 'table' and type(kept['state']) == 'string' and type(kept['record']) == 'string'
          and owned(kept['state'])) then return false end
  redis.call('DEL', prefix .. 'orphan:' .. id)
  return {'taken', kept['state'], kept['record']}
end
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local state = redis.call('HGET', prefix .. 'resume:' .. node, id)
  if state then
    local jid = owned(state)
    if not jid then return false end
    local left = redis.call('PTTL', prefix .. 'lease:' .. node)
    if left > 0 then return {'alive', tostring(left)} end
    local record = redis.call('HGET', prefix .. 'sessions:' .. node, jid)
    if not record then return false end
    redis.call('HDEL', prefix .. 'resume:' .. node, id)
    return {'taken', state, record}
  end
end
return false
"""

# A chat room's host: the node named in ``rooms`` while its lease holds that incarnation; else this node,
# when its own lease holds (the fencing: a node that lost its lease claims nothing).
CLAIM_ROOM = """
local rooms, lease, claimed = KEYS[1], KEYS[2], KEYS[3]
local prefix, room, me, incarnation = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HGET', rooms, room)
if current then
  local node, held = string.match(current, '^(%S+) (%S+)$')
  if node and redis.call('GET', prefix .. 'lease:' .. node) == held then return current end
end
if redis.call('GET', lease) ~= incarnation then return false end
local mine = me .. ' ' .. incarnation
redis.call('HSET', rooms, room, mine)
redis.call('SADD', claimed, room)
return mine
"""

# A room this node hosted has ended: it is no longer claimed (unless another node claimed it since).
RELEASE_ROOM = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# The claims of a gone incarnation of a node go (several survivors may race: it is idempotent); those of
# its next incarnation stay.
RELEASE_ROOMS_OF = """
local rooms, claimed = KEYS[1], KEYS[2]
local node, gone = ARGV[1], ARGV[1] .. ' ' .. ARGV[2]
for _, room in ipairs(redis.call('SMEMBERS', claimed)) do
  local current = redis.call('HGET', rooms, room)
  if current == gone then
    redis.call('HDEL', rooms, room)
    redis.call('SREM', claimed, room)
  elseif not current or string.sub(current, 1, #node + 1) ~= node .. ' ' then
    redis.call('SREM', claimed, room)
  end
end
return 1
"""


# The claims of one node (bridge.core.ownership): each key it holds is renewed, each free one taken, and
# only while the node's lease still holds its incarnation (a node whose lease is gone takes nothing, and
# renews nothing: its keys expire).  The owner of each key is returned, false where there is none.
CLAIM = """
local me = ARGV[1] .. ' ' .. ARGV[2]
local alive = redis.call('GET', KEYS[1]) == ARGV[2]
local owners = {}
for index = 2, #KEYS do
  local owner = redis.call('GET', KEYS[index])
  if alive and owner == me then
    redis.call('PEXPIRE', KEYS[index], ARGV[3])
  elseif alive and not owner then
    redis.call('SET', KEYS[index], me, 'PX', ARGV[3])
    owner = me
  end
  owners[index - 1] = owner
end
return owners
"""

# Give up claims: each key deleted only while it is still this incarnation's.
RELEASE = """
local me = ARGV[1] .. ' ' .. ARGV[2]
for index = 1, #KEYS do
  if redis.call('GET', KEYS[index]) == me then redis.call('DEL', KEYS[index]) end
end
return 1
"""


class RedisLink:
    """``config``: the [cluster] section; ``reactor``: for the threads and to hand entries back."""

    def __init__(self, config, reactor):
        host, port = parse_host_port(config.redis_address)
        password = config.read_password() or None
        self.reactor = reactor
        self.node = config.node_name
        self.lease_milliseconds = int(config.lease_seconds * 1000)
        self.max_entries = config.stream_max_entries
        self.incarnation = None
        common = {"host": host.strip("[]"), "port": port or 6379, "password": password,
                  "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS}
        self.client = redis.Redis(socket_timeout=SOCKET_TIMEOUT_SECONDS, **common)
        self.reader = redis.Redis(socket_timeout=SOCKET_TIMEOUT_SECONDS + READ_BLOCK_MILLISECONDS / 1000,
                                  **common)
        self._take_over = self.client.register_script(TAKE_OVER)
        self._publish = self.client.register_script(PUBLISH)
        self._broadcast = self.client.register_script(BROADCAST)
        self._renew = self.client.register_script(RENEW)
        self._remove = self.client.register_script(REMOVE)
        self._claim = self.client.register_script(CLAIM)
        self._release = self.client.register_script(RELEASE)
        self._take = self.client.register_script(TAKE)
        self._claim_room = self.client.register_script(CLAIM_ROOM)
        self._release_room = self.client.register_script(RELEASE_ROOM)
        self._release_rooms_of = self.client.register_script(RELEASE_ROOMS_OF)
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="redis")
        self._stopping = threading.Event()
        self._outbox = []  # (write, its arguments, its Deferred), waiting for the writer
        self._writing = False
        self._reading = None

    def key(self, kind, node=None):
        return f"{PREFIX}{kind}:{node or self.node}"

    def _call(self, function, *args):
        return threads.deferToThreadPool(self.reactor, self.pool, function, *args)

    # -- lifetime ----------------------------------------------------------------------

    def start(self, on_entries):
        """Start the writer thread; ``on_entries(list of field dicts)`` will be called in the reactor
        thread with what arrives, once the node has joined (and its inbox exists)."""
        self.pool.start()
        self._reading = threading.Thread(target=self._read_loop, args=(on_entries,), name="redis-reader",
                                         daemon=True)

    def stop(self):
        """Leave the cluster cleanly when Redis answers (the lease and the node's keys go), then stop."""
        self._stopping.set()
        d = self._call(self._leave) if self.incarnation else defer.succeed(None)
        d.addErrback(lambda _: None)
        d.addBoth(lambda _: self.pool.stop())
        return d

    def _leave(self):
        with self.client.pipeline() as pipe:
            pipe.srem(PREFIX + "nodes", self.node)
            pipe.delete(self.key("lease"), self.key("sessions"), self.key("stream"), self.key("resume"))
            pipe.execute()

    # -- membership ----------------------------------------------------------------------

    def join(self, records, seq):
        """Become a member with a new incarnation: a fresh inbox, the hash of ``records`` and the lease."""
        incarnation = os.urandom(8).hex()
        return self._call(self._join, incarnation, records, seq)

    def _join(self, incarnation, records, seq):
        with self.client.pipeline() as pipe:  # MULTI/EXEC
            pipe.delete(self.key("stream"), self.key("sessions"), self.key("resume"))
            pipe.xgroup_create(self.key("stream"), GROUP, id="$", mkstream=True)
            pipe.hset(self.key("sessions"), mapping={"": seq, **records})
            pipe.set(self.key("lease"), incarnation, px=self.lease_milliseconds)
            pipe.sadd(PREFIX + "nodes", self.node)
            pipe.execute()
        self.incarnation = incarnation
        if self._reading.ident is None:  # the first join: the inbox exists from now on
            self._reading.start()
        return True

    def renew(self):
        """True when the lease was renewed; False when Redis no longer holds it."""
        return self._call(lambda: bool(self._renew(keys=[self.key("lease")],
                                                   args=[self.incarnation, self.lease_milliseconds])))

    def members(self):
        """{node: its incarnation, or None when its lease is gone}."""
        return self._call(self._members)

    def _members(self):
        nodes = sorted(name.decode() for name in self.client.smembers(PREFIX + "nodes"))
        leases = self.client.mget([self.key("lease", node) for node in nodes]) if nodes else []
        return {node: lease.decode() if lease is not None else None for node, lease in zip(nodes, leases)}

    def remove_node(self, node, resumption_milliseconds):
        """Remove a node whose lease is gone, keeping its resumable sessions for their clients for
        ``resumption_milliseconds``: the field dicts of its inbox's entries it never read (see
        REMOVE), or None when its lease is back or another survivor removed it first."""
        return self._call(self._remove_node, node, resumption_milliseconds)

    def _remove_node(self, node, resumption_milliseconds):
        answer = self._remove(keys=[self.key("lease", node), PREFIX + "nodes", self.key("sessions", node),
                                    self.key("stream", node), self.key("resume", node)],
                              args=[node, GROUP, self.max_entries, resumption_milliseconds, PREFIX + "orphan:"])
        if not answer:
            return None
        return [dict(zip(flat[::2], flat[1::2])) for _, flat in answer[1]]

    def take_resumption(self, resume_id, bare):
        """("taken", state, record) of the resumable session ``resume_id`` of ``bare`` on a node whose
        lease is gone (the id is then gone from Redis); ("alive", milliseconds its lease has left); or
        None: no such id for that account (see TAKE)."""
        return self._call(self._take_resumption, resume_id, bare)

    def _take_resumption(self, resume_id, bare):
        answer = self._take(keys=[PREFIX + "nodes"], args=[PREFIX, resume_id, bare])
        if not answer:
            return None
        return tuple(part.decode() for part in answer)

    def remember_resumption(self, resume_id, state):
        """Keep (or update) what a survivor needs to resume a session of this node."""
        return self._queue(lambda pipe: pipe.hset(self.key("resume"), resume_id, state))

    def forget_resumption(self, resume_id):
        return self._queue(lambda pipe: pipe.hdel(self.key("resume"), resume_id))

    def load_sessions(self, node):
        """(sequence number, {full JID: record}) of a node's hash."""
        return self._call(self._load_sessions, node)

    def _load_sessions(self, node):
        records = _text_pairs(self.client.hgetall(self.key("sessions", node)).items())
        seq = records.pop("", "0")
        return int(seq) if seq.isdigit() else 0, records

    # -- ownership (bridge.core.ownership) ---------------------------------------------------

    def claim(self, resources):
        """Renew the resources this incarnation owns, take the free ones; [owner "NODE INCARNATION" or None]."""
        return self._call(self._claim_in, list(resources))

    def _claim_in(self, resources):
        owners = self._claim(keys=[self.key("lease")] + [self.key("owner", resource) for resource in resources],
                             args=[self.node, self.incarnation or "", self.lease_milliseconds])
        return [owner.decode() if owner else None for owner in owners]

    def release(self, resources):
        """Delete the keys of ``resources`` that are still this incarnation's."""
        return self._call(lambda: self._release(keys=[self.key("owner", resource) for resource in resources],
                                                args=[self.node, self.incarnation or ""]))

    # -- messages ------------------------------------------------------------------------

    def publish(self, fields):
        """A change of one of this node's sessions (an Envelope of kind "session")."""
        return self._queue(self._publish_in, fields)

    def _publish_in(self, pipe, fields):
        self._publish(keys=[self.key("sessions"), PREFIX + "nodes"],
                      args=[PREFIX, self.node, fields["jid"], fields["body"], fields["seq"], self.max_entries,
                            fields["v"]],
                      client=pipe)

    def broadcast(self, fields):
        """Append ``fields`` to the inbox of every other member, in order with this node's other writes."""
        return self._queue(self._broadcast_in, fields)

    def _broadcast_in(self, pipe, fields):
        self._broadcast(keys=[PREFIX + "nodes"],
                        args=[self.node, PREFIX, self.max_entries, *(part for pair in fields.items() for part in pair)],
                        client=pipe)

    def send(self, node, fields):
        """Append ``fields`` to the inbox of ``node``; fails (LookupError) when the node has no inbox."""
        return self._queue(self._send_in, node, fields)

    def _send_in(self, pipe, node, fields):
        pipe.xadd(self.key("stream", node), fields, maxlen=self.max_entries, approximate=True, nomkstream=True)

    # -- chat rooms (bridge/gateways/muc/placement.py), in order with the node's other writes ---------

    def claim_room(self, room):
        """"NODE INCARNATION" of the room's host (this node, when the room had none alive), or None when
        this node's lease is not held."""
        return self._queue(self._claim_room_in, room).addCallback(
            lambda owner: owner.decode() if isinstance(owner, bytes) else owner)

    def _claim_room_in(self, pipe, room):
        self._claim_room(keys=[PREFIX + "rooms", self.key("lease"), self.key("rooms")],
                         args=[PREFIX, room, self.node, self.incarnation or ""], client=pipe)

    def release_room(self, room):
        return self._queue(self._release_room_in, room)

    def _release_room_in(self, pipe, room):
        self._release_room(keys=[PREFIX + "rooms", self.key("rooms")], args=[room, f"{self.node} {self.incarnation}"],
                           client=pipe)

    def release_rooms_of(self, node, incarnation):
        return self._queue(self._release_rooms_of_in, node, incarnation)

    def _release_rooms_of_in(self, pipe, node, incarnation):
        self._release_rooms_of(keys=[PREFIX + "rooms", self.key("rooms", node)], args=[node, incarnation],
                               client=pipe)

    # -- what a node holds (bridge.core.holdings: ``held:KIND:NODE``, kept when the node goes) ---------

    def held_put(self, kind, field, value):
        """Set ``field`` of this node's hash of ``kind``, in order with the other writes."""
        return self._queue(lambda pipe: pipe.hset(self.key("held:" + kind), field, value))

    def held_remove(self, kind, field):
        return self._queue(lambda pipe: pipe.hdel(self.key("held:" + kind), field))

    def held(self, kind):
        """{field: value} of this node's own hash of ``kind``."""
        return self._call(lambda: _text_pairs(self.client.hgetall(self.key("held:" + kind)).items()))

    def take_over(self, kind, node):
        """{field: value} moved from ``node``'s hash of ``kind`` into this node's ({} when ``node`` still
        has a lease or held nothing), or None when this node holds no lease."""
        return self._call(self._take_over_now, kind, node)

    def _take_over_now(self, kind, node):
        moved = self._take_over(keys=[self.key("lease", node), self.key("held:" + kind, node),
                                      self.key("held:" + kind), self.key("lease")], args=[self.incarnation or ""])
        if moved is None:
            return None
        return _text_pairs(zip(moved[0::2], moved[1::2]))

    def shared_secret(self, name):
        """The bytes of the secret ``secret:NAME`` all nodes share, made by the first node that asks."""
        return self._call(self._shared_secret, PREFIX + "secret:" + name)

    def _shared_secret(self, key):
        self.client.set(key, os.urandom(32).hex(), nx=True)
        return bytes.fromhex(self.client.get(key).decode())

    def _queue(self, write, *args):
        """Queue a write.  The writer sends what waits in one pipeline, in the order it was queued, so
        that a busy node makes one round trip per batch rather than one per stanza."""
        written = defer.Deferred()
        self._outbox.append((write, args, written))
        if not self._writing:
            self._write_waiting()
        return written

    def _write_waiting(self):
        batch, self._outbox = self._outbox, []
        self._writing = True
        d = self._call(self._write_batch, [(write, args) for write, args, _ in batch])
        d.addBoth(self._written, batch)

    def _write_batch(self, writes):
        """In the writer thread: one pipeline (not a transaction); each write's reply or exception."""
        with self.client.pipeline(transaction=False) as pipe:
            for write, args in writes:
                write(pipe, *args)
            return pipe.execute(raise_on_error=False)

    def _written(self, replies, batch):
        self._writing = False
        for index, (write, args, written) in enumerate(batch):
            reply = replies if isinstance(replies, Failure) else replies[index]
            if isinstance(reply, (Failure, Exception)):
                written.errback(reply)
            elif reply is None and write == self._send_in:  # NOMKSTREAM: the node has no inbox
                written.errback(LookupError(f"node {args[0]} has no inbox"))
            else:
                written.callback(reply)
        if self._outbox:
            self._write_waiting()

    def _read_loop(self, on_entries):
        """Read this node's inbox until stopped: first what was delivered but never acknowledged
        (after a broken connection), then what is new."""
        stream = self.key("stream")
        start = "0"
        while not self._stopping.is_set():
            try:
                answer = self.reader.xreadgroup(GROUP, self.node, {stream: start}, count=BATCH,
                                                block=READ_BLOCK_MILLISECONDS)
            except (redis.RedisError, OSError):
                start = "0"
                self._stopping.wait(READ_BLOCK_MILLISECONDS / 1000)
                continue
            entries = answer[0][1] if answer else []
            if start == "0" and not entries:
                start = ">"
                continue
            if not entries:
                continue
            fields = [entry for _, entry in entries if entry]
            if fields:
                try:
                    threads.blockingCallFromThread(self.reactor, on_entries, fields)
                except Exception:
                    log.failure("cluster: entries of the inbox of {node} not handled", node=self.node)
            try:
                self.reader.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
            except (redis.RedisError, OSError):
                start = "0"


def _text_pairs(pairs):
    return {key.decode(): value.decode() for key, value in pairs}

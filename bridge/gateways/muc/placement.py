"""Which node of a cluster hosts each chat room (docs/muc.md "Rooms across nodes", docs/scaling.md).

Every node serves the MUC domains, but a room lives on one node at a time,
so that its occupants, roles and history are one state.  The first node
that needs a room claims it in Redis (``Cluster.claim_room``: the room's JID
-> that node's name and incarnation).  A claim holds while the claimer's
lease holds that incarnation: a node that died, or lost its lease and came
back as a new incarnation, has lost its rooms, and the next node that needs
one of them claims it, reading it (a persistent room) from the shared
storage.  The claim is the fence: only a node whose lease holds claims.

Here, at the entry of the service's domains (``stanza/in``, before the
service's handlers): a stanza for a room (or an occupant's room JID) hosted
by another node goes to that node over the inter-node channel (an envelope
of kind "room"), where it enters the service as if sent there; what the
room sends reaches occupants on any node through the ordinary routing (a
``RemoteSession`` forwards it).  Stanzas for the service's domain itself
(disco, ping) are answered by every node.

When a room's host goes, the users of this node who were in it get the
room's unavailable presence with status 332 (removed by a system
shutdown): their clients join again, and the room comes back on a live
node.  And when another node goes, its users leave the rooms hosted here.
"""

from twisted.logger import Logger

from bridge.core.hooks import POLICY
from bridge.core.server import looping_call
from bridge.core.stanza import make, parse_jid

log = Logger()

NS_USER = "http://jabber.org/protocol/muc#user"
SHUTDOWN_STATUS = "332"  # XEP-0045: removed from the room because of a system shutdown
MAX_WAITING_ROOMS = 1000  # rooms whose claim is under way
MAX_WAITING_PER_ROOM = 100  # stanzas for one room waiting for its claim (and its reading from storage)
MAX_REMOTE_OCCUPANCIES = 100000  # (local resource, room hosted elsewhere) pairs remembered for 332
MAX_KNOWN_HOSTS = 100000  # rooms whose host this node remembers (past it, the oldest is asked again)


class RoomPlacement:
    """This node's part of the rooms' placement: the rooms it hosts, where the others are, and which local
    resources are in rooms hosted elsewhere."""

    def __init__(self, ctx, service, cluster):
        self.ctx = ctx
        self.service = service
        self.cluster = cluster
        self.hosted = set()  # room JIDs this node hosts, under its current incarnation
        self.owners = {}  # room JID -> (node, incarnation) of the other node hosting it, as last claimed
        self.waiting = {}  # room JID -> [stanza], until its claim is answered (and the room read)
        self.joined = {}  # local full JID -> {room JID: nick} of rooms hosted by other nodes
        self.joined_count = 0
        ctx.hook("stanza/in", self.on_stanza, priority=POLICY)
        ctx.hook_local("session/ended", self.on_session_ended)
        cluster.room_receiver = self.received
        cluster.node_observers.append(self)
        looping_call(ctx.clock, ctx.section("cluster").lease_seconds, self.release_ended)

    # -- what arrives ------------------------------------------------------------------

    def on_stanza(self, event):
        """A stanza for a room of the service's domains: the service takes it when the room is hosted here."""
        if event.to.user is None:
            return False
        room = event.to.userhost()
        if room in self.hosted:
            return False
        self._note_occupancy(room, event)
        self._place(room, event.stanza, fresh=False)
        return True

    def received(self, stanza):
        """A stanza another node sent here, believing this node hosts its room."""
        to = parse_jid(stanza.getAttribute("to") or "")
        if to is None or to.user is None or to.host not in self.service.rooms:
            log.warn("MUC: a stanza from another node for {to}, no room of this service", to=stanza.getAttribute("to"))
            return
        room = to.userhost()
        if room in self.hosted:
            self.ctx.route(stanza)
        else:
            self._place(room, stanza, fresh=True)

    def _place(self, room, stanza, fresh):
        """To the room's host as this node knows it, unless ``fresh``: then (and when unknown) as Redis says."""
        owner = self.owners.get(room)
        if owner is not None and not fresh:
            self._forward(room, owner, stanza)
            return
        waiting = self.waiting.get(room)
        if waiting is None:
            if len(self.waiting) >= MAX_WAITING_ROOMS:
                self.ctx.bounce(stanza, "resource-constraint", "too many rooms are being looked up")
                return
            waiting = self.waiting[room] = []
            self.cluster.claim_room(room).addCallbacks(self._claimed, self._claim_failed, callbackArgs=(room,),
                                                       errbackArgs=(room,))
        if len(waiting) >= MAX_WAITING_PER_ROOM:
            self.ctx.bounce(stanza, "resource-constraint", "too many stanzas wait for this room")
            return
        waiting.append(stanza)

    def _forward(self, room, owner, stanza):
        def failed(failure):
            if self.owners.get(room) == owner:
                del self.owners[room]  # its node has no inbox: the next stanza asks Redis again
            self.ctx.bounce(stanza, "remote-server-timeout", "the node of this room cannot be reached")

        self.cluster.forward_to_room(owner[0], stanza["to"], stanza).addErrback(failed)

    def _claimed(self, owner, room):
        if owner is None:
            self._give_up(room, "service-unavailable", "this node is not in the cluster now")
            return
        if owner != (self.cluster.node, self.cluster.incarnation()):
            if len(self.owners) >= MAX_KNOWN_HOSTS:
                del self.owners[next(iter(self.owners))]
            self.owners[room] = owner
            for stanza in self.waiting.pop(room, ()):
                self._forward(room, owner, stanza)
            return
        self.owners.pop(room, None)
        node, _, domain = room.partition("@")
        loading = self.service.load_room(domain, node)
        loading.addCallbacks(self._hosting, self._load_failed, callbackArgs=(room,), errbackArgs=(room,))

    def _hosting(self, _, room):
        """The room is this node's, as storage holds it: what waited enters the service."""
        self.hosted.add(room)
        log.info("MUC: node {node} hosts {room}", node=self.cluster.node, room=room)
        for stanza in self.waiting.pop(room, ()):
            self.ctx.route(stanza)

    def _load_failed(self, failure, room):
        log.failure("MUC: room {room} could not be read; not hosted here", failure, room=room)
        self.cluster.release_room(room)
        self._give_up(room, "internal-server-error", "the room could not be read")

    def _claim_failed(self, failure, room):
        log.warn("MUC: the host of {room} could not be asked: {error}", room=room, error=failure.getErrorMessage())
        self._give_up(room, "service-unavailable", "the cluster cannot be reached")

    def _give_up(self, room, condition, text):
        for stanza in self.waiting.pop(room, ()):
            self.ctx.bounce(stanza, condition, text)

    # -- who is where ------------------------------------------------------------------

    def _note_occupancy(self, room, event):
        """Remember that a local resource joined (or left) a room hosted elsewhere, to tell it if its host goes."""
        stanza, sender = event.stanza, event.sender
        if stanza.name != "presence" or event.to.resource is None or sender is None:
            return
        full = sender.full()
        session = self.ctx.sessions.get(full)
        if session is None or not session.local:
            return
        kind = stanza.getAttribute("type")
        rooms = self.joined.get(full)
        if kind is None:
            if rooms is None or room not in rooms:
                if self.joined_count >= MAX_REMOTE_OCCUPANCIES:
                    return
                self.joined_count += 1
            self.joined.setdefault(full, {})[room] = event.to.resource
        elif kind in ("unavailable", "error") and rooms is not None and room in rooms:
            self._forget(full, room)

    def _forget(self, full, room):
        rooms = self.joined[full]
        del rooms[room]
        self.joined_count -= 1
        if not rooms:
            del self.joined[full]

    def on_session_ended(self, session):
        for room in list(self.joined.get(session.full, ())):
            self._forget(session.full, room)

    def node_gone(self, node, incarnation, sessions):
        """The cluster's observer: ``node`` (that incarnation) died, left or restarted, with ``sessions``."""
        if node == self.cluster.node:
            # This node lost its lease: its claims are void (a room comes back from storage when claimed
            # again), and its sessions are ended.
            for room in self.hosted:
                self.service.unload_room(*reversed(room.split("@")))
            self.hosted.clear()
            self.owners.clear()
            self.joined.clear()
            self.joined_count = 0
            return
        lost = {room for room, owner in self.owners.items() if owner == (node, incarnation)}
        for room in lost:
            del self.owners[room]
        for full, rooms in list(self.joined.items()):
            for room in [room for room in rooms if room in lost]:
                self._tell_removed(full, room, rooms[room])
                self._forget(full, room)
        self._leave_hosted_rooms({session.full for session in sessions})
        self.cluster.release_rooms_of(node, incarnation)

    def _tell_removed(self, full, room, nick):
        presence = make("presence", to=full, sender=f"{room}/{nick}", type="unavailable")
        x = presence.addElement((NS_USER, "x"))
        item = x.addElement("item")
        item["affiliation"] = "none"
        item["role"] = "none"
        x.addElement("status")["code"] = SHUTDOWN_STATUS
        self.ctx.route(presence)

    def _leave_hosted_rooms(self, gone):
        """The resources of a gone node leave the rooms hosted here, as if each had sent unavailable presence."""
        for room_jid in list(self.hosted):
            node, domain = room_jid.split("@")
            room = self.service.rooms.get(domain, {}).get(node)
            if room is None:
                continue
            for full in [full for full in room.by_jid if full in gone]:
                self.ctx.route(make("presence", to=f"{room_jid}/{room.by_jid[full].nick}", sender=full,
                                    type="unavailable"))

    def release_ended(self):
        """Rooms that ended here (a temporary room's last occupant left, a room destroyed, or a room never
        made) are no longer claimed: the claims in Redis stay as many as the live rooms."""
        for room_jid in list(self.hosted):
            node, domain = room_jid.split("@")
            if node not in self.service.rooms.get(domain, {}) and room_jid not in self.waiting:
                self.hosted.discard(room_jid)
                self.cluster.release_room(room_jid)

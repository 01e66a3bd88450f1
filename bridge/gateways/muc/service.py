"""The multi-user chat service (XEP-0045) on ``<subdomain>.<host>`` of every local host.

``attach(ctx, reactor, tls_context)`` serves one component host per local
host through the ``GatewayContext`` (``ctx.serve`` for each domain), with
the ordinary disco, version and ping modules on it; the service adds its
identity, the public rooms as disco items, and these events:

* ``presence/full`` to ``room@service/nick``: join (the room is created on
  first join, locked until its owner configures it or accepts the instant
  room, status 201), nick change (303), presence update, leave; a temporary
  room ends with its last occupant.
* ``message/bare``: groupchat to every occupant (with XEP-0421 occupant ids
  and a XEP-0359 stanza id), subject changes, mediated invitations and
  declines; ``message/full``: private messages between occupants.
* IQs on the room: disco#info (muc_ features, muc#roominfo), disco#items,
  muc#owner (configuration form, instant room, destroy), muc#admin
  (affiliations and roles: kick, ban, voice), XEP-0313 queries of a
  persistent room's archive (the room is the archive's owner), XEP-0425
  moderation (a moderator retracts a message by its stanza id); on
  ``room/nick``: XEP-0410 self-ping.

Persistent rooms (configuration, affiliations, subject) are documents of
the ``muc-rooms`` store keyed (service domain, room), their history a queue
of ``muc-history``; both are read at start.  Temporary rooms keep their
history in memory only.  Everything grows within the ``[muc]`` bounds.
"""

import base64
import datetime
import hashlib
import hmac
import re

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core.server import looping_call
from bridge.core.storage import ArchiveItemNotFound, ArchiveQuery, ArchiveRecord
from bridge.core.stanza import (delay_element, error_reply, first_child, make, parse_jid, readdress,
                                result_reply)
from bridge.core.xmlstream import parse_element, serialize
from bridge.core.mam_query import NS_MAM, QueryError, fin_reply, new_id, parse_query, result_message
from bridge.gateways.muc.forms import (NS_REQUEST, FormError, RoomConfig, apply_form, config_form, form_type,
                                      register_form, registered_nick, room_info_form, voice_decision,
                                      voice_request_form)
from bridge.gateways.muc.iqs import Forwarded, ForwardedIQs
from bridge.gateways.muc.placement import RoomPlacement
from bridge.gateways.muc.room import AFFILIATIONS, RANK, HistoryEntry, Occupant, Room

log = Logger()

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_ADMIN = NS_MUC + "#admin"
NS_OWNER = NS_MUC + "#owner"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_SID = "urn:xmpp:sid:0"
NS_PING = "urn:xmpp:ping"
NS_MODERATE = "urn:xmpp:message-moderate:1"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_FALLBACK = "urn:xmpp:fallback:0"
NS_HINTS = "urn:xmpp:hints"
NS_DATA = "jabber:x:data"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_IQ_REGISTER = "jabber:iq:register"
NODE_RESERVED_NICK = "x-roomuser-item"  # disco#info node of one's registered nickname (XEP-0045 section 7.12)
ROOMS_STORE = "muc-rooms"  # (service domain, room): Room.to_document()
HISTORY_STORE = "muc-history"  # (service domain, room): queue of {"time", "xml"}
MAX_ITEMS_PER_ADMIN_IQ = 100
MAX_REASON_CHARS = 1024
VOICE_REQUEST_INTERVAL_SECONDS = 60  # a visitor's voice requests reach the moderators at most this often
MAX_WAITING_WHILE_LOADING = 1000  # stanzas that arrive before the stored rooms are read
MAX_SESSIONS_PER_OCCUPANT = 10  # resources of one bare JID under one nickname
MAX_FORWARDED_IQS_PER_ASKER = 10  # IQs to occupants one real JID may have awaiting answers
NS_VCARD = "vcard-temp"  # an IQ to an occupant of this namespace goes to its bare JID (XEP-0054 lives there)
MENTION_EVENT = "muc/mention"  # fired on a member's host: (host, user, message), as offline/stored is
WORDS = re.compile(r"\w+")


def attach(ctx, reactor, tls_context):
    """The service of ``ctx.config`` (the [muc] section), or None when it is off."""
    if not ctx.config.enabled:
        return None
    service = MUCService(ctx)
    if ctx.cluster is not None:
        RoomPlacement(ctx, service, ctx.cluster)
    return service


def _child(stanza, uri, name):
    return next(stanza.elements(uri, name), None)


def _status(x, *codes):
    for code in codes:
        x.addElement("status")["code"] = str(code)


def _reason_of(item):
    reason = _child(item, item.uri, "reason")
    return str(reason)[:MAX_REASON_CHARS] if reason is not None else None


class MUCService:
    def __init__(self, ctx):
        self.ctx = ctx
        self.config = ctx.config
        self.clock = ctx.clock
        self.rooms = {}  # service domain -> {room node: Room}
        self.hosts = {}  # service domain -> the local host it serves
        self.rooms_store = ctx.store(ROOMS_STORE)
        self.history_store = ctx.store(HISTORY_STORE)
        self.mam = ctx.section("mam")
        self.admins = frozenset(jid.lower() for jid in self.config.admins)
        self._occupant_key = ctx.derive_key("muc occupant-id")
        self._waiting = None  # while the stored rooms are read: [(handler, event)]
        self.forwarded = ForwardedIQs(self.clock, self.config.max_forwarded_iqs, MAX_FORWARDED_IQS_PER_ASKER,
                                      self.config.forwarded_iq_timeout_seconds, self._forwarded_timeout)
        self._forward_when_loaded = self._when_loaded(self.forward_iq)
        for host in ctx.host_names():
            domain = f"{self.config.subdomain}.{host}".lower()
            ctx.serve(domain, ("conference", "text", "Chatrooms"), listed_on=host)
            self.rooms[domain] = {}
            self.hosts[domain] = host
        ctx.add_feature(NS_MUC)
        for event, handler in (
                ("presence/full", self.on_presence),
                ("presence/bare", self.on_bare_presence),
                ("message/bare", self.on_room_message),
                ("message/full", self.on_private_message),
                (f"iq-get/bare/{NS_DISCO_INFO}:query", self.on_room_info),
                (f"iq-get/bare/{NS_DISCO_ITEMS}:query", self.on_room_items),
                (f"iq-get/bare/{NS_OWNER}:query", self.on_owner_get),
                (f"iq-set/bare/{NS_OWNER}:query", self.on_owner_set),
                (f"iq-get/bare/{NS_ADMIN}:query", self.on_admin_get),
                (f"iq-set/bare/{NS_ADMIN}:query", self.on_admin_set),
                ("iq-result/full", self.on_forwarded_answer),
                ("iq-error/full", self.on_forwarded_answer),
                (f"iq-set/bare/{NS_MODERATE}:moderate", self.on_moderate),
                (f"iq-get/bare/{NS_IQ_REGISTER}:query", self.on_register_get),
                (f"iq-set/bare/{NS_IQ_REGISTER}:query", self.on_register_set),
                (f"iq-set/bare/{NS_MAM}:query", self.on_archive_query)):
            ctx.hook(event, self._when_loaded(handler))
        ctx.hook("stanza/in", self.on_occupant_iq)
        if self.mam.enabled and any(self._retention_days(domain) for domain in self.hosts):
            looping_call(self.clock, self.mam.purge_interval_seconds, self.purge)

    # -- lifetime (the Gateway shape of tap.py) -------------------------------------

    def listeners(self):
        return []

    def start(self):
        """Read the persistent rooms and their history; stanzas that come meanwhile wait."""
        self._waiting = []
        loading = defer.gatherResults([self._load(domain) for domain in self.rooms], consumeErrors=True)
        loading.addErrback(lambda failure: log.failure("MUC: the stored rooms could not be read", failure))
        loading.addBoth(self._loaded)
        return loading

    def stop(self):
        return None

    @defer.inlineCallbacks
    def _load(self, domain):
        for node in (yield self.rooms_store.users(domain)):
            yield self.load_room(domain, node)
        log.info("MUC {domain}: {count} persistent rooms", domain=domain, count=len(self.rooms[domain]))

    @defer.inlineCallbacks
    def load_room(self, domain, node):
        """Read one room and its history from storage, in place of what the service held of it (in a
        cluster the stored room is the newest when a node takes it over: placement.py); None when no
        room of that name is stored."""
        document = yield self.rooms_store.get(domain, node)
        history = (yield self.history_store.items(domain, node)) if document else ()
        self.unload_room(domain, node)
        if not document:
            return None
        room = Room.from_document(domain, node, document, self.config.max_history_bytes_per_room)
        for key, item in history:
            dropped = room.history.add(_stored_entry(item, key), self._history_length(room))
            self._forget_entries(room, dropped)
        self.rooms[domain][node] = room
        self._list(room)
        return room

    def unload_room(self, domain, node):
        """Forget what the service holds of a room, leaving storage alone (its node no longer hosts it)."""
        held = self.rooms[domain].pop(node, None)
        if held is not None:
            self.ctx.remove_domain_item(domain, held.jid)

    def _loaded(self, _):
        waiting, self._waiting = self._waiting, None
        for handler, event in waiting or ():
            handler(event)

    def _when_loaded(self, handler):
        def run(event):
            if self._waiting is None:
                return handler(event)
            if len(self._waiting) >= MAX_WAITING_WHILE_LOADING:
                self._error(event.stanza, "service-unavailable", "the service is starting")
                return True
            self._waiting.append((handler, event))
            return True

        run.__qualname__ = handler.__qualname__
        return run

    def _retention_days(self, domain):
        return self.ctx.host_config(self.hosts[domain]).archive_retention_days(self.mam)

    def purge(self):
        """The retention of each host's archives applies to its rooms' archives too."""
        now = int(self.clock.seconds() * 1e6)
        for domain in self.hosts:
            days = self._retention_days(domain)
            if days:
                self.ctx.storage.archive_expire(domain, now - days * 86400 * 10**6).addErrback(
                    lambda failure, domain=domain: log.failure("MUC: archive retention of {domain} failed",
                                                               failure, domain=domain))

    # -- helpers ---------------------------------------------------------------------

    def send(self, occupant, stanza):
        """``stanza`` (from the room) to every resource of ``occupant``."""
        for jid in occupant.jids:
            self.send_to(jid, stanza)

    def send_to(self, jid, stanza):
        """A copy of ``stanza`` (from the room) to one real full JID."""
        self.ctx.route(readdress(stanza, jid, stanza["from"]))

    def _error(self, stanza, condition, text=None):
        if stanza.getAttribute("type") != "error":
            self.ctx.route(error_reply(stanza, condition, text))

    def _room_of(self, event):
        return self.rooms.get(event.to.host, {}).get(event.to.user)

    def archived(self, room):
        """Persistent rooms are MAM archives (XEP-0313 on the room JID) while [mam] is on."""
        return room.config.persistent and self.mam.enabled

    def _history_length(self, room):
        return min(room.config.history_length, self.config.max_history_length)

    def is_admin(self, bare):
        """One of the service's admins: named in [muc] admins, in the ``admins`` of a host (site policy,
        bridge/core/sitepolicy.py), or a member of the admins_group of the directory of the user's host
        (docs/directory.md)."""
        if bare in self.admins or self.ctx.is_host_admin(bare):
            return True
        user, _, host = bare.partition("@")
        directory = self.ctx.accounts.directory(host)
        return bool(directory is not None and directory.in_policy_group("admins", user))

    def affiliation(self, room, bare):
        """A room's affiliation of ``bare``; the service's admins own every room."""
        return "owner" if self.is_admin(bare) else room.affiliation(bare)

    def occupant_id(self, room, bare):
        """XEP-0421: the same for a real bare JID in a room across restarts, and telling nothing of it."""
        digest = hmac.new(self._occupant_key, f"{room.jid}\0{bare}".encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode("ascii")

    def _list(self, room):
        """Public, configured rooms in the service's disco#items."""
        self.ctx.remove_domain_item(room.domain, room.jid)
        if room.config.public and not room.locked:
            self.ctx.add_domain_item(room.domain, room.jid, room.config.name or room.node)

    def _save(self, room):
        if room.config.persistent and not room.locked:
            self.rooms_store.set(room.domain, room.node, room.to_document()).addErrback(
                lambda failure: log.failure("MUC: room {jid} not saved", failure, jid=room.jid))

    def _forget_entries(self, room, entries):
        for entry in entries:
            if entry.stored is not None:
                entry.stored.addCallback(lambda key: self.history_store.remove(room.domain, room.node, [key]))
                entry.stored.addErrback(lambda failure: log.failure("MUC: history not trimmed", failure))

    def _store_history(self, room):
        """A room that became persistent: its history so far goes to storage too."""
        for entry in room.history.entries:
            if entry.stored is None:
                entry.stored = self.history_store.append(
                    room.domain, room.node, {"time": entry.time, "xml": entry.xml})

    def _unstore(self, room):
        """A room destroyed or made temporary: its document, stored history and archive go."""
        self.rooms_store.set(room.domain, room.node, None)
        self.ctx.storage.archive_remove(room.domain, room.node).addErrback(
            lambda failure: log.failure("MUC: archive of {jid} not removed", failure, jid=room.jid))
        items = self.history_store.items(room.domain, room.node)
        items.addCallback(lambda found: self.history_store.remove(room.domain, room.node,
                                                                  [key for key, _ in found]))
        items.addErrback(lambda failure: log.failure("MUC: history of {jid} not removed", failure, jid=room.jid))
        for entry in room.history.entries:
            entry.stored = None

    def _end_room(self, room):
        del self.rooms[room.domain][room.node]
        self.ctx.remove_domain_item(room.domain, room.jid)
        if room.config.persistent:
            self._unstore(room)

    # -- presence ----------------------------------------------------------------------

    def shown_presence(self, room, occupant, viewer, sees):
        """``occupant``'s available presence as ``viewer`` (``sees``: whether it sees real JIDs) is sent it
        on joining; kept on the occupant while what it shows is unchanged, so that filling a room does
        not build each occupant's presence again for every newcomer."""
        key = (occupant.nick, occupant.role, self.affiliation(room, occupant.bare), occupant.jid)
        kept = occupant.shown.get(sees)
        if kept is not None and kept[0] == key and kept[1] is occupant.presence:
            return kept[2]
        presence = self.presence_of(room, occupant, viewer)
        occupant.shown[sees] = (key, occupant.presence, presence)
        return presence

    def presence_of(self, room, occupant, viewer, codes=(), unavailable=False, nick=None, extra=None, item_extra=()):
        """``occupant``'s presence in ``room`` as ``viewer`` (an Occupant) is sent it; ``item_extra``: children
        of its <item/> (a kick's actor and reason)."""
        presence = make("presence", sender=f"{room.jid}/{occupant.nick}",
                        type="unavailable" if unavailable else None)
        for child in occupant.presence:
            presence.addChild(child)
        x = presence.addElement((NS_USER, "x"))
        item = x.addElement("item")
        item["affiliation"] = self.affiliation(room, occupant.bare)
        item["role"] = "none" if unavailable and nick is None else occupant.role
        if self.sees_jid(room, viewer):
            item["jid"] = occupant.jid
        if nick is not None:
            item["nick"] = nick
        for child in item_extra:
            item.addChild(child)
        if extra is not None:
            x.addChild(extra)
        if viewer is occupant:
            _status(x, 110)
        _status(x, *codes)
        presence.addElement((NS_OCCUPANT_ID, "occupant-id"))["id"] = occupant.occupant_id
        return presence

    @staticmethod
    def sees_jid(room, viewer):
        """Whether ``viewer`` is shown the real JIDs of the room's occupants."""
        return room.config.whois == "anyone" or viewer.role == "moderator"

    def presence_for_others(self, room, occupant, codes=(), **options):
        """A function of a viewer (not ``occupant``) that gives ``occupant``'s presence as that viewer is
        sent it: built once for those who see real JIDs and once for the others, so that a room's k
        copies share one (``readdress`` then writes its children once)."""
        built = {}

        def presence(viewer):
            sees = self.sees_jid(room, viewer)
            shown = built.get(sees)
            if shown is None:
                shown = built[sees] = self.presence_of(room, occupant, viewer, codes, **options)
            return shown

        return presence

    def broadcast_presence(self, room, occupant, self_codes=(), codes=(), **options):
        """``occupant``'s presence to every occupant, its own last (with ``self_codes``)."""
        presence = self.presence_for_others(room, occupant, codes, **options)
        for viewer in list(room.occupants.values()):
            if viewer is not occupant:
                self.send(viewer, presence(viewer))
        self.send(occupant, self.presence_of(room, occupant, occupant, (*codes, *self_codes), **options))

    def on_bare_presence(self, event):
        """Presence to a room without a nickname (XEP-0045 section 7.2.1)."""
        if event.stanza.getAttribute("type") in (None, "available"):
            self._error(event.stanza, "jid-malformed", "join the room as room@service/nickname")
        return True

    def on_presence(self, event):
        stanza = event.stanza
        sender = event.sender
        kind = stanza.getAttribute("type")
        if sender is None or sender.resource is None or kind in ("subscribe", "subscribed", "unsubscribe",
                                                                 "unsubscribed", "probe"):
            return True
        domain_rooms = self.rooms.get(event.to.host)
        if domain_rooms is None:
            return True
        room = domain_rooms.get(event.to.user)
        occupant = room.by_jid.get(sender.full()) if room is not None else None
        if kind == "error":
            if occupant is not None:
                self.leave(room, occupant, sender.full(), codes=(333,))
            return True
        if kind == "unavailable":
            if occupant is not None:
                occupant.presence = _shown_children(stanza)
                self.leave(room, occupant, sender.full())
            return True
        if kind is not None:
            self._error(stanza, "bad-request")
            return True
        if occupant is None:
            self.join(event, room)
        elif occupant.nick != event.to.resource:
            self.change_nick(event, room, occupant)
        else:
            occupant.presence = _shown_children(stanza)
            self.broadcast_presence(room, occupant)
        return True

    def may_create(self, domain, sender):
        """None, or the (condition, text) that refuses ``sender`` a new room."""
        bare = sender.userhost()
        creation = self.config.creation
        admin = self.is_admin(bare)
        if creation == "admins" and not admin:
            return "not-allowed", "only the service's administrators create rooms"
        directory = self.ctx.accounts.directory(sender.host)
        if not admin and directory is not None and directory.in_policy_group("room_creators", sender.user or "") is False:
            return "not-allowed", "only the members of the directory's room creators group create rooms"
        if creation == "local" and self.ctx.local_host(sender.host) is None:
            return "not-allowed", "only users of this server create rooms"
        if len(self.rooms[domain]) >= self.config.max_rooms_per_service:
            return "resource-constraint", "the service holds as many rooms as it may"
        if not admin:
            created = sum(1 for rooms in self.rooms.values() for room in rooms.values() if room.creator == bare)
            if created >= self.config.max_rooms_created_per_user:
                return "policy-violation", f"you have created {created} rooms, the most allowed"
        return None

    def create(self, domain, node, creator):
        config = RoomConfig(max_users=self.config.max_occupants_per_room,
                            history_length=self.config.default_history_length)
        room = Room(domain, node, config, creator, self.config.max_history_bytes_per_room)
        room.affiliations[creator] = "owner"
        room.locked = True
        self.rooms[domain][node] = room
        return room

    def join(self, event, room):
        stanza, sender, nick = event.stanza, event.sender, event.to.resource
        bare = sender.userhost()
        muc = _child(stanza, NS_MUC, "x")
        created = room is None
        if created:
            refusal = self.may_create(event.to.host, sender)
            if refusal is not None:
                self._error(stanza, *refusal)
                return
            room = self.create(event.to.host, event.to.user, bare)
        affiliation = self.affiliation(room, bare)
        if room.locked and affiliation != "owner":
            self._error(stanza, "item-not-found", "the room is being created")
            return
        registered = room.nicks.get(bare)
        rewritten = registered is not None and registered != nick
        if rewritten:
            nick = registered  # a user who registered a nickname enters under it (status 210)
        present = room.occupants.get(nick)
        same_user = present is not None and present.bare == bare
        refusal = self._admission(room, affiliation, bare, nick, muc, same_user)
        if refusal is not None:
            self._error(stanza, *refusal)
            return
        session = sender.full()
        if same_user:
            # Another resource of the occupant's bare JID: the same occupant, seen by nobody else again.
            room.add_session(present, session)
            self.welcome(room, present, session, muc, created, rewritten)
            return
        occupant = Occupant(nick, session, room.default_role(affiliation), self.occupant_id(room, bare))
        occupant.presence = _shown_children(stanza)
        room.add(occupant)
        presence = self.presence_for_others(room, occupant)
        for viewer in list(room.occupants.values()):
            if viewer is not occupant:
                self.send(viewer, presence(viewer))
        self.welcome(room, occupant, session, muc, created, rewritten)

    def welcome(self, room, occupant, session, muc, created, rewritten):
        """What one newly joined resource is sent: every occupant's presence (its own last, with its
        status codes), the history it asked for, then the subject."""
        sees = self.sees_jid(room, occupant)
        for other in list(room.occupants.values()):
            if other is not occupant:
                self.send_to(session, self.shown_presence(room, other, occupant, sees))
        codes = []
        if room.config.whois == "anyone":
            codes.append(100)
        if created:
            codes.append(201)
        if rewritten:
            codes.append(210)
        if self.archived(room):
            codes.append(170)
        self.send_to(session, self.presence_of(room, occupant, occupant, codes))
        self.send_history(room, session, _child(muc, NS_MUC, "history") if muc is not None else None)
        subject = make("message", to=session, sender=f"{room.jid}/{room.subject_by}" if room.subject_by
                       else room.jid, type="groupchat")
        subject.addElement("subject", content=room.subject)
        self.ctx.route(subject)

    def _admission(self, room, affiliation, bare, nick, muc, same_user):
        """None, or the (condition, text) that keeps ``bare`` out (XEP-0045 section 7.2); ``same_user``:
        another of its resources is in the room under ``nick`` already."""
        if affiliation == "outcast":
            return "forbidden", "you are banned from this room"
        if room.config.members_only and affiliation == "none":
            return "registration-required", "this room is for its members"
        refusal = self._nick_refusal(room, nick, bare)
        if refusal is not None:
            return refusal
        if room.config.password and affiliation not in ("owner", "admin"):
            given = _child(muc, NS_MUC, "password") if muc is not None else None
            if given is None or str(given) != room.config.password:
                return "not-authorized", "a password is needed"
        if len(room.occupants) >= min(room.config.max_users, self.config.max_occupants_per_room) \
                and affiliation not in ("owner", "admin") and not same_user:
            return "service-unavailable", "the room is full"
        if same_user and len(room.occupants[nick].jids) >= MAX_SESSIONS_PER_OCCUPANT:
            return "resource-constraint", f"at most {MAX_SESSIONS_PER_OCCUPANT} of your resources share a nickname"
        return None

    @staticmethod
    def _nick_refusal(room, nick, bare):
        """None, or the conflict that keeps ``bare`` from ``nick``: another user has it now or registered it."""
        holder = room.nick_holder(nick)
        if holder is not None and holder != bare:
            return "conflict", "that nickname is in use"
        owner = room.nick_owners.get(nick)
        if owner is not None and owner != bare:
            return "conflict", "that nickname is registered to another user"
        return None

    def send_history(self, room, session, request):
        """The messages a newcomer asked for by <history/>, within the room's history length."""
        limits = {}
        if request is not None:
            for name, attribute in (("maxstanzas", "max_stanzas"), ("maxchars", "max_chars"),
                                    ("seconds", "seconds")):
                value = request.getAttribute(name)
                if value is not None and value.isascii() and value.isdigit():
                    limits[attribute] = int(value)
            since = _parse_stamp(request.getAttribute("since"))
            if since is not None:
                limits["since"] = since
        for entry in room.history.select(self.clock.seconds(), **limits):
            message = parse_element(entry.xml)
            message["to"] = session
            stamp = datetime.datetime.fromtimestamp(entry.time, datetime.timezone.utc)
            message.addChild(delay_element(stamp, room.jid))
            self.ctx.route(message)

    def change_nick(self, event, room, occupant):
        """Every resource of the occupant changes nickname together (303)."""
        new = event.to.resource
        refusal = self._nick_refusal(room, new, occupant.bare)
        if room.nick_holder(new) is not None or refusal is not None:
            self._error(event.stanza, *(refusal or ("conflict", "that nickname is in use")))
            return
        self.broadcast_presence(room, occupant, codes=(303,), unavailable=True, nick=new)
        room.rename(occupant, new)
        occupant.presence = _shown_children(event.stanza)
        self.broadcast_presence(room, occupant)

    def leave(self, room, occupant, session, codes=()):
        """The resource ``session`` leaves; its occupant leaves with its last resource."""
        if len(occupant.jids) == 1:
            self.remove_occupant(room, occupant, codes=codes)
            return
        self.send_to(session, self.presence_of(room, occupant, occupant, codes, unavailable=True))
        room.remove_session(occupant, session)

    def remove_occupant(self, room, occupant, codes=(), actor=None, reason=None):
        """``occupant`` leaves (or is made to leave, ``codes`` saying why); a temporary room left empty ends."""
        extra = []
        if actor is not None:
            extra.append(domish.Element((NS_USER, "actor"), attribs={"nick": actor}))
        if reason is not None:
            extra.append(domish.Element((NS_USER, "reason")))
            extra[-1].addContent(reason)
        others = self.presence_for_others(room, occupant, codes, unavailable=True, item_extra=extra)
        for viewer in list(room.occupants.values()):
            if viewer is occupant:
                presence = self.presence_of(room, occupant, viewer, codes, unavailable=True, item_extra=extra)
            else:
                presence = others(viewer)
            self.send(viewer, presence)
        room.remove(occupant)
        if not room.occupants and (not room.config.persistent or room.locked):
            self._end_room(room)

    # -- messages ------------------------------------------------------------------------

    def on_room_message(self, event):
        stanza, sender = event.stanza, event.sender
        room = self._room_of(event)
        kind = stanza.getAttribute("type")
        if kind == "error" or sender is None:
            if room is not None and sender is not None and sender.full() in room.by_jid:
                self.leave(room, room.by_jid[sender.full()], sender.full(), codes=(333,))
            return True
        if room is None:
            self._error(stanza, "item-not-found")
            return True
        occupant = room.by_jid.get(sender.full())
        user_x = _child(stanza, NS_USER, "x")
        if kind != "groupchat" and user_x is not None:
            self.invitation(room, occupant, sender, stanza, user_x)
            return True
        form = _child(stanza, NS_DATA, "x")
        if kind != "groupchat" and form is not None and form_type(form) == NS_REQUEST:
            self.voice_request(room, occupant, stanza, form)
            return True
        if occupant is None:
            self._error(stanza, "not-acceptable", "only occupants may send messages to the room")
            return True
        if kind != "groupchat":
            self._error(stanza, "bad-request", "send groupchat messages to the room")
            return True
        if occupant.role == "visitor":
            self._error(stanza, "forbidden", "visitors have no voice in this room")
            return True
        subject = _child(stanza, stanza.uri, "subject") or _child(stanza, None, "subject")
        body = _child(stanza, stanza.uri, "body") or _child(stanza, None, "body")
        if subject is not None and body is None:
            if occupant.role != "moderator" and not room.config.change_subject:
                self._error(stanza, "forbidden", "only moderators change the subject")
                return True
            text = str(subject)
            if len(text.encode("utf-8")) > self.config.max_history_bytes_per_room // 4:
                self._error(stanza, "not-acceptable", "the subject is too long")
                return True
            room.subject, room.subject_by = text, occupant.nick
            self._save(room)
        self.broadcast_message(room, occupant, stanza, store=body is not None and subject is None)
        return True

    def broadcast_message(self, room, occupant, stanza, store):
        sender = f"{room.jid}/{occupant.nick}"
        message = make("message", sender=sender, type="groupchat", id=stanza.getAttribute("id"))
        for child in stanza.elements():
            if child.uri not in (NS_OCCUPANT_ID, NS_SID, NS_USER):
                message.addChild(child)
        message.addElement((NS_OCCUPANT_ID, "occupant-id"))["id"] = occupant.occupant_id
        micros = int(self.clock.seconds() * 1e6)
        record_id = new_id(micros)
        stanza_id = message.addElement((NS_SID, "stanza-id"))
        stanza_id["by"], stanza_id["id"] = room.jid, record_id
        if store and self._history_length(room) > 0:
            self.keep(room, message)
        if store and self.archived(room):
            self.ctx.storage.archive_append(room.domain, room.node, ArchiveRecord(
                record_id, micros, room.jid, occupant.nick, "in", serialize(message)))
        for viewer in list(room.occupants.values()):
            for jid in viewer.jids:
                self.ctx.route(readdress(message, jid, sender))
        body = _child(stanza, stanza.uri, "body") or _child(stanza, None, "body")
        if store and body is not None:
            self.notify_mentions(room, occupant, str(body))

    def notify_mentions(self, room, speaker, text):
        """Members of the room who are away (users of this server with no session of priority 0 or more,
        not in the room) and whose nickname ``text`` names are told through the notification path of
        their host (``muc/mention``: the SMS and email gateways, with their caps and quiet windows)."""
        words = {word.casefold() for word in WORDS.findall(text)}
        folded = text.casefold()
        present = {occupant.bare for occupant in room.occupants.values()}
        for bare, affiliation in list(room.affiliations.items()):
            if affiliation == "outcast" or bare in present:
                continue
            user, _, domain = bare.partition("@")
            host = self.ctx.local_host(domain)
            if host is None or not user:
                continue
            nick = room.nicks.get(bare, user).casefold()
            if not (nick in words or (not WORDS.fullmatch(nick) and _names(folded, nick))):
                continue
            if any(session.priority >= 0 for session in self.ctx.sessions.available(bare)):
                continue
            notice = make("message", to=bare, sender=f"{room.jid}/{speaker.nick}", type="groupchat")
            notice.addElement("body", content=f"{speaker.nick}: {text}")
            self.ctx.fire_local(host, MENTION_EVENT, (host, user, notice))

    def keep(self, room, message):
        entry = HistoryEntry(self.clock.seconds(), serialize(message))
        if entry.size > room.history.max_bytes:
            return
        if room.config.persistent:
            entry.stored = self.history_store.append(room.domain, room.node, {"time": entry.time, "xml": entry.xml})
        self._forget_entries(room, room.history.add(entry, self._history_length(room)))

    def voice_request(self, room, occupant, stanza, form):
        """XEP-0045 sections 7.13 and 8.6: a visitor asks for voice and the moderators are sent the
        muc#request form; a moderator's submitted form with muc#request_allow true gives it voice."""
        if occupant is None:
            self._error(stanza, "not-acceptable", "only occupants ask for voice")
            return
        try:
            decision = voice_decision(form)
        except FormError as error:
            self._error(stanza, "bad-request", str(error))
            return
        if decision is not None:
            nick, allowed = decision
            if occupant.role != "moderator":
                self._error(stanza, "forbidden", "only moderators answer voice requests")
                return
            target = room.occupants.get(nick)
            if target is None:
                self._error(stanza, "item-not-found", "nobody has that nickname here")
            elif allowed and target.role == "visitor":
                self._apply_role(room, target, "participant", None, occupant.nick)
            return
        if occupant.role != "visitor":
            self._error(stanza, "bad-request", "you have voice already")
            return
        now = self.clock.seconds()
        if occupant.voice_requested is not None and now - occupant.voice_requested < VOICE_REQUEST_INTERVAL_SECONDS:
            self._error(stanza, "resource-constraint", "your last voice request is recent")
            return
        occupant.voice_requested = now
        for moderator in [o for o in room.occupants.values() if o.role == "moderator"]:
            message = make("message", sender=room.jid)
            message.addChild(voice_request_form(occupant.nick, occupant.jid))
            self.send(moderator, message)

    def invitation(self, room, occupant, sender, stanza, user_x):
        """A mediated invitation (XEP-0045 section 7.8.2) or its decline."""
        decline = _child(user_x, NS_USER, "decline")
        if decline is not None:
            to = parse_jid(decline.getAttribute("to") or "")
            if to is None:
                self._error(stanza, "jid-malformed")
                return
            message = make("message", to=to.userhost(), sender=room.jid)
            forwarded = message.addElement((NS_USER, "x")).addElement("decline")
            forwarded["from"] = sender.userhost()
            reason = _reason_of(decline)
            if reason:
                forwarded.addElement("reason", content=reason)
            self.ctx.route(message)
            return
        invite = _child(user_x, NS_USER, "invite")
        if invite is None:
            self._error(stanza, "bad-request")
            return
        if occupant is None:
            self._error(stanza, "not-acceptable", "only occupants may invite")
            return
        affiliation = self.affiliation(room, sender.userhost())
        if not room.config.allow_invites and affiliation not in ("owner", "admin"):
            self._error(stanza, "forbidden", "only the room's admins invite here")
            return
        invitee = parse_jid(invite.getAttribute("to") or "")
        if invitee is None:
            self._error(stanza, "jid-malformed")
            return
        invitee_bare = invitee.userhost()
        if room.config.members_only and affiliation in ("owner", "admin") \
                and room.affiliation(invitee_bare) == "none":
            if len(room.affiliations) >= self.config.max_affiliations_per_room:
                self._error(stanza, "resource-constraint", "the room has as many affiliations as it may")
                return
            room.affiliations[invitee_bare] = "member"
            self._save(room)
        message = make("message", to=invitee.full(), sender=room.jid)
        x = message.addElement((NS_USER, "x"))
        forwarded = x.addElement("invite")
        forwarded["from"] = sender.userhost()
        reason = _reason_of(invite)
        if reason:
            forwarded.addElement("reason", content=reason)
        if room.config.password:
            x.addElement("password", content=room.config.password)
        self.ctx.route(message)

    def on_private_message(self, event):
        """A message to ``room/nick``: a private message between occupants."""
        stanza, sender = event.stanza, event.sender
        room = self._room_of(event)
        if sender is None:
            return True
        occupant = room.by_jid.get(sender.full()) if room is not None else None
        if stanza.getAttribute("type") == "error":
            if occupant is not None:
                self.leave(room, occupant, sender.full(), codes=(333,))
            return True
        if occupant is None:
            self._error(stanza, "not-acceptable", "only occupants may send private messages")
            return True
        if stanza.getAttribute("type") == "groupchat":
            self._error(stanza, "bad-request", "a private message is not of type groupchat")
            return True
        policy = room.config.allow_pm
        if policy == "none" or (policy == "moderators" and occupant.role != "moderator") or (
                policy == "participants" and occupant.role == "visitor"):
            self._error(stanza, "forbidden", "private messages are not allowed here")
            return True
        target = room.occupants.get(event.to.resource)
        if target is None:
            self._error(stanza, "item-not-found", "nobody has that nickname here")
            return True
        sent = readdress(stanza, target.jid, f"{room.jid}/{occupant.nick}")
        sent.children = [child for child in sent.children
                         if not isinstance(child, domish.Element) or child.uri not in (NS_USER, NS_OCCUPANT_ID)]
        sent.addElement((NS_USER, "x"))
        sent.addElement((NS_OCCUPANT_ID, "occupant-id"))["id"] = occupant.occupant_id
        self.send(target, sent)
        return True

    # -- IQs --------------------------------------------------------------------------------

    def on_occupant_iq(self, event):
        """An IQ get or set to ``room/nick``, whatever its payload (the events of IQs are named after it)."""
        stanza = event.stanza
        if stanza.name != "iq" or stanza.getAttribute("type") not in ("get", "set") or event.to.resource is None \
                or event.to.user is None:
            return False
        return self._forward_when_loaded(event)

    def forward_iq(self, event):
        """An occupant's IQ to another occupant goes to its real JID under an id of the room's (vCard
        requests to its bare JID); XEP-0410: a ping to one's own occupant JID is answered here."""
        stanza, sender = event.stanza, event.sender
        room = self._room_of(event)
        asker = room.by_jid.get(sender.full()) if room is not None and sender is not None else None
        if asker is None:
            self._error(stanza, "not-acceptable", "only occupants send IQs to occupants")
            return True
        target = room.occupants.get(event.to.resource)
        payload = first_child(stanza)
        if target is asker and payload is not None and (payload.uri, payload.name) == (NS_PING, "ping"):
            self.ctx.route(result_reply(stanza))
            return True
        if target is None:
            self._error(stanza, "item-not-found", "nobody has that nickname here")
            return True
        answerer = target.bare if payload is not None and payload.uri == NS_VCARD else target.jid
        room_id = self.forwarded.add(Forwarded(sender.full(), stanza.getAttribute("id"), event.to.full(), answerer))
        if room_id is None:
            self._error(stanza, "resource-constraint", "too many IQs await answers")
            return True
        forwarded = readdress(stanza, answerer, f"{room.jid}/{asker.nick}")
        forwarded["id"] = room_id
        self.ctx.route(forwarded)
        return True

    def on_forwarded_answer(self, event):
        """The answer to a forwarded IQ goes back to its asker, from the occupant JID it asked, under its id;
        an answer from anyone but the JID the IQ went to is dropped."""
        stanza, sender = event.stanza, event.sender
        forwarded = self.forwarded.take(stanza.getAttribute("id") or "", sender.full() if sender else None)
        if forwarded is not None:
            answer = readdress(stanza, forwarded.asker, forwarded.occupant_jid)
            if forwarded.asker_id is None:
                del answer.attributes["id"]
            else:
                answer["id"] = forwarded.asker_id
            self.ctx.route(answer)
        return True

    def _forwarded_timeout(self, forwarded):
        asked = make("iq", to=forwarded.occupant_jid, sender=forwarded.asker, type="get", id=forwarded.asker_id)
        self._error(asked, "remote-server-timeout", "the occupant did not answer")

    def _visible_room(self, event):
        """The room an IQ is about, or None after answering item-not-found (a locked room is the owner's)."""
        room = self._room_of(event)
        if room is None or (room.locked and (event.sender is None or
                                             self.affiliation(room, event.sender.userhost()) != "owner")):
            self._error(event.stanza, "item-not-found")
            return None
        return room

    def on_room_info(self, event):
        room = self._visible_room(event)
        if room is None:
            return True
        node = event.stanza.query.getAttribute("node")
        if node == NODE_RESERVED_NICK:
            self.ctx.route(self.reserved_nick_info(room, event))
            return True
        if node:
            self._error(event.stanza, "item-not-found")
            return True
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_DISCO_INFO, "query"))
        identity = query.addElement("identity")
        identity["category"], identity["type"] = "conference", "text"
        identity["name"] = room.config.name or room.node
        features = {NS_DISCO_INFO, NS_DISCO_ITEMS, NS_OCCUPANT_ID, NS_PING, NS_MODERATE, NS_RETRACT,
                    NS_IQ_REGISTER, *room.features()}
        if self.archived(room):
            features.add(NS_MAM)
        for feature in sorted(features):
            query.addElement("feature")["var"] = feature
        query.addChild(room_info_form(room.config, len(room.occupants)))
        self.ctx.route(reply)
        return True

    def reserved_nick_info(self, room, event):
        """XEP-0045 section 7.12: the asker's registered nickname as an identity, or an empty result."""
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_DISCO_INFO, "query"))
        query["node"] = NODE_RESERVED_NICK
        nick = room.nicks.get(event.sender.userhost()) if event.sender is not None else None
        if nick is not None:
            identity = query.addElement("identity")
            identity["category"], identity["type"], identity["name"] = "conference", "text", nick
        return reply

    def on_register_get(self, event):
        """XEP-0045 section 7.10: the muc#register form, or <registered/> with the nickname kept."""
        room = self._visible_room(event)
        if room is None or event.sender is None:
            return True
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_IQ_REGISTER, "query"))
        nick = room.nicks.get(event.sender.userhost())
        if nick is not None:
            query.addElement("registered")
            query.addElement("username", content=nick)
        else:
            query.addElement("instructions", content="Fill in the form to keep a nickname in this room.")
            query.addChild(register_form())
        self.ctx.route(reply)
        return True

    def on_register_set(self, event):
        """A submitted muc#register form keeps its nickname for the sender's bare JID, making a user of an
        open room a member; <remove/> gives the nickname up (the affiliation stays)."""
        stanza = event.stanza
        room = self._visible_room(event)
        if room is None or event.sender is None:
            return True
        bare = event.sender.userhost()
        query = stanza.query
        form = _child(query, NS_DATA, "x")
        if _child(query, NS_IQ_REGISTER, "remove") is not None:
            room.unregister(bare)
            self._save(room)
        elif form is not None and form.getAttribute("type") == "cancel":
            pass
        elif form is not None and form.getAttribute("type") in ("submit", None):
            refusal = self.register(room, bare, form)
            if refusal is not None:
                self._error(stanza, *refusal)
                return True
        else:
            self._error(stanza, "bad-request", "submit the muc#register form, or <remove/>")
            return True
        self.ctx.route(result_reply(stanza))
        return True

    def register(self, room, bare, form):
        """None when ``bare`` now has the nickname of ``form`` in ``room``, or the (condition, text) why not."""
        try:
            nick = registered_nick(form)
        except FormError as error:
            return "bad-request", str(error)
        occupant_jid = parse_jid(f"{room.jid}/{nick}")
        if occupant_jid is None or occupant_jid.resource != nick:
            return "jid-malformed", "that nickname cannot be an occupant's address"
        affiliation = self.affiliation(room, bare)
        if affiliation == "outcast":
            return "forbidden", "you are banned from this room"
        if room.config.members_only and affiliation == "none":
            return "registration-required", "only members register in this room"
        refusal = self._nick_refusal(room, nick, bare)
        if refusal is not None:
            return refusal
        if room.affiliation(bare) == "none":
            if len(room.affiliations) >= self.config.max_affiliations_per_room:
                return "resource-constraint", "the room has as many affiliations as it may"
            room.register(bare, nick)
            self._apply_affiliation(room, bare, "member", None, None)
        else:
            room.register(bare, nick)
        self._save(room)
        return None

    def on_room_items(self, event):
        room = self._visible_room(event)
        if room is not None:
            reply = result_reply(event.stanza)
            reply.addElement((NS_DISCO_ITEMS, "query"))
            self.ctx.route(reply)
        return True

    def on_archive_query(self, event):
        """XEP-0313 on the room JID: its occupants, or its members when it is members-only, page its archive."""
        stanza, sender = event.stanza, event.sender
        room = self._visible_room(event)
        if room is None:
            return True
        affiliation = self.affiliation(room, sender.userhost())
        allowed = sender.full() in room.by_jid or affiliation in ("owner", "admin", "member") or (
            not room.config.members_only and affiliation != "outcast")
        if not allowed or not self.archived(room):
            self._error(stanza, "forbidden" if self.archived(room) else "service-unavailable")
            return True
        try:
            query, flip = parse_query(stanza.query, self.mam)
        except QueryError as error:
            self._error(stanza, error.condition, error.text)
            return True
        queryid = stanza.query.getAttribute("queryid")
        d = self.ctx.storage.archive_query(room.domain, room.node, query)

        def answer(page):
            records = page.records[::-1] if flip else page.records
            for record in records:
                self.ctx.route(result_message(sender.full(), room.jid, queryid, record))
            self.ctx.route(fin_reply(stanza, page, records))

        def failed(failure):
            if failure.check(ArchiveItemNotFound):
                self._error(stanza, "item-not-found", "no such message in the room's archive")
            else:
                log.failure("MUC: archive query of {jid} failed", failure, jid=room.jid)
                self._error(stanza, "internal-server-error")

        d.addCallbacks(answer, failed)
        return True

    def on_moderate(self, event):
        """XEP-0425: a moderator retracts a room message by its stanza id; occupants are sent the
        retraction, the history forgets the message and the archive keeps a tombstone in its place."""
        stanza = event.stanza
        room = self._visible_room(event)
        if room is None:
            return True
        moderator = room.by_jid.get(event.sender.full()) if event.sender is not None else None
        if moderator is None or moderator.role != "moderator":
            self._error(stanza, "forbidden", "only moderators retract messages")
            return True
        moderate = stanza.moderate
        record_id = moderate.getAttribute("id")
        if not record_id or _child(moderate, NS_RETRACT, "retract") is None:
            self._error(stanza, "bad-request", "moderate a message by its stanza id, with <retract/>")
            return True
        reason = _reason_of(moderate)
        in_history = [entry for entry in room.history.entries if _stanza_id_of(entry.xml) == record_id]
        found = defer.succeed(None)
        if self.archived(room):
            found = self.ctx.storage.archive_query(room.domain, room.node, ArchiveQuery(ids=(record_id,), limit=1))
            found.addCallback(lambda page: page.records[0] if page.records else None)
            found.addErrback(_none_when_not_found)

        def retract(record):
            if record is None and not in_history:
                self._error(stanza, "item-not-found", "the room has no message with that id")
                return None
            if record is not None:
                tombstone = _tombstone(record.stanza, _moderated(room, moderator), reason, self.clock.seconds())
                replaced = self.ctx.storage.archive_replace(room.domain, room.node, record_id, tombstone)
                replaced.addErrback(lambda failure: log.failure("MUC: tombstone not stored in {jid}", failure,
                                                                jid=room.jid))
            self._forget_entries(room, room.history.remove(in_history))
            self.broadcast_retraction(room, record_id, _moderated(room, moderator), reason)
            self.ctx.route(result_reply(stanza))
            return None

        def failed(failure):
            log.failure("MUC: moderation in {jid} failed", failure, jid=room.jid)
            self._error(stanza, "internal-server-error")

        found.addCallback(retract).addErrback(failed)
        return True

    def broadcast_retraction(self, room, record_id, moderated, reason):
        """Every occupant is told that the message ``record_id`` is retracted (XEP-0424 with XEP-0425)."""
        message = make("message", sender=room.jid, type="groupchat", id=new_id(int(self.clock.seconds() * 1e6)))
        retract = message.addElement((NS_RETRACT, "retract"))
        retract["id"] = record_id
        retract.addChild(moderated)
        if reason:
            retract.addElement("reason", content=reason)
        fallback = message.addElement((NS_FALLBACK, "fallback"))
        fallback["for"] = NS_RETRACT
        message.addElement("body", content="A moderator retracted a message, which your client cannot show.")
        message.addElement((NS_HINTS, "store"))
        for viewer in list(room.occupants.values()):
            self.send(viewer, message)

    def _owner(self, event):
        """The room of an owner's IQ, or None after answering the error."""
        room = self._room_of(event)
        if room is None:
            self._error(event.stanza, "item-not-found")
            return None
        if event.sender is None or self.affiliation(room, event.sender.userhost()) != "owner":
            self._error(event.stanza, "forbidden", "only the room's owners may do this")
            return None
        return room

    def on_owner_get(self, event):
        room = self._owner(event)
        if room is not None:
            reply = result_reply(event.stanza)
            reply.addElement((NS_OWNER, "query")).addChild(
                config_form(room.config, self.config.max_occupants_per_room, self.config.max_history_length))
            self.ctx.route(reply)
        return True

    def on_owner_set(self, event):
        room = self._owner(event)
        if room is None:
            return True
        query = event.stanza.query
        destroy = _child(query, NS_OWNER, "destroy")
        form = _child(query, NS_DATA, "x")
        if destroy is not None:
            self.destroy(room, destroy)
        elif form is not None and form.getAttribute("type") == "cancel":
            if room.locked:
                self.destroy(room, None)
        elif form is not None and form.getAttribute("type") == "submit":
            try:
                config = apply_form(room.config, form, self.config.max_occupants_per_room,
                                    self.config.max_history_length)
            except FormError as error:
                self._error(event.stanza, "not-acceptable", str(error))
                return True
            self.configure(room, config)
        else:
            self._error(event.stanza, "bad-request")
            return True
        self.ctx.route(result_reply(event.stanza))
        return True

    def configure(self, room, config):
        was_locked, was_persistent, old_whois = room.locked, room.config.persistent, room.config.whois
        room.config = config
        room.locked = False
        self._forget_entries(room, room.history.trim(self._history_length(room)))
        if config.persistent:
            self._store_history(room)
            self._save(room)
        elif was_persistent:
            self._unstore(room)
        self._list(room)
        if not was_locked:
            codes = [104]
            if old_whois != config.whois:
                codes.append(172 if config.whois == "anyone" else 173)
            for viewer in room.occupants.values():
                notice = make("message", sender=room.jid, type="groupchat")
                _status(notice.addElement((NS_USER, "x")), *codes)
                self.send(viewer, notice)
        if not room.occupants and not config.persistent:
            self._end_room(room)

    def destroy(self, room, destroy):
        """The room ends: every occupant is told (with the owner's reason and alternative room)."""
        for occupant in list(room.occupants.values()):
            presence = make("presence", sender=f"{room.jid}/{occupant.nick}", type="unavailable")
            x = presence.addElement((NS_USER, "x"))
            item = x.addElement("item")
            item["affiliation"], item["role"] = "none", "none"
            told = x.addElement("destroy")
            if destroy is not None:
                alternative = parse_jid(destroy.getAttribute("jid") or "")
                if alternative is not None:
                    told["jid"] = alternative.full()
                reason = _reason_of(destroy)
                if reason:
                    told.addElement("reason", content=reason)
            self.send(occupant, presence)
        room.occupants.clear()
        room.by_jid.clear()
        self._end_room(room)

    def on_admin_get(self, event):
        room = self._room_of(event)
        if room is None:
            self._error(event.stanza, "item-not-found")
            return True
        items = list(event.stanza.query.elements(NS_ADMIN, "item"))
        actor_bare = event.sender.userhost() if event.sender is not None else ""
        actor = room.by_jid.get(event.sender.full()) if event.sender is not None else None
        if len(items) != 1:
            self._error(event.stanza, "bad-request", "ask for one affiliation or one role")
            return True
        wanted_affiliation, wanted_role = items[0].getAttribute("affiliation"), items[0].getAttribute("role")
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_ADMIN, "query"))
        if wanted_affiliation in AFFILIATIONS and wanted_affiliation != "none":
            if self.affiliation(room, actor_bare) not in ("owner", "admin"):
                self._error(event.stanza, "forbidden")
                return True
            for bare, affiliation in sorted(room.affiliations.items()):
                if affiliation == wanted_affiliation:
                    item = query.addElement("item")
                    item["jid"], item["affiliation"] = bare, affiliation
        elif wanted_role in ("moderator", "participant", "visitor"):
            if actor is None or actor.role != "moderator":
                self._error(event.stanza, "forbidden")
                return True
            for occupant in room.occupants.values():
                if occupant.role == wanted_role:
                    item = query.addElement("item")
                    item["nick"], item["role"], item["jid"] = occupant.nick, occupant.role, occupant.jid
                    item["affiliation"] = self.affiliation(room, occupant.bare)
        else:
            self._error(event.stanza, "bad-request")
            return True
        self.ctx.route(reply)
        return True

    def on_admin_set(self, event):
        """Roles by nick (kick, voice, moderator) and affiliations by JID (ban, member, admin, owner)."""
        stanza = event.stanza
        room = self._room_of(event)
        if room is None or event.sender is None:
            self._error(stanza, "item-not-found")
            return True
        items = list(stanza.query.elements(NS_ADMIN, "item"))
        if not items or len(items) > MAX_ITEMS_PER_ADMIN_IQ:
            self._error(stanza, "bad-request", f"from 1 to {MAX_ITEMS_PER_ADMIN_IQ} items")
            return True
        actor_bare = event.sender.userhost()
        actor = room.by_jid.get(event.sender.full())
        actor_affiliation = self.affiliation(room, actor_bare)
        changes = []
        for item in items:
            checked = self._check_admin_item(room, item, actor, actor_affiliation)
            if checked[0] == "error":
                self._error(stanza, *checked[1:])
                return True
            changes.append(checked)
        affiliations = dict(room.affiliations)
        for change in changes:
            if change[0] == "affiliation":
                _, bare, value, _ = change
                if value == "none":
                    affiliations.pop(bare, None)
                else:
                    affiliations[bare] = value
        if not [bare for bare, value in affiliations.items() if value == "owner"]:
            self._error(stanza, "conflict", "a room keeps at least one owner")
            return True
        if len(affiliations) > self.config.max_affiliations_per_room:
            self._error(stanza, "not-acceptable", "the room would hold more affiliations than it may")
            return True
        actor_nick = actor.nick if actor is not None else None
        for change in changes:
            if change[0] == "role":
                self._apply_role(room, *change[1:], actor_nick)
            else:
                self._apply_affiliation(room, *change[1:], actor_nick)
        self._save(room)
        self.ctx.route(result_reply(stanza))
        return True

    def _check_admin_item(self, room, item, actor, actor_affiliation):
        """("role", occupant, role, reason), ("affiliation", bare, value, reason) or ("error", condition, text)."""
        reason = _reason_of(item)
        role, affiliation = item.getAttribute("role"), item.getAttribute("affiliation")
        if role is not None and affiliation is None:
            if actor is None or actor.role != "moderator":
                return "error", "forbidden", "only moderators change roles"
            target = room.occupants.get(item.getAttribute("nick") or "")
            if target is None:
                return "error", "item-not-found", "nobody has that nickname here"
            if role not in ("moderator", "participant", "visitor", "none"):
                return "error", "bad-request", f"no role {role!r}"
            target_affiliation = self.affiliation(room, target.bare)
            if target_affiliation in ("owner", "admin") and RANK[target_affiliation] >= RANK[actor_affiliation]:
                return "error", "not-allowed", "that occupant's affiliation is above yours"
            if role == "moderator" and actor_affiliation not in ("owner", "admin"):
                return "error", "forbidden", "only admins make moderators"
            return "role", target, role, reason
        if affiliation is not None and role is None:
            jid = parse_jid(item.getAttribute("jid") or "")
            if jid is None or affiliation not in AFFILIATIONS:
                return "error", "bad-request", "an affiliation item needs a jid and a known affiliation"
            bare = jid.userhost()
            if actor_affiliation not in ("owner", "admin"):
                return "error", "forbidden", "only admins and owners change affiliations"
            current = room.affiliation(bare)
            if actor_affiliation != "owner" and (affiliation in ("owner", "admin") or current in ("owner", "admin")):
                return "error", "not-allowed", "only owners grant or take owner and admin"
            return "affiliation", bare, affiliation, reason
        return "error", "bad-request", "an item changes a role (with nick) or an affiliation (with jid)"

    def _apply_role(self, room, occupant, role, reason, actor_nick):
        if occupant.nick not in room.occupants:
            return
        if role == "none":
            self.remove_occupant(room, occupant, codes=(307,), actor=actor_nick, reason=reason)
            return
        occupant.role = role
        self.broadcast_presence(room, occupant)

    def _apply_affiliation(self, room, bare, affiliation, reason, actor_nick):
        if affiliation in ("none", "outcast"):
            room.unregister(bare)  # a registered nickname belongs to a member (or more)
        if affiliation == "none":
            room.affiliations.pop(bare, None)
        else:
            room.affiliations[bare] = affiliation
        for occupant in [o for o in room.occupants.values() if o.bare == bare]:
            if affiliation == "outcast":
                self.remove_occupant(room, occupant, codes=(301,), actor=actor_nick, reason=reason)
            elif room.config.members_only and affiliation == "none":
                self.remove_occupant(room, occupant, codes=(321,), actor=actor_nick, reason=reason)
            else:
                occupant.role = room.default_role(self.affiliation(room, bare))
                self.broadcast_presence(room, occupant)


def _names(text, nick):
    """Whether ``text`` holds ``nick`` (of several words or signs) between word boundaries."""
    return re.search(r"(?<!\w)" + re.escape(nick) + r"(?!\w)", text) is not None


def _shown_children(presence):
    """What other occupants see of a presence: show, status, priority, caps (not its MUC payloads)."""
    return [child for child in presence.elements()
            if child.uri not in (NS_MUC, NS_USER, NS_OCCUPANT_ID)]


def _none_when_not_found(failure):
    failure.trap(ArchiveItemNotFound)
    return None


def _moderated(room, moderator):
    """The <moderated/> of a retraction and of its tombstone: who retracted the message."""
    moderated = domish.Element((NS_MODERATE, "moderated"))
    moderated["by"] = f"{room.jid}/{moderator.nick}"
    moderated.addElement((NS_OCCUPANT_ID, "occupant-id"))["id"] = moderator.occupant_id
    return moderated


def _tombstone(text, moderated, reason, now):
    """What the archive keeps of a retracted message: its addresses and ids, and who retracted it when."""
    original = parse_element(text)
    tombstone = make("message", sender=original.getAttribute("from"), type="groupchat",
                     id=original.getAttribute("id"))
    for child in original.elements():
        if child.uri in (NS_OCCUPANT_ID, NS_SID):
            tombstone.addChild(child)
    retracted = tombstone.addElement((NS_RETRACT, "retracted"))
    retracted["stamp"] = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    retracted.addChild(moderated)
    if reason:
        retracted.addElement("reason", content=reason)
    return serialize(tombstone)


def _stanza_id_of(text):
    """The room's stanza id of a message kept in the history (serialised), or None."""
    found = next(parse_element(text).elements(NS_SID, "stanza-id"), None)
    return found.getAttribute("id") if found is not None else None


def _stored_entry(item, key):
    return HistoryEntry(item["time"], item["xml"], defer.succeed(key))


def _parse_stamp(text):
    """Seconds since the epoch of a XEP-0082 date-time, or None."""
    if not text:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()

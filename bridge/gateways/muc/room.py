"""A room's state (XEP-0045): configuration, affiliations, occupants with roles, subject and history.

No I/O here: the service (``service.py``) asks a room who may enter, who
may speak, what a newcomer is sent, and does the sending and storing.
"""

import collections

from bridge.gateways.muc.forms import RoomConfig

AFFILIATIONS = ("owner", "admin", "member", "none", "outcast")
ROLES = ("moderator", "participant", "visitor", "none")
RANK = {"owner": 4, "admin": 3, "member": 2, "none": 1, "outcast": 0}


class Occupant:
    """One real bare JID in a room under a nickname, through one or more of its resources (sessions)."""

    __slots__ = ("nick", "jids", "bare", "role", "presence", "occupant_id", "voice_requested", "shown")

    def __init__(self, nick, jid, role, occupant_id):
        self.nick = nick
        self.jids = [jid]  # the real full JIDs that joined under this nick, the first joined first
        self.bare = jid.partition("/")[0]
        self.role = role
        self.presence = []  # the children of its last presence that occupants are shown (show, status...)
        self.occupant_id = occupant_id
        self.voice_requested = None  # when it last asked moderators for voice (seconds), or None
        self.shown = {}  # whether real JIDs are seen -> (what it showed, presence children, presence): see shown_presence

    @property
    def jid(self):
        """The real JID shown to those who may see it, and where IQs to the occupant go: its first session."""
        return self.jids[0]


class HistoryEntry:
    __slots__ = ("time", "xml", "size", "stored")

    def __init__(self, time, xml, stored=None):
        self.time = time  # seconds since the epoch
        self.xml = xml  # the message as occupants got it, without 'to'
        self.size = len(xml.encode("utf-8"))
        self.stored = stored  # a Deferred of its id in storage (persistent rooms), or None


class History:
    """The last messages of a room, bounded in count (the room's history length) and in bytes."""

    def __init__(self, max_bytes):
        self.entries = collections.deque()
        self.bytes = 0
        self.max_bytes = max_bytes

    def add(self, entry, max_count):
        """Keep ``entry``; the entries it pushed out (to be removed from storage too)."""
        self.entries.append(entry)
        self.bytes += entry.size
        return self.trim(max_count)

    def remove(self, entries):
        """Forget ``entries`` (a moderated message); the entries removed."""
        removed = [entry for entry in entries if entry in self.entries]
        for entry in removed:
            self.entries.remove(entry)
            self.bytes -= entry.size
        return removed

    def trim(self, max_count):
        dropped = []
        while self.entries and (len(self.entries) > max_count or self.bytes > self.max_bytes):
            entry = self.entries.popleft()
            self.bytes -= entry.size
            dropped.append(entry)
        return dropped

    def select(self, now, max_stanzas=None, max_chars=None, seconds=None, since=None):
        """The entries a newcomer's <history/> asks for, oldest first (every limit applies)."""
        chosen = []
        chars = 0
        for entry in reversed(self.entries):
            if max_stanzas is not None and len(chosen) >= max_stanzas:
                break
            if seconds is not None and entry.time < now - seconds:
                break
            if since is not None and entry.time < since:
                break
            chars += len(entry.xml)
            if max_chars is not None and chars > max_chars:
                break
            chosen.append(entry)
        chosen.reverse()
        return chosen


class Room:
    def __init__(self, domain, node, config, creator, max_history_bytes):
        self.domain = domain
        self.node = node
        self.jid = f"{node}@{domain}"
        self.config = config
        self.creator = creator  # the bare JID that created it (the per-user limit)
        self.affiliations = {}  # bare JID -> owner, admin, member, outcast
        self.occupants = {}  # nick -> Occupant
        self.by_jid = {}  # real full JID (each session) -> Occupant
        self.nicks = {}  # bare JID -> its registered nickname (XEP-0045 section 7.10)
        self.nick_owners = {}  # registered nickname -> bare JID
        self.subject = ""
        self.subject_by = ""
        self.locked = False  # created, not configured yet (XEP-0045 section 10.1)
        self.history = History(max_history_bytes)

    def affiliation(self, bare):
        return self.affiliations.get(bare, "none")

    def default_role(self, affiliation):
        if affiliation in ("owner", "admin"):
            return "moderator"
        if self.config.moderated and affiliation != "member":
            return "visitor"
        return "participant"

    def owners(self):
        return [bare for bare, affiliation in self.affiliations.items() if affiliation == "owner"]

    def nick_holder(self, nick):
        """The bare JID that has ``nick`` in the room now, or None."""
        occupant = self.occupants.get(nick)
        return occupant.bare if occupant is not None else None

    def add(self, occupant):
        self.occupants[occupant.nick] = occupant
        self.by_jid[occupant.jid] = occupant

    def add_session(self, occupant, jid):
        """Another resource of ``occupant``'s bare JID joins as the same occupant."""
        occupant.jids.append(jid)
        self.by_jid[jid] = occupant

    def remove_session(self, occupant, jid):
        """One of ``occupant``'s resources leaves; the occupant stays with the others."""
        occupant.jids.remove(jid)
        self.by_jid.pop(jid, None)

    def remove(self, occupant):
        self.occupants.pop(occupant.nick, None)
        for jid in occupant.jids:
            self.by_jid.pop(jid, None)

    def register(self, bare, nick):
        """``nick`` is kept for ``bare`` (its earlier registration, if any, is dropped)."""
        self.unregister(bare)
        self.nicks[bare] = nick
        self.nick_owners[nick] = bare

    def unregister(self, bare):
        nick = self.nicks.pop(bare, None)
        if nick is not None:
            self.nick_owners.pop(nick, None)

    def rename(self, occupant, nick):
        del self.occupants[occupant.nick]
        occupant.nick = nick
        self.occupants[nick] = occupant

    def features(self):
        """The muc_ features of disco#info on the room."""
        config = self.config
        return ["http://jabber.org/protocol/muc",
                "muc_public" if config.public else "muc_hidden",
                "muc_persistent" if config.persistent else "muc_temporary",
                "muc_membersonly" if config.members_only else "muc_open",
                "muc_moderated" if config.moderated else "muc_unmoderated",
                "muc_passwordprotected" if config.password else "muc_unsecured",
                "muc_nonanonymous" if config.whois == "anyone" else "muc_semianonymous"]

    def to_document(self):
        """What a persistent room keeps over a restart."""
        return {"config": self.config.to_document(), "affiliations": dict(self.affiliations),
                "nicks": dict(self.nicks), "subject": self.subject, "subject_by": self.subject_by,
                "creator": self.creator}

    @classmethod
    def from_document(cls, domain, node, document, max_history_bytes):
        room = cls(domain, node, RoomConfig.from_document(document.get("config", {})), document.get("creator", ""),
                   max_history_bytes)
        room.affiliations = {bare: value for bare, value in document.get("affiliations", {}).items()
                             if value in AFFILIATIONS and value != "none"}
        for bare, nick in document.get("nicks", {}).items():
            if room.affiliations.get(bare, "outcast") != "outcast":
                room.register(bare, nick)
        room.subject = document.get("subject", "")
        room.subject_by = document.get("subject_by", "")
        return room

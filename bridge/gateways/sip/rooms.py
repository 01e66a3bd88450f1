"""SIP phones in the chat rooms of this server (XEP-0045 rooms, docs/muc.md).

A registered phone that sends a MESSAGE to a room's SIP address
(``sip:room@conference.localhost``, see ``addressing.py``) takes part in the
room as an occupant: its user's phone session (``phones.py``) joins under
the user's account name, or under the nickname the user registered in the
room (the room then says so by status 210), asking for no history; the text
goes to the room as groupchat.  The room's messages reach the phones as
MESSAGEs from the room's address with the speaker's nick as display name
(``translate.message_to_sip``), the phone's own messages excepted.  A
MESSAGE to ``sip:room@conference.localhost;gr=nick`` is a private message
to that occupant.

Everything goes through the one way in, so the room applies its rules as to
any client: a members-only room refuses a non-member (403), a full room
refuses (503).  A phone does not create rooms: a join that would have
created one leaves it at once and the MESSAGE gets 404.  The phone session
leaves every room when its last registration ends (``leave_all``), and is
told when it is made to leave (kicked, banned, the room destroyed).
"""

from twisted.logger import Logger

from bridge.core.stanza import make, parse_jid

log = Logger()

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
MAX_ROOMS_PER_USER = 20  # rooms one user's phones take part in at a time


def _codes(presence):
    x = next(presence.elements(NS_USER, "x"), None)
    if x is None:
        return set(), None
    item = next(x.elements(NS_USER, "item"), None)
    return {status.getAttribute("code") for status in x.elements(NS_USER, "status")}, item


class PhoneRooms:
    """The rooms each user's phone session is in, by the room's own word (self-presence, status 110)."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.phones = gateway.phones
        self.room_domains = gateway.addresses.room_domains
        self.joined = {}  # (host, user) -> {room bare JID: nick}

    def post(self, host, user, message):
        """Say ``message`` (to a room, or to an occupant) for a phone of ``user@host``; None when said, else
        an error stanza (what the room answered) or a (SIP status, reason) refusal."""
        if (host, user) not in self.phones.sessions:
            return 403, "Forbidden (register to take part in rooms)"
        target = parse_jid(message["to"])
        room = target.userhost()
        rooms = self.joined.setdefault((host, user), {})
        if room not in rooms:
            if len(rooms) >= MAX_ROOMS_PER_USER:
                return 403, f"Forbidden (your phones take part in {MAX_ROOMS_PER_USER} rooms already)"
            join = make("presence", to=f"{room}/{user}")
            join.addElement((NS_MUC, "x")).addElement("history")["maxstanzas"] = "0"
            refusals = self.phones.submit(host, user, join)
            if refusals:
                return refusals[0]
            if room not in rooms:
                return 404, "Not Found (no such room)"
        if target.resource is None:
            message["type"] = "groupchat"
        refusals = self.phones.submit(host, user, message)
        return refusals[0] if refusals else None

    def presence(self, host, user, stanza):
        """A presence to the phone session: the room's word on whether (and as whom) the phones are in it."""
        sender = parse_jid(stanza.getAttribute("from") or "")
        if sender is None or sender.host not in self.room_domains or sender.resource is None:
            return
        room, nick = sender.userhost(), sender.resource
        codes, item = _codes(stanza)
        rooms = self.joined.get((host, user), {})
        if stanza.getAttribute("type") == "unavailable":
            if rooms.get(room) != nick:
                return
            new_nick = item.getAttribute("nick") if item is not None and "303" in codes else None
            if new_nick:
                rooms[room] = new_nick
            else:
                del rooms[room]
            return
        if "110" not in codes or (host, user) not in self.phones.sessions:
            return
        if "201" in codes:
            # The join created the room: phones do not create rooms, so it ends at once.
            self.phones.submit(host, user, make("presence", to=sender.full(), type="unavailable"))
            return
        self.joined.setdefault((host, user), {})[room] = nick

    def is_echo(self, host, user, stanza):
        """True for a room's copy of what the phones themselves said there (not sent back to them)."""
        sender = parse_jid(stanza.getAttribute("from") or "")
        if sender is None or stanza.getAttribute("type") != "groupchat":
            return False
        return self.joined.get((host, user), {}).get(sender.userhost()) == sender.resource

    def leave_all(self, host, user):
        """The phones' last registration ended: the session leaves every room it is in."""
        for room, nick in self.joined.pop((host, user), {}).items():
            self.phones.submit(host, user, make("presence", to=f"{room}/{nick}", type="unavailable"))

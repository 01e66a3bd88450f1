"""IQs between occupants (XEP-0045: an IQ to an occupant JID): the table of those forwarded.

An occupant's IQ to ``room@service/nick`` goes to the real JID behind the
nick under a new id that the room chose (random, so nobody can answer in
another's place by guessing it); the answer, coming from that real JID
under that id, goes back to the asker from ``room@service/nick`` under the
asker's own id.  The table is bounded in all and per asker, and an entry
not answered in time is dropped and its asker told ``remote-server-timeout``.
No stanzas are sent here: the service does that.
"""

import secrets


class Forwarded:
    """One IQ on its way: who asked under which id, through which occupant JID, and who must answer."""

    __slots__ = ("asker", "asker_id", "occupant_jid", "answerer", "timer")

    def __init__(self, asker, asker_id, occupant_jid, answerer):
        self.asker = asker  # the asker's real full JID
        self.asker_id = asker_id
        self.occupant_jid = occupant_jid  # room@service/nick the IQ was sent to
        self.answerer = answerer  # the real JID it was forwarded to, the only one whose answer counts
        self.timer = None


class ForwardedIQs:
    def __init__(self, clock, max_pending, max_pending_per_asker, timeout_seconds, on_timeout):
        self.clock = clock
        self.max_pending = max_pending
        self.max_pending_per_asker = max_pending_per_asker
        self.timeout_seconds = timeout_seconds
        self.on_timeout = on_timeout  # called with the Forwarded that nobody answered
        self.pending = {}  # the id the room chose -> Forwarded
        self.per_asker = {}  # asker full JID -> count of its IQs pending

    def add(self, forwarded):
        """The id to forward ``forwarded``'s IQ under, or None when the table (or the asker's share) is full."""
        if len(self.pending) >= self.max_pending or \
                self.per_asker.get(forwarded.asker, 0) >= self.max_pending_per_asker:
            return None
        room_id = secrets.token_urlsafe(12)
        self.pending[room_id] = forwarded
        self.per_asker[forwarded.asker] = self.per_asker.get(forwarded.asker, 0) + 1
        forwarded.timer = self.clock.callLater(self.timeout_seconds, self._expire, room_id)
        return room_id

    def take(self, room_id, answerer):
        """The Forwarded that ``answerer`` answers under ``room_id`` (and no longer pending), or None when
        no IQ went to ``answerer`` under that id."""
        forwarded = self.pending.get(room_id)
        if forwarded is None or forwarded.answerer != answerer:
            return None
        self._remove(room_id)
        forwarded.timer.cancel()
        return forwarded

    def _remove(self, room_id):
        forwarded = self.pending.pop(room_id)
        left = self.per_asker[forwarded.asker] - 1
        if left:
            self.per_asker[forwarded.asker] = left
        else:
            del self.per_asker[forwarded.asker]
        return forwarded

    def _expire(self, room_id):
        self.on_timeout(self._remove(room_id))

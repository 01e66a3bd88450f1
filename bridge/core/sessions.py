"""The session table: every bound resource, by full JID and by bare JID.

A session is the routing table's view of one connected resource, whatever
transport carries it (TCP, BOSH, WebSocket): its JID, priority, last
presence and a ``send`` callable.  The table is the part of the routing
state that nodes of a cluster would share.
"""

from collections import Counter

NO_DIRECTED = frozenset()  # shared by the sessions that sent no directed presence (most)


class Session:
    """One bound resource of this process (``RemoteSession`` in bridge.core.cluster: one of another node)."""

    local = True

    def __init__(self, jid, stream):
        self.jid = jid
        self.full = jid.full()
        self.bare = jid.userhost()
        self.stream = stream
        self.presence = None
        self.priority = 0
        self.marks = set()  # features' flags, shared with other nodes: see SessionTable.mark
        self.directed = NO_DIRECTED  # the full JIDs it sent directed presence to; a set once there is one
        self.data = {}
        self.sm = None  # XEP-0198 state, once the client enabled it
        self.since = None  # the clock's time when it was bound

    @property
    def available(self):
        return self.presence is not None

    def send(self, stanza):
        self.stream.send(stanza)

    def close(self, condition, text=None):
        """End the session's stream with a stream error."""
        self.stream.stream_error(condition, text)


class SessionTable:
    """``observer``: None, or the cluster (bridge.core.cluster), told when a local session is added,
    changes its presence, priority or marks, or is removed, so that other nodes see it."""

    def __init__(self):
        self._by_full = {}
        self._by_bare = {}
        self._marked = Counter()  # (mark, bare JID) -> the account's sessions in the table with that mark
        self.observer = None

    def __len__(self):
        return len(self._by_full)

    def __iter__(self):
        """Every bound session."""
        return iter(list(self._by_full.values()))

    def add(self, session):
        replaced = self._by_full.get(session.full)
        if replaced is not None:
            self._count_marks(replaced, -1)
        self._by_full[session.full] = session
        self._count_marks(session, 1)
        self._by_bare.setdefault(session.bare, {})[session.jid.resource] = session
        if self.observer is not None and session.local:
            self.observer.session_changed(session)

    def changed(self, session):
        """The session's presence, priority or marks changed."""
        if self.observer is not None and session.local and self._by_full.get(session.full) is session:
            self.observer.session_changed(session)

    def remove(self, session):
        if self._by_full.get(session.full) is not session:
            return
        del self._by_full[session.full]
        self._count_marks(session, -1)
        resources = self._by_bare[session.bare]
        del resources[session.jid.resource]
        if not resources:
            del self._by_bare[session.bare]
        if self.observer is not None and session.local:
            self.observer.session_removed(session)

    def mark(self, session, mark, on=True):
        """Set or clear a feature's flag on a session (carbons enabled, roster interest): other nodes
        see it with the session, and ``marked`` counts it for the account."""
        if (mark in session.marks) == on:
            return
        listed = self._by_full.get(session.full) is session
        if listed:
            self._count_marks(session, -1)
        if on:
            session.marks.add(mark)
        else:
            session.marks.discard(mark)
        if listed:
            self._count_marks(session, 1)
            self.changed(session)

    def marked(self, mark, bare):
        """Whether a session of the account, on any node, has ``mark``."""
        return (mark, bare) in self._marked

    def _count_marks(self, session, delta):
        for mark in session.marks:
            key = (mark, session.bare)
            self._marked[key] += delta
            if self._marked[key] <= 0:
                del self._marked[key]

    def get(self, full):
        return self._by_full.get(full)

    def all(self):
        return list(self._by_full.values())

    def resources(self, bare):
        """Every session of an account."""
        return list(self._by_bare.get(bare, {}).values())

    def available(self, bare):
        """Sessions of an account that sent available presence."""
        return [session for session in self._by_bare.get(bare, {}).values() if session.available]

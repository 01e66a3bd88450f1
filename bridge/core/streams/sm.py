"""Stream management acknowledgements (XEP-0198), the counting half.

``Acknowledgements`` keeps what was sent until the peer's <a h='...'/>
confirms it, so that the stanzas a dying connection swallowed can be sent
again or bounced; ``HandledCount`` is the receiving side's counter.  Both
count modulo 2^32 as the XEP requires.  A client's stanza counts as handled
once the core is done with it (``Settling``): a message for an offline
user only once it is stored, so that an <a/> never acknowledges a stanza a
crash could still lose.  They do no I/O: the stream that owns
them writes <r/>, <a/> and <enable/>.
"""

from collections import deque

from bridge.core.hooks import Settling

NS_SM = "urn:xmpp:sm:3"
MODULUS = 2 ** 32


class AckError(Exception):
    """The peer acknowledged more than was sent."""


class Acknowledgements:
    def __init__(self):
        self.unacked = deque()
        self.acknowledged = 0

    def sent(self, stanza):
        self.unacked.append(stanza)

    def received_ack(self, h):
        """Drop the stanzas the peer's count ``h`` covers."""
        count = (h - self.acknowledged) % MODULUS
        if count > len(self.unacked):
            raise AckError(f"h={h} acknowledges {count} stanzas, only {len(self.unacked)} were sent")
        for _ in range(count):
            self.unacked.popleft()
        self.acknowledged = h % MODULUS

    def take_unacked(self):
        """Everything not yet acknowledged, oldest first; the queue is emptied."""
        pending, self.unacked = list(self.unacked), deque()
        return pending


class HandledCount:
    """``h``: the stanzas received and handled, in the order received: one still in work holds back the
    count of those after it, since h acknowledges a prefix."""

    __slots__ = ("h", "_in_work")

    def __init__(self):
        self.h = 0
        self._in_work = deque()  # [settled, callable or None] per stanza received and not yet counted, in order

    def handled(self):
        """Count a stanza handled at once."""
        if self._in_work:
            self._in_work.append([True, None])
        else:
            self.h = (self.h + 1) % MODULUS

    def settling(self):
        """The ``Settling`` of a stanza just received: it is counted once it and those before it settle."""
        entry = [False, None]
        self._in_work.append(entry)

        def settled():
            entry[0] = True
            self._count_settled()

        return Settling(settled)

    def when_counted(self, callback):
        """Call ``callback()`` once every stanza received so far is counted (at once when none is in work).

        One callback waits per stanza at most: a later one for the same stanza is dropped, so that a
        client repeating <r/> while a stanza is in work adds nothing (the <a/> sent covers them all).
        """
        if not self._in_work:
            callback()
        elif self._in_work[-1][1] is None:
            self._in_work[-1][1] = callback

    def _count_settled(self):
        in_work = self._in_work
        while in_work and in_work[0][0]:
            _, callback = in_work.popleft()
            self.h = (self.h + 1) % MODULUS
            if callback is not None:
                callback()


class SessionState:
    """The XEP-0198 state of one client session.

    It belongs to the session, not to the connection: while a resumable
    session waits for its client to come back, stanzas for it keep being
    counted as sent and unacknowledged, and are written on resumption.
    """

    def __init__(self, resume_id=None):
        self.resume_id = resume_id
        self.handled = HandledCount()
        self.acks = Acknowledgements()
        self.expiry = None

    @property
    def resumable(self):
        return self.resume_id is not None

    @property
    def awaiting_resumption(self):
        """True while the connection is gone and the session is held, waiting for its client to resume it."""
        return self.expiry is not None and self.expiry.active()

"""Stream management acknowledgements (XEP-0198), the counting half.

``Acknowledgements`` keeps what was sent until the peer's <a h='...'/>
confirms it, so that the stanzas a dying connection swallowed can be sent
again or bounced; ``HandledCount`` is the receiving side's counter.  Both
count modulo 2^32 as the XEP requires.  They do no I/O: the stream that owns
them writes <r/>, <a/> and <enable/>.
"""

from collections import deque

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
    def __init__(self):
        self.h = 0

    def handled(self):
        self.h = (self.h + 1) % MODULUS


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

"""The parts of concatenated mobile-originated SMS waiting for the rest, bounded in time, count and bytes.

An SMSC hands over the parts of a long SMS as separate deliver_sm, in any
order, and a part may never come; a sender may also send first parts only.
So a message's parts wait at most ``timeout_seconds`` after its first part,
and the parts waiting from one sender, and from all senders together, are
bounded in number and in octets received: past a bound the oldest waiting
message is dropped, the sender's own first, then anyone's.  A message that
alone exceeds its sender's bounds is dropped as soon as it does.
"""

import collections

from twisted.logger import Logger

log = Logger()


class Waiting:
    """The parts of one message received so far."""

    __slots__ = ("sender", "total", "started", "parts", "size")

    def __init__(self, sender, total, started):
        self.sender = sender
        self.total = total
        self.started = started
        self.parts = {}  # number -> (text, octets)
        self.size = 0


class Sender:
    """The waiting messages of one sender and their counts."""

    __slots__ = ("keys", "parts", "bytes")

    def __init__(self):
        self.keys = collections.OrderedDict()
        self.parts = 0
        self.bytes = 0


class Reassembly:
    """The waiting parts of every sender, within the ``mo_fragment*`` bounds of ``[sms]``."""

    def __init__(self, clock, config):
        self.clock = clock
        self.timeout_seconds = config.mo_fragment_timeout_seconds
        self.parts_per_sender = config.mo_fragments_per_number
        self.bytes_per_sender = config.mo_fragment_bytes_per_number
        self.parts_total = config.mo_fragments_total
        self.bytes_total = config.mo_fragment_bytes_total
        self.parts = 0  # parts waiting, all senders
        self.bytes = 0  # their octets
        self._messages = collections.OrderedDict()  # (sender, reference, total) -> Waiting, oldest first
        self._senders = {}  # sender -> OrderedDict of its keys, oldest first, and its counts
        self._timer = None

    def add(self, sender, reference, total, number, text, octets):
        """Keep part ``number`` of ``total``; the whole text once every part came, else None."""
        if not 1 <= number <= total:
            log.info("SMS from {sender}: part {number} of {total} dropped", sender=sender, number=number,
                     total=total)
            return None
        self._expire()
        key = (sender, reference, total)
        message = self._messages.get(key)
        if message is None:
            message = self._messages[key] = Waiting(sender, total, self.clock.seconds())
            self._senders.setdefault(sender, Sender()).keys[key] = None
        if number in message.parts:
            self._count(message, -1, -message.parts.pop(number)[1])
        message.parts[number] = (text, octets)
        self._count(message, 1, octets)
        if len(message.parts) == total:
            self._drop(key)
            return "".join(message.parts[n][0] for n in range(1, total + 1))
        counts = self._senders[sender]
        while counts.parts > self.parts_per_sender or counts.bytes > self.bytes_per_sender:
            self._drop(next(iter(counts.keys)), "the sender's bound")
        while self.parts > self.parts_total or self.bytes > self.bytes_total:
            self._drop(next(iter(self._messages)), "the total bound")
        self._schedule()
        return None

    def _count(self, message, parts, octets):
        counts = self._senders[message.sender]
        message.size += octets
        counts.parts += parts
        counts.bytes += octets
        self.parts += parts
        self.bytes += octets

    def _drop(self, key, why=None):
        message = self._messages.pop(key)
        self._count(message, -len(message.parts), -message.size)
        counts = self._senders[message.sender]
        del counts.keys[key]
        if not counts.keys:
            del self._senders[message.sender]
        if why is not None:
            log.info("SMS from {sender}: {parts} of {total} parts dropped ({why})", sender=message.sender,
                     parts=len(message.parts), total=message.total, why=why)

    def _expire(self, due=None):
        """Drop the messages that started at or before ``due`` (default: a timeout ago)."""
        due = self.clock.seconds() - self.timeout_seconds if due is None else due
        while self._messages:
            key, message = next(iter(self._messages.items()))
            if message.started > due:
                break
            self._drop(key, "the other parts never came")

    def _schedule(self):
        """A timer at the expiry of the oldest waiting message, while any waits."""
        if self._timer is not None and self._timer.active():
            return
        self._timer = None
        if self._messages:
            oldest = next(iter(self._messages.values())).started
            delay = max(oldest + self.timeout_seconds - self.clock.seconds(), 0)
            self._timer = self.clock.callLater(delay, self._expired, oldest)

    def _expired(self, oldest):
        # The message the timer was set for is due, whatever rounding did to the clock's sum.
        self._timer = None
        self._expire(max(oldest, self.clock.seconds() - self.timeout_seconds))
        self._schedule()

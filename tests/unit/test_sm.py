"""XEP-0198 counters: acknowledgement bookkeeping and wrap-around."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.streams.sm import MODULUS, AckError, Acknowledgements, HandledCount


class AcknowledgementTests(SynchronousTestCase):
    def test_partial_acknowledgement(self):
        """An ack for h stanzas drops exactly the first h; the rest stay pending in order."""
        acks = Acknowledgements()
        for n in range(5):
            acks.sent(n)
        acks.received_ack(2)
        self.assertEqual(list(acks.unacked), [2, 3, 4])
        acks.received_ack(2)
        self.assertEqual(len(acks.unacked), 3)
        acks.received_ack(5)
        self.assertEqual(acks.take_unacked(), [])

    def test_over_acknowledgement(self):
        """Acknowledging more than was sent is an error, not silent loss."""
        acks = Acknowledgements()
        acks.sent("x")
        self.assertRaises(AckError, acks.received_ack, 2)

    def test_wrap_around(self):
        """Counts wrap at 2^32."""
        acks = Acknowledgements()
        acks.acknowledged = MODULUS - 1
        acks.sent("a")
        acks.sent("b")
        acks.received_ack(1)
        self.assertEqual(acks.take_unacked(), [])
        counter = HandledCount()
        counter.h = MODULUS - 1
        counter.handled()
        self.assertEqual(counter.h, 0)


class HandledCountTests(SynchronousTestCase):
    def test_counts_a_prefix_in_order(self):
        """A stanza settled before an earlier one is counted only once the earlier one settles."""
        count = HandledCount()
        first, second = count.settling(), count.settling()
        for settling in (first, second):
            settling.enter()
        second.leave()
        self.assertEqual(count.h, 0)
        first.leave()
        self.assertEqual(count.h, 2)

    def test_one_answer_waits_per_stanza(self):
        """Requests repeated while a stanza is in work wait as one: a single answer once it is counted."""
        count = HandledCount()
        settling = count.settling()
        settling.enter()
        answers = []
        for _ in range(3):
            count.when_counted(lambda: answers.append(count.h))
        self.assertEqual(answers, [])
        settling.leave()
        self.assertEqual(answers, [1])
        count.when_counted(lambda: answers.append(count.h))
        self.assertEqual(answers, [1, 1])

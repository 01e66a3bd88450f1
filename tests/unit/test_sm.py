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

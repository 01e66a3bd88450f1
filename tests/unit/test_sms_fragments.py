"""Concatenated MO SMS waiting for their parts: reassembly, expiry, and the bounds per sender and in total."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.config import SMSConfig
from bridge.gateways.sms.fragments import Reassembly


def reassembly(**bounds):
    clock = Clock()
    return clock, Reassembly(clock, SMSConfig(**bounds))


class ReassemblyTests(SynchronousTestCase):
    def test_parts_in_any_order(self):
        """Three parts arriving 3, 1, 2 give the text in order once the last comes; nothing is left waiting."""
        clock, parts = reassembly()
        self.assertIsNone(parts.add("+1555", 7, 3, 3, "c", 1))
        self.assertIsNone(parts.add("+1555", 7, 3, 1, "a", 1))
        self.assertEqual((parts.parts, parts.bytes), (2, 2))
        self.assertEqual(parts.add("+1555", 7, 3, 2, "b", 1), "abc")
        self.assertEqual((parts.parts, parts.bytes), (0, 0))

    def test_same_reference_from_two_senders_is_two_messages(self):
        """The reference is the sender's: the same one from two numbers never mixes their parts."""
        clock, parts = reassembly()
        parts.add("+1555", 7, 2, 1, "mine ", 5)
        self.assertIsNone(parts.add("+1666", 7, 2, 2, "theirs", 6))
        self.assertEqual(parts.add("+1555", 7, 2, 2, "too", 3), "mine too")

    def test_a_part_sent_again_is_counted_once(self):
        """A part received twice replaces the first copy; its octets count once."""
        clock, parts = reassembly()
        parts.add("+1555", 1, 2, 1, "x", 100)
        parts.add("+1555", 1, 2, 1, "y", 120)
        self.assertEqual((parts.parts, parts.bytes), (1, 120))
        self.assertEqual(parts.add("+1555", 1, 2, 2, "z", 1), "yz")

    def test_impossible_part_numbers_are_dropped(self):
        """Part 0, or part 4 of 3, is not kept."""
        clock, parts = reassembly()
        self.assertIsNone(parts.add("+1555", 1, 3, 0, "x", 10))
        self.assertIsNone(parts.add("+1555", 1, 3, 4, "x", 10))
        self.assertEqual((parts.parts, parts.bytes), (0, 0))

    def test_parts_expire_after_the_timeout(self):
        """A message whose other parts do not come within the timeout is dropped by the timer; a
        part arriving later starts a new message rather than completing the old one."""
        clock, parts = reassembly(mo_fragment_timeout_seconds=60)
        parts.add("+1555", 1, 2, 1, "old ", 4)
        clock.advance(30)
        parts.add("+1666", 1, 2, 1, "newer ", 6)
        clock.advance(30)
        self.assertEqual((parts.parts, parts.bytes), (1, 6))
        clock.advance(30)
        self.assertEqual((parts.parts, parts.bytes, clock.getDelayedCalls()), (0, 0, []))
        self.assertIsNone(parts.add("+1555", 1, 2, 2, "late", 4))
        self.assertEqual(parts.parts, 1)

    def test_bounds_of_one_sender(self):
        """Past its count or its octets, a sender's oldest waiting message is dropped, others' stay."""
        clock, parts = reassembly(mo_fragments_per_number=3, mo_fragment_bytes_per_number=300)
        parts.add("+1666", 1, 2, 1, "other", 100)
        for reference in range(4):
            parts.add("+1555", reference, 2, 1, "x", 10)
        self.assertEqual(parts.parts, 4)
        self.assertIsNone(parts.add("+1555", 0, 2, 2, "x", 10))
        self.assertEqual(parts.add("+1555", 3, 2, 2, "y", 10), "xy")
        parts.add("+1555", 9, 3, 1, "x", 200)
        parts.add("+1555", 9, 3, 2, "x", 200)
        self.assertEqual(parts.add("+1666", 1, 2, 2, "!", 1), "other!")
        self.assertEqual((parts.parts, parts.bytes), (0, 0))

    def test_bounds_of_all_senders(self):
        """Past the total count or octets, the oldest waiting message of anyone is dropped."""
        clock, parts = reassembly(mo_fragments_total=3, mo_fragment_bytes_total=1000)
        for sender in ("+1001", "+1002", "+1003", "+1004"):
            parts.add(sender, 1, 2, 1, sender, 100)
        self.assertEqual((parts.parts, parts.bytes), (3, 300))
        self.assertEqual(parts.add("+1002", 1, 2, 2, "x", 1), "+1002x")
        parts.add("+1005", 1, 3, 1, "big", 850)
        self.assertEqual((parts.parts, parts.bytes), (2, 950))
        self.assertIsNone(parts.add("+1001", 1, 2, 2, "x", 1))
        self.assertEqual(parts.add("+1004", 1, 2, 2, "!", 1), "+1004!")

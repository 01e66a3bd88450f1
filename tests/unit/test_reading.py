"""Reading from a transport under several holds: each pauses on its own, and one resuming never undoes another."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.streams.base import Reading


class Transport:
    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")


class ReadingTests(SynchronousTestCase):
    def test_paused_while_any_hold_is(self):
        """The transport pauses at the first hold's pause and resumes at the last hold's resume only."""
        transport = Transport()
        reading = Reading(transport)
        rate, output = reading.hold(), reading.hold()
        rate.pauseProducing()
        output.pauseProducing()
        rate.resumeProducing()
        self.assertEqual(transport.calls, ["pause"])
        output.resumeProducing()
        self.assertEqual(transport.calls, ["pause", "resume"])

    def test_repeated_calls_of_one_hold_count_once(self):
        """A hold paused twice is resumed by one resume, and a resume of a hold not paused changes nothing."""
        transport = Transport()
        reading = Reading(transport)
        rate, output = reading.hold(), reading.hold()
        output.resumeProducing()
        rate.pauseProducing()
        rate.pauseProducing()
        output.resumeProducing()
        self.assertEqual(transport.calls, ["pause"])
        rate.resumeProducing()
        rate.resumeProducing()
        self.assertEqual(transport.calls, ["pause", "resume"])

"""The archive writer's protocol (core/storage/archive_writer.py and archive_writer_main.py), on a fake process: frames out in
order, answers in, a new writer sent what was not answered, a bounded backlog, and a clean close."""

import marshal

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.storage import archive_writer
from bridge.core.storage.archive_writer import ArchiveWriter
from bridge.core.storage.archive_writer_main import frames_in
from bridge.core.storage.sqlite_ops import ARCHIVE_COLUMNS


class FakeProcess:
    def __init__(self):
        self.written = bytearray()
        self.stdin_closed = False

    def write(self, data):
        self.written += data

    def closeStdin(self):
        self.stdin_closed = True


class ProcessReactor(Clock):
    """A clock that records the processes spawned, each with a fake transport."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, process_protocol, executable, args, env=None):
        process = FakeProcess()
        self.spawned.append((args, process))
        process_protocol.makeConnection(process)
        return process


def row(number):
    return [number, "h", "u", f"id{number}", "b@h", "", "in", "<m/>"]


class ArchiveWriterTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = ProcessReactor()
        self.writer = ArchiveWriter(self.reactor, "/data/bridge.sqlite")

    def process(self):
        return self.reactor.spawned[-1][1]

    def test_starts_with_the_first_frame_and_sends_each_in_order(self):
        """No process before there is something to write; then one, running this module on the file,
        sent each hand-over's values as one frame, in order."""
        self.assertEqual(self.reactor.spawned, [])
        self.writer.write(row(1))
        self.writer.write(row(2) + row(3))
        [(args, process)] = self.reactor.spawned
        self.assertEqual(args[1:], ["-m", "bridge.core.storage.archive_writer_main", "/data/bridge.sqlite"])
        self.assertEqual(frames_in(bytearray(process.written)), [row(1), row(2) + row(3)])

    def test_settled_fires_once_the_frames_before_it_are_answered(self):
        """``settled`` waits for the frames handed over before it, not for those after."""
        self.writer.write(row(1))
        self.writer.write(row(2))
        settled = self.writer.settled()
        self.writer.write(row(3))
        self.writer.outReceived(b"1")
        self.assertNoResult(settled)
        self.writer.outReceived(b"1")
        self.successResultOf(settled)
        self.assertNoResult(self.writer.settled())
        self.writer.outReceived(b"1")
        self.successResultOf(self.writer.settled())

    def test_a_refused_frame_is_logged(self):
        """A frame the writer could not store is said so, with its count of records."""
        events = []
        self.patch(archive_writer, "log", Logger(observer=events.append))
        self.writer.write(row(1) + row(2))
        self.writer.write(row(3))
        self.writer.outReceived(b"01")
        self.assertEqual([(event["log_level"], event.get("rows")) for event in events], [(LogLevel.error, 2)])
        self.successResultOf(self.writer.settled())

    def test_a_new_writer_is_sent_what_was_not_answered(self):
        """When the writer ends, another starts a moment later and is sent the frames not answered,
        in order, before any new one."""
        for number in (1, 2, 3):
            self.writer.write(row(number))
        self.writer.outReceived(b"1")
        self.writer.processEnded(Failure(Exception("killed")))
        self.writer.write(row(4))
        self.assertEqual(len(self.reactor.spawned), 1)
        self.reactor.advance(archive_writer.RESTART_DELAY_SECONDS)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(frames_in(bytearray(self.process().written)), [row(2), row(3), row(4)])
        self.writer.outReceived(b"111")
        self.successResultOf(self.writer.settled())

    def test_the_backlog_is_bounded(self):
        """While the frames not answered pass the bound, a hand-over's records are dropped (not held); once
        the writer has caught up, they are sent again."""
        self.patch(archive_writer, "MAX_BACKLOG_BYTES", 1000)
        big = row(1)[:-1] + ["x" * 600]
        self.writer.write(big)
        self.writer.write(big)
        self.writer.write(row(3))  # past the bound: dropped
        self.assertEqual(len(frames_in(bytearray(self.process().written))), 2)
        self.writer.outReceived(b"11")
        self.writer.write(row(4))
        self.assertEqual([values[0] for values in frames_in(bytearray(self.process().written))], [1, 1, 4])

    def test_close_ends_the_input_and_waits_for_the_writer(self):
        """Closing ends the writer's input; it fires once the writer has ended."""
        self.writer.write(row(1))
        closed = self.writer.close()
        self.assertTrue(self.process().stdin_closed)
        self.writer.outReceived(b"1")
        self.assertNoResult(closed)
        self.writer.processEnded(Failure(Exception("exited")))
        self.successResultOf(closed)
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_a_writer_that_ends_while_closing_is_not_replaced(self):
        """Closing does not wait for writer after writer: if the writer ends with frames not answered
        while the server closes, the loss is said, close fires, and no other writer starts."""
        events = []
        self.patch(archive_writer, "log", Logger(observer=events.append))
        self.writer.write(row(1) + row(2))
        closed = self.writer.close()
        self.writer.processEnded(Failure(Exception("killed")))
        self.successResultOf(closed)
        self.assertEqual([event.get("rows") for event in events], [2])
        self.reactor.advance(archive_writer.RESTART_DELAY_SECONDS)
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_close_with_no_writer_fires_at_once(self):
        """A storage that archived nothing never started a writer, and closes at once."""
        self.successResultOf(self.writer.close())
        self.assertEqual(self.reactor.spawned, [])


class FramesTests(SynchronousTestCase):
    def test_complete_frames_are_taken_and_a_partial_one_is_left(self):
        """Frames arrive cut anywhere: the complete ones are read, the rest waits for its bytes."""
        values = row(7)
        body = marshal.dumps(values)
        frame = len(body).to_bytes(4, "big") + body
        buffer = bytearray(frame + frame[:5])
        self.assertEqual(frames_in(buffer), [values])
        self.assertEqual(bytes(buffer), frame[:5])
        buffer += frame[5:]
        self.assertEqual(frames_in(buffer), [values])
        self.assertEqual(buffer, bytearray())
        self.assertEqual(len(values), ARCHIVE_COLUMNS)

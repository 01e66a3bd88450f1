"""The archive writer's protocol (core/storage/archive_writer.py and archive_writer_main.py), on a fake process: frames out in
order, answers in, a new writer sent what was not answered, a bounded backlog, a wide input pipe, and a clean close."""

import fcntl
import marshal
import os
import tempfile

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.storage import archive_writer, archive_writer_main
from bridge.core.storage.archive_writer import ArchiveWriter
from bridge.core.storage.archive_writer_main import frames_in
from bridge.core.storage.sqlite_ops import ARCHIVE_COLUMNS


class InputPipe:
    """The writer's input pipe, a real one, so that its size is what the protocol made it."""

    def __init__(self):
        self.read_end, self.write_end = os.pipe()

    def fileno(self):
        return self.write_end

    def close(self):
        os.close(self.read_end)
        os.close(self.write_end)


class FakeProcess:
    def __init__(self):
        self.written = bytearray()
        self.stdin_closed = False
        self.pipes = {0: InputPipe()}

    def write(self, data):
        self.written += data

    def closeStdin(self):
        self.stdin_closed = True


class ProcessReactor(Clock):
    """A clock that records the processes spawned, each with a fake transport."""

    def __init__(self, addCleanup):
        super().__init__()
        self.spawned = []
        self.addCleanup = addCleanup

    def spawnProcess(self, process_protocol, executable, args, env=None):
        process = FakeProcess()
        self.addCleanup(process.pipes[0].close)
        self.spawned.append((args, process))
        process_protocol.makeConnection(process)
        return process


def row(number):
    return [number, "h", "u", f"id{number}", "b@h", "", "in", "<m/>"]


class ArchiveWriterTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = ProcessReactor(self.addCleanup)
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

    def test_the_input_pipe_is_widened(self):
        """A busy reactor writes to the pipe once per turn, as much as it holds: the writer's input is
        made to hold a mebibyte, not the system's default 64 KiB."""
        self.writer.write(row(1))
        pipe = self.process().pipes[0].fileno()
        self.assertEqual(fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ), archive_writer.INPUT_PIPE_BYTES)
        self.assertGreater(archive_writer.INPUT_PIPE_BYTES, 64 * 1024)

    def test_a_pipe_that_cannot_be_widened_is_said(self):
        """Where the pipe cannot be widened, nothing is raised and the log says what may follow."""
        events = []
        self.patch(archive_writer, "log", Logger(observer=events.append))
        with tempfile.TemporaryFile() as not_a_pipe:
            archive_writer.widen_pipe(not_a_pipe.fileno(), archive_writer.INPUT_PIPE_BYTES)
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("drop records", event["log_format"])

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


class CommitsTests(SynchronousTestCase):
    """The writer's pieces of input, each committed in one transaction (``archive_writer_main.commits``)."""

    def pieces(self, arrivals):
        """Feed ``arrivals`` ((time, bytes), in order; b"" ends the input) to ``commits`` on a fake clock, a
        read taking what has arrived by the clock's time and a wait moving the clock to the next arrival."""
        clock = Clock()
        pending = list(arrivals)

        def read():
            if pending[0][0] > clock.seconds():
                clock.advance(pending[0][0] - clock.seconds())  # a read blocks until something comes
            data = bytearray()
            while pending and pending[0][0] <= clock.seconds() and (pending[0][1] or not data):
                data += pending.pop(0)[1]  # the end (b"") comes alone, once what came before it is read
                if not data:
                    break
            return bytes(data)

        def ready(timeout):
            if not pending or pending[0][0] > clock.seconds() + timeout:
                clock.advance(timeout)
                return False
            clock.advance(max(0.0, pending[0][0] - clock.seconds()))
            return True

        return [(round(clock.seconds(), 6), bytes(piece)) for piece in archive_writer_main.commits(read, ready, clock.seconds, 0.1)]

    def test_frames_that_keep_coming_are_committed_together(self):
        """The first frame is committed at once; those that follow within the interval wait for its end and
        go in one commit."""
        pieces = self.pieces([(0.0, b"a"), (0.02, b"b"), (0.05, b"c"), (0.5, b"")])
        self.assertEqual(pieces, [(0.0, b"a"), (0.1, b"bc"), (0.5, b"")])

    def test_a_frame_after_a_quiet_spell_is_committed_at_once(self):
        """No wait for a frame that comes after the interval: a quiet server's records are stored as they come."""
        pieces = self.pieces([(0.0, b"a"), (0.3, b"b"), (0.9, b"c"), (1.0, b"")])
        self.assertEqual(pieces, [(0.0, b"a"), (0.3, b"b"), (0.9, b"c"), (1.0, b"")])

    def test_the_end_of_the_input_ends_the_wait(self):
        """What came before the input ended is committed at once, not after the interval."""
        pieces = self.pieces([(0.0, b"a"), (0.01, b"b"), (0.02, b"")])
        self.assertEqual(pieces, [(0.0, b"a"), (0.02, b"b")])

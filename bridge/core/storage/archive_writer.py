"""The archive's writer: a process of its own that inserts the archive's records into the SQLite file.

Two records are written for every message between local users.  Inserted by
the database thread of the server's process, they cost the reactor more
than their share: each call into SQLite hands the interpreter lock to the
other thread and back, and a reactor thread woken on the other core runs
slower (docs/decisions.md and docs/performance.md have the figures).  A
process of its own has its own lock, and the second core.

The writer is ``python -m bridge.core.storage.archive_writer_main``, which
imports no Twisted, stays small and runs below the server's priority.  The
server hands the records over every few milliseconds
(``sqlite.ARCHIVE_HANDOVER_SECONDS``), as one frame on the writer's standard
input (a 4-byte length, then the row values, marshalled), through a pipe
widened to hold a mebibyte; the writer commits the frames it has read in
one transaction, at most one commit every
``archive_writer_main.COMMIT_INTERVAL_SECONDS`` while they keep coming, then
answers with one byte per frame, in order (``1``: stored, ``0``: refused, with the
reason on its standard error).  Frames not answered yet are kept, and sent
again to a new writer if this one ends; the rows' times (``seq``) come from
the server, so a frame committed twice is stored once.  The writer ignores
SIGINT and SIGTERM (a terminal's Ctrl-C and a service manager reach every
process of the group): it ends when the server closes its input, once what
it has read is committed.  A writer that ends while the server closes is
not replaced: what it did not answer is said to be lost, and the server
stops.
"""

import collections
import fcntl
import os
import sys

from twisted.internet import defer, protocol
from twisted.logger import Logger

from bridge.core.storage import archive_writer_main
from bridge.core.storage.sqlite_ops import ARCHIVE_COLUMNS

log = Logger()

# Bytes of frames not yet answered past which a hand-over's records are dropped (and said so), rather than
# held without bound while the writer cannot keep up or cannot start.
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
RESTART_DELAY_SECONDS = 1.0
# What the writer's input pipe is made to hold (the most Linux lets a process ask for by default,
# /proc/sys/fs/pipe-max-size).  A busy reactor writes to the pipe once per turn, as much as the pipe
# holds: at its default 64 KiB that fed the writer about 10 MB/s while 25,000 messages a second
# needed 20, the backlog reached its bound and records were dropped (docs/performance.md).
INPUT_PIPE_BYTES = 1024 * 1024


def widen_pipe(fd, size):
    """Make the pipe ``fd`` hold ``size`` bytes, or say why it cannot (another system than Linux, or a
    smaller /proc/sys/fs/pipe-max-size for a process without privileges)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (AttributeError, OSError) as error:
        log.warn("the archive writer's input pipe keeps its size ({error}): at high message rates the archive may "
                 "fall behind and drop records", error=error)


class ArchiveWriter(protocol.ProcessProtocol):
    """The server's side: frames out, answers in, a new writer when one ends."""

    def __init__(self, reactor, path):
        self._reactor = reactor
        self._path = path
        self._frames = collections.deque()  # (number, frame, rows) handed over, not answered yet
        self._backlog = 0  # their bytes
        self._handed = self._answered = 0  # frames numbered from 1
        self._waiters = []  # (number, Deferred): fires once that frame is answered
        self._started = False
        self._dropping = False
        self._closed = None

    def write(self, values):
        """Hand over the row values of a few milliseconds' records (see ``sqlite._archive_insert``)."""
        rows = len(values) // ARCHIVE_COLUMNS
        if self._backlog > MAX_BACKLOG_BYTES and not self._dropping:
            log.error("the archive writer is {backlog} bytes behind: archived messages are dropped until it "
                      "catches up", backlog=self._backlog)
            self._dropping = True
        if self._dropping:
            return
        frame = archive_writer_main.frame(values)
        self._handed += 1
        self._frames.append((self._handed, frame, rows))
        self._backlog += len(frame)
        if not self._started:
            self._start()
        elif self.transport is not None:
            self.transport.write(frame)

    @property
    def backlog_bytes(self):
        """The bytes of the frames handed over and not yet answered."""
        return self._backlog

    def settled(self):
        """Deferred: fires once every frame handed over so far is answered (stored or refused)."""
        if self._answered >= self._handed:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((self._handed, d))
        return d

    def close(self):
        """Deferred: fires once the writer has answered every frame and ended."""
        if self._closed is None:
            self._closed = defer.Deferred()
            if self.transport is not None:
                self.transport.closeStdin()
            elif not self._frames:
                self._closed.callback(None)
            # else: a writer starts (or restarts) for the frames left, and ends once they are answered.
        return self._closed

    def _start(self):
        self._started = True
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        path = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
        self._reactor.spawnProcess(self, sys.executable, [sys.executable, "-m", archive_writer_main.__name__, self._path],
                                   env=dict(os.environ, PYTHONPATH=path))

    def connectionMade(self):
        widen_pipe(self.transport.pipes[0].fileno(), INPUT_PIPE_BYTES)
        for _, frame, _ in self._frames:
            self.transport.write(frame)
        if self._closed is not None:
            self.transport.closeStdin()

    def outReceived(self, data):
        for answer in data:
            number, frame, rows = self._frames.popleft()
            self._backlog -= len(frame)
            self._answered = number
            if answer != ord("1"):
                log.error("{rows} archived messages not stored (the archive writer refused them)", rows=rows)
        if self._dropping and self._backlog <= MAX_BACKLOG_BYTES // 2:
            log.info("the archive writer caught up: messages are archived again")
            self._dropping = False
        while self._waiters and self._waiters[0][0] <= self._answered:
            self._waiters.pop(0)[1].callback(None)

    def errReceived(self, data):
        log.error("archive writer: {text}", text=data.decode("utf-8", "replace").rstrip())

    def processEnded(self, reason):
        self.transport = None
        if self._closed is not None:
            if self._frames:
                log.error("the archive writer ended ({reason}) while the server closed: {rows} archived messages "
                          "may be lost", reason=reason.value, rows=sum(rows for _, _, rows in self._frames))
            self._closed.callback(None)
            return
        log.error("the archive writer ended ({reason}); another starts in {delay} s, and is sent the "
                  "{count} frames not answered", reason=reason.value, delay=RESTART_DELAY_SECONDS,
                  count=len(self._frames))
        self._reactor.callLater(RESTART_DELAY_SECONDS, self._start)

"""The archive writer's process (``python -m bridge.core.storage.archive_writer_main PATH``): frames of
archive rows on standard input, one answer byte per frame on standard output, as ``archive_writer.py``
describes.  It imports the standard library and ``sqlite_ops`` only, so that it stays small."""

import marshal
import os
import select
import signal
import struct
import sys
import time

from bridge.core.storage.sqlite_ops import ARCHIVE_COLUMNS, _archive_insert, connect, run_batch

_HEADER = struct.Struct(">I")
# The least time between two commits while frames keep coming; a frame after a quiet spell is committed
# at once.  A commit writes each page it changed to the write-ahead log, and with records for many users
# each commit changes about as many index pages whatever its size: fewer, larger commits cost the writer
# less than one per hand-over (docs/performance.md).
COMMIT_INTERVAL_SECONDS = 0.1
# How far below the server's priority the writer runs: its commits can wait, the reactor's answers cannot.
# At the server's priority, under load the writer held the core that the server's clients also needed, and
# the reactor waited for input 5 to 7 % of the time (docs/performance.md).
NICENESS = 10
# The writer's page cache, in KiB.  A 100 ms commit changes more pages than SQLite's default 2 MiB cache
# holds: the pages spilled to the log during the transaction were read back and written again, some three
# reads and three writes a row (docs/performance.md).
CACHE_KIB = 16 * 1024


def frame(values):
    """One hand-over's row values as a frame: their length, then the values marshalled."""
    body = marshal.dumps(values)
    return _HEADER.pack(len(body)) + body


def frames_in(buffer):
    """The complete frames at the start of ``buffer`` (a bytearray), removed from it."""
    frames = []
    start = 0
    while len(buffer) - start >= _HEADER.size:
        (length,) = _HEADER.unpack_from(buffer, start)
        end = start + _HEADER.size + length
        if len(buffer) < end:
            break
        frames.append(marshal.loads(buffer[start + _HEADER.size:end]))
        start = end
    del buffer[:start]
    return frames


def commits(read, ready, clock, interval=COMMIT_INTERVAL_SECONDS):
    """The input, in the pieces to commit one by one: what has arrived, and while input keeps coming,
    what arrives until ``interval`` after the previous piece.  ``read()`` returns what is there (b"" at the
    end), ``ready(timeout)`` whether more arrives within ``timeout`` seconds; ``clock()`` is monotonic."""
    last = -interval
    ended = False
    while not ended:
        data = read()
        ended = not data
        piece = bytearray(data)
        while not ended:
            left = last + interval - clock()
            if left <= 0 or not ready(left):
                break
            data = read()
            ended = not data
            piece += data
        yield piece
        last = clock()


def open_database(path):
    """The writer's connection: ``connect``'s, with a cache that holds what a commit of 100 ms of records changes."""
    db = connect(path)
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return db


def main(path):
    """Commit what arrives until the input ends, below the server's priority; SIGINT and SIGTERM are ignored
    (see ``archive_writer``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(NICENESS)
    db = open_database(path)
    buffer = bytearray()
    for piece in commits(lambda: os.read(0, 1 << 20), lambda timeout: bool(select.select([0], [], [], timeout)[0]),
                         time.monotonic):
        buffer += piece
        frames = frames_in(buffer)
        if not frames:
            continue
        outcomes = run_batch(db, [(_archive_insert, (values,)) for values in frames])
        for values, (succeeded, result) in zip(frames, outcomes):
            if not succeeded:
                sys.stderr.write(f"{len(values) // ARCHIVE_COLUMNS} rows refused: {result}\n")
        sys.stderr.flush()
        answers = bytes(ord("1") if succeeded else ord("0") for succeeded, _ in outcomes)
        while answers:
            answers = answers[os.write(1, answers):]
    db.close()


if __name__ == "__main__":
    main(sys.argv[1])

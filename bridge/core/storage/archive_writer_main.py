"""The archive writer's process (``python -m bridge.core.storage.archive_writer_main PATH``): frames of
archive rows on standard input, one answer byte per frame on standard output, as ``archive_writer.py``
describes.  It imports the standard library and ``sqlite_ops`` only, so that it stays small."""

import marshal
import os
import signal
import struct
import sys

from bridge.core.storage.sqlite_ops import ARCHIVE_COLUMNS, _archive_insert, connect, run_batch

_HEADER = struct.Struct(">I")


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


def main(path):
    """Commit what arrives until the input ends; SIGINT and SIGTERM are ignored (see ``archive_writer``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    db = connect(path)
    buffer = bytearray()
    while True:
        data = os.read(0, 1 << 20)
        if not data:
            break
        buffer += data
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

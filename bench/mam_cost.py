"""What the message archive costs (``python -m bench.mam_cost``): per message in memory, per page in SQLite.

1. The in-memory server (the unit tests' harness, no sockets): one client
   sends ``--messages`` chat messages to another, with ``[mam]`` on and off;
   printed: microseconds of process time per message each way (the best of
   three runs; process time, as the machine may be shared), and the rate with
   the archive as a share of the rate without.  The archive's storage is in memory here,
   so this is the cost on the reactor's thread (eligibility, stanza id,
   serialising the record), not the database's.
2. An SQLite archive of ``--records`` messages of one user (a tenth with one
   contact) in a temporary file, written as the archive writer writes a
   hand-over's records, ``BATCH`` at a time; then ``--pages`` queries of a 50-message page, as the database
   thread runs them: at a random place forward (RSM <after/>), the last page
   (<before/>), and one contact's page.  Printed: p50 and p99 in milliseconds.
Figures, not a test.
"""

import argparse
import os
import random
import shutil
import tempfile
import time

from bridge import config as configuration
from bridge.core.storage import ArchiveQuery, ArchiveRecord, sqlite, sqlite_ops
from tests.unit.helpers import Harness

BATCH = sqlite.BATCH_LIMIT


def per_message(enabled, messages):
    """Microseconds of process time of one chat message from send to delivery, the archive on or off."""
    document = {"c2s": {"require_encryption": False, "rate_limit_bytes_per_second": 10**9,
                        "rate_limit_burst_bytes": 10**9}, "mam": {"enabled": enabled}}
    harness = Harness(configuration.parse(document, "bench.toml"))
    for user in ("alice", "bob"):
        harness.add_user(f"{user}@localhost")
    alice = harness.login("alice@localhost/a")
    bob = harness.login("bob@localhost/b")
    bob.send("<presence/>")
    bob.received()
    text = "<message to='bob@localhost' type='chat' id='m{}'><body>a message of ordinary length, about fifty</body></message>"
    started = time.process_time()
    for number in range(messages):
        alice.send(text.format(number))
        if number % 100 == 99:
            bob.transport.clear()
    elapsed = time.process_time() - started
    return elapsed / messages * 1e6


def build_archive(path, records):
    db = sqlite_ops.connect(path)
    started = time.perf_counter()
    values, last = [], 0
    for number in range(records):
        contact = "carol@localhost" if number % 10 == 0 else f"contact{number % 97}@localhost"
        record = ArchiveRecord(f"id{number:08d}", 1_700_000_000_000_000 + number * 1000, contact, "", "in",
                               f"<message type='chat' id='m{number}'><body>message number {number}</body></message>")
        last = sqlite_ops.archive_row(values, last, "localhost", "alice", record)
        if len(values) == BATCH * sqlite_ops.ARCHIVE_COLUMNS or number == records - 1:
            [(succeeded, error)] = sqlite_ops.run_batch(db, [(sqlite_ops._archive_insert, (values,))])
            assert succeeded, error
            values = []
    return db, time.perf_counter() - started


def timed_pages(db, queries):
    timings = []
    for query in queries:
        started = time.perf_counter()
        [(succeeded, page)] = sqlite_ops.run_batch(db, [(sqlite_ops._archive_query, ("localhost", "alice", query))])
        timings.append((time.perf_counter() - started) * 1000)
        assert succeeded and len(page.records) == 50, page
    timings.sort()
    return timings[len(timings) // 2], timings[min(len(timings) - 1, int(len(timings) * 0.99))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--records", type=int, default=100000)
    parser.add_argument("--pages", type=int, default=300)
    args = parser.parse_args()

    off = min(per_message(False, args.messages) for _ in range(3))
    on = min(per_message(True, args.messages) for _ in range(3))
    print(f"in memory, one chat message: {off:.1f} us without the archive, {on:.1f} us with it "
          f"(rate with the archive: {off / on:.0%} of the rate without)")

    directory = tempfile.mkdtemp()
    try:
        db, seconds = build_archive(os.path.join(directory, "bench.sqlite"), args.records)
        print(f"SQLite: {args.records} records appended in batches of {BATCH} in {seconds:.1f} s "
              f"({args.records / seconds:,.0f} per second)")
        rng = random.Random(7)
        forward = [ArchiveQuery(page_after=f"id{rng.randrange(args.records - 100):08d}", limit=50)
                   for _ in range(args.pages)]
        backward = [ArchiveQuery(last_page=True, limit=50)] * args.pages
        contact = [ArchiveQuery(with_jid="carol@localhost", page_after=f"id{rng.randrange(args.records // 2) // 10 * 10:08d}",
                                limit=50) for _ in range(args.pages)]
        for name, queries in (("forward at a random place", forward), ("last page (<before/>)", backward),
                              ("one contact's page", contact)):
            p50, p99 = timed_pages(db, queries)
            print(f"SQLite, a 50-message page of {args.records:,}, {name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        db.close()
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()

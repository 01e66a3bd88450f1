"""Storage whose operations are timed, for the metrics listener: from the call to the answer, by operation.

The time is that of the whole way: the queue in front of the database
thread, the SQL, and the answer's trip back to the reactor, which is what a
feature waiting for the answer sees.  ``archive_append`` answers nothing (it
is handed over in batches) and is not timed.
"""

import time

from twisted.internet import defer
from zope.interface.interface import Method

from bridge.core.counters import STORAGE_SECONDS_BUCKETS, Histogram
from bridge.core.storage import IStorage

# The operations timed: every method of IStorage that answers with a Deferred (attributes, such as
# ``available``, are the storage's own).
UNTIMED_OPERATIONS = ("archive_append", "close")
TIMED_OPERATIONS = tuple(sorted(name for name, description in IStorage.namesAndDescriptions()
                                if isinstance(description, Method) and name not in UNTIMED_OPERATIONS))


class TimedStorage:
    """``storage`` with each of ``TIMED_OPERATIONS`` observed in ``operation_seconds[name]`` (a ``Histogram``);
    anything else is the storage's own.  ``timer``: seconds of a monotonic clock."""

    def __init__(self, storage, timer=time.perf_counter):
        self._storage = storage
        self._timer = timer
        self.operation_seconds = {name: Histogram(STORAGE_SECONDS_BUCKETS) for name in TIMED_OPERATIONS}
        for name in TIMED_OPERATIONS:
            setattr(self, name, self._timed(getattr(storage, name), self.operation_seconds[name]))
        # Bound here rather than found by ``__getattr__``: the archive appends two records for every
        # message, and a failed lookup (an AttributeError made, then caught) costs each about a microsecond.
        for name in UNTIMED_OPERATIONS:
            setattr(self, name, getattr(storage, name))

    def _timed(self, operation, histogram):
        timer = self._timer

        def timed(*args, **kwargs):
            started = timer()
            answer = operation(*args, **kwargs)
            if isinstance(answer, defer.Deferred):
                answer.addBoth(_observed, histogram, timer, started)
            return answer

        return timed

    def __getattr__(self, name):
        return getattr(self._storage, name)


def _observed(result, histogram, timer, started):
    histogram.observe(timer() - started)
    return result

"""What the server counts as it works, for the metrics listener (``bridge/metrics.py``).

The hot paths only add one to an integer: the tables below are made once,
with fixed keys, so counting a stanza allocates nothing and a peer cannot
add keys (a stanza's name is counted only when it is one of ``STANZAS``).
Levels that exist anyway (sessions, queues, links) are not counted here but
read when metrics are scraped: a module that owns one registers a reader
with ``Levels``.
"""

STANZAS = ("message", "presence", "iq")
# The kinds of XML stream whose stanzas are counted in and out.
STREAM_KINDS = ("c2s", "s2s", "component")


def stanza_table():
    """Counts of stanzas by name, the fixed keys of ``STANZAS``."""
    return dict.fromkeys(STANZAS, 0)


class Counters:
    """The counts of one process since it started; only ever incremented.

    ``stanzas_in[kind][name]`` and ``stanzas_out[kind][name]``: stanzas read
    from and written to streams of each of ``STREAM_KINDS``;
    ``authentication_failures``: SASL exchanges that failed;
    ``offline_stored`` and ``offline_delivered``: messages kept for and then
    given to users who were away.
    """

    def __init__(self):
        self.stanzas_in = {kind: stanza_table() for kind in STREAM_KINDS}
        self.stanzas_out = {kind: stanza_table() for kind in STREAM_KINDS}
        self.authentication_failures = 0
        self.offline_stored = 0
        self.offline_delivered = 0


class Levels:
    """Readers of the levels (queue depths, registrations, links) that modules own.

    ``add(name, documentation, read, owner)``: ``read()`` gives a number or
    a Deferred of one; ``remove_owner(owner)`` forgets every reader an owner
    added, when its module unloads.
    """

    def __init__(self):
        self.readers = {}  # name -> (documentation, read, owner)

    def add(self, name, documentation, read, owner):
        self.readers[name] = (documentation, read, owner)

    def remove_owner(self, owner):
        self.readers = {name: entry for name, entry in self.readers.items() if entry[2] is not owner}

"""What the server counts as it works, for the metrics listener (``bridge/metrics.py``).

The hot paths only add one to an integer: the tables below are made once,
with fixed keys, so counting a stanza allocates nothing and a peer cannot
add keys (a stanza's name is counted only when it is one of ``STANZAS``).
Levels that exist anyway (sessions, queues, links) are not counted here but
read when metrics are scraped: a module that owns one registers a reader
with ``Levels``.
"""

from bisect import bisect_left

STANZAS = ("message", "presence", "iq")
# The kinds of XML stream whose stanzas are counted in and out.
STREAM_KINDS = ("c2s", "s2s", "component")
# Upper bounds (seconds) of the buckets of the routing table's time per stanza.
ROUTE_SECONDS_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
# Upper bounds (seconds) of the buckets of storage operations, from call to answer.
STORAGE_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# SIP transactions are counted by method (these, else "other"), by side, and by the class of their final
# response ("2xx".."6xx"), or "timeout" for a client transaction that got none.
SIP_METHODS = ("REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS", "INVITE", "BYE", "CANCEL",
               "INFO", "UPDATE", "REFER", "PRACK", "other")
SIP_OUTCOMES = ("2xx", "3xx", "4xx", "5xx", "6xx", "timeout")
# SMS parts handed to an SMSC: accepted (submit_sm_resp OK), rejected for good, or to be tried again
# (throttled, a transient status, the link lost).
SMS_SUBMIT_RESULTS = ("accepted", "rejected", "retried")
# Delivery receipts from SMSCs: the part's final state, not final yet (ENROUTE...), or no message of ours.
SMS_RECEIPT_RESULTS = ("delivered", "failed", "not final", "unmatched")


def stanza_table():
    """Counts of stanzas by name, the fixed keys of ``STANZAS``."""
    return dict.fromkeys(STANZAS, 0)


def sip_transaction_table():
    """Counts of finished SIP transactions by (side "server" or "client", method, outcome), every key made now."""
    return {(side, method, outcome): 0 for side in ("server", "client") for method in SIP_METHODS
            for outcome in SIP_OUTCOMES}


def sip_method(method):
    """``method`` as ``sip_transaction_table`` keys it: itself when listed, else "other"."""
    return method if method in SIP_METHODS else "other"


class Histogram:
    """Observations counted in fixed buckets, with their sum: what a Prometheus histogram exposes.

    ``bounds``: the buckets' upper bounds, ascending; ``counts`` has one more
    entry, for what lies above them all.  An observation is one bisection and
    two additions; the buckets are summed up only when read (``cumulative``).
    """

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value):
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self):
        """[(upper bound, observations at most that)], the last bound infinity, as Prometheus's buckets are."""
        running, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            buckets.append((bound, running))
        return buckets


class Counters:
    """The counts of one process since it started; only ever incremented.

    ``stanzas_in[kind][name]`` and ``stanzas_out[kind][name]``: stanzas read
    from and written to streams of each of ``STREAM_KINDS``;
    ``authentication_failures``: SASL exchanges that failed;
    ``offline_stored`` and ``offline_delivered``: messages kept for and then
    given to users who were away;
    ``sip_transactions``: finished SIP transactions (``sip_transaction_table``);
    ``sms_submits`` and ``sms_receipts``: by ``SMS_SUBMIT_RESULTS`` and
    ``SMS_RECEIPT_RESULTS``.
    """

    def __init__(self):
        self.stanzas_in = {kind: stanza_table() for kind in STREAM_KINDS}
        self.stanzas_out = {kind: stanza_table() for kind in STREAM_KINDS}
        self.authentication_failures = 0
        self.offline_stored = 0
        self.offline_delivered = 0
        self.sip_transactions = sip_transaction_table()
        self.sms_submits = dict.fromkeys(SMS_SUBMIT_RESULTS, 0)
        self.sms_receipts = dict.fromkeys(SMS_RECEIPT_RESULTS, 0)


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

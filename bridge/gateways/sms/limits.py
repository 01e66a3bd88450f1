"""How many SMS the local users may send to phone numbers: per user and per host, a minute and a day.

Every SMS bridge sends to a number costs money, and an account (one made by
in-band registration too) could otherwise send as many as it likes to any
number: toll fraud.  What a user sends to ``+number@sms.<host>`` and the
verification codes they ask for are charged here before they are queued,
counted in SMS parts (what an SMSC bills), per user and per local host, in
fixed windows of one minute and one UTC day.  The counts live in storage
(``sms-sent``, (host, user) for a user and (host, "") for the host), so a
restart resets nothing.  The same document of a user or host is shared by
every charge under way (``DocumentCache``), and the check and the count
happen in one step once both are in memory, so two SMS sent at once never
both pass the last unit of a limit.  In a cluster every node changes the
host's document: a charge that met a copy another node changed runs again
on a fresh read after a random pause, counting again only where its count
was not written.  Charges are not queued behind each other: on one node
they share the cached documents, and each save expects the one before it.
"""

import random

from twisted.internet import defer, task

from bridge.core.storage.cache import DocumentCache, StaleDocument

STORE = "sms-sent"  # (host, user) and (host, ""): {"day", "today", "minute", "this_minute"}
# The host's counts change with every SMS charged on any node: a charge may meet as many changes as the
# other nodes make meanwhile (a burst of SMS), more than a document of one user meets.
CHARGE_RETRIES = 20
STALE_PAUSE_SECONDS = 0.05  # at most, before a charge that met a stale copy runs again: let the others' pass


def _fresh(stored):
    return dict(stored) if stored else {}


class SendingLimits:
    def __init__(self, storage, clock, config, caches=None):
        self.clock = clock
        self.config = config
        self.counts = DocumentCache(storage, STORE, decode=_fresh, encode=lambda counts: counts or None,
                                    caches=caches)

    @defer.inlineCallbacks
    def charge(self, host, user, parts):
        """Count ``parts`` SMS sent by ``user`` of ``host``; None when every limit allows them, else the
        refusal (stanza error condition, text), nothing counted."""
        counted = set()
        for tries in range(CHARGE_RETRIES + 1):
            try:
                return (yield self._charge(host, user, parts, counted))
            except StaleDocument:
                if tries == CHARGE_RETRIES:
                    raise
                # Other nodes are charging: running again at once would meet their changes again.
                yield task.deferLater(self.clock, random.uniform(0, STALE_PAUSE_SECONDS), lambda: None)

    @defer.inlineCallbacks
    def _charge(self, host, user, parts, counted):
        """One run of a charge; ``counted``: the documents ("" for the host's) an earlier run of it wrote."""
        mine, hosts = yield defer.gatherResults([self.counts.load(host, user), self.counts.load(host, "")],
                                                consumeErrors=True)
        now = self.clock.seconds()
        day, minute = int(now // 86400), int(now // 60)
        for counts in (mine, hosts):
            if counts.get("day") != day:
                counts.update(day=day, today=0)
            if counts.get("minute") != minute:
                counts.update(minute=minute, this_minute=0)
        config = self.config
        checks = ((mine, "this_minute", config.outbound_sms_per_minute_per_user, "policy-violation",
                   "{limit} SMS a minute per user: wait a minute"),
                  (mine, "today", config.outbound_sms_per_day_per_user, "policy-violation",
                   "{limit} SMS a day per user (the day ends at 00:00 UTC)"),
                  (hosts, "this_minute", config.outbound_sms_per_minute_per_host, "resource-constraint",
                   "{limit} SMS a minute for all users of {host}: wait a minute"),
                  (hosts, "today", config.outbound_sms_per_day_per_host, "resource-constraint",
                   "{limit} SMS a day for all users of {host} (the day ends at 00:00 UTC)"))
        for counts, window, limit, condition, text in checks:
            if not counted and counts[window] + parts > limit:
                return condition, "SMS limit reached: " + text.format(limit=limit, host=host)
        uncounted = [(name, counts) for name, counts in ((user, mine), ("", hosts)) if name not in counted]
        for _, counts in uncounted:
            counts["this_minute"] += parts
            counts["today"] += parts
        saved = yield defer.DeferredList([self.counts.save(host, name, counts) for name, counts in uncounted],
                                         consumeErrors=True)
        counted.update(name for (name, _), (written, _) in zip(uncounted, saved) if written)
        failures = [failure for written, failure in saved if not written]
        if failures:
            failures[0].raiseException()
        return None

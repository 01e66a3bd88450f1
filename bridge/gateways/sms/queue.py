"""The persisted outbound SMS queue.

One key-value document per accepted message, under (SMS domain, key,
"sms-out"), the key a zero-padded counter (then "-NODE" in a cluster, each
node counting on its own) so that ``users()`` lists the messages in about
the order they were accepted.  The document holds the parts (hex
short_message, data_coding, esm_class) and the state of each:

    pending -> sending -> submitted (message id stored) -> delivered / failed

A part is marked ``sending`` in storage, and that write has completed,
before its submit_sm is written; it is marked ``submitted``, with the
SMSC's message id, as soon as submit_sm_resp arrives and before anything
else happens; the document is only deleted once every part has a final
state.

Whoever starts serving the queue (a restart, or another node taking it over
in a cluster: docs/scaling.md) queues again every part still ``pending`` or
``retrying``.  A part found ``sending`` was written to an SMSC whose answer
was never recorded: it may or may not have reached the SMSC, so it is
``held``, never sent again by itself, and reported (a warning in the log,
the level ``sms_queue_held_parts``); nothing accepted is dropped, and
nothing is sent twice across a restart or a takeover.

In a cluster every node accepts messages into the shared queue, and only
the node that owns it (``serve``) sends them; it looks for the others'
messages every ``[cluster] queue_poll_seconds`` (``load`` again).

Message ids are indexed under (domain, "SMSC/ID", "sms-ids") in every form
that the id can take (as written, hex read as decimal, decimal read as hex),
so that a receipt from an SMSC that reports ids in the other base matches.
"""

import collections

from twisted.internet import defer
from twisted.logger import Logger

from bridge.core.counters import Counters
from bridge.gateways.sms import pdu as pdus, text as texts

log = Logger()

STORE = "sms-out"
ID_STORE = "sms-ids"
COUNTER_STORE = "sms-counter"
# Serials are reserved this many at a time: the counter is written once a block, not once a message (each
# write a storage round trip that the next message waited for).  A restart skips what its block left unused.
SERIAL_BLOCK = 1000
FINAL = ("delivered", "failed")
# Receipt 'stat:' values and message_state TLV values to part states.
RECEIPT_STATES = {"DELIVRD": "delivered", "EXPIRED": "failed", "DELETED": "failed", "UNDELIV": "failed",
                  "REJECTD": "failed", "UNKNOWN": "failed"}
# A message_id is a C-octet string of at most 65 octets, its NUL included.
MAX_MESSAGE_ID = 64
MESSAGE_STATES = {2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 6: "ACCEPTD", 7: "UNKNOWN",
                  8: "REJECTD"}


def id_keys(message_id):
    """Every form of an SMSC message id under which it is indexed and looked up.

    Only an id of SMPP's length (at most 64 characters) is read as a number:
    a longer one could make a decimal form longer than Python converts.
    """
    raw = message_id.strip().lower()
    keys = {raw}
    if not raw or len(raw) > MAX_MESSAGE_ID:
        return keys
    if all(c in "0123456789abcdef" for c in raw):
        keys.add(str(int(raw, 16)))
    if raw.isascii() and raw.isdigit():
        keys.add(format(int(raw), "x"))
    return keys


class Job:
    """One part on its way to an SMSC."""

    __slots__ = ("key", "index", "destination", "esm_class", "data_coding", "short_message", "receipt", "recorded")

    def __init__(self, key, index, doc, recorded):
        """``recorded``: the Deferred of the write that marked the part ``sending``."""
        part = doc["parts"][index]
        self.key = key
        self.index = index
        self.destination = doc["number"].lstrip("+")
        self.esm_class = part["esm_class"]
        self.data_coding = part["data_coding"]
        self.short_message = bytes.fromhex(part["data"])
        self.receipt = doc["receipts"]
        self.recorded = recorded


class OutboundQueue:
    """The dispatcher of the SMSC links; ``on_final(doc, outcome, reason)`` hears of finished messages."""

    def __init__(self, storage, domain, clock, config, on_final, on_mo=None, counters=None, node=None,
                 serving=True):
        """``node``: this node's name in a cluster (None alone); ``serving``: whether this process sends
        from the queue from the start (else from ``serve()``, once it owns the queue)."""
        self.storage = storage
        self.node = node
        self.serving = serving
        self.claim = None  # the ownership claim of the queue (bridge.core.ownership), when there is one
        # Where submits and receipts are counted: the server's ``Counters`` (one of its own when not given).
        self.counters = counters if counters is not None else Counters()
        self.domain = domain
        self.clock = clock
        self.config = config
        self.on_final = on_final
        self.on_mo = on_mo
        self.links = []
        self.pending = collections.deque()  # (key, part index)
        self.docs = {}  # key -> document, every unfinished message
        self._retry_timers = set()
        self._serial = None  # the next message's serial, once read
        self._reserved = None  # the serial after the block reserved in storage
        self._waiting = collections.deque()  # Deferreds of the serials asked for while a block is reserved
        self._loading = False

    # -- persistence ------------------------------------------------------

    def _save(self, key):
        """Write a message's document, only while this process may send: a node that lost the queue writes
        none of its stale copies over what the new owner does (an answer that comes to it late is not
        recorded, and the new owner holds that part)."""
        if not self.may_send():
            return defer.succeed(None)
        return self.storage.set(self.domain, key, STORE, self.docs.get(key))

    def may_send(self):
        """Whether a submit_sm may be written now: this process serves the queue and still owns it."""
        return self.serving and (self.claim is None or self.claim.owned)

    def serve(self):
        """Start sending from the queue (this node became its owner): its messages are read."""
        self.serving = True
        d = self.load()
        d.addCallback(lambda _: self.docs and log.info(
            "SMS queue: {count} unfinished messages, {parts} parts to send, {held} held", count=len(self.docs),
            parts=len(self.pending), held=self.held_parts()))
        return d

    def unserve(self):
        """Stop sending (another node owns the queue now): forget the messages, which stay in storage."""
        self.serving = False
        self.stop()
        self.docs.clear()
        self.pending.clear()

    @defer.inlineCallbacks
    def load(self):
        """Read the messages in storage not yet known here (all of them at a start or a takeover, those
        other nodes accepted since at each poll) and queue their unsent parts."""
        if self._loading:
            return
        self._loading = True
        try:
            yield self._load_new()
        finally:
            self._loading = False

    @defer.inlineCallbacks
    def _load_new(self):
        for key in (yield self.storage.users(self.domain, STORE)):
            if key in self.docs or not self.serving:
                continue
            doc = yield self.storage.get(self.domain, key, STORE)
            if doc is None or key in self.docs or not self.serving:
                continue
            self.docs[key] = doc
            changed = False
            for index, part in enumerate(doc["parts"]):
                if part["state"] == "sending":
                    part["state"] = "held"
                    changed = True
                    log.warn("SMS {key} part {index} to {number}: held, not sent again: its submit_sm may have "
                             "reached SMSC {smsc}, and no answer was recorded before the queue's last owner "
                             "stopped (docs/scaling.md)", key=key, index=index, number=doc["number"],
                             smsc=part.get("smsc"))
                elif part["state"] in ("pending", "retrying"):
                    changed = changed or part["state"] == "retrying"
                    part["state"] = "pending"
                    self.pending.append((key, index))
            if any(part["state"] == "submitted" for part in doc["parts"]):
                self._expire_later(key)
            if changed:
                yield self._save(key)
        self.wake()

    def held_parts(self):
        """The parts held because their outcome is unknown (they are not sent again by themselves)."""
        return sum(part["state"] == "held" for doc in self.docs.values() for part in doc["parts"])

    def _next_serial(self):
        """Deferred: the serial of a new message, at once while the reserved block lasts."""
        if not self._waiting and self._serial is not None and self._serial < self._reserved:
            serial, self._serial = self._serial, self._serial + 1
            return defer.succeed(serial)
        d = defer.Deferred()
        self._waiting.append(d)
        if len(self._waiting) == 1:
            self._reserve().addErrback(self._not_reserved)
        return d

    @defer.inlineCallbacks
    def _reserve(self):
        """Reserve serials in storage (the counter read at the first) for the messages waiting, a block at
        least, and hand them out; again while more wait than the block had.  The waiting are answered
        in a loop, not one from the callback of another, which nests as deep as they are many."""
        waiting = self._waiting
        while waiting:
            if self._serial is None:
                counter = (yield self.storage.get(self.domain, self.node or "", COUNTER_STORE)) or {"next": 1}
                self._serial = self._reserved = counter["next"]
            if self._serial >= self._reserved:
                reserved = self._serial + max(SERIAL_BLOCK, len(waiting))
                yield self.storage.set(self.domain, self.node or "", COUNTER_STORE, {"next": reserved})
                self._reserved = reserved
            while waiting and self._serial < self._reserved:
                serial, self._serial = self._serial, self._serial + 1
                waiting.popleft().callback(serial)

    def _not_reserved(self, failure):
        waiting, self._waiting = self._waiting, collections.deque()
        for d in waiting:
            d.errback(failure)

    @defer.inlineCallbacks
    def add(self, number, body, meta):
        """Accept ``body`` for ``number`` (persisted before this fires); the message's key."""
        serial = yield self._next_serial()
        key = f"{serial:012d}" if self.node is None else f"{serial:012d}-{self.node}"
        coding, esm_class, parts = texts.split(body, serial % 256, self.config.max_parts)
        doc = {"number": number, "receipts": self.config.request_receipts, "created": self.clock.seconds(),
               "meta": meta, "parts": [{"data": data.hex(), "data_coding": coding, "esm_class": esm_class,
                                        "state": "pending", "id": None, "smsc": None, "attempts": 0}
                                       for data in parts]}
        if self.serving:
            self.docs[key] = doc
        yield self.storage.set(self.domain, key, STORE, doc)
        if self.docs.get(key) is doc:  # else the owner (maybe this node, since) reads it from storage
            self.pending.extend((key, index) for index in range(len(parts)))
            self.wake()
        return key

    def wake(self):
        for link in self.links:
            link.wake()

    # -- the links' side ---------------------------------------------------

    def take(self, link):
        """The next part for ``link``, marked ``sending`` (its ``recorded`` fires once that is stored), or None."""
        if not self.may_send():
            return None
        while self.pending:
            key, index = self.pending.popleft()
            doc = self.docs.get(key)
            if doc is None or doc["parts"][index]["state"] != "pending":
                continue
            doc["parts"][index]["state"] = "sending"
            doc["parts"][index]["smsc"] = link.name
            return Job(key, index, doc, self._save(key))
        return None

    def submitted(self, link, job, message_id):
        self.counters.sms_submits["accepted"] += 1
        doc = self.docs.get(job.key)
        if doc is None:
            return
        part = doc["parts"][job.index]
        part.update(state="submitted" if job.receipt else "delivered", id=message_id, smsc=link.name)
        if job.receipt:
            for form in id_keys(message_id):
                self.storage.set(self.domain, f"{link.name}/{form}", ID_STORE, {"key": job.key, "part": job.index})
            self._expire_later(job.key)
        self._save(job.key)
        self._check_final(job.key)

    def retry(self, link, job):
        """The part was not accepted yet (throttled, link lost): it goes back to the front."""
        self.counters.sms_submits["retried"] += 1
        doc = self.docs.get(job.key)
        if doc is None or doc["parts"][job.index]["state"] != "sending":
            return
        doc["parts"][job.index]["state"] = "pending"
        self._save(job.key)
        self.pending.appendleft((job.key, job.index))
        self._check_final(job.key)
        self.wake()

    def rejected(self, link, job, status):
        doc = self.docs.get(job.key)
        if doc is None:
            return
        part = doc["parts"][job.index]
        part["attempts"] += 1
        if status in pdus.TRANSIENT and part["attempts"] < self.config.max_attempts:
            self.counters.sms_submits["retried"] += 1
            part["state"] = "retrying"
            self._save(job.key)
            log.info("SMS {key} part {index}: status 0x{status:02x}, retrying", key=job.key, index=job.index,
                     status=status)
            timer = self.clock.callLater(self.config.retry_seconds, self._requeue, job.key, job.index)
            self._retry_timers.add(timer)
            return
        self.counters.sms_submits["rejected"] += 1
        part["state"] = "failed"
        part["error"] = f"SMSC status 0x{status:02x}"
        self._save(job.key)
        self._check_final(job.key)

    def _requeue(self, key, index):
        self._retry_timers = {timer for timer in self._retry_timers if timer.active()}
        doc = self.docs.get(key)
        if doc is not None and doc["parts"][index]["state"] == "retrying":
            doc["parts"][index]["state"] = "pending"
            self._save(key)
            self.pending.append((key, index))
            self.wake()

    def _expire_later(self, key):
        timer = self.clock.callLater(self.config.receipt_timeout_hours * 3600, self._expire, key)
        self._retry_timers.add(timer)

    def _expire(self, key):
        """No receipt in time: parts still submitted count as delivered to the SMSC (no failure known)."""
        doc = self.docs.get(key)
        if doc is None:
            return
        for part in doc["parts"]:
            if part["state"] == "submitted":
                part["state"] = "expired"
        self._check_final(key)

    def deliver_received(self, link, received):
        """A deliver_sm: a receipt updates the queue; anything else is a mobile-originated message."""
        esm_class = received.esm_class or 0
        receipted = getattr(received, "receipted_message_id", None)
        if esm_class & 0x3C in (0x04, 0x08, 0x10, 0x20) or receipted:
            return self.receipt(link, received)
        if self.on_mo is not None:
            return self.on_mo(link, received)
        return None

    @defer.inlineCallbacks
    def receipt(self, link, received):
        receipts = self.counters.sms_receipts
        message_id, stat = parse_receipt(received)
        if message_id is None:
            receipts["unmatched"] += 1
            log.info("SMSC {name}: a receipt without an id", name=link.name)
            return
        entry = None
        for form in id_keys(message_id):
            entry = yield self.storage.get(self.domain, f"{link.name}/{form}", ID_STORE)
            if entry is not None:
                break
        if entry is None or entry["key"] not in self.docs:
            receipts["unmatched"] += 1
            log.info("SMSC {name}: receipt for unknown message id {id}", name=link.name, id=message_id)
            return
        state = RECEIPT_STATES.get(stat)
        receipts[state or "not final"] += 1
        if state is None:
            return  # ENROUTE, ACCEPTD: not final
        key = entry["key"]
        part = self.docs[key]["parts"][entry["part"]]
        if part["state"] in FINAL:
            return
        part["state"] = state
        if state == "failed":
            part["error"] = f"delivery receipt {stat}"
        yield self._save(key)
        self._check_final(key)

    def _check_final(self, key):
        """Finish the message when every part has a final state (or one part failed)."""
        doc = self.docs.get(key)
        if doc is None:
            return
        parts = doc["parts"]
        failed = [part for part in parts if part["state"] == "failed"]
        if failed:
            # The message cannot arrive whole: parts not yet sent are not sent.
            for part in parts:
                if part["state"] in ("pending", "retrying"):
                    part["state"] = "failed"
            if any(part["state"] == "sending" for part in parts):
                self._save(key)
                return
            self._finish(key, doc, "failed", failed[0].get("error"))
        elif all(part["state"] in ("delivered", "expired") for part in parts):
            delivered = all(part["state"] == "delivered" for part in parts)
            self._finish(key, doc, "delivered" if delivered else "expired", None)

    def _finish(self, key, doc, outcome, reason):
        del self.docs[key]
        self._save(key)
        for part in doc["parts"]:
            if part["id"] and part["smsc"]:
                for form in id_keys(part["id"]):
                    self.storage.set(self.domain, f"{part['smsc']}/{form}", ID_STORE, None)
        try:
            self.on_final(doc, outcome, reason)
        except Exception:
            log.failure("SMS final report failed")

    def stop(self):
        for timer in self._retry_timers:
            if timer.active():
                timer.cancel()
        self._retry_timers.clear()


def parse_receipt(received):
    """(message id, stat) of a delivery receipt: TLVs first, else the text 'id:... stat:...'."""
    message_id = pdus.text_field(getattr(received, "receipted_message_id", None)) or None
    state = getattr(received, "message_state", None)
    stat = MESSAGE_STATES.get(state) if state is not None else None
    text = (received.short_message or b"").decode("latin-1", "replace")
    fields = {}
    for token in text.replace("submit date", "submit_date").replace("done date", "done_date").split():
        name, sep, value = token.partition(":")
        if sep and name.lower() not in fields:
            fields[name.lower()] = value
    message_id = message_id or fields.get("id")
    stat = stat or (fields.get("stat") or "").upper() or None
    return message_id, stat

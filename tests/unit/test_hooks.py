"""The hook contract (core/hooks.py): verdicts, phases, held events, settling, and the caches of
core/storage/cache.py that make asynchronous storage safe for features."""

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.hooks import AMEND, FALLBACK, HANDLE, OBSERVE, POLICY, Dispatch, Hooks, Settling
from bridge.core.storage.cache import DocumentCache, KeyedLock
from bridge.core.xmlstream import parse_element

from tests.unit.helpers import LateStorage


class Payload:
    """What a dispatch carries (an Event has these attributes)."""

    def __init__(self, stanza=None):
        self.stanza = stanza if stanza is not None else parse_element("<message/>")
        self.dispatch = None

    def hold(self):
        return self.dispatch.hold()


class ContractTests(SynchronousTestCase):
    def test_phases_run_in_order_and_a_verdict_stops(self):
        """Handlers run POLICY, AMEND, OBSERVE, HANDLE, FALLBACK whatever the order they were added in;
        the first true answer stops the event."""
        hooks, seen = Hooks(), []
        for name, phase in (("fallback", FALLBACK), ("handle", HANDLE), ("policy", POLICY), ("observe", OBSERVE),
                            ("amend", AMEND)):
            hooks.add("e", lambda payload, name=name: seen.append(name) or name == "handle", phase)
        self.assertTrue(hooks.fire("e", None))
        self.assertEqual(seen, ["policy", "amend", "observe", "handle"])

    def test_a_deferred_is_a_broken_contract(self):
        """A handler that returns a Deferred is logged as an error and counts as handled, so the
        core never answers twice."""
        errors = []
        globalLogPublisher.addObserver(errors.append)
        self.addCleanup(globalLogPublisher.removeObserver, errors.append)
        hooks, later = Hooks(), []
        hooks.add("e", lambda payload: defer.Deferred())
        hooks.add("e", later.append, FALLBACK)
        self.assertTrue(hooks.fire("e", "x"))
        self.assertEqual(later, [])
        self.assertTrue(any("returned a Deferred" in str(event.get("log_format")) for event in errors))

    def test_a_failing_handler_counts_as_handled(self):
        """A handler that raises is logged and stops the event."""
        hooks, later = Hooks(), []
        hooks.add("e", lambda payload: 1 / 0)
        hooks.add("e", later.append, FALLBACK)
        self.assertTrue(hooks.fire("e", "x"))
        self.assertEqual(later, [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_remove_owner(self):
        """Everything one owner registered goes in one call; the others' handlers stay."""
        hooks, seen = Hooks(), []
        mine, theirs = object(), object()
        hooks.add("a", lambda p: seen.append("mine-a"), owner=mine)
        hooks.add("b", lambda p: seen.append("mine-b"), owner=mine)
        hooks.add("a", lambda p: seen.append("theirs"), owner=theirs)
        hooks.remove_owner(mine)
        hooks.fire("a", None)
        hooks.fire("b", None)
        self.assertEqual(seen, ["theirs"])
        self.assertEqual(hooks.handlers("b"), ())


class HeldTests(SynchronousTestCase):
    def setUp(self):
        self.hooks = Hooks()
        self.seen = []
        self.defaulted = []

    def dispatch(self, payload):
        stages = ((self.hooks, "first"), (self.hooks, "second"))
        return Dispatch(payload, stages, self.defaulted.append).run()

    def holder(self, store):
        def handler(payload):
            self.seen.append("holder")
            store.append(payload.hold())
            return True
        return handler

    def test_resume_passes_on_to_the_later_handlers_and_the_default(self):
        """A held event waits; resumed, it goes on with the handler after the holder, the next stage
        and the core's default, once."""
        held = []
        self.hooks.add("first", self.holder(held), POLICY)
        self.hooks.add("first", lambda p: self.seen.append("after") and False)
        self.hooks.add("second", lambda p: self.seen.append("second") and False)
        payload = Payload()
        self.assertTrue(self.dispatch(payload))
        self.assertEqual((self.seen, self.defaulted), (["holder"], []))
        held[0].resume()
        self.assertEqual(self.seen, ["holder", "after", "second"])
        self.assertEqual(self.defaulted, [payload])
        self.assertRaises(RuntimeError, held[0].resume)

    def test_finish_ends_it(self):
        """A finished held event reaches no later handler and no default."""
        held = []
        self.hooks.add("first", self.holder(held), POLICY)
        self.hooks.add("second", lambda p: self.seen.append("second"))
        self.dispatch(Payload())
        held[0].finish()
        self.assertEqual((self.seen, self.defaulted), (["holder"], []))
        self.assertRaises(RuntimeError, held[0].finish)

    def test_resumed_within_the_handler(self):
        """A holder whose answer comes at once (storage in memory) may resume before it returns: the
        event goes on exactly once."""
        def handler(payload):
            payload.hold().resume()
            return True

        self.hooks.add("first", handler, POLICY)
        self.hooks.add("second", lambda p: self.seen.append("second") and False)
        payload = Payload()
        self.dispatch(payload)
        self.assertEqual((self.seen, self.defaulted), (["second"], [payload]))

    def test_settling_counts_every_dispatch_and_hold(self):
        """A stanza with a Settling is settled once every dispatch it went through has ended: not while
        a handler holds it, and only once."""
        settled = []
        stanza = parse_element("<message/>")
        stanza.settling = Settling(lambda: settled.append(True))
        held = []
        self.hooks.add("second", self.holder(held))
        stanza.settling.enter()
        self.dispatch(Payload(stanza))
        stanza.settling.leave()
        self.assertEqual(settled, [])
        held[0].resume()
        self.assertEqual(settled, [True])


class KeyedLockTests(SynchronousTestCase):
    def test_one_key_at_a_time_and_keys_apart(self):
        """Runs of one key wait for each other in order; another key does not wait; failures pass
        through without stopping the next run; an idle key keeps nothing."""
        lock, steps = KeyedLock(), []
        first, second = defer.Deferred(), defer.Deferred()
        a1 = lock.run("a", lambda: steps.append("a1") or first)
        a2 = lock.run("a", lambda: steps.append("a2") or second)
        lock.run("b", lambda: steps.append("b1"))
        self.assertEqual(steps, ["a1", "b1"])
        first.errback(ValueError("a1 failed"))
        self.failureResultOf(a1, ValueError)
        self.assertEqual(steps, ["a1", "b1", "a2"])
        second.callback("done")
        self.assertEqual(self.successResultOf(a2), "done")
        self.assertEqual(lock._waiting, {})

    def test_a_long_queue_of_steps_that_finish_at_once(self):
        """Thousands of steps queued behind one that waits all run, in order, when it ends, though each
        finishes at once: no RecursionError (a login shown the presence of hundreds of colleagues)."""
        lock, steps = KeyedLock(), []
        held = defer.Deferred()
        lock.run("a", lambda: held)
        results = [lock.run("a", lambda n=n: steps.append(n)) for n in range(3000)]
        held.callback(None)
        self.assertEqual(steps, list(range(3000)))
        self.assertEqual([self.successResultOf(result) for result in results[-2:]], [None, None])
        self.assertEqual(lock._waiting, {})


class DocumentCacheTests(SynchronousTestCase):
    def test_one_read_one_object_bounded(self):
        """Two loads during one read share it and get the same object; the most recently used stay in
        memory up to the limit; a save is kept and written."""
        storage = LateStorage()
        cache = DocumentCache(storage, "roster", decode=lambda stored: dict(stored or {}), limit=2)
        result = storage.storage.set("h", "a", "roster", {"x": 1})
        self.successResultOf(result)
        storage.late = True
        one, two = cache.load("h", "a"), cache.load("h", "a")
        self.assertEqual(len(storage.waiting), 1)
        storage.answer()
        self.assertIs(self.successResultOf(one), self.successResultOf(two))
        storage.late = False
        for user in ("b", "c"):
            self.successResultOf(cache.load("h", user))
        self.assertIsNone(cache.cached("h", "a"))
        document = self.successResultOf(cache.load("h", "c"))
        document["y"] = 2
        self.successResultOf(cache.save("h", "c", document))
        self.assertEqual(self.successResultOf(storage.storage.get("h", "c", "roster")), {"y": 2})

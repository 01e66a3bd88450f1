"""Named events and their handlers, in the manner of Prosody's event hooks.

Feature modules and gateways hook precisely named events (``message/bare``,
``iq-get/host/urn:xmpp:ping:ping``).  The contract of a handler:

* it answers at once: a true value means *handled* (propagation stops), a
  false one *not handled* (the next handler runs);
* asynchronous work is started explicitly and never decides propagation.  A
  handler that must wait for something before it can decide *holds* the
  event (``Event.hold()``), answers handled, and later either passes the event
  on to the handlers after it (``Held.resume()``) or ends it
  (``Held.finish()``);
* a handler that returns a Deferred breaks this contract: it is logged as an
  error and counted as handled, so the core never answers twice.

Handlers run by descending priority.  Modules never name each other's
numbers: they pick one of the phases below (docs/architecture.md lists which
module uses which phase on which event).  Each registration belongs to an
owner, so everything one module registered is undone in one call.
"""

import functools
import itertools

from twisted.internet import defer
from twisted.logger import Logger

from bridge.core.stanza import error_reply

log = Logger()

# The phases of an event, in the order they run.
POLICY = 100  # may refuse the stanza (block lists)
AMEND = 50  # changes the stanza in place and passes it on (the vCard photo hash)
OBSERVE = 25  # sees the stanza and passes it on (archives, SIP watchers)
HANDLE = 0  # takes the stanza (the ordinary handler of an event)
FALLBACK = -50  # takes what no other handler took (offline storage)


class Hooks:
    """The handlers of each event, each list kept sorted and immutable between changes."""

    def __init__(self):
        self._entries = {}  # event -> [(-priority, order, handler, owner)]
        self._handlers = {}  # event -> tuple of handlers in running order
        self._order = itertools.count()

    def add(self, event, handler, priority=HANDLE, owner=None):
        """Call ``handler(payload)`` when ``event`` fires."""
        entries = self._entries.setdefault(event, [])
        entries.append((-priority, next(self._order), handler, owner))
        entries.sort(key=lambda entry: entry[:2])
        self._handlers[event] = tuple(entry[2] for entry in entries)

    def remove_owner(self, owner):
        """Undo every registration made by ``owner``."""
        for event in list(self._entries):
            kept = [entry for entry in self._entries[event] if entry[3] is not owner]
            if kept:
                self._entries[event] = kept
                self._handlers[event] = tuple(entry[2] for entry in kept)
            else:
                del self._entries[event]
                del self._handlers[event]

    def handlers(self, event):
        """The handlers of ``event`` in running order (a snapshot)."""
        return self._handlers.get(event, ())

    def fire(self, event, payload):
        """Run the handlers of ``event``; True when one of them handled it.

        For events whose handlers never hold (``session/bound``, stream
        features, ``offline/stored``); stanzas go through ``dispatch``.
        """
        for handler in self._handlers.get(event, ()):
            if answer(handler, payload, event):
                return True
        return False


def answer(handler, payload, event):
    """Call one handler under the contract: its verdict, a failure counting as handled."""
    try:
        result = handler(payload)
    except Exception:
        log.failure("handler of {event} failed", event=event)
        return True
    if result is True or result is False:
        return result  # the usual answers, spared the Deferred check (costly: Deferred is generic)
    if isinstance(result, defer.Deferred):
        log.error("handler {handler!r} of {event} returned a Deferred; a handler answers at once",
                  handler=handler, event=event)
        result.addErrback(lambda failure: log.failure("handler of {event} failed", failure, event=event))
        return True
    return bool(result)


class Settling:
    """Tells when a stanza has left the core: every dispatch it went through ended.

    Whoever must keep a durable copy of a stanza until the core is done with
    it (the SIP gateway, between its 202 and the delivery) attaches one to the
    stanza before submitting it; ``on_settled`` runs once, when the count of
    dispatches under way for it falls back to zero.
    """

    __slots__ = ("pending", "on_settled")

    def __init__(self, on_settled):
        self.pending = 0
        self.on_settled = on_settled

    def enter(self):
        self.pending += 1

    def leave(self):
        self.pending -= 1
        if self.pending == 0 and self.on_settled is not None:
            on_settled, self.on_settled = self.on_settled, None
            on_settled()


def settling_of(stanza):
    # The instance's own attribute only: domish's __getattr__ would answer
    # with a child element of that name, which anyone may put in a stanza.
    return stanza.__dict__.get("settling")


class Dispatch:
    """One payload's way through several events in turn, then the core's default action.

    ``stages`` is a sequence of (Hooks, event name); ``default(payload)``
    runs when no handler of any stage handled the payload.  The payload (an
    ``Event``) carries its dispatch, so that a handler may hold it, until
    the dispatch ends: the link is cut then, so that a payload and its
    dispatch are freed at once rather than left to the cycle collector.
    """

    __slots__ = ("payload", "stages", "default", "stage", "index", "handlers", "holds", "settling")

    def __init__(self, payload, stages, default=None):
        self.payload = payload
        self.stages = stages
        self.default = default
        self.holds = 0
        self.settling = settling = settling_of(payload.stanza)
        if settling is not None:
            settling.enter()
        payload.dispatch = self

    def run(self, stage=0, index=0, handlers=None):
        """Run from ``stage``/``index``; True when a handler handled (or holds) the payload."""
        payload, stages = self.payload, self.stages
        while stage < len(stages):
            hooks, event = stages[stage]
            if handlers is None:
                handlers = hooks.handlers(event)
            # Where a handler that holds the payload stands (see ``hold``).
            self.stage, self.handlers = stage, handlers
            while index < len(handlers):
                handler = handlers[index]
                index += 1
                self.index = index
                holds = self.holds
                handled = answer(handler, payload, event)
                if self.holds != holds:
                    return True  # the holder ends the dispatch, perhaps already has
                if handled:
                    self.ended()
                    return True
            stage, index, handlers = stage + 1, 0, None
        if self.default is not None:
            self.default(payload)
        self.ended()
        return False

    def hold(self):
        """For the handler now running: the payload waits for it (see ``Held``)."""
        self.holds += 1
        return Held(self, self.stage, self.index, self.handlers)

    def ended(self):
        if self.payload.dispatch is self:
            self.payload.dispatch = None
        if self.settling is not None:
            self.settling.leave()


class Held:
    """An event a handler took for asynchronous work: it ends by ``resume`` or ``finish``, once."""

    __slots__ = ("dispatch", "stage", "index", "handlers")

    def __init__(self, dispatch, stage, index, handlers):
        self.dispatch = dispatch
        self.stage, self.index, self.handlers = stage, index, handlers

    def resume(self):
        """Pass the event on to the handlers after the holder, then to the core's default."""
        self._release().run(self.stage, self.index, self.handlers)

    def finish(self):
        """The holder is done with the event: nothing more happens to it."""
        self._release().ended()

    def _release(self):
        if self.dispatch is None:
            raise RuntimeError("a held event is resumed or finished once")
        dispatch, self.dispatch = self.dispatch, None
        return dispatch


def in_background(handled=True):
    """Decorate a handler whose work returns a Deferred: it answers ``handled`` at once.

    The work goes on by itself; its failure is logged, and an IQ get or set
    whose handler failed is answered ``internal-server-error``.
    """

    def decorate(work):
        @functools.wraps(work)
        def handler(*args):
            d = defer.maybeDeferred(work, *args)
            d.addErrback(_work_failed, args, work.__qualname__)
            return handled

        return handler

    return decorate


def _work_failed(failure, args, name):
    log.failure("{name} failed", failure, name=name)
    for event in args:
        stanza = getattr(event, "stanza", None)
        if stanza is not None and stanza.name == "iq" and stanza.getAttribute("type") in ("get", "set"):
            event.server.router.route(error_reply(stanza, "internal-server-error"))
            return

"""A registry of named events, in the manner of Prosody's event hooks.

Feature modules hook precisely named events (``message/bare``,
``iq-get/host/urn:xmpp:ping:ping``); handlers run by descending priority and
the first that returns a true value stops propagation.  Each registration
belongs to an owner so that everything one module registered can be undone
in one call.
"""

import bisect
import itertools

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


class Hooks:
    def __init__(self):
        self._handlers = {}
        self._owned = {}
        self._order = itertools.count()

    def add(self, event, handler, priority=0, owner=None):
        """Call ``handler(payload)`` when ``event`` fires."""
        entry = (-priority, next(self._order), handler)
        bisect.insort(self._handlers.setdefault(event, []), entry)
        self._owned.setdefault(owner, []).append((event, entry))

    def remove_owner(self, owner):
        """Undo every registration made by ``owner``."""
        for event, entry in self._owned.pop(owner, []):
            self._handlers[event].remove(entry)
            if not self._handlers[event]:
                del self._handlers[event]

    def fire(self, event, payload):
        """Run the handlers of ``event``; True when one of them handled it.

        A handler that returns a Deferred has taken the event on; its failure
        is logged.  A handler that raises is logged and counts as having handled the
        event, so that one faulty module cannot make the core answer twice.
        """
        for _, _, handler in list(self._handlers.get(event, ())):
            try:
                result = handler(payload)
                if isinstance(result, defer.Deferred):
                    result.addErrback(lambda failure: log.failure("handler of {event} failed", failure, event=event))
                    return True
                if result:
                    return True
            except Exception:
                log.failure("handler of {event} failed", event=event)
                return True
        return False

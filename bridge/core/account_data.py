"""The events by which the features that keep an account's data tell of changes and take writes.

Some data of an account lives twice, in two features' stores, for two
generations of clients: the avatar in the vCard (XEP-0153) and in PEP
(XEP-0084), the bookmarks in private storage (XEP-0048) and in PEP
(XEP-0402).  No feature reaches into another's store.  The feature that
keeps the data fires ``<store>/changed`` with a ``Changed`` after a client
changed it, and takes a ``Write`` on ``<store>/write``; a conversion
module (``features/avatars.py``, ``features/bookmarks.py``) listens to
one side and writes to the other.  A write never fires ``changed``, so a
conversion never feeds itself.  A conversion adds its work to the change's
``pending``; the client's request is answered once it is done (``settled``),
so a client that reads the other store after the answer finds the change
there.  No feature waits for it while it holds its lock of the account.

The events, on each local host:

* ``vcard/changed`` (``Changed``: ``value`` the new vCard element,
  ``previous`` the SHA-1 of the old photo); ``vcard/write`` (``Write``:
  ``value`` (type, bytes) of the new photo, or None for none).
* ``private/changed`` (``name`` "namespace element-name", ``value`` the
  stored element); ``private/write`` (``value`` the element to store);
  ``private/read`` (``done`` fires with the element stored under ``name``,
  or None).
* ``pep/changed`` (``name`` the node, ``value`` its items after the change,
  [id, payload XML] oldest first, ``read(node)`` the items of another node
  of the account); ``pep/write`` (``value`` the node's items from now on,
  [id, payload element]; ``options`` its configuration when it is created).
"""

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


class Changed:
    """What a client changed in ``owner``'s (bare JID) data."""

    def __init__(self, owner, name, value, previous=None, read=None):
        self.owner = owner
        self.name = name
        self.value = value
        self.previous = previous
        self.read = read
        self.pending = []  # the conversions' Deferreds

    def settled(self):
        """A Deferred that fires (with None) once every conversion of the change is done or failed."""
        return defer.DeferredList(self.pending, consumeErrors=True).addCallback(lambda _: None)

    def wait_for(self, d, what):
        """The change settles after ``d`` (a conversion's write; None: no feature took it), whose failure is
        logged as ``what`` of the owner not converted."""
        if d is not None:
            d.addErrback(lambda failure: log.failure("{what} of {owner} not converted", failure, what=what,
                                                     owner=self.owner))
            self.pending.append(d)


class Write:
    """A change asked of the feature that keeps the data; ``done`` fires when it is stored (or failed)."""

    def __init__(self, owner, name, value, options=None):
        self.owner = owner
        self.name = name
        self.value = value
        self.options = options or {}
        self.done = defer.Deferred()


def ask(ctx, event, owner, name, value, options=None):
    """Fire ``event`` with a Write (or a read); its Deferred, or None when no feature takes it here."""
    request = Write(owner, name, value, options)
    return request.done if ctx.fire(event, request) else None

"""The routing table: every stanza of every listener is delivered through it.

A route is any object with ``deliver(stanza)``.  Routes are keyed by domain:
each local host (and each of its aliases), components, the SIP and SMS
gateways; remote servers are reached through the default route, which the
federation module sets.  A stanza that no route takes is answered with
``remote-server-not-found``, unless it is itself an error or a result.
"""

import time

from twisted.logger import Logger

from bridge.core.counters import ROUTE_SECONDS_BUCKETS, Histogram, stanza_table
from bridge.core.stanza import error_reply, is_error_or_result, parse_jid

log = Logger()


class RoutingTable:
    """``timer``: seconds of a monotonic clock (``time.perf_counter``), which times each stanza's ``route``
    (``route_seconds``): its way through the route to the write on a local session's stream, or into a
    queue (a remote server's link, storage).  What is routed on the way (a room's copies of a message,
    replies, bounces) is within that time, not observed again."""

    def __init__(self, timer=time.perf_counter):
        self._routes = {}
        self.default_route = None
        # Stanzas handed to a route, and error replies made for those no route took, by stanza name.
        self.routed = stanza_table()
        self.bounced = stanza_table()
        self.route_seconds = Histogram(ROUTE_SECONDS_BUCKETS)
        self._timer = timer
        self._routing = False  # a stanza routed meanwhile (a room's copies, a reply) is timed within it

    def addRoute(self, domain, route):
        """Make ``route`` receive the stanzas addressed to ``domain``."""
        self._routes[domain.lower()] = route

    def removeRoute(self, domain, route):
        if self._routes.get(domain.lower()) is route:
            del self._routes[domain.lower()]

    def lookup(self, domain):
        """The route for ``domain``: its own, else the default (may be None)."""
        return self._routes.get(domain, self.default_route)

    def is_local(self, domain):
        return domain in self._routes

    def route(self, stanza):
        """Deliver ``stanza`` to the route of its 'to' domain."""
        outermost = not self._routing
        if outermost:
            self._routing = True
            started = self._timer()
        try:
            to = parse_jid(stanza.getAttribute("to"))
            route = None if to is None else self._routes.get(to.host, self.default_route)
            if route is None:
                self.bounce(stanza, "jid-malformed" if to is None else "remote-server-not-found")
            else:
                if stanza.name in self.routed:
                    self.routed[stanza.name] += 1
                route.deliver(stanza)
        finally:
            if outermost:
                self._routing = False
                self.route_seconds.observe(self._timer() - started)

    def bounce(self, stanza, condition, text=None):
        """Return an error to the sender of ``stanza`` (never for an error or result)."""
        if is_error_or_result(stanza) or not stanza.hasAttribute("from"):
            log.debug("dropped {name} to {to}: {condition}", name=stanza.name, to=stanza.getAttribute("to"),
                      condition=condition)
            return
        if stanza.name in self.bounced:
            self.bounced[stanza.name] += 1
        reply = error_reply(stanza, condition, text)
        if not reply.hasAttribute("from"):
            del reply["from"]
        self.route(reply)

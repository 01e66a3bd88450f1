"""The server: the shared state every stream, feature and gateway is given.

One ``Server`` per process holds the routing table, the session table, the
hooks, storage, accounts and the clock.  Features receive a ``FeatureContext``
that records what they register, so the core can undo all of it.
"""

import datetime
import os

from twisted.logger import Logger

from bridge.core.accounts import Accounts
from bridge.core.attempts import FailedAttempts
from bridge.core.delivery import Event, LocalHost, event_name, target_of
from bridge.core.hooks import Hooks
from bridge.core.roster import Rosters
from bridge.core.sasl import Decoys
from bridge.core.router import RoutingTable
from bridge.core.sessions import SessionTable
from bridge.core.stanza import parse_jid

log = Logger()


class Server:
    """``secret``: the server's secret (``bridge.core.datadir.server_secret``); without one, a
    secret for this process only, as suits a server whose accounts do not outlive it (tests)."""

    def __init__(self, config, storage, clock, secret=None):
        self.config = config
        self.storage = storage
        self.clock = clock
        self.hooks = Hooks()
        self.router = RoutingTable()
        self.sessions = SessionTable()
        self.features = {}  # name -> FeatureContext of each loaded feature module
        self.failed_logins = FailedAttempts(clock)  # wrong SASL answers per client address
        # XEP-0198 resumption id -> Session, while it may be resumed.
        self.resumable_sessions = {}
        self.accounts = Accounts(storage)
        # What SASL answers for names without an account, stable across restarts.
        self.decoys = Decoys(secret or os.urandom(32))
        self.rosters = Rosters(storage, self.sessions, self.router)
        self.hosts = {}
        self.disco_features = {}
        self.disco_identities = {}
        self.disco_items = {}
        for name, host_config in config.hosts.items():
            host = LocalHost(self, name, host_config)
            self.hosts[name] = host
            for domain in (name, *host_config.aliases):
                self.router.addRoute(domain, host)

    def now(self):
        """The clock's time as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)

    def stanza_from_session(self, session, stanza):
        """The one entry of a stanza sent by a local client: stamp, hook, route."""
        stanza["from"] = session.full
        to_text = stanza.getAttribute("to")
        if to_text is None:
            if stanza.name == "presence":
                self.hooks.fire("pre-presence/self", self._event(stanza, None, session))
                return
            stanza["to"] = session.bare
            to = session.jid.userhostJID()
        else:
            to = parse_jid(to_text)
            if to is None:
                self.router.bounce(stanza, "jid-malformed")
                return
        event = self._event(stanza, to, session)
        if self.hooks.fire("stanza/out", event) or self.hooks.fire("pre-" + event_name(stanza, target_of(to)), event):
            return
        self.router.route(stanza)

    def _event(self, stanza, to, session):
        host = self.hosts[session.jid.host]
        return Event(self, stanza, host, to, session.jid, origin=session)

    def host_of(self, jid):
        """The LocalHost serving ``jid`` (by name or alias), or None."""
        name = self.config.host_for(jid.host)
        return self.hosts.get(name) if name else None


class FeatureContext:
    """What a feature module may touch, with its registrations recorded."""

    def __init__(self, server, name):
        self.server = server
        self.name = name
        self.router = server.router
        self.sessions = server.sessions
        self.storage = server.storage
        self.accounts = server.accounts
        self.rosters = server.rosters
        self.clock = server.clock
        self.config = server.config

    def hook(self, event, handler, priority=0):
        self.server.hooks.add(event, handler, priority, owner=self.name)

    def fire(self, event, payload):
        return self.server.hooks.fire(event, payload)

    def add_feature(self, namespace, where="host"):
        """Announce ``namespace`` in disco#info of hosts ("host") or accounts ("account")."""
        self.server.disco_features.setdefault(where, {})[namespace] = self.name

    def add_identity(self, category, kind, name, where="host"):
        self.server.disco_identities.setdefault(where, []).append((category, kind, name, self.name))

    def route(self, stanza):
        self.server.router.route(stanza)

    def unload(self):
        """Undo everything this feature registered."""
        self.server.hooks.remove_owner(self.name)
        for features in self.server.disco_features.values():
            for namespace in [ns for ns, owner in features.items() if owner == self.name]:
                del features[namespace]
        for where, identities in self.server.disco_identities.items():
            identities[:] = [entry for entry in identities if entry[3] != self.name]

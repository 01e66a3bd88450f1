"""The server: the shared state of one process, and the contexts its modules are given.

One ``Server`` per process holds the routing table, the session table,
storage, accounts, the clock and the hosts.  Nothing below it reaches into
it directly: a feature module loaded on a host receives a ``FeatureContext``,
a gateway a ``GatewayContext``, and each records what its module registered
so that ``unload()`` undoes all of it.

``stanza_from_session`` is the one way in for what a local user says,
whatever carried it: an XMPP client's stream, a SIP phone's MESSAGE or
PUBLISH, an SMS from the user's own number.  Block lists, archives and every
``stanza/out`` handler therefore see all of them alike.
"""

import datetime
import hashlib
import hmac
import os
import re
import weakref

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from bridge.core.accounts import Accounts, sip_digest_algorithms
from bridge.core.attempts import FailedAttempts
from bridge.core.counters import Counters, Levels
from bridge.core.delivery import ComponentHost, Event, LocalHost, event_name, target_of
from bridge.core.hooks import HANDLE, Dispatch
from bridge.core.logbudget import LogBudget
from bridge.core.ownership import SoleOwnership
from bridge.core.roster import Rosters
from bridge.core.router import RoutingTable
from bridge.core.sasl import Decoys
from bridge.core.sessions import SessionTable
from bridge.core.stanza import make, parse_jid
from bridge.core.storage.cache import DocumentCaches
from bridge.core.triage import Triage
from bridge.core.xmlstream import Dormancy

log = Logger()

# Where the domains that administrators refused federation at run time are kept (a sorted list).
BLOCKED_DOMAINS_STORE = "blocked-domains"
# The longest announcement or message of the day (UTF-8).
MAX_ANNOUNCE_BYTES = 8192


def headline(sender, to, text):
    """A message of type headline: what the server itself says to a user (announcements)."""
    message = make("message", to=to, sender=sender, type="headline")
    message.addElement("body", content=text)
    return message


def _route_event(event):
    event.server.router.route(event.stanza)


class Server:
    """``secret``: the server's secret (``bridge.core.datadir.server_secret``); without one, a
    secret for this process only, as suits a server whose accounts do not outlive it (tests).
    ``directories``: {host: ``DirectoryAccounts``} of the hosts whose users live in LDAP."""

    def __init__(self, config, storage, clock, secret=None, directories=None):
        self.config = config
        self.storage = storage
        self.clock = clock
        self.router = RoutingTable()
        self.sessions = SessionTable()
        self.counters = Counters()  # what the hot paths count, for the metrics listener
        self.levels = Levels()  # the queue depths and tables that modules own, read when scraped
        self.failed_logins = FailedAttempts(clock)  # wrong SASL answers per client address
        # Rations the work of peers that have not authenticated while the process is saturated.
        self.triage = Triage(clock, config.c2s.unauthenticated_share)
        self.log_budget = LogBudget(clock)  # the lines that peers' refusals and stream errors may log
        self.dormancy = Dormancy()  # lets the parsers of quiet streams rest (ticked by the service)
        # XEP-0198 resumption id -> Session, while it may be resumed.
        self.resumable_sessions = {}
        self.cluster = None  # bridge.core.cluster.Cluster, when [cluster] makes this process one node of several
        self.document_caches = DocumentCaches()  # what the cluster shares with the other nodes
        # Who serves what one node at a time serves (bridge.core.ownership): the cluster's, or this process alone.
        self.ownership = SoleOwnership()
        self.accounts = Accounts(storage, sip_digest_algorithms(config), directories)
        # What SASL answers for names without an account, stable across restarts.
        self.secret = secret or os.urandom(32)
        self.decoys = Decoys(self.secret)
        self.rosters = Rosters(storage, self.sessions, self.router,
                               config.quotas.max_roster_items_per_user, self.document_caches)
        self.hosts = {}  # the local hosts (accounts), by name
        # Domains refused federation by an administrator at run time (XEP-0133), beside [s2s] denied_domains.
        self.blocked_domains = frozenset()
        self.component_hosts = {}  # the hosts of gateways and services, by domain
        # Paths of the HTTP listener that a gateway serves: prefix -> handler (see gateways/http.py).
        self.http_routes = {}
        self.http_listeners = []  # (tls, ListenerService) of the HTTP listener, to learn its ports
        for name, host_config in config.hosts.items():
            host = LocalHost(self, name, host_config)
            self.hosts[name] = host
            for domain in (name, *host_config.aliases):
                self.router.addRoute(domain, host)

    def now(self):
        """The clock's time as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)

    def host_of(self, jid):
        """The LocalHost serving ``jid`` (by name or alias), or None."""
        name = self.config.host_for(jid.host)
        return self.hosts.get(name) if name else None

    def list_service(self, jid, name, owner, on=None):
        """Show ``jid`` in disco#items of every local host (or of the one named ``on``), until
        ``unlist_services(owner)``."""
        for host_name, host in self.hosts.items():
            if on is None or host_name == on:
                host.disco.items.append((jid, name, owner))

    def unlist_services(self, owner):
        for host in self.hosts.values():
            host.disco.items = [entry for entry in host.disco.items if entry[2] is not owner]

    # -- administration: bridgectl and the XEP-0133 commands share these --------------

    def end_sessions(self, jid, condition, text):
        """End the sessions of ``jid`` (a bare JID: all of the account's; a full JID: that one), with
        the stream error ``condition``; the sessions ended."""
        sessions = [session for session in self.sessions if jid in (session.full, session.bare)]
        for session in sessions:
            session.close(condition, text)
        log.info("administrator ended {count} sessions of {jid}", count=len(sessions), jid=jid)
        return sessions

    def delete_account(self, host, user):
        """Deferred: delete the account, then end its sessions (no new login can follow the kick);
        the number of sessions ended.  AccountError when there is no such account."""
        deleted = self.accounts.delete(host, user)
        return deleted.addCallback(
            lambda _: len(self.end_sessions(f"{user}@{host}", "not-authorized", "the account was deleted")))

    def disable_account(self, host, user, reason=""):
        """Deferred: refuse the account's logins until it is enabled again, then end its sessions."""
        disabled = self.accounts.disable(host, user, reason)
        return disabled.addCallback(
            lambda _: len(self.end_sessions(f"{user}@{host}", "not-authorized", "the account was disabled")))

    def announce(self, host, text):
        """Send ``text`` as a headline from ``host`` to every session on it; how many were sent.
        ValueError when it is longer than ``MAX_ANNOUNCE_BYTES``."""
        if len(text.encode("utf-8")) > MAX_ANNOUNCE_BYTES:
            raise ValueError(f"the message is longer than {MAX_ANNOUNCE_BYTES} bytes")
        recipients = [session for session in self.sessions if session.jid.host == host]
        for session in recipients:
            self.router.route(headline(host, session.full, text))
        log.info("announcement to {count} sessions on {host}", count=len(recipients), host=host)
        return len(recipients)

    def load_blocked_domains(self):
        """Deferred: read the domains blocked at run time from storage (at start)."""
        d = self.storage.get("", "", BLOCKED_DOMAINS_STORE)
        d.addCallback(lambda domains: setattr(self, "blocked_domains", frozenset(domains or ())))
        return d

    def set_blocked_domains(self, domains):
        """Deferred: refuse federation with ``domains`` (normalised) from now on, and after a restart."""
        self.blocked_domains = frozenset(domains)
        return self.storage.set("", "", BLOCKED_DOMAINS_STORE, sorted(self.blocked_domains))

    # -- the one way in --------------------------------------------------------

    def stanza_from_session(self, session, stanza):
        """What a local user says: 'from' stamped from the session, then hooks, then the router."""
        stanza["from"] = session.full
        host = self.hosts[session.jid.host]
        hooks = host.hooks
        to_text = stanza.getAttribute("to")
        if to_text is None:
            if stanza.name == "presence":
                event = Event(self, stanza, host, None, session.jid, origin=session)
                Dispatch(event, ((hooks, "pre-presence/self"),)).run()
                return
            stanza["to"] = session.bare
            to = session.jid.userhostJID()
        else:
            to = parse_jid(to_text)
            if to is None:
                self.router.bounce(stanza, "jid-malformed")
                return
        event = Event(self, stanza, host, to, session.jid, origin=session)
        stages = ((hooks, "stanza/out"), (hooks, "pre-" + event_name(stanza, target_of(to))))
        Dispatch(event, stages, _route_event).run()

    def presence_for_user(self, stanza):
        """Presence the server sends on a local user's behalf (a broadcast, a probe's answer):
        ``presence/out`` on the user's host, where privacy lists may refuse it, then the router."""
        sender = parse_jid(stanza.getAttribute("from"))
        host = self.hosts.get(sender.host) if sender is not None else None
        if host is None:
            self.router.route(stanza)
            return
        event = Event(self, stanza, host, parse_jid(stanza.getAttribute("to")), sender,
                      origin=self.sessions.get(sender.full()))
        Dispatch(event, ((host.hooks, "presence/out"),), _route_event).run()

    # -- sessions, whatever carries them -----------------------------------------

    def bind(self, session):
        """A new session of a local account: in the table, then ``session/bound`` on its host."""
        session.since = self.clock.seconds()
        self.sessions.add(session)
        self.hosts[session.jid.host].hooks.fire("session/bound", session)

    def unbind(self, session):
        """A session is over: ``session/ended`` on its host (unavailable presence), then out of the table."""
        self.hosts[session.jid.host].hooks.fire("session/ended", session)
        self.sessions.remove(session)


class FeatureContext:
    """What a feature module loaded on one host may touch, with its registrations recorded."""

    def __init__(self, server, host, name):
        self.server = server
        self.host = host
        self.name = name
        self.router = server.router
        self.sessions = server.sessions
        self.storage = server.storage
        self.document_caches = server.document_caches
        self.accounts = server.accounts
        self.rosters = server.rosters
        self.clock = TrackedClock(server.clock)  # its timers end with the feature
        self.feature = None

    @property
    def config(self):
        """The server's configuration of the moment (a reload replaces it)."""
        return self.server.config

    @property
    def has_accounts(self):
        """True on a local host; False on the host of a gateway or service."""
        return isinstance(self.host, LocalHost)

    def hook(self, event, handler, priority=HANDLE):
        self.host.hooks.add(event, handler, priority, owner=self)

    def fire(self, event, payload):
        return self.host.hooks.fire(event, payload)

    def add_feature(self, namespace, where="host"):
        """Announce ``namespace`` in disco#info of the host ("host") or of its accounts ("account")."""
        self.host.disco.features.append((where, namespace, self))

    def add_identity(self, category, kind, name, where="host"):
        self.host.disco.identities.append((where, category, kind, name, self))

    def add_node_source(self, answer):
        """Answer disco queries about nodes of the host (see ``DiscoEntries.node_sources``)."""
        self.host.disco.node_sources.append((answer, self))

    def route(self, stanza):
        self.server.router.route(stanza)

    def send_presence(self, stanza):
        """Send presence on behalf of the local user it is from (see ``Server.presence_for_user``)."""
        self.server.presence_for_user(stanza)

    def unload(self):
        """Undo everything this feature registered on its host, and cancel its timers."""
        self.host.hooks.remove_owner(self)
        self.host.disco.remove_owner(self)
        self.clock.cancel_all()
        if self.host.features.get(self.name) is self:
            del self.host.features[self.name]


def load_feature(server, host, name, module):
    """Load one feature module on ``host``; its context, through which it can be unloaded.

    The context keeps what the module's ``setup`` returned as ``feature``.
    """
    context = host.features[name] = FeatureContext(server, host, name)
    context.feature = module.setup(context)
    return context


@implementer(IReactorTime)
class TrackedClock:
    """A clock whose pending calls are known, so that a context can cancel them all."""

    def __init__(self, clock):
        self._clock = clock
        self._calls = weakref.WeakSet()

    def seconds(self):
        return self._clock.seconds()

    def callLater(self, delay, function, *args, **kwargs):
        call = self._clock.callLater(delay, function, *args, **kwargs)
        self._calls.add(call)
        return call

    def getDelayedCalls(self):
        return [call for call in self._calls if call.active()]

    def cancel_all(self):
        for call in self.getDelayedCalls():
            call.cancel()


class NamedStore:
    """One named store of the storage interface, for a module that keeps documents under that name."""

    def __init__(self, storage, name):
        self.storage = storage
        self.name = name

    def get(self, host, user):
        return self.storage.get(host, user, self.name)

    def set(self, host, user, value):
        return self.storage.set(host, user, self.name, value)

    def users(self, host):
        return self.storage.users(host, self.name)

    def append(self, host, user, value):
        return self.storage.append(host, user, self.name, value)

    def items(self, host, user, limit=None):
        return self.storage.items(host, user, self.name, limit)

    def count(self, host, user):
        return self.storage.count(host, user, self.name)

    def remove(self, host, user, ids):
        return self.storage.remove(host, user, self.name, ids)


class GatewayContext:
    """The only thing a gateway is given (the sibling of ``FeatureContext``).

    Through it come: the gateway's own domain (``serve``), a ``ComponentHost``
    with the ordinary feature modules loaded on it; its hooks, there and on
    the local hosts; its disco entries; its timers (``clock``); its config
    section; named storage; the one way in for what it says on a local
    user's behalf; the levels it reports to the metrics listener (``level``)
    and the counters it adds to (``counters``).
    ``unload()`` undoes every one of them.
    """

    def __init__(self, server, name, config, service_features=()):
        """``service_features``: (name, module) of the feature modules every served domain gets."""
        self._server = server
        self.name = name
        self.config = config
        self.clock = TrackedClock(server.clock)
        self.triage = server.triage
        self.counters = server.counters  # the server's ``Counters``, where a gateway counts its events
        self.storage = server.storage
        self.document_caches = server.document_caches
        self.accounts = server.accounts
        self.rosters = server.rosters
        self.sessions = server.sessions
        self.host = None  # the first domain served
        self.served = []  # every domain served, as component hosts
        self._service_features = tuple(service_features)
        self._hooked = set()  # the hosts whose hooks hold registrations of ours
        self._http_prefixes = []
        self._claims = []

    def level(self, name, documentation, read):
        """Report a level (a queue's depth, a table's size) as the metric ``bridge_<name>``: ``read()``
        gives a number or a Deferred of one, and is called only when metrics are scraped."""
        self._server.levels.add(name, documentation, read, owner=self)

    def claim(self, resource, gained, lost):
        """Serve ``resource`` (a queue, a link) only while this node owns it: ``gained()`` when it becomes
        the owner (at once without a cluster), ``lost()`` when it stops being it (bridge.core.ownership).
        The level ``bridge_owns_<resource>`` is 1 while it does; ``unload()`` releases the claim."""
        claim = self._server.ownership.claim(resource, gained, lost)
        self._claims.append(claim)
        self.level("owns_" + re.sub(r"[^A-Za-z0-9_]", "_", resource), f"1 while this node owns {resource}",
                   lambda: int(claim.owned))
        return claim

    @property
    def node_name(self):
        """This node's name in its cluster, or None for a process alone."""
        return self._server.ownership.node

    @property
    def shared_queue_poll_seconds(self):
        """How often the owner of a queue that every node writes looks for the others' entries; None
        without a cluster (every entry is then this process's own)."""
        cluster = self._server.config.cluster
        return cluster.queue_poll_seconds if cluster.enabled else None

    def serve(self, domain, identity, translator=None, listed_on=None):
        """Own ``domain``: a component host routed here, listed in the local hosts' disco#items
        (only in that of the local host ``listed_on``, when given).

        ``identity`` is its (category, type, name) in disco; ``translator`` what
        XEP-0100 asks of it (see features/gateway.py), if anything.  A service
        may serve several domains (the MUC service one per local host): call
        ``serve`` for each before ``hook``, which then registers on them all.
        """
        server = self._server
        host = ComponentHost(server, domain.lower(), translator)
        if self.host is None:
            self.host = host
        self.served.append(host)
        server.component_hosts[host.name] = host
        server.router.addRoute(host.name, host)
        host.disco.identities.append(("host", *identity, self))
        for feature, module in self._service_features:
            load_feature(server, host, feature, module)
        server.list_service(host.name, identity[2], self, listed_on)
        return host

    @property
    def domain(self):
        return self.host.name if self.host is not None else None

    # -- configuration of the server, as much as a gateway needs ------------------

    @property
    def cluster(self):
        """The server's ``bridge.core.cluster.Cluster``, or None outside a cluster."""
        return self._server.cluster

    def local_host(self, domain):
        """The local host that ``domain`` names (itself or an alias, any case), or None."""
        return self._server.config.host_for((domain or "").lower())

    def local_domains(self):
        """Every hosted domain and alias, lowercase."""
        domains = set()
        for name, host in self._server.config.hosts.items():
            domains.add(name.lower())
            domains.update(alias.lower() for alias in host.aliases)
        return frozenset(domains)

    def section(self, name):
        """Another section of the configuration, for a gateway whose settings span several
        (the SMS gateway's links are the ``[smsc.NAME]`` tables)."""
        return getattr(self._server.config, name)

    def host_names(self):
        """The names of the local hosts, in the configuration's order."""
        return list(self._server.config.hosts)

    def host_config(self, name):
        return self._server.config.hosts[name]

    def is_host_admin(self, bare):
        """Whether the bare JID ``bare`` (lowercase) administers a local host (``[hosts.NAME] admins``)."""
        return self._server.config.is_host_admin(bare)

    # -- registrations --------------------------------------------------------------

    def hook(self, event, handler, priority=HANDLE):
        """Handle ``event`` on the gateway's own domain (on each, when it serves several)."""
        for host in self.served:
            self._add_hook(host, event, handler, priority)

    def hook_local(self, event, handler, priority=HANDLE):
        """Handle ``event`` on every local host (the users' side)."""
        for host in self._server.hosts.values():
            self._add_hook(host, event, handler, priority)

    def _add_hook(self, host, event, handler, priority):
        host.hooks.add(event, handler, priority, owner=self)
        self._hooked.add(host)

    def fire_local(self, host, event, payload):
        """Fire ``event`` on the local host ``host`` (what a service tells the features of a user's host)."""
        return self._server.hosts[host].hooks.fire(event, payload)

    def add_identity(self, category, kind, name):
        self.host.disco.identities.append(("host", category, kind, name, self))

    def add_feature(self, namespace):
        """Announce ``namespace`` in disco#info of every domain served."""
        for host in self.served:
            host.disco.features.append(("host", namespace, self))

    def add_domain_item(self, domain, jid, name=None):
        """List ``jid`` in disco#items of the served ``domain`` (a room of a MUC service), until
        ``remove_domain_item`` or ``unload``."""
        self._server.component_hosts[domain].disco.items.append((jid, name, self))

    def remove_domain_item(self, domain, jid):
        host = self._server.component_hosts[domain]
        host.disco.items = [entry for entry in host.disco.items if entry[0] != jid or entry[2] is not self]

    def add_node_source(self, answer):
        """Answer disco queries about the nodes of every domain served (see ``DiscoEntries.node_sources``)."""
        for host in self.served:
            host.disco.node_sources.append((answer, self))

    def add_form(self, form):
        """Add the data form ``form`` (XEP-0128) to disco#info of every domain served."""
        for host in self.served:
            host.disco.forms.append(("host", form, self))

    def serve_http(self, prefix, handler):
        """Answer the HTTP listener's requests under ``prefix`` (see ``bridge.gateways.http``)."""
        self._server.http_routes[prefix] = handler
        self._http_prefixes.append(prefix)

    def http_listeners(self):
        """(tls, port or None) of each HTTP listener, as far as it listens yet."""
        return [(secure, listener.port) for secure, listener in self._server.http_listeners]

    def derive_key(self, label):
        """A key for ``label`` derived from the server's secret (HMAC-SHA256): stable across restarts,
        and telling nothing of the secret or of the keys of other labels."""
        return hmac.new(self._server.secret, label.encode("utf-8"), hashlib.sha256).digest()

    def add_item(self, jid, name=None):
        """List ``jid`` in disco#items of every local host."""
        self._server.list_service(jid, name, self)

    def store(self, name):
        return NamedStore(self._server.storage, name)

    # -- stanzas ------------------------------------------------------------------------

    def route(self, stanza):
        self._server.router.route(stanza)

    def bounce(self, stanza, condition, text=None):
        self._server.router.bounce(stanza, condition, text)

    def submit(self, session, stanza):
        """Say ``stanza`` as the local user of ``session`` (see ``Server.stanza_from_session``)."""
        self._server.stanza_from_session(session, stanza)

    def bind(self, session):
        self._server.bind(session)

    def unbind(self, session):
        self._server.unbind(session)

    # -- the end --------------------------------------------------------------------------

    def unload(self):
        """Undo every route, hook, disco entry and feature of the gateway, and cancel its timers."""
        for host in self._hooked:
            host.hooks.remove_owner(self)
        self._hooked.clear()
        self._server.unlist_services(self)
        for host in self.served:
            for context in list(host.features.values()):
                context.unload()
            host.disco.remove_owner(self)
            self._server.router.removeRoute(host.name, host)
            self._server.component_hosts.pop(host.name, None)
        for prefix in self._http_prefixes:
            self._server.http_routes.pop(prefix, None)
        self._http_prefixes.clear()
        self._server.levels.remove_owner(self)
        for claim in self._claims:
            claim.release()
        self._claims.clear()
        self.clock.cancel_all()


def looping_call(clock, interval, function, *args):
    """A started ``LoopingCall`` of ``function`` every ``interval`` seconds on ``clock`` (first call after one interval)."""
    call = task.LoopingCall(function, *args)
    call.clock = clock
    call.start(interval, now=False)
    return call

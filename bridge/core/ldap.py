"""The LDAP client of a directory: a small pool of connections bound as the service, with failover.

Built on ldaptor (Twisted-native; docs/decisions.md).  ``DirectoryClient``
keeps at most ``pool_size`` connections to the preferred server of its
``ServerList``, bound with the service DN, and runs searches on them; a user's
password is checked by binding as the user on a connection of its own, which
is then closed, so that no pooled connection ever carries a user's identity.
A server that fails (refused, lost, TLS refused, no answer within
``timeout_seconds``) is marked down and the next one of the list is tried;
when none is left the caller gets ``DirectoryUnavailable``, never an answer
made up.  A health check binds to every server on an interval, so that a
server that comes back is used again and the pool moves back to the first
one of the list.

Every connection is encrypted and the server's certificate verified: an
``ldaps://`` URI speaks TLS from the start, an ``ldap://`` one must accept
StartTLS (RFC 4513 section 3) before anything else is sent.
"""

import collections
import functools

from ldaptor import ldapfilter
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldapclient, ldaperrors, ldapsyntax
from twisted.application import service
from twisted.internet import defer, endpoints, ssl, task
from twisted.logger import Logger

from bridge.core.accounts import DirectoryAccounts, sip_digest_algorithms
from bridge.core.directory import DirectoryUnavailable, ServerList, parse_uri

log = Logger()

# Requests waiting for a pooled connection, per connection of the pool: more are refused.
WAITERS_PER_CONNECTION = 32
# Parsed search filters kept (a user's filter is the same at every login).
PARSED_FILTERS = 4096


class ServerFailed(Exception):
    """The server, not the request, failed: lost, refused, silent or not speaking TLS."""


class InvalidCredentials(Exception):
    """The server refused a bind's DN and password (result code 49)."""


@functools.lru_cache(maxsize=PARSED_FILTERS)
def parsed_filter(text):
    """ldaptor's parse of a filter.  It takes milliseconds (pyparsing), as much as the rest of a
    SCRAM login, so the filters of the names that log in again are kept."""
    return ldapfilter.parseFilter(text)


def _text(name):
    """An attribute name as ldaptor gives it (bytes) as text."""
    return name.decode("utf-8", errors="replace") if isinstance(name, bytes) else name


class LDAPConnection:
    """One ldaptor connection, with the two operations bridge needs and errors sorted into
    ``ServerFailed``, ``InvalidCredentials`` and ldaptor's result errors."""

    def __init__(self, protocol):
        self.protocol = protocol

    def _sorted(self, d):
        def sort(failure):
            if failure.check(ldaperrors.LDAPInvalidCredentials):
                raise InvalidCredentials()
            if failure.check(ldapclient.LDAPClientConnectionLostException) or not failure.check(
                    ldaperrors.LDAPException):
                raise ServerFailed(failure.getErrorMessage())
            return failure

        return d.addErrback(sort)

    def bind(self, dn, password):
        return self._sorted(defer.maybeDeferred(self.protocol.bind, dn, password))

    def search(self, base, filter_text, attributes, size_limit, whole_subtree=True):
        """Deferred: [(dn, {attribute: [values]})] of the entries under ``base`` (or ``base`` itself
        alone) that match; none when ``base`` does not exist."""
        entry = ldapsyntax.LDAPEntry(self.protocol, base)
        scope = pureldap.LDAP_SCOPE_wholeSubtree if whole_subtree else pureldap.LDAP_SCOPE_baseObject
        d = self._sorted(defer.maybeDeferred(entry.search, filterObject=parsed_filter(filter_text),
                                             attributes=attributes, sizeLimit=size_limit, sizeLimitIsNonFatal=True,
                                             scope=scope))

        def no_such_entry(failure):
            failure.trap(ldaperrors.LDAPNoSuchObject)
            return []

        d.addErrback(no_such_entry)
        return d.addCallback(lambda entries: [(found.dn.getText(), {_text(name): list(values) for name, values in
                                                                     found.items()}) for found in entries])

    def close(self):
        if self.protocol.transport is not None:
            self.protocol.transport.abortConnection()


def trust_root(ca_file):
    """The authority in ``ca_file`` (PEM), or the system's authorities when it is empty."""
    if not ca_file:
        return ssl.platformTrust()
    with open(ca_file, "rb") as handle:
        return ssl.Certificate.loadPEM(handle.read())


def connector(reactor, ca_file, timeout_seconds):
    """``connect(uri)``: a Deferred ``LDAPConnection`` to ``uri``, encrypted with TLS 1.2 at least
    and the server's certificate verified for the URI's host against ``ca_file``."""
    trust = trust_root(ca_file)

    @defer.inlineCallbacks
    def connect(uri):
        tls_from_start, host, port = parse_uri(uri)
        endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout_seconds)
        options = ssl.optionsForClientTLS(host, trustRoot=trust,
                                          extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})
        if tls_from_start:
            endpoint = endpoints.wrapClientTLS(options, endpoint)
        protocol = yield endpoints.connectProtocol(endpoint, ldapclient.LDAPClient())
        if not tls_from_start:
            answer = yield protocol.send(pureldap.LDAPStartTLSRequest())
            if answer.resultCode != ldaperrors.Success.resultCode:
                protocol.transport.abortConnection()
                raise ServerFailed(f"{uri} refused StartTLS: {answer.errorMessage}")
            protocol.transport.startTLS(options)
        return LDAPConnection(protocol)

    def connect_sorted(uri):
        def failed(failure):
            if failure.check(ServerFailed):
                return failure
            raise ServerFailed(f"{uri}: {failure.getErrorMessage()}")

        return connect(uri).addErrback(failed)

    return connect_sorted


class DirectoryClient:
    """Searches and binds against the servers of ``servers`` (a ``ServerList``).

    ``connect(uri)`` gives a Deferred connection (``connector``); ``bind_dn`` and
    ``bind_password`` are the service's, with which pooled connections search.
    """

    def __init__(self, servers, connect, clock, *, bind_dn, bind_password, base_dn, pool_size,
                 timeout_seconds, health_check_seconds):
        self.servers = servers
        self.connect = connect
        self.clock = clock
        self.bind_dn = bind_dn
        self.bind_password = bind_password
        self.base_dn = base_dn
        self.pool_size = pool_size
        self.timeout_seconds = timeout_seconds
        self.health_check_seconds = health_check_seconds
        self._idle = []  # (uri, connection) bound as the service, free
        self._open = 0  # pooled connections open or opening
        self._waiters = collections.deque()  # Deferreds of requests waiting for a connection
        self._health = None

    # -- health --------------------------------------------------------------

    def start(self):
        self._health = task.LoopingCall(self.check_health)
        self._health.clock = self.clock
        self._health.start(self.health_check_seconds, now=False)

    def stop(self):
        if self._health is not None and self._health.running:
            self._health.stop()
        for _, connection in self._idle:
            connection.close()
        self._idle = []

    def check_health(self):
        """Bind as the service to every server; mark each up or down by the result."""
        return defer.gatherResults([self._probe(uri) for uri in self.servers.uris])

    def _probe(self, uri):
        d = self._bound_connection(uri, self.bind_dn, self.bind_password)

        def up(connection):
            connection.close()
            self.servers.succeeded(uri)

        def down(failure):
            failure.trap(ServerFailed, InvalidCredentials)
            log.warn("directory server {uri} failed its health check: {why}", uri=uri, why=failure.value)
            self.servers.failed(uri)

        return d.addCallbacks(up, down)

    # -- connections -----------------------------------------------------------

    def _timed(self, d):
        """``d``, failing with ``ServerFailed`` after ``timeout_seconds`` without an answer."""
        d.addTimeout(self.timeout_seconds, self.clock)

        def timed_out(failure):
            failure.trap(defer.TimeoutError, defer.CancelledError)
            raise ServerFailed("no answer in time")

        return d.addErrback(timed_out)

    @defer.inlineCallbacks
    def _bound_connection(self, uri, dn, password):
        """A new connection to ``uri`` bound as ``dn``; ``InvalidCredentials`` or ``ServerFailed``."""
        connection = yield self._timed(defer.maybeDeferred(self.connect, uri))
        try:
            yield self._timed(connection.bind(dn, password))
        except BaseException:
            connection.close()
            raise
        return connection

    @defer.inlineCallbacks
    def _first_answering(self, operation):
        """``operation(uri)`` on each server still up, best first, until one does not fail with
        ``ServerFailed``; ``DirectoryUnavailable`` when none is left."""
        tried = set()
        while True:
            uri = next((candidate for candidate in self.servers.candidates() if candidate not in tried), None)
            if uri is None:
                raise DirectoryUnavailable("no directory server answers")
            tried.add(uri)
            try:
                result = yield operation(uri)
            except ServerFailed as error:
                log.warn("directory server {uri} failed: {why}", uri=uri, why=error)
                self.servers.failed(uri)
                continue
            return result

    def _acquire(self):
        """Deferred (uri, connection) from the pool; a new one while the pool has room."""
        preferred = self.servers.preferred()
        while self._idle:
            uri, connection = self._idle.pop()
            if uri == preferred:
                return defer.succeed((uri, connection))
            connection.close()
            self._open -= 1
        if self._open < self.pool_size:
            self._open += 1

            def opened(uri):
                return self._bound_connection(uri, self.bind_dn, self.bind_password).addCallback(
                    lambda connection: (uri, connection))

            def not_opened(failure):
                self._open -= 1
                self._serve_waiter()
                if failure.check(InvalidCredentials):
                    log.error("the directory refused the service's bind DN {dn}", dn=self.bind_dn)
                    raise DirectoryUnavailable("the service's bind was refused")
                return failure

            return self._first_answering(opened).addErrback(not_opened)
        if len(self._waiters) >= self.pool_size * WAITERS_PER_CONNECTION:
            return defer.fail(DirectoryUnavailable("too many requests wait for the directory"))
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def _release(self, uri, connection, healthy):
        if not healthy or uri != self.servers.preferred():
            connection.close()
            self._open -= 1
            self._serve_waiter()
        elif self._waiters:
            self._waiters.popleft().callback((uri, connection))
        else:
            self._idle.append((uri, connection))

    def _serve_waiter(self):
        if self._waiters and self._open < self.pool_size:
            self._acquire().chainDeferred(self._waiters.popleft())

    @defer.inlineCallbacks
    def search(self, filter_text, attributes, size_limit, base=None, whole_subtree=True):
        """Deferred [(dn, {attribute: [values]})] under ``base`` (the base DN when None), or of
        ``base`` alone, on a pooled connection; a server that fails is marked down and the search
        runs again on the next."""
        for _ in range(len(self.servers.uris) + 1):
            uri, connection = yield self._acquire()
            try:
                found = yield self._timed(connection.search(base or self.base_dn, filter_text, attributes,
                                                            size_limit, whole_subtree))
            except ServerFailed as error:
                self._release(uri, connection, healthy=False)
                log.warn("directory server {uri} failed: {why}", uri=uri, why=error)
                self.servers.failed(uri)
                continue
            except BaseException:
                self._release(uri, connection, healthy=True)
                raise
            self._release(uri, connection, healthy=True)
            return found
        raise DirectoryUnavailable("no directory server answers")

    def check_password(self, dn, password):
        """Deferred True when ``dn`` binds with ``password``, False when the server refuses it;
        ``DirectoryUnavailable`` when no server answers.  An empty password is refused here:
        LDAP would take it for an unauthenticated bind (RFC 4513 section 5.1.2) and succeed."""
        if not password:
            return defer.succeed(False)

        def bind(uri):
            d = self._bound_connection(uri, dn, password)

            def bound(connection):
                connection.close()
                return True

            def refused(failure):
                failure.trap(InvalidCredentials)
                return False

            return d.addCallbacks(bound, refused)

        return self._first_answering(bind)


class DirectoryService(service.Service):
    """The health checks of the directories in use, run while the server runs."""

    def __init__(self, clients):
        self.clients = clients

    def startService(self):
        super().startService()
        for client in self.clients:
            client.start()

    def stopService(self):
        super().stopService()
        for client in self.clients:
            client.stop()


def directory_accounts(config, storage, reactor):
    """({host: DirectoryAccounts} of the hosts that name an ``[ldap.NAME]``, the DirectoryService
    of the directories they use: one client, pool and health check per directory)."""
    clients = {}
    directories = {}
    for host, host_config in config.hosts.items():
        if not host_config.ldap:
            continue
        name = host_config.ldap.lower()
        section = config.ldap[name]
        if name not in clients:
            clients[name] = DirectoryClient(
                ServerList(section.uris, reactor, section.retry_seconds),
                connector(reactor, section.ca_file, section.timeout_seconds), reactor,
                bind_dn=section.bind_dn, bind_password=section.read_bind_password(), base_dn=section.base_dn,
                pool_size=section.pool_size, timeout_seconds=section.timeout_seconds,
                health_check_seconds=section.health_check_seconds)
        directories[host] = DirectoryAccounts(host, clients[name], storage, section, sip_digest_algorithms(config))
    return directories, DirectoryService(list(clients.values()))

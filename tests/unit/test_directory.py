"""The LDAP directory without a server: filter escaping, the attribute map, failover and the pool on
a fake clock, and the accounts of a directory host (docs/directory.md)."""

import base64
import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
import types

from ldaptor import inmemory, ldapfilter
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.words.protocols.jabber.jid import JID
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge import ctl
from bridge.core import sasl
from bridge.core.accounts import DIRECTORY_STORE, AccountError, Accounts, DirectoryAccounts
from bridge.core.attempts import FailedAttempts
from bridge.core.directory import (AttributeMap, DirectoryUnavailable, ServerList, equality_filter,
                                   escape_filter_value, map_entry, parse_uri, restrict, substring_filter)
from bridge.core.ldap import DirectoryClient, InvalidCredentials, ServerFailed
from bridge.core.notifications import NotificationPreferences
from bridge.core.stanza import form_values
from bridge.core.storage.memory import MemoryStorage

from bridge.core.streams.c2s import ClientFactory
from bridge.core.xmlstream import parse_element
from bridge.gateways.muc import service as muc_service
from bridge.gateways.sms.verification import Verification

from tests.unit.helpers import BufferingTransport, Harness, gateway_context, make_config, result_of, scram_login

USER_FILTER = "(objectClass=inetOrgPerson)"
# Attempts to widen a search or a login through the value put into the filter.
INJECTIONS = ["*", "*)(uid=*", "alice)(|(uid=*", "*)(|(objectClass=*", "alice\\", "alice\x00", "(uid=alice)",
              "al*ce", "*)(&"]


class FilterTests(SynchronousTestCase):
    def test_specials_are_escaped(self):
        """\\ * ( ) and NUL become \\5c \\2a \\28 \\29 \\00 (RFC 4515 section 3); other text, non-ASCII
        included, stays as it is."""
        self.assertEqual(escape_filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a")
        self.assertEqual(escape_filter_value("a\\b\x00"), "a\\5cb\\00")
        self.assertEqual(escape_filter_value("Zoë"), "Zoë")
        self.assertEqual(substring_filter("cn", "a*b"), "(cn=*a\\2ab*)")

    def test_injection_is_one_literal_value(self):
        """Whatever a name holds, the filter parses as the base filter AND one equality whose value is
        the name itself, so no name can add a condition or a wildcard."""
        for name in INJECTIONS:
            parsed = ldapfilter.parseFilter(restrict(USER_FILTER, equality_filter("uid", name)))
            self.assertEqual(len(parsed.data), 2, name)
            self.assertEqual(parsed.data[1].assertionValue.value, name, name)

    def test_uris(self):
        """ldaps:// speaks TLS from the start (port 636 by default), ldap:// starts with StartTLS (389);
        other schemes and paths are refused."""
        self.assertEqual(parse_uri("ldaps://dir.example"), (True, "dir.example", 636))
        self.assertEqual(parse_uri("ldap://127.0.0.1:3890"), (False, "127.0.0.1", 3890))
        for bad in ("http://dir.example", "ldap://", "ldap://dir.example/dc=example", "ldapi:///run/slapd"):
            self.assertRaises(ValueError, parse_uri, bad)


class MapEntryTests(SynchronousTestCase):
    def test_mapped_attributes(self):
        """The configured attribute names are read, whatever their case in the answer."""
        mapping = AttributeMap(uid="sAMAccountName", mobile="telephoneNumber")
        entry = map_entry("cn=A", {"samaccountname": [b"alice"], "CN": [b"Alice A"], "telephoneNumber": [b"+4912"],
                                   "mail": [b"a@example.org"], "jpegPhoto": [b"\xff\xd8jpeg"],
                                   "modifyTimestamp": [b"20261207000000Z"]}, mapping, 100)
        self.assertEqual((entry.dn, entry.uid, entry.name, entry.mobile, entry.mail, entry.photo, entry.changed),
                         ("cn=A", "alice", "Alice A", "+4912", "a@example.org", b"\xff\xd8jpeg", "20261207000000Z"))

    def test_bad_values_are_bounded(self):
        """A cn that is not UTF-8 is read with U+FFFD, a 5 MB photo and an oversized mail are left out,
        and an entry without uid is no user."""
        entry = map_entry("cn=A", {"uid": [b"alice"], "cn": [b"Al\xffce"], "jpegPhoto": [b"x" * 5_000_000],
                                   "mail": [b"m" * 5000]}, AttributeMap(), 65536)
        self.assertEqual((entry.name, entry.photo, entry.mail), ("Al\ufffdce", None, None))
        self.assertIsNone(map_entry("cn=A", {"cn": [b"Alice"]}, AttributeMap(), 100))


class ServerListTests(SynchronousTestCase):
    def test_failover_and_return(self):
        """A failed server is skipped for retry_seconds, then preferred again; success marks it up at once."""
        clock = Clock()
        servers = ServerList(["ldap://a", "ldap://b"], clock, 30)
        self.assertEqual(servers.preferred(), "ldap://a")
        servers.failed("ldap://a")
        self.assertEqual(servers.preferred(), "ldap://b")
        servers.failed("ldap://b")
        self.assertIsNone(servers.preferred())
        clock.advance(30)
        self.assertEqual(servers.candidates(), ["ldap://a", "ldap://b"])
        servers.failed("ldap://a")
        servers.succeeded("ldap://a")
        self.assertEqual(servers.preferred(), "ldap://a")


class FakeServer:
    """A directory server: ``state`` is "up", "down" (refuses) or "silent" (never answers)."""

    def __init__(self, entries=None):
        self.state = "up"
        self.entries = entries or {}  # dn -> (password, {attribute: [values]})
        self.connections = []
        self.binds = []


class FakeConnection:
    def __init__(self, server):
        self.server = server
        self.closed = False

    def _answer(self, value):
        if self.server.state == "down" or self.closed:
            return defer.fail(ServerFailed("lost"))
        if self.server.state == "silent":
            return defer.Deferred()
        return defer.succeed(value)

    def bind(self, dn, password):
        self.server.binds.append(dn)
        known = self.server.entries.get(dn)
        if self.server.state == "up" and (known is None or known[0] != password):
            return defer.fail(InvalidCredentials())
        return self._answer(None)

    def search(self, base, filter_text, attributes, size_limit, whole_subtree=True):
        parsed = ldapfilter.parseFilter(filter_text)
        wanted = {name.lower() for name in attributes}
        found = [(dn, {name: values for name, values in entry.items() if name.lower() in wanted})
                 for dn, (_, entry) in self.server.entries.items()
                 if (dn.lower().endswith(base.lower()) if whole_subtree else dn.lower() == base.lower())
                 and inmemory.ReadOnlyInMemoryLDAPEntry(dn, entry).match(parsed)]
        return self._answer(found[:size_limit])

    def close(self):
        self.closed = True


SERVICE = "cn=bridge,dc=example"
ALICE = "uid=alice,ou=people,dc=example"


BOB = "uid=bob,ou=people,dc=example"
PHOTO = b"\xff\xd8\xff\xe0bob's face\xff\xd9"


def directory_entries(alice_password="right"):
    """The service account, alice and bob (text values as str, which ldaptor's substring match needs)."""
    return {SERVICE: ("service-secret", {"cn": ["bridge"]}),
            ALICE: (alice_password, {"uid": ["alice"], "objectClass": ["inetOrgPerson"], "cn": ["Alice Liddell"],
                                     "mail": ["alice@example.org"], "modifyTimestamp": ["1"]}),
            BOB: ("bob-pw", {"uid": ["bob"], "objectClass": ["inetOrgPerson"], "cn": ["Bob Builder"],
                             "mail": ["bob@example.org"], "mobile": ["+49 170 1234567"], "jpegPhoto": [PHOTO],
                             "modifyTimestamp": ["1"]})}


class ClientTests(SynchronousTestCase):
    """``DirectoryClient`` over fake servers: pool, failover, timeouts, health checks."""

    def setUp(self):
        self.clock = Clock()
        entries = directory_entries()
        self.fakes = {"ldaps://a": FakeServer(entries), "ldaps://b": FakeServer(entries)}
        self.connects = []
        self.client = self.make_client()

    def connect(self, uri):
        self.connects.append(uri)
        server = self.fakes[uri]
        if server.state == "down":
            return defer.fail(ServerFailed("refused"))
        connection = FakeConnection(server)
        server.connections.append(connection)
        return defer.succeed(connection)

    def make_client(self, pool_size=2):
        return DirectoryClient(ServerList(list(self.fakes), self.clock, 30), self.connect, self.clock,
                               bind_dn=SERVICE, bind_password="service-secret", base_dn="dc=example",
                               pool_size=pool_size, timeout_seconds=5, health_check_seconds=10)

    def search(self, client=None):
        return (client or self.client).search(restrict(USER_FILTER, equality_filter("uid", "alice")), ["uid"], 2)

    def test_pooled_connection_is_reused(self):
        """Searches run on one connection bound as the service, opened once."""
        for attempt in range(3):
            self.assertEqual([dn for dn, _ in result_of(self.search())], [ALICE])
        self.assertEqual(self.connects, ["ldaps://a"])
        self.assertEqual(self.fakes["ldaps://a"].binds, [SERVICE])

    def test_pool_is_bounded(self):
        """With pool_size 1, a second search waits for the first one's connection, then uses it."""
        client = self.make_client(pool_size=1)
        self.fakes["ldaps://a"].state = "silent"
        first = self.search(client)
        self.fakes["ldaps://a"].state = "up"
        waiting = self.search(client)
        self.assertNoResult(waiting)
        self.assertEqual(len(self.connects), 1)
        self.clock.advance(5)  # the service bind of the first times out: the first search moves to b
        self.assertEqual([dn for dn, _ in result_of(first)], [ALICE])
        self.assertEqual([dn for dn, _ in result_of(waiting)], [ALICE])

    def test_failover_when_refused(self):
        """A server that refuses connections is marked down and the next one answers."""
        self.fakes["ldaps://a"].state = "down"
        self.assertEqual(len(result_of(self.search())), 1)
        self.assertEqual(self.connects, ["ldaps://a", "ldaps://b"])
        result_of(self.search())
        self.assertEqual(self.connects, ["ldaps://a", "ldaps://b"], "a is not tried again while down")

    def test_failover_when_lost_mid_session(self):
        """A pooled connection that fails during a search is closed, its server marked down, and the
        search answered by the next server."""
        result_of(self.search())
        self.fakes["ldaps://a"].state = "down"
        self.assertEqual(len(result_of(self.search())), 1)
        self.assertTrue(self.fakes["ldaps://a"].connections[0].closed)
        self.assertEqual(self.connects[-1], "ldaps://b")

    def test_silent_server_times_out(self):
        """A server that does not answer within timeout_seconds counts as failed."""
        self.fakes["ldaps://a"].state = "silent"
        found = self.search()
        self.assertNoResult(found)
        self.clock.advance(5)
        self.assertEqual(len(result_of(found)), 1)
        self.assertEqual(self.connects, ["ldaps://a", "ldaps://b"])

    def test_all_down_is_unavailable(self):
        """With every server down, the answer is DirectoryUnavailable, for searches and password checks."""
        for server in self.fakes.values():
            server.state = "down"
        self.failureResultOf(self.search(), DirectoryUnavailable)
        self.failureResultOf(self.client.check_password(ALICE, "right"), DirectoryUnavailable)

    def test_health_check_brings_the_first_server_back(self):
        """After a failover, the health check finds the first server back and the pool returns to it."""
        self.fakes["ldaps://a"].state = "down"
        self.client.start()
        self.addCleanup(self.client.stop)
        result_of(self.search())
        self.fakes["ldaps://a"].state = "up"
        self.clock.advance(10)
        result_of(self.search())
        self.assertEqual(self.connects[-1], "ldaps://a")
        self.assertTrue(self.fakes["ldaps://b"].connections[0].closed)

    def test_user_bind_on_its_own_connection(self):
        """A password is checked on a new connection bound as the user and closed at once; a wrong one
        is False; an empty one is refused without a bind (it would be an unauthenticated bind)."""
        self.assertTrue(result_of(self.client.check_password(ALICE, "right")))
        self.assertFalse(result_of(self.client.check_password(ALICE, "wrong")))
        self.assertFalse(result_of(self.client.check_password(ALICE, "")))
        self.assertEqual(self.fakes["ldaps://a"].binds, [ALICE, ALICE])
        self.assertTrue(all(connection.closed for connection in self.fakes["ldaps://a"].connections))


class FakeClient:
    """A ``DirectoryClient`` stand-in over a ``FakeServer``'s entries, matched with ldaptor's filters."""

    def __init__(self, server):
        self.server = server
        self.filters = []

    def search(self, filter_text, attributes, size_limit, base=None, whole_subtree=True):
        self.filters.append(filter_text)
        if self.server.state != "up":
            return defer.fail(DirectoryUnavailable("down"))
        return FakeConnection(self.server).search(base or "", filter_text, attributes, size_limit, whole_subtree)

    def check_password(self, dn, password):
        if self.server.state != "up":
            return defer.fail(DirectoryUnavailable("down"))
        return defer.succeed(self.server.entries[dn][0] == password)


def decoy(user):
    return sasl.Decoys(b"s" * 32).credentials("example.org", user)


class DirectoryAccountsTests(SynchronousTestCase):
    def setUp(self):
        self.server = FakeServer(directory_entries())
        self.storage = MemoryStorage()
        directory = DirectoryAccounts("example.org", FakeClient(self.server), self.storage,
                                      configuration.LDAPConfig(), lambda host: ("MD5",))
        self.accounts = Accounts(self.storage, lambda host: (), {"example.org": directory})

    def plain(self, user, password):
        return result_of(self.accounts.check_password("example.org", user, password, decoy))

    def test_injected_names_match_nobody(self):
        """A login name built to widen the filter finds no entry, so no password binds for it."""
        for name in INJECTIONS:
            self.assertFalse(self.plain(name, "right"), name)
            self.assertFalse(result_of(self.accounts.exists("example.org", name)), name)
        self.assertTrue(self.plain("alice", "right"))

    def test_uid_must_be_the_name(self):
        """An entry the server matched by its own rules (here a uid with a trailing space, which
        caseIgnoreMatch ignores) is no user unless its uid is the name, case aside."""
        directory = self.accounts.directory("example.org")
        for uid, found in (("alice ", False), ("Alice", True)):
            self.patch(directory.client, "search",
                       lambda *args, uid=uid, **kwargs: defer.succeed([(ALICE, {"uid": [uid]})]))
            self.assertEqual(result_of(directory.find("alice")) is not None, found, uid)

    def test_plain_login_keeps_scram_and_digest(self):
        """Before a PLAIN login a directory user has no SCRAM record; after it, records of that password
        for SCRAM and the SIP HA1 of the realm."""
        self.assertIsNone(result_of(self.accounts.credentials("example.org", "alice")))
        self.assertTrue(self.plain("alice", "right"))
        records = result_of(self.accounts.credentials("example.org", "alice"))
        self.assertTrue(sasl.check_password(records, "right"))
        self.assertEqual(result_of(self.accounts.digest_ha1("example.org", "alice", "example.org", "MD5")),
                         hashlib.md5(b"alice:example.org:right").hexdigest())

    def test_changed_entry_drops_the_records(self):
        """When the entry's change attribute moves (a password set by the administrator), the kept
        records are no longer offered."""
        self.plain("alice", "right")
        self.server.entries[ALICE][1]["modifyTimestamp"] = [b"2"]
        self.assertIsNone(result_of(self.accounts.credentials("example.org", "alice")))
        self.assertIsNone(result_of(self.storage.get("example.org", "alice", DIRECTORY_STORE)))

    def test_old_password_refused_drops_the_records(self):
        """A PLAIN login whose password made the kept records, and that the directory now refuses, drops
        them; a wrong guess does not, and a new password replaces them."""
        self.plain("alice", "right")
        self.assertFalse(self.plain("alice", "guess"))
        self.assertIsNotNone(result_of(self.storage.get("example.org", "alice", DIRECTORY_STORE)))
        self.server.entries[ALICE] = ("new", self.server.entries[ALICE][1])
        self.assertFalse(self.plain("alice", "right"))
        self.assertIsNone(result_of(self.storage.get("example.org", "alice", DIRECTORY_STORE)))
        self.assertTrue(self.plain("alice", "new"))
        self.assertTrue(sasl.check_password(result_of(self.accounts.credentials("example.org", "alice")), "new"))

    def test_unreachable_directory_is_no_answer(self):
        """With the directory down, PLAIN, SCRAM records and digest fail with DirectoryUnavailable;
        existence falls back on a past login."""
        self.plain("alice", "right")
        self.server.state = "down"
        self.failureResultOf(self.accounts.check_password("example.org", "alice", "right", decoy),
                             DirectoryUnavailable)
        self.failureResultOf(self.accounts.credentials("example.org", "alice"), DirectoryUnavailable)
        self.failureResultOf(self.accounts.digest_ha1("example.org", "alice", "example.org", "MD5"),
                             DirectoryUnavailable)
        self.assertTrue(result_of(self.accounts.exists("example.org", "alice")))
        self.assertFalse(result_of(self.accounts.exists("example.org", "bob")))

    def test_no_local_changes(self):
        """Accounts of a directory host cannot be created, changed or deleted in bridge."""
        for change in (self.accounts.create("example.org", "carol", "pw"),
                       self.accounts.set_password("example.org", "alice", "pw"),
                       self.accounts.delete("example.org", "alice")):
            self.failureResultOf(change, AccountError)


class ClientStreamTests(SynchronousTestCase):
    """SASL on a client stream of a directory host, over a transport that has switched to TLS."""

    def setUp(self):
        self.directory_server = FakeServer(directory_entries())
        self.storage = MemoryStorage()
        directory = DirectoryAccounts("localhost", FakeClient(self.directory_server), self.storage,
                                      configuration.LDAPConfig(), lambda host: ())
        self.harness = Harness(make_config(require_encryption=True), self.storage, {"localhost": directory})
        self.factory = ClientFactory(self.harness.server, self.harness.config.c2s, tls_context="TLS")

    def secure_client(self):
        client = self.harness.connect(factory=self.factory, transport=BufferingTransport())
        client.open_stream()
        client.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        client.received()
        client.open_stream()
        return client

    def plain(self, user, password):
        client = self.secure_client()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        outcome = client.received()[-1]
        return outcome.name if outcome.name == "success" else next(outcome.elements()).name

    def test_plain_then_scram(self):
        """The directory password logs in with PLAIN; SCRAM then succeeds with the records kept."""
        self.assertEqual(scram_login(self.secure_client(), "alice", "right").name, "failure")
        self.assertEqual(self.plain("alice", "right"), "success")
        self.assertEqual(scram_login(self.secure_client(), "alice", "right").name, "success")

    def test_no_account_changes_from_the_client(self):
        """A directory user's password change or account removal (XEP-0077) is not-allowed."""
        self.plain("alice", "right")
        client = self.harness.connect(factory=self.factory, transport=BufferingTransport())
        client.open_stream()
        client.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        client.received()
        client.login("alice@localhost/r", "right")
        for change in ("<username>alice</username><password>new</password>", "<remove/>"):
            reply = client.iq(f"<iq type='set' id='c' to='localhost'><query xmlns='jabber:iq:register'>{change}"
                              "</query></iq>")
            self.assertEqual((reply["type"], reply.error.firstChildElement().name), ("error", "not-allowed"))
        self.assertTrue(result_of(self.harness.server.accounts.check_password("localhost", "alice", "right",
                                                                              decoy)))

    def test_wrong_password_counts_unreachable_does_not(self):
        """Wrong directory passwords are not-authorized and counted against the address; an unreachable
        directory is temporary-auth-failure, for PLAIN and SCRAM, and is not counted."""
        self.plain("alice", "right")
        for attempt in range(FailedAttempts.LIMIT - 1):
            self.assertEqual(self.plain("alice", "wrong"), "not-authorized")
        self.directory_server.state = "down"
        self.assertEqual(self.plain("alice", "right"), "temporary-auth-failure")
        outcome = scram_login(self.secure_client(), "alice", "right")
        self.assertEqual((outcome.name, next(outcome.elements()).name), ("failure", "temporary-auth-failure"))
        self.directory_server.state = "up"
        self.assertEqual(self.plain("alice", "right"), "success")
        self.plain("alice", "wrong")
        self.assertEqual(self.plain("alice", "right"), "temporary-auth-failure", "the limit is reached")


class ConfigTests(SynchronousTestCase):
    """[ldap.NAME] tables and the hosts that name them, checked at load."""

    def load(self, table, mode=0o600):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        password_file = os.path.join(directory, "ldap.password")
        with open(password_file, "w") as handle:
            handle.write("secret\n")
        os.chmod(password_file, mode)
        path = os.path.join(directory, "bridge.toml")
        with open(path, "w") as handle:
            handle.write('[hosts."corp.test"]\nldap = "Corp"\n[ldap.corp]\n' + table)
        return path, configuration.load(path)

    def problems(self, table, mode=0o600):
        error = self.assertRaises(configuration.ConfigError, self.load, table, mode)
        return error.problems

    def test_complete_table(self):
        """A table with servers, service DN, password file and base loads; the host names it."""
        _, config = self.load('uris = ["ldaps://a.example", "ldap://b.example:3890"]\nbind_dn = "cn=b"\n'
                              'bind_password_file = "ldap.password"\nbase_dn = "dc=example"\n')
        self.assertEqual(config.hosts["corp.test"].ldap, "Corp")
        self.assertEqual(config.ldap["corp"].read_bind_password(), "secret")
        self.assertEqual(config.ldap["corp"].pool_size, 4)

    def test_incomplete_or_wrong(self):
        """Missing servers, DN and base, a URI of another scheme and a filter without parentheses are
        each named with their key."""
        problems = self.problems('uris = ["http://a.example"]\nbind_password_file = "ldap.password"\n'
                                 'user_filter = "objectClass=person"\n')
        text = "\n".join(problems)
        for key in ("ldap.corp.uris: must be ldap://", "ldap.corp.bind_dn: must not be empty",
                    "ldap.corp.base_dn: must not be empty", "ldap.corp.user_filter: must be an LDAP filter"):
            self.assertIn(key, text)

    def test_password_file_readable_by_others(self):
        """A bind password file that others than its owner may read is refused."""
        problems = self.problems('uris = ["ldaps://a.example"]\nbind_dn = "cn=b"\n'
                                 'bind_password_file = "ldap.password"\nbase_dn = "dc=example"\n', mode=0o644)
        self.assertIn("ldap.corp.bind_password_file", problems[0])
        self.assertIn("chmod 600", problems[0])

    def test_no_registration_on_a_directory_host(self):
        """In-band registration cannot be on where accounts live in the directory."""
        error = self.assertRaises(configuration.ConfigError, configuration.parse,
                                  {"hosts": {"corp.test": {"ldap": "c", "registration": True}},
                                   "ldap": {"c": {"uris": ["ldaps://a"], "bind_dn": "cn=b", "base_dn": "dc=x",
                                                  "bind_password_file": "p"}}}, "t.toml")
        self.assertEqual(error.problems, ["t.toml: hosts.corp.test.registration: must be false on a host whose "
                                          "users live in a directory"])

    def test_bridgectl_on_a_directory_host(self):
        """bridgectl refuses to add, change or delete a directory host's accounts, saying where they are."""
        path, _ = self.load('uris = ["ldaps://a.example"]\nbind_dn = "cn=b"\n'
                                 'bind_password_file = "ldap.password"\nbase_dn = "dc=example"\n')
        password_file = os.path.join(os.path.dirname(path), "ldap.password")
        for command in (["adduser", "ann@corp.test", "--password-file", password_file],
                        ["passwd", "ann@corp.test", "--password-file", password_file], ["deluser", "ann@corp.test"]):
            errors = io.StringIO()
            with contextlib.redirect_stderr(errors):
                self.assertEqual(ctl.main(["--config", path, *command], out=io.StringIO()), 1)
            self.assertIn("kept in its LDAP directory", errors.getvalue())

    def test_host_naming_no_table(self):
        """A host that names a directory without a table is an error naming the host's key."""
        error = self.assertRaises(configuration.ConfigError, configuration.parse,
                                  {"hosts": {"corp.test": {"ldap": "missing"}}}, "t.toml")
        self.assertEqual(error.problems, ["t.toml: hosts.corp.test.ldap: no [ldap.missing] table"])


class DirectoryFeatureTests(SynchronousTestCase):
    """Search (XEP-0055), vCards (XEP-0054) and notification addresses on a directory host."""

    def setUp(self):
        self.directory_server = FakeServer(directory_entries())
        self.storage = MemoryStorage()
        self.directory = DirectoryAccounts("localhost", FakeClient(self.directory_server), self.storage,
                                           dataclasses.replace(configuration.LDAPConfig(), max_search_results=1),
                                           lambda host: ())
        self.harness = Harness(make_config(), self.storage, {"localhost": self.directory})
        # alice's first login (PLAIN) keeps the SCRAM records the in-memory clients log in with.
        self.assertTrue(result_of(self.harness.server.accounts.check_password("localhost", "alice", "right", decoy)))
        self.alice = self.harness.login("alice@localhost/desk", password="right")

    def search(self, fields, client=None):
        values = "".join(f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items())
        return (client or self.alice).iq(
            "<iq type='set' id='s' to='localhost'><query xmlns='jabber:iq:search'><x xmlns='jabber:x:data' "
            f"type='submit'><field var='FORM_TYPE'><value>jabber:iq:search</value></field>{values}</x></query></iq>")

    @staticmethod
    def items(reply):
        form = next(reply.query.elements("jabber:x:data", "x"))
        return [form_values(item) for item in form.elements("jabber:x:data", "item")]

    def foreign_event(self, stanza):
        """What a handler receives for ``stanza`` from a user of another server, and its replies."""
        replies = []
        event = types.SimpleNamespace(sender=JID("eve@remote.example/x"), to=JID("bob@localhost"),
                                      host=self.harness.server.hosts["localhost"],
                                      stanza=parse_element(stanza), reply=replies.append)
        return event, replies

    def test_search_form(self):
        """The search form offers login name, name and mail, with its FORM_TYPE."""
        reply = self.alice.iq("<iq type='get' id='f' to='localhost'><query xmlns='jabber:iq:search'/></iq>")
        form = next(reply.query.elements("jabber:x:data", "x"))
        self.assertEqual(list(form_values(form)), ["FORM_TYPE", "user", "name", "mail"])

    def test_search_by_name_uid_and_mail(self):
        """A part of a name, a login name or a mail finds the user, as a JID of the host with the
        attributes; the number of results is bounded; a wildcard is a literal character."""
        self.assertEqual(self.items(self.search({"name": "builder"})),
                         [{"jid": ["bob@localhost"], "user": ["bob"], "name": ["Bob Builder"],
                           "mail": ["bob@example.org"]}])
        self.assertEqual([item["jid"] for item in self.items(self.search({"user": "alic"}))], [["alice@localhost"]])
        self.assertEqual(len(self.items(self.search({"mail": "example.org"}))), 1, "max_search_results is 1")
        for injection in ("*", "*)(uid=*", "b*b"):
            self.assertEqual(self.items(self.search({"name": injection})), [], injection)

    def test_search_refusals(self):
        """An empty form is bad-request; an overlong value not-acceptable; a user of another server is
        forbidden; an unreachable directory is remote-server-timeout."""
        self.assertEqual(self.search({"name": ""}).error.firstChildElement().name, "bad-request")
        self.assertEqual(self.search({"name": "x" * 300}).error.firstChildElement().name, "not-acceptable")
        search = self.harness.server.hosts["localhost"].features["search"].feature
        event, replies = self.foreign_event("<iq type='get' id='f' to='localhost' from='eve@remote.example/x'>"
                                            "<query xmlns='jabber:iq:search'/></iq>")
        search.form(event)
        self.assertEqual(replies[0].error.firstChildElement().name, "forbidden")
        self.directory_server.state = "down"
        self.assertEqual(self.search({"name": "bob"}).error.firstChildElement().name, "remote-server-timeout")

    def test_vcard_from_the_directory(self):
        """A user of the host reads another's vCard from the directory, photo included; a user of another
        server gets it without the photo; nobody can change it."""
        vcard = self.alice.iq("<iq type='get' id='v' to='bob@localhost'><vCard xmlns='vcard-temp'/></iq>").vCard
        self.assertEqual((str(vcard.FN), str(vcard.NICKNAME), str(vcard.TEL.NUMBER), str(vcard.EMAIL.USERID)),
                         ("Bob Builder", "bob", "+49 170 1234567", "bob@example.org"))
        self.assertEqual(base64.b64decode(str(vcard.PHOTO.BINVAL)), PHOTO)
        vcards = self.harness.server.hosts["localhost"].features["vcard"].feature
        event, replies = self.foreign_event("<iq type='get' id='v' to='bob@localhost' from='eve@remote.example/x'>"
                                            "<vCard xmlns='vcard-temp'/></iq>")
        vcards.get(event)
        self.assertEqual(str(replies[0].vCard.FN), "Bob Builder")
        self.assertIsNone(replies[0].vCard.PHOTO)
        reply = self.alice.iq("<iq type='set' id='w'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>")
        self.assertEqual(reply.error.firstChildElement().name, "not-allowed")

    def test_notification_addresses(self):
        """Without numbers or addresses of their own, the directory's mobile and mail are a user's, and the
        directory's number counts as verified; the user's own setting wins; with the directory down there
        is none."""
        preferences = NotificationPreferences(self.storage, self.harness.config.hosts.__getitem__,
                                              self.harness.server.accounts.directory)
        verification = Verification(self.storage, self.harness.clock, self.harness.config.sms, preferences)
        self.assertEqual(result_of(preferences.mobile("localhost", "bob")), "+49 170 1234567")
        self.assertEqual(result_of(preferences.email("localhost", "bob")), "bob@example.org")
        self.assertEqual(result_of(verification.verified_number("localhost", "bob")), "+491701234567")
        result_of(preferences.update("localhost", "bob", email="bob@home.example", mobile="+15551234567"))
        self.assertEqual(result_of(preferences.email("localhost", "bob")), "bob@home.example")
        self.assertIsNone(result_of(verification.verified_number("localhost", "bob")), "not verified by a code")
        self.directory_server.state = "down"
        self.assertIsNone(result_of(preferences.email("localhost", "alice")))


class SharedGroupsTests(SynchronousTestCase):
    """Directory groups as shared rosters, refreshed on the clock."""

    GROUPS = "ou=groups,dc=example"

    def setUp(self):
        self.directory_server = FakeServer(directory_entries())
        entries = self.directory_server.entries
        entries[f"cn=staff,{self.GROUPS}"] = (None, {"objectClass": ["groupOfNames"], "cn": ["staff"],
                                                     "member": [ALICE, BOB, "uid=ghost,ou=people,dc=example"]})
        entries[f"cn=crowd,{self.GROUPS}"] = (None, {"objectClass": ["groupOfNames"], "cn": ["crowd"],
                                                     "member": [ALICE, BOB, SERVICE, "uid=x,dc=example"]})
        self.storage = MemoryStorage()
        config = dataclasses.replace(configuration.LDAPConfig(), group_base_dn=self.GROUPS, max_group_members=3)
        directory = DirectoryAccounts("localhost", FakeClient(self.directory_server), self.storage, config,
                                      lambda host: ())
        self.harness = Harness(make_config(), self.storage, {"localhost": directory})
        for user, password in (("alice", "right"), ("bob", "bob-pw")):
            self.assertTrue(result_of(self.harness.server.accounts.check_password("localhost", user, password,
                                                                                  decoy)))

    def roster(self, bare):
        roster = result_of(self.harness.server.rosters.load(bare))
        return {jid: (item.subscription, item.groups) for jid, item in roster.items.items()}

    def test_members_share_rosters_and_presence(self):
        """Members of a group have each other (not a member that is no user) with subscription both under
        the group's name; a group over max_group_members is not shared; a member's presence reaches the other."""
        self.assertEqual(self.roster("alice@localhost"), {"bob@localhost": ("both", ["staff"])})
        self.assertEqual(self.roster("bob@localhost"), {"alice@localhost": ("both", ["staff"])})
        alice = self.harness.login("alice@localhost/desk", password="right")
        alice.send("<presence/>")
        alice.received()
        bob = self.harness.login("bob@localhost/phone", password="bob-pw")
        bob.send("<presence/>")
        self.assertIn("bob@localhost/phone", [stanza.getAttribute("from") for stanza in alice.received()
                                              if stanza.name == "presence"])

    def test_leaving_a_group_removes_the_shared_item(self):
        """When a member leaves the group, the next refresh removes the shared items on both sides and
        pushes the removal to a logged-in user; items of the user's own making stay."""
        alice = self.harness.login("alice@localhost/desk", password="right")
        alice.iq("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        alice.iq("<iq type='set' id='own'><query xmlns='jabber:iq:roster'><item jid='carol@elsewhere.example'/>"
                 "</query></iq>")
        alice.received()
        self.directory_server.entries[f"cn=staff,{self.GROUPS}"][1]["member"] = [ALICE]
        self.harness.clock.advance(300)
        self.assertEqual(self.roster("alice@localhost"), {"carol@elsewhere.example": ("none", [])})
        self.assertEqual(self.roster("bob@localhost"), {})
        pushes = [stanza for stanza in alice.received() if stanza.name == "iq" and stanza.getAttribute("type") == "set"]
        self.assertEqual([(item["jid"], item["subscription"]) for push in pushes for item in push.query.elements()],
                         [("bob@localhost", "remove")])

    def test_unreachable_directory_changes_nothing(self):
        """While the directory does not answer, a refresh leaves the shared items as they are."""
        self.directory_server.state = "down"
        self.harness.clock.advance(300)
        self.assertEqual(self.roster("alice@localhost"), {"bob@localhost": ("both", ["staff"])})


class SitePolicyTests(SynchronousTestCase):
    """Groups of the directory as site policy: the MUC service's admins and who may create rooms."""

    GROUPS = "ou=groups,dc=example"

    def setUp(self):
        self.directory_server = FakeServer(directory_entries())
        entries = self.directory_server.entries
        entries["uid=carol,ou=people,dc=example"] = ("carol-pw", {"uid": ["carol"], "objectClass": ["inetOrgPerson"],
                                                                  "cn": ["Carol"], "modifyTimestamp": ["1"]})
        entries[f"cn=creators,{self.GROUPS}"] = (None, {"objectClass": ["groupOfNames"], "cn": ["creators"],
                                                        "member": [ALICE]})
        entries[f"cn=admins,{self.GROUPS}"] = (None, {"objectClass": ["groupOfNames"], "cn": ["admins"],
                                                      "member": [BOB]})
        self.storage = MemoryStorage()
        config = dataclasses.replace(configuration.LDAPConfig(), group_base_dn=self.GROUPS, admins_group="admins",
                                     room_creators_group="creators")
        directory = DirectoryAccounts("localhost", FakeClient(self.directory_server), self.storage, config,
                                      lambda host: ())
        self.harness = Harness(make_config(), self.storage, {"localhost": directory})
        self.service = muc_service.attach(gateway_context(self.harness.server, "muc", self.harness.config.muc),
                                          self.harness.clock, None)
        self.service.start()
        for user, password in (("alice", "right"), ("bob", "bob-pw"), ("carol", "carol-pw")):
            self.assertTrue(result_of(self.harness.server.accounts.check_password("localhost", user, password,
                                                                                  decoy)))

    def join(self, user, password, room):
        client = self.harness.login(f"{user}@localhost/r", password=password)
        client.send(f"<presence to='{room}@conference.localhost/{user}'><x xmlns='http://jabber.org/protocol/muc'/>"
                    "</presence>")
        return client.received()[-1]

    def test_creators_and_admins_from_groups(self):
        """A member of room_creators_group creates a room, a user of neither group is not-allowed, a member
        of admins_group creates rooms and owns every room; policy groups are not shared as rosters."""
        self.assertIsNone(self.join("alice", "right", "plans").error)
        self.assertEqual(self.join("carol", "carol-pw", "mine").error.firstChildElement().name, "not-allowed")
        self.assertIsNone(self.join("bob", "bob-pw", "ops").error)
        room = self.service.rooms["conference.localhost"]["plans"]
        self.assertEqual((self.service.affiliation(room, "bob@localhost"),
                          self.service.affiliation(room, "carol@localhost")), ("owner", "none"))
        self.assertEqual(result_of(self.harness.server.rosters.load("alice@localhost")).items, {})

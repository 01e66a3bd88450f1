"""Reloading the configuration (bridge.core.reload): what applies live, what waits for a restart, refusals."""

import gc
import os
import shutil
import tempfile

from OpenSSL import SSL, crypto
from twisted.internet.task import Clock
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration, tap
from bridge.core import tls
from bridge.core.reload import ContextHolder, Reloader, plan
from bridge.core.server import Server
from bridge.core.storage.memory import MemoryStorage
from bridge.tap import build
from tests import pki

BASE = {"hosts": {"localhost": {}, "example.test": {"aliases": ["alias.test"]}},
        "components": {"bot.localhost": {"secret": "s"}}}


def config_of(**tables):
    """A configuration from BASE with ``tables`` merged in, one level deep."""
    document = {name: dict(table) for name, table in BASE.items()}
    for name, table in tables.items():
        document[name] = {**document.get(name, {}), **table} if isinstance(table, dict) else table
    return configuration.parse(document, "test.toml")


class PlanTests(SynchronousTestCase):
    def test_nothing_changed(self):
        """The same file gives no change at all."""
        result = plan(config_of(), config_of())
        self.assertEqual((result.live, result.restart), ([], []))
        self.assertEqual(result.config, config_of())

    def test_live_changes(self):
        """Limits, TLS policies and certificates, host settings and aliases, components apply live."""
        new = config_of(c2s={"max_connections_per_address": 3, "tls_min_version": "1.3"},
                        s2s={"denied_domains": ["evil.example"]},
                        http={"bosh_max_sessions": 5},
                        tls={"certificate": "/etc/new.crt", "private_key": "/etc/new.key"},
                        sip={"tls_ciphers": "ECDHE+AESGCM"},
                        hosts={"localhost": {"registration": True}, "example.test": {"aliases": ["other.test"]}},
                        components={"bot.localhost": {"secret": "t"}, "new.localhost": {"secret": "u"}})
        result = plan(config_of(), new)
        self.assertEqual(sorted(result.live), sorted([
            "c2s.max_connections_per_address", "c2s.tls_min_version", "s2s.denied_domains", "http.bosh_max_sessions",
            "tls.certificate", "tls.private_key", "sip.tls_ciphers", "hosts.localhost.registration",
            "hosts.example.test.aliases", "components"]))
        self.assertEqual(result.restart, [])
        self.assertEqual(result.config, new)

    def test_restart_changes_keep_their_running_value(self):
        """Listening addresses, the data folder, a host added and the sections read at start are reported
        as needing a restart, and the planned configuration keeps their old values beside the live ones."""
        old = config_of()
        new = config_of(data_dir="/srv/elsewhere",
                        c2s={"endpoints": ["tcp:6222"], "max_connections_per_address": 3},
                        storage={"path": "other.sqlite"},
                        sip={"max_contacts_per_user": 3, "tls_min_version": "1.3"},
                        quotas={"max_vcard_bytes": 4096},
                        hosts={"new.test": {}})
        result = plan(old, new)
        self.assertEqual(sorted(result.restart), sorted([
            "data_dir", "c2s.endpoints", "storage.path", "sip.max_contacts_per_user", "quotas.max_vcard_bytes",
            "hosts (new.test added or removed)"]))
        self.assertEqual(sorted(result.live), ["c2s.max_connections_per_address", "sip.tls_min_version"])
        applied = result.config
        self.assertEqual((applied.data_dir, applied.c2s.endpoints, applied.storage, applied.quotas),
                         (old.data_dir, old.c2s.endpoints, old.storage, old.quotas))
        self.assertEqual(set(applied.hosts), set(old.hosts))
        self.assertEqual(applied.c2s.max_connections_per_address, 3)
        self.assertEqual((applied.sip.max_contacts_per_user, applied.sip.tls_min_version), (10, "1.3"))

    def test_the_mail_relay(self):
        """A relay changed for another applies live; turning email on or off (an empty relay) waits for a
        restart, as does the list of archive recipients."""
        on = config_of(smtp={"relay": "relay.test:25"})
        moved = config_of(smtp={"relay": "other.test:25", "archive_recipients": ["a@example.com"]})
        self.assertEqual((plan(on, moved).live, plan(on, moved).restart), (["smtp.relay"], ["smtp.archive_recipients"]))
        self.assertEqual(plan(config_of(), on).restart, ["smtp.relay"])
        self.assertEqual(plan(on, config_of()).config.smtp.relay, "relay.test:25")

    def test_a_host_setting_that_needs_a_restart(self):
        """sip_digest of a host is read at start; registration beside it applies live."""
        result = plan(config_of(), config_of(hosts={"localhost": {"sip_digest": False, "registration": True}}))
        self.assertEqual((result.live, result.restart),
                         (["hosts.localhost.registration"], ["hosts.localhost.sip_digest"]))
        self.assertTrue(result.config.hosts["localhost"].sip_digest)


class Context:
    def __init__(self, name):
        self.name = name

    def getContext(self):
        return self.name


class ReloaderTests(SynchronousTestCase):
    def setUp(self):
        self.server = Server(config_of(), MemoryStorage(), Clock())
        self.next = config_of(c2s={"max_connections_per_address": 3})
        self.reloader = Reloader(self.server, "bridge.toml", load=self.load)
        self.committed = []

    def load(self, path):
        if isinstance(self.next, Exception):
            raise self.next
        return self.next

    def test_applies_the_new_configuration(self):
        """A good file: every step builds from the planned configuration, then all put it in force."""
        self.reloader.add_step(lambda new: lambda: self.committed.append(new.c2s.max_connections_per_address))
        answer = self.reloader.reload()
        self.assertEqual(answer, {"ok": True, "live": ["c2s.max_connections_per_address"], "restart": []})
        self.assertEqual(self.server.config.c2s.max_connections_per_address, 3)
        self.assertEqual(self.committed, [3])

    def test_a_file_that_does_not_load_changes_nothing(self):
        """A configuration error is refused with its reasons (file and key), and the running one stays."""
        self.next = configuration.ConfigError(["bridge.toml: c2s.max_connections_per_address: must be at least 1"])
        self.reloader.add_step(lambda new: lambda: self.committed.append(new))
        running = self.server.config
        answer = self.reloader.reload()
        self.assertEqual(answer, {"ok": False,
                                  "error": "bridge.toml: c2s.max_connections_per_address: must be at least 1"})
        self.assertIs(self.server.config, running)
        self.assertEqual(self.committed, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_a_certificate_that_does_not_load_changes_nothing(self):
        """When one step cannot build (a broken certificate), no step puts anything in force."""
        self.reloader.add_step(lambda new: lambda: self.committed.append("first"))

        def broken(new):
            raise OSError(2, "No such file or directory")

        self.reloader.add_step(broken)
        running = self.server.config
        answer = self.reloader.reload()
        self.assertFalse(answer["ok"])
        self.assertIn("cannot be applied", answer["error"])
        self.assertIs(self.server.config, running)
        self.assertEqual(self.committed, [])

    def test_a_file_that_is_no_certificate_changes_nothing(self):
        """A certificate or key file that holds no PEM (a renewal cut short) refuses the reload."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        broken = os.path.join(folder, "site.crt")
        with open(broken, "w", encoding="ascii") as handle:
            handle.write("not a certificate")
        self.reloader.add_step(lambda new: lambda: self.committed.append("first"))
        self.reloader.add_step(lambda new: tls.server_context(broken, broken))
        answer = self.reloader.reload()
        self.assertFalse(answer["ok"])
        self.assertIn("cannot be applied", answer["error"])
        self.assertEqual(self.committed, [])

    def test_features_see_the_reloaded_configuration(self):
        """A feature's context reads the server's configuration of the moment, not the one it was loaded with."""
        from bridge.core.server import FeatureContext

        context = FeatureContext(self.server, self.server.hosts["localhost"], "test")
        self.reloader.reload()
        self.assertEqual(context.config.c2s.max_connections_per_address, 3)


class ContextHolderTests(SynchronousTestCase):
    def test_new_handshakes_use_the_current_context(self):
        """The holder answers the context it holds now: a swap changes what the next handshake gets."""
        holder = ContextHolder(Context("old"))
        self.assertEqual(holder.getContext(), "old")
        holder.current = Context("new")
        self.assertEqual(holder.getContext(), "new")

    def test_connections_are_made_by_the_current_options(self):
        """A TLS listener gets each connection from the options held now, as a connection creator (not through
        Twisted's shim for plain context factories)."""
        made = []

        class Options:
            def __init__(self, name):
                self.name = name

            def serverConnectionForTLS(self, protocol):
                made.append((self.name, protocol))
                return self.name

        holder = ContextHolder(Options("old"))
        self.assertTrue(IOpenSSLServerConnectionCreator.providedBy(holder))
        holder.current = Options("new")
        self.assertEqual(holder.serverConnectionForTLS("protocol"), "new")
        self.assertEqual(made, [("new", "protocol")])


class BuiltServerTests(SynchronousTestCase):
    """A reload of the service tree bridge.tap builds, on a memory reactor, from a file rewritten in between."""

    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root)
        self.cert, self.key = pki.self_signed(self.root, ["localhost"], file_name="site")
        self.path = self.write()
        self.top = build(configuration.load(self.path), MemoryReactorClock(), self.path)
        self.server = self.top.server
        self.addCleanup(self.server.storage.close)

    def write(self, c2s="", hosts='[hosts.localhost]\naliases = ["old.test"]\n', extra=""):
        path = os.path.join(self.root, "bridge.toml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f'data_dir = "data"\n[storage]\nbackend = "memory"\n[sip]\nenabled = false\n'
                         f'[tls]\ncertificate = "{self.cert}"\nprivate_key = "{self.key}"\n'
                         f'[c2s]\n{c2s}\n{hosts}{extra}')
        return path

    def client_factories(self):
        return [listener.factory for listener in self.top if getattr(listener, "kind", None) == "c2s"]

    def served_certificate(self):
        """The certificate a new TLS connection of the c2s listener is given now, as DER."""
        connection = SSL.Connection(self.client_factories()[0].tls_context.getContext())
        return crypto.dump_certificate(crypto.FILETYPE_ASN1, connection.get_certificate())

    def test_start_takes_its_heap_out_of_the_collector(self):
        """Once started, what the start made is frozen out of the collector's generations (gc.freeze), so that
        full collections walk only what came after."""
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        self.assertEqual(gc.get_freeze_count(), 0)
        self.top.startService()
        self.addCleanup(self.top.stopService)
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_start_makes_full_collections_rarer(self):
        """Once started, a full collection comes after FULL_COLLECTION_AFTER collections of the middle
        generation, not CPython's 10; the younger generations keep their thresholds."""
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        self.addCleanup(gc.unfreeze)
        gc.set_threshold(700, 10, 10)  # CPython's defaults
        self.top.startService()
        self.addCleanup(self.top.stopService)
        self.assertEqual(gc.get_threshold(), (700, 10, tap.FULL_COLLECTION_AFTER))
        self.assertGreater(tap.FULL_COLLECTION_AFTER, 10)

    def test_listeners_for_peers_accept_under_triage(self):
        """Every listener that peers connect to accepts its connections under the server's triage
        (core/triage.py, AcceptGate); the control socket, the administrator's, is never held back."""
        triaged = {listener.kind: listener.triage for listener in self.top if isinstance(listener, tap.ListenerService)}
        self.assertEqual(triaged.pop("control"), None)
        self.assertTrue({"c2s", "c2s-direct-tls", "s2s", "http"} <= set(triaged), triaged)
        self.assertEqual(set(triaged.values()), {self.server.triage})

    def test_reload_applies_limits_aliases_components_and_certificates(self):
        """After the files change, a reload routes the new alias and no longer the old one, gives new client
        connections the new limits, routes a new component, and new handshakes get the renewed certificate."""
        before = self.served_certificate()
        pki.self_signed(self.root, ["localhost"], file_name="site")
        self.write(c2s="max_connections_per_address = 3", hosts='[hosts.localhost]\naliases = ["new.test"]\n',
                   extra='[components."bot.localhost"]\nsecret = "s"\n')
        answer = self.top.reloader.reload()
        self.assertTrue(answer["ok"], answer)
        router = self.server.router
        self.assertIs(router.lookup("new.test"), self.server.hosts["localhost"])
        self.assertIsNot(router.lookup("old.test"), self.server.hosts["localhost"])
        self.assertEqual(self.server.config.host_for("new.test"), "localhost")
        factory = self.client_factories()[0]
        self.assertEqual((factory.listener.max_connections_per_address, factory.connections.limit), (3, 3))
        self.assertTrue(router.is_local("bot.localhost"))
        after = self.served_certificate()
        self.assertNotEqual(after, before)
        with open(self.cert, "rb") as handle:
            self.assertEqual(after, crypto.dump_certificate(crypto.FILETYPE_ASN1,
                                                            crypto.load_certificate(crypto.FILETYPE_PEM, handle.read())))

    def test_a_missing_certificate_changes_nothing(self):
        """A file naming a certificate that is not there is refused, naming file and key; the aliases and
        the certificate in force stay."""
        before = self.served_certificate()
        os.unlink(self.cert)
        self.write(hosts='[hosts.localhost]\naliases = ["new.test"]\n')
        answer = self.top.reloader.reload()
        self.assertFalse(answer["ok"])
        self.assertIn(f"{self.path}: tls.certificate: {self.cert}: no such file", answer["error"])
        self.assertIs(self.server.router.lookup("old.test"), self.server.hosts["localhost"])
        self.assertIsNot(self.server.router.lookup("new.test"), self.server.hosts["localhost"])
        self.assertEqual(self.served_certificate(), before)

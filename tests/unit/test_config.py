"""Configuration loading: defaults, and errors that name the file and the key."""

import contextlib
import io
import os
import shutil
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge import ctl


class ConfigTests(SynchronousTestCase):
    def write(self, text):
        directory = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(directory, f)) for f in os.listdir(directory)])
        path = os.path.join(directory, "bridge.toml")
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def problems(self, text):
        path = self.write(text)
        error = self.assertRaises(configuration.ConfigError, configuration.load, path)
        return path, error.problems

    def test_defaults(self):
        """No file: domain localhost, the standard ports, SQLite under data/."""
        config = configuration.load(None)
        self.assertEqual(list(config.hosts), ["localhost"])
        self.assertEqual(config.c2s.endpoints, ["tcp:5222"])
        self.assertEqual(config.c2s.direct_tls_endpoints, ["tcp:5223"])
        self.assertEqual(config.storage.backend, "sqlite")
        self.assertEqual(config.c2s.tls_min_version, "1.2")

    def test_unknown_keys_are_errors(self):
        """Unknown keys at every level are reported with file and key path, all at once."""
        path, problems = self.problems('colour = "red"\n[c2s]\nport = 5\n[hosts.localhost]\nfoo = 1\n')
        self.assertEqual(problems, [f"{path}: c2s.port: unknown key", f"{path}: hosts.localhost.foo: unknown key",
                                    f"{path}: colour: unknown key"])

    def test_moved_table_says_where(self):
        """A table of an earlier version is refused with the name of its keys' new place."""
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.parse({"offline": {"max_messages_per_user": 10}}, "old.toml")
        self.assertIn("old.toml: offline: this table is gone: max_messages_per_user is now [quotas] "
                      "max_offline_messages_per_user", caught.exception.problems)

    def test_types_and_ranges(self):
        """Wrong types, values out of range and bad choices name the key and the reason."""
        _, problems = self.problems('[c2s]\nmax_sessions_per_user = "ten"\npre_auth_timeout_seconds = 0\n'
                                    'tls_min_version = "1.0"\n')
        self.assertEqual(len(problems), 3)
        self.assertIn("c2s.max_sessions_per_user: must be an integer", problems[0])
        self.assertIn("c2s.pre_auth_timeout_seconds: must be at least 1", problems[1])
        self.assertIn("c2s.tls_min_version: must be one of 1.2, 1.3", problems[2])

    def test_alias_clash(self):
        """One name cannot answer for two hosts."""
        _, problems = self.problems('[hosts."a.test"]\naliases = ["b.test"]\n[hosts."b.test"]\n')
        self.assertIn("'b.test' already names host 'a.test'", problems[0])

    def test_bad_toml(self):
        """A syntax error names the file."""
        path, problems = self.problems("[c2s\n")
        self.assertTrue(problems[0].startswith(f"{path}: not valid TOML"))

    def test_hosts_and_aliases(self):
        """Virtual hosts and their aliases resolve to the host's name; data_dir is relative to the file."""
        path = self.write('data_dir = "d"\n[hosts."a.test"]\naliases = ["chat.a.test"]\n[hosts."b.test"]\n')
        config = configuration.load(path)
        self.assertEqual(config.host_for("chat.a.test"), "a.test")
        self.assertEqual(config.host_for("b.test"), "b.test")
        self.assertIsNone(config.host_for("c.test"))
        self.assertEqual(config.data_dir, os.path.join(os.path.dirname(path), "d"))

    def test_federation_domains_are_normalised(self):
        """Domains of [s2s] allowed_domains, denied_domains and static_routes are kept in lower case
        without a trailing dot, as JIDs compare them (RFC 7622); an empty one is an error."""
        path = self.write('[s2s]\nallowed_domains = ["Friend.TEST", "other.test."]\ndenied_domains = ["EVIL.test"]\n'
                          'static_routes = { "B.Test" = "127.0.0.3:5269" }\n')
        s2s = configuration.load(path).s2s
        self.assertEqual((s2s.allowed_domains, s2s.denied_domains), (["friend.test", "other.test"], ["evil.test"]))
        self.assertEqual(s2s.static_routes, {"b.test": "127.0.0.3:5269"})
        _, problems = self.problems('[s2s]\ndenied_domains = [""]\n')
        self.assertIn("s2s.denied_domains: must hold domain names, not ''", problems[0])

    def test_what_fails_at_start_fails_the_check(self):
        """Listening endpoints that cannot listen (a port past 65535, an unknown type or option, TLS in
        the string), a DNS server without a port, certificates and keys not there or not in pairs: each
        is a problem naming its key, found by bridgectl check rather than when the listener starts."""
        cases = {
            "[c2s]\nendpoints = ['tcp:99999']\n": "c2s.endpoints: 'tcp:99999': port must be at most 65535",
            "[c2s]\nendpoints = ['bogus:5222']\n": "c2s.endpoints: 'bogus:5222': unknown endpoint type 'bogus'",
            "[http]\ntls_endpoints = ['ssl:5281']\n": "http.tls_endpoints: 'ssl:5281': unknown endpoint type 'ssl'",
            "[sip]\ntcp_endpoints = ['tcp:5060:interfac=x']\n": "unknown option 'interfac' of a tcp endpoint",
            "[component_listener]\nendpoints = ['tcp:']\n": "component_listener.endpoints: 'tcp:': no port",
            "[s2s]\ndns_server = '127.0.0.1'\n": "s2s.dns_server: must be HOST:PORT, not '127.0.0.1'",
        }
        for text, expected in cases.items():
            _, problems = self.problems(text)
            self.assertTrue(any(expected in problem for problem in problems), (expected, problems))
        good = ("[c2s]\nendpoints = ['tcp:port=5222:interface=127.0.0.1', 'tcp6:5222:interface=\\\\:\\\\:1', "
                "'unix:/run/bridge.sock:mode=660']\n[s2s]\ndns_server = '[::1]:53'\n")
        self.assertEqual(len(configuration.load(self.write(good)).c2s.endpoints), 3)
        path = self.write("[c2s]\ncertificate = 'missing.crt'\nprivate_key = 'missing.key'\n[tls]\ncertificate = 'x'\n")
        with self.assertRaises(configuration.ConfigError) as raised:
            configuration.load(path)
        problems = raised.exception.problems
        self.assertIn(f"{path}: c2s.certificate: {os.path.dirname(path)}/missing.crt: no such file", problems)
        self.assertIn(f"{path}: tls: certificate and private_key go together", problems)

    def test_bridgectl_check(self):
        """bridgectl check prints the same problems and fails."""
        path = self.write("[c2s]\nbogus = 1\n")
        self.assertEqual(ctl.main(["--config", path, "check"]), 1)
        good = self.write("[c2s]\nendpoints = ['tcp:0']\n")
        self.assertEqual(ctl.main(["--config", good, "check"], out=io.StringIO()), 0)

    def test_bridgectl_adduser_refuses_escapes(self):
        """bridgectl adduser refuses a name with % (or a backslash), saying why, and creates nothing."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "bridge.toml")
        with open(path, "w") as handle:
            handle.write('data_dir = "data"\n[hosts.localhost]\n')
        with open(os.path.join(directory, "pw"), "w") as handle:
            handle.write("secret\n")
        errors, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(errors):
            status = ctl.main(["--config", path, "adduser", "%61dmin@localhost", "--password-file",
                               os.path.join(directory, "pw")], out=out)
        self.assertEqual(status, 1)
        self.assertIn("may not contain %", errors.getvalue())
        self.assertEqual(ctl.main(["--config", path, "listusers"], out=out), 0)
        self.assertNotIn("dmin", out.getvalue())

    def test_bridgectl_adduser_reads_a_piped_password(self):
        """A password piped in (echo pw | bridgectl adduser) is its first line; nothing piped is a clear
        error, not a traceback."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "bridge.toml")
        with open(path, "w") as handle:
            handle.write('data_dir = "data"\n[hosts.localhost]\n')
        out, errors = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.StringIO("piped secret\nignored\n"))
        self.assertEqual(ctl.main(["--config", path, "adduser", "ana@localhost"], out=out), 0)
        self.patch(sys, "stdin", io.StringIO(""))
        with contextlib.redirect_stderr(errors):
            self.assertEqual(ctl.main(["--config", path, "adduser", "eva@localhost"], out=out), 1)
        self.assertIn("no password on standard input", errors.getvalue())
        self.assertEqual(ctl.main(["--config", path, "listusers"], out=out), 0)
        self.assertIn("ana@localhost", out.getvalue())
        self.assertNotIn("eva", out.getvalue())

    def test_sample_configuration_is_valid(self):
        """conf/bridge.toml, the documented sample, loads without error."""
        sample = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "bridge.toml")
        config = configuration.load(sample)
        self.assertIn("localhost", config.hosts)

    def test_pubsub_section_is_checked(self):
        """[pubsub]: a subdomain taken by the MUC service, an admin that is not a bare JID and an item larger
        than a node's bytes are each named."""
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.parse({"pubsub": {"subdomain": "conference", "admins": ["pubsub.localhost"],
                                            "max_item_bytes": 4096, "max_bytes_per_node": 2048}}, "ps.toml")
        self.assertEqual(caught.exception.problems, [
            "ps.toml: pubsub.subdomain: 'conference' is also the MUC service's",
            "ps.toml: pubsub.admins: 'pubsub.localhost' is not a bare JID (user@host)",
            "ps.toml: pubsub.max_item_bytes: must be at most max_bytes_per_node (2048)"])


class DataDirBaseTests(SynchronousTestCase):
    """Where a relative data_dir goes: never into a system configuration folder such as /etc/bridge."""

    def test_state_directory_first(self):
        """systemd's $STATE_DIRECTORY (its first entry) is the base, wherever the file is."""
        environ = {"STATE_DIRECTORY": "/var/lib/bridge:/var/lib/other"}
        self.assertEqual(configuration.data_dir_base("/etc/bridge", environ), "/var/lib/bridge")
        self.assertEqual(configuration.data_dir_base("/home/ana/bridge/conf", environ), "/var/lib/bridge")
        self.assertEqual(configuration.data_dir_base(None, environ), "/var/lib/bridge")

    def test_system_configuration_folder_has_no_base(self):
        """Without a state directory, a file under /etc or /usr/local/etc gives no base; any other file's
        folder is the base, and without a file the working directory is."""
        for folder in ("/etc", "/etc/bridge", "/usr/local/etc/bridge"):
            self.assertIsNone(configuration.data_dir_base(folder, {}), folder)
        self.assertEqual(configuration.data_dir_base("/etcetera/bridge", {}), "/etcetera/bridge")
        self.assertEqual(configuration.data_dir_base("/srv/bridge/conf", {}), "/srv/bridge/conf")
        self.assertEqual(configuration.data_dir_base(None, {}), os.getcwd())

    def test_load_resolves_against_state_directory(self):
        """A file's relative data_dir goes under $STATE_DIRECTORY; its certificate paths stay by the file."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "bridge.toml")
        with open(path, "w") as handle:
            handle.write('data_dir = "data"\n[http]\nweb_client_dir = "web"\n')
        config = configuration.load(path, environ={"STATE_DIRECTORY": "/var/lib/bridge"})
        self.assertEqual(config.data_dir, "/var/lib/bridge/data")
        self.assertEqual(config.http.web_client_dir, os.path.join(directory, "web"))
        self.assertEqual(configuration.load(path, environ={}).data_dir, os.path.join(directory, "data"))

    def test_relative_data_dir_in_etc_is_refused(self):
        """A relative data_dir in a file in /etc, with no state directory, is an error naming file and key
        (rather than a database and a private key in /etc/bridge/data)."""
        config = configuration.Config(data_dir="data")
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration._with_data_dir(config, "/etc/bridge", {}, "/etc/bridge/bridge.toml")
        self.assertIn("/etc/bridge/bridge.toml: data_dir: 'data' is relative", str(caught.exception))
        absolute = configuration.Config(data_dir="/var/lib/bridge")
        self.assertEqual(configuration._with_data_dir(absolute, "/etc/bridge", {}, "x").data_dir, "/var/lib/bridge")

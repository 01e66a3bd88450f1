"""bridgectl check: certificate pairs, expiry, hosts that no certificate names, route and resolver syntax,
the web client folder; every finding names the file, the key and the reason."""

import datetime
import io
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bridge import checks, ctl
from bridge import config as configuration
from bridge.core import tls
from tests import pki

NOW = datetime.datetime.now(datetime.timezone.utc)


class ChecksTests(SynchronousTestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(self._remove, self.folder)

    def _remove(self, folder):
        for root, folders, files in os.walk(folder, topdown=False):
            for name in files:
                os.remove(os.path.join(root, name))
            for name in folders:
                os.rmdir(os.path.join(root, name))
        os.rmdir(folder)

    def config(self, text):
        """``text`` as a configuration file, with the services on subdomains off unless it turns on MUC."""
        path = os.path.join(self.folder, "bridge.toml")
        services = "[upload]\nenabled = false\n[pubsub]\nenabled = false\n[sip]\nenabled = false\n"
        if "[muc]" not in text:
            services += "[muc]\nenabled = false\n"
        if "[http]" not in text:
            services += '[http]\nweb_client_dir = ""\n'
        with open(path, "w") as handle:
            handle.write(f'data_dir = "data"\n{services}{text}')
        return path, configuration.load(path, environ={})

    def findings(self, text, now=NOW):
        path, config = self.config(text)
        return path, [str(finding) for finding in checks.check(config, now=now)]

    def test_matching_pair_naming_every_host_passes(self):
        """A certificate with its own key, naming the host and its alias, gives no finding; bridgectl exits 0."""
        cert, key = pki.self_signed(self.folder, ["example.org", "chat.example.org"])
        path, found = self.findings(f'[tls]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
                                    '[hosts."example.org"]\naliases = ["chat.example.org"]\n')
        self.assertEqual(found, [])
        out = io.StringIO()
        self.assertEqual(ctl.main(["--config", path, "check"], out=out), 0)
        self.assertIn("configuration is valid", out.getvalue())

    def test_key_of_another_certificate_is_an_error(self):
        """A private key that is not the certificate's is an error naming the file and the key; exit 1."""
        cert, _ = pki.self_signed(self.folder, ["example.org"])
        _, other_key = pki.self_signed(self.folder, ["other.example"])
        path, found = self.findings(f'[c2s]\ncertificate = "{cert}"\nprivate_key = "{other_key}"\n'
                                    '[hosts."example.org"]\n')
        self.assertEqual(found, [f"error: {path}: c2s.certificate: {cert}: its key is not {other_key} "
                                 "(the certificate and the private key do not match)"])
        self.assertEqual(ctl.main(["--config", path, "check"], out=io.StringIO()), 1)

    def test_unreadable_pem_is_an_error(self):
        """A certificate file without a PEM certificate, and a key file without a key, are errors."""
        cert, key = pki.self_signed(self.folder, ["example.org"])
        with open(key, "w") as handle:
            handle.write("not a key\n")
        _, found = self.findings(f'[http]\nweb_client_dir = ""\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
                                 '[hosts."example.org"]\n')
        self.assertEqual(len(found), 1)
        self.assertTrue(found[0].startswith("error: "))
        self.assertIn(f"http.certificate: {key}: not an unencrypted PEM private key", found[0])
        with open(cert, "w") as handle:
            handle.write("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        _, found = self.findings(f'[http]\nweb_client_dir = ""\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
                                 '[hosts."example.org"]\n')
        self.assertIn(f"http.certificate: {cert}: not a PEM certificate", found[0])

    def _ending_in(self, days):
        key = pki.new_key()
        # build_certificate makes certificates valid for 3650 days from ``now``.
        certificate = tls.build_certificate(key, ["example.org"], now=NOW - datetime.timedelta(days=3650 - days))
        cert, key_path = os.path.join(self.folder, "end.crt"), os.path.join(self.folder, "end.key")
        tls.write_pem(cert, key_path, certificate, key)
        return self.findings(f'[tls]\ncertificate = "{cert}"\nprivate_key = "{key_path}"\n[hosts."example.org"]\n')

    def test_certificate_ending_within_14_days_is_a_warning(self):
        """A certificate ending in 10 days is a warning (exit 0); one ending in 20 days is not reported."""
        path, found = self._ending_in(10)
        self.assertEqual(len(found), 1)
        self.assertRegex(found[0], rf"^warning: {path}: tls.certificate: .*end.crt: expires on .* within 14 days$")
        self.assertEqual(ctl.main(["--config", path, "check"], out=io.StringIO()), 0)
        self.assertEqual(self._ending_in(20)[1], [])

    def test_expired_certificate_is_a_warning(self):
        """A certificate past its end is reported as expired."""
        _, found = self._ending_in(-1)
        self.assertRegex(found[0], r"^warning: .*tls.certificate: .*end.crt: expired on ")

    def test_host_alias_and_service_not_named_are_warnings(self):
        """A host, an alias and a MUC subdomain that the certificate does not name are each a warning."""
        cert, key = pki.self_signed(self.folder, ["example.org"])
        path, found = self.findings(f'[tls]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
                                    '[hosts."example.org"]\naliases = ["chat.example.org"]\n'
                                    '[hosts."example.net"]\n[muc]\nenabled = true\n')
        reason = "no configured certificate names it (certificate, private_key, certificates_dir)"
        self.assertEqual(sorted(found), sorted([
            f"warning: {path}: hosts.example.org.aliases: chat.example.org: {reason}",
            f"warning: {path}: muc.subdomain: conference.example.org: {reason}",
            f"warning: {path}: hosts.example.net: example.net: {reason}",
            f"warning: {path}: muc.subdomain: conference.example.net: {reason}"]))

    def test_wildcard_names_one_label(self):
        """*.example.org names conference.example.org, not example.org nor a.b.example.org."""
        self.assertTrue(checks.names_domain("*.example.org", "conference.example.org"))
        self.assertFalse(checks.names_domain("*.example.org", "example.org"))
        self.assertFalse(checks.names_domain("*.example.org", "a.b.example.org"))
        cert, key = pki.self_signed(self.folder, ["example.org", "*.example.org"])
        _, found = self.findings(f'[tls]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
                                 '[hosts."example.org"]\n[muc]\nenabled = true\n')
        self.assertEqual(found, [])

    def _live(self, name, names):
        folder = os.path.join(self.folder, "live", name)
        os.makedirs(folder)
        cert, key = pki.self_signed(folder, names)
        os.rename(cert, os.path.join(folder, "fullchain.pem"))
        os.rename(key, os.path.join(folder, "privkey.pem"))
        return os.path.join(folder, "fullchain.pem")

    def test_certificates_dir_counts(self):
        """A host with its own certificate in certificates_dir is named; one whose folder's certificate does not
        name it is a warning naming that file, since SNI serves it that one."""
        cert, key = pki.self_signed(self.folder, ["example.org"])
        self._live("example.net", ["example.net"])
        wrong = self._live("example.com", ["elsewhere.example"])
        path, found = self.findings(f'[tls]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
                                    f'certificates_dir = "live"\n'
                                    '[hosts."example.org"]\n[hosts."example.net"]\n[hosts."example.com"]\n')
        self.assertEqual(found, [f"warning: {path}: hosts.example.com: example.com: its certificate by SNI, "
                                 f"{wrong}, does not name it"])

    def test_certificates_dir_pairs_are_checked(self):
        """A pair in certificates_dir whose key is another's is an error under tls.certificates_dir."""
        chain = self._live("example.org", ["example.org"])
        other = self._live("other.example", ["other.example"])
        os.replace(os.path.join(os.path.dirname(other), "privkey.pem"),
                   os.path.join(os.path.dirname(chain), "privkey.pem"))
        _, found = self.findings('[tls]\ncertificates_dir = "live"\n[hosts."example.org"]\n')
        self.assertEqual(len(found), 1)
        self.assertIn(f"tls.certificates_dir: {chain}: its key is not", found[0])

    def test_no_certificate_configured_no_name_warning(self):
        """With no certificate configured the server makes its own for its hosts: no warning."""
        self.assertEqual(self.findings('[hosts."example.org"]\n')[1], [])

    def test_web_client_folder(self):
        """A web_client_dir that does not exist, or lacks converse.min.js, is a warning; with it, nothing."""
        web = os.path.join(self.folder, "web")
        path, found = self.findings(f'[http]\nweb_client_dir = "{web}"\n')
        self.assertEqual(found, [f"warning: {path}: http.web_client_dir: {web}: no such folder; the web page "
                                 "will say the web client is not installed"])
        os.mkdir(web)
        self.assertIn("no converse.min.js in it", self.findings(f'[http]\nweb_client_dir = "{web}"\n')[1][0])
        with open(os.path.join(web, "converse.min.js"), "w") as handle:
            handle.write("//\n")
        self.assertEqual(self.findings(f'[http]\nweb_client_dir = "{web}"\n')[1], [])
        self.assertEqual(self.findings(f'[http]\nweb_client_dir = "{self.folder}/none"\nendpoints = []\n'
                                       'tls_endpoints = []\n')[1], [])


class SyntaxTests(SynchronousTestCase):
    def problems(self, document):
        with self.assertRaises(configuration.ConfigError) as raised:
            configuration.parse(document, "b.toml")
        return raised.exception.problems

    def test_s2s_static_route_needs_host_and_port(self):
        """An s2s static route without a port, or with a bad one, is an error naming the route."""
        self.assertEqual(self.problems({"s2s": {"static_routes": {"a.example": "192.0.2.7",
                                                                  "b.example": "tls:host:99999"}}}),
                         ["b.toml: s2s.static_routes.a.example: must be HOST:PORT or tls:HOST:PORT (IPv6 in "
                          "brackets), not '192.0.2.7'",
                          "b.toml: s2s.static_routes.b.example: must be HOST:PORT or tls:HOST:PORT (IPv6 in "
                          "brackets), not 'tls:host:99999'"])

    def test_s2s_static_route_forms(self):
        """HOST:PORT, tls:HOST:PORT and [IPv6]:PORT parse to (host, port, direct TLS)."""
        self.assertEqual(configuration.parse_s2s_route("b.example:5269"), ("b.example", 5269, False))
        self.assertEqual(configuration.parse_s2s_route("tls:b.example:5270"), ("b.example", 5270, True))
        self.assertEqual(configuration.parse_s2s_route("[::1]:5269"), ("::1", 5269, False))
        configuration.parse({"s2s": {"static_routes": {"b.example": "tls:[2001:db8::1]:5270"}}}, "b.toml")

    def test_resolver_must_be_an_address(self):
        """A dns_server named by a host name (the resolver only sends to addresses) or without a port is an error."""
        self.assertEqual(self.problems({"s2s": {"dns_server": "ns.example:53"}, "sip": {"dns_server": "127.0.0.1"}}),
                         ["b.toml: s2s.dns_server: must be an IP address and a port, not 'ns.example:53'",
                          "b.toml: sip.dns_server: must be HOST:PORT, not '127.0.0.1'"])
        configuration.parse({"s2s": {"dns_server": "[::1]:53"}, "sip": {"dns_server": "127.0.0.1:5353"}}, "b.toml")

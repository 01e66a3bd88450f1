"""The one certificate builder: the server's generated certificate and the authorities of the tests."""

import os
import shutil
import stat
import tempfile

from cryptography import x509
from OpenSSL import crypto
from twisted.trial.unittest import SynchronousTestCase

from bridge.core import tls
from tests import pki


def load(path):
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read())


def verifies(ca_file, cert_path):
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(load(ca_file)))
    try:
        crypto.X509StoreContext(store, crypto.X509.from_cryptography(load(cert_path))).verify_certificate()
    except crypto.X509StoreContextError:
        return False
    return True


class BuilderTests(SynchronousTestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)

    def test_generated_certificate(self):
        """The server's first-start certificate names every host, and its key is readable by the owner only."""
        cert_path, key_path = (os.path.join(self.directory, "certs", name) for name in ("bridge.crt", "bridge.key"))
        tls.generate_self_signed(cert_path, key_path, ["example.org", "alias.example.org"])
        names = load(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["example.org", "alias.example.org"])
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)

    def test_authority_signs_leaves(self):
        """A leaf issued by a test authority verifies against it, and neither against another nor self-signed."""
        authority = pki.CertificateAuthority(os.path.join(self.directory, "ca"))
        other = pki.CertificateAuthority(os.path.join(self.directory, "other"), key_kind="rsa")
        leaf, key = authority.issue(os.path.join(self.directory, "leaf"), ["a.test"])
        alone, _ = pki.self_signed(os.path.join(self.directory, "alone"), ["a.test"])
        self.assertTrue(verifies(authority.ca_file, leaf))
        self.assertFalse(verifies(other.ca_file, leaf))
        self.assertFalse(verifies(authority.ca_file, alone))
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)


def handshake(server_context, server_name=None, alpn=(), client_certificate=None, seen=None):
    """A TLS handshake in memory between a client naming ``server_name`` (SNI) and ``server_context``;
    the (first DNS name of the certificate the client got, the protocol ALPN chose).  ``client_certificate``:
    (certificate, key) paths the client offers; the server's view of it is appended to ``seen``."""
    from OpenSSL import SSL

    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    if client_certificate:
        client_context.use_certificate_file(client_certificate[0])
        client_context.use_privatekey_file(client_certificate[1])
    if alpn:
        client_context.set_alpn_protos(list(alpn))
    client = SSL.Connection(client_context, None)
    if server_name:
        client.set_tlsext_host_name(server_name.encode("ascii"))
    client.set_connect_state()
    server = SSL.Connection(server_context.getContext(), None)
    server.set_accept_state()
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        for source, sink in ((client, server), (server, client)):
            try:
                sink.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                pass
    if seen is not None:
        seen.append(server.get_peer_certificate())
    certificate = client.get_peer_certificate().to_cryptography()
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return names.get_values_for_type(x509.DNSName)[0], client.get_alpn_proto_negotiated()


class SNITests(SynchronousTestCase):
    """Certificates by host name (``[tls] certificates_dir``, Let's Encrypt's layout) chosen by SNI."""

    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.live = os.path.join(self.directory, "live")
        for name in ("a.test", "b.test"):
            os.makedirs(os.path.join(self.live, name))
            tls.generate_self_signed(os.path.join(self.live, name, "fullchain.pem"),
                                     os.path.join(self.live, name, "privkey.pem"), [name])
        os.makedirs(os.path.join(self.live, "broken.test"))  # no files: left out
        self.default = [os.path.join(self.directory, name) for name in ("default.crt", "default.key")]
        tls.generate_self_signed(*self.default, ["default.test"])

    def test_certificate_by_server_name(self):
        """A client naming a host gets its certificate (a service's name, its host's); one naming an unknown
        host, or none, gets the listener's; the listener's ALPN is kept on every certificate."""
        certificates = tls.HostCertificates(self.live)
        self.assertEqual(sorted(certificates.pairs), ["a.test", "b.test"])
        context = tls.server_context(*self.default, alpn=(b"xmpp-client",), certificates=certificates)
        self.assertEqual(handshake(context, "a.test"), ("a.test", b""))
        self.assertEqual(handshake(context, "B.TEST", alpn=(b"xmpp-client",)), ("b.test", b"xmpp-client"))
        self.assertEqual(handshake(context, "conference.a.test")[0], "a.test")
        self.assertEqual(handshake(context, "c.test")[0], "default.test")
        self.assertEqual(handshake(context)[0], "default.test")

    def test_server_links_keep_asking_for_certificates(self):
        """On the s2s listener a peer naming a host gets that host's certificate, and its own certificate
        is still asked for and seen (SASL EXTERNAL needs it) after the switch."""
        from bridge.core.streams.s2s import PeerTLS

        peer = [os.path.join(self.directory, name) for name in ("peer.crt", "peer.key")]
        tls.generate_self_signed(*peer, ["peer.example"])
        peer_tls = PeerTLS(*self.default, "1.2", None, "", tls.HostCertificates(self.live))
        seen = []
        self.assertEqual(handshake(peer_tls.options, "b.test", client_certificate=peer, seen=seen)[0], "b.test")
        [certificate] = seen
        self.assertEqual(certificate.get_subject().CN, "peer.example")

    def test_outgoing_link_presents_its_domain_certificate(self):
        """A link from a local domain with a certificate of its own presents it (as a client); one from a
        domain without, the s2s certificate."""
        from OpenSSL import SSL

        from bridge.core.streams.s2s import PeerTLS

        peer_tls = PeerTLS(*self.default, "1.2", None, "", tls.HostCertificates(self.live))
        remote = PeerTLS(*self.default, "1.2", None, "")
        for origin, expected in (("b.test", "b.test"), ("upload.a.test", "a.test"), ("other.test", "default.test")):
            client = peer_tls.client("remote.test", origin).clientConnectionForTLS(None)
            server = SSL.Connection(remote.options.getContext(), None)
            server.set_accept_state()
            for _ in range(10):
                for side in (client, server):
                    try:
                        side.do_handshake()
                    except SSL.WantReadError:
                        pass
                for source, sink in ((client, server), (server, client)):
                    try:
                        sink.bio_write(source.bio_read(65536))
                    except SSL.WantReadError:
                        pass
            self.assertEqual(server.get_peer_certificate().get_subject().CN, expected, origin)

    def test_without_folder_the_listener_certificate(self):
        """Without certificates by name every client gets the listener's certificate."""
        context = tls.server_context(*self.default)
        self.assertEqual(handshake(context, "a.test")[0], "default.test")

    def test_folder_must_exist(self):
        """A certificates_dir that is not a folder is a configuration error naming the key."""
        from bridge import config as configuration

        path = os.path.join(self.directory, "bridge.toml")
        with open(path, "w") as handle:
            handle.write('[tls]\ncertificates_dir = "missing"\n')
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(path)
        self.assertIn(f"{path}: tls.certificates_dir: {self.directory}/missing: no such folder",
                      str(caught.exception))

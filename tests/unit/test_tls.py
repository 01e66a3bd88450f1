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

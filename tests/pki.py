"""Certificates for the tests and the benchmark: a throw-away authority, the leaves it signs, self-signed ones.

They are made with the server's own builder (``bridge.core.tls``), so one
piece of code makes every certificate in the tree.  Each certificate is
written as ``NAME.crt`` with its key ``NAME.key`` (PEM, 0600), the file names
Prosody's ``certificates`` folder expects.
"""

import os

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.core import tls

KEY_KINDS = ("ec", "rsa")


def new_key(kind="ec"):
    """A private key: EC P-256, the kind bridge generates for itself, or RSA-2048."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_description(kind):
    """How the benchmark's JSON names a key kind."""
    return "rsa2048" if kind == "rsa" else "ec-secp256r1"


def _write(directory, file_name, certificate, key):
    cert_path = os.path.join(str(directory), f"{file_name}.crt")
    key_path = os.path.join(str(directory), f"{file_name}.key")
    tls.write_pem(cert_path, key_path, certificate, key)
    return cert_path, key_path


def self_signed(directory, names, key_kind="ec", file_name=None):
    """A certificate for ``names`` signed by its own key; (certificate path, key path)."""
    key = new_key(key_kind)
    return _write(directory, file_name or str(names[0]), tls.build_certificate(key, names), key)


class CertificateAuthority:
    """An authority made for one run.  ``ca_file`` (its certificate) is the trust store to give the peers."""

    def __init__(self, directory, name="ca.bridge.test", key_kind="ec"):
        self.directory = str(directory)
        self.key_kind = key_kind
        self.key = new_key(key_kind)
        self.certificate = tls.build_certificate(self.key, [name])
        self.ca_file, _ = _write(self.directory, "ca", self.certificate, self.key)

    def issue(self, directory, names, file_name=None):
        """A certificate for ``names`` (DNS names or ``ipaddress`` addresses) signed by this
        authority, for a TLS server or client; (certificate path, key path)."""
        key = new_key(self.key_kind)
        certificate = tls.build_certificate(key, names, issuer=(self.certificate, self.key))
        return _write(directory or self.directory, file_name or str(names[0]), certificate, key)

"""TLS for listeners: the certificate (generated at first start) and per-listener policy.

Each listener gets its own context from its own minimum version and cipher
list, so tightening the policy of one (the XMPP clients) never breaks another
(a SIP registrar), a lesson of the field reports.

Several hosts need not share one certificate that names them all: with
``[tls] certificates_dir`` (``HostCertificates``), a client that names a
host by SNI gets that host's certificate, under the listener's own policy;
one that names no host, or one without a certificate there, gets the
listener's.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.logger import Logger

from bridge.core import datadir

log = Logger()

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def build_certificate(key, names, issuer=None, now=None):
    """A certificate of ``key`` for ``names``, the first of them also its subject.

    Names are DNS names, or ``ipaddress`` addresses.  With no ``issuer``
    (certificate, key) it is self-signed and may act as an authority, as the
    tests' and the benchmark's certificate authorities do (``tests/pki.py``).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(names[0]))])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    alternative_names = [x509.IPAddress(name) if isinstance(name, (ipaddress.IPv4Address, ipaddress.IPv6Address))
                         else x509.DNSName(name) for name in names]
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


def write_pem(cert_path, key_path, certificate, key):
    """Write a certificate and its key as PEM, the key 0600 in a 0700 folder."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    datadir.private_folder(os.path.dirname(os.path.abspath(key_path)))
    datadir.write_private_file(key_path, pem)
    with open(cert_path, "wb") as handle:
        handle.write(certificate.public_bytes(serialization.Encoding.PEM))


def generate_self_signed(cert_path, key_path, names, now=None):
    """Write a self-signed certificate for ``names`` (the first is the subject)."""
    key = ec.generate_private_key(ec.SECP256R1())
    write_pem(cert_path, key_path, build_certificate(key, names, now=now), key)


def certificate_paths(config, listener=None):
    """The (certificate, key) a listener uses, generating the default pair if needed."""
    if listener is not None and listener.certificate:
        return listener.certificate, listener.private_key
    if config.tls.certificate:
        return config.tls.certificate, config.tls.private_key
    cert_path = config.data_path("certs/bridge.crt")
    key_path = config.data_path("certs/bridge.key")
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        names = []
        for name, host in config.hosts.items():
            names += [name, *host.aliases]
        generate_self_signed(cert_path, key_path, names)
        log.info("generated a self-signed certificate for {names} at {path}", names=names, path=os.path.abspath(cert_path))
    return cert_path, key_path


class HostCertificates:
    """Certificates by host name, from a folder in Let's Encrypt's layout: ``<folder>/<name>/fullchain.pem``
    and ``privkey.pem`` (``/etc/letsencrypt/live``).  Read once, when made; a subfolder without both files
    is left out, with a line in the log."""

    CHAIN = "fullchain.pem"
    KEY = "privkey.pem"

    def __init__(self, folder):
        self.pairs = {}  # host name -> (chain path, key path)
        for name in sorted(os.listdir(folder)):
            subfolder = os.path.join(folder, name)
            if not os.path.isdir(subfolder):
                continue
            chain, key = os.path.join(subfolder, self.CHAIN), os.path.join(subfolder, self.KEY)
            if os.path.isfile(chain) and os.path.isfile(key):
                self.pairs[name.lower().rstrip(".")] = (chain, key)
            else:
                log.warn("{folder}: no {chain} and {key} in it, left out of the certificates by host name",
                         folder=subfolder, chain=self.CHAIN, key=self.KEY)

    def name_for(self, server_name):
        """The name of the certificate for ``server_name``: its own, else its parent domain's (Let's Encrypt
        names a certificate for a host and its services, such as conference.example.org, after the host);
        None when neither is there."""
        name = server_name.lower().rstrip(".")
        if name in self.pairs:
            return name
        parent = name.partition(".")[2]
        return parent if parent in self.pairs else None


def server_context(cert_path, key_path, min_version="1.2", ciphers=None, alpn=(), certificates=None):
    """A Twisted TLS context factory for a server listener.

    ``alpn``: the protocol names this listener speaks (RFC 7301).  A client
    that offers others, or none of these, still gets its handshake: Twisted's
    own ALPN callback would abort it with an internal-error alert (Prosody
    offers ``xmpp-server`` on every link it opens).  ``certificates``: a
    ``HostCertificates``, whose certificates are chosen by SNI.
    """
    with open(cert_path, "rb") as handle:
        chain = handle.read()
    with open(key_path, "rb") as handle:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, handle.read())
    chain_certificates = [crypto.load_certificate(crypto.FILETYPE_PEM, block)
                          for block in _pem_blocks(chain)]
    options = {}
    if ciphers:
        options["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(ciphers)
    context_factory = ssl.CertificateOptions(
        privateKey=key,
        certificate=chain_certificates[0],
        extraCertChain=chain_certificates[1:],
        raiseMinimumTo=TLS_VERSIONS[min_version],
        **options,
    )
    context = context_factory.getContext()
    context.set_alpn_select_callback(_alpn_selector(alpn))
    # An idle connection then holds no read and write buffers (about 34 KiB with OpenSSL 3).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if certificates is not None and certificates.pairs:
        contexts = {name: server_context(chain, key, min_version, ciphers, alpn).getContext()
                    for name, (chain, key) in certificates.pairs.items()}
        context.set_tlsext_servername_callback(_certificate_selector(certificates, contexts))
    return context_factory


def _certificate_selector(certificates, contexts):
    """The SNI callback: the context of the host the client names, if there is one for it."""

    def select(connection):
        server_name = connection.get_servername()
        if not server_name:
            return
        name = certificates.name_for(server_name.decode("ascii", "replace"))
        if name is not None:
            connection.set_context(contexts[name])

    return select


def _alpn_selector(spoken):
    def select(connection, offered):
        for name in spoken:
            if name in offered:
                return name
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def trust_roots(ca_file):
    """Every certificate of the PEM bundle ``ca_file``, as the trust roots of a TLS client.

    ``Certificate.loadPEM`` reads only the first certificate of a file, so a
    bundle whose signing CA is not first would be refused.
    """
    with open(ca_file, "rb") as handle:
        blocks = _pem_blocks(handle.read())
    if not blocks:
        raise ValueError(f"{ca_file}: no PEM certificate in the file")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(block) for block in blocks])


def _pem_blocks(data):
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in data.split(marker) if b"-----BEGIN" in block]


def channel_binding(transport):
    """tls-exporter data (RFC 9266) of a TLS transport, or None."""
    connection = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(connection, SSL.Connection):
        return None
    if connection.get_protocol_version_name() != "TLSv1.3":
        return None
    return connection.export_keying_material(b"EXPORTER-Channel-Binding", 32)

"""What ``bridgectl check`` finds in a configuration beyond what loading it finds: the contents of its files.

``config.load`` refuses what cannot start (keys, types, ranges, endpoint
strings, route and resolver syntax, files that are missing).  These checks
open the certificates and keys it names: a certificate whose key is another's
is an error (the listener would not start, a reload would be refused); a
certificate near its end, a host that no certificate names, or a web client
folder without the client are warnings (the server runs, but a client will
complain).  Each finding names the file, the key and the reason.
"""

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from bridge.core.tls import HostCertificates
from bridge.gateways.webclient import client_installed

# A certificate that ends sooner than this is reported (Let's Encrypt renews 30 days ahead).
EXPIRY_WARNING_DAYS = 14
# The sections whose certificate and private_key name a pair.
CERTIFICATE_SECTIONS = ("tls", "c2s", "s2s", "http", "sip")


@dataclass(frozen=True)
class Finding:
    """One thing found: ``severity`` is "error" (it would fail) or "warning" (it runs, but not well)."""

    severity: str
    text: str

    def __str__(self):
        return f"{self.severity}: {self.text}"


@dataclass(frozen=True)
class Pair:
    """A certificate chain and its key as the configuration names them, with the leaf once it is read."""

    key_path: str  # "c2s.certificate", "tls.certificates_dir"
    chain: str
    private_key: str
    leaf: x509.Certificate = None


def check(config, now=None):
    """Every ``Finding`` in the loaded ``config``, errors and warnings, in the order of the file's sections.

    ``now``: the time certificates are compared with (a timezone-aware datetime; default: the present).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    where = config.source
    by_folder = HostCertificates(config.tls.certificates_dir) if config.tls.certificates_dir else None
    findings = []
    pairs = []
    for pair in configured_pairs(config, by_folder):
        leaf, problems = read_pair(pair, now)
        findings += [Finding(severity, f"{where}: {pair.key_path}: {text}") for severity, text in problems]
        if leaf is not None:
            pairs.append(Pair(pair.key_path, pair.chain, pair.private_key, leaf))
    findings += _unnamed_hosts(config, pairs, by_folder, where)
    findings += _web_client(config, where)
    return findings


def configured_pairs(config, by_folder):
    """The certificate pairs the configuration names (not the one the server generates when it names none);
    ``by_folder``: the ``HostCertificates`` of certificates_dir, or None."""
    pairs = [Pair(f"{name}.certificate", getattr(config, name).certificate, getattr(config, name).private_key)
             for name in CERTIFICATE_SECTIONS if getattr(config, name).certificate]
    if by_folder is not None:
        pairs += [Pair("tls.certificates_dir", chain, key) for chain, key in by_folder.pairs.values()]
    return pairs


def read_pair(pair, now):
    """(the leaf certificate or None, [(severity, text)]) of ``pair``: unreadable files, a key that is not
    the certificate's, a certificate that has ended or ends within EXPIRY_WARNING_DAYS."""
    try:
        with open(pair.chain, "rb") as handle:
            certificates = x509.load_pem_x509_certificates(handle.read())
    except OSError as error:
        return None, [("error", f"{pair.chain}: {error.strerror}")]
    except ValueError:
        return None, [("error", f"{pair.chain}: not a PEM certificate")]
    try:
        with open(pair.private_key, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
    except OSError as error:
        return None, [("error", f"{pair.private_key}: {error.strerror}")]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # TypeError: a key encrypted with a passphrase, which the server has no way to be given.
        return None, [("error", f"{pair.private_key}: not an unencrypted PEM private key")]
    leaf = certificates[0]
    problems = []
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        problems.append(("error", f"{pair.chain}: its key is not {pair.private_key} (the certificate and "
                                  "the private key do not match)"))
    ends = leaf.not_valid_after_utc
    if ends <= now:
        problems.append(("warning", f"{pair.chain}: expired on {ends:%Y-%m-%d %H:%M} UTC"))
    elif ends - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        problems.append(("warning", f"{pair.chain}: expires on {ends:%Y-%m-%d %H:%M} UTC, within "
                                    f"{EXPIRY_WARNING_DAYS} days"))
    return leaf, problems


def _public_bytes(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def certificate_names(certificate):
    """The DNS names a certificate is valid for: its subjectAltName's, else (no such extension) its CN."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [name.lower() for name in names.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [attribute.value.lower() for attribute in
                certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]


def names_domain(pattern, domain):
    """Whether the certificate name ``pattern`` covers ``domain``: equal, or a wildcard ``*.`` standing for
    exactly one leftmost label (RFC 6125 section 6.4.3)."""
    if pattern.startswith("*."):
        label, _, rest = domain.partition(".")
        return bool(label) and rest == pattern[2:]
    return pattern == domain


def served_domains(config):
    """{domain: what it is} of every domain the server answers for, which a peer may ask a certificate of:
    hosts, their aliases, the services on their subdomains and the gateways' domains."""
    domains = {}
    for name, host in config.hosts.items():
        domains[name] = f"hosts.{name}"
        for alias in host.aliases:
            domains[alias.lower()] = f"hosts.{name}.aliases"
        for section in ("muc", "upload", "pubsub"):
            service = getattr(config, section)
            if service.enabled:
                domains[f"{service.subdomain.lower()}.{name}"] = f"{section}.subdomain"
    for section in ("sip", "sms"):
        gateway = getattr(config, section)
        if gateway.enabled and gateway.domain:
            domains[gateway.domain.lower()] = f"{section}.domain"
    return domains


def _unnamed_hosts(config, pairs, by_folder, where):
    """A warning for each served domain that no configured certificate names.  A domain with a folder
    of its own in certificates_dir (or its parent's) is served that certificate by SNI, so that one
    must name it."""
    if not pairs:
        return []  # no certificate configured: the server makes its own for the hosts and aliases
    leaves = {pair.chain: pair.leaf for pair in pairs}
    listeners = [pair.leaf for pair in pairs if pair.key_path != "tls.certificates_dir"]
    findings = []
    for domain, source in served_domains(config).items():
        folder = by_folder.name_for(domain) if by_folder else None
        if folder is not None:
            chain = by_folder.pairs[folder][0]
            candidates = [leaves[chain]] if chain in leaves else []
            reason = f"its certificate by SNI, {chain}, does not name it"
        else:
            candidates = listeners
            reason = "no configured certificate names it (certificate, private_key, certificates_dir)"
        if not any(names_domain(name, domain) for leaf in candidates for name in certificate_names(leaf)):
            findings.append(Finding("warning", f"{where}: {source}: {domain}: {reason}"))
    return findings


def _web_client(config, where):
    """A warning when ``[http] web_client_dir`` is set, the HTTP listener is on, and the folder holds no
    Converse.js: the web page then only says that the client is not installed."""
    http = config.http
    if not (http.web_client_dir and (http.endpoints or http.tls_endpoints)):
        return []
    if not os.path.isdir(http.web_client_dir):
        reason = "no such folder"
    elif not client_installed(http.web_client_dir):
        reason = "no converse.min.js in it"
    else:
        return []
    return [Finding("warning", f"{where}: http.web_client_dir: {http.web_client_dir}: {reason}; the web page "
                               "will say the web client is not installed")]

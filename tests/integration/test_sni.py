"""Certificates by host name on the real server: a client's SNI picks its host's certificate on the direct TLS
client listener, the HTTPS listener and STARTTLS; other names get the listener's."""

import socket
import ssl

from cryptography import x509

from bridge.core import tls

from .harness import RawClient, ServerProcess, write_config


def served_name(port, server_name):
    """The first DNS name of the certificate served on ``port`` to a TLS client naming ``server_name``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        with context.wrap_socket(connection, server_hostname=server_name) as secured:
            der = secured.getpeercert(binary_form=True)
    names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return names.value.get_values_for_type(x509.DNSName)[0]


def test_certificate_chosen_by_sni(tmp_path):
    """example.test's own certificate is served to clients naming it (or its alias's parent), on direct TLS
    and HTTPS; localhost, which has none in the folder, gets the generated one; STARTTLS chooses alike."""
    live = tmp_path / "live"
    (live / "example.test").mkdir(parents=True)
    tls.generate_self_signed(str(live / "example.test" / "fullchain.pem"), str(live / "example.test" / "privkey.pem"),
                             ["example.test"])
    config_path = write_config(str(tmp_path), tables=f'[tls]\ncertificates_dir = "{live}"\n')
    process = ServerProcess(config_path).start(wait_for=("c2s", "c2s-direct-tls", "https"))
    try:
        for kind in ("c2s-direct-tls", "https"):
            assert served_name(process.ports[kind], "example.test") == "example.test", kind
            assert served_name(process.ports[kind], "upload.example.test") == "example.test", kind
            assert served_name(process.ports[kind], "localhost") == "localhost", kind
        raw = RawClient(process.port, server_hostname="example.test")
        try:
            raw.secure("example.test")
            der = raw.sock.getpeercert(binary_form=True)
        finally:
            raw.close()
        names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert names.value.get_values_for_type(x509.DNSName) == ["example.test"]
    finally:
        process.stop()

#!/usr/bin/env python3
"""Benchmark the bridge XMPP server against Prosody on loopback.

One run: starts bridge (twistd) with a generated config, creates the accounts
with bridgectl, runs three loads with bench/load.py (idle-session memory,
logins/s, one-to-one messages/s with latency), stops it; then does the same
with Prosody in a private temporary directory; prints a comparison table and
writes every figure as JSON to --output.

Then the federation phase: bridge a.test sends messages over s2s links to
bridge c.test and to Prosody b.test (certificates from a test CA made here),
on loopback addresses of their own (127.0.0.12-14 by default).

Servers run one at a time (except A with its peer in the federation phase),
each bound to its own loopback address only, and are always stopped at the
end, even on error.
"""

import argparse
import concurrent.futures
import datetime
import glob
import hashlib
import hmac
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
LOAD = os.path.join(BENCH_DIR, "load.py")


def say(*parts):
    print("[run]", *parts, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------
# process helpers

def proc_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError("no VmRSS for pid %d" % pid)


def wait_port(host, port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError("server exited with code %s before listening" % proc.returncode)
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise BenchError("port %s:%d not accepting connections after %.0f s"
                     % (host, port, timeout))


def port_free(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except OSError:
        return True


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


# ---------------------------------------------------------------------------
# certificates

def make_cert(domain, cert_path, key_path, key_type="rsa"):
    """Self-signed certificate for `domain`, with cryptography or openssl CLI."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID
    except ImportError:
        x509 = None
    if x509 is not None:
        if key_type == "ec":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]),
                               critical=False)
                .sign(key, hashes.SHA256()))
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    else:
        newkey = "ec:" if key_type == "ec" else "rsa:2048"
        cmd = ["openssl", "req", "-x509", "-nodes", "-days", "30",
               "-subj", "/CN=%s" % domain, "-addext", "subjectAltName=DNS:%s" % domain,
               "-keyout", key_path, "-out", cert_path]
        if key_type == "ec":
            cmd[3:3] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        else:
            cmd[3:3] = ["-newkey", newkey]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(key_path, 0o600)


def describe_certs(directory):
    """Best effort: key type of the certificates found under `directory`."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
    except ImportError:
        return None
    found = []
    for path in sorted(glob.glob(os.path.join(directory, "**", "*"), recursive=True)):
        if not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if b"BEGIN CERTIFICATE" not in data:
            continue
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            continue
        pk = cert.public_key()
        if isinstance(pk, rsa.RSAPublicKey):
            kind = "rsa%d" % pk.key_size
        elif isinstance(pk, ec.EllipticCurvePublicKey):
            kind = "ec-%s" % pk.curve.name
        else:
            kind = type(pk).__name__
        found.append({"file": os.path.relpath(path, directory), "key": kind})
    return found


def make_test_pki(directory, domains, key_type="ec"):
    """A throw-away CA and one leaf certificate per domain (subjectAltName
    DNS = the domain, usable as TLS server and client certificate, as s2s
    links need).  Returns {"ca_file": path, domain: (cert, key), ...}."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def new_key():
        if key_type == "ec":
            return ec.generate_private_key(ec.SECP256R1())
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(key, path):
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
        os.chmod(path, 0o600)

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    ca_key = new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridge bench test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=False, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca_file": os.path.join(directory, "ca.pem")}
    with open(out["ca_file"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    for domain in domains:
        key = new_key()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=key_type != "ec", data_encipherment=False,
                    key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]),
                               critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ca_ski), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_path = os.path.join(directory, "%s.crt" % domain)
        key_path = os.path.join(directory, "%s.key" % domain)
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, key_path)
        out[domain] = (cert_path, key_path)
    return out


# ---------------------------------------------------------------------------
# servers

class Server:
    name = "?"

    def __init__(self, args, workdir, port, host="127.0.0.1", domain=None, name=None):
        self.args = args
        self.dir = workdir
        self.host = host
        self.port = port
        self.domain = domain or args.domain
        if name:
            self.name = name
        self.extra_ports = []  # (host, port) also listened on, e.g. s2s
        self.proc = None
        self.last_proc = None
        self.out_path = os.path.join(workdir, "server.out")
        self.info = {}
        os.makedirs(workdir, exist_ok=True)

    @property
    def pid(self):
        return self.proc.pid

    def command(self):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def start(self):
        for host, port in [(self.host, self.port)] + self.extra_ports:
            if not port_free(host, port):
                raise BenchError("%s: port %s:%d is already in use" % (self.name, host, port))
        cmd = self.command()
        say("%s: starting: %s" % (self.name, " ".join(cmd)))
        self.out = open(self.out_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.dir, env=self.env(), stdin=subprocess.DEVNULL,
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=raise_nofile)
        try:
            for host, port in [(self.host, self.port)] + self.extra_ports:
                wait_port(host, port, self.proc, self.args.start_timeout)
        except BenchError as exc:
            raise BenchError("%s: %s\n--- last output (%s) ---\n%s"
                             % (self.name, exc, self.out_path, tail(self.out_path)))
        say("%s: listening on %s:%d (pid %d)" % (self.name, self.host, self.port, self.pid))

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self.last_proc = proc
        note = ""
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                say("%s: did not stop on SIGTERM, killing" % self.name)
                note = " (killed)"
                proc.kill()
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        else:
            note = " (had exited by itself)"
        self.info.setdefault("exit_codes", []).append(
            "%s%s" % (proc.returncode, note))
        self.out.close()
        say("%s: stopped, exit code %s%s" % (self.name, proc.returncode, note))

    def on_started(self):
        pass

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class ProsodyServer(Server):
    name = "prosody"

    def __init__(self, args, workdir, port, key_type, host="127.0.0.1", domain=None,
                 name=None, s2s=None, http_port=None):
        super().__init__(args, workdir, port, host, domain, name)
        # Browser transports phase: mod_bosh and mod_websocket on plain HTTP.
        self.http_port = http_port
        if http_port:
            self.extra_ports.append((host, http_port))
        self.data = os.path.join(workdir, "data")
        self.certs = os.path.join(workdir, "certs")
        self.cfg = os.path.join(workdir, "prosody.cfg.lua")
        self.log_path = os.path.join(workdir, "prosody.log")
        self.key_type = key_type
        # Federation: {"port", "cert", "key", "ca_file", "hosts_file", "resolv_conf"}
        self.s2s = s2s
        if s2s:
            self.extra_ports.append((host, s2s["port"]))

    def prepare(self, accounts):
        os.makedirs(self.data, exist_ok=True)
        os.makedirs(self.certs, exist_ok=True)
        cert = os.path.join(self.certs, "%s.crt" % self.domain)
        key = os.path.join(self.certs, "%s.key" % self.domain)
        if self.s2s:
            shutil.copyfile(self.s2s["cert"], cert)
            shutil.copyfile(self.s2s["key"], key)
            os.chmod(key, 0o600)
            self.info["certificate_key"] = self.s2s.get("key_kind")
        else:
            make_cert(self.domain, cert, key, self.key_type)
            self.info["certificate_key"] = "rsa2048" if self.key_type != "ec" else "ec-secp256r1"
        lua = lambda s: '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')
        if self.s2s:
            self.write_federated_config(cert, key, lua)
            self.create_accounts(accounts)
            return
        lines = [
            "-- generated by bench/run.py",
            "pidfile = %s" % lua(os.path.join(self.dir, "prosody.pid")),
            "data_path = %s" % lua(self.data),
            "certificates = %s" % lua(self.certs),
            "log = { warn = %s }" % lua(os.path.join(self.dir, "prosody.log")),
            "interfaces = { %s }" % lua(self.host),
            "c2s_ports = { %d }" % self.port,
            "c2s_direct_tls_ports = { }",
            "modules_enabled = { \"roster\", \"saslauth\", \"tls\", \"disco\", \"ping\", "
            "\"posix\"%s }" % (", \"bosh\", \"websocket\"" if self.http_port else ""),
            "modules_disabled = { \"s2s\", \"offline\" }",
            "c2s_require_encryption = true",
            "authentication = \"internal_hashed\"",
            "storage = \"internal\"",
            "ssl = { certificate = %s, key = %s }" % (lua(cert), lua(key)),
        ]
        if self.http_port:
            lines += [
                "http_ports = { %d }" % self.http_port,
                "http_interfaces = { %s }" % lua(self.host),
                "https_ports = { }",
                "https_interfaces = { }",
                # Plain HTTP on loopback counts as secure, so that SASL is
                # allowed there (c2s_require_encryption is for TCP only).
                "consider_bosh_secure = true",
                "consider_websocket_secure = true",
            ]
        if os.getuid() == 0:
            # prosodyctl would otherwise switch to the 'prosody' user and
            # prosody itself refuses to run as root.
            lines.append("run_as_root = true")
        lines.append("VirtualHost %s" % lua(self.domain))
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.create_accounts(accounts)

    def write_federated_config(self, cert, key, lua):
        """Config with s2s on: certificates from the test CA, names from a hosts file."""
        f2 = self.s2s
        lines = [
            "-- generated by bench/run.py (federation phase)",
            "pidfile = %s" % lua(os.path.join(self.dir, "prosody.pid")),
            "data_path = %s" % lua(self.data),
            "certificates = %s" % lua(self.certs),
            # info level: s2s authentication is logged there (no per-stanza lines).
            "log = { info = %s }" % lua(self.log_path),
            "interfaces = { %s }" % lua(self.host),
            "c2s_ports = { %d }" % self.port,
            "c2s_direct_tls_ports = { }",
            "s2s_ports = { %d }" % f2["port"],
            "s2s_direct_tls_ports = { }",
            # s2s, s2s_auth_certs are loaded by default; dialback is the
            # fallback (unused when certificates verify); smacks does XEP-0198
            # on s2s too.
            "modules_enabled = { \"roster\", \"saslauth\", \"tls\", \"dialback\", "
            "\"disco\", \"ping\", \"posix\", \"smacks\" }",
            "modules_disabled = { \"offline\" }",
            "c2s_require_encryption = true",
            "s2s_require_encryption = true",
            "s2s_secure_auth = true",
            "authentication = \"internal_hashed\"",
            "storage = \"internal\"",
            "ssl = { certificate = %s, key = %s, cafile = %s }" % (
                lua(cert), lua(key), lua(f2["ca_file"])),
            # libunbound: names from this hosts file; SRV queries to a
            # resolver list of our own (.test is answered locally anyway).
            "unbound = { hoststxt = %s, resolvconf = %s }" % (
                lua(f2["hosts_file"]), lua(f2["resolv_conf"])),
        ]
        if not f2.get("alpn"):
            # Prosody offers ALPN "xmpp-server" on its outgoing s2s TLS; bridge's
            # TLS server (Twisted's ALPN select callback, no protocol in common)
            # answers that ClientHello with an internal_error alert, so the
            # link b.test -> a.test never comes up.  Not sending ALPN avoids it.
            lines.append("s2s_ssl = { alpn = false }")
        if os.getuid() == 0:
            lines.append("run_as_root = true")
        lines.append("VirtualHost %s" % lua(self.domain))
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")

    def log_files(self):
        return [self.out_path, self.log_path]

    def create_accounts(self, accounts):
        a = self.args
        users = [a.user_pattern.format(i) for i in range(1, accounts + 1)]
        t0 = time.monotonic()
        # The first account goes through prosodyctl, so the documented tool is
        # exercised and a config error shows up here.
        cmd = ["prosodyctl", "--config", self.cfg, "register", users[0], self.domain,
               a.password]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        acct_dir = os.path.join(self.data, lua_path_encode(self.domain), "accounts")
        first = os.path.join(acct_dir, lua_path_encode(users[0]) + ".dat")
        if r.returncode != 0 or not os.path.exists(first):
            raise BenchError("prosodyctl register failed (%s): %s %s"
                             % (r.returncode, r.stdout, r.stderr))
        if a.prosody_accounts == "prosodyctl":
            def reg(u):
                subprocess.run(["prosodyctl", "--config", self.cfg, "register", u,
                                self.domain, a.password], check=True,
                               capture_output=True, timeout=60)
            with concurrent.futures.ThreadPoolExecutor(a.ctl_jobs) as ex:
                list(ex.map(reg, users[1:]))
        else:
            # Prosody's internal storage is one Lua file per account holding
            # the SCRAM stored/server keys: the same content prosodyctl writes
            # (mod_auth_internal_hashed, 10000 iterations), without spawning
            # one process per account.
            with concurrent.futures.ProcessPoolExecutor(max(1, os.cpu_count() or 1)) as ex:
                for u, text in zip(users[1:], ex.map(
                        prosody_account_file, [a.password] * (len(users) - 1),
                        chunksize=64)):
                    with open(os.path.join(acct_dir, lua_path_encode(u) + ".dat"), "w") as f:
                        f.write(text)
        self.info["accounts_setup_s"] = round(time.monotonic() - t0, 2)
        say("%s: %d accounts ready in %.1f s" % (self.name, accounts, time.monotonic() - t0))

    def command(self):
        return ["prosody", "--config", self.cfg, "-F"]


def lua_path_encode(s):
    """Prosody datamanager's file name encoding (non-alphanumerics as %xx)."""
    return "".join(c if c.isascii() and c.isalnum() else "%%%02x" % ord(c) for c in s)


def prosody_account_file(password, iterations=10000):
    salt = str(uuid.uuid4())
    sp = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), iterations)
    client_key = hmac.digest(sp, b"Client Key", "sha1")
    stored_key = hashlib.sha1(client_key).hexdigest()
    server_key = hmac.digest(sp, b"Server Key", "sha1").hex()
    return ('return {\n\t["iteration_count"] = %d;\n\t["salt"] = "%s";\n'
            '\t["server_key"] = "%s";\n\t["stored_key"] = "%s";\n};\n'
            % (iterations, salt, server_key, stored_key))


class BridgeServer(Server):
    name = "bridge"

    def __init__(self, args, workdir, port, host="127.0.0.1", domain=None, name=None,
                 data_dir=None, s2s=None, http_port=None):
        super().__init__(args, workdir, port, host, domain, name)
        # Browser transports phase: BOSH and WebSocket on a plain HTTP listener.
        self.http_port = http_port
        if http_port:
            self.extra_ports.append((host, http_port))
        if data_dir is None and args.bridge_data_dir:
            data_dir = args.bridge_data_dir
        self.data = os.path.abspath(data_dir) if data_dir else os.path.join(workdir, "data")
        # Federation: {"port", "cert", "key", "ca_file", "static_routes", "dialback"}
        self.s2s = s2s
        if s2s:
            self.extra_ports.append((host, s2s["port"]))
        self.cfg = os.path.join(workdir, "bridge.toml")
        self.pwfile = os.path.join(workdir, "password")
        venv = os.path.join(REPO, ".venv", "bin")
        self.python = os.path.join(venv, "python") if os.path.exists(
            os.path.join(venv, "python")) else sys.executable
        self.twistd = os.path.join(venv, "twistd")

    def env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def prepare(self, accounts):
        os.makedirs(self.data, exist_ok=True)
        toml_str = lambda s: json.dumps(s)  # JSON strings are valid TOML basic strings
        with open(self.cfg, "w") as f:
            f.write("# generated by bench/run.py\n")
            f.write("data_dir = %s\n\n" % toml_str(self.data))
            f.write("[c2s]\n")
            f.write("endpoints = [%s]\n" % toml_str(
                "tcp:%d:interface=%s" % (self.port, self.host)))
            f.write("direct_tls_endpoints = []\n")
            f.write("max_connections_per_address = 1000000\n")
            f.write("rate_limit_bytes_per_second = 1000000000\n\n")
            s2s = self.s2s
            if s2s:
                f.write("[s2s]\n")
                f.write("endpoints = [%s]\n" % toml_str(
                    "tcp:%d:interface=%s" % (s2s["port"], self.host)))
                f.write("direct_tls_endpoints = []\n")
                f.write("ca_file = %s\n" % toml_str(s2s["ca_file"]))
                f.write("certificate = %s\n" % toml_str(s2s["cert"]))
                f.write("private_key = %s\n" % toml_str(s2s["key"]))
                f.write("dialback = %s\n" % ("true" if s2s.get("dialback", True) else "false"))
                f.write("static_routes = { %s }\n" % ", ".join(
                    "%s = %s" % (toml_str(d), toml_str(r))
                    for d, r in sorted(s2s["static_routes"].items())))
                # Like the c2s limits above: the link carries every pair's traffic.
                f.write("rate_limit_bytes_per_second = 1000000000\n")
                f.write("rate_limit_burst_bytes = 1000000000\n\n")
            else:
                f.write("[s2s]\nendpoints = []\n\n")
            # The default component listener (127.0.0.1:5347) may be taken by
            # another bridge on this machine; a listen failure stops bridge.
            if bridge_has_section("component_listener"):
                f.write("[component_listener]\nendpoints = []\n\n")
            if self.http_port:
                # Browser transports: plain HTTP on this bridge's address only.
                f.write("[http]\nendpoints = [%s]\ntls_endpoints = []\n\n" % toml_str(
                    "tcp:%d:interface=%s" % (self.http_port, self.host)))
            elif bridge_has_section("http"):
                # Nor the HTTP (BOSH/WebSocket) listeners, on all interfaces
                # (:5280, :5281) by default: two bridges at once would clash.
                f.write("[http]\nendpoints = []\ntls_endpoints = []\n\n")
            if bridge_has_section("sip"):
                # Nor the SIP gateway (5060/5061 on all interfaces by default).
                f.write("[sip]\nenabled = false\n\n")
            f.write("[hosts.%s]\n" % toml_str(self.domain))
            f.write("aliases = []\n")
        with open(self.pwfile, "w") as f:
            f.write(self.args.password + "\n")
        os.chmod(self.pwfile, 0o600)
        self.create_accounts(accounts)

    def create_accounts(self, accounts):
        a = self.args
        marker = os.path.join(self.data, "bench-accounts.json")
        have = 0
        try:
            with open(marker) as f:
                m = json.load(f)
            if (m.get("pattern"), m.get("domain"), m.get("password_sha256")) == (
                    a.user_pattern, self.domain, sha256(a.password)):
                have = int(m.get("count", 0))
        except (OSError, ValueError):
            pass
        todo = list(range(have + 1, accounts + 1))
        if not todo:
            say("%s: %d accounts already in %s" % (self.name, have, self.data))
            self.info["accounts_setup_s"] = 0.0
            return
        say("%s: creating %d accounts with bridgectl (%d in parallel)..."
            % (self.name, len(todo), a.ctl_jobs))
        t0 = time.monotonic()
        env = self.env()
        failures = []

        def add(i):
            jid = "%s@%s" % (a.user_pattern.format(i), self.domain)
            cmd = [self.python, "-m", "bridge.ctl", "--config", self.cfg,
                   "adduser", jid, "--password-file", self.pwfile]
            last = None
            for attempt in range(5):  # SQLite may be busy with parallel writers
                r = subprocess.run(cmd, env=env, cwd=self.dir, capture_output=True,
                                   text=True, timeout=120)
                if r.returncode == 0 or "already exists" in r.stderr:
                    return None  # made by an earlier run on the same data folder
                last = (r.returncode, (r.stdout + r.stderr).strip()[-500:])
                time.sleep(0.2 * (attempt + 1))
            return (jid, last)

        done = 0
        with concurrent.futures.ThreadPoolExecutor(a.ctl_jobs) as ex:
            for res in ex.map(add, todo):
                done += 1
                if res is not None:
                    failures.append(res)
                    if len(failures) >= 3:
                        break
                if done % 200 == 0:
                    say("%s: %d/%d accounts" % (self.name, done, len(todo)))
        if failures:
            raise BenchError("bridgectl adduser failed: %s" % failures[:3])
        with open(marker, "w") as f:
            json.dump({"pattern": a.user_pattern, "domain": self.domain,
                       "password_sha256": sha256(a.password), "count": accounts}, f)
        self.info["accounts_setup_s"] = round(time.monotonic() - t0, 2)
        say("%s: %d accounts created in %.1f s" % (self.name, len(todo),
                                                     time.monotonic() - t0))

    def on_started(self):
        if "certificates" not in self.info:
            certs = describe_certs(self.data)
            self.info["certificates"] = certs
            if certs:
                self.info["certificate_key"] = certs[0]["key"]

    def log_files(self):
        return [self.out_path]

    def command(self):
        if os.path.exists(self.twistd):
            return [self.twistd, "-n", "--pidfile=", "bridge", "--config", self.cfg]
        return [self.python, "-m", "twisted", "-n", "--pidfile=", "bridge",
                "--config", self.cfg]


def bridge_has_section(name):
    """Whether this bridge's configuration knows the [name] table (an unknown
    table is an error, and the tables change as bridge grows)."""
    try:
        with open(os.path.join(REPO, "bridge", "config.py")) as f:
            src = f.read()
    except OSError:
        return False
    m = re.search(r"_SECTIONS\s*=\s*\{([^}]*)\}", src)
    return bool(m) and ('"%s"' % name) in m.group(1)


def sha256(s):
    return hashlib.sha256(s.encode()).hexdigest()


# ---------------------------------------------------------------------------
# loads

def loader_cmd(args, server, mode, extra, recv=None, accounts=None, transport=None):
    """The load.py command line; `transport` (bosh, websocket) points it at the
    server's HTTP listener instead of c2s."""
    port = server.port
    if transport and transport != "tcp":
        port = server.http_port
        extra = ["--transport", transport, "--bosh-max-rate", args.bosh_max_rate,
                 "--bosh-burst", args.bosh_burst] + list(extra)
    cmd = [sys.executable, LOAD, mode, "--host", server.host, "--port", str(port),
           "--domain", server.domain, "--user-pattern", args.user_pattern,
           "--password", args.password, "--accounts", str(accounts or args.accounts),
           "--concurrency", str(args.concurrency),
           "--server-pid", str(server.pid)]
    if recv is not None:  # federated messages: receivers on another server
        cmd += ["--recv-host", recv.host, "--recv-port", str(recv.port),
                "--recv-domain", recv.domain, "--recv-user-pattern", args.user_pattern,
                "--recv-password", args.password, "--recv-server-pid", str(recv.pid)]
    return cmd + [str(x) for x in extra]


def parse_result(stdout):
    result = None
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("type") == "result":
                result = obj
    return result


def run_loader(args, server, mode, extra, timeout, recv=None, accounts=None, transport=None):
    cmd = loader_cmd(args, server, mode, extra, recv, accounts, transport)
    say("%s: load %s: %s" % (server.name, mode, " ".join(cmd[2:])))
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=None, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError("loader %s timed out after %.0f s" % (mode, timeout))
    wall = time.monotonic() - t0
    res = parse_result(r.stdout)
    if res is None:
        raise BenchError("loader %s gave no result (exit %s)" % (mode, r.returncode))
    res["loader_wall_s"] = round(wall, 3)
    for srv in (server, recv):
        if srv is not None and not srv.alive():
            res["server_died"] = True
            raise BenchError("%s died during the %s load (exit code %s)"
                             % (srv.name, mode, srv.proc.returncode if srv.proc else None))
    return res


def run_idle(args, server, sessions, accounts=None, transport=None):
    extra = ["--sessions", sessions, "--hold-timeout", args.hold_timeout]
    cmd = loader_cmd(args, server, "idle", extra, accounts=accounts, transport=transport)
    say("%s: load idle: %s" % (server.name, " ".join(cmd[2:])))
    time.sleep(args.settle)
    rss_before = proc_rss_kib(server.pid)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=None, text=True)
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    ready = None
    collected = []
    deadline = time.monotonic() + args.idle_timeout
    try:
        while ready is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError("idle loader not ready after %.0f s" % args.idle_timeout)
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise BenchError("idle loader exited before ready: %s"
                                 % parse_result("".join(collected)))
            collected.append(line)
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("type") == "ready":
                    ready = obj
        time.sleep(args.settle)
        if not server.alive():
            raise BenchError("server died during the idle load")
        samples = []
        for _ in range(3):
            samples.append(proc_rss_kib(server.pid))
            time.sleep(0.5)
        rss_after = samples[-1]
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    while True:
        try:
            line = lines.get(timeout=5)
        except queue.Empty:
            break
        if line is None:
            break
        collected.append(line)
    res = parse_result("".join(collected)) or {"type": "result", "mode": "idle"}
    n = ready["sessions"]
    res.update({
        "rss_before_kib": rss_before, "rss_after_kib": rss_after,
        "rss_samples_kib": samples,
        "rss_per_session_kib": round((rss_after - rss_before) / n, 2) if n else None,
    })
    return res


def smoke(args, server, accounts, transport=None):
    """A few logins right after start: lazily loaded code gets loaded before
    any measurement, and a broken login fails fast."""
    n = min(20, accounts)
    res = run_loader(args, server, "logins", ["--logins", n, "--login-accounts", n,
                                              "--max-time", 120], timeout=180,
                     accounts=accounts, transport=transport)
    if res.get("failed") is True or not res.get("logins_ok"):
        raise BenchError("%s: smoke logins failed: %s" % (server.name, res.get("errors")))
    return res


def bench_server(args, server, accounts, out):
    """Run the three loads, each on a freshly started server process.

    A fresh process per load keeps one load's leftovers (e.g. 2000 sessions
    just torn down, a grown heap) out of the next load's figures.  Results go
    into `out` as they come, so a failure keeps what was measured before it.
    """
    phases = ["idle", "logins", "messages"]
    for i, phase in enumerate(phases):
        if i == 0 or not args.no_restart:
            if i > 0:
                server.stop()
            server.start()
            server.on_started()
            out.setdefault("smoke", {})[phase] = smoke(args, server, accounts)
        if phase == "idle":
            out["idle"] = run_idle(args, server, args.sessions)
            say("%s: idle: %s KiB per session (%d sessions)" % (
                server.name, out["idle"]["rss_per_session_kib"],
                out["idle"].get("sessions", 0)))
        elif phase == "logins":
            out["logins"] = run_loader(args, server, "logins", [
                "--logins", args.logins,
                "--login-accounts", min(accounts, args.login_accounts),
                "--max-time", args.max_time], timeout=args.max_time + 120)
        else:
            out["messages"] = run_loader(args, server, "messages", [
                "--pairs", args.pairs, "--window", args.window,
                "--duration", args.duration, "--warmup", args.warmup,
                "--max-time", args.max_time],
                timeout=args.max_time + args.duration + args.warmup + 120)
        out.setdefault("rss_after_load_kib", {})[phase] = proc_rss_kib(server.pid)
    return out


# ---------------------------------------------------------------------------
# browser transports

BROWSER_TRANSPORTS = ("bosh", "websocket")
# Log lines of the browser phase worth a look: BOSH/WebSocket session ends,
# HTTP connections refused or cut, and anything that looks wrong.
BRIDGE_WEB_NOTABLE_RE = re.compile(
    r"BOSH|WebSocket|websocket|HTTP connection|cutting off|stream error|Traceback|"
    r"Unhandled|\bError\b|error|exception|failed", re.I)
PROSODY_WEB_NOTABLE_RE = re.compile(r"bosh|websocket|http|\berror\b|\bwarn\b|traceback", re.I)
# What varies between otherwise identical lines: timestamps, peers, ids, numbers.
_LOG_NOISE = [
    (re.compile(r"^\S+T\S+\s+"), ""),                                   # twistd timestamp
    (re.compile(r"^\w{3} \d\d \d\d:\d\d:\d\d\s+"), ""),                     # Prosody timestamp
    (re.compile(r"\b\d{1,3}(\.\d{1,3}){3}:\d+\b"), "ADDR"),
    (re.compile(r"\b(c2s|bosh|websocket|http\.server)[0-9a-f]{6,}\b"), r"\1ID"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f-]{27}"), "UUID"),
    (re.compile(r"\b\d+(\.\d+)?\b"), "N"),
]


def log_summary(lines, limit=40):
    """Notable log lines grouped once their variable parts are masked:
    {pattern: count}, the most frequent first."""
    counts = {}
    for line in lines:
        if line.startswith("... ") and line.endswith(" more"):
            continue
        key = line
        for pattern, repl in _LOG_NOISE:
            key = pattern.sub(repl, key)
        key = key.strip()[:300]
        counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return dict(top)


def bench_browser(args, tmp, out, names):
    """BOSH and WebSocket, per server: idle sessions (RSS per session) and
    messages/s with latency, each load on a freshly started server."""
    ip = {"bridge": args.browser_addresses[0], "prosody": args.browser_addresses[1]}
    accounts = max(args.browser_sessions, 2 * args.browser_pairs, 20)
    out["params"] = {"transports": args.browser_transports, "sessions": args.browser_sessions,
                     "pairs": args.browser_pairs, "window": args.window,
                     "bosh_window": args.bosh_window,
                     "duration": args.browser_duration, "warmup": args.warmup,
                     "accounts": accounts, "bosh_max_rate": args.bosh_max_rate,
                     "bosh_burst": args.bosh_burst,
                     "addresses": ip, "c2s_port": args.browser_c2s_port,
                     "http_port": args.browser_http_port}
    servers = out.setdefault("servers", {})
    for name in names:
        entry = servers.setdefault(name, {})
        wdir = os.path.join(tmp, "browser", name)
        if name == "bridge":
            # The accounts of the TCP phase (same data_dir) are reused.
            server = BridgeServer(args, wdir, args.browser_c2s_port, ip[name],
                                  name="bridge-web",
                                  data_dir=args.bridge_data_dir or os.path.join(tmp, "bridge", "data"),
                                  http_port=args.browser_http_port)
        else:
            server = ProsodyServer(args, wdir, args.browser_c2s_port,
                                   "rsa" if args.prosody_key == "rsa" else "ec", ip[name],
                                   name="prosody-web", http_port=args.browser_http_port)
        entry["endpoint"] = "http://%s:%d" % (ip[name], args.browser_http_port)
        try:
            server.prepare(accounts)
            first = True
            for transport in args.browser_transports:
                t = entry.setdefault(transport, {})
                try:
                    for load in ("idle", "messages"):
                        if first or not args.no_restart:
                            server.stop()
                            server.start()
                            server.on_started()
                            t.setdefault("smoke", {})[load] = smoke(
                                args, server, accounts, transport)
                            first = False
                        if load == "idle":
                            res = t["idle"] = run_idle(args, server, args.browser_sessions,
                                                       accounts, transport)
                            say("%s: %s idle: %s KiB per session (%s sessions, ended: %s)" % (
                                server.name, transport, res.get("rss_per_session_kib"),
                                res.get("sessions"), res.get("sessions_ended")))
                        else:
                            window = args.bosh_window if transport == "bosh" else args.window
                            res = t["messages"] = run_loader(args, server, "messages", [
                                "--pairs", args.browser_pairs, "--window", window,
                                "--duration", args.browser_duration, "--warmup", args.warmup,
                                "--max-time", args.max_time],
                                timeout=args.max_time + args.browser_duration + args.warmup + 120,
                                accounts=accounts, transport=transport)
                            say("%s: %s messages: %s/s, p50 %s ms, p99 %s ms, ended: %s" % (
                                server.name, transport, res.get("messages_per_s"),
                                res.get("latency_p50_ms"), res.get("latency_p99_ms"),
                                res.get("sessions_ended")))
                        if res.get("failed") is True:
                            raise BenchError("%s %s load failed: %s"
                                             % (transport, load, res.get("errors")))
                        t.setdefault("rss_after_load_kib", {})[load] = proc_rss_kib(server.pid)
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    t["error"] = str(exc)
                    say("%s: %s FAILED: %s" % (server.name, transport, exc))
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            entry["error"] = str(exc)
            say("%s: FAILED: %s" % (server.name, exc))
        finally:
            stop_quietly(server)
            entry["info"] = server.info
            if isinstance(server, ProsodyServer):
                lines = notable_lines(server.log_files(), PROSODY_WEB_NOTABLE_RE, limit=100000)
            else:
                lines = notable_lines(server.log_files(), BRIDGE_WEB_NOTABLE_RE, limit=100000)
            entry["log_summary"] = log_summary(lines)
            entry["notable_lines"] = lines[:100]
            entry["server_log_tail"] = tail(server.log_files()[-1], 20)
        entry["figures"] = browser_figures(entry)
    return out


def browser_figures(entry):
    f = {}
    for transport in BROWSER_TRANSPORTS:
        t = entry.get(transport) or {}
        idle = t.get("idle") or {}
        m = t.get("messages") or {}
        f[transport + "_rss_per_idle_session_kib"] = idle.get("rss_per_session_kib")
        f[transport + "_idle_sessions"] = idle.get("sessions")
        if idle.get("rss_before_kib") is not None:
            f[transport + "_rss_baseline_mib"] = round(idle["rss_before_kib"] / 1024, 1)
        if idle.get("rss_after_kib") is not None:
            f[transport + "_rss_with_idle_sessions_mib"] = round(idle["rss_after_kib"] / 1024, 1)
        for key in ("messages_per_s", "latency_p50_ms", "latency_p99_ms",
                    "server_cpu_us_per_message"):
            f["%s_%s" % (transport, key)] = m.get(key)
    return f


BROWSER_ROWS = []
for _t, _label in (("bosh", "BOSH"), ("websocket", "WebSocket")):
    BROWSER_ROWS += [
        (_t + "_rss_per_idle_session_kib", _label + " RSS KiB/idle session", "lower"),
        (_t + "_rss_baseline_mib", _label + " RSS MiB before idle", "lower"),
        (_t + "_rss_with_idle_sessions_mib", _label + " RSS MiB with idle", "lower"),
        (_t + "_messages_per_s", _label + " messages/s", "higher"),
        (_t + "_latency_p50_ms", _label + " latency p50 ms", "lower"),
        (_t + "_latency_p99_ms", _label + " latency p99 ms", "lower"),
        (_t + "_server_cpu_us_per_message", _label + " server CPU us/msg", "lower"),
    ]


def print_browser(results, args, names):
    br = results["browser_transports"]
    servers = br.get("servers") or {}
    figs = {n: (servers.get(n) or {}).get("figures", {}) for n in names}
    rows = [r for r in BROWSER_ROWS if r[0].split("_")[0] in args.browser_transports]
    text, ratios = table(figs, names, rows)
    br["ratios_bridge_over_prosody"] = ratios
    print()
    print("Browser transports (plain HTTP): %d idle sessions; %d pairs for %.0f s, window "
          "%d (BOSH %d); BOSH at most %g requests/s per session (bursts of %d)" % (
              args.browser_sessions, args.browser_pairs, args.browser_duration, args.window,
              args.bosh_window, args.bosh_max_rate, args.bosh_burst))
    print(text)
    for n in names:
        e = servers.get(n) or {}
        warn = []
        for transport in args.browser_transports:
            t = e.get(transport) or {}
            for load in ("idle", "messages"):
                r = t.get(load) or {}
                if r.get("errors"):
                    warn.append("%s %s errors: %s" % (transport, load, r["errors"]))
                if r.get("sessions_ended"):
                    warn.append("%s %s: sessions ended during the load: %s"
                                % (transport, load, r["sessions_ended"]))
                failed = r.get("failed")
                if failed is True:
                    warn.append("%s %s: the load failed" % (transport, load))
                elif failed:
                    warn.append("%s %s: %s logins failed" % (transport, load, failed))
                lf = r.get("loader_cpu_fraction")
                if lf is not None and lf > 0.9:
                    warn.append("%s %s: loader CPU %.0f%%: the loader may be the bottleneck"
                                % (transport, load, 100 * lf))
                if r.get("lost"):
                    warn.append("%s: %d messages not delivered within the drain time"
                                % (transport, r["lost"]))
                if r.get("bad_from"):
                    warn.append("%s: %d messages without the sender's full JID as 'from'"
                                % (transport, r["bad_from"]))
            if t.get("error"):
                warn.append("%s error: %s" % (transport, t["error"].splitlines()[0]))
        if e.get("error"):
            warn.append("error: %s" % e["error"].splitlines()[0])
        for w in warn:
            print("  %s: %s" % (n, w))
    if br.get("error"):
        print("  browser transports: error: %s" % br["error"].splitlines()[0])


# ---------------------------------------------------------------------------
# federation

FED_LINK_RE = re.compile(r"link (\S+) -> (\S+) (ready \(([^)]*)\)|failed: .*)")
# Bridge log lines worth reporting (s2s events, and anything that looks wrong).
BRIDGE_NOTABLE_RE = re.compile(
    r"link \S+ -> |authenticated by dialback|SASL EXTERNAL refused|cannot reach|"
    r"unacknowledged|refused stream management|idle s2s|Traceback|Unhandled|"
    r"\bError\b|error|exception|bounced", re.I)
# Prosody (log level info): s2s sessions, authentication, certificates, errors.
PROSODY_NOTABLE_RE = re.compile(r"s2s|certificate|authenticat|EXTERNAL|dialback|"
                                r"\berror\b|\bwarn\b|traceback", re.I)
# ... but not the client sessions' own lines ("c2s55d9...  info  Authenticated as").
PROSODY_SKIP_RE = re.compile(r"\sc2s[0-9a-f]+\s+(info|debug)\s")


def notable_lines(paths, pattern, limit=200, skip=None):
    lines = []
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if pattern.search(line) and not (skip and skip.search(line)):
                        lines.append(line.rstrip("\n"))
        except OSError:
            pass
    return lines[:limit] + (["... %d more" % (len(lines) - limit)] if len(lines) > limit else [])


def link_events(lines):
    """{"a.test -> c.test": ["ready (SASL EXTERNAL)", "failed: ...", ...]} from a bridge log."""
    found = {}
    for line in lines:
        m = FED_LINK_RE.search(line)
        if m:
            found.setdefault("%s -> %s" % (m.group(1), m.group(2)), []).append(m.group(3))
    return found


def link_auth(events):
    """How each outgoing link of a bridge first became ready: "SASL EXTERNAL",
    "dialback", or its first failure."""
    out = {}
    for link, evs in events.items():
        ready = [e for e in evs if e.startswith("ready (")]
        out[link] = ready[0][len("ready ("):-1] if ready else evs[0]
    return out


def fed_warmup(args, sender, receiver, accounts, log):
    """A few messages from `sender`'s users to `receiver`'s, until all arrive.

    The first message of a direction opens its s2s link: its trip time
    (first_delivery_ms) is the link set-up as a user sees it."""
    pairs = min(args.fed_warm_pairs, args.fed_pairs)
    last = None
    for attempt in range(1, 4):
        res = run_loader(args, sender, "messages", [
            "--pairs", pairs, "--window", 1, "--warmup", 0, "--duration", 0.5,
            "--drain-time", args.fed_link_timeout, "--max-time", 120],
            timeout=args.fed_link_timeout + 240, recv=receiver, accounts=accounts)
        entry = {"attempt": attempt, "sent": res.get("sent_total"),
                 "received": res.get("received_total"), "lost": res.get("lost"),
                 "first_delivery_ms": res.get("first_delivery_ms"),
                 "errors": res.get("errors"), "wall_s": res.get("loader_wall_s")}
        log.append(entry)
        say("federation: warm-up %s -> %s: %s" % (sender.domain, receiver.domain, entry))
        last = entry
        if not res.get("failed") and res.get("received_total") and not res.get("lost"):
            return entry
    raise BenchError("federation: messages %s -> %s not all delivered after 3 warm-ups: %s"
                     % (sender.domain, receiver.domain, last))


def bench_federation(args, tmp, out):
    """Bridge a.test sends to bridge c.test and to Prosody b.test over s2s."""
    ip_a, ip_b, ip_c = args.fed_addresses
    port = args.fed_s2s_port
    accounts = max(2 * args.fed_pairs, 2 * args.fed_warm_pairs, 4)
    fdir = os.path.join(tmp, "federation")
    pki = make_test_pki(os.path.join(fdir, "pki"), ("a.test", "b.test", "c.test"),
                        args.fed_key)
    key_kind = "ec-secp256r1" if args.fed_key == "ec" else "rsa2048"
    out["params"] = {"pairs": args.fed_pairs, "window": args.window,
                     "duration": args.fed_duration, "warmup": args.warmup,
                     "accounts": accounts, "certificate_key": key_kind,
                     "addresses": {"a.test": ip_a, "b.test": ip_b, "c.test": ip_c},
                     "s2s_port": port}
    hosts_file = os.path.join(fdir, "hosts")
    with open(hosts_file, "w") as f:
        f.write("%s a.test\n%s b.test\n%s c.test\n" % (ip_a, ip_b, ip_c))
    resolv_conf = os.path.join(fdir, "resolv.conf")
    with open(resolv_conf, "w") as f:
        f.write("nameserver %s\n" % args.fed_dns)

    def bridge_s2s(domain, routes):
        return {"port": port, "cert": pki[domain][0], "key": pki[domain][1],
                "ca_file": pki["ca_file"], "static_routes": routes,
                "dialback": not args.fed_no_dialback}

    data = lambda d: os.path.join(args.fed_data_dir, d) if args.fed_data_dir else None
    bridge_a = BridgeServer(
        args, os.path.join(fdir, "bridge-a"), args.fed_bridge_port, ip_a, "a.test",
        "bridge-a", data("a.test"),
        bridge_s2s("a.test", {"c.test": "%s:%d" % (ip_c, port),
                              "b.test": "%s:%d" % (ip_b, port)}))
    targets = [("bridge_to_bridge", BridgeServer(
        args, os.path.join(fdir, "bridge-c"), args.fed_bridge_port, ip_c, "c.test",
        "bridge-c", data("c.test"),
        bridge_s2s("c.test", {"a.test": "%s:%d" % (ip_a, port)})))]
    if args.fed_prosody:
        targets.append(("bridge_to_prosody", ProsodyServer(
            args, os.path.join(fdir, "prosody-b"), args.fed_prosody_port, args.fed_key,
            ip_b, "b.test", "prosody-b",
            {"port": port, "cert": pki["b.test"][0], "key": pki["b.test"][1],
             "key_kind": key_kind, "ca_file": pki["ca_file"], "hosts_file": hosts_file,
             "resolv_conf": resolv_conf, "alpn": args.fed_prosody_alpn})))
    servers = [bridge_a] + [srv for _, srv in targets]
    try:
        bridge_a.prepare(accounts)
        bridge_a.start()
        for key, srv in targets:
            entry = out.setdefault(key, {"receiver": "%s %s" % (srv.name, srv.domain)})
            try:
                srv.prepare(accounts)
                srv.start()
                entry["warmup"] = warm = []
                t0 = time.monotonic()
                fed_warmup(args, bridge_a, srv, accounts, warm)
                fed_warmup(args, srv, bridge_a, accounts, warm)
                entry["warmup_s"] = round(time.monotonic() - t0, 2)
                # First trip each way, link set-up included.
                entry["first_link_ms"] = {
                    "%s -> %s" % (bridge_a.domain, srv.domain): warm[0]["first_delivery_ms"],
                    "%s -> %s" % (srv.domain, bridge_a.domain): warm[-1]["first_delivery_ms"]
                    if len(warm) > 1 else None}
                if not bridge_a.alive():
                    raise BenchError("bridge-a died during the warm-up")
                entry["messages"] = run_loader(args, bridge_a, "messages", [
                    "--pairs", args.fed_pairs, "--window", args.window,
                    "--duration", args.fed_duration, "--warmup", args.warmup,
                    "--max-time", args.max_time],
                    timeout=args.max_time + args.fed_duration + args.warmup + 120,
                    recv=srv, accounts=accounts)
                m = entry["messages"]
                if m.get("failed") is True:
                    raise BenchError("federated messages load failed: %s" % m.get("errors"))
                say("federation: %s: %s messages/s, p50 %s ms, p99 %s ms" % (
                    key, m.get("messages_per_s"), m.get("latency_p50_ms"),
                    m.get("latency_p99_ms")))
                entry["rss_after_kib"] = {"bridge-a": proc_rss_kib(bridge_a.pid),
                                          srv.name: proc_rss_kib(srv.pid)}
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                entry["error"] = str(exc)
                say("federation: %s FAILED: %s" % (key, exc))
            finally:
                stop_quietly(srv)
        if not any("error" not in out.get(k, {}) for k, _ in targets):
            raise BenchError("federation: no link worked")
    finally:
        for srv in servers:
            stop_quietly(srv)
        logs = out.setdefault("logs", {})
        for srv in servers:
            if isinstance(srv, ProsodyServer):
                lines = notable_lines(srv.log_files(), PROSODY_NOTABLE_RE, skip=PROSODY_SKIP_RE)
            else:
                lines = notable_lines(srv.log_files(), BRIDGE_NOTABLE_RE)
            logs[srv.name] = {"notable_lines": lines, "info": srv.info,
                              "tail": tail(srv.log_files()[-1], 20)}
            if isinstance(srv, BridgeServer):
                events = link_events(lines)
                out.setdefault("link_events", {}).update(events)
                out.setdefault("link_auth", {}).update(link_auth(events))
    return out


def stop_quietly(server):
    try:
        server.stop()
    except Exception as exc:  # never leave a server running
        say("%s: stop failed: %s" % (server.name, exc))
        proc = server.proc or server.last_proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def fed_figures(fed, local_mps):
    """Headline federation figures, one column per link."""
    cols = {}
    auth = fed.get("link_auth") or {}
    for key in ("bridge_to_bridge", "bridge_to_prosody"):
        e = fed.get(key)
        if e is None:
            continue
        m = e.get("messages") or {}
        peer = "c.test" if key == "bridge_to_bridge" else "b.test"
        f = {
            "messages_per_s": m.get("messages_per_s"),
            "latency_p50_ms": m.get("latency_p50_ms"),
            "latency_p99_ms": m.get("latency_p99_ms"),
            "sender_cpu_us_per_message": m.get("server_cpu_us_per_message"),
            "receiver_cpu_us_per_message": m.get("recv_server_cpu_us_per_message"),
            "ratio_to_local_bridge": round(m["messages_per_s"] / local_mps, 3)
            if m.get("messages_per_s") is not None and local_mps else None,
            "auth_out": auth.get("a.test -> %s" % peer),
            "auth_in": auth.get("%s -> a.test" % peer) if key == "bridge_to_bridge"
            else prosody_auth(fed),
            "first_link_ms_out": (e.get("first_link_ms") or {}).get("a.test -> %s" % peer),
            "first_link_ms_in": (e.get("first_link_ms") or {}).get("%s -> a.test" % peer),
        }
        cols[key] = f
    return cols


def prosody_auth(fed):
    """How Prosody's link b.test -> a.test authenticated.  Prosody logs the
    mechanism only at debug level; bridge-a logs a dialback success, so a
    completed link without one was SASL EXTERNAL."""
    logs = fed.get("logs") or {}
    plines = (logs.get("prosody-b") or {}).get("notable_lines") or []
    blines = (logs.get("bridge-a") or {}).get("notable_lines") or []
    if any("b.test authenticated by dialback" in line for line in blines):
        return "dialback"
    if any("Outgoing s2s connection b.test->a.test complete" in line for line in plines):
        return "SASL EXTERNAL"
    for line in plines:
        if "b.test->a.test" in line or "connection to a.test" in line:
            return "failed"
    return None


FED_ROWS = [
    ("messages_per_s", "fed messages/s delivered"),
    ("latency_p50_ms", "fed latency p50 ms"),
    ("latency_p99_ms", "fed latency p99 ms"),
    ("sender_cpu_us_per_message", "sender CPU us/msg (bridge-a)"),
    ("receiver_cpu_us_per_message", "receiver CPU us/msg"),
    ("ratio_to_local_bridge", "ratio to local bridge msg/s"),
    ("auth_out", "auth a.test -> peer"),
    ("auth_in", "auth peer -> a.test"),
    ("first_link_ms_out", "first message a -> peer ms"),
    ("first_link_ms_in", "first message peer -> a ms"),
]


def fed_table(cols):
    names = [k for k in ("bridge_to_bridge", "bridge_to_prosody") if k in cols]
    heads = {"bridge_to_bridge": "bridge->bridge", "bridge_to_prosody": "bridge->prosody"}
    head = "%-30s" % "figure" + "".join("%17s" % heads[n] for n in names)
    lines = [head, "-" * len(head)]
    for key, label in FED_ROWS:
        lines.append("%-30s" % label + "".join("%17s" % fmt(cols[n].get(key)) for n in names))
    return "\n".join(lines)


def figures(r):
    """Headline figures from one server's results."""
    f = {}
    lg = r.get("logins") or {}
    ms = r.get("messages") or {}
    idle = r.get("idle") or {}
    f["logins_per_s"] = lg.get("logins_per_s")
    f["server_cpu_ms_per_login"] = lg.get("server_cpu_ms_per_login")
    f["messages_per_s"] = ms.get("messages_per_s")
    f["latency_p50_ms"] = ms.get("latency_p50_ms")
    f["latency_p99_ms"] = ms.get("latency_p99_ms")
    f["server_cpu_us_per_message"] = ms.get("server_cpu_us_per_message")
    f["rss_per_idle_session_kib"] = idle.get("rss_per_session_kib")
    if idle.get("rss_before_kib") is not None:
        f["rss_baseline_mib"] = round(idle["rss_before_kib"] / 1024, 1)
    if idle.get("rss_after_kib") is not None:
        f["rss_with_idle_sessions_mib"] = round(idle["rss_after_kib"] / 1024, 1)
    return f


ROWS = [  # key, label, better
    ("logins_per_s", "logins/s", "higher"),
    ("server_cpu_ms_per_login", "server CPU ms per login", "lower"),
    ("messages_per_s", "messages/s delivered", "higher"),
    ("latency_p50_ms", "latency p50 ms", "lower"),
    ("latency_p99_ms", "latency p99 ms", "lower"),
    ("server_cpu_us_per_message", "server CPU us per message", "lower"),
    ("rss_per_idle_session_kib", "RSS KiB per idle session", "lower"),
    ("rss_baseline_mib", "RSS MiB before idle sessions", "lower"),
    ("rss_with_idle_sessions_mib", "RSS MiB with idle sessions", "lower"),
]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.3g" % v if abs(v) < 100 else "%.0f" % v
    return str(v)


def table(figs, names, rows=None):
    lines = []
    head = "%-30s" % "figure" + "".join("%12s" % n for n in names)
    both = "bridge" in names and "prosody" in names
    if both:
        head += "%16s  %s" % ("bridge/prosody", "better")
    lines.append(head)
    lines.append("-" * len(head))
    ratios = {}
    for key, label, better in rows or ROWS:
        row = "%-30s" % label + "".join("%12s" % fmt(figs.get(n, {}).get(key)) for n in names)
        if both:
            b, p = figs["bridge"].get(key), figs["prosody"].get(key)
            ratio = round(b / p, 3) if isinstance(b, (int, float)) and \
                isinstance(p, (int, float)) and p else None
            ratios[key] = ratio
            row += "%16s  %s" % (fmt(ratio), better)
        lines.append(row)
    return "\n".join(lines), ratios


def print_federation(results, args):
    fed = results["federation"]
    local = (results["servers"].get("bridge") or {}).get("figures", {}).get("messages_per_s")
    cols = fed_figures(fed, local)
    fed["figures"] = cols
    print()
    print("Federation: senders on bridge a.test, %d pairs, window %d, %.0f s%s"
          % (args.fed_pairs, args.window, args.fed_duration,
             "" if local else " (no local bridge figure for the ratio)"))
    if cols:
        print(fed_table(cols))
    for key in ("bridge_to_bridge", "bridge_to_prosody"):
        e = fed.get(key) or {}
        m = e.get("messages") or {}
        warn = []
        if m.get("lost"):
            warn.append("%d messages not delivered within the drain time" % m["lost"])
        if m.get("bad_from"):
            warn.append("%d messages without the sender's full JID as 'from'" % m["bad_from"])
        if m.get("errors"):
            warn.append("errors: %s" % m["errors"])
        lf = m.get("loader_cpu_fraction")
        if lf is not None and lf > 0.9:
            warn.append("loader CPU %.0f%%: the loader may be the bottleneck" % (100 * lf))
        if e.get("error"):
            warn.append("error: %s" % e["error"].splitlines()[0])
        for w in warn:
            print("  %s: %s" % (key, w))
    if fed.get("error"):
        print("  federation: error: %s" % fed["error"].splitlines()[0])
    for name, lg in sorted((fed.get("logs") or {}).items()):
        n = len(lg.get("notable_lines") or [])
        if n:
            print("  %s: %d notable log lines (s2s events, errors) in the JSON output"
                  % (name, n))


# ---------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="bridge,prosody",
                   help="comma-separated subset of bridge,prosody (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20 logins, 5 pairs for 2 s, 50 idle sessions")
    p.add_argument("--logins", type=int, default=500, help="logins to time (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=20,
                   help="logins in progress at once (default %(default)s)")
    p.add_argument("--login-accounts", type=int, default=100,
                   help="the login load cycles over this many accounts (default %(default)s)")
    p.add_argument("--pairs", type=int, default=50, help="sender/receiver pairs (default %(default)s)")
    p.add_argument("--window", type=int, default=50,
                   help="messages in flight per pair (default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="message measurement in s, after warm-up (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="message warm-up in s")
    p.add_argument("--sessions", type=int, default=2000,
                   help="idle authenticated sessions for the memory figure (default %(default)s)")
    p.add_argument("--output", help="write all results as JSON to this file")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user-pattern", default="bench{}")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--bridge-port", type=int, default=25222)
    p.add_argument("--prosody-port", type=int, default=15222)
    p.add_argument("--bridge-data-dir",
                   help="persistent bridge data_dir to reuse accounts between runs "
                        "(default: a fresh one in the temporary directory)")
    p.add_argument("--prosody-accounts", choices=("direct", "prosodyctl"), default="direct",
                   help="write Prosody account files directly (fast) or run "
                        "prosodyctl register per account")
    p.add_argument("--prosody-key", choices=("auto", "rsa", "ec"), default="auto",
                   help="Prosody certificate key; auto = same kind as bridge's "
                        "generated certificate if found, else RSA-2048")
    p.add_argument("--ctl-jobs", type=int, default=8,
                   help="bridgectl processes in parallel (default %(default)s)")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds to let the server settle before reading RSS")
    p.add_argument("--idle-timeout", type=float, default=900.0,
                   help="longest wait for the idle sessions to log in")
    p.add_argument("--hold-timeout", type=float, default=600.0)
    p.add_argument("--max-time", type=float, default=600.0,
                   help="upper bound for each loader's login part")
    p.add_argument("--no-restart", action="store_true",
                   help="run the three loads on one server process instead of "
                        "restarting the server before each")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    g = p.add_argument_group(
        "federation", "messages from bridge a.test to bridge c.test and to Prosody b.test "
        "over s2s links (certificates from a test CA); run after the servers above")
    g.add_argument("--no-federation", action="store_true", help="skip the federation phase")
    g.add_argument("--federation-only", action="store_true",
                   help="run only the federation phase (no --servers loads)")
    g.add_argument("--fed-pairs", type=int,
                   help="sender/receiver pairs across the link (default 50; 5 with --quick)")
    g.add_argument("--fed-duration", type=float,
                   help="measured seconds per link, after --warmup (default 10; 2 with --quick)")
    g.add_argument("--fed-warm-pairs", type=int, default=2,
                   help="pairs of the untimed warm-up each way (default %(default)s)")
    g.add_argument("--fed-link-timeout", type=float, default=60.0,
                   help="longest wait for warm-up messages, link set-up included")
    g.add_argument("--fed-addresses", default="127.0.0.12,127.0.0.13,127.0.0.14",
                   help="loopback addresses of a.test (bridge), b.test (Prosody), "
                        "c.test (bridge) (default %(default)s)")
    g.add_argument("--fed-s2s-port", type=int, default=5269)
    g.add_argument("--fed-bridge-port", type=int, default=25232,
                   help="c2s port of both bridges, on their addresses")
    g.add_argument("--fed-prosody-port", type=int, default=15232,
                   help="c2s port of Prosody b.test, on its address")
    g.add_argument("--fed-key", choices=("ec", "rsa"), default="ec",
                   help="key type of the test CA and certificates (default %(default)s)")
    g.add_argument("--fed-no-dialback", action="store_true",
                   help="bridges with dialback = false: certificates only")
    g.add_argument("--fed-no-prosody", action="store_true",
                   help="only the bridge -> bridge link")
    g.add_argument("--fed-prosody-alpn", action="store_true",
                   help="let Prosody offer ALPN on its outgoing s2s TLS (its default; "
                        "bridge then fails the handshake of the link b.test -> a.test)")
    g.add_argument("--fed-dns", default="127.0.0.1",
                   help="nameserver in Prosody's resolv.conf for libunbound (SRV lookups; "
                        "default %(default)s, where nothing answers)")
    g.add_argument("--fed-data-dir",
                   help="persistent base folder for the two bridges' data_dir "
                        "(a.test/, c.test/), to reuse their accounts between runs")
    g = p.add_argument_group(
        "browser transports", "BOSH and WebSocket on plain HTTP, bridge and Prosody "
        "(mod_bosh, mod_websocket): idle sessions and messages; run after the federation phase")
    g.add_argument("--no-browser-transports", action="store_true",
                   help="skip the browser transports phase")
    g.add_argument("--only-browser-transports", action="store_true",
                   help="run only the browser transports phase (for the servers of --servers)")
    g.add_argument("--browser-transports", default="bosh,websocket",
                   help="comma-separated subset of bosh,websocket (default %(default)s)")
    g.add_argument("--browser-sessions", type=int,
                   help="idle sessions per transport (default 500; 50 with --quick)")
    g.add_argument("--browser-pairs", type=int,
                   help="sender/receiver pairs per transport (default 20; 5 with --quick)")
    g.add_argument("--browser-duration", type=float,
                   help="measured seconds of the messages load, after --warmup "
                        "(default 10; 2 with --quick)")
    g.add_argument("--browser-addresses", default="127.0.0.21,127.0.0.22",
                   help="loopback addresses of bridge and of Prosody in this phase "
                        "(default %(default)s)")
    g.add_argument("--browser-c2s-port", type=int, default=25242,
                   help="c2s port of both servers in this phase, on their addresses")
    g.add_argument("--browser-http-port", type=int, default=25280,
                   help="HTTP port of both servers (BOSH, WebSocket), on their addresses")
    g.add_argument("--bosh-max-rate", type=float, default=20.0,
                   help="BOSH requests per second per session at most (default %(default)s; "
                        "bridge ends a session past 25/s, bursts of 100); 0: no limit")
    g.add_argument("--bosh-window", type=int, default=200,
                   help="messages in flight per pair over BOSH (default %(default)s: with "
                        "the receivers' polls capped by --bosh-max-rate, --window's 50 would "
                        "measure the pacing, not the server)")
    g.add_argument("--bosh-burst", type=int, default=10,
                   help="BOSH requests a session may make at once beyond that rate "
                        "(token bucket; default %(default)s)")
    args = p.parse_args(argv)
    if args.browser_sessions is None:
        args.browser_sessions = 50 if args.quick else 500
    if args.browser_pairs is None:
        args.browser_pairs = 5 if args.quick else 20
    if args.browser_duration is None:
        args.browser_duration = 2.0 if args.quick else 10.0
    args.browser_addresses = [x.strip() for x in args.browser_addresses.split(",")]
    if len(args.browser_addresses) != 2:
        p.error("--browser-addresses needs two addresses")
    args.browser_transports = [x.strip() for x in args.browser_transports.split(",") if x.strip()]
    for t in args.browser_transports:
        if t not in BROWSER_TRANSPORTS:
            p.error("unknown browser transport %r" % t)
    if args.only_browser_transports and (args.federation_only or args.no_browser_transports):
        p.error("--only-browser-transports excludes --federation-only and --no-browser-transports")
    if args.quick:
        args.logins, args.pairs, args.duration, args.warmup = 20, 5, 2.0, 1.0
        args.sessions = 50
        args.concurrency = min(args.concurrency, 10)
    if args.fed_pairs is None:
        args.fed_pairs = 5 if args.quick else 50
    if args.fed_duration is None:
        args.fed_duration = 2.0 if args.quick else 10.0
    args.fed_addresses = [x.strip() for x in args.fed_addresses.split(",")]
    if len(args.fed_addresses) != 3:
        p.error("--fed-addresses needs three addresses")
    if args.federation_only and args.no_federation:
        p.error("--federation-only and --no-federation exclude each other")
    federation = not args.no_federation and not args.only_browser_transports
    args.fed_prosody = federation and not args.fed_no_prosody
    if args.fed_prosody and not shutil.which("prosody"):
        say("prosody not found: the federation phase runs bridge -> bridge only")
        args.fed_prosody = False
    server_names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for n in server_names:
        if n not in ("bridge", "prosody"):
            p.error("unknown server %r" % n)
    names = [] if args.federation_only or args.only_browser_transports else server_names
    browser_names = [] if args.federation_only or args.no_browser_transports else server_names
    if "prosody" in names + browser_names and not shutil.which("prosody"):
        p.error("prosody not found: apt-get install -y prosody (or --servers bridge)")
    args.accounts = max(args.sessions, 2 * args.pairs, 20)
    raise_nofile()

    tmp = tempfile.mkdtemp(prefix="bridge-bench-")
    say("temporary directory %s" % tmp)
    results = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "kernel": platform.release(),
        "params": {k: getattr(args, k) for k in (
            "logins", "concurrency", "login_accounts", "pairs", "window", "duration",
            "warmup", "sessions", "accounts", "quick", "fed_pairs", "fed_duration",
            "browser_sessions", "browser_pairs", "browser_duration", "browser_transports",
            "bosh_max_rate", "bosh_burst", "bosh_window")},
    }, "servers": {}}
    if shutil.which("prosody"):
        try:
            v = subprocess.run(["prosodyctl", "about"], capture_output=True, text=True,
                               timeout=30).stdout.splitlines()
            results["meta"]["prosody_version"] = v[0].strip() if v else None
        except (OSError, subprocess.SubprocessError):
            pass

    failed = False
    bridge_key = None
    try:
        for name in names:
            if name == "bridge":
                server = BridgeServer(args, os.path.join(tmp, "bridge"), args.bridge_port)
            else:
                key = args.prosody_key
                if key == "auto":
                    key = "ec" if bridge_key and bridge_key.startswith("ec") else "rsa"
                server = ProsodyServer(args, os.path.join(tmp, "prosody"),
                                       args.prosody_port, key)
            entry = {}
            results["servers"][name] = entry
            try:
                server.prepare(args.accounts)
                bench_server(args, server, args.accounts, entry)
                if name == "bridge":
                    bridge_key = server.info.get("certificate_key")
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                failed = True
                entry["error"] = str(exc)
                say("%s: FAILED: %s" % (name, exc))
            finally:
                try:
                    server.stop()
                except Exception as exc:  # never leave the run half-stopped
                    say("%s: stop failed: %s" % (name, exc))
                    proc = server.proc or server.last_proc
                    if proc is not None and proc.poll() is None:
                        proc.kill()
                entry["info"] = server.info
                entry["server_log_tail"] = tail(server.out_path, 20)
            entry["figures"] = figures(entry)
        if federation:
            fed = results["federation"] = {}
            try:
                bench_federation(args, tmp, fed)
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                failed = True
                fed["error"] = str(exc)
                say("federation: FAILED: %s" % exc)
            if any("error" in (fed.get(k) or {}) for k in
                   ("bridge_to_bridge", "bridge_to_prosody")):
                failed = True
        if browser_names:
            br = results["browser_transports"] = {}
            try:
                bench_browser(args, tmp, br, browser_names)
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                failed = True
                br["error"] = str(exc)
                say("browser transports: FAILED: %s" % exc)
            for e in (br.get("servers") or {}).values():
                if "error" in e or any("error" in (e.get(t) or {})
                                       for t in args.browser_transports):
                    failed = True
    finally:
        figs = {n: results["servers"].get(n, {}).get("figures", {}) for n in names}
        text, ratios = table(figs, names)
        results["ratios_bridge_over_prosody"] = ratios
        print()
        if names:
            print("Benchmark (%s)%s" % (", ".join(names), " --quick" if args.quick else ""))
            print(text)
        for n in names:
            e = results["servers"].get(n, {})
            warn = []
            for mode in ("logins", "messages"):
                lf = (e.get(mode) or {}).get("loader_cpu_fraction")
                if lf is not None and lf > 0.9:
                    warn.append("loader CPU %.0f%% during %s: the loader may be the "
                                "bottleneck" % (100 * lf, mode))
                errs = (e.get(mode) or {}).get("errors")
                if errs:
                    warn.append("%s errors: %s" % (mode, errs))
            bad = (e.get("messages") or {}).get("bad_from")
            if bad:
                warn.append("%d messages arrived without the sender's full JID "
                            "as 'from'" % bad)
            lost = (e.get("messages") or {}).get("lost")
            if lost:
                warn.append("%d messages not delivered within the drain time" % lost)
            if e.get("error"):
                warn.append("error: %s" % e["error"].splitlines()[0])
            for w in warn:
                print("  %s: %s" % (n, w))
        if "federation" in results:
            print_federation(results, args)
        if "browser_transports" in results:
            print_browser(results, args, browser_names)
        if args.output:
            with open(args.output, "w") as f:
                json.dump(results, f, indent=2, sort_keys=True)
                f.write("\n")
            print("results written to %s" % args.output)
        if args.keep_tmp:
            say("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

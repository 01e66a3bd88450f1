"""The servers under test: bridge, Prosody and ejabberd, each a process of its own in a temporary directory.

Each is configured alike for the loads (STARTTLS required, SCRAM, its own
accounts, one loopback address and port, nothing else listening), started in
the foreground by the bench and stopped by it (SIGTERM, then SIGKILL), also
on error.
"""

import asyncio
import concurrent.futures
import datetime
import glob
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bench.load import raise_nofile
from bridge.core import sasl
from tests import pki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def say(*parts):
    print("[bench]", *parts, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


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


def describe_certs(directory):
    """Key type of the certificates found under `directory`."""
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



class Server:
    """One server process; `archive` turns its message archive on (bridge's [mam], Prosody's
    mod_mam, ejabberd's mod_mam), off otherwise."""
    name = "?"

    def __init__(self, args, workdir, port, host="127.0.0.1", domain=None, name=None,
                 archive=False):
        self.args = args
        self.archive = archive
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
        self.cpus = None  # CPUs the server may run on (None: any)
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
            preexec_fn=self._preexec)
        try:
            for host, port in [(self.host, self.port)] + self.extra_ports:
                wait_port(host, port, self.proc, self.args.start_timeout)
        except BenchError as exc:
            raise BenchError("%s: %s\n--- last output (%s) ---\n%s"
                             % (self.name, exc, self.out_path, tail(self.out_path)))
        say("%s: listening on %s:%d (pid %d)" % (self.name, self.host, self.port, self.pid))

    def _preexec(self):
        raise_nofile()
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self.last_proc = proc
        note = ""
        if proc.poll() is None:
            helpers = helper_usage(proc.pid)
            if helpers:
                # Not in the figures, which count the server's process: bridge's archive writer.
                self.info.setdefault("helper_processes", []).append(helpers)
                say("%s: helper processes (not in its figures): %s" % (self.name, "; ".join(
                    "%s: %.2f s CPU, %d KiB RSS" % (h["command"], h["cpu_s"], h["rss_kib"]) for h in helpers)))
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
                 name=None, s2s=None, http_port=None, archive=False):
        super().__init__(args, workdir, port, host, domain, name, archive)
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
        if self.s2s:
            cert = os.path.join(self.certs, "%s.crt" % self.domain)
            key = os.path.join(self.certs, "%s.key" % self.domain)
            shutil.copyfile(self.s2s["cert"], cert)
            shutil.copyfile(self.s2s["key"], key)
            os.chmod(key, 0o600)
            self.info["certificate_key"] = self.s2s.get("key_kind")
        else:
            cert, key = pki.self_signed(self.certs, [self.domain], self.key_type)
            self.info["certificate_key"] = pki.key_description(self.key_type)
        if self.s2s:
            self.write_federated_config(cert, key)
        else:
            with open(self.cfg, "w") as f:
                f.write("\n".join(self.config_lines(cert, key)) + "\n")
        self.create_accounts(accounts)

    def config_lines(self, cert, key):
        """The config of the c2s loads (no s2s), as lines of Lua."""
        lines = [
            "-- generated by the bench (python -m bench)",
            "pidfile = %s" % lua(os.path.join(self.dir, "prosody.pid")),
            "data_path = %s" % lua(self.data),
            "certificates = %s" % lua(self.certs),
            "log = { warn = %s }" % lua(os.path.join(self.dir, "prosody.log")),
            "interfaces = { %s }" % lua(self.host),
            "c2s_ports = { %d }" % self.port,
            "c2s_direct_tls_ports = { }",
            "modules_enabled = { \"roster\", \"saslauth\", \"tls\", \"disco\", \"ping\", "
            "\"posix\"%s%s }" % (", \"bosh\", \"websocket\"" if self.http_port else "",
                                ", \"mam\"" if self.archive else ""),
            "modules_disabled = { \"s2s\", \"offline\" }",
            "c2s_require_encryption = true",
            "authentication = \"internal_hashed\"",
            "storage = \"internal\"",
            "ssl = { certificate = %s, key = %s }" % (lua(cert), lua(key)),
        ]
        if self.archive:
            # mod_mam archives in the default storage ("internal": one file per user, appended
            # to); every chat is archived, as bridge's default_preference "always" does.
            lines.append("default_archive_policy = true")
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
        return lines

    def write_federated_config(self, cert, key):
        """Config with s2s on: certificates from the test CA, names from a hosts file."""
        f2 = self.s2s
        lines = [
            "-- generated by the bench (python -m bench) (federation phase)",
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

    def archived_items(self):
        """Messages in the users' archives: the internal storage appends one ``item(...);`` line
        per archived message to the user's ``archive/USER.list``."""
        count = 0
        pattern = os.path.join(self.data, lua_path_encode(self.domain), "archive", "*.list")
        for path in glob.glob(pattern):
            with open(path, errors="replace") as f:
                count += sum(1 for line in f if line.startswith("item("))
        return count


def lua(s):
    """`s` as a Lua string literal."""
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def lua_path_encode(s):
    """Prosody datamanager's file name encoding (non-alphanumerics as %xx)."""
    return "".join(c if c.isascii() and c.isalnum() else "%%%02x" % ord(c) for c in s)


def prosody_account_file(password, iterations=10000):
    salt = str(uuid.uuid4())
    stored_key, server_key = sasl.scram_keys("sha1", password, salt.encode(), iterations)
    return ('return {\n\t["iteration_count"] = %d;\n\t["salt"] = "%s";\n'
            '\t["server_key"] = "%s";\n\t["stored_key"] = "%s";\n};\n'
            % (iterations, salt, server_key.hex(), stored_key.hex()))


class BridgeServer(Server):
    """bridge (twistd) with a generated TOML config: c2s on `host`:`port` and whatever else the
    phase asks for.

    `raised_limits` (the loads of ``python -m bench``, whose clients all come
    from one address) lifts the per-address and byte-rate limits; without it
    bridge keeps its defaults (the flood and the soak).  `direct_tls_port`,
    `http_port` and `sip_port` (UDP) add those listeners on `host`; `tables`
    ({"section": {key: value}}, e.g. {"sms": {...}, "smsc.soak": {...}}) adds
    or overrides keys last.
    """
    name = "bridge"

    def __init__(self, args, workdir, port, host="127.0.0.1", domain=None, name=None,
                 data_dir=None, s2s=None, http_port=None, direct_tls_port=None, sip_port=None,
                 raised_limits=True, tables=None, source=REPO, archive=False):
        super().__init__(args, workdir, port, host, domain, name, archive)
        # The tree whose bridge runs: this one, or a checkout of --baseline.
        self.source = source
        # Browser transports phase: BOSH and WebSocket on a plain HTTP listener.
        self.http_port = http_port
        if http_port:
            self.extra_ports.append((host, http_port))
        self.direct_tls_port = direct_tls_port
        if direct_tls_port:
            self.extra_ports.append((host, direct_tls_port))
        self.sip_port = sip_port
        self.raised_limits = raised_limits
        self.tables = tables or {}
        if data_dir is None and getattr(args, "bridge_data_dir", None):
            data_dir = args.bridge_data_dir
        self.data = os.path.abspath(data_dir) if data_dir else os.path.join(workdir, "data")
        # Federation: {"port", "cert", "key", "ca_file", "static_routes", "dialback"}
        self.s2s = s2s
        if s2s:
            self.extra_ports.append((host, s2s["port"]))
        self.cfg = os.path.join(workdir, "bridge.toml")
        self.pwfile = os.path.join(workdir, "password")

    def env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = self.source + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def endpoint(self, port):
        return "tcp:%d:interface=%s" % (port, self.host)

    def config_tables(self):
        """The config as {"section": {key: value}} ("" holds the top-level keys)."""
        raised = self.raised_limits
        c2s = {"endpoints": [self.endpoint(self.port)],
               "direct_tls_endpoints": [self.endpoint(self.direct_tls_port)]
               if self.direct_tls_port else []}
        if raised:
            c2s.update(max_connections_per_address=1000000,
                       rate_limit_bytes_per_second=1000000000)
        tables = {"": {"data_dir": self.data}, "c2s": c2s}
        s2s = self.s2s
        if s2s:
            tables["s2s"] = {
                "endpoints": [self.endpoint(s2s["port"])], "direct_tls_endpoints": [],
                "ca_file": s2s["ca_file"], "certificate": s2s["cert"], "private_key": s2s["key"],
                "dialback": s2s.get("dialback", True), "static_routes": s2s["static_routes"],
                # Like the c2s limits above: the link carries every pair's traffic.
                "rate_limit_bytes_per_second": 1000000000, "rate_limit_burst_bytes": 1000000000}
        else:
            tables["s2s"] = {"endpoints": []}
        # The default component listener (127.0.0.1:5347) may be taken by
        # another bridge on this machine; a listen failure stops bridge.
        tables["component_listener"] = {"endpoints": []}
        if self.http_port:
            # Plain HTTP on this bridge's address only.
            tables["http"] = {"endpoints": [self.endpoint(self.http_port)], "tls_endpoints": []}
            if raised:
                # Every loader session comes from one address, as the c2s ones do.
                tables["http"].update(bosh_max_sessions_per_address=1000000,
                                      bosh_sessionless_requests_per_second_per_address=100000,
                                      bosh_sessionless_requests_burst=100000)
        else:
            # Nor the HTTP (BOSH/WebSocket) listeners, on all interfaces
            # (:5280, :5281) by default: two bridges at once would clash.
            tables["http"] = {"endpoints": [], "tls_endpoints": []}
        if self.sip_port:
            # UDP only, on this bridge's address.
            tables["sip"] = {"udp_endpoints": ["udp:%d:interface=%s" % (self.sip_port, self.host)],
                             "tcp_endpoints": [], "tls_endpoints": []}
        else:
            # Nor the SIP gateway (5060/5061 on all interfaces by default).
            tables["sip"] = {"enabled": False}
        tables["hosts.%s" % json.dumps(self.domain)] = {"aliases": []}
        if os.path.exists(os.path.join(self.source, "bridge", "features", "mam.py")):
            # Off unless asked for (--archive), as Prosody and ejabberd run without theirs; a
            # tree from before the archive has no [mam].  The archive's SQLite storage is
            # [storage]'s default, under data_dir.
            tables["mam"] = {"enabled": self.archive}
        elif self.archive:
            raise BenchError("%s: the tree %s has no message archive" % (self.name, self.source))
        for section, keys in self.tables.items():
            tables.setdefault(section, {}).update(keys)
        return tables

    def prepare(self, accounts):
        os.makedirs(self.data, exist_ok=True)
        with open(self.cfg, "w") as f:
            f.write("# generated by the bench (python -m bench)\n")
            for section, keys in self.config_tables().items():
                if section:
                    f.write("[%s]\n" % section)
                for key, value in keys.items():
                    f.write("%s = %s\n" % (key, toml_value(value)))
                f.write("\n")
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
            cmd = [sys.executable, "-m", "bridge.ctl", "--config", self.cfg,
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

    def archived_items(self):
        """Rows of the archive table of bridge's SQLite storage (read once bridge has stopped)."""
        path = os.path.join(self.data, self.config_tables().get("storage", {}).get(
            "path", "bridge.sqlite"))
        if not os.path.exists(path):
            return 0
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            return db.execute("SELECT COUNT(*) FROM archive").fetchone()[0]
        finally:
            db.close()

    def command(self):
        # twistd of the virtualenv the bench runs in; PYTHONPATH puts self.source's bridge first.
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return [twistd, "-n", "--pidfile=", "bridge", "--config", self.cfg]


def checkout(revision, directory):
    """The tree of `revision` of this repository, unpacked into `directory` (for --baseline)."""
    os.makedirs(directory)
    archive = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", revision],
                             capture_output=True, timeout=120)
    if archive.returncode:
        raise BenchError("git archive %s: %s" % (revision, archive.stderr.decode(errors="replace")))
    subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True, timeout=120)
    return directory


def toml_value(value):
    """`value` (str, bool, number, list or dict of them) as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON strings are valid TOML basic strings
    if isinstance(value, dict):
        return "{ %s }" % ", ".join("%s = %s" % (json.dumps(k), toml_value(v))
                                    for k, v in sorted(value.items()))
    return "[%s]" % ", ".join(toml_value(v) for v in value)


def sha256(s):
    return hashlib.sha256(s.encode()).hexdigest()


def ejabberd_libs():
    """ERL_LIBS of Debian's ejabberd package (the folder of ejabberd-VERSION/), or None when it is
    not installed."""
    apps = sorted(glob.glob("/usr/lib/*/ejabberd-*/ebin/ejabberd.app"))
    if not apps or not shutil.which("erl"):
        return None
    return os.path.dirname(os.path.dirname(os.path.dirname(apps[-1])))


def ejabberd_version():
    libs = ejabberd_libs()
    if not libs:
        return None
    return os.path.basename(os.path.realpath(glob.glob(os.path.join(libs, "ejabberd-*"))[-1])).removeprefix("ejabberd-")


class EjabberdServer(Server):
    """ejabberd in an Erlang VM of its own, started as ``ejabberdctl foreground`` would
    start it but without a node name (no epmd, no clash with another node), as this
    user, with its mnesia database, log and certificate in the temporary directory.

    Accounts are made through ejabberd's HTTP API (``register``) on a loopback
    port during a set-up start; the measured starts have the c2s listener only.
    """
    name = "ejabberd"

    def __init__(self, args, workdir, port, key_type, host="127.0.0.1", name=None,
                 archive=False):
        super().__init__(args, workdir, port, host, name=name, archive=archive)
        self.spool = os.path.join(workdir, "spool")
        self.cfg = os.path.join(workdir, "ejabberd.yml")
        self.log_path = os.path.join(workdir, "ejabberd.log")
        self.key_type = key_type
        self.certfiles = []

    def prepare(self, accounts):
        os.makedirs(self.spool, exist_ok=True)
        self.certfiles = list(pki.self_signed(os.path.join(self.dir, "certs"), [self.domain], self.key_type))
        self.info["certificate_key"] = pki.key_description(self.key_type)
        with socket.socket() as sock:
            sock.bind((self.host, 0))
            api_port = sock.getsockname()[1]
        self.write_config(api_port)
        self.extra_ports = [(self.host, api_port)]
        try:
            self.start()
            self.create_accounts(accounts, api_port)
        finally:
            stop_quietly(self)
            self.extra_ports = []
        self.write_config()

    def write_config(self, api_port=None):
        with open(self.cfg, "w") as f:
            f.write("\n".join(self.config_lines(api_port)) + "\n")

    def config_lines(self, api_port=None):
        """The c2s listener as for Prosody: STARTTLS required, SCRAM-SHA-1 stored keys
        (auth_password_format scram), mnesia storage, roster, disco and ping only (and
        mod_mam with `archive`), no s2s listener and no offline storage; with `api_port`,
        the HTTP API that registers the accounts."""
        yaml = json.dumps  # a JSON string is a YAML double-quoted scalar
        lines = [
            "# generated by the bench (python -m bench)",
            "hosts:", "  - %s" % yaml(self.domain),
            "loglevel: warning",
            "log_rotate_count: 0",
            "certfiles:"] + ["  - %s" % yaml(path) for path in self.certfiles] + [
            "listen:",
            "  -",
            "    port: %d" % self.port,
            "    ip: %s" % yaml(self.host),
            "    module: ejabberd_c2s",
            "    starttls_required: true",
            "    max_stanza_size: 262144",
            # ejabberd's default listen backlog is 5: concurrent logins would
            # wait for SYN retransmissions (1 s).  Prosody's is 128.
            "    backlog: 128",
        ]
        if api_port:
            lines += [
                "  -",
                "    port: %d" % api_port,
                "    ip: %s" % yaml(self.host),
                "    module: ejabberd_http",
                "    request_handlers:",
                "      /api: mod_http_api",
                "acl:",
                "  loopback:",
                "    ip:",
                "      - 127.0.0.0/8",
                "api_permissions:",
                "  bench:",
                "    from:",
                "      - mod_http_api",
                "    who:",
                "      - acl: loopback",
                "    what: register",
            ]
        lines += [
            "auth_method: internal",
            "auth_password_format: scram",
            "auth_scram_hash: sha",
            "default_db: mnesia",
            "modules:",
            "  mod_roster: {}",
            "  mod_disco: {}",
            "  mod_ping: {}",
        ]
        if self.archive:
            # In default_db (mnesia); every chat archived, as bridge's default_preference
            # "always" does (ejabberd's default is "never").
            lines += ["  mod_mam:", "    default: always"]
        return lines

    def create_accounts(self, accounts, api_port):
        a = self.args
        t0 = time.monotonic()
        url = "http://%s:%d/api/register" % (self.host, api_port)

        def register(i):
            body = json.dumps({"user": a.user_pattern.format(i), "host": self.domain,
                               "password": a.password}).encode()
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
            except (urllib.error.URLError, OSError) as exc:
                raise BenchError("ejabberd: registering account %d failed: %s" % (i, exc))

        with concurrent.futures.ThreadPoolExecutor(a.ctl_jobs) as ex:
            list(ex.map(register, range(1, accounts + 1)))
        self.info["accounts_setup_s"] = round(time.monotonic() - t0, 2)
        say("%s: %d accounts ready in %.1f s" % (self.name, accounts, time.monotonic() - t0))

    def env(self):
        env = dict(os.environ)
        env.update({
            "ERL_LIBS": ejabberd_libs(),
            "EJABBERD_CONFIG_PATH": self.cfg,
            "EJABBERD_LOG_PATH": self.log_path,
            # What ejabberdctl and /etc/default/ejabberd set.
            "ERL_MAX_PORTS": "32000",
            "ERL_MAX_ETS_TABLES": "1400",
            "ERL_CRASH_DUMP_BYTES": "0",
        })
        return env

    def log_files(self):
        return [self.out_path, self.log_path]

    def command(self):
        return ["erl", "+K", "true", "+P", "250000", "-noinput",
                "-mnesia", "dir", '"%s"' % self.spool, "-s", "ejabberd"]

    def archived_items(self):
        """Records of mod_mam's mnesia table ``archive_msg`` (0 when it was never made), read by
        an Erlang VM of its own on the spool once ejabberd has stopped."""
        program = (
            'mnesia:start(), '
            'N = case lists:member(archive_msg, mnesia:system_info(tables)) of '
            'false -> 0; '
            'true -> ok = mnesia:wait_for_tables([archive_msg], 60000), '
            'mnesia:table_info(archive_msg, size) end, '
            'io:format("archived ~b~n", [N]), halt().')
        r = subprocess.run(["erl", "-noinput", "-noshell", "-mnesia", "dir", '"%s"' % self.spool,
                            "-eval", program], cwd=self.dir, env=self.env(),
                           capture_output=True, text=True, timeout=120)
        for line in r.stdout.splitlines():
            if line.startswith("archived "):
                return int(line.split()[1])
        raise BenchError("%s: reading the archive table failed (exit %s): %s"
                         % (self.name, r.returncode, (r.stdout + r.stderr).strip()[-500:]))


def helper_usage(pid):
    """The CPU (user and system, seconds since it started) and memory of each child process of `pid`."""
    helpers = []
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            children = [int(child) for child in f.read().split()]
    except OSError:
        return helpers
    ticks = os.sysconf("SC_CLK_TCK")
    for child in children:
        try:
            with open("/proc/%d/stat" % child) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%d/cmdline" % child, "rb") as f:
                command = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        helpers.append({"pid": child, "command": command[-80:],
                        "cpu_s": round((int(fields[11]) + int(fields[12])) / ticks, 2),
                        "rss_kib": int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024})
    return helpers


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




def run_on_servers(args, prefix, accounts, phases_of, make_server, phase_run, print_table):
    """Each server of ``args.servers`` in turn (one not installed is skipped, with a line): ``accounts``
    accounts made, then each phase of ``phases_of(name)`` on a freshly started process, ``args.settle``
    seconds after its start, the coroutine ``phase_run(args, server, phase)`` giving its figures; the
    results printed by ``print_table`` and written as JSON to ``args.output``.  1 when a phase failed."""
    from bench import report  # (bench.report imports the benches, which import this module)

    raise_nofile()
    tmp = tempfile.mkdtemp(prefix=prefix)
    results = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "host": platform.node(), "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                        "params": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}},
               "servers": {}}
    failed = False
    try:
        for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
            if (name == "prosody" and shutil.which("prosody") is None) or (
                    name == "ejabberd" and ejabberd_libs() is None):
                say("%s not found: SKIPPING it" % name)
                continue
            server = make_server(args, name, tmp)
            entry = results["servers"][name] = {}
            try:
                server.prepare(accounts)
                for phase in phases_of(name):
                    say("%s: %s" % (name, phase))
                    server.start()
                    try:
                        time.sleep(args.settle)
                        entry[phase] = asyncio.run(phase_run(args, server, phase))
                    finally:
                        stop_quietly(server)
                    say("%s: %s: %s" % (name, phase, entry[phase]))
            except (BenchError, OSError, asyncio.TimeoutError) as exc:
                failed = True
                entry["error"] = "%s: %s" % (type(exc).__name__, exc)
                say("%s: FAILED: %s\n%s" % (name, exc, tail(server.out_path, 20)))
    finally:
        results["meta"]["loadavg_at_end"] = os.getloadavg()
        if args.output:
            report.write_json(results, args.output)
        print_table(results)
        if args.keep_tmp:
            say("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0

#!/usr/bin/env python3
"""Benchmark the bridge XMPP server against Prosody on loopback.

One run: starts bridge (twistd) with a generated config, creates the accounts
with bridgectl, runs three loads with bench/load.py (idle-session memory,
logins/s, one-to-one messages/s with latency), stops it; then does the same
with Prosody in a private temporary directory; prints a comparison table and
writes every figure as JSON to --output.

Servers run one at a time, each bound to 127.0.0.1 only, and are always
stopped at the end, even on error.
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


# ---------------------------------------------------------------------------
# servers

class Server:
    name = "?"

    def __init__(self, args, workdir, port):
        self.args = args
        self.dir = workdir
        self.host = "127.0.0.1"
        self.port = port
        self.domain = args.domain
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
        if not port_free(self.host, self.port):
            raise BenchError("port %d is already in use" % self.port)
        cmd = self.command()
        say("%s: starting: %s" % (self.name, " ".join(cmd)))
        self.out = open(self.out_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.dir, env=self.env(), stdin=subprocess.DEVNULL,
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=raise_nofile)
        try:
            wait_port(self.host, self.port, self.proc, self.args.start_timeout)
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

    def __init__(self, args, workdir, port, key_type):
        super().__init__(args, workdir, port)
        self.data = os.path.join(workdir, "data")
        self.certs = os.path.join(workdir, "certs")
        self.cfg = os.path.join(workdir, "prosody.cfg.lua")
        self.key_type = key_type

    def prepare(self, accounts):
        os.makedirs(self.data, exist_ok=True)
        os.makedirs(self.certs, exist_ok=True)
        cert = os.path.join(self.certs, "%s.crt" % self.domain)
        key = os.path.join(self.certs, "%s.key" % self.domain)
        make_cert(self.domain, cert, key, self.key_type)
        self.info["certificate_key"] = "rsa2048" if self.key_type != "ec" else "ec-secp256r1"
        lua = lambda s: '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')
        lines = [
            "-- generated by bench/run.py",
            "pidfile = %s" % lua(os.path.join(self.dir, "prosody.pid")),
            "data_path = %s" % lua(self.data),
            "certificates = %s" % lua(self.certs),
            "log = { warn = %s }" % lua(os.path.join(self.dir, "prosody.log")),
            "interfaces = { \"127.0.0.1\" }",
            "c2s_ports = { %d }" % self.port,
            "c2s_direct_tls_ports = { }",
            "modules_enabled = { \"roster\", \"saslauth\", \"tls\", \"disco\", \"ping\", \"posix\" }",
            "modules_disabled = { \"s2s\", \"offline\" }",
            "c2s_require_encryption = true",
            "authentication = \"internal_hashed\"",
            "storage = \"internal\"",
            "ssl = { certificate = %s, key = %s }" % (lua(cert), lua(key)),
        ]
        if os.getuid() == 0:
            # prosodyctl would otherwise switch to the 'prosody' user and
            # prosody itself refuses to run as root.
            lines.append("run_as_root = true")
        lines.append("VirtualHost %s" % lua(self.domain))
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.create_accounts(accounts)

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
        say("prosody: %d accounts ready in %.1f s" % (accounts, time.monotonic() - t0))

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

    def __init__(self, args, workdir, port):
        super().__init__(args, workdir, port)
        self.data = os.path.abspath(args.bridge_data_dir) if args.bridge_data_dir \
            else os.path.join(workdir, "data")
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
                "tcp:%d:interface=127.0.0.1" % self.port))
            f.write("direct_tls_endpoints = []\n")
            f.write("max_connections_per_address = 1000000\n")
            f.write("rate_limit_bytes_per_second = 1000000000\n\n")
            f.write("[s2s]\nendpoints = []\n\n")
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
            say("bridge: %d accounts already in %s" % (have, self.data))
            self.info["accounts_setup_s"] = 0.0
            return
        say("bridge: creating %d accounts with bridgectl (%d in parallel)..."
            % (len(todo), a.ctl_jobs))
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
                if r.returncode == 0:
                    return None
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
                    say("bridge: %d/%d accounts" % (done, len(todo)))
        if failures:
            raise BenchError("bridgectl adduser failed: %s" % failures[:3])
        with open(marker, "w") as f:
            json.dump({"pattern": a.user_pattern, "domain": self.domain,
                       "password_sha256": sha256(a.password), "count": accounts}, f)
        self.info["accounts_setup_s"] = round(time.monotonic() - t0, 2)
        say("bridge: %d accounts created in %.1f s" % (len(todo), time.monotonic() - t0))

    def on_started(self):
        if "certificates" not in self.info:
            certs = describe_certs(self.data)
            self.info["certificates"] = certs
            if certs:
                self.info["certificate_key"] = certs[0]["key"]

    def command(self):
        if os.path.exists(self.twistd):
            return [self.twistd, "-n", "--pidfile=", "bridge", "--config", self.cfg]
        return [self.python, "-m", "twisted", "-n", "--pidfile=", "bridge",
                "--config", self.cfg]


def sha256(s):
    return hashlib.sha256(s.encode()).hexdigest()


# ---------------------------------------------------------------------------
# loads

def loader_cmd(args, server, mode, extra):
    return [sys.executable, LOAD, mode, "--host", server.host, "--port", str(server.port),
            "--domain", server.domain, "--user-pattern", args.user_pattern,
            "--password", args.password, "--accounts", str(args.accounts),
            "--concurrency", str(args.concurrency),
            "--server-pid", str(server.pid)] + [str(x) for x in extra]


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


def run_loader(args, server, mode, extra, timeout):
    cmd = loader_cmd(args, server, mode, extra)
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
    if not server.alive():
        res["server_died"] = True
        raise BenchError("%s died during the %s load (exit code %s)"
                         % (server.name, mode, server.proc.returncode))
    return res


def run_idle(args, server, sessions):
    extra = ["--sessions", sessions, "--hold-timeout", args.hold_timeout]
    cmd = loader_cmd(args, server, "idle", extra)
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


def smoke(args, server, accounts):
    """A few logins right after start: lazily loaded code gets loaded before
    any measurement, and a broken login fails fast."""
    n = min(20, accounts)
    res = run_loader(args, server, "logins", ["--logins", n, "--login-accounts", n,
                                              "--max-time", 120], timeout=180)
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


def table(figs, names):
    lines = []
    head = "%-30s" % "figure" + "".join("%12s" % n for n in names)
    both = "bridge" in names and "prosody" in names
    if both:
        head += "%16s  %s" % ("bridge/prosody", "better")
    lines.append(head)
    lines.append("-" * len(head))
    ratios = {}
    for key, label, better in ROWS:
        row = "%-30s" % label + "".join("%12s" % fmt(figs.get(n, {}).get(key)) for n in names)
        if both:
            b, p = figs["bridge"].get(key), figs["prosody"].get(key)
            ratio = round(b / p, 3) if isinstance(b, (int, float)) and \
                isinstance(p, (int, float)) and p else None
            ratios[key] = ratio
            row += "%16s  %s" % (fmt(ratio), better)
        lines.append(row)
    return "\n".join(lines), ratios


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
    args = p.parse_args(argv)
    if args.quick:
        args.logins, args.pairs, args.duration, args.warmup = 20, 5, 2.0, 1.0
        args.sessions = 50
        args.concurrency = min(args.concurrency, 10)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for n in names:
        if n not in ("bridge", "prosody"):
            p.error("unknown server %r" % n)
    if "prosody" in names and not shutil.which("prosody"):
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
            "warmup", "sessions", "accounts", "quick")},
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
    finally:
        figs = {n: results["servers"].get(n, {}).get("figures", {}) for n in names}
        text, ratios = table(figs, names)
        results["ratios_bridge_over_prosody"] = ratios
        print()
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

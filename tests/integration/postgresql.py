"""A PostgreSQL server of the tests' own: initdb into a temporary folder, then postgres on a free
loopback port, its socket in that folder; stopped and started again at will (a database loss).

PostgreSQL refuses to run as root: as root the server runs as the user
``nobody`` through ``runuser``.  ``skip_reason()`` says why none can run here.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
USER = "bridge"
UNPRIVILEGED = "nobody"


def _bin(name):
    return os.path.join(BINARIES[-1], name)


def skip_reason():
    """Why no PostgreSQL server can be started here, or None."""
    if not BINARIES or not os.path.exists(_bin("postgres")):
        return "PostgreSQL is not installed (apt-get install postgresql: /usr/lib/postgresql/*/bin/postgres)"
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg and psycopg-pool are not installed (pip install 'bridge[postgresql]')"
    if os.getuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and runuser (to start PostgreSQL as nobody) is missing"
    return None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgreSQLServer:
    """One cluster in a temporary folder; ``dsn`` reaches its database ``bridge`` (trust on loopback)."""

    def __init__(self, folder=None, port=None):
        self.folder = folder or tempfile.mkdtemp(prefix="bridge-pg-")
        self.data = os.path.join(self.folder, "data")
        self.port = port or free_port()
        if os.getuid() == 0:
            shutil.chown(self.folder, UNPRIVILEGED)
        os.chmod(self.folder, 0o700)

    @property
    def dsn(self):
        return f"host=127.0.0.1 port={self.port} user={USER} dbname=bridge"

    def _run(self, *command):
        prefix = ["runuser", "-u", UNPRIVILEGED, "--"] if os.getuid() == 0 else []
        done = subprocess.run(prefix + list(command), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[0]} failed: {done.stdout}{done.stderr}"
        return done

    def init(self):
        self._run(_bin("initdb"), "-D", self.data, "-A", "trust", "-U", USER, "--no-sync")
        return self

    def base_backup_of(self, primary):
        """A standby of ``primary``: its copy, following it by streaming replication until promoted."""
        self._run(_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", USER, "-D", self.data,
                  "-R", "-X", "stream", "-c", "fast")
        return self

    def start(self):
        self._run(_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.folder, "log"), "-w", "-t", "60",
                  "-o", f"-k {self.folder} -p {self.port} -h 127.0.0.1 -c fsync=off", "start")
        return self

    def create_database(self):
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE bridge")
        return self

    def stop(self, mode="fast"):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run(_bin("pg_ctl"), "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def promote(self):
        self._run(_bin("pg_ctl"), "-D", self.data, "-w", "-t", "60", "promote")

    def remove(self):
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

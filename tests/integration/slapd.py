"""OpenLDAP's slapd for the directory tests: a temporary database from an LDIF, on a loopback port, TLS
with a certificate of the test authority (StartTLS on ldap://)."""

import base64
import os
import shutil
import socket
import subprocess
import time

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMAS = "/etc/ldap/schema"
MODULES = "/usr/lib/ldap"
SUFFIX = "dc=bridge,dc=test"
SERVICE_DN = f"cn=bridge,{SUFFIX}"
SERVICE_PASSWORD = "service-secret"
START_TIMEOUT = 15.0
# The photo of every user: the directory holds it as bytes, as it would a JPEG.
PHOTO = b"\xff\xd8\xff\xe0photo-of-alice\xff\xd9"


def missing():
    """Why slapd cannot run here, or None."""
    for program in (SLAPD, SLAPADD):
        if not os.access(program, os.X_OK):
            return f"{program} is not installed (Debian packages slapd and ldap-utils)"
    return None


def users_ldif(users):
    """Entries: the base, the service account, ``users`` ({uid: (cn, password, mobile)}), one group."""
    blocks = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: bridge\ndc: bridge\n",
              f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
              f"dn: {SERVICE_DN}\nobjectClass: person\ncn: bridge\nsn: bridge\nuserPassword: {SERVICE_PASSWORD}\n"]
    for uid, (cn, password, mobile) in users.items():
        blocks.append(f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {cn}\n"
                      f"sn: {cn.split()[-1]}\nmail: {uid}@bridge.test\nmobile: {mobile}\nuserPassword: {password}\n"
                      f"jpegPhoto:: {base64.b64encode(PHOTO).decode()}\n")
    members = "".join(f"member: uid={uid},ou=people,{SUFFIX}\n" for uid in users)
    blocks.append(f"dn: cn=staff,{SUFFIX}\nobjectClass: groupOfNames\ncn: staff\n{members}")
    return "\n".join(blocks)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Slapd:
    """One slapd process with its own database in ``directory``."""

    def __init__(self, directory, ldif, certificate, key, ca_file):
        self.directory = str(directory)
        self.port = free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        self.process = None
        database = os.path.join(self.directory, "db")
        os.makedirs(database, exist_ok=True)
        self.config = os.path.join(self.directory, "slapd.conf")
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write(
                f"include {SCHEMAS}/core.schema\ninclude {SCHEMAS}/cosine.schema\n"
                f"include {SCHEMAS}/inetorgperson.schema\n"
                f"modulepath {MODULES}\nmoduleload back_mdb\n"
                f"pidfile {self.directory}/slapd.pid\n"
                f"TLSCACertificateFile {ca_file}\nTLSCertificateFile {certificate}\n"
                f"TLSCertificateKeyFile {key}\n"
                f"database mdb\nsuffix \"{SUFFIX}\"\nrootdn \"cn=admin,{SUFFIX}\"\nrootpw admin-secret\n"
                f"directory {database}\nmaxsize 104857600\n"
                "index objectClass eq\nindex uid,mail eq,sub\nindex cn eq,sub\nindex member eq\n"
                "access to attrs=userPassword by anonymous auth by self write by * none\n"
                "access to * by * read\n")
        ldif_path = os.path.join(self.directory, "data.ldif")
        with open(ldif_path, "w", encoding="utf-8") as handle:
            handle.write(ldif)
        done = subprocess.run([SLAPADD, "-f", self.config, "-l", ldif_path], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"slapadd failed: {done.stdout}{done.stderr}"

    def start(self):
        self.process = subprocess.Popen([SLAPD, "-f", self.config, "-h", f"{self.uri}/", "-d", "0"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"slapd exited: {self.process.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"slapd did not listen on {self.uri} within {START_TIMEOUT}s")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

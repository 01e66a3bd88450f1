"""Logins per second with directory (LDAP) accounts beside SQLite accounts (``python -m bench.directory_bench``).

One bridge process (twistd, loopback ports) serves two hosts: ``localhost``
with bridge's own SQLite accounts and ``corp.test`` whose users live in an
OpenLDAP slapd started for the run (StartTLS, a test authority; needs the
Debian packages slapd and ldap-utils).  Both hosts have ``--accounts``
users ``bench1..benchN`` with one password.  Each directory user logs in once
with PLAIN first, which keeps the SCRAM records a directory user's SCRAM
login is checked against; then ``bench/load.py`` runs its logins mode
(STARTTLS, SCRAM-SHA-1, bind, close; the client's PBKDF2 cached) against each
host in turn, twice, alternating.  Every directory SCRAM login asks slapd for
the entry (whether it changed since the records were kept).  Printed: logins
per second and the server's CPU milliseconds per login for each host, and
the directory's rate as a share of SQLite's.  Then one directory user sends
``--searches`` XEP-0055 searches by a part of a name, one after another, in a
directory of ``--entries`` users (slapd's default indexes only: a substring
match on cn scans); printed: p50 and p99 of the answer time as the client
sees it.  Figures, not a test.
"""

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.load import percentile
from bench.loads import parse_result
from tests.integration import slapd
from tests.integration.harness import REPO, RawClient, ServerProcess, add_users, write_config
from tests.pki import CertificateAuthority

HOST = "corp.test"
PASSWORD = "benchpass"


def start(workdir, accounts, entries):
    """slapd with ``entries`` directory users and bridge with both hosts (``accounts`` SQLite
    users); (bridge, slapd)."""
    authority = CertificateAuthority(workdir)
    certificate, key = authority.issue(workdir, [ipaddress.ip_address("127.0.0.1")], file_name="slapd")
    users = {f"bench{number}": (f"Bench User{number}", PASSWORD, f"+4917000{number:05d}")
             for number in range(1, max(accounts, entries) + 1)}
    directory = slapd.Slapd(os.path.join(workdir, "slapd"), slapd.users_ldif(users), certificate, key,
                            authority.ca_file)
    directory.start()
    password_file = os.path.join(workdir, "bind.password")
    with open(password_file, "w", encoding="utf-8") as handle:
        handle.write(slapd.SERVICE_PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    tables = (f'[mam]\nenabled = false\n[hosts."{HOST}"]\nldap = "corp"\n[ldap.corp]\nuris = ["{directory.uri}"]\n'
              f'ca_file = "{authority.ca_file}"\nbind_dn = "{slapd.SERVICE_DN}"\n'
              f'bind_password_file = "{password_file}"\nbase_dn = "ou=people,{slapd.SUFFIX}"\n')
    # Every loader connection comes from 127.0.0.1, as in bench/servers.py's raised limits.
    config_path = write_config(workdir, "max_connections_per_address = 1000000\n"
                                        "rate_limit_bytes_per_second = 1000000000", tables=tables)
    add_users(config_path, {f"bench{number}@localhost": PASSWORD for number in range(1, accounts + 1)})
    bridge = ServerProcess(config_path)
    bridge.start()
    return bridge, directory


def first_logins(bridge, accounts):
    """One PLAIN login per directory user: the records SCRAM needs are kept."""
    for number in range(1, accounts + 1):
        client = RawClient(bridge.port, server_hostname=HOST)
        try:
            client.secure(HOST)
            outcome = client.authenticate_plain(f"bench{number}", PASSWORD)
            if not outcome.tag.endswith("success"):
                raise SystemExit(f"bench{number}@{HOST}: the first PLAIN login failed:\n{client.dump()}")
        finally:
            client.close()


def searches(bridge, args):
    """Latencies (ms) of ``args.searches`` XEP-0055 searches by a part of a name, one after another,
    on one logged-in directory user's stream."""
    client = RawClient(bridge.port, server_hostname=HOST)
    try:
        client.login("bench1", PASSWORD, host=HOST, resource="search")
        latencies = []
        for number in range(args.searches):
            part = f"User{(number * 7919) % args.entries + 1}"
            started = time.perf_counter()
            client.send(f"<iq type='set' id='s{number}' to='{HOST}'><query xmlns='jabber:iq:search'>"
                        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>jabber:iq:search"
                        f"</value></field><field var='name'><value>{part}</value></field></x></query></iq>")
            reply = client.expect("{jabber:client}iq")
            latencies.append((time.perf_counter() - started) * 1000)
            if reply.get("type") != "result":
                raise SystemExit(f"search {number} failed:\n{client.dump()}")
        return sorted(latencies)
    finally:
        client.close()


def logins(bridge, domain, args):
    command = [sys.executable, "-m", "bench.load", "logins", "--port", str(bridge.port), "--domain", domain,
               "--password", PASSWORD, "--accounts", str(args.accounts), "--login-accounts", str(args.accounts),
               "--logins", str(args.logins), "--concurrency", str(args.concurrency),
               "--server-pid", str(bridge.process.pid)]
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=600)
    result = parse_result(done.stdout)
    if result is None or result["logins_failed"]:
        raise SystemExit(f"the load against {domain} failed: {done.stdout[-2000:]}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=20, help="users per host (default %(default)s)")
    parser.add_argument("--logins", type=int, default=1000, help="logins per measurement (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=20, help="logins at once (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per host (default %(default)s)")
    parser.add_argument("--entries", type=int, default=10000,
                        help="users in the directory, for the searches (default %(default)s)")
    parser.add_argument("--searches", type=int, default=500, help="searches measured (default %(default)s)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if slapd.missing():
        raise SystemExit(slapd.missing())
    with tempfile.TemporaryDirectory() as workdir:
        bridge, directory = start(workdir, args.accounts, args.entries)
        try:
            first_logins(bridge, args.accounts)
            runs = {"sqlite": [], "ldap": []}
            for _ in range(args.rounds):
                runs["sqlite"].append(logins(bridge, "localhost", args))
                runs["ldap"].append(logins(bridge, HOST, args))
            latencies = searches(bridge, args)
        finally:
            bridge.stop()
            directory.remove()
    best = {kind: max(results, key=lambda result: result["logins_per_s"]) for kind, results in runs.items()}
    print(f"{'accounts':<10}{'logins/s':>12}{'server CPU ms/login':>22}{'p99 ms':>10}")
    for kind, result in best.items():
        print(f"{kind:<10}{result['logins_per_s']:>12}{result['server_cpu_ms_per_login']:>22}"
              f"{result['login_time_p99_ms']:>10}")
    share = best["ldap"]["logins_per_s"] / best["sqlite"]["logins_per_s"]
    print(f"directory / SQLite: {share:.2f} (best of {args.rounds} rounds each, every round: "
          f"{[result['logins_per_s'] for result in runs['sqlite']]} and "
          f"{[result['logins_per_s'] for result in runs['ldap']]})")
    search = {"p50_ms": round(percentile(latencies, 0.5), 2), "p99_ms": round(percentile(latencies, 0.99), 2)}
    print(f"search by a part of a name among {args.entries} entries, {args.searches} searches: "
          f"p50 {search['p50_ms']} ms, p99 {search['p99_ms']} ms")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"runs": runs, "share": round(share, 3), "search": search, "arguments": vars(args)}, handle,
                      indent=2)


if __name__ == "__main__":
    main()

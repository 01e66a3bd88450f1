"""Fixtures of the integration tests: real server processes on loopback ports.

``server`` is one process for the whole session; each test uses accounts of
its own so that no test sees another's rosters, messages or block lists.
``start_server`` makes further processes (a module with hostile clients has
its own).  When a test fails, the server log lines written during it are
printed with the failure.
"""

import pytest

from .harness import SIP_OFF, ServerProcess, add_users, write_config

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "kim",
         "mallory", "niaj", "olivia", "pat", "quinn", "sam", "sue", "trent", "uma", "victor", "walter", "xavier", "yvonne")

RUNNING = []


def password_for(jid):
    user, host = jid.split("@")
    return f"{user}-secret-{host}"


def accounts_for(jids):
    return {jid: password_for(jid) for jid in jids}


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """A factory: a started server with the given accounts; all are stopped at the end of the session."""
    started = []

    def start(name, jids, sip=SIP_OFF, tables="", wait_for=("c2s", "c2s-direct-tls")):
        """``sip``, ``tables``: as ``write_config`` takes them; ``wait_for``: the listeners to wait for."""
        directory = tmp_path_factory.mktemp(name)
        config_path = write_config(str(directory), sip=sip, tables=tables)
        accounts = accounts_for(jids)
        add_users(config_path, accounts)
        process = ServerProcess(config_path, accounts)
        started.append(process)
        RUNNING.append(process)
        process.start(wait_for=wait_for)
        process.sip_ports = {kind: port for kind, port in process.ports.items() if kind.startswith("sip-")}
        return process

    yield start
    for process in started:
        process.stop()
        RUNNING.remove(process)


@pytest.fixture(scope="session")
def server(start_server):
    """The shared server: localhost (registration on) and example.test (alias alias.test)."""
    jids = [f"{user}@localhost" for user in USERS] + ["olivia@example.test"]
    return start_server("bridge", jids)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _server_log_on_failure(request):
    """Print what the servers logged during a test that failed, and check they still run."""
    marks = {id(process): len(process.lines) for process in RUNNING}
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for process in RUNNING:
            start = marks.get(id(process), 0)
            if len(process.lines) == start and process.alive():
                continue
            print(f"--- server log ({process.log_path}) during the test ---")
            print(process.tail(count=80, start=start))
            if not process.alive():
                print(f"--- the server exited with status {process.process.poll()} ---")

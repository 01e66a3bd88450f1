"""twistd without -n, as an administrator runs a service: the server builds its service, then forks to
become a daemon.  A login, which reads the database, is still answered: the daemon works the database
with a thread and a connection of its own (threads do not follow a fork)."""

import os
import re
import signal
import subprocess
import sys
import time

from .harness import SERVER_START_TIMEOUT, TWISTD, RawClient, add_users, server_env, write_config

LISTENING = re.compile(r"listening c2s on 127\.0\.0\.1:(\d+)")


def wait_for_port(log_path, timeout=SERVER_START_TIMEOUT):
    """The c2s port from the daemon's log file, once it says it is serving."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = open(log_path, encoding="utf-8").read() if os.path.exists(log_path) else ""
        match = LISTENING.search(text)
        if match and " serving " in text:
            return int(match.group(1))
        time.sleep(0.1)
    raise AssertionError(f"the daemon did not start in {timeout}s; log:\n{text}")


def test_a_daemon_answers_logins(tmp_path):
    directory = str(tmp_path)
    config_path = write_config(directory)
    add_users(config_path, {"dana@localhost": "dana-secret"})
    log_path = os.path.join(directory, "twistd.log")
    pid_path = os.path.join(directory, "twistd.pid")
    subprocess.run([sys.executable, "-c", TWISTD, "--pidfile", pid_path, "--logfile", log_path, "bridge",
                    "--config", config_path], env=server_env(), cwd=directory, check=True, timeout=60)
    pid = int(open(pid_path).read())
    try:
        client = RawClient(wait_for_port(log_path))
        try:
            assert client.login("dana", "dana-secret", resource="daemon") == "dana@localhost/daemon"
        finally:
            client.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while os.path.exists(pid_path) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not os.path.exists(pid_path), "the daemon did not stop on SIGTERM"

"""Starting the server with Twisted's two runners: twistd (the README's) and twist
(``python -m twisted``), which lists the bridge plugin among its commands."""

import sys

from .harness import NS_STREAMS, RawClient, ServerProcess, write_config


def check_serving(process):
    raw = RawClient(process.port)
    try:
        features = raw.open("localhost")
        assert features.tag == f"{{{NS_STREAMS}}}features", raw.dump()
    finally:
        raw.close()


def test_twist_runner_listens(tmp_path):
    """`python -m twisted bridge --config FILE` (the twist runner, which only calls
    startService and never privilegedStartService) also opens both client listeners."""
    config_path = write_config(str(tmp_path))
    process = ServerProcess(config_path, command=[sys.executable, "-m", "twisted", "--log-format=text", "bridge",
                                                  "--config", config_path])
    try:
        process.start(timeout=10)
        check_serving(process)
    finally:
        process.stop()

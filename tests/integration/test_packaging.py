"""The systemd unit in conf/ as systemd itself reads it."""

import os
import shutil
import subprocess
import sys

import pytest

from .harness import REPO

UNIT = os.path.join(REPO, "conf", "bridge.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    """conf/bridge.service passes `systemd-analyze verify` (with ExecStart pointed at this environment's
    twistd, as a package would install it at /usr/bin/twistd)."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(twistd, os.X_OK):
        pytest.skip(f"no twistd beside {sys.executable}")
    with open(UNIT, encoding="utf-8") as handle:
        text = handle.read()
    assert "ExecStart=/usr/bin/twistd " in text
    copy = tmp_path / "bridge.service"
    copy.write_text(text.replace("ExecStart=/usr/bin/twistd ", f"ExecStart={twistd} "), encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
    for line in ("User=bridge", "StateDirectory=bridge", "ConfigurationDirectory=bridge", "UMask=0077"):
        assert line in text.splitlines(), line

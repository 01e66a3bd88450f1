"""Backup and restore as XEP-0227 files with bridgectl, on the real server (docs/operations.md)."""

import asyncio
import os
import stat
import subprocess
import sys

from .conftest import accounts_for
from .harness import ServerProcess, add_users, login, server_env, write_config


def bridgectl(config_path, *args):
    return subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", config_path, *args], env=server_env(),
                          capture_output=True, text=True, timeout=120)


def test_export_then_import_keeps_logins_and_rosters(tmp_path):
    """A user's roster item is kept by the old server; `bridgectl export` writes a 0600 file without the
    password; imported into a fresh data folder, the user logs in with the old password and finds the item."""
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    old_config = write_config(str(old_dir))
    accounts = accounts_for(["alice@localhost", "bob@localhost"])
    add_users(old_config, accounts)
    old = ServerProcess(old_config, accounts).start()
    try:
        async def fill():
            alice = await login("alice@localhost/desk", accounts["alice@localhost"], old.port)
            reply = await alice.query("set", None, "<query xmlns='jabber:iq:roster'><item jid='bob@localhost' "
                                                   "name='Bobby'><group>Team</group></item></query>")
            assert reply["type"] == "result", reply
            await alice.close()

        asyncio.run(fill())
        backup_file = str(tmp_path / "backup.xml")
        done = bridgectl(old_config, "export", backup_file)
        assert done.returncode == 0, done.stderr
        assert "2 accounts" in done.stdout
    finally:
        old.stop()
    assert stat.S_IMODE(os.stat(backup_file).st_mode) == 0o600
    with open(backup_file, encoding="utf-8") as handle:
        text = handle.read()
    assert accounts["alice@localhost"] not in text and "scram-credentials" in text

    new_config = write_config(str(new_dir))
    done = bridgectl(new_config, "import", backup_file)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 accounts imported" in done.stdout
    new = ServerProcess(new_config, accounts).start()
    try:
        async def check():
            alice = await login("alice@localhost/desk", accounts["alice@localhost"], new.port, roster=False)
            roster = await alice.get_roster()
            item = roster["roster"]["items"]["bob@localhost"]
            assert item["name"] == "Bobby" and item["groups"] == ["Team"], item
            await alice.close()

        asyncio.run(check())
        refused = bridgectl(new_config, "import", backup_file)
        assert refused.returncode == 1 and "the server is running" in refused.stderr
    finally:
        new.stop()

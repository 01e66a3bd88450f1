"""The data folder and its secrets: created for the server's user only, loose modes reported."""

import os
import shutil
import stat
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core import datadir
from bridge.tap import build


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class DataDirTestCase(SynchronousTestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root)
        # A permissive umask, as many service managers leave it: the modes must not depend on it.
        self.addCleanup(os.umask, os.umask(0o002))

    def warnings(self, action):
        with capturedLogs() as events:
            action()
        return [event for event in events if event.get("log_level") is not None
                and event["log_level"].name == "warn"]


class StartupTests(DataDirTestCase):
    def test_build_creates_private_folders_and_files(self):
        """The server's first start creates data_dir and certs/ 0700, the generated key 0600."""
        data = os.path.join(self.root, "var", "data")
        config = configuration.parse({"data_dir": data, "storage": {"backend": "memory"}}, "test.toml")
        top = build(config, MemoryReactorClock())
        self.addCleanup(top.server.storage.close)
        self.assertEqual(mode_of(data), 0o700)
        self.assertEqual(mode_of(os.path.join(data, "certs")), 0o700)
        self.assertEqual(mode_of(os.path.join(data, "certs", "bridge.key")), 0o600)
        self.assertEqual(mode_of(os.path.join(data, "server.secret")), 0o600)

    def test_unknown_users_look_the_same_after_a_restart(self):
        """The server's secret is kept in data_dir: a restarted server makes up the same SCRAM salt
        for a name without an account."""
        config = configuration.parse({"data_dir": self.root, "storage": {"backend": "memory"}}, "test.toml")
        salts = []
        for start in range(2):
            server = build(config, MemoryReactorClock()).server
            server.storage.close()
            salts.append(server.decoys.credentials("localhost", "mallory")["SCRAM-SHA-256"]["salt"])
        self.assertEqual(salts[0], salts[1])


class FolderTests(DataDirTestCase):
    def test_new_folder_is_private(self):
        """A folder made by private_folder is 0700, its missing parents made too."""
        path = os.path.join(self.root, "a", "b")
        self.assertEqual(self.warnings(lambda: datadir.private_folder(path)), [])
        self.assertEqual(mode_of(path), 0o700)

    def test_open_folder_is_reported_and_left(self):
        """An existing folder that others may read is reported with its mode, and not changed."""
        path = os.path.join(self.root, "shared")
        os.mkdir(path)
        os.chmod(path, 0o755)
        [warning] = self.warnings(lambda: datadir.private_folder(path))
        self.assertEqual((warning["path"], warning["mode"]), (path, "755"))
        self.assertEqual(mode_of(path), 0o755)

    def test_private_folder_is_not_reported(self):
        """An existing 0700 folder gives no warning."""
        path = os.path.join(self.root, "mine")
        os.mkdir(path, 0o700)
        self.assertEqual(self.warnings(lambda: datadir.private_folder(path)), [])


class FileTests(DataDirTestCase):
    def test_private_file_replaces_a_loose_one(self):
        """write_private_file leaves a 0600 file even where a 0644 one was."""
        path = os.path.join(self.root, "key")
        with open(path, "w") as handle:
            handle.write("old")
        os.chmod(path, 0o644)
        datadir.write_private_file(path, b"new")
        self.assertEqual(mode_of(path), 0o600)
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), b"new")

    def test_secret_is_made_once_and_kept(self):
        """The first call makes a 0600 secret file; later calls (restarts) read the same secret."""
        path = os.path.join(self.root, "server.secret")
        first = datadir.server_secret(path)
        self.assertEqual(len(first), datadir.SECRET_BYTES)
        self.assertEqual(mode_of(path), 0o600)
        self.assertEqual(datadir.server_secret(path), first)
        self.assertNotEqual(datadir.server_secret(os.path.join(self.root, "other.secret")), first)

    def test_damaged_secret_is_an_error_naming_the_file(self):
        """A secret file with too little or no hex in it stops the start with its name, and is kept."""
        path = os.path.join(self.root, "server.secret")
        for text in ("", "abcd\n", "not hex at all\n", "\xe9" * 64):
            with open(path, "w", encoding="latin-1") as handle:
                handle.write(text)
            error = self.assertRaises(ValueError, datadir.server_secret, path)
            self.assertIn(path, str(error))

    def test_loose_secret_is_reported(self):
        """A secret file others may read is reported."""
        path = os.path.join(self.root, "server.secret")
        datadir.server_secret(path)
        os.chmod(path, 0o644)
        [warning] = self.warnings(lambda: datadir.server_secret(path))
        self.assertEqual(warning["mode"], "644")

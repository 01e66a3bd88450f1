"""The bench's archive comparison (``python -m bench --archive``): the servers' configs follow the archive flag, and
the runs are ordered, checked and summed up as documented.

Config writers of bench/servers.py and pure functions of bench/archive.py; no server is started.
"""

import argparse
import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bench.archive import archive_warnings, round_ratios, schedule, summary
from bench.servers import BridgeServer, EjabberdServer, ProsodyServer


def scratch_folder(case):
    """A new folder, removed after ``case``'s other cleanups (trial's mktemp would leave it in the working tree)."""
    folder = tempfile.mkdtemp(prefix="bridge-test-")
    case.addCleanup(shutil.rmtree, folder, True)
    return os.path.join(folder, "run")


def bench_args():
    return argparse.Namespace(domain="localhost", bridge_data_dir=None)


class ConfigWritersTests(SynchronousTestCase):
    def test_bridge_archive_follows_the_flag(self):
        """bridge's config has [mam] enabled = true with the archive flag, false without it."""
        for archive in (False, True):
            server = BridgeServer(bench_args(), scratch_folder(self), 25222, archive=archive)
            self.assertEqual(server.config_tables()["mam"], {"enabled": archive})

    def test_prosody_loads_mod_mam_archiving_every_chat_only_with_the_flag(self):
        """Prosody's config enables mod_mam with default_archive_policy = true with the archive flag,
        and has neither without it."""
        def config(archive):
            server = ProsodyServer(bench_args(), scratch_folder(self), 15222, "ec", archive=archive)
            return server.config_lines("/c.crt", "/c.key")

        def modules(lines):
            [enabled] = [line for line in lines if line.startswith("modules_enabled")]
            return enabled

        on, off = config(True), config(False)
        self.assertIn('"mam"', modules(on))
        self.assertIn("default_archive_policy = true", on)
        self.assertNotIn('"mam"', modules(off))
        self.assertFalse([line for line in off if line.startswith("default_archive_policy")])

    def test_ejabberd_loads_mod_mam_archiving_always_only_with_the_flag(self):
        """ejabberd's config lists mod_mam with default: always under modules with the archive flag,
        and no mod_mam without it."""
        def config(archive):
            return EjabberdServer(bench_args(), scratch_folder(self), 35222, "ec",
                                  archive=archive).config_lines()

        on = config(True)
        self.assertEqual(on[on.index("modules:"):][-2:], ["  mod_mam:", "    default: always"])
        self.assertFalse([line for line in config(False) if "mod_mam" in line])


def run_entry(config, archive, items, sent=100, rate=1000.0, round_=1, server=None):
    return {"configuration": config, "server": server or config.split("-")[0], "archive": archive,
            "round": round_, "archived_items": items, "messages": {"sent_total": sent},
            "figures": {"messages_per_s": rate, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0,
                        "server_cpu_us_per_message": 3.0}}


class ArchiveRunsTests(SynchronousTestCase):
    def test_bridge_rounds_alternate_which_comes_first_then_peers(self):
        """bridge's rounds go off-on, on-off, off-on; then each peer with its archive on, then
        off."""
        self.assertEqual(
            [(c, r) for c, _, _, r in schedule(["bridge", "prosody", "ejabberd"], 3)],
            [("bridge-off", 1), ("bridge-on", 1), ("bridge-on", 2), ("bridge-off", 2),
             ("bridge-off", 3), ("bridge-on", 3), ("prosody-on", 1), ("prosody-off", 1),
             ("ejabberd-on", 1), ("ejabberd-off", 1)])

    def test_an_archive_that_holds_nothing_voids_the_comparison(self):
        """A run with its archive on that archived nothing is flagged as void, one that archived
        fewer items than messages sent is flagged, one with its archive off that archived
        something is flagged, and a run that archived at least once per message is not."""
        self.assertIn("void", archive_warnings(run_entry("prosody-on", True, 0))[0])
        self.assertIn("not archived", archive_warnings(run_entry("prosody-on", True, 50))[0])
        self.assertIn("archive off", archive_warnings(run_entry("bridge-off", False, 3))[0])
        self.assertEqual(archive_warnings(run_entry("ejabberd-on", True, 200)), [])
        self.assertEqual(archive_warnings(run_entry("bridge-off", False, 0)), [])

    def test_summary_takes_medians_and_each_round_has_its_ratio(self):
        """A configuration's messages/s is the median of its runs, failed runs left out of the
        median; archived items are summed against messages sent; each round where both bridge
        runs went through gives its on/off ratio."""
        runs = [run_entry("bridge-off", False, 0, rate=1000.0, round_=1),
                run_entry("bridge-on", True, 200, rate=800.0, round_=1),
                run_entry("bridge-off", False, 0, rate=1200.0, round_=2),
                run_entry("bridge-on", True, 200, rate=600.0, round_=2),
                run_entry("bridge-off", False, 0, rate=900.0, round_=3),
                dict(run_entry("bridge-on", True, 0, rate=10.0, round_=3), error="died")]
        figures = summary(runs)
        self.assertEqual(figures["bridge-off"]["messages_per_s"], 1000.0)
        self.assertEqual(figures["bridge-on"]["messages_per_s"], 700.0)
        self.assertEqual(figures["bridge-on"]["runs"], 2)
        self.assertEqual(figures["bridge-on"]["runs_messages_per_s"], [800.0, 600.0, 10.0])
        self.assertEqual(figures["bridge-on"]["archived_per_message_sent"], round(400 / 300, 3))
        self.assertEqual(round_ratios(runs), [0.8, 0.5])

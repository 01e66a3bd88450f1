"""The PEP and upload bench (``python -m bench.pep_bench``): its entity capabilities and the figures it reports.

Pure functions of bench/pep_bench.py and its Prosody config writer; no server is started.
"""

import argparse
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bench.pep_bench import (IDENTITY, NODE, NOTIFY_FEATURES, SILENT_FEATURES, PEPProsody, caps_ver, filter_cost,
                             publish_figures, transfer_figures)


class CapsTests(SynchronousTestCase):
    def test_verification_string_of_xep_0115_simple_example(self):
        """caps_ver gives the verification string XEP-0115 (section 5.2) computes for its Exodus example, whatever
        the order the features come in."""
        features = ["http://jabber.org/protocol/muc", "http://jabber.org/protocol/disco#info",
                    "http://jabber.org/protocol/caps", "http://jabber.org/protocol/disco#items"]
        self.assertEqual(caps_ver(("client", "pc", "", "Exodus 0.9.1"), features), "QgayPKawpkPSDYmwT/WM94uAlu0=")

    def test_only_the_notify_capabilities_ask_for_the_node(self):
        """The contacts' two feature sets differ only by <node>+notify, so their hashes differ."""
        self.assertIn(NODE + "+notify", NOTIFY_FEATURES)
        self.assertNotIn(NODE + "+notify", SILENT_FEATURES)
        self.assertEqual(set(NOTIFY_FEATURES) - set(SILENT_FEATURES), {NODE + "+notify"})
        self.assertNotEqual(caps_ver(IDENTITY, NOTIFY_FEATURES), caps_ver(IDENTITY, SILENT_FEATURES))


class FiguresTests(SynchronousTestCase):
    def test_publish_figures(self):
        """Rates are counts over the measured time; CPU is divided by publishes and by notifications; the
        latencies' p50 and p99 come out in milliseconds."""
        latencies = [ms * 1000000 for ms in range(1, 101)]
        figures = publish_figures(200, 20000, 100, 4.0, 2.0, 1.0, latencies)
        self.assertEqual(figures["publishes_per_s"], 50.0)
        self.assertEqual(figures["notifications_per_s"], 5000.0)
        self.assertEqual(figures["notifications_expected"], 20000)
        self.assertEqual(figures["server_cpu_us_per_publish"], 10000.0)
        self.assertEqual(figures["server_cpu_us_per_notification"], 100.0)
        self.assertEqual(figures["server_cpu_fraction"], 0.5)
        self.assertEqual(figures["loader_cpu_fraction"], 0.25)
        self.assertEqual(figures["latency_p50_ms"], 50.5)
        self.assertEqual(figures["latency_p99_ms"], 99.01)

    def test_filtered_run_has_no_cost_per_notification(self):
        """A run whose notifications were all filtered out expects none and has no CPU per notification."""
        figures = publish_figures(100, 0, 0, 1.0, 0.5, 0.1, [])
        self.assertEqual(figures["notifications_expected"], 0)
        self.assertIsNone(figures["server_cpu_us_per_notification"])
        self.assertIsNone(figures["latency_p50_ms"])
        self.assertEqual(figures["server_cpu_us_per_publish"], 5000.0)

    def test_filter_cost_is_the_difference_per_publish_and_per_notification(self):
        """The caps-filter figures: CPU per publish with +notify contacts minus without, and that spread over
        the notifications of one publish."""
        notified = publish_figures(100, 10000, 100, 2.0, 3.0, 0.5, [1])
        filtered = publish_figures(100, 0, 0, 1.0, 1.0, 0.1, [])
        cost = filter_cost(notified, filtered)
        self.assertEqual(cost["server_cpu_us_per_publish_notify"], 30000.0)
        self.assertEqual(cost["server_cpu_us_per_publish_filtered"], 10000.0)
        self.assertEqual(cost["difference_us_per_publish"], 20000.0)
        self.assertEqual(cost["difference_us_per_notification"], 200.0)
        self.assertEqual(cost["filtered_share"], 0.333)

    def test_transfer_figures(self):
        """MB/s is 10^6 bytes per second; the RSS growth is the peak minus the RSS before."""
        figures = transfer_figures(10 * 1024 * 1024, 0.5, 60000, 61024)
        self.assertEqual(figures["mb_per_s"], 21.0)
        self.assertEqual(figures["rss_growth_kib"], 1024)


class ProsodyConfigTests(SynchronousTestCase):
    def test_prosody_loads_mod_pep(self):
        """The bench's Prosody lists "pep" among its enabled modules (the shared config leaves it out)."""
        folder = tempfile.mkdtemp(prefix="bridge-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        server = PEPProsody(argparse.Namespace(domain="localhost"), folder, 15222, "ec")
        [enabled] = [line for line in server.config_lines("/c.crt", "/c.key") if line.startswith("modules_enabled")]
        self.assertIn('"pep"', enabled)
        self.assertIn('"roster"', enabled)

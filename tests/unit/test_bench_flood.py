"""The flood bench's rounds (``python -m bench.flood --rounds N``): each round's ratio, and the median round."""

from twisted.trial.unittest import SynchronousTestCase

from bench.flood import median_round, round_ratio


def done(quiet, hostile):
    return {"quiet": {"load": {"messages_per_s": quiet}}, "hostile": {"load": {"messages_per_s": hostile}}}


class RoundTests(SynchronousTestCase):
    def test_ratio_of_a_round(self):
        """Hostile over quiet; None when a run failed or the quiet rate is unknown."""
        self.assertEqual(round_ratio(done(40000, 30000)), 0.75)
        self.assertIsNone(round_ratio({"quiet": {"error": "x"}, "hostile": {"load": {"messages_per_s": 1}}}))
        self.assertIsNone(round_ratio(done(0, 5)))

    def test_median_round_is_reported(self):
        """The round with the median ratio is the one reported in full (the lower median of an even count);
        rounds without a ratio are left out."""
        rounds = [done(100, 90), done(100, 50), {"quiet": {"error": "x"}}, done(100, 80)]
        self.assertIs(median_round(rounds), rounds[3])
        self.assertIs(median_round(rounds[:2]), rounds[1])
        self.assertEqual(median_round([]), {})

"""The anytime curve of a searcher: best finished value against compute spent."""

from __future__ import annotations

import numpy as np

from analysis.anytime import anytime_info, best_so_far


def test_best_so_far_counts_finished_trials_at_their_cost():
    # (steps, value, finished): a stopped trial's better value never counts
    run = [(40, 0.5, True), (10, 0.1, False), (40, 0.3, True), (40, 0.4, True)]
    x = np.array([0.0, 0.3, 0.39, 0.4, 0.5, 0.9, 1.0])
    got = best_so_far(run, x, total=100)
    expected = [np.nan, np.nan, np.nan, 0.5, 0.5, 0.3, 0.3]
    np.testing.assert_array_equal(got, expected)


def test_median_and_spread_over_seeds():
    runs = {"s": [[(50, 1.0, True)], [(50, 2.0, True)], [(100, 0.5, True)]]}
    info = anytime_info(runs, total=100, reference=0.5, points=3)  # x = 0, 0.5, 1
    np.testing.assert_array_equal(info.x, [0.0, 0.5, 1.0])
    # at 50%: two seeds found 1.0 and 2.0, one found nothing yet (counts as worst)
    assert np.isnan(info.median["s"][0])
    assert info.median["s"][1] == 2.0 and info.low["s"][1] == 1.0 and np.isnan(info.high["s"][1])
    assert info.median["s"][2] == 1.0 and info.low["s"][2] == 0.5 and info.high["s"][2] == 2.0

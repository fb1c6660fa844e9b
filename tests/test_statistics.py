"""The intervals and verdicts every claim rests on."""
import math

import numpy as np
import pytest

from stitchlib.statistics import (MIN_PAIRS_TO_DECIDE, Interval, bootstrap_weights, interval, t_quantile,
                                  validate_confidence, verdict)


@pytest.mark.parametrize("p,df,expected", [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 3, 3.1824),
                                           (0.975, 30, 2.0423), (0.95, 5, 2.0150), (0.025, 4, -2.7764),
                                           (0.975, 10**9, 1.9600)])
def test_t_quantiles_match_the_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_two_pairs_without_images_give_the_t_interval():
    iv = interval([1.0, 3.0])
    # mean 2, s = sqrt(2), se = s / sqrt(2) = 1, t(0.975, 1) = 12.706
    assert iv.mean == 2.0 and iv.high - iv.mean == pytest.approx(12.7062, abs=1e-4) and iv.pairs == 2


def test_test_set_noise_widens_the_interval_and_is_shared_by_the_pairs():
    rng = np.random.default_rng(0)
    n = 2000
    top = rng.random(n) < 0.3
    stitched = [top ^ (rng.random(n) < 0.1), top ^ (rng.random(n) < 0.1)]
    d = [s.astype(np.float32) - top.astype(np.float32) for s in stitched]
    theta = [100 * x.mean() for x in d]
    without, with_images = interval(theta), interval(theta, d)
    assert with_images.mean == pytest.approx(without.mean)
    assert with_images.high - with_images.low > without.high - without.low
    # The test-set term alone is about the binomial standard error of a paired difference.
    single = interval(theta[:1], d[:1])
    se = (single.high - single.mean) / 1.96
    p10 = ((stitched[0] == 1) & (top == 0)).mean()
    p01 = ((stitched[0] == 0) & (top == 1)).mean()
    assert se == pytest.approx(100 * math.sqrt((p10 + p01 - (p10 - p01) ** 2) / n), rel=0.1)


def test_the_bootstrap_is_reproducible():
    # Drawn afresh (past the per-process cache), the same seed gives the same draws.
    assert np.array_equal(bootstrap_weights.__wrapped__(50), bootstrap_weights(50))
    assert not bootstrap_weights(50).flags.writeable  # shared by every statistic: nobody may change it
    assert bootstrap_weights(50).sum(axis=1).tolist() == [50.0] * 2000


@pytest.mark.parametrize("lo,hi,comparator,threshold,expected", [
    (1.0, 2.0, "<=", 3.0, "holds"), (3.5, 4.0, "<=", 3.0, "fails"), (2.0, 4.0, "<=", 3.0, "inconclusive"),
    (4.0, 9.0, ">", 3.0, "holds"), (-1.0, 2.0, ">", 3.0, "fails"), (-1.0, 5.0, ">", 3.0, "inconclusive"),
    (-2.0, -0.5, "<", 0.0, "holds"), (0.0, 1.0, "<", 0.0, "fails"), (0.5, 1.0, ">=", 0.0, "holds"),
    (-2.0, 2.0, "within", 3.0, "holds"), (3.5, 5.0, "within", 3.0, "fails"), (-4.0, 0.0, "within", 3.0, "inconclusive"),
    (math.nan, math.nan, "<=", 3.0, "inconclusive"),
])
def test_verdicts_are_decided_on_the_whole_interval(lo, hi, comparator, threshold, expected):
    assert verdict(Interval((lo + hi) / 2, lo, hi, 3), comparator, threshold) == expected


def test_two_pairs_decide_nothing_three_pairs_and_single_networks_do():
    assert MIN_PAIRS_TO_DECIDE == 3
    clear = dict(mean=5.0, low=4.0, high=6.0)
    assert verdict(Interval(**clear, pairs=2), ">", 3.0) == "inconclusive"
    assert verdict(Interval(**clear, pairs=2), "<=", 3.0) == "inconclusive"
    assert verdict(Interval(**clear, pairs=3), ">", 3.0) == "holds"
    assert verdict(Interval(**clear, pairs=3), "<=", 3.0) == "fails"
    # One network of each kind (pretrained models): the test-set interval alone decides, where the
    # claim says its networks are fixed; a trained-seed statistic left with one pair does not.
    assert verdict(Interval(**clear, pairs=1), ">", 3.0, fixed_networks=True) == "holds"
    assert verdict(Interval(**clear, pairs=1), ">", 3.0) == "inconclusive"
    assert verdict(Interval(**clear, pairs=2), ">", 3.0, fixed_networks=True) == "inconclusive"


def _frame(penalties):
    """Rows of one comparison: penalties[pair][cut], no per-image terms."""
    import pandas as pd
    return pd.DataFrame([dict(pair_index=i, cut_index=c, cut=f"c{c}", penalty=v)
                         for i, row in enumerate(penalties) for c, v in enumerate(row)])


def test_every_cut_claims_with_three_pairs_hold_fail_or_stay_open_cut_by_cut():
    from stitchlib.claims import _Judge
    j = _Judge(0.95)
    # "penalty <= 3 at every cut": every cut's interval below 3 -> holds, reported at the worst cut.
    j.every_cut("(a)", "low", _frame([[0.0, 1.0], [0.2, 1.2], [0.1, 0.8]]), "<=", "close")
    # One cut clearly above 3 -> fails, whatever the other cuts say.
    j.every_cut("(a)", "one bad cut", _frame([[0.0, 9.0], [0.2, 9.2], [0.1, 8.8]]), "<=", "close")
    # A straddling cut and no failing one -> inconclusive.
    j.every_cut("(a)", "straddles", _frame([[0.0, 1.0], [0.2, 5.0], [0.1, 3.0]]), "<=", "close")
    # The same clear numbers from two pairs decide nothing.
    j.every_cut("(a)", "two pairs", _frame([[0.0, 9.0], [0.2, 9.2]]), "<=", "close")
    got = {r["model"]: (r["verdict"], r["worst_cut"], r["pairs"]) for r in j.rows}
    assert got == {"low": ("holds", "c1", 3), "one bad cut": ("fails", "c1", 3),
                   "straddles": ("inconclusive", "c1", 3), "two pairs": ("inconclusive", "c1", 2)}
    assert j.rows[0]["statistic"] == pytest.approx(1.0) and j.rows[0]["high"] < 3


def test_the_rule_rests_on_how_often_two_runs_agree():
    """bench/verdict_agreement.py's finding, which fixes MIN_PAIRS_TO_DECIDE: for an effect of 5
    between-pair standard deviations, two independent runs of 2 pairs disagree often (a decided
    verdict comes out about 42% of the time), runs of 3 pairs rarely (about 98%)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "verdict_agreement.py"
    spec = importlib.util.spec_from_file_location("verdict_agreement", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(1)
    agree = {k: float((bench.verdicts(rng, k, 5.0) == bench.verdicts(rng, k, 5.0)).mean()) for k in (2, 3)}
    assert agree[2] < 0.6 and agree[3] > 0.9, agree


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least two seed pairs"):
        interval([1.0])
    with pytest.raises(ValueError, match="unknown comparator"):
        verdict(Interval(0, 0, 0, 2), "=~", 1)
    for bad in (0, 1, 1.5, -0.1, True, "0.95"):
        with pytest.raises(ValueError, match=r"confidence must be a number in \(0, 1\)"):
            validate_confidence(bad)


def test_a_claim_without_a_statistic_keeps_its_name_and_says_why_in_the_note():
    from stitchlib.claims import _Judge
    j = _Judge(0.95)
    j.claim("(d)", "freeze training", {}, "<=", "freeze", note="no stage qualified")
    row = j.rows[0]
    assert (row["model"], row["verdict"], row["worst_cut"], row["pairs"]) == (
        "freeze training", "inconclusive", "no stage qualified", 0)
    assert math.isnan(row["statistic"])

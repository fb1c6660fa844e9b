"""Means and intervals over seed pairs and test images, and verdicts decided on the interval.

Every comparison runs over k independent seed pairs (disjoint seeds), and every error is
measured on the same n test images. A statistic is computed per pair (theta_i); what is
reported is its mean over the pairs with an interval that combines the two sources of noise:

    se^2 = s^2 / k + v_test,   interval = mean +- t_{k-1, (1 + confidence) / 2} * se

- s^2 / k: the spread between seed pairs (sample variance, ddof 1). With k pairs its own
  uncertainty is large, which Student's t with k - 1 degrees of freedom accounts for. A
  percentile bootstrap over k = 2 or 3 pairs would not: it can only return the range of the
  pairs, which covers the mean of two draws half of the time, not 95%.
- v_test: test-set sampling. All pairs are evaluated on the same images, so their test noise
  is shared and a between-pair variance does not see it. It is the variance of the pairs' mean
  statistic under a paired bootstrap over test images: every model of every pair sees the
  same resampled images (errors from per-image correctness, so the correlation between a
  stitched model and its top is kept).
Adding both counts the part of the test noise that does differ between pairs twice, and the
t multiplier is applied to the whole: the interval is conservative, on purpose.

A verdict is decided on the interval: "holds" when all of it lies on the claim's side of the
threshold, "fails" when all of it lies on the other side, "inconclusive" otherwise, and always
"inconclusive" when the spread between pairs rests on fewer than MIN_PAIRS_TO_DECIDE pairs.

Why two pairs decide nothing. Training on another CPU lands a model elsewhere much as another
seed does, so two machines are two independent draws of the same claim. With k = 2 the spread
between pairs has one degree of freedom and the interval's width is itself a coin toss (it is
proportional to |theta_1 - theta_2|): whether the interval clears the threshold depends more on
how closely the two pairs happen to agree than on the effect. `bench/verdict_agreement.py`
simulates it: at k = 2, two runs give different verdicts more than one time in ten for every true
effect tested from 0.25 to 12 between-pair standard deviations (a decided verdict at 5 sd comes
out 42% of the time), while at k = 3 that zone ends near 4 sd (decided 98% of the time at 5 sd)
and at k = 4 near 3 sd. A verdict from two pairs would be a coin toss between machines, so it is
"inconclusive" by construction; the mean and interval are still reported.

Pretrained networks (the ImageNet panel: one network of each kind, no seed pairs) are decided on
their test-set interval alone when the claim says so (`fixed_networks`): that interval leaves the
stitcher's own training noise out, which is small next to a network's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "interval", "t_quantile", "verdict", "bootstrap_weights", "validate_confidence",
           "MIN_PAIRS_TO_DECIDE"]

BOOTSTRAP_DRAWS = 2000
COMPARATORS = ("<=", ">=", "<", ">", "within")
# The fewest seed pairs whose between-pair spread can decide a verdict reproducibly (module docstring).
MIN_PAIRS_TO_DECIDE = 3


def validate_confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), e.g. 0.95 for a 95% interval; got {confidence!r}")
    return float(confidence)


def _t_cdf(x: float, df: int) -> float:
    """Student's t CDF through the regularised incomplete beta function (continued fraction)."""
    if x == 0:
        return 0.5
    z = df / (df + x * x)
    tail = 0.5 * _betainc(df / 2, 0.5, z)
    return 1 - tail if x > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    # Lentz's continued fraction (Numerical Recipes, betacf).
    tiny, c, d = 1e-300, 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return front * h / a


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (bisection on the CDF)."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1, got p={p!r}, df={df!r}")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@functools.lru_cache(maxsize=2)
def bootstrap_weights(n: int, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> np.ndarray:
    """(draws, n) resampling counts of n test images, the same for every statistic of a run.
    Drawn once per size and process (about 0.1 s for 1,000 images), read-only."""
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float32)
    weights.setflags(write=False)
    return weights


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    pairs: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"



def interval(per_pair, per_image=None, *, confidence: float = 0.95, weights: np.ndarray | None = None) -> Interval:
    """Mean of `per_pair` (one value per seed pair) with the interval of the module docstring.

    With a single pair, only `per_image` can give an interval: the test-set term alone.
    `per_image`, when given, holds per pair an array d_i over the test images with
    theta_i = 100 * mean(d_i) (for a penalty, d_i = stitched model wrong - top wrong, in
    {-1, 0, 1}); the test-set term comes from resampling those images with `weights`."""
    values = np.asarray(per_pair, dtype=float)
    k = len(values)
    if k < 2 and per_image is None:
        raise ValueError(f"an interval needs at least two seed pairs, got {k}")
    if not np.all(np.isfinite(values)):
        return Interval(math.nan, math.nan, math.nan, k)
    mean = float(values.mean())
    # One network of each kind (pretrained ImageNet models): the test-set term alone, normal quantile.
    var = float(values.var(ddof=1)) / k if k > 1 else 0.0
    if per_image is not None:
        d = np.stack([np.asarray(x, dtype=np.float32) for x in per_image])  # (k, n)
        w = bootstrap_weights(d.shape[1]) if weights is None else weights
        draws = 100.0 * (w @ d.T) / d.shape[1]  # (draws, k): each pair's statistic on resampled images
        var += float(draws.mean(axis=1).var(ddof=1))
    half = t_quantile((1 + confidence) / 2, k - 1 if k > 1 else 10**9) * math.sqrt(var)
    return Interval(mean, mean - half, mean + half, k)


def verdict(iv: Interval, comparator: str, threshold: float, *, fixed_networks: bool = False) -> str:
    """"holds", "fails" or "inconclusive": the claim `statistic <comparator> threshold` decided on
    the whole interval. "within" means |statistic| <= threshold. An interval from fewer than
    MIN_PAIRS_TO_DECIDE seed pairs gives "inconclusive" whatever it says, unless it is about
    `fixed_networks` (pretrained, one of each: pairs == 1), decided on its test-set interval."""
    if comparator not in COMPARATORS:
        raise ValueError(f"unknown comparator {comparator!r}; valid: {COMPARATORS}")
    lo, hi = iv.low, iv.high
    decidable = iv.pairs >= MIN_PAIRS_TO_DECIDE or (fixed_networks and iv.pairs == 1)
    if math.isnan(lo) or math.isnan(hi) or not decidable:
        return "inconclusive"
    if comparator in ("<=", "<"):
        ok, bad = (hi <= threshold, lo > threshold) if comparator == "<=" else (hi < threshold, lo >= threshold)
    elif comparator in (">=", ">"):
        ok, bad = (lo >= threshold, hi < threshold) if comparator == ">=" else (lo > threshold, hi <= threshold)
    else:
        ok, bad = (lo >= -threshold and hi <= threshold), (lo > threshold or hi < -threshold)
    return "holds" if ok else "fails" if bad else "inconclusive"

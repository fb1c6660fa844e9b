"""How often two independent runs of the same claim (two machines: training on another CPU lands
a model elsewhere much as another seed does) reach the same verdict, by the number of seed
pairs k, under stitchlib's rule: mean over the pairs +- t(k-1) * s / sqrt(k), "holds" when the
whole interval clears the threshold, "fails" when all of it is on the other side.

A model with no data in it: each pair's statistic is N(threshold + delta, 1), delta the true
effect in units of the between-pair standard deviation; the test-set term is left out (it only
adds a fixed width). For each k and delta, `RUNS` simulated pairs of runs; printed: the chance
that both runs give the same verdict, the smallest over delta, and the range of delta where the
runs disagree more than one time in ten.

Run from the repository root: `python bench/verdict_agreement.py` (about 15 seconds).
"""
import numpy as np

from stitchlib.statistics import t_quantile

RUNS = 50000
DELTAS = np.round(np.arange(0.0, 12.01, 0.25), 2)
PAIRS = (2, 3, 4, 6)


def verdicts(rng, k, delta, confidence=0.95):
    """+1 holds, -1 fails, 0 inconclusive for the claim `statistic > 0`, RUNS times."""
    x = rng.normal(delta, 1.0, size=(RUNS, k))
    half = t_quantile((1 + confidence) / 2, k - 1) * x.std(axis=1, ddof=1) / np.sqrt(k)
    mean = x.mean(axis=1)
    return np.where(mean - half > 0, 1, np.where(mean + half < 0, -1, 0))


def main():
    rng = np.random.default_rng(0)
    print(f"# {RUNS} simulated pairs of runs per point; delta = true effect / between-pair sd")
    print("| seed pairs k | same verdict, worst delta | delta range with < 90% agreement | "
          "chance of a decided verdict at delta = 3, 5, 10 |")
    print("|---|---|---|---|")
    for k in PAIRS:
        same, decided = [], {}
        for delta in DELTAS:
            a, b = verdicts(rng, k, delta), verdicts(rng, k, delta)
            same.append(float((a == b).mean()))
            decided[float(delta)] = float((a != 0).mean())
        same = np.array(same)
        low = DELTAS[same < 0.9]
        zone = (f"{low.min():g} to {low.max():g}{' (the largest tested)' if low.max() == DELTAS[-1] else ''}"
                if len(low) else "none")
        print(f"| {k} | {same.min():.2f} (delta {DELTAS[same.argmin()]:g}) | {zone} | "
              f"{decided[3.0]:.2f}, {decided[5.0]:.2f}, {decided[10.0]:.2f} |")


if __name__ == "__main__":
    main()

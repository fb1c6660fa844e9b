"""The paper's claims, checked on an experiment's results over its seed pairs, and the numbers
behind them.

Each claim's statistic and threshold come from the paper's words (`stitchlib.paper`), fixed
before any result was seen, and are the same at every profile. Every statistic is computed
per seed pair and reported as a mean with an interval (`stitchlib.statistics`); the verdict,
"holds", "fails" or "inconclusive", is decided on the whole interval. A claim about every cut
holds when every cut's interval holds, fails when some cut's interval fails, and is
inconclusive otherwise. With fewer than `statistics.MIN_PAIRS_TO_DECIDE` seed pairs every
verdict about trained seed pairs is inconclusive: two pairs cannot decide a claim the same way
on two machines (pretrained ImageNet networks, one of each, are decided on their test-set interval).

Nothing here is stored: the artifact store's code version leaves this module out, so changing
a claim re-checks stored results instead of recomputing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import numpy as np
import pandas as pd

from .tables import write_csv
from .paper import paper_note, paper_value
from .statistics import bootstrap_weights, interval, verdict

if TYPE_CHECKING:
    from .experiments import Results

__all__ = ["check_claims", "summary_table", "summarize", "table1"]

RANDOM_CONTROL_ARCHS = ("resnet18",)  # where the paper makes claims (b) and (c): its ResNet-18
CLAIM_COLUMNS = ["claim", "model", "statistic", "low", "high", "threshold", "paper", "verdict", "pairs", "worst_cut"]
# The columns of a results table that hold numbers per row; the rest say what the row is.
_VALUES = {"error_init", "error", "top_error", "bottom_error", "penalty_init", "penalty", "cka", "pair_index",
           "seed_top", "seed_bottom"}
_WRONG = {"penalty": "_wrong", "penalty_init": "_wrong_init"}


# ------------------------------------------------------------------ per-pair statistics
# A per-pair statistic is {pair_index: (theta, d)}: theta the pair's value, d an array over the
# test images with theta = 100 * mean(d), or None where the statistic has no such form (CKA).

def _n_cuts(frame: pd.DataFrame) -> int:
    return int(frame["cut_index"].max()) + 1


def first_half(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["cut_index"] < _n_cuts(frame) // 2]


def later_half(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["cut_index"] >= _n_cuts(frame) // 2]


def _image_terms(rows: pd.DataFrame, column: str):
    """Per row, the images' contribution to the penalty: stitched wrong - top wrong (None when the
    rows carry no per-image correctness, e.g. a table read back from a CSV)."""
    if _WRONG[column] not in rows or "_wrong_top" not in rows:
        return None
    wrong = rows[_WRONG[column]]
    top = rows["_wrong_top"]
    if wrong.isna().any() or top.isna().any() or any(w is None for w in wrong) or any(t is None for t in top):
        return None
    return [np.asarray(w, dtype=np.float32) - np.asarray(t, dtype=np.float32) for w, t in zip(wrong, top)]


def mean_over_cuts(frame: pd.DataFrame, column: str = "penalty") -> dict:
    """Per seed pair, the mean of `column` over the rows (cuts) given."""
    out = {}
    for i, rows in frame.groupby("pair_index"):
        theta = float(rows[column].mean())
        terms = _image_terms(rows, column) if column in _WRONG else None
        out[i] = (theta, None if terms is None else np.mean(terms, axis=0))
    return out


def difference(a: dict, b: dict) -> dict:
    """a - b, pair by pair (only pairs present in both)."""
    return {i: (a[i][0] - b[i][0], None if a[i][1] is None or b[i][1] is None else a[i][1] - b[i][1])
            for i in sorted(set(a) & set(b))}


def _interval(per_pair: dict, confidence: float, weights):
    values = [per_pair[i][0] for i in sorted(per_pair)]
    images = [per_pair[i][1] for i in sorted(per_pair)]
    images = None if any(d is None for d in images) else images
    w = None
    if images is not None:
        w = weights(len(images[0]))
    return interval(values, images, confidence=confidence, weights=w)


class _Judge:
    """Collects claim rows for one experiment."""

    def __init__(self, confidence: float):
        self.confidence = confidence
        self.rows: list[dict] = []
        # One set of bootstrap draws per test-set size, shared by every statistic of the run.
        self.weights = bootstrap_weights

    def claim(self, text: str, model: str, per_pair: dict, comparator: str, key: str, note: str = "",
              fixed_networks: bool = False) -> None:
        """A claim about one statistic. `model` names what it is about and must not depend on the
        numbers (nbval compares it on every machine); `note` (in `worst_cut`) may. `fixed_networks`:
        about one network of each kind, decided on its test-set interval (`statistics.verdict`)."""
        threshold = paper_value(key)
        if not per_pair:
            iv, pairs = None, 0
        else:
            iv, pairs = _interval(per_pair, self.confidence, self.weights), len(per_pair)
        self.rows.append(dict(claim=text, model=model, statistic=iv.mean if iv else math.nan,
                              low=iv.low if iv else math.nan, high=iv.high if iv else math.nan,
                              threshold=f"{comparator} {threshold:g}", paper=paper_note(key),
                              verdict=verdict(iv, comparator, threshold, fixed_networks=fixed_networks) if iv
                              else "inconclusive", pairs=pairs,
                              worst_cut=note))

    def every_cut(self, text: str, model: str, frame: pd.DataFrame, comparator: str, key: str,
                  column: str = "penalty", fixed_networks: bool = False) -> None:
        """A claim about every cut: judged cut by cut (holds if every cut holds, fails if any cut
        fails); the row shows the deciding cut (`worst_cut`) with its mean and interval."""
        threshold = paper_value(key)
        cuts = []
        for (index, cut), rows in frame.groupby(["cut_index", "cut"]):
            iv = _interval(mean_over_cuts(rows, column), self.confidence, self.weights)
            cuts.append((cut, iv, verdict(iv, comparator, threshold, fixed_networks=fixed_networks)))
        verdicts = {v for _, _, v in cuts}
        overall = "fails" if "fails" in verdicts else "holds" if verdicts == {"holds"} else "inconclusive"
        # The row shows the cut that decides the verdict: among the cuts with the overall verdict,
        # the one with the worst mean for the claim.
        sign = 1 if comparator in ("<=", "<") else -1
        cut, iv, _ = max((c for c in cuts if c[2] == overall), key=lambda c: sign * c[1].mean)
        self.rows.append(dict(claim=text, model=model, statistic=iv.mean, low=iv.low, high=iv.high,
                              threshold=f"{comparator} {threshold:g}", paper=paper_note(key), verdict=overall,
                              pairs=iv.pairs, worst_cut=cut))


# ------------------------------------------------------------------ the claims of each notebook

def connectivity_claims(j: _Judge, results: Results) -> None:
    t = results.table
    for (family, width), f in t.groupby(["family", "width"], sort=False):
        model = f"{family} w={width:g}"
        trained, random = f[f["bottom_role"] == "trained"], f[f["bottom_role"] == "random"]
        j.every_cut("(a) two seeds are stitching-connected: penalty at every cut (points)", model, trained, "<=",
                    "close")
        if random.empty or not (random["arch"].isin(RANDOM_CONTROL_ARCHS) & (random["panel_id"] == "seeds")).all():
            continue
        j.claim("(b) a random bottom is not stitching-connected: its mean penalty over the later half of the cuts "
                "(points)", model, mean_over_cuts(later_half(random)), ">", "random_late")
        j.claim("(c) a random bottom is cheap at the first cut: its penalty there (points)", model,
                mean_over_cuts(random[random["cut_index"] == 0]), "<=", "random_early")


def _beyond_weaker(f: pd.DataFrame) -> dict:
    """Per pair, the mean over the cuts of what stitching loses beyond the weaker of its two
    networks: error - max(top error, bottom error), per image wrong - the weaker one's wrong."""
    out = {}
    for i, rows in f.groupby("pair_index"):
        weaker = "_wrong_top" if rows["top_error"].iloc[0] >= rows["bottom_error"].iloc[0] else "_wrong_bottom"
        theta = float((rows["error"] - rows[["top_error", "bottom_error"]].max(axis=1)).mean())
        terms = [np.asarray(w, np.float32) - np.asarray(b, np.float32) for w, b in zip(rows["_wrong"], rows[weaker])]
        out[i] = (theta, np.mean(terms, axis=0))
    return out


def ssl_claims(j: _Judge, results: Results) -> None:
    t = results.table
    cifar = t[t["panel_id"] == "cifar10"]

    def between(top, bottom):
        return cifar[(cifar["top_role"] == top) & (cifar["bottom_role"] == bottom)]

    directions = {"SSS into E2E": between("e2e", "sss"), "E2E into SSS": between("sss", "e2e")}
    for direction, f in directions.items():
        j.every_cut("(a) SSS and E2E are stitching-connected: penalty at every cut (points; the paper's statistic)",
                    direction, f, "<=", "ssl_cifar")
    seeds = _beyond_weaker(between("e2e", "e2e"))
    for direction, f in directions.items():
        stat = difference(_beyond_weaker(f), seeds)
        j.claim("(a') adapted, for an SSS model weaker than E2E: mean error over the cuts beyond the weaker network, "
                "minus the same for two supervised seeds (points; not the paper's statistic)", direction, stat, "<=",
                "ssl_cifar")
    cka = difference(mean_over_cuts(between("e2e", "e2e"), "cka"), mean_over_cuts(between("e2e", "sss"), "cka"))
    j.claim("(b) yet CKA calls them less similar: mean CKA over the cuts of the seed pair minus SSS-E2E's", "CKA", cka,
            ">", "cka_ssl")
    imagenet = t[t["panel_id"] == "imagenet"]
    for pair, f in imagenet[imagenet["bottom_role"] != "random"].groupby("pair", sort=False):
        j.every_cut("(c) ImageNet: a self-supervised ResNet-50 stitches into the supervised one: penalty at every "
                    "cut (points; one network each, test-set interval only)", pair, f, "<=", "ssl_imagenet",
                    fixed_networks=True)


    # Fig. 2B's random control: the paper's claim (b) of 01, for the untrained ResNet-50.
    random = imagenet[imagenet["bottom_role"] == "random"]
    if not random.empty:
        j.claim("(d) ImageNet: a random ResNet-50 is not stitching-connected: its mean penalty over the later half of "
                "the cuts (points; one network, test-set interval only)", random["pair"].iloc[0],
                mean_over_cuts(later_half(random)), ">", "random_late", fixed_networks=True)


def label_noise_claims(j: _Judge, results: Results) -> None:
    """Each weak bottom against the clean reference bottom (another seed on clean labels): "as good
    as the clean model's" is measured as the excess of its mean penalty over the first half."""
    t = results.table
    clean = mean_over_cuts(first_half(t[t["bottom_role"] == "clean"]))
    for pair, f in t[t["bottom_role"] != "clean"].groupby("pair", sort=False):
        stat = difference(mean_over_cuts(first_half(f)), clean)
        if f["noise"].iloc[0] == 1.0:
            j.claim("(b) except with 100% label noise: its mean penalty over the first half of the cuts minus the clean "
                    "seed's (points)", pair, stat, ">", "label_early")
        else:
            j.claim("(a) the first half of the layers is as good as the clean model's: its mean penalty over the first "
                    "half of the cuts minus the clean seed's (points)", pair, stat, "<=", "label_early")


def more_is_better_claims(j: _Judge, results: Results) -> None:
    t, p = results.table, results.setup.params
    stitched = t[t["comparison"] == "stitch"]

    def pair(panel, value):
        return stitched[(stitched["panel_id"] == panel) & (stitched["value"] == value)]

    def helps(what, frame, model):
        j.claim(f"(a) {what} plugs in and helps: mean penalty over the later half of the cuts (points)", model,
                mean_over_cuts(later_half(frame)), "<", "better")

    helps("a bottom trained on more samples", pair("samples", p["samples"]),
          f"{p['samples']:,} samples into {p['top_samples']:,}")
    one, wide, narrow = p["width"], max(p["widths"]), min(p["widths"])
    into_one, from_one = "width_bottoms", "width_tops"
    if wide > one:
        helps("a wider bottom", pair(into_one, wide), f"width {wide:g} into {one:g}")
    if narrow < one:
        helps("a wider bottom", pair(from_one, narrow), f"width {one:g} into {narrow:g}")
    latest, first = max(p["checkpoint_epochs"]), min(p["checkpoint_epochs"])
    if latest > p["top_epoch"]:
        helps("a bottom trained longer", pair("training_time", float(latest)),
              f"epoch {latest:g} into epoch {p['top_epoch']:g}")
    for frame, model, differs in ((pair(into_one, narrow), f"width {narrow:g} into {one:g}", narrow != one),
                                  (pair(from_one, wide), f"width {one:g} into {wide:g}", wide != one)):
        if not frame.empty and differs:
            j.claim("(b) a narrower bottom does not help: mean penalty over the later half of the cuts (points)", model,
                    mean_over_cuts(later_half(frame)), ">=", "better")
    early = pair("training_time", float(first))
    j.claim("(c) early layers converge first: mean penalty over the later half minus over the first half (points)",
            f"epoch {first:g} into epoch {p['top_epoch']:g}",
            difference(mean_over_cuts(later_half(early)), mean_over_cuts(first_half(early))), ">", "training_time")
    c = results.curves
    final = c.sort_values("epoch").groupby(["freeze", "pair_index"], sort=False).last().reset_index()
    # The bottom prefix alone (our first reading), then prefix and top layers (Appendix B.4's run).
    for kind, model in (("prefix", "freeze training: bottom prefix"),
                        ("prefix_and_top", "freeze training: bottom prefix and top layers")):
        stat, runs = {}, final[final["freeze"] == kind]
        for _, row in runs.iterrows():
            normal = final[(final["freeze"] == "normal") & (final["pair_index"] == row["pair_index"])].iloc[0]
            stat[row["pair_index"]] = (row["test_error"] - normal["test_error"],
                                       np.asarray(row["_wrong"], np.float32) - np.asarray(normal["_wrong"],
                                                                                          np.float32))
        # With no stage near zero the prediction could not be tested: no statistic, "inconclusive".
        # Which stages qualify depends on the numbers, so it goes to the note, not to the model's name.
        note = ("no stage qualified" if not stat else
                "no bottom stage qualified: top layers only" if (runs["frozen_stages"] == 0).all() else "")
        j.claim("(d) freeze training ends near normal training: final test error minus normal training's (points)",
                model, stat, "<=", "freeze", note=note)


def ablation_claims(j: _Judge, results: Results) -> None:
    t = results.table
    kernel = t[(t["panel_id"] == "kernel_size") & t["penalty"].notna()]
    maps = kernel["cut_index"].isin(kernel[kernel["value"] != 1]["cut_index"])  # the cuts every k stitches
    base = mean_over_cuts(kernel[maps & (kernel["value"] == 1)])
    for k, f in kernel[maps & (kernel["value"] != 1)].groupby("value"):
        j.claim("(a) the kernel size barely matters: mean penalty over the feature-map cuts minus k = 1's (points)",
                f"k = {k:g}", difference(mean_over_cuts(f), base), "within", "kernel")
    ft = t[t["panel_id"] == "finetune"]
    j.claim("(b) fine-tuning makes a random bottom look better than stitching does: mean penalty over the cuts of "
            "stitching minus fine-tuning (points)", "random bottom",
            difference(mean_over_cuts(ft[ft["comparison"] == "stitch"]),
                       mean_over_cuts(ft[ft["comparison"] == "finetune"])),
            ">", "finetune")
    # Section 3's two arguments: each changed representation against the same pair unchanged, over
    # the cuts where the change was made (a pooled vector has no positions to permute).
    for panel_id, letter in (("useless_coordinates", "c"), ("permuted_positions", "d")):
        f = t[t["panel_id"] == panel_id]
        if f.empty:
            continue
        changed = f[(f["bottom_role"] == "transformed") & f["penalty"].notna()]
        same = f[(f["bottom_role"] == "trained") & f["cut_index"].isin(changed["cut_index"])]
        model = changed["pair"].iloc[0] if len(changed) else panel_id
        cka = difference(mean_over_cuts(changed, "cka"), mean_over_cuts(same, "cka"))
        penalty = difference(mean_over_cuts(changed), mean_over_cuts(same))
        if panel_id == "useless_coordinates":
            j.claim(f"({letter}) useless coordinates lower CKA: mean CKA over the cuts with them minus without", model,
                    cka, "<", "useless_cka")
            j.claim(f"({letter}) but stitching throws them away: mean penalty over the cuts with them minus without "
                    "(points)", model, penalty, "<=", "useless_stitch")
        else:
            j.claim(f"({letter}) permuting positions leaves CKA unchanged: mean CKA over the feature-map cuts, "
                    "permuted minus not", model, cka, "within", "permuted_cka")
            j.claim(f"({letter}) but stitching pays for it: mean penalty over the feature-map cuts, permuted minus not "
                    "(points)", model, penalty, ">", "permuted_stitch")
    # The random control under both BatchNorm modes: is it still not stitching-connected?
    for label, f in t[t["panel_id"] == "random_bn"].groupby("pair", sort=False):
        j.claim("(e) a random bottom is not stitching-connected, whichever BatchNorm statistics it runs on: its mean "
                "penalty over the later half of the cuts (points)", label, mean_over_cuts(later_half(f)), ">",
                "random_late")


def check_claims(results: Results, *, write: bool = True) -> pd.DataFrame:
    """The paper's claims for `results`, one row each: claim, model, statistic (mean over the seed
    pairs) with its interval (low, high), threshold, the paper's number and where it comes from,
    verdict ("holds", "fails", "inconclusive") and the number of seed pairs. The confidence level
    is the run's `confidence` parameter. With `write`, the table, the per-cut summary
    (`summary_table`) and the base models go to the run's figures folder as <notebook>_claims.csv,
    _summary.csv and _models.csv (with the run's profile as first column, each with its record:
    `stitchlib.record`).

    connectivity: (a) for every panel and width; (b) and (c), about the random control, for
    ResNet-18, where the paper makes them. label_noise: (a) for each weak bottom but the
    100%-noise one, (b) for the 100%-noise one. more_is_better: (a) more samples, width and
    training time help; (b) less width does not; (c) early layers converge first; (d) freeze
    training. ssl_vs_e2e: (a) the paper's statistic for both directions and (a') the adapted one,
    (b) CKA; (c) each ImageNet pair, when that panel ran. ablations: (a) each kernel size,
    (b) fine-tuning vs stitching, (c) useless coordinates and (d) permuted positions (Section 3), (e) the
    random control under both BatchNorm modes. ssl_vs_e2e's (d) and more_is_better's second (d): the
    ImageNet random control, and freeze training with the top layers frozen too (Appendix B.4).
    """
    j = _Judge(results.setup.params["confidence"])
    results.experiment.claims(j, results)
    claims = pd.DataFrame(j.rows, columns=CLAIM_COLUMNS)
    if write:
        # Each CSV carries the run's profile (first column) and has its record beside it.
        prefix, s = results.experiment.notebook, results.setup
        write_csv(claims, s.figures / f"{prefix}_claims.csv", record=s)
        write_csv(summary_table(results), s.figures / f"{prefix}_summary.csv", record=s)
        write_csv(results.models, s.figures / f"{prefix}_models.csv", record=s)
        if results.sources:
            write_csv(table1(results), s.figures / "table1.csv", record=s)
    return claims


# ------------------------------------------------------------------ Table 1 with our numbers

_TABLE1_COLUMNS = ("different initialisation", "self-supervision", "coarse or noisy labels", "more data / time / width")
_TABLE1_PAPER = {
    "CKA (paper)": ("varies (can be 0)", "varies (0.35-0.9)", "not shown", "far (can be 0 for data, 0.7 for width)"),
    "stitching (paper)": ("close (up to 3% error)", "close (up to 5% error)", "close at the early layers", "better"),
}


def _claim_cells(claims: pd.DataFrame, prefix: str, model: str = "") -> str:
    """The claims whose text starts with `prefix` (and whose model starts with `model`), as
    'model: mean [low, high] (verdict)'; "n/a" where there are none."""
    rows = claims[claims["claim"].str.startswith(prefix) & claims["model"].str.startswith(model)]
    cells = [f"{r.model}{f' at {r.worst_cut}' if r.worst_cut else ''}: "
             + ("n/a" if pd.isna(r.statistic) else f"{r.statistic:.2f} [{r.low:.2f}, {r.high:.2f}]")
             + f" ({r.verdict})" for r in rows.itertuples()]
    return "; ".join(cells) or "n/a"


def _cka_extremes(summary: pd.DataFrame, what: str) -> str:
    """The lowest and highest per-cut mean CKA over the seed pairs, each with its interval and cut."""
    rows = summary[summary["cka"].notna()]
    if rows.empty:
        return f"n/a ({what})"
    lo, hi = rows.loc[rows["cka"].idxmin()], rows.loc[rows["cka"].idxmax()]
    return (f"{lo['cka']:.2f} [{lo['cka_low']:.2f}, {lo['cka_high']:.2f}] at {lo['cut']} to {hi['cka']:.2f} "
            f"[{hi['cka_low']:.2f}, {hi['cka_high']:.2f}] at {hi['cut']} ({what})")


def table1(results: Results) -> pd.DataFrame:
    """Table 1 of the paper with our numbers, from the results 05 summarises (`results.sources`:
    01-04). CKA (ours): per-cut means over the seed pairs, the lowest and the highest, each with
    its interval, since the paper's cells say how far CKA varies. Stitching (ours): the claims
    that make the paper's cells (01 (a), 02 (a), 03 (a), 04 (a)), with their means, intervals
    and verdicts. The paper's own cells follow."""
    src = results.sources
    conn, ssl = summary_table(src["connectivity"]), summary_table(src["ssl_vs_e2e"])
    noise, more = summary_table(src["label_noise"]), summary_table(src["more_is_better"])
    seeds = conn[(conn["bottom_role"] == "trained") & (conn["panel_id"] == "seeds") & (conn["arch"] == "resnet18")]
    weak = noise[(noise["bottom_role"] != "clean") & (noise["noise"] != 1.0)]
    cka_only = more[more["comparison"] == "cka_only"]
    sss = ssl[(ssl["panel_id"] == "cifar10") & (ssl["top_role"] == "e2e") & (ssl["bottom_role"] == "sss")]
    ours_cka = (_cka_extremes(seeds, "ResNet-18 seed pairs"),
                _cka_extremes(sss, "SimCLR vs supervised ResNet-18"),
                _cka_extremes(weak, "coarse, noise < 100%"),
                "; ".join(_cka_extremes(f, pair.replace(" (CKA only)", ""))
                          for pair, f in cka_only.groupby("pair", sort=False)))
    claims = {name: check_claims(r, write=False) for name, r in src.items()}
    # 01: the ResNet-18 seed pairs, as in the CKA cell (Table 1's "different initialisation").
    ours_stitching = (_claim_cells(claims["connectivity"], "(a) ", "ResNet-18 w="),
                      _claim_cells(claims["ssl_vs_e2e"], "(a) "), _claim_cells(claims["label_noise"], "(a) "),
                      _claim_cells(claims["more_is_better"], "(a) "))
    rows = {"CKA (ours)": ours_cka, "stitching (ours)": ours_stitching, **_TABLE1_PAPER}
    return pd.DataFrame([dict(method=method, **dict(zip(_TABLE1_COLUMNS, cells))) for method, cells in rows.items()])


def summary_table(results: Results) -> pd.DataFrame:
    """One row per comparison and cut: the mean over the seed pairs of the penalty after training,
    at initialisation, and of CKA, each with its interval (`<value>_low`, `<value>_high`)."""
    t = results.table
    keys = [c for c in t.columns if c not in _VALUES and not c.startswith("_") and c not in ("cut_index", "cut")]
    j = _Judge(results.setup.params["confidence"])
    rows = []
    for key, f in t.groupby(keys + ["cut_index", "cut"], sort=False, dropna=False):
        row = dict(zip(keys + ["cut_index", "cut"], key))
        row["pairs"] = f["pair_index"].nunique()
        for value in ("penalty", "penalty_init", "cka"):
            per_pair = mean_over_cuts(f[f[value].notna()], value) if f[value].notna().any() else {}
            if not per_pair or (len(per_pair) < 2 and any(d is None for _, d in per_pair.values())):
                row.update({value: f[value].mean(), f"{value}_low": math.nan, f"{value}_high": math.nan})
                continue
            iv = _interval(per_pair, j.confidence, j.weights)
            row.update({value: iv.mean, f"{value}_low": iv.low, f"{value}_high": iv.high})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(results: Results, claims: pd.DataFrame) -> None:
    """Print the numbers behind the verdicts: base-model errors, claim statistics with their
    intervals, and the mean penalty and CKA per cut over the seed pairs."""
    summary = summary_table(results)
    with pd.option_context("display.width", 160, "display.precision", 2, "display.max_columns", 30,
                           "display.max_colwidth", 70):
        print("base models (test error, %):")
        print(results.models.to_string(index=False))
        print("\nclaims (mean over seed pairs, interval [low, high]):")
        print(claims.drop(columns=["paper"]).to_string(index=False))
        by, columns = results.experiment.summary_by
        groups, columns = summary.groupby(by, sort=False), list(columns)
        for name, f in groups:
            for value in ("penalty", "cka"):
                if f[value].isna().all():
                    continue
                # Lines told apart by their value too (05's stitcher convergence: one pair, several
                # step counts) must not be averaged over it.
                keys = columns + ["value"] if "value" in f and f.duplicated(["cut_index", *columns]).any() else columns
                pivot = f.pivot_table(index=["cut_index", "cut"], columns=keys, values=value, sort=False)
                what = ("stitching penalty after training (points)" if value == "penalty"
                        else "linear CKA(top, bottom)")
                print(f"\n{name}: {what}, mean over seed pairs:")
                print(pivot.round(2).to_string())
        for note in results.notes:
            print(f"\nnote: {note}")
        if results.curves is not None:
            print("\nfreeze training: test error (%) against SGD steps, mean over seed pairs:")
            print(results.curves.pivot_table(index="step", columns="run", values="test_error", sort=False)
                  .round(2).to_string())

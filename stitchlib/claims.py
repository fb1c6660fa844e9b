"""The paper's claims, checked on an experiment's results, and the numbers behind them.

Nothing here is stored: the artifact store's code version leaves this module out, so changing
a claim or a threshold re-checks stored results instead of recomputing them.
"""

from __future__ import annotations

import math

import pandas as pd

from .experiments import Results

__all__ = ["check_claims", "summarize"]

RANDOM_CONTROL_FAMILIES = ("ResNet-18",)
_CLAIM_COLUMNS = ["claim", "model", "statistic", "threshold", "holds"]


def _halves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first and the later half of the cut points."""
    n_cuts = frame["cut_index"].max() + 1
    return frame[frame["cut_index"] < n_cuts // 2], frame[frame["cut_index"] >= n_cuts // 2]


def _connectivity_claims(t: pd.DataFrame, *, connected_max_penalty: float, random_late_gap: float,
                         random_early_max: float) -> list[tuple]:
    rows = []
    for family in t["family"].unique():
        f = t[t["family"] == family]
        _, late = _halves(f)
        trained, random = f[f["bottom"] == "trained"], f[f["bottom"] == "random"]
        worst = trained["penalty"].max()
        rows.append(("(a) two seeds are stitching-connected: max penalty over cuts (points)", family,
                     worst, f"<= {connected_max_penalty}", worst <= connected_max_penalty))
        if random.empty or family not in RANDOM_CONTROL_FAMILIES:
            continue
        gap = min(late[(late["bottom"] == "random") & (late["width"] == w)]["penalty"].mean()
                  - late[(late["bottom"] == "trained") & (late["width"] == w)]["penalty"].mean()
                  for w in f["width"].unique())
        rows.append(("(b) a random bottom is far worse at the later cuts: mean penalty gap (points)", family,
                     gap, f">= {random_late_gap}", gap >= random_late_gap))
        early = random[random["cut_index"] == 0]["penalty"].max()
        rows.append(("(c) the first cut of a random bottom is cheap: its penalty (points)", family,
                     early, f"<= {random_early_max}", early <= random_early_max))
    return rows


def _label_noise_claims(t: pd.DataFrame, *, early_max_excess: float, noise_late_min_excess: float) -> list[tuple]:
    """Each weak bottom against the clean reference bottom (another seed on clean labels): "as good
    as the clean model's" is measured as the excess of its mean penalty over the reference's."""
    clean = t[t["labels"] == "clean"]
    clean_early, clean_late = (half["penalty"].mean() for half in _halves(clean))
    rows = []
    for pair, f in t[t["labels"] != "clean"].groupby("pair", sort=False):
        early, late = _halves(f)
        if f["noise"].iloc[0] == 1.0:
            stat = late["penalty"].mean() - clean_late
            rows.append(("(b) a bottom trained on random labels fails at the later cuts: its mean penalty over "
                         "the later half minus the clean seed's (points)", pair, stat, f">= {noise_late_min_excess}",
                         stat >= noise_late_min_excess))
        else:
            stat = early["penalty"].mean() - clean_early
            rows.append(("(a) its first half of the layers is as good as the clean model's: its mean penalty "
                         "over the first half minus the clean seed's (points)", pair, stat, f"<= {early_max_excess}",
                         stat <= early_max_excess))
    return rows


def _more_is_better_claims(results: Results, *, better_max_penalty: float, narrower_late_min: float,
                           converge_gap: float, freeze_margin: float) -> list[tuple]:
    t, p = results.table, results.setup.params
    stitched = t[t["penalty"].notna()]
    rows = []

    def pair(panel, value):
        return stitched[(stitched["panel"] == panel) & (stitched["value"] == value)]

    def helps(what, frame, model):
        stat = frame["penalty"].min()
        rows.append((f"(a) {what} plugs in and helps: lowest penalty over the cuts (points)", model, stat,
                     f"< {better_max_penalty}", stat < better_max_penalty))

    def does_not_help(what, frame, model):
        stat = _halves(frame)[1]["penalty"].min()
        rows.append((f"(b) {what} does not help: lowest penalty over the later half (points)", model, stat,
                     f"> {narrower_late_min}", stat > narrower_late_min))

    helps("a bottom trained on more samples", pair("samples", p["samples"]),
          f"{p['samples']:,} samples into {p['top_samples']:,}")
    one, wide, narrow = p["width"], max(p["widths"]), min(p["widths"])
    into_one, from_one = f"width: bottoms into the {one:g} top", f"width: the {one:g} bottom into tops"
    if wide > one:
        helps("a wider bottom", pair(into_one, wide), f"width {wide:g} into {one:g}")
    if narrow < one:
        helps("a wider bottom", pair(from_one, narrow), f"width {one:g} into {narrow:g}")
        does_not_help("a narrower bottom", pair(into_one, narrow), f"width {narrow:g} into {one:g}")
    if wide > one:
        does_not_help("a narrower bottom", pair(from_one, wide), f"width {one:g} into {wide:g}")
    first = min(float(e) for e in p["checkpoint_epochs"])
    early, late = _halves(pair("training time", first))
    gap = late["penalty"].mean() - early["penalty"].mean()
    rows.append(("(c) early layers converge first: mean penalty of the later half minus the first half (points)",
                 f"epoch {first:g} into epoch {p['top_epoch']:g}", gap, f">= {converge_gap}", gap >= converge_gap))
    c = results.curves
    finals = c.sort_values("epoch").groupby("run", sort=False)["test_error"].last()
    frozen = c[c["frozen_stages"] > 0]
    if frozen.empty:
        stat, holds = math.nan, False  # no stage qualified: the prediction it tests did not hold
    else:
        stat = finals[frozen["run"].iloc[0]] - finals["normal training"]
        holds = stat <= freeze_margin
    rows.append(("(d) freeze training ends near normal training: final test error minus normal training's (points)",
                 "freeze training", stat, f"<= {freeze_margin}", holds))
    return rows


def _ablation_claims(t: pd.DataFrame, *, kernel_max_change: float, finetune_min_gap: float) -> list[tuple]:
    rows = []
    kernel = t[(t["panel"] == "kernel size") & t["penalty"].notna()]
    base = kernel[kernel["value"] == 1].set_index("cut_index")["penalty"]
    if not base.empty:
        change = max((abs((f.set_index("cut_index")["penalty"] - base).mean()) for k, f in kernel.groupby("value")
                      if k != 1), default=0.0)
        rows.append(("(a) the kernel size barely matters: largest change of the mean penalty against k = 1 "
                     "(points)", "ResNet-18", change, f"<= {kernel_max_change}", change <= kernel_max_change))
    ft = t[t["panel"] == "fine-tuning vs stitching"]
    # Above the last block of the ResNet-164 family lie only the final BatchNorm, the pooling and
    # the classifier: at the last two cuts fine-tuning is a linear probe, as stitching is there.
    deep = ft[ft["cut_index"] < ft["cut_index"].max() - 1].pivot_table(index="cut_index", columns="pair",
                                                                        values="penalty")
    gap = (deep["stitching"] - deep["fine-tuning"]).mean()
    rows.append(("(b) fine-tuning makes a random bottom look good, stitching does not: mean penalty of stitching "
                 "minus fine-tuning over the cuts with a block above them (points)", "random bottom", gap,
                 f">= {finetune_min_gap}", gap >= finetune_min_gap))
    return rows


def _ssl_claims(t: pd.DataFrame, *, ssl_max_excess: float, cka_min_gap: float) -> list[tuple]:
    cifar = t[t["panel"] == "CIFAR-10"]

    def beyond_weaker(f):
        # What stitching loses beyond the weaker of its two networks: with networks of equal
        # accuracy (the paper's) this is the penalty; with a weaker SSS model it does not charge
        # the stitch for the gap between the networks themselves.
        return (f["error"] - f[["top_error", "bottom_error"]].max(axis=1)).max()

    ref = beyond_weaker(cifar[cifar["direction"] == "E2E into E2E"])
    rows = []
    for direction in ("SSS into E2E", "E2E into SSS"):
        stat = beyond_weaker(cifar[cifar["direction"] == direction]) - ref
        rows.append(("(a) SSS and E2E are stitching-connected like two supervised seeds: largest error beyond the "
                     "weaker network's, minus the seed pair's (points)", direction, stat, f"<= {ssl_max_excess}",
                     stat <= ssl_max_excess))
    cka = cifar.groupby("direction")["cka"].mean()
    gap = cka["E2E into E2E"] - cka["SSS into E2E"]
    rows.append(("(b) yet CKA calls them less similar: mean CKA of the seed pair minus SSS-E2E's", "CKA", gap,
                 f"> {cka_min_gap}", gap > cka_min_gap))
    imagenet = t[t["panel"] == "ImageNet"]
    for pair, f in imagenet.groupby("pair", sort=False):
        stat = f["penalty"].max()
        rows.append(("(c) ImageNet: a self-supervised ResNet-50 stitches into the supervised one: largest penalty "
                     "(points)", pair, stat, f"<= {ssl_max_excess}", stat <= ssl_max_excess))
    return rows


def check_claims(results: Results, **thresholds: float) -> pd.DataFrame:
    """The paper's claims for `results`, one row each: claim, model, statistic, threshold, verdict.
    The thresholds are the notebook's parameters of the same names.

    connectivity: (a) for every panel (ResNet-18's widths count as one panel: the statistic is the
    worst width); (b) and (c), about the random control, for ResNet-18, where the paper makes them.
    label_noise: (a) for each weak bottom but the 100%-noise one, (b) for the 100%-noise one.
    more_is_better: (a) more samples and more width help, in both directions of the width
    experiment; (b) less width does not; (c) training time; (d) freeze training.
    ssl_vs_e2e: (a) both directions of SSS-E2E stitching against the seed pair, (b) CKA; (c) each
    ImageNet pair, when that panel ran.
    ablations: (a) kernel size, (b) fine-tuning vs stitching.
    """
    experiment = results.setup.experiment
    if experiment == "connectivity":
        rows = _connectivity_claims(results.table, **thresholds)
    elif experiment == "label_noise":
        rows = _label_noise_claims(results.table, **thresholds)
    elif experiment == "ssl_vs_e2e":
        rows = _ssl_claims(results.table, **thresholds)
    elif experiment == "ablations":
        rows = _ablation_claims(results.table, **thresholds)
    else:
        rows = _more_is_better_claims(results, **thresholds)
    return pd.DataFrame(rows, columns=_CLAIM_COLUMNS)


def summarize(results: Results, claims: pd.DataFrame) -> None:
    """Print the numbers behind the verdicts: base-model errors, claim statistics, penalties and CKA per cut."""
    t = results.table
    with pd.option_context("display.width", 160, "display.precision", 2, "display.max_columns", 30):
        print("base models (test error, %):")
        print(results.models.to_string(index=False))
        print("\nclaims:")
        print(claims.to_string(index=False))
        if results.setup.experiment == "connectivity":
            groups, columns = t.groupby("family", sort=False), ["width", "bottom"]
        else:
            groups, columns = t.groupby("panel", sort=False), ["pair"]
        for name, f in groups:
            for value in ("penalty", "cka"):
                if f[value].isna().all():
                    continue
                pivot = f.pivot_table(index=["cut_index", "cut"], columns=columns, values=value, sort=False)
                what = "stitching penalty after training (points)" if value == "penalty" else "linear CKA(top, bottom)"
                print(f"\n{name}: {what}:")
                print(pivot.round(2).to_string())
        for note in results.notes:
            print(f"\nnote: {note}")
        if results.overview is not None:
            print("\nTable 1, with our numbers:")
            print(results.overview.set_index("method").T.to_string())
        if results.curves is not None:
            print("\nfreeze training: test error (%) against SGD steps:")
            print(results.curves.pivot_table(index="step", columns="run", values="test_error", sort=False)
                  .round(2).to_string())

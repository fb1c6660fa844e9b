"""04: more is better (Section 6, Appendix B.2.3 and B.4).

More samples (Fig. 2C), more training time (Fig. 3B) and more width (Fig. 3C) plug in and help;
CKA for each (Fig. 7); freeze training (Fig. 9). Every panel runs for each seed pair:

- samples: bottoms (bottom seed) trained on fewer_samples, top_samples and `samples` images,
  stitched into a top (top seed) trained on top_samples; every one takes the same number of SGD
  steps. CKA also between the fewer- and more-samples models.
- training time: one run of `epochs` (top seed), checkpointed at `checkpoint_epochs`, each
  checkpoint stitched into the `top_epoch` checkpoint of the same run, as in the paper.
- width: bottoms of each width in `widths` into the `width` top, and the `width` bottom into tops
  of each width (the reverse direction). CKA also between the narrowest and widest.
- freeze training (Appendix B.4): the longest prefix of stages whose mean penalty over the seed
  pairs, as the fewer-samples bottom, is <= freeze_max_penalty at every cut. For each pair, that
  prefix of the pair's fewer-samples model is copied and frozen while the rest trains from
  scratch (top seed) on the whole training split, beside a model trained normally on it for the
  same number of steps. The paper also freezes top layers, chosen by "the opposite" experiment:
  that normally trained network (all training images) stitched into the fewer-samples model as
  the top. Stitching at a cut
  keeps the top's whole part above it, so only a suffix can be frozen: the stages above the
  shallowest cut from which on every mean penalty is <= freeze_max_penalty (the paper's
  {8, 9, 11} is not contiguous; a suffix is what a stitch at one cut tests). A third run freezes
  both, from the same fewer-samples model. Test error at 8 points of each run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pandas as pd

from .. import claims as C
from .. import plotting
from ..tables import write_csv
from ..training import Recipe
from .core import (Experiment, Plan, Setup, SplitRef, Splits, compare, equal_steps, finish, machine, models_frame,
                   pair_columns, register, run_plan)
from .params import Common, check_training_size, check_width, check_widths, is_number, param
from .tasks import Checkpoint, FrozenPrefix, FrozenSuffix, TrainedModel


@dataclass(frozen=True)
class MoreIsBetterParams(Common):
    EXPERIMENT = "more_is_better"
    FIRST = ("samples", "fewer_samples", "top_samples")
    width: float = param("width multiplier of every model (first layer 64 x width)", 0.125, 1.0)
    # Section 6 at the paper's sample sizes in both profiles: every model of the samples
    # experiment takes as many SGD steps as the base recipe, so the sizes cost nothing extra.
    fewer_samples: int = param('training images of the "fewer samples" bottom, which freeze training takes its '
                               "frozen layers from", 5000)
    top_samples: int = param("training images of the samples experiment's top (and of its equal-samples bottom)",
                             10000)
    samples: int = param('training images of the "more samples" bottom (Fig. 2C), at most the training split',
                         25000)
    checkpoint_epochs: list = param("checkpoints of the training-time run (at most epochs)", [1.0, 4.0],
                                    [40.0, 80.0, 160.0], fast=[1.5, 3.0, 6.0], items=float)
    top_epoch: float = param("the checkpoint they are stitched into", 2.0, 80.0, fast=3.0)
    widths: list = param("widths of the width panel's bottoms and tops", [0.03125, 0.125], [0.25, 1.0, 2.0],
                         items=float)
    # The smoke models' penalties are far from zero: a paper-level "near zero" would freeze nothing.
    freeze_max_penalty: float = param('"near zero" for freeze training: a bottom stage is frozen if the mean '
                                      "penalty at every cut up to it is at most this (points), a top stage if the "
                                      "reversed pair's is at every cut from below it on", 3.0, 1.0)

    def check(self) -> None:
        super().check()
        check_width("width", self.width)
        check_widths("widths", self.widths)
        for name in ("fewer_samples", "top_samples", "samples"):
            check_training_size(name, getattr(self, name), self.data_info["train"],
                                f"the training split of {self.dataset}", self.batch_size)
        if not self.fewer_samples < self.top_samples < self.samples:
            raise ValueError("the samples experiment needs fewer_samples < top_samples < samples (fewer, equal and "
                             f"more samples than the top), got {self.fewer_samples}, {self.top_samples}, "
                             f"{self.samples}")
        epochs = self.checkpoint_epochs + [self.top_epoch]
        if not self.checkpoint_epochs or not all(is_number(e) and 0 < e <= self.epochs for e in epochs):
            raise ValueError(f"checkpoint_epochs (and top_epoch) must be a non-empty list of epochs in (0, "
                             f"epochs={self.epochs:g}], the length of the run they are taken from; got "
                             f"{self.checkpoint_epochs!r} and top_epoch={self.top_epoch!r}")
        if self.freeze_max_penalty < 0:
            raise ValueError(f"freeze_max_penalty must be >= 0 (points), got {self.freeze_max_penalty!r}")


def near_zero_suffix(table: pd.DataFrame, limit: float, n_stages: int) -> int:
    """How many stages, from the output back, sit above a cut from which on every penalty is <=
    `limit` (of a spine of `n_stages` stages, one more than its cuts): stitching at cut l keeps
    the top's whole part above l, so only a suffix of the top can be frozen."""
    shallowest = None
    for index, penalty in table.sort_values("cut_index", ascending=False)[["cut_index", "penalty"]].itertuples(
            index=False):
        if not penalty <= limit:  # a cut without a penalty (NaN) is not near zero either
            break
        shallowest = int(index)
    return 0 if shallowest is None else n_stages - 1 - shallowest


def near_zero_prefix(table: pd.DataFrame, limit: float) -> int:
    """How many stages, from the input on, sit before a cut where every penalty so far is
    <= `limit`: stitching at cut l tests the whole bottom up to l, so only a prefix can be frozen."""
    n = 0
    for penalty in table.sort_values("cut_index")["penalty"]:
        if not penalty <= limit:  # a cut without a penalty (NaN) is not near zero either
            break
        n += 1
    return n


@dataclass(frozen=True)
class _Freeze:
    """Freeze training's training set and recipe, and its test-error curve points (epochs)."""

    everything: SplitRef
    recipe: Recipe
    curve: tuple
    per_epoch: int


def _freeze(p: MoreIsBetterParams, base: Recipe) -> _Freeze:
    info = p.data_info
    everything = SplitRef("train", info["train"], info["num_classes"]).subset(info["train"], 0)
    recipe = equal_steps(p, base, everything.size)
    per_epoch = everything.size // recipe.batch_size
    total = recipe.steps or math.ceil(recipe.epochs * per_epoch)
    # Test error at 8 evenly spaced steps (fewer if the run is shorter), the last one the end.
    curve = tuple(step / per_epoch for step in sorted({max(1, round(total * k / 8)) for k in range(1, 8)} - {total}))
    return _Freeze(everything, recipe, curve, per_epoch)


def plan(p: MoreIsBetterParams, profile: str, uses: dict) -> Plan:
    splits = Splits.of(p)
    base = p.recipe(p.arch, p.epochs)
    # Samples (Fig. 2C): nested subsets, so the larger sets contain the smaller ones.
    info = p.data_info
    full = SplitRef("train", info["train"], info["num_classes"])
    sized = {n: full.subset(n, 0) for n in (p.fewer_samples, p.top_samples, p.samples)}
    epochs = sorted({float(e) for e in p.checkpoint_epochs} | {float(p.top_epoch)})
    one, lo, hi = p.width, min(p.widths), max(p.widths)

    def model(label, width, seed, train=splits.train, recipe=base, **kw):
        return TrainedModel(label, p.arch, width, seed, train, splits.test, recipe, **kw)

    def at_width(w, seed):
        return model(f"width {w:g}, seed {seed}", w, seed)

    comparisons, extra = [], []
    fz = _freeze(p, base)
    for i, (top_seed, seed) in enumerate(p.seed_pairs()):
        cols = pair_columns(i, top_seed, seed)
        top = model(f"{p.top_samples:,} samples, seed {top_seed}", one, top_seed, sized[p.top_samples],
                    equal_steps(p, base, p.top_samples))
        bottoms = {n: model(f"{n:,} samples, seed {seed}", one, seed, split, equal_steps(p, base, n))
                   for n, split in sized.items()}
        roles = {p.fewer_samples: "fewer_samples", p.top_samples: "top_samples", p.samples: "more_samples"}
        for n, bottom in bottoms.items():
            comparisons.append(compare(p, splits, top, bottom, dict(panel="samples", pair=f"{n:,} samples",
                                                                    value=float(n), **cols,
                                                                    **machine("samples", "top_samples", roles[n]))))
        comparisons.append(compare(p, splits, bottoms[p.fewer_samples], bottoms[p.samples], dict(
            panel="samples", pair=f"{p.fewer_samples:,} vs {p.samples:,} samples (CKA only)", value=math.nan,
            **pair_columns(i, seed, seed), **machine("samples", "fewer_samples", "more_samples", "cka_only")),
            stitch=False))

        # Training time (Fig. 3B): checkpoints of one run.
        run = model(f"{p.width:g} run, seed {top_seed}", one, top_seed, checkpoints=tuple(epochs), keep_checkpoints=True)
        at = {e: Checkpoint(f"epoch {e:g}, seed {top_seed}", run, e) for e in epochs}
        for e in sorted(float(e) for e in p.checkpoint_epochs):
            comparisons.append(compare(p, splits, at[float(p.top_epoch)], at[e], dict(
                panel="training time", pair=f"epoch {e:g}", value=e, **pair_columns(i, top_seed, top_seed),
                **machine("training_time", "top_epoch", "checkpoint"))))

        # Width (Fig. 3C), both directions.
        for w in p.widths:
            comparisons.append(compare(p, splits, at_width(one, top_seed), at_width(w, seed), dict(
                panel=f"width: bottoms into the {one:g} top", pair=f"width {w:g}", value=float(w), **cols,
                **machine("width_bottoms", "width", "width_varied"))))
        for w in p.widths:
            if w != one:
                comparisons.append(compare(p, splits, at_width(w, top_seed), at_width(one, seed), dict(
                    panel=f"width: the {one:g} bottom into tops", pair=f"width {w:g}", value=float(w), **cols,
                    **machine("width_tops", "width_varied", "width"))))
        if lo != hi:
            comparisons.append(compare(p, splits, at_width(lo, top_seed), at_width(hi, seed), dict(
                panel="width", pair=f"width {lo:g} vs {hi:g} (CKA only)", value=math.nan, **cols,
                **machine("width_cka", "narrowest", "widest", "cka_only")), stitch=False))

        # Freeze training (Fig. 9): the prefix is decided from the samples panel's penalties.
        normal = model("normal training", one, top_seed, fz.everything, fz.recipe, checkpoints=fz.curve)
        fewer = bottoms[p.fewer_samples]
        # The opposite (Appendix B.4: "a top model with 5K and bottom with 50K"): the network trained
        # normally on every training image as the bottom, into the fewer-samples model as the top;
        # where it is near zero, the fewer-samples model's top layers are as good.
        comparisons.append(compare(p, splits, fewer, normal, dict(
            panel="samples, reversed", pair=f"{fz.everything.size:,} samples into {p.fewer_samples:,}",
            value=float(fz.everything.size), **pair_columns(i, seed, top_seed),
            **machine("samples_reversed", "fewer_samples", "all_samples"))))
        extra += [normal, dataclasses.replace(normal, label=f"frozen prefix of {fewer.label}",
                                              frozen=FrozenPrefix(fewer, None)),
                  dataclasses.replace(normal, label=f"frozen prefix and top layers of {fewer.label}",
                                      frozen=FrozenPrefix(fewer, None), frozen_top=FrozenSuffix(fewer, None))]
    return Plan("more_is_better", profile, p, comparisons, extra=extra)


def run(s: Setup):
    p, plan_ = s.p, s.plan
    fz = _freeze(p, p.recipe(p.arch, p.epochs))
    table, bar = run_plan(s, "more is better", extra_units=len(plan_.extra))
    with bar:
        # Freeze training (Fig. 9, Appendix B.4): one prefix for every pair, from their mean penalties.
        def mean_penalties(panel_id):
            rows = table[(table["panel_id"] == panel_id) & (table["top_role" if panel_id == "samples_reversed"
                                                                  else "bottom_role"] == "fewer_samples")]
            return rows.groupby(["cut_index", "cut"], as_index=False)["penalty"].mean().sort_values("cut_index")

        prefix_rows, top_rows = mean_penalties("samples"), mean_penalties("samples_reversed")
        n_frozen = near_zero_prefix(prefix_rows, p.freeze_max_penalty)
        n_stages = len(top_rows) + 1  # the spine: a stage before every cut, and the classifier
        n_top = min(near_zero_suffix(top_rows, p.freeze_max_penalty, n_stages), n_stages - 1 - n_frozen)
        frozen_names = (f"stages up to {prefix_rows['cut'].iloc[n_frozen - 1]}" if n_frozen else "")
        top_names = f"stages after {top_rows['cut'].iloc[n_stages - 1 - n_top]}" if n_top else ""
        curves, runs = [], []
        for i, (top_seed, seed) in enumerate(p.seed_pairs()):
            normal, frozen, both = plan_.extra[3 * i: 3 * i + 3]
            runs.append({("normal", "normal training"): normal})
            source = f" frozen from the {p.fewer_samples:,}-sample model"
            if n_frozen:
                runs[i][("prefix", frozen_names + source)] = dataclasses.replace(
                    frozen, frozen=FrozenPrefix(frozen.frozen.source, n_frozen))
            if n_top:
                runs[i][("prefix_and_top", " and ".join(filter(None, (frozen_names, top_names))) + source)] = (
                    dataclasses.replace(both, frozen=FrozenPrefix(both.frozen.source, n_frozen) if n_frozen else None,
                                        frozen_top=FrozenSuffix(both.frozen_top.source, n_top)))
        # Now that the prefix is known, every pair's frozen run trains at once.
        s.compute([task for pair in runs for task in pair.values()], "freeze training")
        for i, (top_seed, seed) in enumerate(p.seed_pairs()):
            for (kind, label), task in runs[i].items():
                bar.set_postfix_str(f"freeze training: {label}, pair {i}")
                _, rec = s.runner.model(task)
                curves += [dict(run=label, freeze=kind, frozen_stages=task.frozen.stages if task.frozen else 0,
                                frozen_top_stages=task.frozen_top.stages if task.frozen_top else 0, epoch=e,
                                step=round(e * fz.per_epoch), test_error=err, _wrong=w,
                                **pair_columns(i, top_seed, seed if task.freezing() else top_seed))
                           for (e, err), w in zip(rec["curve"], rec["curve_wrong"])]
                bar.update()
        bar.update(bar.total - bar.n)
    curves = pd.DataFrame(curves)
    write_csv(curves, s.figures / "04_freeze_training.csv", record=s)
    return finish(s, table, models_frame(s), curves=curves)


EXPERIMENT = register(Experiment(
    "more_is_better", "04_more_is_better", "More is better (Figs. 2C, 3B, 3C, 7, 9)", MoreIsBetterParams, plan, run,
    C.more_is_better_claims, plotting.more_is_better_figures,
    columns=dict(panel_id={"samples", "samples_reversed", "training_time", "width_bottoms", "width_tops",
                           "width_cka"},
                 top_role={"top_samples", "fewer_samples", "top_epoch", "width", "width_varied", "narrowest"},
                 bottom_role={"fewer_samples", "top_samples", "more_samples", "all_samples", "checkpoint", "width",
                              "width_varied", "widest"},
                 comparison={"stitch", "cka_only"})))

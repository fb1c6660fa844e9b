"""03: the label distribution (Fig. 3A).

ResNet-18 bottoms trained on weaker labels, stitched into a top trained on clean CIFAR-10 labels
at every cut, with CKA(top, bottom) at the same cuts. The weak bottoms: the coarse
Animals-vs-Objects task (if `coarse`) and each label-noise fraction in `noise`. For each seed
pair, the clean top has the top seed and the clean reference bottom the bottom seed (01's pair);
each weak bottom has a seed of its own (derived from the bottom seed and its labels), so that it
shares neither initialisation nor data order with the reference it is judged against, and
trains on the same images. The coarse model's own error is measured on coarse test labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import claims as C
from .. import plotting
from .core import (Experiment, Plan, Setup, Splits, compare, derived_seed, finish, machine, models_frame, pair_columns,
                   register, run_plan)
from .params import Common, check_width, is_number, param
from .tasks import TrainedModel


@dataclass(frozen=True)
class LabelNoiseParams(Common):
    EXPERIMENT = "label_noise"
    width: float = param("width multiplier of every model (first layer 64 x width)", 0.125, 1.0)
    noise: list = param("label-noise fractions p: round(p x N) labels drawn uniformly at random", [0.5, 1.0],
                        [0.1, 0.5, 1.0], items=float)
    coarse: bool = param("add the bottom trained on Objects vs Animals (Appendix A.2)", True)

    def check(self) -> None:
        super().check()
        check_width("width", self.width)
        if self.coarse and self.dataset != "cifar10":
            # Checked on the name, before any data is loaded: the coarse labels are CIFAR-10's superclasses.
            raise ValueError(f"coarse=True needs CIFAR-10's classes (Animals vs Objects); {self.dataset!r} "
                             "has other classes: set coarse=False")
        if not all(is_number(q) and 0 <= q <= 1 for q in self.noise):
            raise ValueError(f"noise must list label-noise fractions in [0, 1], got {self.noise!r}")
        if not self.noise and not self.coarse:
            raise ValueError("nothing to compare: give at least one noise fraction or coarse=True")


def plan(p: LabelNoiseParams, profile: str, uses: dict) -> Plan:
    splits = Splits.of(p)
    recipe = p.recipe(p.arch, p.epochs)
    comparisons = []
    for i, (top_seed, seed) in enumerate(p.seed_pairs()):
        top = TrainedModel(f"clean labels, seed {top_seed}", p.arch, p.width, top_seed, splits.train, splits.test,
                           recipe)
        weak = [("clean labels", "clean", 0.0, splits.train, splits.test, seed)]
        if p.coarse:
            weak.append(("objects vs animals", "coarse", math.nan, splits.train.coarse(), splits.test.coarse(),
                         derived_seed(seed, "coarse")))
        weak += [(f"{q:.0%} label noise", "noise", float(q),
                  splits.train.label_noise(q, seed=derived_seed(seed, f"noise {q:g} labels")), splits.test,
                  derived_seed(seed, f"noise {q:g}")) for q in p.noise]
        for label, labels, noise, train, test, own_seed in weak:
            bottom = TrainedModel(f"{label}, seed {own_seed}", p.arch, p.width, own_seed, train, test, recipe)
            comparisons.append(compare(p, splits, top, bottom, dict(
                panel="label distribution", pair=label, labels=labels, noise=noise,
                **pair_columns(i, top_seed, own_seed), **machine("labels", "clean", labels))))
    return Plan("label_noise", profile, p, comparisons)


def run(s: Setup):
    table, bar = run_plan(s, "label noise")
    bar.close()
    return finish(s, table, models_frame(s))


EXPERIMENT = register(Experiment(
    "label_noise", "03_label_noise", "The label distribution (Fig. 3A)", LabelNoiseParams, plan, run,
    C.label_noise_claims, plotting.label_noise_figures,
    columns=dict(panel_id={"labels"}, top_role={"clean"}, bottom_role={"clean", "coarse", "noise"},
                 comparison={"stitch"})))

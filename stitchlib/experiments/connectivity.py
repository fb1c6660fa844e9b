"""01: stitching connectivity (Fig. 2A) and CKA at the same cuts (Fig. 5).

In each panel and seed pair, the top seed is A; the bottom seed (and, except for the disjoint
panel, a freshly built random network of seed random_seed + pair index) is stitched into it at
every cut point, and CKA(A, bottom) is computed at every cut. For the first ResNet-18 seed pair
(at width 1 where the run has it) CKA is also computed between every pair of cuts: the
layer-by-layer heatmap, whose diagonal is Fig. 5's line.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import claims as C
from .. import plotting
from ..tables import write_csv
from ..models import ARCHITECTURES
from .core import Experiment, Plan, Setup, Splits, compare, equal_steps, finish, machine, pair_columns, register, run_plan
from .params import Common, check_architecture, check_widths, param
from .tasks import CKAMatrix, RandomModel, TrainedModel

FAMILY_NAMES = {"resnet18": "ResNet-18", "myrtle": "Myrtle CNN", "vit": "ViT"}


def family_name(arch: str, options: dict) -> str:
    if arch == "preact_resnet":
        return f"ResNet-{options.get('depth', 164)}"
    if arch == "myrtle" and options.get("pool_first") is False:
        return "Myrtle CNN (Page's: no pooling after layer 1)"
    return FAMILY_NAMES.get(arch, arch)


@dataclass(frozen=True)
class ConnectivityParams(Common):
    EXPERIMENT = "connectivity"
    # Two seed pairs of fewer panels than the paper's within the CPU budget: one ResNet-18 width,
    # ResNet-11 (the ResNet-164 family at n = 1), the Myrtle CNN; the ViT and the disjoint halves
    # run at the paper profile (or with -y/-p).
    widths: list = param("width multipliers (first layer 64 x w)", [0.125], [0.5, 1.0, 2.0], items=float)
    random_seed: int = param("seed of the untrained random-network control (plus the pair's index)", 100)
    # ResNet-164; the Myrtle CNN for 80K steps (205 epochs); the paper's ViT (trained on CIFAR-5m
    # there, on CIFAR-10 here). fast: the same models on the base epochs, the ViT (ten times a
    # ResNet-18's FLOPs) on 4.
    architectures: dict = param("other panels: {arch: {width, depth, epochs}} for preact_resnet, myrtle, vit; "
                                "myrtle also takes pool_first (true: the paper's text, every layer pools; false: "
                                "Page's network, no pooling after the first layer)",
                                {"preact_resnet": {"width": 0.25, "depth": 11}, "myrtle": {"width": 0.25}},
                                {"preact_resnet": {"width": 1.0, "depth": 164}, "myrtle": {"width": 1.0, "epochs": 205.0},
                                 "vit": {"width": 1.0, "depth": 12}},
                                fast={"preact_resnet": {"width": 1.0, "depth": 164}, "myrtle": {"width": 1.0},
                                      "vit": {"width": 1.0, "depth": 12, "epochs": 2.0}})
    disjoint: bool = param("add the panel of two ResNet-18s trained on disjoint halves of the training images",
                           False, True)

    def check(self) -> None:
        super().check()
        check_widths("widths", self.widths)
        if self.disjoint and self.train_samples // 2 < self.batch_size:
            raise ValueError(f"disjoint=True trains on halves of train_samples={self.train_samples}: each half needs "
                             f"at least one batch of {self.batch_size} images, so train_samples >= {2 * self.batch_size}")
        for arch, opts in self.architectures.items():
            check_architecture(arch, opts, ("width", "depth", "epochs", "pool_first"),
                               f"architectures[{arch!r}]" if arch in ARCHITECTURES else "architectures")


@dataclass(frozen=True)
class _Family:
    """One panel of Fig. 2A: an architecture, the splits its two seeds train on, and whether a
    random network is stitched in as the control."""

    family: str
    arch: str
    width: float
    options: tuple
    epochs: float
    panel: str
    train_splits: list  # (top's, bottom's) training split for each seed pair
    with_random: bool = True


def _families(p: ConnectivityParams, splits: Splits) -> list[_Family]:
    same = [(splits.train, splits.train)] * len(p.seed_pairs())
    out = [_Family("ResNet-18", p.arch, w, (), p.epochs, "seeds", same) for w in p.widths]
    for arch, opts in p.architectures.items():
        opts = dict(opts)
        width, epochs = opts.pop("width", 1.0), opts.pop("epochs", p.epochs)
        if opts.get("pool_first") is True:  # the default, said out loud: the same model, one store key
            del opts["pool_first"]
        out.append(_Family(family_name(arch, opts), arch, width, tuple(sorted(opts.items())), epochs, "seeds", same))
    if p.disjoint:
        # Section 4: "a similar result holds for networks trained on disjoint train sets".
        # The paper's recipe is a number of SGD steps, so each half takes as many steps as the
        # full subset does (about twice the epochs; `equal_steps`). Each seed pair draws its own halves.
        halves = [splits.train.halves(seed=3 + i) for i in range(len(p.seed_pairs()))]
        width = p.widths[len(p.widths) // 2]
        out.append(_Family("ResNet-18, disjoint halves", p.arch, width, (), p.epochs, "disjoint", halves,
                           with_random=False))
    return out


def plan(p: ConnectivityParams, profile: str, uses: dict) -> Plan:
    splits = Splits.of(p)
    comparisons = []
    for f in _families(p, splits):
        recipe = p.recipe(f.arch, f.epochs)
        if f.panel == "disjoint":
            recipe = equal_steps(p, recipe, f.train_splits[0][0].size)
        for i, (seeds, train_splits) in enumerate(zip(p.seed_pairs(), f.train_splits)):
            top, bottom = (TrainedModel(f"{f.family} w={f.width:g} seed {seed}", f.arch, f.width, seed, split,
                                        splits.test, recipe, f.options)
                           for seed, split in zip(seeds, train_splits))
            bottoms = [("another seed", bottom, seeds[1])]
            if f.with_random:
                random_seed = p.random_seed + i
                bottoms.append(("random", RandomModel(f"{f.family} w={f.width:g} random {random_seed}", f.arch,
                                                      f.width, random_seed, splits.train.num_classes, f.options),
                                random_seed))
            for label, model, seed in bottoms:
                role = "random" if label == "random" else "trained"
                columns = dict(family=f.family, arch=f.arch, width=f.width, panel=f.panel, bottom=role, pair=label,
                               **pair_columns(i, seeds[0], seed), **machine(f.panel, "trained", role))
                comparisons.append(compare(p, splits, top, model, columns))
    # The heatmap's pair: the first seed pair of the ResNet-18 panel at width 1 (else the first width),
    # on the images and estimator of its per-cut CKA.
    width = 1.0 if 1.0 in p.widths else p.widths[0]
    first = next(c for c in comparisons if c.columns["panel_id"] == "seeds" and c.columns["arch"] == p.arch
                 and c.columns["width"] == width and c.columns["bottom_role"] == "trained")
    matrix = CKAMatrix(f"CKA at every pair of cuts: {first.bottom.label} and {first.top.label}", first.top,
                       first.bottom, first.cka.images, first.cka.estimator, first.cka.batch_size)
    return Plan("connectivity", profile, p, comparisons, extra=[matrix])


def run(s: Setup):
    """Fig. 2A and Fig. 5: one tidy row per (panel, seed pair, bottom, cut)."""
    # One bar for the whole experiment, advanced per base model, per stitched cut and per CKA pair;
    # the inner loops stay quiet so a notebook shows a single line of progress.
    table, bar = run_plan(s, "connectivity", extra_units=1)
    with bar:
        (matrix_task,) = s.plan.extra
        bar.set_postfix_str(matrix_task.label)
        matrix = s.runner.cka_matrix(matrix_task)
        bar.update()
    # Tidy: one row per (cut of the top seed, cut of the bottom seed).
    heatmap = pd.DataFrame([dict(family=FAMILY_NAMES.get(s.p.arch, s.p.arch), width=matrix_task.a.width,
                                 seed_a=matrix_task.a.seed, seed_b=matrix_task.b.seed, cut_index_a=i, cut_a=name_a,
                                 cut_index_b=j, cut_b=name_b, cka=float(matrix["cka"][i, j]))
                            for i, name_a in enumerate(matrix["cuts_a"]) for j, name_b in enumerate(matrix["cuts_b"])])
    write_csv(heatmap, s.figures / "01_cka_matrix.csv", record=s)
    # Each panel's seed pairs, top then bottom, in the order the panels run.
    rows = [dict(family=c.columns["family"], width=m.width, seed=m.seed, test_error=s.runner.model(m)[1]["test_error"])
            for c in s.plan.comparisons if c.columns["bottom"] == "trained" for m in (c.top, c.bottom)]
    return finish(s, table, pd.DataFrame(rows), cka_matrix=heatmap)


EXPERIMENT = register(Experiment(
    "connectivity", "01_connectivity", "Stitching connectivity (Fig. 2A, Fig. 5)", ConnectivityParams, plan, run,
    C.connectivity_claims, plotting.connectivity_figures, summary_by=("family", ("width", "bottom")),
    columns=dict(panel_id={"seeds", "disjoint"}, top_role={"trained"}, bottom_role={"trained", "random"},
                 comparison={"stitch"})))

__all__ = ["ConnectivityParams", "plan", "run", "family_name"]

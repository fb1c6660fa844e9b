"""05: ablations (Appendix B.1 and B.3), what the paper could not show, and Table 1.

For each seed pair:

- kernel size (Fig. 4): the seed pair stitched with a k x k stitcher for each k in
  `kernel_sizes`, trained at `stitch_lr` / k (the pooled-vector cut only takes k = 1);
- BatchNorm policy: frozen parts in eval mode (the default) against the drifting statistics of
  the original code (`bn_policy="drift"`);
- initialisation: least squares (the default) against random, each with its penalty at
  initialisation (direct matching) and after training;
- fine-tuning vs stitching (Fig. 8): a trained top of the ResNet-164 family (`finetune_arch`, the
  top seed) and a random bottom (random_seed + pair index). Stitching trains only the stitcher;
  fine-tuning keeps the random bottom up to the cut frozen and trains freshly initialised top
  layers (a seed of their own) for `finetune_epochs`.
- Table 1, from the results of 01-04 at this profile and with this run's shared parameters
  (`results.sources`; `stitchlib.claims.table1` makes the table, `check_claims` writes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .. import claims as C
from .. import plotting
from .core import (EXPERIMENTS, Experiment, Plan, Results, Setup, Splits, compare, derived_seed, finish, machine,
                   models_frame, pair_columns, register, row_of, run_plan, setup, stitch_steps)
from .connectivity import family_name
from .params import Common, check_architecture, check_width, param
from .tasks import FrozenPrefix, RandomModel, TrainedModel, architecture_info

TABLE1_SOURCES = ("connectivity", "ssl_vs_e2e", "label_noise", "more_is_better")


@dataclass(frozen=True)
class AblationParams(Common):
    EXPERIMENT = "ablations"
    width: float = param("width multiplier of every model (first layer 64 x width)", 0.125, 1.0)
    kernel_sizes: list = param("stitcher kernel sizes k (odd, > 0); k > 1 skips the pooled-vector cut", [1, 3, 9],
                               [1, 3, 5, 7, 9])
    finetune_arch: dict = param("the ResNet-164 family for fine-tuning vs stitching: {width, depth (9n + 2)}",
                                {"width": 0.25, "depth": 11}, {"width": 1.0, "depth": 164})
    finetune_epochs: float = param("epochs of training for the re-initialised top layers above each cut", 4.0, 164.0,
                                   fast=1.0)
    random_seed: int = param("seed of the untrained random-network control (plus the pair's index)", 100)
    # Section 3: "concatenating 1000 'useless' coordinates, with random gaussian features" to a
    # representation. Here a multiple of the representation's channels, at every position, so
    # that the noise is comparable at every cut and width.
    useless_ratio: float = param("Gaussian 'useless' channels appended per channel of the bottom's representation "
                                 "(Section 3's argument; at the same root mean square as the representation)", 1.0)
    # The authors trained each stitcher for 120K steps of batch 128; the convergence panel shows
    # where the penalty stops moving (first seed pair; least-squares and random starts).
    convergence_steps: list = param("stitcher steps of the convergence panel (first seed pair), beside the profile's "
                                    "own stitcher length (stitch_epochs), which it always includes", [4, 64],
                                    [500, 16000, 120000], fast=[10, 160, 640], items=int)

    def check(self) -> None:
        super().check()
        check_width("width", self.width)
        if not self.kernel_sizes or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 and k % 2 == 1
                                            for k in self.kernel_sizes):
            raise ValueError("kernel_sizes must list odd positive ints (1, 3, 5, ...: a k x k stitcher is centred on "
                             f"its pixel), got {self.kernel_sizes!r}")
        check_architecture("preact_resnet", self.finetune_arch, ("width", "depth"),
                           "finetune_arch (the ResNet-164 family)")
        if not self.finetune_epochs > 0:
            raise ValueError(f"finetune_epochs must be > 0, got {self.finetune_epochs!r}")
        if not self.useless_ratio > 0:
            raise ValueError(f"useless_ratio must be > 0 (appended channels per channel), got {self.useless_ratio!r}")
        if not self.convergence_steps or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                 for n in self.convergence_steps):
            raise ValueError("convergence_steps must list stitcher step counts > 0 (ints), got "
                             f"{self.convergence_steps!r}")


def plan(p: AblationParams, profile: str, uses: dict) -> Plan:
    splits = Splits.of(p)
    recipe = p.recipe(p.arch, p.epochs)
    ft = dict(p.finetune_arch)
    ft_width, family = ft.pop("width", 1.0), family_name("preact_resnet", p.finetune_arch)
    ft_options = tuple(sorted(ft.items()))
    ft_recipe = p.recipe("preact_resnet", p.finetune_epochs)
    shape = p.data_info["shape"]
    comparisons, extra = [], []
    for i, (top_seed, seed) in enumerate(p.seed_pairs()):
        cols = pair_columns(i, top_seed, seed)
        top, bottom = (TrainedModel(f"ResNet-18 seed {sd}", p.arch, p.width, sd, splits.train, splits.test, recipe)
                       for sd in (top_seed, seed))
        # A k x k stitcher trains at lr / k: an Adam step moves every weight by about lr, so its output
        # moves about k times as far as a 1 x 1's (k^2 times the fan-in, random-walk scaling). With
        # the same lr, a short run would compare step sizes rather than what the kernels can express.
        comparisons += [compare(p, splits, top, bottom, dict(panel="kernel size", pair=f"k = {k}", value=float(k),
                                                             **cols, **machine("kernel_size", "trained", "trained")),
                                **({} if k == 1 else {"kernel_size": k, "lr": p.stitch_lr / k}))
                        for k in p.kernel_sizes]
        comparisons += [compare(p, splits, top, bottom, dict(panel="BatchNorm policy", pair=label, value=math.nan,
                                                             **cols, **machine("bn_policy", "trained", "trained")),
                                **options)
                        for label, options in (("frozen: eval mode (default)", {}),
                                               ("drift: train mode, as the original code", {"bn_policy": "drift"}))]
        comparisons += [compare(p, splits, top, bottom, dict(panel="initialisation", pair=label, value=math.nan,
                                                             **cols, **machine("init", "trained", "trained")),
                                **options)
                        for label, options in (("least squares (default)", {}), ("random", {"init": "random"}))]
        # Section 3's arguments, measured: useless Gaussian coordinates appended to the bottom's
        # representation (CKA falls, stitching throws them away) and its spatial positions
        # permuted (CKA is unchanged, a 1 x 1 stitcher cannot undo it). Beside each, the same
        # pair unchanged (the kernel panel's k = 1 comparison: one stitch in the store).
        for panel_id, panel, label, transform in (
                ("useless_coordinates", "useless coordinates",
                 f"+ {p.useless_ratio:g} x channels of Gaussian noise", ("useless_coordinates", p.useless_ratio)),
                ("permuted_positions", "permuted positions", "spatial positions permuted", ("permuted_positions",))):
            comparisons += [compare(p, splits, top, bottom, dict(panel=panel, pair=name, value=math.nan, **cols,
                                                                 **machine(panel_id, "trained", role)), **options)
                            for name, role, options in (("unchanged", "trained", {}),
                                                        (label, "transformed", {"transform": transform}))]
        random_seed = p.random_seed + i
        # The random control's BatchNorm: a fresh network's running statistics (eval mode, what 01
        # uses) against batch statistics, as the authors' code ran it (the whole stitched model in
        # train mode while the stitcher trained; `bn_policy="drift"`).
        random_bottom = RandomModel(f"ResNet-18 random {random_seed}", p.arch, p.width, random_seed,
                                    splits.train.num_classes)
        comparisons += [compare(p, splits, top, random_bottom, dict(panel="random control's BatchNorm", pair=label,
                                                                    value=math.nan,
                                                                    **pair_columns(i, top_seed, random_seed),
                                                                    **machine("random_bn", "trained", "random")),
                                **options)
                        for label, options in (("running statistics (eval mode, as 01)", {}),
                                               ("batch statistics (train mode, as the authors' code)",
                                                {"bn_policy": "drift"}))]
        if i == 0:
            # Stitcher convergence: penalty against steps, from a least-squares and a random start.
            default = stitch_steps(p, top)
            comparisons += [compare(p, splits, top, bottom, dict(panel="stitcher convergence", pair=init_label,
                                                                 value=float(n), **cols,
                                                                 **machine("convergence", "trained", "trained")),
                                    **({} if n == default else {"steps": n}), **init_options)
                            for init_label, init_options in (("least-squares start", {}),
                                                             ("random start", {"init": "random"}))
                            for n in sorted(set(p.convergence_steps) | {default})]
        ft_top = TrainedModel(f"{family} seed {top_seed}", "preact_resnet", ft_width, top_seed, splits.train,
                              splits.test, p.recipe("preact_resnet", p.epochs),
                              ft_options)
        ft_random = RandomModel(f"{family} random {random_seed}", "preact_resnet", ft_width, random_seed,
                                splits.train.num_classes, ft_options)
        ft_cols = dict(panel="fine-tuning vs stitching", value=math.nan, **pair_columns(i, top_seed, random_seed))
        comparisons.append(compare(p, splits, ft_top, ft_random, dict(pair="stitching", **ft_cols,
                                                                      **machine("finetune", "trained", "random"))))
        # Fine-tuning above each cut: the top layers start fresh, from a seed of their own, not
        # from the random network's.
        n_cuts = architecture_info("preact_resnet", ft_width, ft_options, shape)[0]
        extra += [TrainedModel(f"fine-tune {family} above cut {cut} (pair {i})", "preact_resnet", ft_width,
                               derived_seed(random_seed, "fine-tune"), splits.train, splits.test, ft_recipe, ft_options,
                               frozen=FrozenPrefix(ft_random, cut + 1))
                  for cut in range(n_cuts)]
    return Plan("ablations", profile, p, comparisons, extra=extra, uses=uses)


def run(s: Setup, others: dict[str, Setup] | None = None):
    from ..models import cut_points

    if others is None and set(s.plan.uses) != set(TABLE1_SOURCES):
        # Checked before any work: Table 1 would otherwise fail after the fine-tuning.
        raise ValueError("Table 1 needs the results of " + ", ".join(TABLE1_SOURCES) + "; "
                         + "; ".join(s.plan.notes) + ". Give them as ablations(run, others={name: setup(...)}), "
                         "or run 05 with parameters they accept")
    table, bar = run_plan(s, "ablations", extra_units=len(s.plan.extra))
    rows = []
    with bar:
        # Each fine-tuning run sits beside the stitching of the same random bottom into the same top.
        stitching = {c.bottom: c for c in s.plan.comparisons if c.columns["panel_id"] == "finetune"}
        for task in s.plan.extra:
            bar.set_postfix_str(task.label)
            beside = stitching[task.frozen.source]
            _, top_rec = s.runner.model(beside.top)
            _, rec = s.runner.model(task)
            cut = cut_points(s.runner.model(task.frozen.source)[0])[task.frozen.stages - 1]
            rows.append(row_of(dict(beside.columns, pair="fine-tuning", comparison="finetune"),
                               dict(cut_index=cut.index, cut=cut.name, error_init=math.nan, error=rec["test_error"],
                                    wrong_init=None, wrong=rec["wrong"]), top_rec, {}, math.nan))
            bar.update()
    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    return finish(s, table, models_frame(s), sources=table1_sources(s, others))


def table1_sources(s: Setup, others: dict[str, Setup] | None = None) -> dict[str, Results]:
    """The results Table 1 with our numbers is made from (`stitchlib.claims.table1`): 01-04 from the
    store (computed now if absent). `others` maps "connectivity", "ssl_vs_e2e", "label_noise" and
    "more_is_better" to their setups; by default, the plans this run made for them (this profile,
    this run's shared parameters), with this run's device, store and figures folder."""
    if others is None:
        others = {}
        for name, other in s.plan.uses.items():
            given = {k: v for k, v in other.params.as_dict().items() if v != other.params.default(k, s.profile)}
            others[name] = setup(name, profile=s.profile, device=s.device.type, store=str(s.store.root),
                                 figures_dir=str(s.figures), executor=s.executor, **given)
    return {name: EXPERIMENTS[name].run(others[name]) for name in TABLE1_SOURCES}


EXPERIMENT = register(Experiment(
    "ablations", "05_ablations", "Ablations and Table 1 (Figs. 4, 8)", AblationParams, plan, run,
    C.ablation_claims, plotting.ablation_figures, uses=TABLE1_SOURCES,
    columns=dict(panel_id={"kernel_size", "bn_policy", "init", "finetune", "useless_coordinates", "permuted_positions",
                           "random_bn", "convergence"}, top_role={"trained"},
                 bottom_role={"trained", "random", "transformed"}, comparison={"stitch", "finetune"})))

"""The plan/run machinery every experiment shares.

An experiment (one per notebook, registered in `stitchlib.experiments.EXPERIMENTS`) declares its
parameters (a `Params` class), builds a `Plan` from them (typed task specs, `tasks`) and turns the
plan's results into tidy tables. `setup` checks the parameters and plans before it loads any data;
`plan` does the same without loading anything, to see what a run would compute and cost.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import data as data_mod
from .. import locations
from .. import record as record_mod
from ..models import cut_points
from ..precision import check_precision
from ..store import Store
from ..tables import with_profile, write_csv
from ..training import Recipe, device_name, resolve_device
from .compute import KeyContext, Runner
from .executors import Executor, Where, cpu_count, jobs, make_executor, makespan
from .params import Common, Params
from .tasks import (CKA, Checkpoint, CKAMatrix, PretrainedStitch, RandomModel, SplitRef, Stitch, Task, TrainedModel,
                    architecture_info)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# Measured H200 throughput (bench/gpu_paper_scale.py, bench/results/gpu_paper_scale_h200_2026-11-28.json):
# the paper's ResNet-18 (width 1) trains at 16,725 images/s, 3 x 1.11 GFLOP each, so about 56 TFLOP/s
# of useful work; the stitcher pass (frozen nets) at 20,877 images/s. Every other task's time is its
# FLOPs at that rate: an estimate for planning, not a measurement of that task.
REFERENCE_GPU = "NVIDIA H200"
REFERENCE_FLOPS_PER_S = 16725 * 3 * 1.11084544e9
# The fast path's aggregate training rate over float32's that issue 13 asks of an H200 (65K against
# 16.7K images/s), used for estimates until bench/gpu_throughput.py has measured it on one.
FAST_PATH_TARGET_SPEEDUP = 4.0


def fast_path_speedup() -> tuple[float, str]:
    """(the fast path's speed-up over the fp32 reference, where the number comes from): the newest
    H200 measurement of bench/gpu_throughput.py under bench/results/ or results/, else the target."""
    import json
    import re

    def day(path):  # the date in the file's or its folder's name (a checkout's file times are its own)
        found = re.search(r"\d{4}-\d{2}-\d{2}", str(path.relative_to(REPO_ROOT)))
        return found.group(0) if found else ""

    found = sorted(list((REPO_ROOT / "bench" / "results").glob("gpu_throughput*.json"))
                   + list((REPO_ROOT / "results").glob("fast-*/gpu_throughput.json")), key=day)
    for path in reversed(found):
        report = json.loads(path.read_text())
        if not report.get("tiny") and REFERENCE_GPU.split()[-1] in report.get("device", ""):
            return report["resnet18_w1"]["ratio_best_over_fp32"], f"measured in {path.relative_to(REPO_ROOT)}"
    return FAST_PATH_TARGET_SPEEDUP, "the target of issue 13, not yet measured"


# A CPU core's useful rate on these models: the smoke suite's estimated 96 TFLOP took 1,850
# core-seconds on this project's 2-core Xeon (Ray, one thread per task; README timings).
CPU_FLOPS_PER_CORE = 96e12 / 1850


@dataclass
class Comparison:
    """One row group of a results table: `bottom` stitched into `top` at every cut (unless `stitch`
    is None: CKA only) and their CKA; its rows carry `columns`."""

    top: Task
    bottom: Task
    columns: dict
    stitch: Stitch | None
    cka: CKA


@dataclass
class Plan:
    """An experiment's task graph for one set of parameters: every task (dependencies first) and the
    comparisons its table is made of. `extra` holds tasks decided while running (freeze training,
    fine-tuning), listed for their cost; `uses` the plans of the other experiments it reads."""

    experiment: str
    profile: str
    params: Params
    comparisons: list[Comparison]
    extra: list[Task] = field(default_factory=list)
    uses: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        total = self.cost().iloc[-1]
        return (f"<Plan {self.experiment} at {self.profile}: {len(self.tasks())} tasks, {total['pflop']:,.3f} PFLOP, "
                f"about {total['gpu_hours']:,.2f} hours on one {REFERENCE_GPU}; .describe() lists them>")

    def describe(self, store: str | None = None, summary: bool = False) -> None:
        """Print every task, whether it is stored, and the estimated cost (as `python -m stitchlib plan`)."""
        changed = {k: v for k, v in self.params.as_dict().items() if v != self.params.default(k, self.profile)}
        print(plan_report(self.experiment, self.profile, store=store, summary=summary, **changed))

    def tasks(self, include_uses: bool = True) -> list[Task]:
        """Every task once, each after its dependencies."""
        seen: dict = {}

        def visit(task):
            if task in seen:
                return
            for dep in task.deps():
                visit(dep)
            seen[task] = None

        for c in self.comparisons:
            for t in (c.top, c.bottom, c.stitch, c.cka):
                if t is not None:
                    visit(t)
        for t in self.extra:
            visit(t)
        if include_uses:
            for other in self.uses.values():
                for t in other.tasks():
                    visit(t)
        return list(seen)

    def cost(self) -> pd.DataFrame:
        """Estimated cost per task kind: how many tasks, images processed, PFLOP and hours on the
        reference GPU at its measured throughput."""
        shape = self.params.data_info["shape"]
        rows = Counter(), Counter(), Counter()
        for t in self.tasks():
            what = _kind(t)
            images, flops = t.cost(shape)
            rows[0][what] += 1
            rows[1][what] += images
            rows[2][what] += flops
        out = pd.DataFrame([dict(task=k, count=rows[0][k], images=rows[1][k], pflop=rows[2][k] / 1e15,
                                 gpu_hours=rows[2][k] / REFERENCE_FLOPS_PER_S / 3600) for k in rows[0]])
        total = dict(task="total", count=out["count"].sum(), images=out["images"].sum(), pflop=out["pflop"].sum(),
                     gpu_hours=out["gpu_hours"].sum())
        return pd.concat([out, pd.DataFrame([total])], ignore_index=True)

    def wall_hours(self, gpus: int, gpu_fraction: float = 1.0, speedup: float = 1.0) -> float:
        """Estimated wall time (hours) of the whole plan through the Ray executor on `gpus` of the
        reference GPU, each task at the reference rate times `speedup` (the fast path's over fp32)
        times `gpu_fraction` (sharing a GPU is assumed to add no throughput beyond `speedup`),
        scheduled longest chain first. On one GPU it is the sum."""
        shape = self.params.data_info["shape"]
        todo, after = jobs(self.tasks(), None)
        seconds = {job: job.cost(shape)[1] / (REFERENCE_FLOPS_PER_S * speedup * gpu_fraction) for job in todo}
        return makespan(todo, after, seconds, max(1, int(gpus / gpu_fraction + 1e-9))) / 3600

    def table(self, keys: KeyContext | None = None) -> pd.DataFrame:
        """One row per task: kind, label, key (short), whether stored, images and GFLOP."""
        shape = self.params.data_info["shape"]
        rows = []
        for t in self.tasks():
            images, flops = t.cost(shape)
            key = keys.key(t) if keys else None
            stored = keys.stored(t) if keys else None
            rows.append(dict(task=_kind(t), label=t.label, key=key[:12] if key and len(key) == 64 else key or "",
                             stored={True: "yes", False: "no", None: "?"}[stored], images=images,
                             gflop=flops / 1e9))
        return pd.DataFrame(rows)


def _kind(task: Task) -> str:
    if isinstance(task, TrainedModel):
        if task.freezing():
            return "train (frozen stages)"
        return "train (SimCLR + probe)" if task.simclr_epochs is not None else "train"
    return {RandomModel: "random network", Checkpoint: "checkpoint", Stitch: "stitch (all cuts)",
            CKA: "CKA (all cuts)", CKAMatrix: "CKA (every pair of cuts)",
            PretrainedStitch: "stitch ImageNet (all cuts)"}[type(task)]


@dataclass(frozen=True)
class Experiment:
    """One notebook's experiment: its parameters, plan, run, claims and figures."""

    name: str                   # "connectivity"
    notebook: str               # "01_connectivity"
    title: str
    Params: type
    plan: Callable              # (params, profile, others) -> Plan
    run: Callable               # (Setup) -> Results
    claims: Callable            # (judge, Results) -> None
    figures: Callable           # (Results, summary, caption) -> {name: figure}
    # The machine columns of its table (MACHINE_COLUMNS) and the values each may take: what claims
    # and plots select rows by, beside the display labels (panel, pair, family...) they show.
    columns: dict = field(default_factory=dict)
    summary_by: tuple = ("panel", ("pair",))  # how `summarize` groups the per-cut numbers
    uses: tuple = ()            # the experiments whose results it reads


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def experiment_named(name: str) -> Experiment:
    """By experiment name ("connectivity") or notebook ("01_connectivity", "01_connectivity.ipynb")."""
    stem = Path(str(name)).name.removesuffix(".ipynb")
    for e in EXPERIMENTS.values():
        if stem in (e.name, e.notebook, e.notebook.split("_", 1)[0]):
            return e
    raise ValueError(f"unknown experiment or notebook {name!r}; valid: "
                     f"{sorted(e.name for e in EXPERIMENTS.values())} or {sorted(e.notebook for e in EXPERIMENTS.values())}")


def make_plan(experiment: str, profile: str = "smoke", *, others: dict | None = None, **params) -> Plan:
    """The plan of `experiment` at `profile` with `params`: checked, nothing loaded or trained.
    `others`: parameters of a run of several notebooks (`stitchlib run all -p ...`), which the
    experiments this one reads take where they declare them."""
    e = experiment_named(experiment)
    p = e.Params.resolve(profile, **params)
    uses, notes = {}, []
    for name in e.uses:
        other = EXPERIMENTS[name]
        # The same run's shared parameters (seeds, sizes, the stitcher...) carry over to the
        # experiments it reads, so that their results are those of this profile and these seeds.
        shared = {k: v for k, v in p.as_dict().items()
                  if k in Common.names() and k in other.Params.names() and v != p.default(k, profile)}
        shared.update({k: v for k, v in (others or {}).items() if k in other.Params.names()})
        try:
            uses[name] = make_plan(name, profile, **shared)
        except (ValueError, TypeError) as err:
            # Kept, not raised: a caller may give those results itself (ablations.run(s, others));
            # without them the run stops on this before any work.
            notes.append(f"{name} cannot be read at profile {profile!r} with this run's shared parameters "
                         f"{shared}: {err}")
    plan = e.plan(p, profile, uses)
    plan.notes += notes
    return plan


@dataclass
class Setup:
    """Everything an experiment needs: resolved parameters, device, data, store, output folders,
    and its plan."""

    experiment: str
    profile: str
    params: dict
    device: torch.device
    store: Store
    dataset: data_mod.Dataset
    figures: Path
    plan: Plan = None
    runner: Runner = None
    executor: Executor = None
    started: str = field(default_factory=record_mod.now)  # ISO 8601 UTC: the run's start, in its records

    def __getitem__(self, key):
        return self.params[key]

    def where(self) -> Where:
        return Where(self.dataset.name, str(data_mod.data_dir()), self.dataset.identity, str(self.store.root),
                     self.device.type, self.p.numerics())

    def compute(self, tasks: list[Task], desc: str | None = None) -> int:
        """Compute every task of `tasks` (with what they depend on) that the store lacks, on this
        run's executor; returns how many were computed. Results are read afterwards through the
        runner, from the store."""
        return self.executor.run(tasks, self.where(), self.runner.keys, self.p.data_info["shape"],
                                 desc or self.experiment, dataset=self.dataset)

    @property
    def p(self) -> Params:
        return self.plan.params

    def describe(self) -> None:
        """Print what will run: profile, device, data identity, store, parameters, the plan's size."""
        ident = self.dataset.identity
        git = record_mod.git_state()
        print(f"experiment {self.experiment} | profile {self.profile} | device {self.device} "
              f"({device_name(self.device)})")
        print(f"code       stitchlib {record_mod.environment()['code_version']}, git "
              f"{git['commit'][:12] + (' (modified)' if git['dirty'] else '') if git['commit'] else 'none'}; "
              f"started {self.started}")
        print(f"seeds      {len(self['seeds']) // 2} pairs (top, bottom): {self.p.seed_pairs()}; "
              f"intervals at {self['confidence']:.0%}")
        print(f"data       {ident['name']} from {ident['source']} (sha256 {ident['sha256'][:12]}...)")
        print(f"store      {self.store.root}")
        print(f"executor   {self.executor.name} ({self.p.threads} thread{'s' if self.p.threads > 1 else ''} per task)")
        print(f"numerics   {self.p.precision}{', compiled' if self.p.torch_compile else ''}, recipes {self.p.recipes}")
        print(f"figures    {self.figures}")
        for key, value in self.params.items():
            print(f"  {key:18s} {value}")


def check_setup(experiment: str, *, profile: str = "smoke", device: str = "auto", executor: str | Executor = "auto",
                ray_address: str = "", gpu_fraction: float = 0.25, others: dict | None = None,
                reach_cluster: bool = True, **params):
    """Every check `setup` makes before any work: parameters, device, precision, executor and its
    options (no data loaded, nothing stored; a cluster address is reached only with
    `reach_cluster`). Returns (plan, device, executor). `python -m stitchlib run|plan --check`
    stops here, without reaching the cluster."""
    if not isinstance(device, str):
        raise TypeError(f"parameter 'device' must be str, got {type(device).__name__} {device!r}")
    plan = make_plan(experiment, profile, others=others, **params)
    dev = resolve_device(device)
    check_precision(plan.params.precision, dev)
    if profile != "smoke" and dev.type == "cpu":
        # Allowed (a CPU check of a GPU profile at small sizes), but said when it would take long.
        flops = plan.cost()["pflop"].iloc[-1] * 1e15
        hours = flops / (CPU_FLOPS_PER_CORE * cpu_count()) / 3600
        if hours > 0.25:
            warnings.warn(f"the {profile} profile is sized for GPUs: {experiment_named(experiment).notebook}'s plan is "
                          f"about {flops / 1e15:,.2f} PFLOP, roughly {hours:,.1f} hours on this CPU's {cpu_count()} "
                          f"cores (at the {CPU_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s per core the smoke suite measured), "
                          "stored tasks included; give smaller sizes with -p/-y for a check on a CPU", UserWarning,
                          stacklevel=3)  # the caller of setup
    runs_on = make_executor(executor, ray_address=ray_address, gpu_fraction=gpu_fraction, device=dev.type,
                            threads=plan.params.threads, connect=reach_cluster)
    if runs_on.name == "ray" and dev.index is not None:
        raise ValueError(f"device={device!r}: with the ray executor give device 'cuda' (Ray gives each task its "
                         "GPU), or use executor='serial' to run on that one GPU")
    return plan, dev, runs_on


def setup(experiment: str, *, profile: str = "smoke", device: str = "auto", figures_dir: str | None = None,
          store: str | None = None, executor: str | Executor = "auto", ray_address: str = "",
          gpu_fraction: float = 0.25, others: dict | None = None, **params) -> Setup:
    """Check the parameters and plan the experiment (and any it reads) before anything is loaded;
    then load the data. Parameters left None take the profile's value.

    `executor` runs the tasks: "serial" (here, one after another), "ray" (Ray tasks: started inside
    the run, or on the cluster at `ray_address`; each takes `threads` CPUs, or `gpu_fraction` of
    a GPU) or "auto" (`stitchlib.experiments.executors.make_executor`). Same numbers either way.

    `figures_dir` defaults to $STITCHLIB_FIGURES/<profile>, else <checkout>/figures/<profile> in a
    source checkout, else <user data dir>/figures/<profile>; `store` to the artifact store's default
    ($STITCHLIB_STORE, else <checkout>/runs/store, else <user data dir>/store). Neither depends on the
    cwd (`stitchlib.locations`).
    """
    plan, dev, runs_on = check_setup(experiment, profile=profile, device=device, executor=executor,
                                     ray_address=ray_address, gpu_fraction=gpu_fraction, others=others, **params)
    st = Store(store)
    dataset = data_mod.load_dataset(plan.params.dataset)
    for key, split in (("train_samples", dataset.train), ("test_samples", dataset.test)):
        if getattr(plan.params, key) > len(split):
            raise ValueError(f"{key}={getattr(plan.params, key)} exceeds the {len(split)} images of the "
                             f"{'test' if key == 'test_samples' else 'training'} split")
    if figures_dir:
        figures = Path(figures_dir)
    else:
        figures = locations.figures_dir() / profile
    figures.mkdir(parents=True, exist_ok=True)
    e = experiment_named(experiment)
    return Setup(e.name, profile, plan.params.as_dict(), dev, st, dataset, figures, plan,
                 Runner(dataset, st, dev, plan.params.numerics()), runs_on)


def derived_seed(seed: int, what: str) -> int:
    """A seed of its own for a model compared with the one of `seed` (a weak or self-supervised
    bottom, fresh top layers), so that the two share neither initialisation nor data order."""
    return zlib.crc32(f"{what}/{seed}".encode()) % 2**31


def pair_columns(index: int, seed_top: int, seed_bottom: int) -> dict:
    """The columns that say which seed pair a row belongs to, and the seeds of its two models."""
    return dict(pair_index=index, seed_top=seed_top, seed_bottom=seed_bottom)


@dataclass(frozen=True)
class Splits:
    """The shared splits: nested subsets with fixed seeds, the same in every notebook, so that
    models and comparisons are shared through the store."""

    train: SplitRef
    test: SplitRef
    cka: SplitRef

    @classmethod
    def of(cls, p: Common) -> "Splits":
        info = p.data_info
        train = SplitRef("train", info["train"], info["num_classes"]).subset(p.train_samples, 0)
        test = SplitRef("test", info["test"], info["num_classes"]).subset(p.test_samples, 0)
        return cls(train, test, test.subset(p.cka_samples, 2))


def equal_steps(p: Common, recipe: Recipe, n: int) -> Recipe:
    """The recipe for a model trained on n images: as many SGD steps as the base model's
    (train_samples images for `epochs` epochs), as in the paper, whose recipe is 64K steps
    whatever the sample size. Steps are counted as the training loop takes them: whole batches
    (it drops the last partial one). The base model itself keeps its epochs-defined recipe, so
    the store shares it with the other notebooks."""
    if n == p.train_samples:
        return recipe
    steps = max(1, math.ceil(recipe.epochs * (p.train_samples // recipe.batch_size)))
    return dataclasses.replace(recipe, epochs=steps / (n // recipe.batch_size), steps=steps)


def stitch_images(p: Common, top_train: SplitRef) -> SplitRef:
    """The stitcher's training images: drawn from those its top was trained on (more data never
    leaks in through the stitcher), stitch_samples of them, or all of them if the top has fewer."""
    return top_train.subset(min(p.stitch_samples, top_train.size), 1)


def stitch_steps(p: Common, top: Task) -> int:
    """The stitcher's steps at the profile's length: `stitch_epochs` over its training images, in
    full batches of `stitching.stitch`'s default 128 (its loader drops the last partial one)."""
    images = stitch_images(p, top.train if isinstance(top, TrainedModel) else top.run.train).size
    return max(1, math.ceil(p.stitch_epochs * (images // 128)))


def stitch_settings(p: Common, **options) -> tuple:
    settings = dict(epochs=float(p.stitch_epochs), lr=p.stitch_lr, ls_samples=p.ls_samples)
    settings.update(options)  # a k x k stitcher brings its own lr
    return tuple(sorted(settings.items()))


# Every results table has these, whatever its experiment: which panel a row belongs to, the role of
# its top and bottom model, and what the row measures ("stitch": stitched and CKA; "cka_only";
# "finetune": a top retrained above a frozen bottom). Values are fixed identifiers, never labels.
MACHINE_COLUMNS = ("panel_id", "top_role", "bottom_role", "comparison")


def machine(panel_id: str, top_role: str, bottom_role: str, comparison: str = "stitch") -> dict:
    return dict(panel_id=panel_id, top_role=top_role, bottom_role=bottom_role, comparison=comparison)


def compare(p: Common, splits: Splits, top: Task, bottom: Task, columns: dict, *, stitch: bool = True,
            transform: tuple | None = None, **options) -> Comparison:
    """Stitch `bottom` into `top` (on images drawn from the top's training images) and take their
    CKA. `columns` carry the machine columns (`machine`) and the labels; `options` go to the
    stitcher (kernel_size, bn_policy, init, lr, steps); `transform` changes the bottom's
    representation for both the stitcher and CKA (`stitchlib.stitching.Transform`)."""
    if transform is not None:
        options["transform"] = tuple(transform)
    missing = set(MACHINE_COLUMNS) - set(columns)
    if missing:
        raise ValueError(f"a comparison's columns lack the machine columns {sorted(missing)}")
    if (columns["comparison"] == "cka_only") == stitch:
        raise ValueError(f"comparison={columns['comparison']!r} but stitch={stitch}")
    label = f"{bottom.label} into {top.label}"
    if stitch:
        train = stitch_images(p, top.train if isinstance(top, TrainedModel) else top.run.train)
        st = Stitch(label, top, bottom, train, splits.test, stitch_settings(p, **options))
    else:
        st = None
    # CKA's transform draws as the stitcher's does: from the stitcher's seed (stitching.stitch's 0).
    return Comparison(top, bottom, columns, st, CKA(f"CKA {label}", top, bottom, splits.cka, p.cka_estimator,
                                                    transform=None if transform is None else tuple(transform),
                                                    seed=options.get("seed", 0) if transform is not None else 0))


def units(plan: Plan) -> int:
    """Progress units: one per model, one per stitched cut, one per CKA pair."""
    shape = plan.params.data_info["shape"]
    n = len({t for c in plan.comparisons for t in (c.top, c.bottom)})
    for c in plan.comparisons:
        n += 1 + (architecture_info(c.top.arch, c.top.width, c.top.options, shape)[0] if c.stitch else 0)
    return n


def run_comparisons(s: Setup, bar) -> pd.DataFrame:
    """Get every model the comparisons name (store or training), then stitch and compare each.
    Returns the tidy rows."""
    runner = s.runner
    for model in dict.fromkeys(t for c in s.plan.comparisons for t in (c.top, c.bottom)):
        bar.set_postfix_str(model.label)
        runner.model(model)
        bar.update()
    rows = []
    for c in s.plan.comparisons:
        (top, top_rec), (_, bottom_rec) = runner.model(c.top), runner.model(c.bottom)
        n_cuts = len(cut_points(top))
        if c.stitch is not None:
            done = bar.n
            stitched = runner.stitch(c.stitch, bar=bar)
            bar.update(done + n_cuts - bar.n)  # a cached pair advanced nothing
        else:
            stitched = [dict(cut_index=cut.index, cut=cut.name, error_init=math.nan, error=math.nan, wrong_init=None,
                             wrong=None) for cut in cut_points(top)]
        bar.set_postfix_str(c.cka.label)
        cka = runner.cka(c.cka)
        bar.update()
        rows += [row_of(c.columns, row, top_rec, bottom_rec, value) for row, value in zip(stitched, cka)]
    return pd.DataFrame(rows)


def run_plan(s: Setup, desc: str, extra_units: int = 0):
    """A progress bar over the plan, its comparisons run. Returns (table, bar): the bar stays open
    for what the experiment runs after the comparisons."""
    # Everything the plan names goes through the executor first (in parallel where it can), so
    # what follows only reads the store.
    s.compute(s.plan.tasks(), desc)
    # Each run reads the store afresh: nothing computed by an earlier run in this process is reused
    # unless the store still holds it (verified).
    s.runner = Runner(s.dataset, s.store, s.device, s.p.numerics())
    bar = tqdm(total=units(s.plan) + extra_units, desc=desc)
    return run_comparisons(s, bar), bar


def row_of(columns: dict, cut_row: dict, top_rec: dict, bottom_rec: dict, cka: float) -> dict:
    """One tidy row: what identifies the pair (with its seeds), the cut and its errors, and the
    penalties (stitched error minus the top's, at initialisation and after training). Columns
    starting with "_" hold per-image correctness (bool tensors) for the intervals; they stay out
    of the CSVs."""
    top_error = top_rec["test_error"]
    cut_row = dict(cut_row)
    wrong_init, wrong = cut_row.pop("wrong_init"), cut_row.pop("wrong")
    return dict(**columns, **cut_row, top_error=top_error, bottom_error=bottom_rec.get("test_error", math.nan),
                penalty_init=cut_row["error_init"] - top_error, penalty=cut_row["error"] - top_error, cka=cka,
                _wrong_top=top_rec.get("wrong"), _wrong_bottom=bottom_rec.get("wrong"), _wrong_init=wrong_init,
                _wrong=wrong)


@dataclass
class Results:
    """An experiment's tidy rows (one per pair and cut), its base models, and, where the
    experiment has them, training curves."""

    table: pd.DataFrame
    models: pd.DataFrame
    setup: Setup = field(repr=False)
    curves: pd.DataFrame | None = None
    notes: list = field(default_factory=list)
    # 01: CKA between every pair of cuts of its first seed pair (the layer-by-layer heatmap).
    cka_matrix: pd.DataFrame | None = None
    # The other experiments' results an experiment summarises (05's Table 1), by experiment name.
    sources: dict = field(default_factory=dict, repr=False)

    @property
    def experiment(self) -> Experiment:
        return EXPERIMENTS[self.setup.experiment]


def models_frame(s: Setup) -> pd.DataFrame:
    """The base models of the comparisons: name, width, seed, test error."""
    # By label: one artifact may serve under two names (04's top is also its width panel's model).
    models = {t.label: t for c in s.plan.comparisons for t in (c.top, c.bottom)}
    return pd.DataFrame([dict(model=label, width=m.width,
                              seed=getattr(m.run if isinstance(m, Checkpoint) else m, "seed", None),
                              test_error=s.runner.model(m)[1].get("test_error", math.nan))
                         for label, m in models.items()])


def finish(s: Setup, table: pd.DataFrame, models: pd.DataFrame, **kw) -> Results:
    """The experiment's results: its rows and base models carry the run's profile (first column) as
    well as their seeds; the rows go to <notebook>.csv with its record beside it."""
    table, models = with_profile(table, s.profile), with_profile(models, s.profile)
    write_csv(table, s.figures / f"{EXPERIMENTS[s.experiment].notebook}.csv", record=s)
    return Results(table, models, s, **kw)


def plan_report(experiment: str, profile: str = "smoke", *, store: str | None = None, device: str = "auto",
                summary: bool = False, **params) -> str:
    """The plan as text: what runs, what is stored already, and what it costs. Nothing is loaded:
    store keys use the data's identity as last loaded (`stitchlib.data.last_identity`)."""
    plan = make_plan(experiment, profile, **params)
    p = plan.params
    e = experiment_named(experiment)
    identity = data_mod.last_identity(p.dataset)
    # Keys include the device type: a plan made on a laptop for a GPU run says device="cuda".
    kind = resolve_device("auto").type if device == "auto" else str(device).split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    keys = KeyContext(Store(store), identity, kind, p.data_info["shape"][0], p.numerics())
    changed = {k: v for k, v in p.as_dict().items() if v != p.default(k, profile)}
    lines = [f"plan of {e.notebook} ({e.title}) at profile {profile}",
             f"parameters changed from the profile: {changed or 'none'}",
             f"data: {identity['name'] + ' sha256 ' + identity['sha256'][:12] if identity else p.dataset + ': no identity recorded in this data folder (never loaded here), so store keys are unknown (?)'}",
             f"store: {keys.store.root} (keys for device {kind})"]
    if plan.uses:
        lines.append(f"reads the results of {', '.join(plan.uses)} (their tasks are included below)")
    lines += [f"note: {n}" for n in plan.notes]
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.max_colwidth", 80):
        if not summary:
            table = plan.table(keys)
            lines += ["", table.to_string(index=False, formatters={"images": "{:,.0f}".format,
                                                                    "gflop": "{:,.1f}".format})]
            stored = (table["stored"] == "yes").sum()
            lines.append(f"{stored} of {len(table)} tasks stored; '?': key known only when running "
                         "(decided from results, or data never loaded)")
        cost = plan.cost()
        lines += ["", f"estimated cost (hours on one {REFERENCE_GPU} at the fp32 throughput measured in "
                      "bench/results/gpu_paper_scale_h200_2026-11-28.json; stored tasks included):",
                  cost.to_string(index=False, formatters={"images": "{:,.0f}".format, "pflop": "{:,.3f}".format,
                                                          "gpu_hours": "{:,.2f}".format}),
                  f"estimated wall time through the ray executor, one task per GPU: {plan.wall_hours(1):,.2f} h on "
                  f"1 {REFERENCE_GPU}, {plan.wall_hours(8):,.2f} h on 8 (tasks start longest chain first; the "
                  "longest chain bounds it)"]
        if p.precision == "bf16":
            speedup, source = fast_path_speedup()
            lines.append(f"at the fast path's speed-up over fp32 (x{speedup:g}, {source}): "
                         f"{plan.wall_hours(1, speedup=speedup) * 60:,.1f} min on 1 {REFERENCE_GPU}, "
                         f"{plan.wall_hours(8, speedup=speedup) * 60:,.1f} min on 8")
    return "\n".join(lines)

"""Running task specs: each stored artifact is computed here, and only here.

This module is one of the computing modules whose source the store's code version covers
(`stitchlib.store.COMPUTING_MODULES`): editing it changes the keys of what it computes. The
experiment modules, which only say what to compute, are not covered, so editing a notebook's
pipeline keeps every trained model.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import data as data_mod
from ..models import build_model, cut_points, spine
from ..precision import autocast
from ..similarity import CKAAccumulator, CKAMatrix as CKAMatrixAccumulator
from ..ssl import train_simclr
from ..stitching import make_transform, stitch
from ..store import Store
from ..training import misclassified, percent, train_model
from .tasks import CKA, Checkpoint, CKAMatrix, RandomModel, SplitRef, Stitch, Task, TrainedModel


@dataclass(frozen=True)
class Numerics:
    """How a task's arithmetic is done, beyond its configuration: CPU threads, precision ("fp32"
    or "bf16") and whether training compiles its model. Each changes the numbers."""

    threads: int = 1
    precision: str = "fp32"
    compile: bool = False


def placement(device: str, numerics: Numerics) -> dict:
    """Where and how a task ran, as its store config records it: the device type, the precision,
    whether it was compiled, and on a CPU the thread count, since a CPU's results change with it
    (reductions split differently)."""
    out = dict(device=device, precision=numerics.precision)
    if numerics.compile:
        out["compile"] = True
    if device == "cpu":
        out["threads"] = int(numerics.threads)
    return out


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a computation on `n` CPU threads, whatever the process had before (and restore it):
    each task sets its own, so a task gives the same numbers in any process and executor."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threaded(n: int, compute):
    def run():
        with torch_threads(n):
            return compute()
    return run


@dataclass
class KeyContext:
    """What a task's store key depends on besides the task: the data's identity (None while the
    data has never been loaded), the device type, the images' channels and the numerics (CPU
    threads per task, precision, compiling)."""

    store: Store
    identity: dict | None
    device: str
    in_channels: int
    numerics: Numerics = Numerics()
    _keys: dict = field(default_factory=dict, repr=False)

    def key(self, task: Task) -> str | None:
        """The task's content key, or None where it cannot be known before running (data never
        loaded, a freeze-training prefix decided from results, a pretrained network's digest)."""
        if task in self._keys:
            return self._keys[task]
        key = None
        if isinstance(task, RandomModel):
            key = task.key()
        elif isinstance(task, Checkpoint):
            run = self.key(task.run)
            key = None if run is None else f"{run}@epoch{float(task.epoch):g}"
        elif self.identity is not None and isinstance(task, (TrainedModel, Stitch, CKA)):
            deps = [self.key(d) for d in task.deps()]
            if None not in deps and not (isinstance(task, TrainedModel)
                                         and any(f.stages is None for f in task.freezing())):
                key = self.store.key(task.kind, self.config(task, deps))
        self._keys[task] = key
        return key

    def config(self, task: Task, dep_keys: list) -> dict:
        if isinstance(task, TrainedModel):
            config = task.config(self.identity, self.device, self.in_channels, dep_keys)
        elif isinstance(task, Stitch):
            config = task.config(self.identity, self.device, top_key=dep_keys[0], bottom_key=dep_keys[1])
        else:
            config = task.config(self.identity, self.device, a_key=dep_keys[0], b_key=dep_keys[1])
        return {**config, **placement(self.device, self.numerics)}

    def stored(self, task: Task) -> bool | None:
        """Whether the task's artifact is in the store (None: its key is not known yet)."""
        if isinstance(task, RandomModel):
            return True  # built in milliseconds, never stored
        if isinstance(task, Checkpoint):
            return self.stored(task.run)
        key = self.key(task)
        return None if key is None else (self.store.root / task.kind / f"{key}.pt").exists()


class Runner:
    """Runs specs against loaded data: materialises splits, trains or loads models, stitches and
    compares them, each through the store and each with the given numerics (CPU threads,
    precision, compiling). Results are memoised per runner."""

    def __init__(self, dataset: data_mod.Dataset, store: Store, device: torch.device,
                 numerics: Numerics = Numerics()):
        self.dataset, self.store, self.device, self.numerics = dataset, store, device, numerics
        self.keys = KeyContext(store, dataset.identity, device.type, dataset.train.images.shape[1], numerics)
        self._splits: dict = {}
        self._models: dict = {}

    def compute(self, task: Task) -> None:
        """Make sure the task's artifact is in the store (what an executor's worker runs)."""
        if isinstance(task, Stitch):
            self.stitch(task, quiet=True)
        elif isinstance(task, CKAMatrix):
            self.cka_matrix(task)
        elif isinstance(task, CKA):
            self.cka(task)
        elif isinstance(task, (TrainedModel, Checkpoint, RandomModel)):
            self.model(task)
        else:
            raise TypeError(f"{task.label}: a {type(task).__name__} is computed by its experiment, not by a worker")

    # ------------------------------------------------------------------ data

    def split(self, ref: SplitRef) -> data_mod.Split:
        if ref not in self._splits:
            if not ref.steps:
                out = self.dataset.train if ref.base == "train" else self.dataset.test
            else:
                parent = self.split(SplitRef(ref.base, 0, 0, ref.steps[:-1]))
                step = ref.steps[-1]
                if step[0] == "subset":
                    out = data_mod.subset(parent, step[1], seed=step[2])
                elif step[0] == "disjoint_subsets":
                    out = data_mod.disjoint_subsets(parent, list(step[1]), seed=step[2])[step[3]]
                elif step[0] == "label_noise":
                    out = data_mod.with_label_noise(parent, step[1], seed=step[2])
                elif step[0] == "coarse":
                    out = data_mod.coarse_labels(parent)
                else:
                    raise ValueError(f"unknown split step {step!r}")
            self._splits[ref] = out
        return self._splits[ref]

    # ------------------------------------------------------------------ models

    def model(self, task: Task, progress: bool = False) -> tuple[torch.nn.Module, dict]:
        """(model in eval mode on the device, record with its key, test error and per-image errors)."""
        if task not in self._models:
            if isinstance(task, RandomModel):
                net = build_model(task.arch, seed=task.seed, width=task.width, num_classes=task.num_classes,
                                  in_channels=self.keys.in_channels, **dict(task.options))
                self._models[task] = (net.to(self.device).eval(), {"key": task.key()})
            elif isinstance(task, Checkpoint):
                _, record = self.model(task.run, progress)
                self._models[task] = record["checkpoints"][float(task.epoch)]
            else:
                self._models[task] = self._trained(task, progress)
        return self._models[task]

    def _build(self, task: TrainedModel) -> torch.nn.Module:
        return build_model(task.arch, seed=task.seed, width=task.width, num_classes=task.train.num_classes,
                           in_channels=self.keys.in_channels, **dict(task.options))

    def _trained(self, task: TrainedModel, progress: bool):
        ds, device = self.dataset, self.device
        train_split, test_split = self.split(task.train), self.split(task.test)
        if any(f.stages is None for f in task.freezing()):
            raise ValueError(f"{task.label}: the frozen stages must be decided before the model is trained")
        # (source model, its record, stages) of the frozen prefix and of the frozen top layers.
        frozen, frozen_top = ((*self.model(f.source), f.stages) if f is not None else None
                              for f in (task.frozen, task.frozen_top))
        config = self.keys.config(task, [f[1]["key"] for f in (frozen, frozen_top) if f is not None])
        recipe, checkpoints = task.recipe, task.checkpoints

        def evaluate(state_dict):
            model = self._build(task)
            model.load_state_dict(state_dict)
            return misclassified(model, test_split, ds.mean, ds.std, device=device, precision=precision)

        precision = self.numerics.precision

        def compute():
            model = self._build(task)
            n_frozen = n_frozen_top = 0
            if frozen is not None:
                source, _, n_frozen = frozen
                for mine, theirs in zip(spine(model)[:n_frozen], spine(source)[:n_frozen]):
                    mine.load_state_dict(theirs.state_dict())
            if frozen_top is not None:
                source, _, n_frozen_top = frozen_top
                for mine, theirs in zip(spine(model)[len(spine(model)) - n_frozen_top:],
                                        spine(source)[len(spine(source)) - n_frozen_top:]):
                    mine.load_state_dict(theirs.state_dict())
            start = time.perf_counter()
            if task.simclr_epochs is not None:
                train_simclr(model, train_split, ds.mean, ds.std, epochs=task.simclr_epochs, seed=task.seed,
                             device=device, progress=progress, precision=precision)
                n_frozen = len(spine(model)) - 1  # a linear classifier on frozen features
            # The same run without checkpoints may be stored already (01's base models are 04's
            # training-time run): its end is then known, and only the early part needs training.
            known_end = (self.store.load("model", self.keys.config(task.plain(), []))
                         if checkpoints and not task.freezing() and task.simclr_epochs is None and recipe.steps is None
                         and all(0 < c <= recipe.epochs for c in checkpoints) else None)
            kw = dict(seed=task.seed, device=device, frozen=n_frozen, frozen_top=n_frozen_top, progress=progress,
                      precision=precision,
                      compile=self.numerics.compile, desc=f"{task.arch} w={task.width} seed={task.seed}")
            if known_end is None:
                saved = train_model(model, train_split, ds.mean, ds.std, recipe, checkpoints=tuple(checkpoints), **kw)
                wrong = misclassified(model, test_split, ds.mean, ds.std, device=device, precision=precision)
            else:
                early = tuple(c for c in checkpoints if c < recipe.epochs)
                saved = (train_model(model, train_split, ds.mean, ds.std, recipe, checkpoints=early,
                                     until=max(early), **kw) if early else {})
                saved[recipe.epochs] = known_end["state_dict"]
                model.load_state_dict(known_end["state_dict"])
                wrong = unpack_wrong(known_end["test_wrong"])
            seconds = time.perf_counter() - start
            record = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "test_error": percent(wrong),
                      "test_wrong": pack_wrong(wrong), "train_seconds": seconds}
            if checkpoints:
                epochs = sorted(saved)
                wrongs = [evaluate(saved[e]) if e != epochs[-1] else wrong for e in epochs]
                record["curve"] = [[float(e), percent(w)] for e, w in zip(epochs, wrongs)]
                record["curve_wrong"] = [pack_wrong(w) for w in wrongs]
                if task.keep_checkpoints:
                    record["checkpoints"] = {repr(float(e)): saved[e] for e in epochs}
            return record

        stored = self.store.cached("model", config, threaded(self.numerics.threads, compute))
        model = self._build(task)
        model.load_state_dict(stored["state_dict"])
        model.to(device).eval()
        key = self.store.key("model", config)
        record = {"key": key, "test_error": stored["test_error"], "wrong": unpack_wrong(stored["test_wrong"])}
        if checkpoints:
            record["curve"] = [tuple(point) for point in stored["curve"]]
            record["curve_wrong"] = [unpack_wrong(w) for w in stored["curve_wrong"]]
        if task.keep_checkpoints:
            wrongs = {e: w for (e, _), w in zip(record["curve"], record["curve_wrong"])}
            record["checkpoints"] = {}
            for name, state in stored["checkpoints"].items():
                at = self._build(task)
                at.load_state_dict(state)
                w = wrongs[float(name)]
                record["checkpoints"][float(name)] = (at.to(device).eval(),
                                                      {"key": f"{key}@epoch{float(name):g}",
                                                       "test_error": percent(w), "wrong": w})
        return model, record

    # ------------------------------------------------------------------ comparisons

    def stitch(self, task: Stitch, bar=None, quiet: bool = False) -> list[dict]:
        """Every cut's errors (at initialisation and after training) and per-image correctness."""
        (top, top_rec), (bottom, bottom_rec) = self.model(task.top), self.model(task.bottom)
        return stitch_all_cuts(self.store, self.dataset, self.device, bottom, bottom_rec, top, top_rec,
                               train_split=self.split(task.train), test_split=self.split(task.test), label=task.label,
                               bar=bar, numerics=self.numerics, quiet=quiet, **dict(task.settings))

    def cka(self, task: CKA) -> list[float]:
        (a, rec_a), (b, rec_b) = self.model(task.a), self.model(task.b)
        return cka_all_cuts(self.store, self.dataset, self.device, a, rec_a, b, rec_b, self.split(task.images),
                            task.estimator, task.batch_size, numerics=self.numerics, transform=task.transform,
                            seed=task.seed)


    def cka_matrix(self, task: CKAMatrix) -> dict:
        """{"cka": rows of A's cuts by columns of B's cuts, "cuts_a": names, "cuts_b": names}."""
        (a, rec_a), (b, rec_b) = self.model(task.a), self.model(task.b)
        return cka_every_pair_of_cuts(self.store, self.dataset, self.device, a, rec_a, b, rec_b,
                                      self.split(task.images), task.estimator, task.batch_size,
                                      numerics=self.numerics)


def stitch_all_cuts(store: Store, dataset, device, bottom, bottom_rec, top, top_rec, *, train_split, test_split,
                    label: str, numerics: Numerics, bar=None, quiet: bool = False, **stitch_kw) -> list[dict]:
    """Stitch `bottom` into `top` at every cut point (cached as one artifact per pair), with
    `numerics` (CPU threads, precision). `bar`, when given, is a progress bar whose postfix names the pair;
    without one the stitcher shows its own, unless `quiet`."""
    config = dict(bottom=bottom_rec["key"], top=top_rec["key"], data=dataset.identity,
                  train_split=[list(s) for s in train_split.recipe], test_split=[list(s) for s in test_split.recipe],
                  **placement(device.type, numerics), **stitch_kw)

    def compute():
        cuts = cut_points(top)
        # A k x k kernel needs a feature map: pooled vectors only take the linear stitcher. Nor has a
        # pooled vector spatial positions to permute: such cuts are skipped (their rows stay empty).
        positions = (stitch_kw.get("transform") or [None])[0] == "permuted_positions"
        usable = [c.index for c in cuts if (stitch_kw.get("kernel_size", 1) == 1 or c.kind == "map")
                  and not (positions and c.kind == "vector")]
        if bar is not None:
            bar.set_postfix_str(f"stitch {label} at {len(usable)} cuts")
        # Every cut in one pass over the data: the bottom runs once per batch for all of them.
        results = stitch(bottom, top, usable, dataset, train=train_split, test=test_split,
                         top_error=top_rec["test_error"], device=device, progress=bar is None and not quiet,
                         precision=numerics.precision, **stitch_kw)
        found = {r.cut.index: r for r in results}
        rows = []
        for c in cuts:
            r = found.get(c.index)
            rows.append(dict(cut_index=c.index, cut=c.name, error_init=r.error_init if r else math.nan,
                             error=r.error if r else math.nan, wrong_init=pack_wrong(r.wrong_init) if r else None,
                             wrong=pack_wrong(r.wrong) if r else None))
        return {"rows": rows}

    rows = store.cached("stitch", config, threaded(numerics.threads, compute))["rows"]
    return [{**row, "wrong_init": unpack_wrong(row["wrong_init"]), "wrong": unpack_wrong(row["wrong"])} for row in rows]


@torch.no_grad()
def cka_all_cuts(store: Store, dataset, device, model_a, rec_a, model_b, rec_b, images: data_mod.Split,
                 estimator: str, batch_size: int = 250, *, numerics: Numerics, transform: tuple | None = None,
                 seed: int = 0) -> list[float]:
    """Linear CKA between A and B at every cut point, in one pass over `images` (cached), with
    `numerics`: the forward passes at its precision, CKA itself in float64. `transform` changes
    B's representation at each cut first (`stitching.Transform`, seeded as the stitcher's is); a
    cut it cannot take (positions of a pooled vector) gets NaN."""
    config = dict(a=rec_a["key"], b=rec_b["key"], data=dataset.identity, images=[list(s) for s in images.recipe],
                  estimator=estimator, batch_size=batch_size, **placement(device.type, numerics))
    if transform is not None:
        config.update(transform=list(transform), seed=seed)

    def compute():
        cuts = cut_points(model_a)
        skipped = {c.index for c in cut_points(model_b)
                   if transform is not None and transform[0] == "permuted_positions" and c.kind == "vector"}
        changes = [torch.nn.Identity() if c.index in skipped else make_transform(transform, c, seed, model_b)
                   for c in cut_points(model_b)]
        accs = [CKAAccumulator(estimator) for _ in cuts]
        loader = data_mod.DeviceLoader(images, dataset.mean, dataset.std, batch_size=batch_size, device=device)
        stages_a, stages_b = spine(model_a), spine(model_b)
        for x, _ in loader:
            ha, hb = x, x
            for stage_a, stage_b, change, acc in zip(stages_a, stages_b, changes, accs):
                # Walk both spines stage by stage: every cut's features from a single forward pass.
                with autocast(device, numerics.precision):
                    ha, hb = stage_a(ha), stage_b(hb)
                acc.update(ha, change(hb))
        return {"cka": [math.nan if i in skipped else acc.value() for i, acc in enumerate(accs)]}

    return store.cached("cka", config, threaded(numerics.threads, compute))["cka"]


@torch.no_grad()
def cka_every_pair_of_cuts(store: Store, dataset, device, model_a, rec_a, model_b, rec_b, images: data_mod.Split,
                           estimator: str, batch_size: int = 250, *, numerics: Numerics) -> dict:
    """Linear CKA between every cut of A and every cut of B (cached), from one pass over `images`:
    each cut's features once per batch, each layer's statistics once (`similarity.CKAMatrix`)."""
    config = dict(a=rec_a["key"], b=rec_b["key"], data=dataset.identity, images=[list(s) for s in images.recipe],
                  estimator=estimator, batch_size=batch_size, **placement(device.type, numerics))

    def features(model, x):
        out, h = [], x
        for stage, _ in zip(spine(model), cut_points(model)):
            with autocast(device, numerics.precision):
                h = stage(h)
            out.append(h)
        return out

    def compute():
        matrix = CKAMatrixAccumulator(estimator)
        loader = data_mod.DeviceLoader(images, dataset.mean, dataset.std, batch_size=batch_size, device=device)
        for x, _ in loader:
            matrix.update(features(model_a, x), features(model_b, x))
        return {"cka": torch.as_tensor(matrix.value(), dtype=torch.float64),
                "cuts_a": [c.name for c in cut_points(model_a)], "cuts_b": [c.name for c in cut_points(model_b)]}

    return store.cached("cka_matrix", config, threaded(numerics.threads, compute))


def pack_wrong(wrong: torch.Tensor | None):
    """Per-image correctness as bits (uint8), a few hundred bytes per model and cut in the store."""
    if wrong is None:
        return None
    return {"n": len(wrong), "bits": torch.from_numpy(np.packbits(wrong.numpy().astype(bool)))}


def unpack_wrong(packed) -> torch.Tensor | None:
    if packed is None:
        return None
    return torch.from_numpy(np.unpackbits(packed["bits"].numpy(), count=packed["n"]).astype(bool))

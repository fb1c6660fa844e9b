"""Typed task specs: what an experiment computes, as data.

A plan is a list of these specs. Building one trains nothing, loads no weights and reads no
images: a spec names its data by a `SplitRef` (which subset of which split, with which
transforms), its models by other specs, and its configuration completely, so that its store key,
its dependencies and its cost (images processed, FLOPs) follow from the spec alone. Running a
spec (`stitchlib.experiments.compute`) turns the same configuration into the stored artifact.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import build_model, cut_points
from ..training import Recipe

# FLOPs of a training step per image, in forward passes: the forward, then a backward of about twice that.
TRAIN_PASSES = 3.0
# SimCLR: two augmented views per image, each a forward and a backward.
SIMCLR_PASSES = 2 * TRAIN_PASSES
# A stitcher's step, per cut, in forward passes of the whole network: the top above the cut (half the
# network, averaged over the cuts) forward and backward to reach the stitcher. The bottom runs once
# per batch for all cuts, up to the deepest: about one pass. One cut at width 1 then predicts
# 1 / (1 + 1.5) of the training rate: 20,100 images/s at the reference rate, against the 20,877
# measured for the stitcher on an H200 (bench/results/gpu_paper_scale_h200_2026-11-28.json).
STITCH_PASSES_PER_CUT = 1.5
EVAL_PASSES_PER_CUT = 0.5


@dataclass(frozen=True)
class SplitRef:
    """A split by recipe: `base` ("train" or "test" split of the dataset), then `steps` (the same
    tuples `stitchlib.data` records in `Split.recipe`); `size` images of `num_classes` classes."""

    base: str
    size: int
    num_classes: int
    steps: tuple = ()

    def subset(self, n: int, seed: int) -> "SplitRef":
        if not 0 < n <= self.size:
            raise ValueError(f"a subset of {n} images of a split of {self.size}: valid sizes are 1 to {self.size}")
        return dataclasses.replace(self, size=int(n), steps=self.steps + (("subset", int(n), int(seed)),))

    def halves(self, seed: int) -> tuple["SplitRef", "SplitRef"]:
        sizes = (self.size // 2,) * 2
        return tuple(dataclasses.replace(self, size=sizes[k], steps=self.steps + (("disjoint_subsets", sizes,
                                                                                  int(seed), k),))
                     for k in range(2))

    def label_noise(self, p: float, seed: int) -> "SplitRef":
        return dataclasses.replace(self, steps=self.steps + (("label_noise", float(p), int(seed)),))

    def coarse(self) -> "SplitRef":
        return dataclasses.replace(self, num_classes=2, steps=self.steps + (("coarse",),))

    def recipe(self) -> list:
        """As stored in the artifact configs (the form `Split.recipe` had there)."""
        return [list(step) for step in self.steps]


IMAGENET_RESNET50 = "torchvision_resnet50"  # the pretrained ImageNet networks of Fig. 2B


@functools.lru_cache(maxsize=None)
def architecture_info(arch: str, width: float, options: tuple, shape: tuple = (3, 32, 32)) -> tuple[int, float]:
    """(number of cut points, forward FLOPs per image) of an architecture, from a model built on the
    meta device (no memory, no weights; a CPU build where an architecture cannot run on meta)."""
    def measure(device):
        with torch.device(device):
            if arch == IMAGENET_RESNET50:
                import torchvision

                model = torchvision.models.resnet50()
            else:
                model = build_model(arch, seed=0, width=width, in_channels=shape[0], **dict(options))
        n_cuts = len(cut_points(model))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.empty(1, *shape, device=device))
        return n_cuts, float(counter.get_total_flops())

    try:
        return measure("meta")
    except (RuntimeError, NotImplementedError):  # some spines measure their cuts on a CPU tensor
        return measure("cpu")


class Task:
    """Base of the specs. `kind` names the store folder (None: not stored); `label` is for people."""

    kind: str | None = None

    def deps(self) -> tuple:
        return ()

    def __post_init__(self):
        # A width of 1 and of 1.0 is one model: one store key, one task.
        if any(f.name == "width" for f in dataclasses.fields(self)):
            object.__setattr__(self, "width", float(self.width))


@dataclass(frozen=True)
class RandomModel(Task):
    """The random control: a freshly built, untrained network from its own seed."""

    label: str = field(compare=False)  # for people; two specs that differ only in it are one task
    arch: str
    width: float
    seed: int
    num_classes: int
    options: tuple = ()

    def cost(self, shape) -> tuple[float, float]:
        return 0.0, 0.0

    def key(self) -> str:
        return (f"random:{self.arch}:{self.width}:{self.seed}:"
                + ",".join(f"{k}={v}" for k, v in sorted(self.options)))


@dataclass(frozen=True)
class FrozenPrefix:
    """The first `stages` spine stages copied from `source` and kept fixed (None: decided when the
    experiment runs, from results the plan cannot know)."""

    source: Task
    stages: int | None


@dataclass(frozen=True)
class FrozenSuffix:
    """The last `stages` spine stages (the classifier among them) copied from `source` and kept
    fixed: the top layers of Appendix B.4's freeze training (None: decided when it runs)."""

    source: Task
    stages: int | None


@dataclass(frozen=True)
class TrainedModel(Task):
    """A network trained with `recipe` on `train` and evaluated on `test`. `checkpoints`: epochs at
    which its test error is recorded (and, with `keep_checkpoints`, its weights kept); `frozen`:
    freeze training; `simclr_epochs`: self-supervised first, then a linear classifier."""

    kind = "model"
    label: str = field(compare=False)  # for people; two specs that differ only in it are one task
    arch: str
    width: float
    seed: int
    train: SplitRef
    test: SplitRef
    recipe: Recipe
    options: tuple = ()
    checkpoints: tuple = ()
    keep_checkpoints: bool = False
    frozen: FrozenPrefix | None = None
    simclr_epochs: float | None = None
    frozen_top: FrozenSuffix | None = None

    def deps(self) -> tuple:
        return tuple(f.source for f in self.freezing())

    def freezing(self) -> list:
        """The frozen parts, in the order of `deps`: the prefix, then the top layers."""
        return [f for f in (self.frozen, self.frozen_top) if f is not None]

    def steps(self) -> int:
        """The SGD steps the training loop takes (it drops the last partial batch of each epoch)."""
        per_epoch = max(1, self.train.size // self.recipe.batch_size)
        return self.recipe.steps or max(1, math.ceil(self.recipe.epochs * per_epoch))

    def cost(self, shape) -> tuple[float, float]:
        """(images processed, FLOPs): training, SimCLR, and the test evaluations."""
        _, flops = architecture_info(self.arch, self.width, self.options, shape)
        trained = self.steps() * self.recipe.batch_size
        evaluated = self.test.size * (1 + len(self.checkpoints))
        work = trained * TRAIN_PASSES + evaluated
        images = trained + evaluated
        if self.simclr_epochs is not None:
            simclr = self.simclr_epochs * self.train.size
            images += simclr
            work += simclr * SIMCLR_PASSES
        return images, work * flops

    def config(self, identity: dict, device: str, in_channels: int, dep_keys: list) -> dict:
        """The artifact's configuration, as the store keys it (`dep_keys`: those of `deps()`)."""
        config = dict(arch=self.arch, width=self.width, options=dict(self.options), seed=self.seed,
                      num_classes=self.train.num_classes, in_channels=in_channels, recipe=self.recipe.as_config(),
                      data=identity, train_split=self.train.recipe(), test_split=self.test.recipe(), device=device)
        # Only present when used, so plain models keep the keys they were stored under.
        if self.checkpoints:
            config.update(checkpoints=[float(e) for e in self.checkpoints], keep_checkpoints=self.keep_checkpoints)
        sources = iter(dep_keys)
        if self.frozen is not None:
            config["frozen"] = dict(source=next(sources), stages=self.frozen.stages)
        if self.frozen_top is not None:
            config["frozen_top"] = dict(source=next(sources), stages=self.frozen_top.stages)
        if self.simclr_epochs is not None:
            config["simclr"] = dict(epochs=float(self.simclr_epochs), batch_size=256, temperature=0.5)
        return config

    def plain(self) -> "TrainedModel":
        """The same run without checkpoints (its end may be stored already)."""
        return dataclasses.replace(self, checkpoints=(), keep_checkpoints=False)


@dataclass(frozen=True)
class Checkpoint(Task):
    """The weights of `run` (which keeps its checkpoints) at `epoch`: no training of its own."""

    label: str = field(compare=False)  # for people; two specs that differ only in it are one task
    run: TrainedModel
    epoch: float

    def deps(self) -> tuple:
        return (self.run,)

    def cost(self, shape) -> tuple[float, float]:
        return 0.0, 0.0

    @property
    def arch(self):
        return self.run.arch

    @property
    def width(self):
        return self.run.width

    @property
    def options(self):
        return self.run.options


@dataclass(frozen=True)
class Stitch(Task):
    """Stitch `bottom` into `top` at every cut (one pass over the data for all cuts)."""

    kind = "stitch"
    label: str = field(compare=False)  # for people; two specs that differ only in it are one task
    top: Task
    bottom: Task
    train: SplitRef
    test: SplitRef
    settings: tuple  # epochs, lr, ls_samples and any of kernel_size, bn_policy, init, steps, transform, seed

    def deps(self) -> tuple:
        return (self.top, self.bottom)

    def cost(self, shape) -> tuple[float, float]:
        n_cuts, flops = architecture_info(self.top.arch, self.top.width, self.top.options, shape)
        return _stitch_cost(dict(self.settings), n_cuts, flops, self.train.size, self.test.size)

    def config(self, identity: dict, device: str, top_key: str, bottom_key: str) -> dict:
        return dict(bottom=bottom_key, top=top_key, data=identity, train_split=self.train.recipe(),
                    test_split=self.test.recipe(), device=device, **dict(self.settings))


@dataclass(frozen=True)
class CKA(Task):
    """Linear CKA between `a` and `b` at every cut, on `images`."""

    kind = "cka"
    label: str = field(compare=False)  # for people; two specs that differ only in it are one task
    a: Task
    b: Task
    images: SplitRef
    estimator: str
    batch_size: int = 250
    transform: tuple | None = None  # B's representation changed first (`stitching.Transform`)...
    seed: int = 0  # ...with the draws of the stitcher of the same comparison (its `seed`)

    def __post_init__(self):
        super().__post_init__()
        if self.transform is not None and type(self) is not CKA:
            raise ValueError(f"{type(self).__name__} takes no transform: only CKA at the same cuts does")

    def deps(self) -> tuple:
        return (self.a, self.b)

    def cost(self, shape) -> tuple[float, float]:
        _, fa = architecture_info(self.a.arch, self.a.width, self.a.options, shape)
        _, fb = architecture_info(self.b.arch, self.b.width, self.b.options, shape)
        return self.images.size, self.images.size * (fa + fb)

    def config(self, identity: dict, device: str, a_key: str, b_key: str) -> dict:
        config = dict(a=a_key, b=b_key, data=identity, images=self.images.recipe(), estimator=self.estimator,
                      batch_size=self.batch_size, device=device)
        if self.transform is not None:
            config.update(transform=list(self.transform), seed=self.seed)
        return config


@dataclass(frozen=True)
class CKAMatrix(CKA):
    """Linear CKA between every cut of `a` and every cut of `b`, on `images`: the layer-by-layer
    heatmap (Kornblith et al. 2019), whose diagonal is `CKA`'s per-cut numbers."""

    kind = "cka_matrix"


@dataclass(frozen=True)
class PretrainedStitch(Task):
    """A pretrained ResNet-50 bottom stitched into the supervised one on ImageNet images (Fig. 2B):
    its key needs the weights' and images' digests, known only when they are read."""

    label: str = field(compare=False)  # for people; two specs that differ only in it are one task
    weights: str
    samples: int
    settings: tuple

    def cost(self, shape) -> tuple[float, float]:
        n_cuts, flops = architecture_info(IMAGENET_RESNET50, 1.0, (), (3, 224, 224))
        half = self.samples // 2
        images, work = _stitch_cost(dict(self.settings), n_cuts, flops, half, self.samples - half)
        return images + half, work + flops * half  # and the supervised top's own test error


def _stitch_cost(settings: dict, n_cuts: int, flops: float, train: int, test: int) -> tuple[float, float]:
    """(images, FLOPs) of stitching at every cut in one pass: the least-squares fit (forward only),
    the stitchers' training, and the test errors at initialisation and after training."""
    ls = min(settings["ls_samples"], train)
    # `steps` (batches of 128, as `stitching.stitch` trains) overrides `epochs` when given.
    trained = settings["steps"] * 128 if settings.get("steps") is not None else settings["epochs"] * train
    evaluated = 2 * test
    work = flops * (trained * (1 + STITCH_PASSES_PER_CUT * n_cuts)
                    + (ls + evaluated) * (1 + EVAL_PASSES_PER_CUT * n_cuts))
    return trained + ls + evaluated, work


__all__ = ["SplitRef", "Task", "RandomModel", "TrainedModel", "Checkpoint", "FrozenPrefix", "FrozenSuffix", "Stitch", "CKA",
           "CKAMatrix", "PretrainedStitch", "architecture_info"]

"""Typed experiment parameters, each declared once.

An experiment's parameters are a frozen dataclass whose fields are declared with `param`: the
type (from the annotation), a one-line help text and the value of each profile. The checks that
need no data live in the class's `check`. Everything else is generated from the class: the
notebook's papermill `parameters` cell, the profile YAML files under `notebooks/params/`, the
README's parameter tables, and the error for an unknown or mistyped parameter.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .. import data as data_mod
from ..models import ARCHITECTURES
from ..precision import PRECISIONS, check_precision
from ..statistics import validate_confidence
from ..training import RECIPE_SETS, Recipe
from .compute import Numerics

# smoke: a 2-core CPU in minutes. fast: the paper's architectures and widths with short modern
# schedules, minutes on one GPU. paper: Appendix A's recipes, GPU-hours.
PROFILES = ("smoke", "fast", "paper")
# Every model trains in whole batches (the loop drops a last partial one): a training set needs one.
BATCH_SIZE = Recipe().batch_size
_SAME = object()
# The annotation names used here and the Python types a value may have.
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


def param(help: str, smoke: Any, paper: Any = _SAME, *, fast: Any = _SAME, items: type | None = None):
    """A parameter: its help text and its value at each profile (`paper` defaults to `smoke`'s,
    `fast`, the paper's models on short schedules, to `paper`'s).
    `items=float`: a list of numbers, kept as floats (papermill and YAML give 1 for 1.0)."""
    paper = smoke if paper is _SAME else paper
    return field(default=None, metadata=dict(help=help, items=items, profiles={
        "smoke": smoke, "fast": paper if fast is _SAME else fast, "paper": paper}))


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _as_float(value):
    """Numbers as floats, inside lists and dicts too: 1 and 1.0 must give one store key."""
    if is_number(value):
        return float(value)
    if isinstance(value, list):
        return [_as_float(v) for v in value]
    return value


@dataclass(frozen=True)
class Params:
    """Base of every experiment's parameters. Build one with `resolve(profile, **given)`."""

    # Shown first in the parameters cell and the docs (the user's most common -p).
    FIRST: ClassVar[tuple] = ()

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        names = [f.name for f in dataclasses.fields(cls)]
        order = [n for n in cls.FIRST if n in names] + [n for n in names if n not in cls.FIRST]
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        return [by_name[n] for n in order]

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in cls.fields()]

    @classmethod
    def default(cls, name: str, profile: str):
        return dataclasses.fields(cls)[cls._index(name)].metadata["profiles"][profile]

    @classmethod
    def _index(cls, name: str) -> int:
        return [f.name for f in dataclasses.fields(cls)].index(name)

    @classmethod
    def type_name(cls, name: str) -> str:
        return str(dataclasses.fields(cls)[cls._index(name)].type)

    @classmethod
    def help(cls, name: str) -> str:
        return dataclasses.fields(cls)[cls._index(name)].metadata["help"]

    @classmethod
    def profile_values(cls, profile: str) -> dict:
        return {n: cls.default(n, profile) for n in cls.names()}

    @classmethod
    def resolve(cls, profile: str = "smoke", **given) -> "Params":
        """The profile's values, with every parameter in `given` that is not None in their place;
        typed and checked. Raises ValueError/TypeError naming what is wrong and what is valid."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; valid: {list(PROFILES)}")
        unknown = sorted(set(given) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown parameters {unknown} for {cls.EXPERIMENT!r}; valid: {sorted(cls.names())}")
        values = cls.profile_values(profile)
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)

    def __post_init__(self):
        for f in self.fields():
            value, kinds = getattr(self, f.name), _TYPES[str(f.type)]
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                names = " or ".join(t.__name__ for t in kinds)
                hint = ""
                if isinstance(value, str) and kinds[0] in (list, dict):
                    hint = (f" (papermill's -p passes text; give lists and dicts as YAML: "
                            f"-y \"{f.name}: {value}\")")
                raise TypeError(f"parameter {f.name!r} must be {names}, got {type(value).__name__} {value!r}{hint}")
            # A float parameter given as an int (papermill's -p width 1) is the same run as 1.0.
            if str(f.type) == "float" or (f.metadata.get("items") is float and all(is_number(v) for v in value)):
                object.__setattr__(self, f.name, _as_float(value))
        self.check()

    def check(self) -> None:
        """The checks that need no data, so a bad value fails before anything is loaded or trained."""

    def as_dict(self) -> dict:
        return {n: getattr(self, n) for n in self.names()}


def check_size(name: str, value: int, limit: int, what: str, least: int = 1) -> None:
    if not least <= value <= limit:
        raise ValueError(f"{name}={value} must be in [{least}, {limit}] ({what})")


def check_training_size(name: str, value: int, limit: int, what: str, batch: int = BATCH_SIZE) -> None:
    """A model's training images: at least one whole batch, at most the split."""
    check_size(name, value, limit, f"{what}; at least one batch of {batch}, since training drops a last "
                                   "partial batch", least=batch)


@dataclass(frozen=True)
class Common(Params):
    """What every notebook shares: the clean ResNet-18 seed pairs (02-05 take 01's from the
    store), the stitcher and CKA, and the intervals."""

    dataset: str = param('"cifar10" or "fashion_mnist"', "cifar10")
    arch: str = param('architecture ("resnet18": the CIFAR ResNet-18 of the paper)', "resnet18")
    train_samples: int = param("training images per base model", 10000, 50000)
    test_samples: int = param("test images for every error (all models of a run see the same ones)", 1000, 10000,
                              fast=5000)
    # 64K steps of batch 128 on 50K images = 164 epochs (Appendix A.2).
    # fast: 8 epochs of the one-cycle recipe (FAST_RECIPES) take a CIFAR ResNet-18 past 90%.
    epochs: float = param("base-model epochs of the recipe", 4.0, 164.0, fast=6.0)
    seeds: list = param("seeds in (top, bottom) pairs: [t0, b0, t1, b1, ...]; an even number, at least 4; "
                        "three pairs or more decide verdicts", [0, 1, 2, 3], [0, 1, 2, 3, 4, 5])
    stitch_samples: int = param("training images the stitcher sees, drawn from its top's training images "
                                "(a top trained on fewer gives all of its own)", 2000, 50000, fast=5000)
    stitch_epochs: float = param("stitcher epochs (Adam, cosine schedule); 0: least-squares init only", 1.0, 10.0,
                                 fast=1.0)
    # The paper's stitcher lr is 1e-3; the smoke stitcher gets 15 steps (2,000 images in full batches of
    # 128), the fast one 39 (5,000), hence larger ones.
    stitch_lr: float = param("stitcher learning rate (the paper's is 1e-3; the 15-step smoke stitcher needs a "
                             "larger one; so does the fast profile's 39-step one)", 0.03, 0.001, fast=0.003)
    ls_samples: int = param("images for the stitcher's least-squares initialisation", 500, 10000, fast=2500)
    cka_samples: int = param("test images for CKA (at most test_samples)", 500, 10000, fast=2500)
    # The exact estimator needs every feature in memory: fine at 500 images, not at 10,000.
    cka_estimator: str = param('"exact" (biased linear CKA, Kornblith 2019) or "minibatch" (Nguyen 2021); the '
                               "minibatch estimator keeps memory flat at the paper's sizes", "exact", "minibatch")
    confidence: float = param("confidence level of every interval, in (0, 1)", 0.95)
    # Part of every CPU artifact's configuration: a CPU's numbers change with the thread count,
    # and one thread per task lets an executor run as many tasks as there are cores.
    threads: int = param("CPU threads of each task (a CPU result depends on it; each Ray task reserves this many "
                         "CPUs)", 1)
    # bf16 at fast: the GPU's fast path, and the claims are penalties of points, far above bf16's
    # rounding. fp32 at smoke (a CPU without AMX is slower in bf16) and at paper (Appendix A's runs
    # predate mixed precision; -p precision bf16 runs them on the fast path, see the README).
    precision: str = param('"fp32" or "bf16" (bfloat16 autocast of training, stitching and evaluation; CKA stays '
                           "float64)", "fp32", "fp32", fast="bf16")
    torch_compile: bool = param("train through torch.compile (falls back to eager with a warning where it cannot "
                                "compile)", False)
    recipes: str = param('training recipes: "appendix_a" (the paper\'s, Appendix A) or "short" (one-cycle, batch '
                         "512, label smoothing: stitchlib.training.FAST_RECIPES, not the paper's)", "appendix_a",
                         fast="short")

    @property
    def data_info(self) -> dict:
        return data_mod.DATASET_INFO[self.dataset]

    def numerics(self) -> Numerics:
        """How every task of the run does its arithmetic (part of every store key)."""
        return Numerics(self.threads, self.precision, self.torch_compile)

    def recipe(self, arch: str, epochs: float) -> Recipe:
        """`arch`'s training recipe from this run's recipe set, `epochs` long."""
        return dataclasses.replace(RECIPE_SETS[self.recipes][arch], epochs=float(epochs))

    def seed_pairs(self) -> list[tuple[int, int]]:
        """The independent (top, bottom) seed pairs: seeds[0:2], seeds[2:4], ..."""
        return list(zip(self.seeds[0::2], self.seeds[1::2]))

    def check(self) -> None:
        super().check()
        if self.dataset not in data_mod.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid names: {', '.join(data_mod.DATASETS)}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; valid: {sorted(ARCHITECTURES)}")
        seeds = self.seeds
        if any(isinstance(x, bool) or not isinstance(x, int) for x in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must list distinct ints, got {seeds!r}")
        if len(seeds) < 4 or len(seeds) % 2:
            raise ValueError(f"seeds must list an even number of seeds, at least 4: consecutive seeds make the "
                             f"(top, bottom) seed pairs, and an interval needs at least two pairs; got {len(seeds)}: "
                             f"{seeds!r}")
        validate_confidence(self.confidence)
        info = self.data_info
        if self.recipes not in RECIPE_SETS:
            raise ValueError(f"unknown recipes {self.recipes!r}; valid: {sorted(RECIPE_SETS)}")
        check_precision(self.precision)
        check_training_size("train_samples", self.train_samples, info["train"], f"the training split of {self.dataset}",
                            self.batch_size)
        check_size("test_samples", self.test_samples, info["test"], f"the test split of {self.dataset}")
        # The stitcher trains on part of its top model's training images; CKA uses part of the test images.
        check_size("stitch_samples", self.stitch_samples, self.train_samples,
                   "drawn from the base top's train_samples training images")
        check_size("cka_samples", self.cka_samples, self.test_samples, "drawn from the test_samples test images")
        if self.ls_samples <= 0:
            raise ValueError(f"ls_samples must be > 0, got {self.ls_samples!r}")
        if self.epochs <= 0 or self.stitch_epochs < 0 or self.stitch_lr <= 0:
            raise ValueError(f"epochs must be > 0, stitch_epochs >= 0 and stitch_lr > 0; got {self.epochs!r}, "
                             f"{self.stitch_epochs!r}, {self.stitch_lr!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be an int >= 1 (CPU threads per task), got {self.threads!r}")
        if self.cka_estimator not in ("exact", "minibatch"):
            raise ValueError(f"unknown cka_estimator {self.cka_estimator!r}; valid: ['exact', 'minibatch']")


    @property
    def batch_size(self) -> int:
        """The base models' training batch (their recipe set's)."""
        return RECIPE_SETS[self.recipes][self.arch].batch_size


def check_width(name: str, value) -> None:
    if not (is_number(value) and value > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_widths(name: str, values) -> None:
    if not values or not all(is_number(w) and w > 0 for w in values):
        raise ValueError(f"{name} must be a non-empty list of numbers > 0, got {values!r}")


def check_architecture(arch: str, opts, allowed: tuple, where: str) -> None:
    """A panel's architecture and options (`where` names them in errors): the name, the keys, and a
    model that builds, all before any training."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} in {where}; valid: {sorted(ARCHITECTURES)}")
    if not isinstance(opts, dict) or set(opts) - set(allowed):
        keys = ", ".join(allowed[:-1]) + f" and {allowed[-1]}"
        raise ValueError(f"{where} must be a dict of {keys}, got {opts!r}")
    for key in ("width", "epochs"):
        if key in opts and not (is_number(opts[key]) and opts[key] > 0):
            raise ValueError(f"{where}[{key!r}] must be a number > 0, got {opts[key]!r}")
    from .tasks import architecture_info  # a bad depth or width fails here, before any training

    try:
        architecture_info(arch, float(opts.get("width", 1.0)), tuple(sorted((k, v) for k, v in opts.items()
                                                                            if k not in ("width", "epochs"))))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


__all__ = ["Params", "Common", "param", "PROFILES", "BATCH_SIZE"]


# ---------------------------------------------------------------- generated from the declarations

# How and where a run computes, not what: these change no number (threads, which does, is a parameter).
_FIXED = [("profile", "str", '"smoke": a 2-core CPU in minutes; "fast": the paper\'s models on short schedules, '
                              'minutes on one GPU; "paper": Appendix A\'s scale, GPU-hours', "smoke"),
          ("device", "str", '"auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"', "auto"),
          ("executor", "str", '"auto" ($STITCHLIB_EXECUTOR, else "ray" when installed and there are 2 or more '
                              'task slots, else "serial"), "serial" or "ray"', "auto"),
          ("ray_address", "str", '"": start Ray inside the run; "auto" or "ray://host:port": join a running cluster',
           ""),
          ("gpu_fraction", "float", "share of a GPU each Ray task reserves, in (0, 1]: 0.25 puts four models on a GPU",
           0.25)]
RUN_OPTIONS = tuple(name for name, *_ in _FIXED)


def _default_text(cls, name: str) -> str:
    values = {profile: cls.default(name, profile) for profile in PROFILES}
    if all(v == values["smoke"] for v in values.values()):
        return f"None: {values['smoke']!r}"
    return "None: " + ", ".join(f"{profile} {value!r}" for profile, value in values.items())


def parameters_cell(cls) -> str:
    """The notebook's papermill `parameters` cell: typed, with help and each profile's value."""
    lines = [f'{name}: {kind} = {json.dumps(value)}  # {text}' for name, kind, text, value in _FIXED]
    lines += [f"{n}: {cls.type_name(n)} = None  # {cls.help(n)}; {_default_text(cls, n)}" for n in cls.names()]
    return "\n".join(lines)


def profile_yaml(cls, notebook: str, profile: str) -> str:
    """The YAML file of a profile's values, for `papermill -f`."""
    import yaml

    values = {**{name: value for name, _, _, value in _FIXED}, "profile": profile, **cls.profile_values(profile)}
    return (f"# The {profile} profile of {notebook} (written by tools/make_notebooks.py from "
            f"stitchlib.experiments.{cls.__module__.rsplit('.', 1)[1]}.{cls.__name__}).\n"
            + yaml.safe_dump(values, sort_keys=False))


def markdown_table(cls) -> str:
    """The README's table of an experiment's parameters."""
    rows = ["| parameter | type | " + " | ".join(PROFILES) + " | what it is |", "|---|---|" + "---|" * len(PROFILES) + "---|"]
    for n in cls.names():
        cells = [f"`{n}`", cls.type_name(n), *(f"`{cls.default(n, profile)!r}`" for profile in PROFILES),
                 cls.help(n).replace("|", "\\|")]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)

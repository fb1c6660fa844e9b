"""The notebooks' experiments: one setup call, one cached compute call, checked claims.

Each experiment has two profiles that differ only in sizes: "smoke" (a 2-core CPU in
minutes) and "paper" (Appendix A's scale on one GPU). Everything expensive goes through
the artifact store, keyed on the full configuration, the dataset's identity and the code
version, so re-running a notebook with the same parameters loads instead of training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import data as data_mod
from .models import ARCHITECTURES, build_model, cut_points, spine
from .similarity import CKAAccumulator
from .pretrained import IMAGENET_WEIGHTS, WeightsNotFoundError, load_imagenet_folder, load_resnet50
from .ssl import train_simclr
from .statistics import validate_confidence
from .stitching import stitch
from .store import Store
from .training import RECIPES, Recipe, misclassified, percent, resolve_device, train_model

__all__ = ["PROFILES", "Setup", "setup", "Results", "connectivity", "ssl_vs_e2e", "label_noise", "more_is_better",
           "ablations"]

REPO_ROOT = Path(__file__).resolve().parent.parent

# The stitcher and CKA sizes every experiment shares, per profile (the paper's stitcher lr is
# 1e-3; the smoke stitcher gets 16 steps, hence 3e-2), and the intervals' confidence level.
_STITCH = {
    "smoke": dict(stitch_samples=2000, stitch_epochs=1.0, stitch_lr=0.03, ls_samples=500, cka_samples=500,
                  cka_estimator="exact", confidence=0.95),
    "paper": dict(stitch_samples=50000, stitch_epochs=10.0, stitch_lr=0.001, ls_samples=10000, cka_samples=10000,
                  cka_estimator="minibatch", confidence=0.95),
}
# The clean ResNet-18 that every notebook starts from: width 1/8 at smoke (the "1x" scaled down),
# so that 02-05 take 01's seed pairs from the store.
_BASE = {
    # Seeds in (top, bottom) pairs: two independent pairs at smoke, three at paper scale.
    "smoke": dict(dataset="cifar10", arch="resnet18", train_samples=10000, test_samples=1000, epochs=4.0,
                  seeds=[0, 1, 2, 3]),
    # 64K steps of batch 128 on 50K images = 164 epochs (Appendix A.2).
    "paper": dict(dataset="cifar10", arch="resnet18", train_samples=50000, test_samples=10000, epochs=164.0,
                  seeds=[0, 1, 2, 3, 4, 5]),
}

# Sizes per profile. The notebooks' parameters default to None, meaning "the profile's value".
PROFILES: dict[str, dict[str, dict]] = {
    "connectivity": {
        "smoke": dict(
            # Two seed pairs of fewer panels than the paper's, within the CPU budget: one ResNet-18
            # width, ResNet-11 (the ResNet-164 family at n = 1), the Myrtle CNN; the ViT and the
            # disjoint halves run at the paper profile (or with -y/-p).
            **_BASE["smoke"], widths=[0.125], random_seed=100, **_STITCH["smoke"],
            architectures={"preact_resnet": {"width": 0.25, "depth": 11}, "myrtle": {"width": 0.25}},
            disjoint=False,
        ),
        "paper": dict(
            **_BASE["paper"], widths=[0.5, 1.0, 2.0], random_seed=100, **_STITCH["paper"],
            # ResNet-164; the Myrtle CNN for 80K steps (205 epochs); the paper's ViT (trained on
            # CIFAR-5m there, on CIFAR-10 here).
            architectures={"preact_resnet": {"width": 1.0, "depth": 164}, "myrtle": {"width": 1.0, "epochs": 205.0},
                           "vit": {"width": 1.0, "depth": 12}},
            disjoint=True,
        ),
    },
    "label_noise": {
        "smoke": dict(**_BASE["smoke"], width=0.125, noise=[0.5, 1.0], coarse=True,
                      **_STITCH["smoke"]),
        "paper": dict(**_BASE["paper"], width=1.0, noise=[0.1, 0.5, 1.0], coarse=True,
                      **_STITCH["paper"]),
    },
    "more_is_better": {
        # Section 6 at the paper's sample sizes in both profiles: every model of the samples
        # experiment takes as many SGD steps as the base recipe, so the sizes cost nothing extra.
        "smoke": dict(**_BASE["smoke"], width=0.125, fewer_samples=5000, top_samples=10000,
                      samples=25000, checkpoint_epochs=[1.0, 4.0], top_epoch=2.0,
                      widths=[0.03125, 0.125], freeze_max_penalty=3.0, **_STITCH["smoke"]),
        "paper": dict(**_BASE["paper"], width=1.0, fewer_samples=5000, top_samples=10000,
                      samples=25000, checkpoint_epochs=[40.0, 80.0, 160.0], top_epoch=80.0,
                      widths=[0.25, 1.0, 2.0], freeze_max_penalty=1.0, **_STITCH["paper"]),
    },
    "ssl_vs_e2e": {
        "smoke": dict(**_BASE["smoke"], width=0.125, simclr_epochs=5.0, probe_epochs=4.0,
                      imagenet_dir="", imagenet_weights=["simclr", "swav", "dino"], imagenet_samples=200,
                      **_STITCH["smoke"]),
        "paper": dict(**_BASE["paper"], width=1.0, simclr_epochs=500.0, probe_epochs=100.0,
                      imagenet_dir="", imagenet_weights=["simclr", "swav", "dino"], imagenet_samples=10000,
                      **_STITCH["paper"]),
    },
    "ablations": {
        "smoke": dict(**_BASE["smoke"], width=0.125, kernel_sizes=[1, 3, 9],
                      finetune_arch={"width": 0.25, "depth": 11}, finetune_epochs=4.0, random_seed=100,
                      **_STITCH["smoke"]),
        "paper": dict(**_BASE["paper"], width=1.0, kernel_sizes=[1, 3, 5, 7, 9],
                      finetune_arch={"width": 1.0, "depth": 164}, finetune_epochs=164.0, random_seed=100,
                      **_STITCH["paper"]),
    },
}

_NUMBER = (int, float)
# Types of every parameter, checked before any work starts (papermill injects whatever it is given).
PARAM_TYPES = dict(
    dataset=str, arch=str, widths=list, width=_NUMBER, seeds=list, random_seed=int, train_samples=int,
    test_samples=int, epochs=_NUMBER, stitch_samples=int, stitch_epochs=_NUMBER, stitch_lr=_NUMBER,
    ls_samples=int, cka_samples=int, cka_estimator=str, device=str, profile=str, architectures=dict,
    disjoint=bool, noise=list, coarse=bool, fewer_samples=int, top_samples=int, samples=int,
    checkpoint_epochs=list, top_epoch=_NUMBER, freeze_max_penalty=_NUMBER, kernel_sizes=list,
    finetune_arch=dict, finetune_epochs=_NUMBER, simclr_epochs=_NUMBER, probe_epochs=_NUMBER, imagenet_dir=str,
    imagenet_weights=list, imagenet_samples=int, confidence=_NUMBER,
)
# Sample sizes drawn from the training split; the rest come from the test split.
_TRAIN_SIZES = ("train_samples", "fewer_samples", "top_samples", "samples")


@dataclass
class Setup:
    """Everything an experiment needs: resolved parameters, device, data, store, output folders."""

    experiment: str
    profile: str
    params: dict
    device: torch.device
    store: Store
    dataset: data_mod.Dataset
    figures: Path

    def __getitem__(self, key):
        return self.params[key]

    def describe(self) -> None:
        """Print what will run: profile, device, data identity, store, parameters."""
        ident = self.dataset.identity
        where = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                 else f"{torch.get_num_threads()} threads")
        print(f"experiment {self.experiment} | profile {self.profile} | device {self.device.type} ({where})")
        print(f"seeds      {len(self['seeds']) // 2} pairs (top, bottom): {seed_pairs(self.params)}; "
              f"intervals at {self['confidence']:.0%}")
        print(f"data       {ident['name']} from {ident['source']} (sha256 {ident['sha256'][:12]}...)")
        print(f"store      {self.store.root}")
        print(f"figures    {self.figures}")
        for key, value in self.params.items():
            print(f"  {key:18s} {value}")


def setup(experiment: str, *, profile: str = "smoke", device: str = "auto", figures_dir: str | None = None,
          store: str | None = None, **params) -> Setup:
    """Validate the parameters, fill the profile's values for those left None, load the data.

    `figures_dir` defaults to $STITCHLIB_FIGURES/<profile> or <repository>/figures/<profile>;
    `store` to the artifact store's default ($STITCHLIB_STORE or <repository>/runs/store).
    Neither depends on the cwd.
    """
    if experiment not in PROFILES:
        raise ValueError(f"unknown experiment {experiment!r}; valid: {sorted(PROFILES)}")
    profiles = PROFILES[experiment]
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; valid: {sorted(profiles)}")
    unknown = sorted(set(params) - set(profiles[profile]))
    if unknown:
        raise ValueError(f"unknown parameters {unknown} for {experiment!r}; valid: {sorted(profiles[profile])}")
    resolved = dict(profiles[profile])
    resolved.update({k: v for k, v in params.items() if v is not None})
    for name, value in {**resolved, "device": device, "profile": profile}.items():
        expected = PARAM_TYPES[name]
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            hint = ""
            if isinstance(value, str) and expected in (list, dict):
                hint = (f" (papermill's -p passes text; give lists and dicts as YAML: "
                        f"-y \"{name}: {value}\")")
            raise TypeError(f"parameter {name!r} must be {names}, got {type(value).__name__} {value!r}{hint}")
    _validate(resolved)
    dev = resolve_device(device)
    dataset = data_mod.load_dataset(resolved["dataset"])
    for key in _TRAIN_SIZES + ("test_samples",):
        split = dataset.test if key == "test_samples" else dataset.train
        if key in resolved and resolved[key] > len(split):
            raise ValueError(f"{key}={resolved[key]} exceeds the {len(split)} images of the "
                             f"{'test' if key == 'test_samples' else 'training'} split")
    if figures_dir:
        figures = Path(figures_dir)
    else:
        figures = Path(os.environ.get("STITCHLIB_FIGURES") or REPO_ROOT / "figures").expanduser().absolute() / profile
    figures.mkdir(parents=True, exist_ok=True)
    return Setup(experiment, profile, resolved, dev, Store(store), dataset, figures)


def seed_pairs(p: dict) -> list[tuple[int, int]]:
    """The independent (top, bottom) seed pairs: seeds[0:2], seeds[2:4], ..."""
    return list(zip(p["seeds"][0::2], p["seeds"][1::2]))


def derived_seed(seed: int, what: str) -> int:
    """A seed of its own for a model compared with the one of `seed` (a weak or self-supervised
    bottom, fresh top layers), so that the two share neither initialisation nor data order."""
    return zlib.crc32(f"{what}/{seed}".encode()) % 2**31


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _validate(p: dict) -> None:
    """Every check that needs no data, so a bad value fails before anything is loaded or trained."""
    if p["dataset"] not in data_mod.DATASETS:
        raise ValueError(f"unknown dataset {p['dataset']!r}; valid names: {', '.join(data_mod.DATASETS)}")
    if p["arch"] not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {p['arch']!r}; valid: {sorted(ARCHITECTURES)}")
    if "widths" in p and (not p["widths"] or not all(_is_number(w) and w > 0 for w in p["widths"])):
        raise ValueError(f"widths must be a non-empty list of numbers > 0, got {p['widths']!r}")
    if "width" in p and not p["width"] > 0:
        raise ValueError(f"width must be > 0, got {p['width']!r}")
    seeds = p["seeds"]
    if any(isinstance(x, bool) or not isinstance(x, int) for x in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must list distinct ints, got {seeds!r}")
    if len(seeds) < 4 or len(seeds) % 2:
        raise ValueError(f"seeds must list an even number of seeds, at least 4: consecutive seeds make the (top, "
                         f"bottom) seed pairs, and an interval needs at least two pairs; got {len(seeds)}: {seeds!r}")
    validate_confidence(p["confidence"])
    for key in _TRAIN_SIZES + ("test_samples", "stitch_samples", "ls_samples", "cka_samples"):
        if key in p and p[key] <= 0:
            raise ValueError(f"{key} must be > 0, got {p[key]!r}")
    # The stitcher trains on part of its top model's training subset; CKA uses part of the test subset.
    for key in ("train_samples", "top_samples"):
        if key in p and p["stitch_samples"] > p[key]:
            raise ValueError(f"stitch_samples={p['stitch_samples']} must be <= {key}={p[key]}")
    if p["cka_samples"] > p["test_samples"]:
        raise ValueError(f"cka_samples={p['cka_samples']} must be <= test_samples={p['test_samples']}")
    if p["epochs"] <= 0 or p["stitch_epochs"] < 0 or p["stitch_lr"] <= 0:
        raise ValueError(f"epochs must be > 0, stitch_epochs >= 0 and stitch_lr > 0; got {p['epochs']!r}, "
                         f"{p['stitch_epochs']!r}, {p['stitch_lr']!r}")
    for arch, opts in p.get("architectures", {}).items():
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r} in architectures; valid: {sorted(ARCHITECTURES)}")
        if not isinstance(opts, dict) or set(opts) - {"width", "depth", "epochs"}:
            raise ValueError(f"architectures[{arch!r}] must be a dict of width, depth and epochs, got {opts!r}")
        options = {k: v for k, v in opts.items() if k != "epochs"}
        build_model(arch, seed=0, **options)  # a bad depth or width fails here, before any training
    if p["cka_estimator"] not in ("exact", "minibatch"):
        raise ValueError(f"unknown cka_estimator {p['cka_estimator']!r}; valid: ['exact', 'minibatch']")
    if p.get("coarse") and p["dataset"] != "cifar10":
        # Checked on the name, before any data is loaded: the coarse labels are CIFAR-10's superclasses.
        raise ValueError(f"coarse=True needs CIFAR-10's classes (Animals vs Objects); {p['dataset']!r} "
                         "has other classes: set coarse=False")
    if "noise" in p:
        if not all(_is_number(q) and 0 <= q <= 1 for q in p["noise"]):
            raise ValueError(f"noise must list label-noise fractions in [0, 1], got {p['noise']!r}")
        if not p["noise"] and not p["coarse"]:
            raise ValueError("nothing to compare: give at least one noise fraction or coarse=True")
    if "samples" in p and not p["fewer_samples"] < p["top_samples"] < p["samples"]:
        raise ValueError("the samples experiment needs fewer_samples < top_samples < samples (fewer, equal and "
                         f"more samples than the top), got {p['fewer_samples']}, {p['top_samples']}, {p['samples']}")
    if "checkpoint_epochs" in p:
        epochs = p["checkpoint_epochs"] + [p["top_epoch"]]
        if not p["checkpoint_epochs"] or not all(_is_number(e) and 0 < e <= p["epochs"] for e in epochs):
            raise ValueError(f"checkpoint_epochs (and top_epoch) must be a non-empty list of epochs in (0, "
                             f"epochs={p['epochs']:g}], the length of the run they are taken from; got "
                             f"{p['checkpoint_epochs']!r} and top_epoch={p['top_epoch']!r}")
    if "kernel_sizes" in p and (not p["kernel_sizes"] or not all(
            isinstance(k, int) and not isinstance(k, bool) and k > 0 and k % 2 == 1 for k in p["kernel_sizes"])):
        raise ValueError("kernel_sizes must list odd positive ints (1, 3, 5, ...: a k x k stitcher is centred on "
                         f"its pixel), got {p['kernel_sizes']!r}")
    if "finetune_arch" in p:
        opts = p["finetune_arch"]
        if not isinstance(opts, dict) or set(opts) - {"width", "depth"}:
            raise ValueError(f"finetune_arch must be a dict of width and depth (the ResNet-164 family), got {opts!r}")
        build_model("preact_resnet", seed=0, **opts)  # a bad depth or width fails here
        if not p["finetune_epochs"] > 0:
            raise ValueError(f"finetune_epochs must be > 0, got {p['finetune_epochs']!r}")
    if "simclr_epochs" in p:
        if not (p["simclr_epochs"] > 0 and p["probe_epochs"] > 0):
            raise ValueError(f"simclr_epochs and probe_epochs must be > 0, got {p['simclr_epochs']!r} and "
                             f"{p['probe_epochs']!r}")
        valid = sorted(set(IMAGENET_WEIGHTS) - {"supervised"})
        if not p["imagenet_weights"] or set(p["imagenet_weights"]) - set(valid):
            raise ValueError(f"imagenet_weights must list self-supervised ResNet-50s to stitch into the supervised "
                             f"one, from {valid}; got {p['imagenet_weights']!r}")
        if p["imagenet_samples"] < 2:
            raise ValueError(f"imagenet_samples must be >= 2 (half train the stitcher, half test), got "
                             f"{p['imagenet_samples']!r}")
    if "freeze_max_penalty" in p and p["freeze_max_penalty"] < 0:
        raise ValueError(f"freeze_max_penalty must be >= 0 (points), got {p['freeze_max_penalty']!r}")


# ---------------------------------------------------------------- cached building blocks

def base_model(s: Setup, *, width: float, seed: int, train_split: data_mod.Split, test_split: data_mod.Split,
               recipe: Recipe, arch: str | None = None, options: dict | None = None, checkpoints=(),
               keep_checkpoints: bool = False, frozen: tuple | None = None, simclr_epochs: float | None = None,
               progress: bool = True):
    """A trained network from the store, trained now if absent. Returns (model, record).

    `options` go to the architecture (e.g. depth). `checkpoints`: epochs at which the test error
    is recorded (record["curve"], a list of (epoch, error) ending with the final one); with
    `keep_checkpoints` the weights too, as record["checkpoints"][epoch] = (model, record).
    `frozen=(model, record, n)`: the first n spine stages are copied from that model and kept
    fixed while the rest trains (freeze training). `simclr_epochs`: first train everything up to
    the pooled features with SimCLR (no labels), then only the classifier with `recipe` (the
    paper's self-supervised "SSS" networks).
    """
    arch = arch or s["arch"]
    options = options or {}
    ds = s.dataset
    config = dict(arch=arch, width=width, options=options, seed=seed, num_classes=train_split.num_classes,
                  in_channels=ds.train.images.shape[1], recipe=recipe.as_config(), data=ds.identity,
                  train_split=list(map(list, train_split.recipe)), test_split=list(map(list, test_split.recipe)),
                  device=s.device.type)
    plain = dict(config)
    # Only present when used, so plain models keep the keys they were stored under.
    if checkpoints:
        config.update(checkpoints=[float(e) for e in checkpoints], keep_checkpoints=keep_checkpoints)
    if frozen is not None:
        config["frozen"] = dict(source=frozen[1]["key"], stages=frozen[2])
    if simclr_epochs is not None:
        config["simclr"] = dict(epochs=float(simclr_epochs), batch_size=256, temperature=0.5)

    def build():
        return build_model(arch, seed=seed, width=width, num_classes=train_split.num_classes,
                           in_channels=config["in_channels"], **options)

    def evaluate(state_dict):
        model = build()
        model.load_state_dict(state_dict)
        return misclassified(model, test_split, ds.mean, ds.std, device=s.device)

    def compute():
        model = build()
        n_frozen = 0
        if frozen is not None:
            source, _, n_frozen = frozen
            for mine, theirs in zip(spine(model)[:n_frozen], spine(source)[:n_frozen]):
                mine.load_state_dict(theirs.state_dict())
        start = time.perf_counter()
        if simclr_epochs is not None:
            train_simclr(model, train_split, ds.mean, ds.std, epochs=simclr_epochs, seed=seed, device=s.device,
                         progress=progress)
            n_frozen = len(spine(model)) - 1  # a linear classifier on frozen features
        # The same run without checkpoints may be stored already (01's base models are 04's
        # training-time run): its end is then known, and only the early part needs training.
        known_end = (s.store.load("model", plain) if checkpoints and frozen is None and simclr_epochs is None
                     and recipe.steps is None and all(0 < c <= recipe.epochs for c in checkpoints) else None)
        kw = dict(seed=seed, device=s.device, frozen=n_frozen, desc=f"{arch} w={width} seed={seed}", progress=progress)
        if known_end is None:
            saved = train_model(model, train_split, ds.mean, ds.std, recipe, checkpoints=tuple(checkpoints), **kw)
            wrong = misclassified(model, test_split, ds.mean, ds.std, device=s.device)
        else:
            early = tuple(c for c in checkpoints if c < recipe.epochs)
            saved = (train_model(model, train_split, ds.mean, ds.std, recipe, checkpoints=early, until=max(early),
                                 **kw) if early else {})
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
            if keep_checkpoints:
                record["checkpoints"] = {repr(float(e)): saved[e] for e in epochs}
        return record

    stored = s.store.cached("model", config, compute)
    model = build()
    model.load_state_dict(stored["state_dict"])
    model.to(s.device).eval()
    key = s.store.key("model", config)
    record = {"key": key, "test_error": stored["test_error"], "wrong": unpack_wrong(stored["test_wrong"])}
    if checkpoints:
        record["curve"] = [tuple(point) for point in stored["curve"]]
        record["curve_wrong"] = [unpack_wrong(w) for w in stored["curve_wrong"]]
    if keep_checkpoints:
        wrongs = {e: w for (e, _), w in zip(record["curve"], record["curve_wrong"])}
        record["checkpoints"] = {}
        for name, state in stored["checkpoints"].items():
            at = build()
            at.load_state_dict(state)
            w = wrongs[float(name)]
            record["checkpoints"][float(name)] = (at.to(s.device).eval(),
                                                  {"key": f"{key}@epoch{float(name):g}",
                                                   "test_error": percent(w), "wrong": w})
    return model, record


def random_model(s: Setup, *, width: float, seed: int, num_classes: int, arch: str | None = None,
                 options: dict | None = None):
    """The random control: a freshly built, untrained network from its own seed."""
    arch = arch or s["arch"]
    options = options or {}
    model = build_model(arch, seed=seed, width=width, num_classes=num_classes,
                        in_channels=s.dataset.train.images.shape[1], **options)
    key = f"random:{arch}:{width}:{seed}:" + ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    return model.to(s.device).eval(), {"key": key}


def stitch_all_cuts(s: Setup, bottom, bottom_rec, top, top_rec, *, train_split, test_split, label: str,
                    top_error: float, bar=None, **stitch_kw) -> list[dict]:
    """Stitch `bottom` into `top` at every cut point (cached as one artifact per pair).
    `bar`, when given, is a progress bar whose postfix names the pair."""
    config = dict(bottom=bottom_rec["key"], top=top_rec["key"], data=s.dataset.identity,
                  train_split=list(map(list, train_split.recipe)), test_split=list(map(list, test_split.recipe)),
                  device=s.device.type, **stitch_kw)

    def compute():
        cuts = cut_points(top)
        # A k x k kernel needs a feature map: pooled vectors only take the linear stitcher.
        usable = [c.index for c in cuts if stitch_kw.get("kernel_size", 1) == 1 or c.kind == "map"]
        if bar is not None:
            bar.set_postfix_str(f"stitch {label} at {len(usable)} cuts")
        # Every cut in one pass over the data: the bottom runs once per batch for all of them.
        results = stitch(bottom, top, usable, s.dataset, train=train_split, test=test_split, top_error=top_error,
                         device=s.device, progress=bar is None, **stitch_kw)
        found = {r.cut.index: r for r in results}
        rows = []
        for c in cuts:
            r = found.get(c.index)
            rows.append(dict(cut_index=c.index, cut=c.name, error_init=r.error_init if r else math.nan,
                             error=r.error if r else math.nan, wrong_init=pack_wrong(r.wrong_init) if r else None,
                             wrong=pack_wrong(r.wrong) if r else None))
        return {"rows": rows}

    rows = s.store.cached("stitch", config, compute)["rows"]
    return [{**row, "wrong_init": unpack_wrong(row["wrong_init"]), "wrong": unpack_wrong(row["wrong"])} for row in rows]


def pack_wrong(wrong: torch.Tensor | None):
    """Per-image correctness as bits (uint8), a few hundred bytes per model and cut in the store."""
    if wrong is None:
        return None
    return {"n": len(wrong), "bits": torch.from_numpy(np.packbits(wrong.numpy().astype(bool)))}


def unpack_wrong(packed) -> torch.Tensor | None:
    if packed is None:
        return None
    return torch.from_numpy(np.unpackbits(packed["bits"].numpy(), count=packed["n"]).astype(bool))


@torch.no_grad()
def cka_all_cuts(s: Setup, model_a, rec_a, model_b, rec_b, images: data_mod.Split, estimator: str,
                 batch_size: int = 250) -> list[float]:
    """Linear CKA between A and B at every cut point, in one pass over `images` (cached)."""
    config = dict(a=rec_a["key"], b=rec_b["key"], data=s.dataset.identity, images=list(map(list, images.recipe)),
                  estimator=estimator, batch_size=batch_size, device=s.device.type)

    def compute():
        cuts = cut_points(model_a)
        accs = [CKAAccumulator(estimator) for _ in cuts]
        loader = data_mod.DeviceLoader(images, s.dataset.mean, s.dataset.std, batch_size=batch_size, device=s.device)
        stages_a, stages_b = spine(model_a), spine(model_b)
        for x, _ in loader:
            ha, hb = x, x
            for stage_a, stage_b, acc in zip(stages_a, stages_b, accs):
                # Walk both spines stage by stage: every cut's features from a single forward pass.
                ha, hb = stage_a(ha), stage_b(hb)
                acc.update(ha, hb)
        return {"cka": [acc.value() for acc in accs]}

    return s.store.cached("cka", config, compute)["cka"]


# ---------------------------------------------------------------- comparing pairs

@dataclass
class _Spec:
    """A model an experiment needs: how to get it (from the store, or trained now), and its
    architecture, which fixes the number of cut points before anything trains."""

    make: Callable[[], tuple]
    arch: str
    width: float
    options: dict = field(default_factory=dict)


@dataclass
class _Pair:
    """Stitch `bottom` into `top` at every cut (unless `stitch` is False) and take their CKA; the
    rows carry `columns`."""

    top: str
    bottom: str
    columns: dict
    stitch_split: data_mod.Split | None = None
    stitch: bool = True
    options: dict = field(default_factory=dict)  # for `stitch`: kernel_size, bn_policy, init, lr


@functools.lru_cache(maxsize=None)
def _n_cuts(arch: str, width: float, options: tuple) -> int:
    return len(cut_points(build_model(arch, seed=0, width=width, **dict(options))))


def _cuts_of(spec: _Spec) -> int:
    return _n_cuts(spec.arch, spec.width, tuple(sorted(spec.options.items())))


def _units(specs: dict[str, _Spec], pairs: list[_Pair]) -> int:
    """Progress units: one per model, one per stitched cut, one per CKA pair."""
    used = {name for pair in pairs for name in (pair.top, pair.bottom)}
    return len(used) + sum(1 + pair.stitch * _cuts_of(specs[pair.top]) for pair in pairs)


def _compare(s: Setup, bar, specs: dict[str, _Spec], pairs: list[_Pair], *, test_split, cka_split,
             stitch_split) -> tuple[pd.DataFrame, dict]:
    """Get every model the pairs name (store or training), then stitch and compare each pair.
    Returns the tidy rows and the models by name."""
    p = s.params
    stitch_kw = dict(epochs=float(p["stitch_epochs"]), lr=p["stitch_lr"], ls_samples=p["ls_samples"])
    built = {}
    for name in dict.fromkeys(n for pair in pairs for n in (pair.top, pair.bottom)):
        bar.set_postfix_str(name)
        built[name] = specs[name].make()
        bar.update()
    rows = []
    for pair in pairs:
        (top, top_rec), (bottom, bottom_rec) = built[pair.top], built[pair.bottom]
        label = f"{pair.bottom} into {pair.top}"
        if pair.stitch:
            done = bar.n
            stitched = stitch_all_cuts(s, bottom, bottom_rec, top, top_rec, test_split=test_split, label=label,
                                       train_split=stitch_split if pair.stitch_split is None else pair.stitch_split,
                                       top_error=top_rec["test_error"], bar=bar, **{**stitch_kw, **pair.options})
            bar.update(done + _cuts_of(specs[pair.top]) - bar.n)  # a cached pair advanced nothing
        else:
            stitched = [dict(cut_index=c.index, cut=c.name, error_init=math.nan, error=math.nan, wrong_init=None,
                             wrong=None) for c in cut_points(top)]
        bar.set_postfix_str(f"CKA {label}")
        cka = cka_all_cuts(s, top, top_rec, bottom, bottom_rec, cka_split, p["cka_estimator"])
        bar.update()
        rows += [_row(pair.columns, row, top_rec, bottom_rec, c) for row, c in zip(stitched, cka)]
    return pd.DataFrame(rows), built


def _row(columns: dict, cut_row: dict, top_rec: dict, bottom_rec: dict, cka: float) -> dict:
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


def _pair_columns(index: int, seed_top: int, seed_bottom: int) -> dict:
    """The columns that say which seed pair a row belongs to, and the seeds of its two models."""
    return dict(pair_index=index, seed_top=seed_top, seed_bottom=seed_bottom)


def _splits(s: Setup):
    """(train, test, CKA images, stitcher's training images): nested subsets with fixed seeds, the
    same in every notebook, so that models and comparisons are shared through the store."""
    p, ds = s.params, s.dataset
    train = data_mod.subset(ds.train, p["train_samples"], seed=0)
    test = data_mod.subset(ds.test, p["test_samples"], seed=0)
    return train, test, data_mod.subset(test, p["cka_samples"], seed=2), _stitch_split(s, train)


def _stitch_split(s: Setup, top_train: data_mod.Split) -> data_mod.Split:
    # The stitcher sees only images its top model was trained on: more data never leaks in
    # through the stitcher.
    return data_mod.subset(top_train, s["stitch_samples"], seed=1)


def _resnet(s: Setup, *, width, seed, train_split, test_split, recipe, **kw) -> _Spec:
    return _Spec(lambda: base_model(s, width=width, seed=seed, train_split=train_split, test_split=test_split,
                                    recipe=recipe, progress=False, **kw), s["arch"], width)


@dataclass
class Results:
    """An experiment's tidy rows (one per pair and cut), its base models, and, where the
    experiment has them, training curves."""

    table: pd.DataFrame
    models: pd.DataFrame
    setup: Setup = field(repr=False)
    curves: pd.DataFrame | None = None
    notes: list = field(default_factory=list)
    # The other experiments' results an experiment summarises (05's Table 1), by experiment name.
    sources: dict = field(default_factory=dict, repr=False)


def _models_frame(built: dict, specs: dict) -> pd.DataFrame:
    return pd.DataFrame([dict(model=name, width=specs[name].width, test_error=rec.get("test_error", math.nan))
                         for name, (_, rec) in built.items()])


# ---------------------------------------------------------------- 01: stitching connectivity

FAMILY_NAMES = {"resnet18": "ResNet-18", "myrtle": "Myrtle CNN", "vit": "ViT"}


def family_name(arch: str, options: dict) -> str:
    if arch == "preact_resnet":
        return f"ResNet-{options.get('depth', 164)}"
    return FAMILY_NAMES.get(arch, arch)


@dataclass
class _Family:
    """One panel of Fig. 2A: an architecture, the splits its two seeds train on, and whether a
    random network is stitched in as the control."""

    family: str
    arch: str
    width: float
    options: dict
    epochs: float
    panel: str
    # (top's, bottom's) training split for each seed pair
    train_splits: list
    with_random: bool = True


def _families(s: Setup, train_split) -> list[_Family]:
    p = s.params
    same = [(train_split, train_split)] * len(seed_pairs(p))
    out = [_Family("ResNet-18", p["arch"], w, {}, p["epochs"], "seeds", same) for w in p["widths"]]
    for arch, opts in p["architectures"].items():
        opts = dict(opts)
        width, epochs = opts.pop("width", 1.0), opts.pop("epochs", p["epochs"])
        out.append(_Family(family_name(arch, opts), arch, width, opts, epochs, "seeds", same))
    if p["disjoint"]:
        # Section 4: "a similar result holds for networks trained on disjoint train sets".
        # The paper's recipe is a number of SGD steps, so each half gets as many steps as the
        # full subset does: twice the epochs. Each seed pair draws its own halves.
        halves = [tuple(data_mod.disjoint_subsets(train_split, [len(train_split) // 2] * 2, seed=3 + i))
                  for i in range(len(seed_pairs(p)))]
        width = p["widths"][len(p["widths"]) // 2]
        epochs = p["epochs"] * len(train_split) / len(halves[0][0])
        out.append(_Family("ResNet-18, disjoint halves", p["arch"], width, {}, epochs, "disjoint", halves,
                           with_random=False))
    return out


def connectivity(s: Setup) -> Results:
    """Fig. 2A (stitching connectivity) and Fig. 5 (CKA): ResNet-18 at several widths, the other
    architectures in `architectures`, and (if `disjoint`) two ResNet-18s trained on disjoint
    halves of the training subset.

    In each panel and seed pair, the top seed is A; the bottom seed (and, except for the disjoint
    panel, a freshly built random network of seed random_seed + pair index) is stitched into it
    at every cut point, and CKA(A, bottom) is computed at every cut. Returns one tidy row per
    (panel, seed pair, bottom, cut).
    """
    p = s.params
    train_split, test_split, cka_split, _ = _splits(s)
    specs, pairs, model_rows = {}, [], []
    for f in _families(s, train_split):
        recipe = dataclasses.replace(RECIPES[f.arch], epochs=float(f.epochs))
        for i, (seeds, splits) in enumerate(zip(seed_pairs(p), f.train_splits)):
            names = []
            for seed, split in zip(seeds, splits):
                names.append(f"{f.family} w={f.width:g} seed {seed}")
                specs[names[-1]] = _Spec(functools.partial(
                    base_model, s, arch=f.arch, width=f.width, seed=seed, options=f.options, train_split=split,
                    test_split=test_split, recipe=recipe, progress=False), f.arch, f.width, f.options)
                model_rows.append(dict(family=f.family, width=f.width, seed=seed, model=names[-1]))
            bottoms = [("another seed", names[1], seeds[1])]
            if f.with_random:
                random_seed = p["random_seed"] + i
                bottoms.append(("random", f"{f.family} w={f.width:g} random {random_seed}", random_seed))
                specs[bottoms[-1][1]] = _Spec(functools.partial(
                    random_model, s, arch=f.arch, width=f.width, seed=random_seed, options=f.options,
                    num_classes=train_split.num_classes), f.arch, f.width, f.options)
            for label, name, seed in bottoms:
                columns = dict(family=f.family, arch=f.arch, width=f.width, panel=f.panel,
                               bottom="random" if label == "random" else "trained", pair=label,
                               **_pair_columns(i, seeds[0], seed))
                pairs.append(_Pair(names[0], name, columns, _stitch_split(s, splits[0])))
    # One bar for the whole experiment, advanced per base model, per stitched cut and per CKA pair;
    # the inner loops stay quiet so a notebook shows a single line of progress.
    with tqdm(total=_units(specs, pairs), desc="connectivity") as bar:
        table, built = _compare(s, bar, specs, pairs, test_split=test_split, cka_split=cka_split, stitch_split=None)
    models = pd.DataFrame(model_rows)
    models["test_error"] = [built[name][1]["test_error"] for name in models.pop("model")]
    write_csv(table, s.figures / "01_connectivity.csv")
    return Results(table, models, s)


# ---------------------------------------------------------------- 02: self-supervised vs supervised

def ssl_vs_e2e(s: Setup) -> Results:
    """Fig. 6 (CIFAR-10) and Fig. 2B (ImageNet, when its data and weights are given).

    CIFAR-10, for each seed pair: an end-to-end supervised ResNet-18 (E2E, the top seed: 01's
    top) and a self-supervised one (SSS, a seed of its own derived from the bottom seed):
    SimCLR for `simclr_epochs`, then a linear classifier on its frozen features for
    `probe_epochs`. Each is stitched into the other at every cut, beside the supervised seed
    pair (01's), with CKA for the same pairs.

    ImageNet: each of `imagenet_weights` (self-supervised ResNet-50s) stitched into torchvision's
    supervised ResNet-50 at every cut, on `imagenet_samples` validation images from the folder
    `imagenet_dir` (half train the stitcher, half test). Without the folder or the weights, the
    panel is skipped and `results.notes` says what is missing and where it goes.
    """
    p = s.params
    train_split, test_split, cka_split, stitch_split = _splits(s)
    recipe = dataclasses.replace(RECIPES[p["arch"]], epochs=float(p["epochs"]))
    kw = dict(width=p["width"], train_split=train_split, test_split=test_split)
    specs, pairs = {}, []
    for i, (top_seed, seed) in enumerate(seed_pairs(p)):
        sss_seed = derived_seed(seed, "sss")
        e2e, e2e_b, sss = f"E2E seed {top_seed}", f"E2E seed {seed}", f"SSS seed {sss_seed}"
        specs[e2e] = _resnet(s, seed=top_seed, recipe=recipe, **kw)
        specs[e2e_b] = _resnet(s, seed=seed, recipe=recipe, **kw)
        specs[sss] = _resnet(s, seed=sss_seed, recipe=dataclasses.replace(recipe, epochs=float(p["probe_epochs"])),
                             simclr_epochs=p["simclr_epochs"], **kw)
        pairs += [_Pair(e2e, e2e_b, dict(panel="CIFAR-10", pair="two supervised seeds", direction="E2E into E2E",
                                         **_pair_columns(i, top_seed, seed))),
                  _Pair(e2e, sss, dict(panel="CIFAR-10", pair="SSS bottom into E2E top", direction="SSS into E2E",
                                       **_pair_columns(i, top_seed, sss_seed))),
                  _Pair(sss, e2e, dict(panel="CIFAR-10", pair="E2E bottom into SSS top", direction="E2E into SSS",
                                       **_pair_columns(i, sss_seed, top_seed)))]
    with tqdm(total=_units(specs, pairs), desc="ssl vs e2e") as bar:
        table, built = _compare(s, bar, specs, pairs, test_split=test_split, cka_split=cka_split,
                                stitch_split=stitch_split)
    notes = []
    imagenet = _imagenet_panel(s, notes)
    if imagenet is not None:
        table = pd.concat([table, imagenet], ignore_index=True)
    write_csv(table, s.figures / "02_ssl_vs_e2e.csv")
    return Results(table, _models_frame(built, specs), s, notes=notes)


def _imagenet_panel(s: Setup, notes: list) -> pd.DataFrame | None:
    p = s.params
    where = ("Give imagenet_dir (the validation set as <dir>/<class>/<image>) and put the ResNet-50 weights in "
             "data/weights/ (or $STITCHLIB_WEIGHTS): " + "; ".join(
                 f"{name}: {IMAGENET_WEIGHTS[name].file} from {IMAGENET_WEIGHTS[name].url}"
                 for name in ["supervised", *p["imagenet_weights"]]) + ". Online, the weights download by themselves.")
    if not p["imagenet_dir"]:
        notes.append(f"ImageNet panel (Fig. 2B) skipped: no imagenet_dir given. {where}")
        return None
    try:
        data = load_imagenet_folder(p["imagenet_dir"], p["imagenet_samples"], seed=0)
        nets = {name: load_resnet50(name) for name in ["supervised", *p["imagenet_weights"]]}
    except (data_mod.DataNotFoundError, WeightsNotFoundError) as err:
        notes.append(f"ImageNet panel (Fig. 2B) skipped: {err}. {where}")
        return None
    img = dataclasses.replace(s, dataset=data)
    top, info = nets["supervised"]
    if not info["has_classifier"]:
        raise ValueError(f"the supervised ResNet-50 at {info['path']} has no classifier (fc): it cannot be the top")
    top = top.to(s.device)
    recs = {name: {"key": f"imagenet:{name}:{info['sha256'][:16]}"} for name, (_, info) in nets.items()}
    recs["supervised"]["wrong"] = misclassified(top, data.test, data.mean, data.std, device=s.device)
    recs["supervised"]["test_error"] = percent(recs["supervised"]["wrong"])
    stitch_kw = dict(epochs=float(p["stitch_epochs"]), lr=p["stitch_lr"], ls_samples=min(p["ls_samples"],
                                                                                          len(data.train)))
    rows = []
    for name in p["imagenet_weights"]:
        bottom = nets[name][0].to(s.device)
        stitched = stitch_all_cuts(img, bottom, recs[name], top, recs["supervised"], train_split=data.train,
                                   test_split=data.test, label=f"{name} into supervised",
                                   top_error=recs["supervised"]["test_error"], **stitch_kw)
        cka = cka_all_cuts(img, top, recs["supervised"], bottom, recs[name], data.test, p["cka_estimator"])
        # One pretrained network of each kind: no seed pairs, hence no interval (pair_index 0).
        columns = dict(panel="ImageNet", pair=f"{name} bottom into supervised top", direction=f"{name} into E2E",
                       **_pair_columns(0, -1, -1))
        rows += [_row(columns, row, recs["supervised"], {}, c) for row, c in zip(stitched, cka)]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- 03: the label distribution

def label_noise(s: Setup) -> Results:
    """Fig. 3A: ResNet-18 bottoms trained on weaker labels, stitched into a top trained on clean
    CIFAR-10 labels at every cut, with CKA(top, bottom) at the same cuts.

    The weak bottoms: the coarse Animals-vs-Objects task (if `coarse`) and each label-noise
    fraction in `noise`. For each seed pair, the clean top has the top seed and the clean
    reference bottom the bottom seed (01's pair); each weak bottom has a seed of its own (derived
    from the bottom seed and its labels), so that it shares neither initialisation nor data
    order with the reference it is judged against, and trains on the same images. The coarse
    model's own error is measured on coarse test labels.
    """
    p = s.params
    train_split, test_split, cka_split, stitch_split = _splits(s)
    recipe = dataclasses.replace(RECIPES[p["arch"]], epochs=float(p["epochs"]))
    kw = dict(width=p["width"], test_split=test_split, recipe=recipe)
    specs, pairs = {}, []
    for i, (top_seed, seed) in enumerate(seed_pairs(p)):
        top = f"clean labels, seed {top_seed}"
        specs[top] = _resnet(s, seed=top_seed, train_split=train_split, **kw)
        weak = [("clean labels", "clean", 0.0, train_split, test_split, seed)]
        if p["coarse"]:
            weak.append(("objects vs animals", "coarse", math.nan, data_mod.coarse_labels(train_split),
                         data_mod.coarse_labels(test_split), derived_seed(seed, "coarse")))
        weak += [(f"{q:.0%} label noise", "noise", float(q),
                  data_mod.with_label_noise(train_split, q, seed=derived_seed(seed, f"noise {q:g} labels")),
                  test_split, derived_seed(seed, f"noise {q:g}")) for q in p["noise"]]
        for label, labels, noise, train, test, own_seed in weak:
            name = f"{label}, seed {own_seed}"
            specs[name] = _resnet(s, seed=own_seed, train_split=train, **{**kw, "test_split": test})
            pairs.append(_Pair(top, name, dict(panel="label distribution", pair=label, labels=labels, noise=noise,
                                               **_pair_columns(i, top_seed, own_seed))))
    with tqdm(total=_units(specs, pairs), desc="label noise") as bar:
        table, built = _compare(s, bar, specs, pairs, test_split=test_split, cka_split=cka_split,
                                stitch_split=stitch_split)
    write_csv(table, s.figures / "03_label_noise.csv")
    return Results(table, _models_frame(built, specs), s)


# ---------------------------------------------------------------- 04: more is better

def _equal_steps(s: Setup, recipe: Recipe, n: int) -> Recipe:
    """The recipe for a model trained on n images: as many SGD steps as the base model's
    (train_samples images for `epochs` epochs), as in the paper, whose recipe is 64K steps
    whatever the sample size. The base model itself keeps its epochs-defined recipe, so the
    store shares it with the other notebooks."""
    if n == s["train_samples"]:
        return recipe
    per_epoch = math.ceil(s["train_samples"] / recipe.batch_size)
    steps = max(1, math.ceil(s["epochs"] * per_epoch))
    return dataclasses.replace(recipe, epochs=steps / math.ceil(n / recipe.batch_size), steps=steps)


def _near_zero_prefix(table: pd.DataFrame, limit: float) -> int:
    """How many stages, from the input on, sit before a cut where every penalty so far is
    <= `limit`: stitching at cut l tests the whole bottom up to l, so only a prefix can be frozen."""
    n = 0
    for penalty in table.sort_values("cut_index")["penalty"]:
        if penalty > limit:
            break
        n += 1
    return n


def more_is_better(s: Setup) -> Results:
    """Section 6 and Appendix B.2.3 / B.4: more samples (Fig. 2C), more training time (Fig. 3B)
    and more width (Fig. 3C) plug in and help; CKA for each (Fig. 7); freeze training (Fig. 9).
    Every panel runs for each seed pair (top seed, bottom seed):

    - samples: bottoms (bottom seed) trained on fewer_samples, top_samples and `samples` images,
      stitched into a top (top seed) trained on top_samples; every one takes the same number of
      SGD steps. CKA also between the fewer- and more-samples models.
    - training time: one run of `epochs` (top seed), checkpointed at `checkpoint_epochs`, each
      checkpoint stitched into the `top_epoch` checkpoint of the same run, as in the paper.
    - width: bottoms of each width in `widths` into the `width` top, and the `width` bottom into
      tops of each width (the reverse direction). CKA also between the narrowest and widest.
    - freeze training: the longest prefix of stages whose mean penalty over the seed pairs, as
      the fewer-samples bottom, is <= freeze_max_penalty at every cut. For each pair, that prefix
      of the pair's fewer-samples model is copied and frozen while the rest trains from scratch
      (top seed) on the whole training split, beside a model trained normally on it for the same
      number of steps. Test error at 8 points of each run.
    """
    p, ds = s.params, s.dataset
    train_split, test_split, cka_split, stitch_split = _splits(s)
    base = dataclasses.replace(RECIPES[p["arch"]], epochs=float(p["epochs"]))
    kw = dict(test_split=test_split)
    specs, pairs = {}, []
    # Samples (Fig. 2C): nested subsets, so the larger sets contain the smaller ones.
    sized = {n: data_mod.subset(ds.train, n, seed=0) for n in (p["fewer_samples"], p["top_samples"], p["samples"])}
    epochs = sorted({float(e) for e in p["checkpoint_epochs"]} | {float(p["top_epoch"])})
    one = p["width"]
    lo, hi = min(p["widths"]), max(p["widths"])

    def at_width(w, seed_):
        name = f"width {w:g}, seed {seed_}"
        specs[name] = _resnet(s, width=w, seed=seed_, train_split=train_split, recipe=base, **kw)
        return name

    fewer = {}
    for i, (top_seed, seed) in enumerate(seed_pairs(p)):
        cols = _pair_columns(i, top_seed, seed)
        top = f"{p['top_samples']:,} samples, seed {top_seed}"
        specs[top] = _resnet(s, width=p["width"], seed=top_seed, train_split=sized[p["top_samples"]],
                             recipe=_equal_steps(s, base, p["top_samples"]), **kw)
        for n, split in sized.items():
            name = f"{n:,} samples, seed {seed}"
            specs[name] = _resnet(s, width=p["width"], seed=seed, train_split=split, recipe=_equal_steps(s, base, n),
                                  **kw)
            pairs.append(_Pair(top, name, dict(panel="samples", pair=f"{n:,} samples", value=float(n), **cols),
                               _stitch_split(s, sized[p["top_samples"]])))
        fewer[i] = f"{p['fewer_samples']:,} samples, seed {seed}"
        pairs.append(_Pair(fewer[i], f"{p['samples']:,} samples, seed {seed}",
                           dict(panel="samples", pair=f"{p['fewer_samples']:,} vs {p['samples']:,} samples (CKA only)",
                                value=math.nan, **_pair_columns(i, seed, seed)), stitch=False))

        # Training time (Fig. 3B): checkpoints of one run.
        run = functools.cache(functools.partial(
            lambda seed_: base_model(s, width=p["width"], seed=seed_, train_split=train_split, recipe=base,
                                     checkpoints=tuple(epochs), keep_checkpoints=True, progress=False,
                                     **kw)[1]["checkpoints"], top_seed))
        for e in epochs:
            specs[f"epoch {e:g}, seed {top_seed}"] = _Spec(functools.partial(lambda r, e: r()[e], run, e), p["arch"],
                                                           p["width"])
        for e in sorted(float(e) for e in p["checkpoint_epochs"]):
            pairs.append(_Pair(f"epoch {p['top_epoch']:g}, seed {top_seed}", f"epoch {e:g}, seed {top_seed}",
                               dict(panel="training time", pair=f"epoch {e:g}", value=e,
                                    **_pair_columns(i, top_seed, top_seed))))

        # Width (Fig. 3C), both directions.
        for w in p["widths"]:
            pairs.append(_Pair(at_width(one, top_seed), at_width(w, seed),
                               dict(panel=f"width: bottoms into the {one:g} top", pair=f"width {w:g}", value=float(w),
                                    **cols)))
        for w in p["widths"]:
            if w != one:
                pairs.append(_Pair(at_width(w, top_seed), at_width(one, seed),
                                   dict(panel=f"width: the {one:g} bottom into tops", pair=f"width {w:g}",
                                        value=float(w), **cols)))
        if lo != hi:
            pairs.append(_Pair(at_width(lo, top_seed), at_width(hi, seed),
                               dict(panel="width", pair=f"width {lo:g} vs {hi:g} (CKA only)", value=math.nan, **cols),
                               stitch=False))

    everything = data_mod.subset(ds.train, len(ds.train), seed=0)
    freeze_recipe = _equal_steps(s, base, len(everything))
    per_epoch = math.ceil(len(everything) / freeze_recipe.batch_size)
    total = freeze_recipe.steps or math.ceil(freeze_recipe.epochs * per_epoch)
    # Test error at 8 evenly spaced steps (fewer if the run is shorter), the last one the end.
    curve = [step / per_epoch for step in sorted({max(1, round(total * k / 8)) for k in range(1, 8)} - {total})]
    n_pairs = len(seed_pairs(p))
    with tqdm(total=_units(specs, pairs) + 2 * n_pairs, desc="more is better") as bar:
        table, built = _compare(s, bar, specs, pairs, test_split=test_split, cka_split=cka_split,
                                stitch_split=stitch_split)
        # Freeze training (Fig. 9, Appendix B.4): one prefix for every pair, from their mean penalties.
        fewer_rows = table[(table["panel"] == "samples") & (table["value"] == p["fewer_samples"])]
        mean_rows = fewer_rows.groupby(["cut_index", "cut"], as_index=False)["penalty"].mean()
        n_frozen = _near_zero_prefix(mean_rows, p["freeze_max_penalty"])
        curves = []
        for i, (top_seed, seed) in enumerate(seed_pairs(p)):
            runs = {"normal training": None}
            if n_frozen:
                runs[f"stages up to {mean_rows.sort_values('cut_index')['cut'].iloc[n_frozen - 1]} frozen from the "
                     f"{p['fewer_samples']:,}-sample model"] = (*built[fewer[i]], n_frozen)
            for label, frozen in runs.items():
                bar.set_postfix_str(f"freeze training: {label}, pair {i}")
                _, rec = base_model(s, width=p["width"], seed=top_seed, train_split=everything, recipe=freeze_recipe,
                                    checkpoints=tuple(curve), frozen=frozen, progress=False, **kw)
                curves += [dict(run=label, frozen_stages=frozen[2] if frozen else 0, epoch=e,
                                step=round(e * per_epoch), test_error=err, _wrong=w,
                                **_pair_columns(i, top_seed, seed if frozen else top_seed))
                           for (e, err), w in zip(rec["curve"], rec["curve_wrong"])]
                bar.update()
        bar.update(bar.total - bar.n)
    curves = pd.DataFrame(curves)
    write_csv(table, s.figures / "04_more_is_better.csv")
    write_csv(curves, s.figures / "04_freeze_training.csv")
    return Results(table, _models_frame(built, specs), s, curves)


# ---------------------------------------------------------------- 05: ablations

def ablations(s: Setup, others: dict[str, Setup] | None = None) -> Results:
    """Appendix B.1 and B.3, what the paper could not show, and Table 1. For each seed pair:

    - kernel size (Fig. 4): the seed pair stitched with a k x k stitcher for each k in
      `kernel_sizes`, trained at `stitch_lr` / k (the pooled-vector cut only takes k = 1);
    - BatchNorm policy: frozen parts in eval mode (the default) against the drifting statistics
      of the original code (`bn_policy="drift"`);
    - initialisation: least squares (the default) against random, each with its penalty at
      initialisation (direct matching) and after training;
    - fine-tuning vs stitching (Fig. 8): a trained top of the ResNet-164 family (`finetune_arch`,
      the top seed) and a random bottom (random_seed + pair index). Stitching trains only the
      stitcher; fine-tuning keeps the random bottom up to the cut frozen and trains freshly
      initialised top layers (a seed of their own) for `finetune_epochs`.
    - Table 1, from the stored results of 01-04 (`results.sources`; `stitchlib.claims.table1` makes
      the table, `check_claims` writes it to table1.csv).
    """
    p = s.params
    train_split, test_split, cka_split, stitch_split = _splits(s)
    recipe = dataclasses.replace(RECIPES[p["arch"]], epochs=float(p["epochs"]))
    ft = dict(p["finetune_arch"])
    ft_width, family = ft.pop("width", 1.0), family_name("preact_resnet", p["finetune_arch"])
    specs, pairs, finetunes = {}, [], []
    for i, (top_seed, seed) in enumerate(seed_pairs(p)):
        cols = _pair_columns(i, top_seed, seed)
        top, bottom = f"ResNet-18 seed {top_seed}", f"ResNet-18 seed {seed}"
        for name, sd in ((top, top_seed), (bottom, seed)):
            specs[name] = _resnet(s, width=p["width"], seed=sd, train_split=train_split, test_split=test_split,
                                  recipe=recipe)
        # A k x k stitcher trains at lr / k: an Adam step moves every weight by about lr, so its output
        # moves about k times as far as a 1 x 1's (k^2 times the fan-in, random-walk scaling). With
        # the same lr, a short run would compare step sizes rather than what the kernels can express.
        pairs += [_Pair(top, bottom, dict(panel="kernel size", pair=f"k = {k}", value=float(k), **cols),
                        options={} if k == 1 else {"kernel_size": k, "lr": p["stitch_lr"] / k})
                  for k in p["kernel_sizes"]]
        pairs += [_Pair(top, bottom, dict(panel="BatchNorm policy", pair=label, value=math.nan, **cols),
                        options=options)
                  for label, options in (("frozen: eval mode (default)", {}),
                                         ("drift: train mode, as the original code", {"bn_policy": "drift"}))]
        pairs += [_Pair(top, bottom, dict(panel="initialisation", pair=label, value=math.nan, **cols), options=options)
                  for label, options in (("least squares (default)", {}), ("random", {"init": "random"}))]
        random_seed = p["random_seed"] + i
        ft_top, ft_random = f"{family} seed {top_seed}", f"{family} random {random_seed}"
        specs[ft_top] = _Spec(functools.partial(
            base_model, s, arch="preact_resnet", width=ft_width, seed=top_seed, options=ft, train_split=train_split,
            test_split=test_split, recipe=dataclasses.replace(RECIPES["preact_resnet"], epochs=float(p["epochs"])),
            progress=False), "preact_resnet", ft_width, ft)
        specs[ft_random] = _Spec(functools.partial(
            random_model, s, arch="preact_resnet", width=ft_width, seed=random_seed, options=ft,
            num_classes=train_split.num_classes), "preact_resnet", ft_width, ft)
        ft_cols = dict(panel="fine-tuning vs stitching", value=math.nan, **_pair_columns(i, top_seed, random_seed))
        pairs.append(_Pair(ft_top, ft_random, dict(pair="stitching", **ft_cols)))
        finetunes.append((ft_top, ft_random, random_seed, ft_cols))
    n_ft = sum(_cuts_of(specs[top]) for top, *_ in finetunes)
    with tqdm(total=_units(specs, pairs) + n_ft, desc="ablations") as bar:
        table, built = _compare(s, bar, specs, pairs, test_split=test_split, cka_split=cka_split,
                                stitch_split=stitch_split)
        ft_recipe = dataclasses.replace(RECIPES["preact_resnet"], epochs=float(p["finetune_epochs"]))
        rows = []
        for ft_top, ft_random, random_seed, ft_cols in finetunes:
            (top_model, top_rec), (random_net, random_rec) = built[ft_top], built[ft_random]
            for cut in cut_points(top_model):
                bar.set_postfix_str(f"fine-tune {family} above {cut.name}")
                # The top layers start fresh, from a seed of their own, not from the random network's.
                _, rec = base_model(s, arch="preact_resnet", width=ft_width, seed=derived_seed(random_seed, "fine-tune"),
                                    options=ft, train_split=train_split, test_split=test_split, recipe=ft_recipe,
                                    frozen=(random_net, random_rec, cut.index + 1), progress=False)
                rows.append(_row(dict(pair="fine-tuning", **ft_cols),
                                 dict(cut_index=cut.index, cut=cut.name, error_init=math.nan, error=rec["test_error"],
                                      wrong_init=None, wrong=rec["wrong"]), top_rec, {}, math.nan))
                bar.update()
    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    write_csv(table, s.figures / "05_ablations.csv")
    return Results(table, _models_frame(built, specs), s, sources=table1_sources(s, others))


def table1_sources(s: Setup, others: dict[str, Setup] | None = None) -> dict[str, Results]:
    """The results Table 1 with our numbers is made from (`stitchlib.claims.table1`): 01-04 from the
    store (computed now if absent). `others` maps "connectivity", "ssl_vs_e2e", "label_noise" and
    "more_is_better" to their setups; by default, each notebook's defaults at this profile, with
    this run's device, store and figures folder."""
    others = others or {name: setup(name, profile=s.profile, device=s.device.type, store=str(s.store.root),
                                    figures_dir=str(s.figures))
                        for name in ("connectivity", "ssl_vs_e2e", "label_noise", "more_is_better")}
    run = {"connectivity": connectivity, "ssl_vs_e2e": ssl_vs_e2e, "label_noise": label_noise,
           "more_is_better": more_is_better}
    return {name: run[name](others[name]) for name in run}


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Atomically (temp file + rename), so a crash never leaves half a table behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    frame = frame[[c for c in frame.columns if not str(c).startswith("_")]]
    frame.to_csv(tmp, index=False, float_format="%.4f")
    os.replace(tmp, path)
    return path

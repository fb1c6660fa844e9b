"""02: self-supervised vs supervised (Fig. 6 on CIFAR-10, Fig. 2B on ImageNet).

CIFAR-10, for each seed pair: an end-to-end supervised ResNet-18 (E2E, the top seed: 01's top) and
a self-supervised one (SSS, a seed of its own derived from the bottom seed): SimCLR for
`simclr_epochs`, then a linear classifier on its frozen features for `probe_epochs`. Each is
stitched into the other at every cut, beside the supervised seed pair (01's), with CKA.

ImageNet: each of `imagenet_weights` (self-supervised ResNet-50s) stitched into torchvision's
supervised ResNet-50 at every cut, on `imagenet_samples` validation images from the folder
`imagenet_dir` (half train the stitcher, half test; both halves cover every class). Without the
folder or the weights, the panel is skipped and `results.notes` says what is missing and where.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import claims as C
from .. import data as data_mod
from .. import plotting
from ..pretrained import IMAGENET_WEIGHTS, WeightsNotFoundError, load_imagenet_folder, load_resnet50, random_resnet50
from ..training import misclassified, percent
from .compute import cka_all_cuts, stitch_all_cuts
from .core import (Experiment, Plan, Setup, Splits, compare, derived_seed, finish, machine, models_frame,
                   pair_columns, register, row_of, run_plan, stitch_settings)
from .params import Common, check_width, param
from .tasks import PretrainedStitch, TrainedModel


@dataclass(frozen=True)
class SslParams(Common):
    EXPERIMENT = "ssl_vs_e2e"
    width: float = param("width multiplier of every model (first layer 64 x width)", 0.125, 1.0)
    simclr_epochs: float = param("SimCLR epochs of the SSS model (SGD, lr 0.06 x batch/256, cosine, batch 256)",
                                 5.0, 500.0, fast=5.0)
    probe_epochs: float = param("epochs of its linear classifier on the frozen features", 4.0, 100.0, fast=2.0)
    imagenet_dir: str = param('the ImageNet validation folder (<dir>/<class>/<image>); "": skip the ImageNet panel',
                              "")
    imagenet_weights: list = param("self-supervised ResNet-50s stitched into the supervised one",
                                   ["simclr", "swav", "dino"])
    # Both halves must hold an image of each of ImageNet's 1000 classes.
    imagenet_samples: int = param("validation images used (half train the stitcher, half test; both halves cover "
                                  "every class, so at least 2 per class)", 2000, 10000)
    imagenet_random_seed: int = param("seed of the untrained ResNet-50 stitched beside them (Fig. 2B's random "
                                      "control)", 100)

    def check(self) -> None:
        super().check()
        check_width("width", self.width)
        if not (self.simclr_epochs > 0 and self.probe_epochs > 0):
            raise ValueError(f"simclr_epochs and probe_epochs must be > 0, got {self.simclr_epochs!r} and "
                             f"{self.probe_epochs!r}")
        valid = sorted(set(IMAGENET_WEIGHTS) - {"supervised"})
        if not self.imagenet_weights or set(self.imagenet_weights) - set(valid):
            raise ValueError(f"imagenet_weights must list self-supervised ResNet-50s to stitch into the supervised "
                             f"one, from {valid}; got {self.imagenet_weights!r}")
        # Both halves need an image of every class: counted from the folder's class folders (a
        # listing, no image read), or ImageNet's 1000 if the folder is not there yet.
        folder = Path(self.imagenet_dir).expanduser() if self.imagenet_dir else None
        classes = (sum(1 for d in folder.iterdir() if d.is_dir()) if folder is not None and folder.is_dir()
                   else 1000) or 1
        if self.imagenet_dir and self.imagenet_samples < 2 * classes:
            raise ValueError(f"imagenet_samples={self.imagenet_samples} cannot give both halves (stitcher training, "
                             f"test) an image of each of the {classes} classes of {self.imagenet_dir}: give "
                             f"imagenet_samples >= {2 * classes}")
        if self.imagenet_samples < 2:
            raise ValueError(f"imagenet_samples must be >= 2, got {self.imagenet_samples!r}")


def plan(p: SslParams, profile: str, uses: dict) -> Plan:
    splits = Splits.of(p)
    recipe = p.recipe(p.arch, p.epochs)
    comparisons = []
    for i, (top_seed, seed) in enumerate(p.seed_pairs()):
        sss_seed = derived_seed(seed, "sss")
        e2e, e2e_b = (TrainedModel(f"E2E seed {sd}", p.arch, p.width, sd, splits.train, splits.test, recipe)
                      for sd in (top_seed, seed))
        sss = TrainedModel(f"SSS seed {sss_seed}", p.arch, p.width, sss_seed, splits.train, splits.test,
                           dataclasses.replace(recipe, epochs=float(p.probe_epochs)),
                           simclr_epochs=float(p.simclr_epochs))
        comparisons += [
            compare(p, splits, e2e, e2e_b, dict(panel="CIFAR-10", pair="two supervised seeds", direction="E2E into E2E",
                                                **pair_columns(i, top_seed, seed), **machine("cifar10", "e2e", "e2e"))),
            compare(p, splits, e2e, sss, dict(panel="CIFAR-10", pair="SSS bottom into E2E top", direction="SSS into E2E",
                                              **pair_columns(i, top_seed, sss_seed), **machine("cifar10", "e2e", "sss"))),
            compare(p, splits, sss, e2e, dict(panel="CIFAR-10", pair="E2E bottom into SSS top", direction="E2E into SSS",
                                              **pair_columns(i, sss_seed, top_seed), **machine("cifar10", "sss", "e2e")))]
    extra, notes = [], []
    if p.imagenet_dir:
        extra = [PretrainedStitch(f"{name} into supervised (ImageNet)", name, p.imagenet_samples,
                                  stitch_settings(p)) for name in p.imagenet_weights]
    else:
        notes.append("the ImageNet panel (Fig. 2B) needs imagenet_dir and the ResNet-50 weights")
    return Plan("ssl_vs_e2e", profile, p, comparisons, extra=extra, notes=notes)


def run(s: Setup):
    table, bar = run_plan(s, "ssl vs e2e")
    bar.close()
    notes = []
    imagenet = imagenet_panel(s, notes)
    if imagenet is not None:
        table = pd.concat([table, imagenet], ignore_index=True)
    return finish(s, table, models_frame(s), notes=notes)


def imagenet_panel(s: Setup, notes: list) -> pd.DataFrame | None:
    p = s.p
    where = ("Give imagenet_dir (the validation set as <dir>/<class>/<image>) and put the ResNet-50 weights in "
             "data/weights/ (or $STITCHLIB_WEIGHTS): " + "; ".join(
                 f"{name}: {IMAGENET_WEIGHTS[name].file} from {IMAGENET_WEIGHTS[name].url}"
                 for name in ["supervised", *p.imagenet_weights]) + ". Online, the weights download by themselves.")
    if not p.imagenet_dir:
        notes.append(f"ImageNet panel (Fig. 2B) skipped: no imagenet_dir given. {where}")
        return None
    try:
        data = load_imagenet_folder(p.imagenet_dir, p.imagenet_samples, seed=0)
        nets = {name: load_resnet50(name) for name in ["supervised", *p.imagenet_weights]}
    except (data_mod.DataNotFoundError, WeightsNotFoundError) as err:
        notes.append(f"ImageNet panel (Fig. 2B) skipped: {err}. {where}")
        return None
    top, info = nets["supervised"]
    if not info["has_classifier"]:
        raise ValueError(f"the supervised ResNet-50 at {info['path']} has no classifier (fc): it cannot be the top")
    top = top.to(s.device)
    recs = {name: {"key": f"imagenet:{name}:{info['sha256'][:16]}"} for name, (_, info) in nets.items()}
    recs["supervised"]["wrong"] = misclassified(top, data.test, data.mean, data.std, device=s.device)
    recs["supervised"]["test_error"] = percent(recs["supervised"]["wrong"])
    settings = dict(stitch_settings(p))
    settings["ls_samples"] = min(p.ls_samples, len(data.train))
    # Fig. 2B's random control: an untrained ResNet-50 from its own seed, beside the pretrained ones
    # (keyed, as they are, by its weights' digest).
    nets["random"] = random_resnet50(p.imagenet_random_seed)
    recs["random"] = {"key": f"imagenet:random:{nets['random'][1]['sha256'][:16]}"}
    rows = []
    for name in [*p.imagenet_weights, "random"]:
        bottom = nets[name][0].to(s.device)
        stitched = stitch_all_cuts(s.store, data, s.device, bottom, recs[name], top, recs["supervised"],
                                   train_split=data.train, test_split=data.test, label=f"{name} into supervised",
                                   numerics=p.numerics(), **settings)
        cka = cka_all_cuts(s.store, data, s.device, top, recs["supervised"], bottom, recs[name], data.test,
                           p.cka_estimator, numerics=p.numerics())
        # One pretrained network of each kind: no seed pairs, hence no interval (pair_index 0).
        pair = ("random ResNet-50 (untrained) bottom into supervised top" if name == "random"
                else f"{name} bottom into supervised top")
        columns = dict(panel="ImageNet", pair=pair, direction=f"{name} into E2E",
                       **pair_columns(0, -1, p.imagenet_random_seed if name == "random" else -1),
                       **machine("imagenet", "supervised", name))
        rows += [row_of(columns, row, recs["supervised"], {}, c) for row, c in zip(stitched, cka)]
    return pd.DataFrame(rows)


EXPERIMENT = register(Experiment(
    "ssl_vs_e2e", "02_ssl_vs_e2e", "Self-supervised vs supervised (Fig. 6, Fig. 2B)", SslParams, plan, run,
    C.ssl_claims, plotting.ssl_figures,
    columns=dict(panel_id={"cifar10", "imagenet"}, top_role={"e2e", "sss", "supervised"},
                 bottom_role={"e2e", "sss", "random", *sorted(set(IMAGENET_WEIGHTS) - {"supervised"})},
                 comparison={"stitch"})))

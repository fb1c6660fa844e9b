"""The notebooks' experiments: one setup call, one cached compute call, checked claims.

Each experiment has two profiles that differ only in sizes: "smoke" (a 2-core CPU in
minutes) and "paper" (Appendix A's scale on one GPU). Everything expensive goes through
the artifact store, keyed on the full configuration, the dataset's identity and the code
version, so re-running a notebook with the same parameters loads instead of training.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import data as data_mod
from .models import ARCHITECTURES, build_model, cut_points, spine
from .similarity import CKAAccumulator
from .stitching import stitch
from .store import Store
from .training import Recipe, resolve_device, error_rate, train_model

__all__ = ["PROFILES", "Setup", "setup", "connectivity", "check_claims", "summarize"]

REPO_ROOT = Path(__file__).resolve().parent.parent

# Sizes per profile. The notebooks' parameters default to None, meaning "the profile's value".
PROFILES: dict[str, dict[str, dict]] = {
    "connectivity": {
        "smoke": dict(
            dataset="cifar10", arch="resnet18", widths=[0.0625, 0.125, 0.25], seeds=[0, 1], random_seed=100,
            train_samples=10000, test_samples=1000, epochs=4.0, stitch_samples=2000, stitch_epochs=2.0,
            stitch_lr=0.03, ls_samples=500, cka_samples=500, cka_estimator="exact",
        ),
        "paper": dict(
            dataset="cifar10", arch="resnet18", widths=[0.5, 1.0, 2.0], seeds=[0, 1], random_seed=100,
            # 64K steps of batch 128 on 50K images = 164 epochs (Appendix A.2).
            train_samples=50000, test_samples=10000, epochs=164.0, stitch_samples=50000, stitch_epochs=10.0,
            stitch_lr=0.001, ls_samples=10000, cka_samples=10000, cka_estimator="minibatch",
        ),
    }
}

# Types of every parameter, checked before any work starts (papermill injects whatever it is given).
PARAM_TYPES = dict(
    dataset=str, arch=str, widths=list, seeds=list, random_seed=int, train_samples=int, test_samples=int,
    epochs=(int, float), stitch_samples=int, stitch_epochs=(int, float), stitch_lr=(int, float), ls_samples=int,
    cka_samples=int, cka_estimator=str, device=str, profile=str,
)


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
        print(f"experiment {self.experiment} | profile {self.profile} | device {self.device.type}")
        print(f"data       {ident['name']} from {ident['source']} (sha256 {ident['sha256'][:12]}...)")
        print(f"store      {self.store.root}")
        print(f"figures    {self.figures}")
        for key, value in self.params.items():
            print(f"  {key:15s} {value}")


def setup(experiment: str, *, profile: str = "smoke", device: str = "auto", figures_dir: str | None = None,
          store: str | None = None, **params) -> Setup:
    """Validate the parameters, fill the profile's values for those left None, load the data.

    `figures_dir` defaults to <repository>/figures/<profile>; `store` to the artifact store's
    default ($STITCHLIB_STORE or <repository>/runs/store). Neither depends on the cwd.
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
        if isinstance(value, bool) or not isinstance(value, expected):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise TypeError(f"parameter {name!r} must be {names}, got {type(value).__name__} {value!r}")
    _validate(resolved)
    dev = resolve_device(device)
    dataset = data_mod.load_dataset(resolved["dataset"])
    if resolved["train_samples"] > len(dataset.train):
        raise ValueError(f"train_samples={resolved['train_samples']} exceeds the {len(dataset.train)} images "
                         "of the training split")
    if resolved["test_samples"] > len(dataset.test):
        raise ValueError(f"test_samples={resolved['test_samples']} exceeds the {len(dataset.test)} images "
                         "of the test split")
    figures = Path(figures_dir) if figures_dir else REPO_ROOT / "figures" / profile
    figures.mkdir(parents=True, exist_ok=True)
    return Setup(experiment, profile, resolved, dev, Store(store), dataset, figures)


def _validate(p: dict) -> None:
    if p["arch"] not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {p['arch']!r}; valid: {sorted(ARCHITECTURES)}")
    if not p["widths"] or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0 for w in p["widths"]):
        raise ValueError(f"widths must be a non-empty list of numbers > 0, got {p['widths']!r}")
    if (len(p["seeds"]) < 2 or len(set(p["seeds"])) != len(p["seeds"])
            or any(isinstance(x, bool) or not isinstance(x, int) for x in p["seeds"])):
        raise ValueError(f"seeds must list at least two distinct ints (a top and a bottom), got {p['seeds']!r}")
    for key in ("train_samples", "test_samples", "stitch_samples", "ls_samples", "cka_samples"):
        if p[key] <= 0:
            raise ValueError(f"{key} must be > 0, got {p[key]!r}")
    # The stitcher trains on part of the base models' training subset; CKA uses part of the test subset.
    if p["stitch_samples"] > p["train_samples"]:
        raise ValueError(f"stitch_samples={p['stitch_samples']} must be <= train_samples={p['train_samples']}")
    if p["cka_samples"] > p["test_samples"]:
        raise ValueError(f"cka_samples={p['cka_samples']} must be <= test_samples={p['test_samples']}")
    if p["epochs"] <= 0 or p["stitch_epochs"] < 0 or p["stitch_lr"] <= 0:
        raise ValueError(f"epochs must be > 0, stitch_epochs >= 0 and stitch_lr > 0; got {p['epochs']!r}, "
                         f"{p['stitch_epochs']!r}, {p['stitch_lr']!r}")
    if p["cka_estimator"] not in ("exact", "minibatch"):
        raise ValueError(f"unknown cka_estimator {p['cka_estimator']!r}; valid: ['exact', 'minibatch']")


# ---------------------------------------------------------------- cached building blocks

def base_model(s: Setup, *, width: float, seed: int, train_split: data_mod.Split, test_split: data_mod.Split,
               recipe: Recipe, arch: str | None = None, progress: bool = True):
    """A trained network from the store, trained now if absent. Returns (model, record)."""
    arch = arch or s["arch"]
    ds = s.dataset
    config = dict(arch=arch, width=width, seed=seed, num_classes=train_split.num_classes,
                  in_channels=ds.train.images.shape[1], recipe=recipe.as_config(), data=ds.identity,
                  train_split=list(map(list, train_split.recipe)), test_split=list(map(list, test_split.recipe)),
                  device=s.device.type)

    def compute():
        model = build_model(arch, seed=seed, width=width, num_classes=train_split.num_classes,
                            in_channels=config["in_channels"])
        start = time.perf_counter()
        train_model(model, train_split, ds.mean, ds.std, recipe, seed=seed, device=s.device,
                    desc=f"{arch} w={width} seed={seed}", progress=progress)
        seconds = time.perf_counter() - start
        err = error_rate(model, test_split, ds.mean, ds.std, device=s.device)
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "test_error": err,
                "train_seconds": seconds}

    record = s.store.cached("model", config, compute)
    model = build_model(arch, seed=seed, width=width, num_classes=train_split.num_classes,
                        in_channels=config["in_channels"])
    model.load_state_dict(record["state_dict"])
    model.to(s.device).eval()
    return model, {"key": s.store.key("model", config), "test_error": record["test_error"]}


def random_model(s: Setup, *, width: float, seed: int, num_classes: int, arch: str | None = None):
    """The random control: a freshly built, untrained network from its own seed."""
    arch = arch or s["arch"]
    model = build_model(arch, seed=seed, width=width, num_classes=num_classes,
                        in_channels=s.dataset.train.images.shape[1])
    return model.to(s.device).eval(), {"key": f"random:{arch}:{width}:{seed}"}


def stitch_all_cuts(s: Setup, bottom, bottom_rec, top, top_rec, *, train_split, test_split, label: str,
                    top_error: float, bar=None, **stitch_kw) -> list[dict]:
    """Stitch `bottom` into `top` at every cut point (cached as one artifact per pair).
    `bar`, when given, is a progress bar advanced once per cut."""
    config = dict(bottom=bottom_rec["key"], top=top_rec["key"], data=s.dataset.identity,
                  train_split=list(map(list, train_split.recipe)), test_split=list(map(list, test_split.recipe)),
                  device=s.device.type, **stitch_kw)

    def compute():
        rows = []
        for cut in cut_points(top):
            if bar is not None:
                bar.set_postfix_str(f"stitch {label} at {cut.name}")
            res = stitch(bottom, top, cut.index, s.dataset, train=train_split, test=test_split,
                         top_error=top_error, device=s.device, progress=bar is None, **stitch_kw)
            rows.append(dict(cut_index=cut.index, cut=cut.name, error_init=res.error_init, error=res.error))
            if bar is not None:
                bar.update()
        return {"rows": rows}

    return s.store.cached("stitch", config, compute)["rows"]


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


# ---------------------------------------------------------------- 01: stitching connectivity

@dataclass
class Results:
    table: pd.DataFrame
    models: pd.DataFrame
    setup: Setup = field(repr=False)


def connectivity(s: Setup) -> Results:
    """Fig. 2A (stitching connectivity) and Fig. 5 (CKA) for ResNet-18 at several widths.

    For each width: seed[0] is the top A; each other seed and a freshly built random
    network are stitched into it at every cut point, and CKA(A, bottom) is computed at
    every cut. Returns one tidy row per (width, bottom, cut).
    """
    p, ds = s.params, s.dataset
    train_split = data_mod.subset(ds.train, p["train_samples"], seed=0)
    test_split = data_mod.subset(ds.test, p["test_samples"], seed=0)
    stitch_split = data_mod.subset(train_split, p["stitch_samples"], seed=1)
    cka_split = data_mod.subset(test_split, p["cka_samples"], seed=2)
    recipe = Recipe(epochs=float(p["epochs"]))
    stitch_kw = dict(epochs=float(p["stitch_epochs"]), lr=p["stitch_lr"], ls_samples=p["ls_samples"])
    rows, model_rows = [], []
    n_cuts = len(cut_points(build_model(p["arch"], seed=0, width=p["widths"][0])))
    n_bottoms = len(p["seeds"])  # the other seeds plus the random network
    # One bar for the whole experiment, advanced per base model, per stitched cut and per CKA pair;
    # the inner loops stay quiet so a notebook shows a single line of progress.
    bar = tqdm(total=len(p["widths"]) * (len(p["seeds"]) + n_bottoms * (n_cuts + 1)), desc="connectivity")
    with bar:
        for width in p["widths"]:
            trained = []
            for seed in p["seeds"]:
                bar.set_postfix_str(f"base model w={width} seed={seed}")
                trained.append(base_model(s, width=width, seed=seed, train_split=train_split,
                                          test_split=test_split, recipe=recipe, progress=False))
                bar.update()
            top, top_rec = trained[0]
            for seed, (_, rec) in zip(p["seeds"], trained):
                model_rows.append(dict(width=width, seed=seed, test_error=rec["test_error"]))
            bottoms = [(f"seed {seed}", m, rec) for seed, (m, rec) in zip(p["seeds"][1:], trained[1:])]
            bottoms.append(("random", *random_model(s, width=width, seed=p["random_seed"],
                                                    num_classes=train_split.num_classes)))
            for label, bottom, bottom_rec in bottoms:
                done = bar.n
                stitched = stitch_all_cuts(s, bottom, bottom_rec, top, top_rec, train_split=stitch_split,
                                           test_split=test_split, label=f"w={width} {label}",
                                           top_error=top_rec["test_error"], bar=bar, **stitch_kw)
                bar.update(done + n_cuts - bar.n)  # a cached pair advanced nothing
                bar.set_postfix_str(f"CKA w={width} {label}")
                cka = cka_all_cuts(s, top, top_rec, bottom, bottom_rec, cka_split, p["cka_estimator"])
                bar.update()
                for row, c in zip(stitched, cka):
                    rows.append(dict(arch=p["arch"], width=width,
                                     bottom="random" if label == "random" else "trained", pair=label, **row,
                                     top_error=top_rec["test_error"],
                                     penalty_init=row["error_init"] - top_rec["test_error"],
                                     penalty=row["error"] - top_rec["test_error"], cka=c))
    table = pd.DataFrame(rows)
    write_csv(table, s.figures / "01_connectivity.csv")
    return Results(table, pd.DataFrame(model_rows), s)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Atomically (temp file + rename), so a crash never leaves half a table behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, float_format="%.4f")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- claims

def check_claims(results: Results, **thresholds: float) -> pd.DataFrame:
    """The paper's claims for `results`, one row each: claim, statistic, threshold, verdict."""
    t = results.table
    n_cuts = t["cut_index"].max() + 1
    late = t["cut_index"] >= n_cuts // 2
    trained, random = t[t["bottom"] == "trained"], t[t["bottom"] == "random"]
    rows = []
    worst_pair = trained["penalty"].max()
    rows.append(("(a) two seeds are stitching-connected: max penalty over cuts and widths (points)",
                 worst_pair, f"<= {thresholds['connected_max_penalty']}",
                 worst_pair <= thresholds["connected_max_penalty"]))
    late_random, late_trained = random[late[random.index]], trained[late[trained.index]]
    gap = min(late_random[late_random["width"] == w]["penalty"].mean()
              - late_trained[late_trained["width"] == w]["penalty"].mean() for w in t["width"].unique())
    rows.append(("(b) a random bottom is far worse at the later cuts: min over widths of mean penalty gap (points)",
                 gap, f">= {thresholds['random_late_gap']}", gap >= thresholds["random_late_gap"]))
    early = max(random[(random["cut_index"] == 0) & (random["width"] == w)]["penalty"].iloc[0]
                for w in t["width"].unique())
    rows.append(("(c) the first cut of a random bottom is cheap: max over widths of its penalty (points)",
                 early, f"<= {thresholds['random_early_max']}", early <= thresholds["random_early_max"]))
    return pd.DataFrame(rows, columns=["claim", "statistic", "threshold", "holds"])


def summarize(results: Results, claims: pd.DataFrame) -> None:
    """Print the numbers behind the verdicts: base-model errors, claim statistics, penalties per cut."""
    with pd.option_context("display.width", 140, "display.precision", 2):
        print("base models (test error, %):")
        print(results.models.to_string(index=False))
        print("\nclaims:")
        print(claims.to_string(index=False))
        pivot = results.table.pivot_table(index=["cut_index", "cut"], columns=["width", "bottom"],
                                          values=["penalty"], sort=False)
        print("\nstitching penalty after training (points):")
        print(pivot.round(2).to_string())

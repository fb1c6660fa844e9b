"""The notebooks' experiments: one setup call, one cached compute call, checked claims.

Each experiment has two profiles that differ only in sizes: "smoke" (a 2-core CPU in
minutes) and "paper" (Appendix A's scale on one GPU). Everything expensive goes through
the artifact store, keyed on the full configuration, the dataset's identity and the code
version, so re-running a notebook with the same parameters loads instead of training.
"""

from __future__ import annotations

import dataclasses
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
from .training import RECIPES, Recipe, error_rate, resolve_device, train_model

__all__ = ["PROFILES", "Setup", "setup", "connectivity", "check_claims", "summarize"]

REPO_ROOT = Path(__file__).resolve().parent.parent

# Sizes per profile. The notebooks' parameters default to None, meaning "the profile's value".
PROFILES: dict[str, dict[str, dict]] = {
    "connectivity": {
        "smoke": dict(
            dataset="cifar10", arch="resnet18", widths=[0.0625, 0.125, 0.25], seeds=[0, 1], random_seed=100,
            train_samples=10000, test_samples=1000, epochs=4.0, stitch_samples=2000, stitch_epochs=2.0,
            stitch_lr=0.03, ls_samples=500, cka_samples=500, cka_estimator="exact",
            architectures={"preact_resnet": {"width": 0.5, "depth": 11}, "myrtle": {"width": 0.25},
                           "vit": {"width": 0.0833, "depth": 4}},
            disjoint=True,
        ),
        "paper": dict(
            dataset="cifar10", arch="resnet18", widths=[0.5, 1.0, 2.0], seeds=[0, 1], random_seed=100,
            # 64K steps of batch 128 on 50K images = 164 epochs (Appendix A.2).
            train_samples=50000, test_samples=10000, epochs=164.0, stitch_samples=50000, stitch_epochs=10.0,
            stitch_lr=0.001, ls_samples=10000, cka_samples=10000, cka_estimator="minibatch",
            # ResNet-164; the Myrtle CNN for 80K steps (205 epochs); the paper's ViT (trained on
            # CIFAR-5m there, on CIFAR-10 here).
            architectures={"preact_resnet": {"width": 1.0, "depth": 164}, "myrtle": {"width": 1.0, "epochs": 205.0},
                           "vit": {"width": 1.0, "depth": 12}},
            disjoint=True,
        ),
    }
}

# Types of every parameter, checked before any work starts (papermill injects whatever it is given).
PARAM_TYPES = dict(
    dataset=str, arch=str, widths=list, seeds=list, random_seed=int, train_samples=int, test_samples=int,
    epochs=(int, float), stitch_samples=int, stitch_epochs=(int, float), stitch_lr=(int, float), ls_samples=int,
    cka_samples=int, cka_estimator=str, device=str, profile=str, architectures=dict, disjoint=bool,
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
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
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
    for arch, opts in p["architectures"].items():
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r} in architectures; valid: {sorted(ARCHITECTURES)}")
        if not isinstance(opts, dict) or set(opts) - {"width", "depth", "epochs"}:
            raise ValueError(f"architectures[{arch!r}] must be a dict of width, depth and epochs, got {opts!r}")
        options = {k: v for k, v in opts.items() if k != "epochs"}
        build_model(arch, seed=0, **options)  # a bad depth or width fails here, before any training
    if p["cka_estimator"] not in ("exact", "minibatch"):
        raise ValueError(f"unknown cka_estimator {p['cka_estimator']!r}; valid: ['exact', 'minibatch']")


# ---------------------------------------------------------------- cached building blocks

def base_model(s: Setup, *, width: float, seed: int, train_split: data_mod.Split, test_split: data_mod.Split,
               recipe: Recipe, arch: str | None = None, options: dict | None = None, progress: bool = True):
    """A trained network from the store, trained now if absent. Returns (model, record).
    `options` go to the architecture (e.g. depth)."""
    arch = arch or s["arch"]
    options = options or {}
    ds = s.dataset
    config = dict(arch=arch, width=width, options=options, seed=seed, num_classes=train_split.num_classes,
                  in_channels=ds.train.images.shape[1], recipe=recipe.as_config(), data=ds.identity,
                  train_split=list(map(list, train_split.recipe)), test_split=list(map(list, test_split.recipe)),
                  device=s.device.type)

    def compute():
        model = build_model(arch, seed=seed, width=width, num_classes=train_split.num_classes,
                            in_channels=config["in_channels"], **options)
        start = time.perf_counter()
        train_model(model, train_split, ds.mean, ds.std, recipe, seed=seed, device=s.device,
                    desc=f"{arch} w={width} seed={seed}", progress=progress)
        seconds = time.perf_counter() - start
        err = error_rate(model, test_split, ds.mean, ds.std, device=s.device)
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "test_error": err,
                "train_seconds": seconds}

    record = s.store.cached("model", config, compute)
    model = build_model(arch, seed=seed, width=width, num_classes=train_split.num_classes,
                        in_channels=config["in_channels"], **options)
    model.load_state_dict(record["state_dict"])
    model.to(s.device).eval()
    return model, {"key": s.store.key("model", config), "test_error": record["test_error"]}


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

FAMILY_NAMES = {"resnet18": "ResNet-18", "myrtle": "Myrtle CNN", "vit": "ViT"}


def family_name(arch: str, options: dict) -> str:
    if arch == "preact_resnet":
        return f"ResNet-{options.get('depth', 164)}"
    return FAMILY_NAMES.get(arch, arch)


@dataclass
class Results:
    table: pd.DataFrame
    models: pd.DataFrame
    setup: Setup = field(repr=False)


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
    train_splits: list
    with_random: bool = True


def _families(s: Setup, train_split) -> list[_Family]:
    p = s.params
    out = [_Family("ResNet-18", p["arch"], w, {}, p["epochs"], "seeds", [train_split] * len(p["seeds"]))
           for w in p["widths"]]
    for arch, opts in p["architectures"].items():
        opts = dict(opts)
        width, epochs = opts.pop("width", 1.0), opts.pop("epochs", p["epochs"])
        out.append(_Family(family_name(arch, opts), arch, width, opts, epochs, "seeds",
                           [train_split] * len(p["seeds"])))
    if p["disjoint"]:
        # Section 4: "a similar result holds for networks trained on disjoint train sets".
        # The paper's recipe is a number of SGD steps, so each half gets as many steps as the
        # full subset does: twice the epochs.
        halves = data_mod.disjoint_subsets(train_split, [len(train_split) // 2] * 2, seed=3)
        width = p["widths"][len(p["widths"]) // 2]
        epochs = p["epochs"] * len(train_split) / len(halves[0])
        out.append(_Family("ResNet-18, disjoint halves", p["arch"], width, {}, epochs, "disjoint",
                           [halves[i % 2] for i in range(len(p["seeds"]))], with_random=False))
    return out


def connectivity(s: Setup) -> Results:
    """Fig. 2A (stitching connectivity) and Fig. 5 (CKA): ResNet-18 at several widths, the other
    architectures in `architectures`, and (if `disjoint`) two ResNet-18s trained on disjoint
    halves of the training subset.

    In each panel seed[0] is the top A; each other seed (and, except for the disjoint panel, a
    freshly built random network) is stitched into it at every cut point, and CKA(A, bottom) is
    computed at every cut. Returns one tidy row per (panel, bottom, cut).
    """
    p, ds = s.params, s.dataset
    train_split = data_mod.subset(ds.train, p["train_samples"], seed=0)
    test_split = data_mod.subset(ds.test, p["test_samples"], seed=0)
    cka_split = data_mod.subset(test_split, p["cka_samples"], seed=2)
    stitch_kw = dict(epochs=float(p["stitch_epochs"]), lr=p["stitch_lr"], ls_samples=p["ls_samples"])
    families = _families(s, train_split)
    n_cuts = {id(f): len(cut_points(build_model(f.arch, seed=0, width=f.width, **f.options))) for f in families}
    total = sum(len(p["seeds"]) + (len(p["seeds"]) - 1 + f.with_random) * (n_cuts[id(f)] + 1) for f in families)
    rows, model_rows = [], []
    # One bar for the whole experiment, advanced per base model, per stitched cut and per CKA pair;
    # the inner loops stay quiet so a notebook shows a single line of progress.
    with tqdm(total=total, desc="connectivity") as bar:
        for f in families:
            recipe = dataclasses.replace(RECIPES[f.arch], epochs=float(f.epochs))
            trained = []
            for seed, split in zip(p["seeds"], f.train_splits):
                bar.set_postfix_str(f"{f.family} w={f.width} seed={seed}")
                trained.append(base_model(s, arch=f.arch, width=f.width, seed=seed, options=f.options,
                                          train_split=split, test_split=test_split, recipe=recipe, progress=False))
                bar.update()
            top, top_rec = trained[0]
            for seed, (_, rec) in zip(p["seeds"], trained):
                model_rows.append(dict(family=f.family, width=f.width, seed=seed, test_error=rec["test_error"]))
            stitch_split = data_mod.subset(f.train_splits[0], p["stitch_samples"], seed=1)
            bottoms = [(f"seed {seed}", m, rec) for seed, (m, rec) in zip(p["seeds"][1:], trained[1:])]
            if f.with_random:
                bottoms.append(("random", *random_model(s, arch=f.arch, width=f.width, seed=p["random_seed"],
                                                        options=f.options, num_classes=train_split.num_classes)))
            for label, bottom, bottom_rec in bottoms:
                done = bar.n
                stitched = stitch_all_cuts(s, bottom, bottom_rec, top, top_rec, train_split=stitch_split,
                                           test_split=test_split, label=f"{f.family} w={f.width} {label}",
                                           top_error=top_rec["test_error"], bar=bar, **stitch_kw)
                bar.update(done + n_cuts[id(f)] - bar.n)  # a cached pair advanced nothing
                bar.set_postfix_str(f"CKA {f.family} w={f.width} {label}")
                cka = cka_all_cuts(s, top, top_rec, bottom, bottom_rec, cka_split, p["cka_estimator"])
                bar.update()
                for row, c in zip(stitched, cka):
                    rows.append(dict(family=f.family, arch=f.arch, width=f.width, panel=f.panel,
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

RANDOM_CONTROL_FAMILIES = ("ResNet-18",)


def check_claims(results: Results, **thresholds: float) -> pd.DataFrame:
    """The paper's claims for `results`, one row each: claim, model, statistic, threshold, verdict.

    (a) is checked for every panel; ResNet-18's widths count as one panel (the statistic is the
    worst width). (b) and (c), about the random-network control, are checked where the paper
    makes them: ResNet-18 (Fig. 2A's reference line, Appendix B.2.1). The other panels draw
    their random controls without a verdict.
    """
    t = results.table
    rows = []
    for family in t["family"].unique():
        f = t[t["family"] == family]
        n_cuts = f["cut_index"].max() + 1
        late = f[f["cut_index"] >= n_cuts // 2]
        trained, random = f[f["bottom"] == "trained"], f[f["bottom"] == "random"]
        worst = trained["penalty"].max()
        rows.append(("(a) two seeds are stitching-connected: max penalty over cuts (points)", family,
                     worst, f"<= {thresholds['connected_max_penalty']}", worst <= thresholds["connected_max_penalty"]))
        if random.empty or family not in RANDOM_CONTROL_FAMILIES:
            continue
        gap = min(late[(late["bottom"] == "random") & (late["width"] == w)]["penalty"].mean()
                  - late[(late["bottom"] == "trained") & (late["width"] == w)]["penalty"].mean()
                  for w in f["width"].unique())
        rows.append(("(b) a random bottom is far worse at the later cuts: mean penalty gap (points)", family,
                     gap, f">= {thresholds['random_late_gap']}", gap >= thresholds["random_late_gap"]))
        early = random[random["cut_index"] == 0]["penalty"].max()
        rows.append(("(c) the first cut of a random bottom is cheap: its penalty (points)", family,
                     early, f"<= {thresholds['random_early_max']}", early <= thresholds["random_early_max"]))
    return pd.DataFrame(rows, columns=["claim", "model", "statistic", "threshold", "holds"])


def summarize(results: Results, claims: pd.DataFrame) -> None:
    """Print the numbers behind the verdicts: base-model errors, claim statistics, penalties per cut."""
    with pd.option_context("display.width", 140, "display.precision", 2):
        print("base models (test error, %):")
        print(results.models.to_string(index=False))
        print("\nclaims:")
        print(claims.to_string(index=False))
        for family, f in results.table.groupby("family", sort=False):
            pivot = f.pivot_table(index=["cut_index", "cut"], columns=["width", "bottom"], values="penalty",
                                  sort=False)
            print(f"\n{family}: stitching penalty after training (points):")
            print(pivot.round(2).to_string())

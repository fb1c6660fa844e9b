import dataclasses
import json

import pandas as pd
import pytest
import torch

import stitchlib
from stitchlib import experiments as E
from stitchlib.experiments import compute as X
from stitchlib.experiments import more_is_better as M
from stitchlib.experiments import ssl_vs_e2e as SSLE
from stitchlib.experiments.core import Splits
from stitchlib.experiments.tasks import FrozenPrefix, FrozenSuffix, RandomModel, TrainedModel
from stitchlib import pretrained as P
from stitchlib.pretrained import IMAGENET_WEIGHTS
from stitchlib.store import CorruptArtifactWarning
from stitchlib.training import RECIPES

TINY = dict(widths=[0.0625], seeds=[0, 1, 2, 3], train_samples=512, test_samples=256, epochs=1.0, stitch_samples=256,
            stitch_epochs=0.5, ls_samples=256, cka_samples=128, architectures={"myrtle": {"width": 0.125}},
            disjoint=True)


def assert_tables_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal numbers, and equal per-image correctness (tensors) in the "_" columns."""
    plain = [c for c in a.columns if not c.startswith("_")]
    pd.testing.assert_frame_equal(a[plain], b[plain])
    for c in (c for c in a.columns if c.startswith("_")):
        assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a[c], b[c])), c


@pytest.fixture()
def tiny(tmp_path):
    return stitchlib.setup("connectivity", device="cpu", store=str(tmp_path / "store"),
                           figures_dir=str(tmp_path / "figures"), **TINY)


def test_connectivity_table_is_tidy_and_consistent(tiny):
    res = stitchlib.connectivity(tiny)
    t = res.table
    # Per seed pair: ResNet-18 (seed + random, 10 cuts), Myrtle (seed + random, 5 cuts), disjoint halves (seed only).
    assert len(t) == 2 * (2 * 10 + 2 * 5 + 10) and set(t["pair"]) == {"another seed", "random"}
    assert list(t["family"].unique()) == ["ResNet-18", "Myrtle CNN", "ResNet-18, disjoint halves"]
    trained, random = t[t["bottom"] == "trained"], t[t["bottom"] == "random"]
    assert set(zip(trained["pair_index"], trained["seed_top"], trained["seed_bottom"])) == {(0, 0, 1), (1, 2, 3)}
    assert set(zip(random["pair_index"], random["seed_bottom"])) == {(0, 100), (1, 101)}  # a random net per pair
    # Every row carries per-image correctness on the same test images, consistent with its errors.
    row = trained.iloc[3]
    assert len(row["_wrong"]) == len(row["_wrong_top"]) == 256
    assert 100 * row["_wrong"].float().mean().item() == pytest.approx(row["error"])
    assert 100 * row["_wrong_top"].float().mean().item() == pytest.approx(row["top_error"])
    assert set(t[t["panel"] == "disjoint"]["bottom"]) == {"trained"}
    assert (t["penalty"] - (t["error"] - t["top_error"])).abs().max() < 1e-9
    assert t["cka"].between(0, 1).all()
    # The random control is less similar to the top model than another trained seed, by CKA on average.
    by = t.groupby("bottom")["cka"].mean()
    assert by["random"] < by["trained"]
    csv = pd.read_csv(tiny.figures / "01_connectivity.csv")
    assert list(csv.columns) == [c for c in t.columns if not c.startswith("_")] and len(csv) == len(t)
    claims = stitchlib.check_claims(res)
    # (a) for each of the three panels; (b) and (c) for ResNet-18, where the paper makes them.
    assert list(claims.columns) == stitchlib.claims.CLAIM_COLUMNS and len(claims) == 5
    assert list(claims["model"]) == ["ResNet-18 w=0.0625"] * 3 + ["Myrtle CNN w=0.125", "ResNet-18, disjoint halves w=0.0625"]
    assert set(claims["verdict"]) <= {"holds", "fails", "inconclusive"} and (claims["pairs"] == 2).all()
    # (b): the mean over the two pairs of the random bottom's mean penalty over the later half (cuts 5-9).
    late = random[random["cut_index"] >= 5].groupby("pair_index")["penalty"].mean()
    b = claims.iloc[1]
    assert b["statistic"] == pytest.approx(late.mean()) and b["low"] < b["statistic"] < b["high"]
    # Two seed pairs decide nothing, whatever their interval says (statistics.MIN_PAIRS_TO_DECIDE).
    assert (claims["verdict"] == "inconclusive").all()
    # (a) is judged cut by cut and shows the deciding cut: its statistic is that cut's mean over the pairs.
    per_cut = trained[trained["family"] == "ResNet-18"].groupby("cut")["penalty"].mean()
    a = claims.iloc[0]
    assert a["statistic"] == pytest.approx(per_cut[a["worst_cut"]]) and a["low"] < a["statistic"] < a["high"]
    for name in ("claims", "summary", "models"):
        assert (tiny.figures / f"01_connectivity_{name}.csv").exists()
    summary = pd.read_csv(tiny.figures / "01_connectivity_summary.csv")
    assert len(summary) == len(t) // 2 and {"penalty_low", "penalty_high", "cka_low", "cka_high"} <= set(summary.columns)
    assert list(res.models["family"].unique()) == ["ResNet-18", "Myrtle CNN", "ResNet-18, disjoint halves"]
    # CKA at every pair of cuts of the first ResNet-18 seed pair: its diagonal is that pair's per-cut CKA.
    m = res.cka_matrix
    assert len(m) == 10 * 10 and set(zip(m["seed_a"], m["seed_b"])) == {(0, 1)} and m["cka"].between(0, 1).all()
    pair0 = trained[(trained["family"] == "ResNet-18") & (trained["pair_index"] == 0)].sort_values("cut_index")
    diagonal = m[m["cut_index_a"] == m["cut_index_b"]].sort_values("cut_index_a")
    assert list(diagonal["cut_a"]) == list(pair0["cut"])
    assert abs(diagonal["cka"].to_numpy() - pair0["cka"].to_numpy()).max() < 1e-12
    assert len(pd.read_csv(tiny.figures / "01_cka_matrix.csv")) == 100


def test_second_run_loads_instead_of_training(tiny, monkeypatch):
    first = stitchlib.connectivity(tiny).table

    def forbidden(*a, **k):
        raise AssertionError("recomputed although the store holds the result")

    monkeypatch.setattr(X, "train_model", forbidden)
    monkeypatch.setattr(X, "stitch", forbidden)
    monkeypatch.setattr(X, "CKAAccumulator", forbidden)
    second = stitchlib.connectivity(tiny).table
    assert_tables_equal(first, second)


def test_corrupt_artifact_is_recomputed_with_a_warning(tiny):
    first = stitchlib.connectivity(tiny).table
    victim = sorted((tiny.store.root / "model").glob("*.pt"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.warns(CorruptArtifactWarning, match=victim.name):
        again = stitchlib.connectivity(tiny).table
    assert_tables_equal(first, again)  # same parameters and seed, same numbers


def test_random_control_shares_no_weight_with_trained_networks(tiny):
    splits = Splits.of(tiny.p)
    trained, _ = tiny.runner.model(TrainedModel("trained", "resnet18", 0.0625, 0, splits.train, splits.test,
                                                stitchlib.training.Recipe(epochs=1.0)))
    random, _ = tiny.runner.model(RandomModel("random", "resnet18", 0.0625, 100, 10))
    tp = {k: v for k, v in trained.state_dict().items() if v.is_floating_point()}
    rp = random.state_dict()
    ptrs = {v.data_ptr() for v in tp.values()}
    for k, v in rp.items():
        assert v.data_ptr() not in ptrs
        if v.is_floating_point() and v.numel() > 1 and "running" not in k:
            assert not torch.equal(v, tp[k]), k


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(dataset="imagenet"), ValueError, "unknown dataset 'imagenet'"),
    (dict(arch="vgg11"), ValueError, "unknown architecture 'vgg11'"),
    (dict(widths=[0.5, 0]), ValueError, "widths must be a non-empty list of numbers > 0"),
    (dict(widths=[]), ValueError, "widths must be a non-empty list"),
    (dict(train_samples=60000), ValueError, r"train_samples=60000 must be in \[128, 50000\] \(the training split"),
    (dict(train_samples="5000"), TypeError, "parameter 'train_samples' must be int, got str '5000'"),
    (dict(epochs=True), TypeError, "parameter 'epochs' must be int or float"),
    (dict(stitch_samples=20000, train_samples=10000), ValueError,
     r"stitch_samples=20000 must be in \[1, 10000\] \(drawn from the base top's train_samples"),
    (dict(seeds=[0, 1]), ValueError, "an interval needs at least two pairs"),
    (dict(seeds=[0, 1, 2]), ValueError, "an even number of seeds, at least 4"),
    (dict(seeds=[0, 1, 2, 2]), ValueError, "seeds must list distinct ints"),
    (dict(seeds=[0, "1", 2, 3]), ValueError, "seeds must list distinct ints"),
    (dict(confidence=1.0), ValueError, r"confidence must be a number in \(0, 1\)"),
    (dict(confidence=0), ValueError, r"confidence must be a number in \(0, 1\)"),
    (dict(confidence="95%"), TypeError, "parameter 'confidence' must be int or float"),
    (dict(stitch_lr=0.0), ValueError, "stitch_lr > 0"),
    (dict(cka_estimator="svcca"), ValueError, "unknown cka_estimator"),
    (dict(bogus=1), ValueError, r"unknown parameters \['bogus'\]"),
    (dict(architectures={"alexnet": {}}), ValueError, "unknown architecture 'alexnet' in architectures"),
    (dict(architectures={"preact_resnet": {"depth": 12}}), ValueError, r"depth must be 9n \+ 2"),
    (dict(architectures={"myrtle": {"lr": 1}}), ValueError, "must be a dict of width, depth, epochs and pool_first"),
    (dict(architectures={"myrtle": {"pool_first": "no"}}), ValueError, "pool_first must be True .* or False"),
    (dict(disjoint="yes"), TypeError, "parameter 'disjoint' must be bool"),
])
def test_bad_parameters_fail_before_any_work(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        stitchlib.setup("connectivity", store=str(tmp_path / "s"), figures_dir=str(tmp_path / "f"), **kwargs)
    assert not (tmp_path / "s").exists()


def test_unknown_profile_and_experiment():
    with pytest.raises(ValueError, match=r"unknown profile 'huge'; valid: \['smoke', 'fast', 'paper'\]"):
        stitchlib.setup("connectivity", profile="huge")
    with pytest.raises(ValueError, match="unknown experiment or notebook 'nope'; valid: .*01_connectivity"):
        stitchlib.setup("nope")


# ---------------------------------------------------------------- 03 and 04

SHARED = {k: TINY[k] for k in ("seeds", "train_samples", "test_samples", "epochs", "stitch_samples", "stitch_epochs",
                               "ls_samples", "cka_samples")}
NOISE = dict(SHARED, width=0.0625, noise=[0.5, 1.0], coarse=True)
SSL = dict(SHARED, width=0.0625, simclr_epochs=1.0, probe_epochs=1.0)
MORE = dict(SHARED, width=0.0625, fewer_samples=256, top_samples=512, samples=1024, checkpoint_epochs=[0.5, 1.0],
            top_epoch=0.5, widths=[0.03125, 0.0625, 0.125], freeze_max_penalty=100.0)


def _setup(tmp_path, experiment, **params):
    return stitchlib.setup(experiment, device="cpu", store=str(tmp_path / "store"),
                           figures_dir=str(tmp_path / "figures"), **params)


def _count_training(monkeypatch):
    trained = []
    real = X.train_model

    def counting(model, split, *a, **k):
        trained.append(split.recipe)
        return real(model, split, *a, **k)

    monkeypatch.setattr(X, "train_model", counting)
    return trained


def test_a_checkpointed_run_whose_end_is_stored_trains_only_its_early_part(tmp_path, monkeypatch):
    """04's training-time run is 01's base model with checkpoints: with the end stored, only the
    run up to its last early checkpoint trains, and every checkpoint is what the full run gives."""
    full = _setup(tmp_path / "full", "connectivity", **TINY)
    splits = Splits.of(full.p)
    plain_task = TrainedModel("plain", "resnet18", 0.0625, 0, splits.train, splits.test,
                              dataclasses.replace(RECIPES["resnet18"], epochs=1.0))
    run_task = dataclasses.replace(plain_task, checkpoints=(0.25, 0.5, 1.0), keep_checkpoints=True)
    _, whole = full.runner.model(run_task)
    reuse = _setup(tmp_path / "reuse", "connectivity", **TINY)
    _, plain = reuse.runner.model(plain_task)
    calls = []
    real = X.train_model
    monkeypatch.setattr(X, "train_model", lambda *a, **k: calls.append(k) or real(*a, **k))
    _, part = reuse.runner.model(run_task)
    assert [(c["checkpoints"], c["until"]) for c in calls] == [((0.25, 0.5), 0.5)]
    assert part["curve"] == whole["curve"] and part["test_error"] == plain["test_error"]
    for epoch, (model, _) in whole["checkpoints"].items():
        mine, theirs = part["checkpoints"][epoch][0].state_dict(), model.state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), epoch
    assert whole["checkpoints"][0.25][1]["test_error"] != whole["checkpoints"][1.0][1]["test_error"]


def test_label_noise_reuses_the_clean_seeds_and_stitches_each_weak_bottom(tmp_path, monkeypatch):
    stitchlib.connectivity(_setup(tmp_path, "connectivity", **TINY))
    trained = _count_training(monkeypatch)
    res = stitchlib.label_noise(_setup(tmp_path, "label_noise", **NOISE))
    # The clean seed pairs (width 1/16) came from the store that 01 filled: only the weak models trained.
    assert [r[-1][0] for r in trained] == ["coarse", "label_noise", "label_noise"] * 2
    t = res.table
    assert list(t["pair"].unique()) == ["clean labels", "objects vs animals", "50% label noise", "100% label noise"]
    assert len(t) == 2 * 4 * 10 and t["cka"].between(0, 1).all()
    assert (t["penalty"] - (t["error"] - t["top_error"])).abs().max() < 1e-9
    # Every weak bottom has a seed of its own: neither its pair's top's nor the clean reference's.
    weak = t[t["labels"] != "clean"]
    assert not set(weak["seed_bottom"]) & {0, 1, 2, 3} and weak["seed_bottom"].nunique() == 6
    # The coarse model's own error is on the 2-class task: far below the 10-class models' errors.
    errors = res.models.set_index("model")["test_error"]
    coarse = [m for m in errors.index if m.startswith("objects vs animals")]
    assert len(coarse) == 2 and errors[coarse].max() < 45 < errors["clean labels, seed 0"]
    assert (tmp_path / "figures" / "03_label_noise.csv").exists()
    claims = stitchlib.check_claims(res)
    assert list(claims["model"]) == ["objects vs animals", "50% label noise", "100% label noise"]
    assert list(claims["claim"].str[:3]) == ["(a)", "(a)", "(b)"]
    first_half = t[t["cut_index"] < 5].groupby(["pair", "pair_index"])["penalty"].mean()
    excess = (first_half["50% label noise"] - first_half["clean labels"]).mean()
    assert claims["statistic"].iloc[1] == pytest.approx(excess)
    paths = stitchlib.plot(res)["paths"]
    assert sorted(p.name for p in paths) == ["fig3a_label_noise.pdf", "fig3a_label_noise.png"]


def test_more_is_better_panels_equal_steps_checkpoints_and_freeze_training(tmp_path, monkeypatch):
    trained = _count_training(monkeypatch)
    # The threshold admits every cut of these tiny models: a prefix of 2 stages leaves room for the
    # frozen top layers (Appendix B.4's second half), decided from the reversed samples pair.
    monkeypatch.setattr(M, "near_zero_prefix", lambda table, limit: 2)
    s = _setup(tmp_path, "more_is_better", **MORE)
    res = stitchlib.more_is_better(s)
    t = res.table
    assert list(t["panel"].unique()) == ["samples", "training time", "width: bottoms into the 0.0625 top",
                                         "width: the 0.0625 bottom into tops", "width", "samples, reversed"]
    reversed_ = t[t["panel_id"] == "samples_reversed"]
    # B.4's opposite: the network trained normally on all training images, into the 256-image top.
    assert list(reversed_["pair"].unique()) == ["50,000 samples into 256"] and len(reversed_) == 20
    samples = t[t["panel"] == "samples"]
    assert samples.groupby("pair", sort=False).size().tolist() == [20, 20, 20, 20]  # 10 cuts x 2 seed pairs
    assert samples[samples["pair"].str.contains("CKA only")]["penalty"].isna().all()
    assert set(t[t["panel"] == "training time"]["value"]) == {0.5, 1.0}
    # Every model of the samples experiment takes as many SGD steps as the base recipe.
    base = stitchlib.training.Recipe(epochs=1.0)
    steps = {n: M.equal_steps(s.p, base, n) for n in (256, 512, 1024, 50000)}
    assert steps[512] == base and {r.steps for n, r in steps.items() if n != 512} == {4}
    assert steps[256].epochs == 2 and steps[1024].epochs == 0.5
    # Freeze training: a normal run, one with the frozen prefix, one with the prefix and the top
    # layers (every cut of the reversed pair qualifies: all 11 stages but the 2 of the prefix and
    # one that trains), 8 points each where the run has 8 steps or more: here it has 4.
    c = res.curves
    assert c.groupby(["pair_index", "run"], sort=False).size().tolist() == [4] * 6
    assert c.groupby(["pair_index", "run"], sort=False)["step"].apply(list).tolist() == [[1, 2, 3, 4]] * 6
    assert list(c["freeze"].unique()) == ["normal", "prefix", "prefix_and_top"]
    runs = c.drop_duplicates("freeze").set_index("freeze")
    assert runs["frozen_stages"].tolist() == [0, 2, 2] and runs["frozen_top_stages"].tolist() == [0, 0, 8]
    assert runs.loc["prefix_and_top", "run"] == ("stages up to layer1.0 and stages after layer1.1 frozen from the "
                                                 "256-sample model")
    # Per seed pair: samples: top + 3 bottoms; one run for every checkpoint; widths: 4 new (the 1/16
    # pair is the samples experiment's 512-image pair, from the store); freeze training: 3. Nothing twice.
    assert len(trained) == 2 * (4 + 1 + 4 + 3)
    claims = stitchlib.check_claims(res)
    assert [c[:3] for c in claims["claim"]] == ["(a)"] * 4 + ["(b)", "(b)", "(c)", "(d)", "(d)"]
    assert list(claims["model"][:6]) == ["1,024 samples into 512", "width 0.125 into 0.0625", "width 0.0625 into 0.03125",
                                         "epoch 1 into epoch 0.5", "width 0.03125 into 0.0625", "width 0.0625 into 0.125"]
    more = t[(t["panel"] == "samples") & (t["value"] == 1024) & (t["cut_index"] >= 5)]
    assert claims["statistic"].iloc[0] == pytest.approx(more.groupby("pair_index")["penalty"].mean().mean())
    final = c.sort_values("epoch").groupby(["pair_index", "freeze"], sort=False)["test_error"].last().unstack()
    for row, kind in ((7, "prefix"), (8, "prefix_and_top")):
        assert claims["statistic"].iloc[row] == pytest.approx((final[kind] - final["normal"]).mean())
    # What nbval compares never depends on the numbers: the same name whether or not a stage qualified.
    assert list(claims["model"].iloc[7:]) == ["freeze training: bottom prefix",
                                              "freeze training: bottom prefix and top layers"]
    assert list(claims["worst_cut"].iloc[7:]) == ["", ""]
    names = sorted({p.stem for p in stitchlib.plot(res)["paths"]})
    assert names == ["fig2c_samples", "fig3b_training_time", "fig3c_width", "fig7_more_cka", "fig9_freeze"]
    # The plan's keys are the run's: checkpoints, equal-steps models, and the frozen-prefix runs once
    # their prefix is known (10 stages here).
    keys = s.runner.keys
    unknown = [t for t in s.plan.tasks() if keys.stored(t) is None]
    assert all(keys.stored(t) for t in s.plan.tasks() if t not in unknown)
    assert len(unknown) == 4 and all(t.frozen.stages is None for t in unknown)
    decided = [dataclasses.replace(t, frozen=FrozenPrefix(t.frozen.source, 2),
                                   **({"frozen_top": FrozenSuffix(t.frozen_top.source, 8)} if t.frozen_top else {}))
               for t in unknown]
    assert all(keys.stored(t) for t in decided)
    assert (tmp_path / "figures" / "04_freeze_training.csv").exists()


def test_freeze_prefix_stops_at_the_first_costly_cut():
    table = pd.DataFrame(dict(cut_index=[2, 0, 1, 3], penalty=[0.5, 0.2, 4.0, 0.1]))
    assert M.near_zero_prefix(table, 3.0) == 1  # cut 1 costs 4 points: only the stem qualifies
    assert M.near_zero_prefix(table, 5.0) == 4
    assert M.near_zero_prefix(table, 0.1) == 0


def test_frozen_top_layers_are_the_stages_above_the_shallowest_cut_from_which_on_all_are_near_zero():
    # 4 cuts, so 5 stages (the last is the classifier). From cut 2 on every penalty is <= 3: the
    # stages above cut 2 (cut 3's stage and the classifier) can be frozen; cut 1 costs 4 points.
    table = pd.DataFrame(dict(cut_index=[2, 0, 1, 3], penalty=[0.5, 0.2, 4.0, 0.1]))
    assert M.near_zero_suffix(table, 3.0, 5) == 2
    assert M.near_zero_suffix(table, 5.0, 5) == 4  # every cut: all stages after the first
    assert M.near_zero_suffix(table, 0.1, 5) == 1  # only the last cut: the classifier alone
    assert M.near_zero_suffix(table, 0.05, 5) == 0
    # A cut without a penalty is not near zero: it ends the prefix and the suffix.
    gap = pd.DataFrame(dict(cut_index=[0, 1, 2, 3], penalty=[0.1, float("nan"), 0.1, 0.1]))
    assert M.near_zero_prefix(gap, 3.0) == 1 and M.near_zero_suffix(gap, 3.0, 5) == 2


@pytest.mark.parametrize("experiment,kwargs,error,match", [
    ("more_is_better", dict(samples=60000), ValueError, r"samples=60000 must be in \[128, 50000\] \(the training split"),
    ("more_is_better", dict(samples=0), ValueError, r"samples=0 must be in \[128, 50000\]"),
    ("more_is_better", dict(fewer_samples=-5), ValueError, r"fewer_samples=-5 must be in \[128, 50000\]"),
    ("more_is_better", dict(samples=8000), ValueError, "fewer_samples < top_samples < samples"),
    ("more_is_better", dict(samples=2.5e4), TypeError, "parameter 'samples' must be int"),
    ("more_is_better", dict(checkpoint_epochs=[1.0, 9.0]), ValueError, r"epochs in \(0, epochs=4\]"),
    ("more_is_better", dict(top_epoch=5.0), ValueError, "top_epoch=5.0"),
    ("more_is_better", dict(checkpoint_epochs=[]), ValueError, "non-empty list of epochs"),
    ("more_is_better", dict(widths=[]), ValueError, "widths must be a non-empty list"),
    ("more_is_better", dict(width=0), ValueError, "width must be > 0"),
    ("more_is_better", dict(freeze_max_penalty=-1), ValueError, "freeze_max_penalty must be >= 0"),
    ("label_noise", dict(noise=[0.1, 1.5]), ValueError, r"noise fractions in \[0, 1\], got \[0.1, 1.5\]"),
    ("label_noise", dict(noise=[-0.1]), ValueError, r"noise fractions in \[0, 1\]"),
    ("label_noise", dict(noise=[], coarse=False), ValueError, "nothing to compare"),
    ("label_noise", dict(noise=0.5), TypeError, "parameter 'noise' must be list"),
    ("label_noise", dict(noise="[0.5]"), TypeError, r"give lists and dicts as YAML: -y \"noise: \[0.5\]\""),
    ("label_noise", dict(dataset="fashion_mnist"), ValueError, "coarse=True needs CIFAR-10's classes"),
    ("label_noise", dict(dataset="svhn"), ValueError, "unknown dataset 'svhn'; valid names: cifar10, fashion_mnist"),
    ("label_noise", dict(widths=[1.0]), ValueError, r"unknown parameters \['widths'\] for 'label_noise'"),
])
def test_bad_parameters_of_03_and_04_fail_before_any_work(tmp_path, experiment, kwargs, error, match):
    with pytest.raises(error, match=match):
        stitchlib.setup(experiment, store=str(tmp_path / "s"), figures_dir=str(tmp_path / "f"), **kwargs)
    assert not (tmp_path / "s").exists()


def test_ablations_kernel_bn_init_finetuning_and_table1(tmp_path):
    kw = dict(device="cpu", store=str(tmp_path / "store"), figures_dir=str(tmp_path / "figures"))
    others = {"connectivity": stitchlib.setup("connectivity", **{**TINY, "architectures": {}, "disjoint": False}, **kw),
              "ssl_vs_e2e": stitchlib.setup("ssl_vs_e2e", **SSL, **kw),
              "label_noise": stitchlib.setup("label_noise", **NOISE, **kw),
              "more_is_better": stitchlib.setup("more_is_better", **MORE, **kw)}
    s = stitchlib.setup("ablations", **SHARED, width=0.0625, kernel_sizes=[1, 3], finetune_epochs=0.5,
                        finetune_arch={"width": 0.25, "depth": 11}, convergence_steps=[2], **kw)
    res = stitchlib.ablations(s, others)
    t = res.table
    assert list(t["panel"].unique()) == ["kernel size", "BatchNorm policy", "initialisation", "useless coordinates",
                                         "permuted positions", "random control's BatchNorm", "stitcher convergence",
                                         "fine-tuning vs stitching"]
    by_cut = lambda panel, role: t[(t["panel"] == panel) & (t["bottom_role"] == role)].set_index(  # noqa: E731
        ["pair_index", "cut_index"])
    k1 = t[t["pair"] == "k = 1"].set_index(["pair_index", "cut_index"])
    # Section 3: the unchanged pair is the k = 1 stitch (one stored result); useless coordinates
    # move CKA at every cut (not always down: at n = 128 images a layer's own Gram matrix can be
    # nearly diagonal, and the noise adds a multiple of the centring matrix, which raises the
    # numerator); permuted positions leave it as it was at every feature-map cut, and the pooled
    # vector, which has no positions, is skipped.
    for panel in ("useless coordinates", "permuted positions"):
        assert by_cut(panel, "trained")[["error", "cka"]].equals(k1[["error", "cka"]])
    noisy = by_cut("useless coordinates", "transformed")
    assert ((noisy["cka"] - k1["cka"]).abs() > 1e-4).all() and noisy["penalty"].notna().all()
    permuted = by_cut("permuted positions", "transformed")
    maps = permuted["cut"] != "pool"
    assert permuted[~maps][["penalty", "cka"]].isna().all().all() and permuted[maps]["penalty"].notna().all()
    assert (permuted[maps]["cka"] - k1[maps]["cka"]).abs().max() < 1e-9
    assert (permuted[maps]["error_init"] != k1[maps]["error_init"]).any()
    # The random control on batch statistics is another stitched model than on running statistics.
    random_bn = t[t["panel"] == "random control's BatchNorm"]
    assert random_bn.groupby("pair", sort=False).size().tolist() == [20, 20]
    assert not random_bn.groupby("pair", sort=False)["error"].apply(list).pipe(lambda e: e.iloc[0] == e.iloc[1])
    # Convergence: the first pair only, each start at 1 (this profile's length) and 2 steps.
    conv = t[t["panel"] == "stitcher convergence"]
    assert set(conv["pair_index"]) == {0}
    assert conv.groupby("pair", sort=False)["value"].apply(lambda v: sorted(set(v))).tolist() == [[1.0, 2.0]] * 2
    default = conv[(conv["pair"] == "least-squares start") & (conv["value"] == 1.0)].set_index("cut_index")
    assert default["error"].equals(k1.loc[0]["error"])
    k3 = t[t["pair"] == "k = 3"]
    assert k3[k3["cut"] == "pool"]["penalty"].isna().all() and k3[k3["cut"] != "pool"]["penalty"].notna().all()
    # The default stitch is one stored result behind three panels: the same numbers in each.
    defaults = [t[t["pair"] == p].reset_index()["error"] for p in
                ("k = 1", "frozen: eval mode (default)", "least squares (default)")]
    assert defaults[0].equals(defaults[1]) and defaults[0].equals(defaults[2])
    drift = t[t["pair"].str.startswith("drift")]["error"].reset_index(drop=True)
    assert not drift.equals(defaults[0])  # drifting statistics change the stitched model
    # The random start reached the stitcher: before training it predicts differently at most cuts.
    init = t[t["panel"] == "initialisation"].pivot_table(index="cut_index", columns="pair", values="error_init")
    assert (init["random"] != init["least squares (default)"]).sum() >= 6
    ft = t[t["panel"] == "fine-tuning vs stitching"]
    assert ft.groupby("pair").size().to_dict() == {"fine-tuning": 10, "stitching": 10}  # ResNet-11: 5 cuts, 2 pairs
    claims = stitchlib.check_claims(res)
    assert [c[:3] for c in claims["claim"]] == ["(a)", "(b)", "(c)", "(c)", "(d)", "(d)", "(e)", "(e)"]
    assert list(claims["threshold"]) == ["within 3", "> 0", "< 0", "<= 3", "within 1e-06", "> 0", "> 3", "> 3"]
    assert claims["statistic"].iloc[2] == pytest.approx((noisy["cka"] - k1["cka"]).groupby("pair_index").mean().mean())
    assert abs(claims["statistic"].iloc[4]) < 1e-9
    gap = ft.pivot_table(index=["pair_index", "cut_index"], columns="pair", values="penalty")
    assert claims["statistic"].iloc[1] == pytest.approx((gap["stitching"] - gap["fine-tuning"]).mean())
    # The k x k stitcher trained at lr / k, the 1 x 1 at the profile's lr.
    stored = [json.loads(f.read_text())["config"] for f in (tmp_path / "store" / "stitch").glob("*.json")]
    lrs = {c.get("kernel_size", 1): c["lr"] for c in stored if c.get("bn_policy") is None and c.get("init") is None}
    assert lrs == {1: pytest.approx(s["stitch_lr"]), 3: pytest.approx(s["stitch_lr"] / 3)}
    # Table 1 from the other notebooks' stored results.
    o = stitchlib.claims.table1(res)
    assert list(o["method"]) == ["CKA (ours)", "stitching (ours)", "CKA (paper)", "stitching (paper)"]
    assert "1,024 samples" in o.iloc[0]["more data / time / width"]
    # Every number of ours is a mean over the seed pairs with its interval: the stitching cell is
    # 01's claim (a), the CKA cell spans the per-cut means of 01's summary.
    conn = stitchlib.connectivity(others["connectivity"])
    a = stitchlib.check_claims(conn, write=False).iloc[0]
    assert o.iloc[1]["different initialisation"] == (f"ResNet-18 w=0.0625 at {a['worst_cut']}: {a['statistic']:.2f} "
                                                     f"[{a['low']:.2f}, {a['high']:.2f}] (inconclusive)")
    summary = stitchlib.claims.summary_table(conn)
    seeds = summary[summary["bottom"] == "trained"]
    low = seeds.loc[seeds["cka"].idxmin()]
    assert o.iloc[0]["different initialisation"].startswith(
        f"{low['cka']:.2f} [{low['cka_low']:.2f}, {low['cka_high']:.2f}] at {low['cut']} to {seeds['cka'].max():.2f} [")
    table = pd.read_csv(tmp_path / "figures" / "table1.csv")
    # The CSV carries the run's profile first (every CSV of a run does), then Table 1 as returned.
    assert list(table["profile"]) == ["smoke"] * len(o) and table.drop(columns="profile").equals(o)
    assert (tmp_path / "figures" / "05_ablations.csv").exists()
    names = sorted({p.stem for p in stitchlib.plot(res)["paths"]})
    assert names == ["ablation_bn_init", "ablation_convergence", "ablation_random_bn", "fig4_kernel_size",
                     "fig8_finetuning", "section3_cka_vs_stitching"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_sizes=[1, 4]), r"kernel_sizes must list odd positive ints .* got \[1, 4\]"),
    (dict(kernel_sizes=[0]), "kernel_sizes must list odd positive ints"),
    (dict(kernel_sizes=[]), "kernel_sizes must list odd positive ints"),
    (dict(finetune_arch={"depth": 12}), r"depth must be 9n \+ 2"),
    (dict(finetune_arch={"width": 1.0, "lr": 1}), r"finetune_arch \(the ResNet-164 family\) must be a dict of width and depth"),
    (dict(finetune_epochs=0), "finetune_epochs must be > 0"),
])
def test_bad_parameters_of_05_fail_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stitchlib.setup("ablations", store=str(tmp_path / "s"), figures_dir=str(tmp_path / "f"), **kwargs)
    assert not (tmp_path / "s").exists()


def test_ssl_vs_e2e_stitches_both_ways_and_says_what_imagenet_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("STITCHLIB_WEIGHTS", str(tmp_path / "weights"))
    s = _setup(tmp_path, "ssl_vs_e2e", **SSL)
    res = stitchlib.ssl_vs_e2e(s)
    t = res.table
    assert list(t["direction"].unique()) == ["E2E into E2E", "SSS into E2E", "E2E into SSS"]
    assert len(t) == 60 and t["cka"].between(0, 1).all()
    assert len(res.notes) == 1 and "no imagenet_dir given" in res.notes[0] and "dino_resnet50_pretrain.pth" in res.notes[0]
    claims = stitchlib.check_claims(res)
    assert list(claims["model"]) == ["SSS into E2E", "E2E into SSS"] * 2 + ["CKA"]
    assert list(claims["claim"].str[:4]) == ["(a) ", "(a) ", "(a')", "(a')", "(b) "]
    loss = (t["error"] - t[["top_error", "bottom_error"]].max(axis=1)).groupby([t["direction"], t["pair_index"]]).mean()
    assert claims["statistic"].iloc[2] == pytest.approx((loss["SSS into E2E"] - loss["E2E into E2E"]).mean())
    # The SSS model has a seed of its own, not the E2E bottom's.
    sss = t[t["direction"] == "SSS into E2E"]
    assert not set(sss["seed_bottom"]) & {0, 1, 2, 3}
    assert sorted({p.stem for p in stitchlib.plot(res)["paths"]}) == ["fig6_ssl_vs_e2e"]
    assert all(s.runner.keys.stored(t) for t in s.plan.tasks())  # the SimCLR models' keys too
    # A folder without class folders, then one with images but no weights (offline): skipped, with the reason.
    (tmp_path / "val").mkdir()
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    notes = []
    assert SSLE.imagenet_panel(_setup(tmp_path, "ssl_vs_e2e", **SSL, imagenet_dir=str(tmp_path / "val")), notes) is None
    assert "no class folders" in notes[0]
    from PIL import Image
    (tmp_path / "val" / "n01").mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(tmp_path / "val" / "n01" / f"{i}.JPEG")
    notes = []
    assert SSLE.imagenet_panel(_setup(tmp_path, "ssl_vs_e2e", **SSL, imagenet_dir=str(tmp_path / "val"),
                                    imagenet_samples=4), notes) is None
    assert "no supervised weights" in notes[0] and "offline" in notes[0] and "resnet50-0676ba61.pth" in notes[0]


def test_the_sss_encoder_never_sees_a_label(tmp_path):
    s = _setup(tmp_path, "ssl_vs_e2e", **SSL)
    splits = Splits.of(s.p)

    def model(epochs, simclr):
        return s.runner.model(TrainedModel("m", "resnet18", 0.0625, 1, splits.train, splits.test,
                                           stitchlib.training.Recipe(epochs=epochs), simclr_epochs=simclr))[0]

    models = [model(e, 1.0).state_dict() for e in (1.0, 2.0)]
    # Different classifier training, identical features: labels reached only the classifier.
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0] if not k.startswith("stages.fc"))
    assert not torch.equal(models[0]["stages.fc.weight"], models[1]["stages.fc.weight"])
    supervised = model(1.0, None).state_dict()
    assert not torch.equal(models[0]["stages.stem.0.weight"], supervised["stages.stem.0.weight"])


def test_the_imagenet_panel_runs_on_a_folder_and_local_weights(tmp_path, monkeypatch):
    from PIL import Image
    import torchvision
    monkeypatch.setenv("STITCHLIB_WEIGHTS", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    torch.manual_seed(0)
    sup = torchvision.models.resnet50(num_classes=1000).state_dict()
    torch.save(sup, tmp_path / "weights" / IMAGENET_WEIGHTS["supervised"].file)
    torch.save({k: v for k, v in sup.items() if not k.startswith("fc.")},  # DINO layout: the same backbone
               tmp_path / "weights" / IMAGENET_WEIGHTS["dino"].file)
    for c in range(2):
        (tmp_path / "val" / f"n0{c}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 48), (c * 200, i * 100, 50)).save(tmp_path / "val" / f"n0{c}" / f"{i}.JPEG")
    s = _setup(tmp_path, "ssl_vs_e2e", **{**SSL, "stitch_epochs": 0.0}, imagenet_dir=str(tmp_path / "val"),
               imagenet_weights=["dino"], imagenet_samples=4)
    notes = []
    panel = SSLE.imagenet_panel(s, notes)
    assert not notes and list(panel["pair"].unique()) == ["dino bottom into supervised top",
                                                          "random ResNet-50 (untrained) bottom into supervised top"]
    assert len(panel) == 2 * 18  # torchvision ResNet-50: stem, 16 blocks, pool
    dino, random = (panel[panel["bottom_role"] == role] for role in ("dino", "random"))
    # The same backbone on both sides: the least-squares stitcher reproduces the top exactly.
    assert dino["penalty_init"].abs().max() < 1e-9 and (dino["cka"] > 0.999).all()
    # Fig. 2B's random control: an untrained ResNet-50 of its own seed, another network than the top
    # (with two test images CKA is 1 for any pair: a centred 2 x 2 Gram matrix has rank one).
    assert (random["seed_bottom"] == 100).all() and random["penalty"].notna().all()
    random_net, info = P.random_resnet50(100)
    assert not torch.equal(random_net.conv1.weight, sup["conv1.weight"])
    assert info["sha256"] == P.random_resnet50(100)[1]["sha256"] != P.random_resnet50(101)[1]["sha256"]

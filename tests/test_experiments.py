
import pandas as pd
import pytest
import torch

import stitchlib
from stitchlib import experiments as E
from stitchlib.store import CorruptArtifactWarning

TINY = dict(widths=[0.0625], seeds=[0, 1], train_samples=512, test_samples=256, epochs=1.0, stitch_samples=256,
            stitch_epochs=0.5, ls_samples=256, cka_samples=128, architectures={"myrtle": {"width": 0.125}},
            disjoint=True)


@pytest.fixture()
def tiny(tmp_path):
    return stitchlib.setup("connectivity", device="cpu", store=str(tmp_path / "store"),
                           figures_dir=str(tmp_path / "figures"), **TINY)


def test_connectivity_table_is_tidy_and_consistent(tiny):
    res = stitchlib.connectivity(tiny)
    t = res.table
    # ResNet-18 (seed + random, 10 cuts), Myrtle (seed + random, 5 cuts), disjoint halves (seed only).
    assert len(t) == 2 * 10 + 2 * 5 + 10 and set(t["pair"]) == {"seed 1", "random"}
    assert list(t["family"].unique()) == ["ResNet-18", "Myrtle CNN", "ResNet-18, disjoint halves"]
    assert set(t[t["panel"] == "disjoint"]["bottom"]) == {"trained"}
    assert (t["penalty"] - (t["error"] - t["top_error"])).abs().max() < 1e-9
    assert t["cka"].between(0, 1).all()
    # The random control is less similar to the top model than another trained seed, by CKA on average.
    by = t.groupby("bottom")["cka"].mean()
    assert by["random"] < by["trained"]
    csv = pd.read_csv(tiny.figures / "01_connectivity.csv")
    assert list(csv.columns) == list(t.columns) and len(csv) == len(t)
    claims = stitchlib.check_claims(res, connected_max_penalty=5, random_late_gap=10, random_early_max=10)
    # (a) for each of the three panels; (b) and (c) for ResNet-18, where the paper makes them.
    assert list(claims.columns) == ["claim", "model", "statistic", "threshold", "holds"] and len(claims) == 5
    assert list(claims["model"]) == ["ResNet-18"] * 3 + ["Myrtle CNN", "ResNet-18, disjoint halves"]
    assert list(res.models["family"].unique()) == ["ResNet-18", "Myrtle CNN", "ResNet-18, disjoint halves"]


def test_second_run_loads_instead_of_training(tiny, monkeypatch):
    first = stitchlib.connectivity(tiny).table

    def forbidden(*a, **k):
        raise AssertionError("recomputed although the store holds the result")

    monkeypatch.setattr(E, "train_model", forbidden)
    monkeypatch.setattr(E, "stitch", forbidden)
    monkeypatch.setattr(E, "CKAAccumulator", forbidden)
    second = stitchlib.connectivity(tiny).table
    pd.testing.assert_frame_equal(first, second)


def test_corrupt_artifact_is_recomputed_with_a_warning(tiny):
    first = stitchlib.connectivity(tiny).table
    victim = sorted((tiny.store.root / "model").glob("*.pt"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.warns(CorruptArtifactWarning, match=victim.name):
        again = stitchlib.connectivity(tiny).table
    pd.testing.assert_frame_equal(first, again)  # same parameters and seed, same numbers


def test_random_control_shares_no_weight_with_trained_networks(tiny):
    ds = tiny.dataset
    train = stitchlib.data.subset(ds.train, 512, seed=0)
    test = stitchlib.data.subset(ds.test, 256, seed=0)
    trained, _ = E.base_model(tiny, width=0.0625, seed=0, train_split=train, test_split=test,
                              recipe=E.Recipe(epochs=1.0))
    random, _ = E.random_model(tiny, width=0.0625, seed=100, num_classes=10)
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
    (dict(train_samples=60000), ValueError, "train_samples=60000 exceeds the 50000 images"),
    (dict(train_samples="5000"), TypeError, "parameter 'train_samples' must be int, got str '5000'"),
    (dict(epochs=True), TypeError, "parameter 'epochs' must be int or float"),
    (dict(stitch_samples=20000, train_samples=10000), ValueError, "stitch_samples=20000 must be <= train_samples"),
    (dict(seeds=[0]), ValueError, "at least two distinct"),
    (dict(seeds=[0, "1"]), ValueError, "at least two distinct ints"),
    (dict(stitch_lr=0.0), ValueError, "stitch_lr > 0"),
    (dict(cka_estimator="svcca"), ValueError, "unknown cka_estimator"),
    (dict(bogus=1), ValueError, r"unknown parameters \['bogus'\]"),
    (dict(architectures={"alexnet": {}}), ValueError, "unknown architecture 'alexnet' in architectures"),
    (dict(architectures={"preact_resnet": {"depth": 12}}), ValueError, r"depth must be 9n \+ 2"),
    (dict(architectures={"myrtle": {"lr": 1}}), ValueError, "must be a dict of width, depth and epochs"),
    (dict(disjoint="yes"), TypeError, "parameter 'disjoint' must be bool"),
])
def test_bad_parameters_fail_before_any_work(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        stitchlib.setup("connectivity", store=str(tmp_path / "s"), figures_dir=str(tmp_path / "f"), **kwargs)
    assert not (tmp_path / "s").exists()


def test_unknown_profile_and_experiment():
    with pytest.raises(ValueError, match="unknown profile 'huge'.*paper.*smoke"):
        stitchlib.setup("connectivity", profile="huge")
    with pytest.raises(ValueError, match="unknown experiment"):
        stitchlib.setup("nope")


# ---------------------------------------------------------------- 03 and 04

SHARED = {k: TINY[k] for k in ("seeds", "train_samples", "test_samples", "epochs", "stitch_samples", "stitch_epochs",
                               "ls_samples", "cka_samples")}
NOISE = dict(SHARED, width=0.0625, noise=[0.5, 1.0], coarse=True)
MORE = dict(SHARED, width=0.0625, fewer_samples=256, top_samples=512, samples=1024, checkpoint_epochs=[0.5, 1.0],
            top_epoch=0.5, widths=[0.03125, 0.0625, 0.125], freeze_max_penalty=100.0)
MORE_THRESHOLDS = dict(better_max_penalty=0.0, narrower_late_min=0.0, converge_gap=0.0, freeze_margin=5.0)


def _setup(tmp_path, experiment, **params):
    return stitchlib.setup(experiment, device="cpu", store=str(tmp_path / "store"),
                           figures_dir=str(tmp_path / "figures"), **params)


def _count_training(monkeypatch):
    trained = []
    real = E.train_model

    def counting(model, split, *a, **k):
        trained.append(split.recipe)
        return real(model, split, *a, **k)

    monkeypatch.setattr(E, "train_model", counting)
    return trained


def test_label_noise_reuses_the_clean_seeds_and_stitches_each_weak_bottom(tmp_path, monkeypatch):
    stitchlib.connectivity(_setup(tmp_path, "connectivity", **TINY))
    trained = _count_training(monkeypatch)
    res = stitchlib.label_noise(_setup(tmp_path, "label_noise", **NOISE))
    # The clean seed pair (width 1/16) came from the store that 01 filled: only the weak models trained.
    assert [r[-1][0] for r in trained] == ["coarse", "label_noise", "label_noise"]
    t = res.table
    assert list(t["pair"].unique()) == ["clean labels", "objects vs animals", "50% label noise", "100% label noise"]
    assert len(t) == 4 * 10 and t["cka"].between(0, 1).all()
    assert (t["penalty"] - (t["error"] - t["top_error"])).abs().max() < 1e-9
    # The coarse model's own error is on the 2-class task: far below the 10-class models' errors.
    errors = res.models.set_index("model")["test_error"]
    assert errors["objects vs animals, seed 1"] < 45 < errors["clean labels, seed 0"]
    assert (tmp_path / "figures" / "03_label_noise.csv").exists()
    claims = stitchlib.check_claims(res, early_max_excess=6.0, noise_late_min_excess=10.0)
    assert list(claims["model"]) == ["objects vs animals", "50% label noise", "100% label noise"]
    assert list(claims["claim"].str[:3]) == ["(a)", "(a)", "(b)"]
    first_half = t[t["cut_index"] < 5].groupby("pair")["penalty"].mean()
    assert claims["statistic"].iloc[1] == pytest.approx(first_half["50% label noise"] - first_half["clean labels"])
    assert claims["holds"].iloc[1] == (claims["statistic"].iloc[1] <= 6.0)
    paths = stitchlib.plot(res)["paths"]
    assert sorted(p.name for p in paths) == ["fig3a_label_noise.pdf", "fig3a_label_noise.png"]


def test_more_is_better_panels_equal_steps_checkpoints_and_freeze_training(tmp_path, monkeypatch):
    trained = _count_training(monkeypatch)
    s = _setup(tmp_path, "more_is_better", **MORE)
    res = stitchlib.more_is_better(s)
    t = res.table
    assert list(t["panel"].unique()) == ["samples", "training time", "width: bottoms into the 0.0625 top",
                                         "width: the 0.0625 bottom into tops", "width"]
    samples = t[t["panel"] == "samples"]
    assert samples.groupby("pair", sort=False).size().tolist() == [10, 10, 10, 10]
    assert samples[samples["pair"].str.contains("CKA only")]["penalty"].isna().all()
    assert set(t[t["panel"] == "training time"]["value"]) == {0.5, 1.0}
    # Every model of the samples experiment takes as many SGD steps as the base recipe.
    base = E.Recipe(epochs=1.0)
    steps = {n: E._equal_steps(s, base, n) for n in (256, 512, 1024, 50000)}
    assert steps[512] == base and {r.steps for n, r in steps.items() if n != 512} == {4}
    assert steps[256].epochs == 2 and steps[1024].epochs == 0.5
    # Freeze training: a normal run and one with a frozen prefix (the threshold admits every
    # cut here, so all stages the fewer-samples model has before the head), 8 points each
    # where the run has 8 steps or more: here it has 4.
    c = res.curves
    assert c.groupby("run", sort=False).size().tolist() == [4, 4]
    assert c.groupby("run", sort=False)["step"].apply(list).tolist() == [[1, 2, 3, 4]] * 2
    assert sorted(c["frozen_stages"].unique()) == [0, 10]
    assert (c.groupby("run")["step"].max() == 4).all()
    # Samples: top + 3 bottoms; one run for every checkpoint; widths: 4 new (the 1/16 pair is the
    # samples experiment's 512-image pair, from the store); freeze training: 2. Nothing twice.
    assert len(trained) == 4 + 1 + 4 + 2
    claims = stitchlib.check_claims(res, **MORE_THRESHOLDS)
    assert [c[:3] for c in claims["claim"]] == ["(a)", "(a)", "(a)", "(b)", "(b)", "(c)", "(d)"]
    assert list(claims["model"][:5]) == ["1,024 samples into 512", "width 0.125 into 0.0625", "width 0.0625 into 0.03125",
                                         "width 0.03125 into 0.0625", "width 0.0625 into 0.125"]
    more = t[(t["panel"] == "samples") & (t["value"] == 1024)]["penalty"].min()
    assert claims["statistic"].iloc[0] == pytest.approx(more) and claims["holds"].iloc[0] == (more < 0)
    final = c.sort_values("epoch").groupby("run", sort=False)["test_error"].last()
    assert claims["statistic"].iloc[6] == pytest.approx(final.iloc[1] - final.iloc[0])
    names = sorted({p.stem for p in stitchlib.plot(res)["paths"]})
    assert names == ["fig2c_samples", "fig3b_training_time", "fig3c_width", "fig7_more_cka", "fig9_freeze"]
    assert (tmp_path / "figures" / "04_freeze_training.csv").exists()


def test_freeze_prefix_stops_at_the_first_costly_cut():
    table = pd.DataFrame(dict(cut_index=[2, 0, 1, 3], penalty=[0.5, 0.2, 4.0, 0.1]))
    assert E._near_zero_prefix(table, 3.0) == 1  # cut 1 costs 4 points: only the stem qualifies
    assert E._near_zero_prefix(table, 5.0) == 4
    assert E._near_zero_prefix(table, 0.1) == 0


@pytest.mark.parametrize("experiment,kwargs,error,match", [
    ("more_is_better", dict(samples=60000), ValueError, "samples=60000 exceeds the 50000 images of the training"),
    ("more_is_better", dict(samples=0), ValueError, "samples must be > 0, got 0"),
    ("more_is_better", dict(fewer_samples=-5), ValueError, "fewer_samples must be > 0"),
    ("more_is_better", dict(samples=8000), ValueError, "fewer_samples < top_samples < samples"),
    ("more_is_better", dict(samples=2.5e4), TypeError, "parameter 'samples' must be int"),
    ("more_is_better", dict(checkpoint_epochs=[1.0, 9.0]), ValueError, r"epochs in \(0, epochs=4\]"),
    ("more_is_better", dict(top_epoch=5.0), ValueError, "top_epoch=5.0"),
    ("more_is_better", dict(checkpoint_epochs=[]), ValueError, "non-empty list of epochs"),
    ("more_is_better", dict(widths=[]), ValueError, "widths must be a non-empty list"),
    ("more_is_better", dict(width=0), ValueError, "width must be > 0"),
    ("more_is_better", dict(freeze_max_penalty=-1), ValueError, "freeze_max_penalty must be >= 0"),
    ("more_is_better", dict(top_samples=1000), ValueError, "stitch_samples=2000 must be <= top_samples=1000"),
    ("label_noise", dict(noise=[0.1, 1.5]), ValueError, r"noise fractions in \[0, 1\], got \[0.1, 1.5\]"),
    ("label_noise", dict(noise=[-0.1]), ValueError, r"noise fractions in \[0, 1\]"),
    ("label_noise", dict(noise=[], coarse=False), ValueError, "nothing to compare"),
    ("label_noise", dict(noise=0.5), TypeError, "parameter 'noise' must be list"),
    ("label_noise", dict(noise="[0.5]"), TypeError, r"give lists and dicts as YAML: -y \"noise: \[0.5\]\""),
    ("label_noise", dict(dataset="fashion_mnist"), ValueError, "coarse=True needs CIFAR-10's classes"),
    ("label_noise", dict(widths=[1.0]), ValueError, r"unknown parameters \['widths'\] for 'label_noise'"),
])
def test_bad_parameters_of_03_and_04_fail_before_any_work(tmp_path, experiment, kwargs, error, match):
    with pytest.raises(error, match=match):
        stitchlib.setup(experiment, store=str(tmp_path / "s"), figures_dir=str(tmp_path / "f"), **kwargs)
    assert not (tmp_path / "s").exists()


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

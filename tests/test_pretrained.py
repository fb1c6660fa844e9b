"""ImageNet ResNet-50 checkpoints in every supported layout, written here from random weights and
loaded back exactly; ImageNet validation images from a folder."""
import argparse

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import stitchlib
from stitchlib import pretrained as P


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(7)
    model = torchvision.models.resnet50()
    for m in model.modules():  # non-default statistics, so a layout that dropped them would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def _backbone(state):
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


LAYOUTS = {
    "torchvision": lambda s: dict(s),
    "vissl (classy_state_dict)": lambda s: {"phase_idx": 799, "classy_state_dict": {"base_model": {"model": {
        "trunk": {f"_feature_blocks.{k}": v for k, v in _backbone(s).items()},
        "heads": {"0.clf.0.weight": torch.randn(128, 2048)}}}}},
    "vissl (model_state_dict)": lambda s: {"model_state_dict": {f"_feature_blocks.{k}": v
                                                                for k, v in _backbone(s).items()}},
    "dino (backbone)": lambda s: _backbone(s),
    "dino (full checkpoint)": lambda s: {"epoch": 100, "teacher": {
        **{f"module.backbone.{k}": v for k, v in _backbone(s).items()},
        "module.head.mlp.0.weight": torch.randn(16, 2048)}, "student": {"module.head.last_layer.weight": torch.randn(3)}},
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_layout_loads_back_exactly(tmp_path, reference, name):
    path = tmp_path / "ckpt.pth"
    torch.save(LAYOUTS[name](reference), path)
    model, info = P.load_resnet50(path)
    assert info["layout"] == name.split()[0]
    assert info["has_classifier"] == (name == "torchvision")
    loaded = model.state_dict()
    for k, v in _backbone(reference).items():
        assert torch.equal(loaded[k], v), k
    if name == "torchvision":
        assert torch.equal(loaded["fc.weight"], reference["fc.weight"])
    assert not model.training


def test_a_self_supervised_bottom_stitches_into_the_supervised_top(tmp_path, reference, cifar):
    torch.save(LAYOUTS["dino (backbone)"](reference), tmp_path / "dino.pth")
    torch.save(reference, tmp_path / "sup.pth")
    bottom, _ = P.load_resnet50(tmp_path / "dino.pth")
    top, _ = P.load_resnet50(tmp_path / "sup.pth")
    assert [c.name for c in stitchlib.cut_points(top)][:2] == ["stem", "layer1.0"]
    tiny = stitchlib.data.subset(cifar.test, 16, seed=0)
    # The same weights on both sides: least squares matches exactly, so stitching changes nothing.
    res = stitchlib.stitch(bottom, top, "layer3.0", cifar, train=tiny, test=tiny, epochs=0, ls_samples=16,
                           device="cpu", progress=False)
    assert res.error_init == pytest.approx(res.top_error, abs=1e-9)


def test_checkpoints_that_do_not_fit_are_refused_with_the_reason(tmp_path, reference):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"does not fit torchvision's ResNet-50: \d+ missing keys .* wrong shapes"):
        P.load_resnet50(tmp_path / "r18.pth")
    bad = dict(reference)
    bad["layer1.0.conv1.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"1 wrong shapes \['layer1.0.conv1.weight: \(3, 3\) \(ResNet-50: \(64, 64"):
        P.load_resnet50(tmp_path / "bad.pth")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"unknown checkpoint layout .* valid: \['torchvision', 'vissl', 'dino'\]"):
        P.load_resnet50(tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"unknown checkpoint layout 'caffe2'"):
        P.load_resnet50(tmp_path / "odd.pth", layout="caffe2")
    torch.save({"args": argparse.Namespace(arch="resnet50"), "teacher": {}}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        P.load_resnet50(tmp_path / "pickled.pth")


def test_named_weights_come_from_the_weights_folder_or_say_where_to_put_them(tmp_path, reference, monkeypatch):
    monkeypatch.setenv("STITCHLIB_WEIGHTS", str(tmp_path))
    with pytest.raises(P.WeightsNotFoundError, match=r"no swav weights .*dl.fbaipublicfiles.com/vissl.* STITCHLIB_WEIGHTS"):
        P.load_resnet50("swav", download=False)
    torch.save(LAYOUTS["vissl (classy_state_dict)"](reference), tmp_path / P.IMAGENET_WEIGHTS["swav"].file)
    model, info = P.load_resnet50("swav", download=False)
    assert info["layout"] == "vissl" and torch.equal(model.state_dict()["conv1.weight"], reference["conv1.weight"])
    with pytest.raises(P.WeightsNotFoundError, match="no checkpoint at"):
        P.load_resnet50(tmp_path / "missing.pth")


def _image_folder(root, counts, rng):
    """Class folders `root/<name>` with `counts[name]` random JPEGs each, of differing sizes."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40 + 3 * i, 36, 3), dtype=np.uint8)).save(root / name / f"{i}.JPEG")


def _check_halves(ds, samples, num_classes):
    """Both halves cover every class, train has samples // 2 images and test the rest, each class
    is split as evenly as its count allows, and no image is in both halves."""
    train, test = ds.train.labels.bincount(minlength=num_classes), ds.test.labels.bincount(minlength=num_classes)
    assert (train >= 1).all() and (test >= 1).all(), (train, test)
    assert len(ds.train) == samples // 2 and len(ds.test) == samples - samples // 2
    assert ((train - test).abs() <= 1).all()
    assert len(ds.train.labels) == len(ds.train.images) and len(ds.test.labels) == len(ds.test.images)
    flat = torch.cat([ds.train.images, ds.test.images]).flatten(1)
    assert len(torch.unique(flat, dim=0)) == samples  # the random images all differ: none drawn twice
    return train + test


def test_imagenet_folder(tmp_path):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["n02", "n01", "n03"]):
        (tmp_path / "val" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (300 + 10 * i, 260, 3), dtype=np.uint8)).save(
                tmp_path / "val" / name / f"{i}.JPEG")
    ds = P.load_imagenet_folder(tmp_path / "val", samples=8, seed=0)
    assert ds.train.images.shape == (4, 3, 224, 224) and ds.test.images.shape == (4, 3, 224, 224)
    assert ds.classes == ["n01", "n02", "n03"] and ds.train.num_classes == 3
    assert sorted(_check_halves(ds, 8, 3).tolist()) == [2, 3, 3]
    again = P.load_imagenet_folder(tmp_path / "val", samples=8, seed=0)
    assert torch.equal(again.train.images, ds.train.images) and ds.identity == again.identity
    with pytest.raises(ValueError, match=r"samples must be in \[6, 12\]"):
        P.load_imagenet_folder(tmp_path / "val", samples=13)
    (tmp_path / "flat").mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "flat" / "a.JPEG")
    with pytest.raises(stitchlib.data.DataNotFoundError, match=r"no class folders .*<root>/<class>/<image>"):
        P.load_imagenet_folder(tmp_path / "flat", samples=2)
    with pytest.raises(stitchlib.data.DataNotFoundError, match="no ImageNet folder"):
        P.load_imagenet_folder(tmp_path / "nowhere", samples=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five classes of 8 images, and the same with one class of only 3."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("imagenet")
    _image_folder(root / "even", {f"n{c:02d}": 8 for c in range(5)}, rng)
    _image_folder(root / "uneven", {**{f"n{c:02d}": 8 for c in range(4)}, "n04": 3}, rng)
    return root


@pytest.mark.parametrize("samples", [10, 11, 13, 17, 24, 40])
def test_imagenet_folder_stratified(folder, samples):
    counts = _check_halves(P.load_imagenet_folder(folder / "even", samples, seed=3, size=32), samples, 5)
    assert set(counts.tolist()) <= {samples // 5, samples // 5 + 1}  # as even as it goes
    assert counts.sum() == samples


def test_imagenet_folder_seeds(folder):
    a = P.load_imagenet_folder(folder / "even", 15, seed=0, size=32)
    b = P.load_imagenet_folder(folder / "even", 15, seed=0, size=32)
    c = P.load_imagenet_folder(folder / "even", 15, seed=1, size=32)
    for x, y in [(a.train, b.train), (a.test, b.test)]:
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels) and x.recipe == y.recipe
    assert a.identity == b.identity and a.identity != c.identity
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.recipe != c.train.recipe and a.train.recipe != a.test.recipe
    assert "stratified" in a.train.recipe[0]
    # Which classes get the 3 extra images, and which images, are random: over a few seeds they vary.
    draws = {tuple(P.load_imagenet_folder(folder / "even", 13, seed=s, size=32).train.labels.tolist())
             for s in range(6)}
    assert len(draws) > 1


@pytest.mark.parametrize("samples", [10, 12, 25, 30, 35])
def test_imagenet_folder_uneven(folder, samples):
    """n04 has only 3 images: it gives all 3 when its share is larger, and the rest goes to the others."""
    counts = _check_halves(P.load_imagenet_folder(folder / "uneven", samples, seed=2, size=32), samples, 5)
    share = samples // 5
    if share >= 3:
        assert counts[4] == 3
        rest = samples - 3
        assert set(counts[:4].tolist()) <= {rest // 4, rest // 4 + 1}
    else:
        assert set(counts.tolist()) <= {share, share + 1}
    assert counts.sum() == samples


def test_imagenet_folder_too_few(folder, tmp_path):
    with pytest.raises(ValueError, match=r"samples=9 cannot give both halves an image of each of the 5 classes: "
                                         r"give samples >= 10"):
        P.load_imagenet_folder(folder / "even", 9)
    with pytest.raises(ValueError, match=r"samples must be in \[10, 35\]"):
        P.load_imagenet_folder(folder / "uneven", 36)
    _image_folder(tmp_path / "val", {"n00": 4, "n01": 1, "n02": 3}, np.random.default_rng(0))
    (tmp_path / "val" / "n03").mkdir()  # an empty class folder is a class with no images
    with pytest.raises(ValueError, match=r"2 class folder\(s\) .* fewer than 2 images: n01 \(1\), n03 \(0\)"):
        P.load_imagenet_folder(tmp_path / "val", 8)

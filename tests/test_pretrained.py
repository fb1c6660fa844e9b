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
    again = P.load_imagenet_folder(tmp_path / "val", samples=8, seed=0)
    assert torch.equal(again.train.images, ds.train.images) and ds.identity == again.identity
    with pytest.raises(ValueError, match=r"samples must be in \[2, 12\]"):
        P.load_imagenet_folder(tmp_path / "val", samples=13)
    (tmp_path / "flat").mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "flat" / "a.JPEG")
    with pytest.raises(stitchlib.data.DataNotFoundError, match=r"no class folders .*<root>/<class>/<image>"):
        P.load_imagenet_folder(tmp_path / "flat", samples=2)
    with pytest.raises(stitchlib.data.DataNotFoundError, match="no ImageNet folder"):
        P.load_imagenet_folder(tmp_path / "nowhere", samples=2)

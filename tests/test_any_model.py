"""Stitching other people's models: torchvision and timm through their own structure, anything
else through a declared spine. The invariant everywhere: top(bottom(x)) == model(x)."""
import pytest
import timm
import torch
import torchvision
from torch import nn

import stitchlib
from stitchlib import data as D
from stitchlib.models import cut_points, split


def _recomposes(model, x):
    model.eval()
    with torch.no_grad():
        full = model(x)
        for cut in cut_points(model):
            bottom, top = split(model, cut.index)
            assert torch.equal(top(bottom(x)), full), cut.name


def test_torchvision_resnets_cut_at_stem_every_block_and_pool():
    torch.manual_seed(0)
    for ctor, blocks, last in [(torchvision.models.resnet18, [2, 2, 2, 2], 512),
                               (torchvision.models.resnet50, [3, 4, 6, 3], 2048)]:
        model = ctor(num_classes=7)
        cuts = cut_points(model)
        names = ["stem"] + [f"layer{i + 1}.{j}" for i, n in enumerate(blocks) for j in range(n)] + ["pool"]
        assert [c.name for c in cuts] == names
        assert cuts[0].reduction == 4 and cuts[-2].reduction == 32 and cuts[-1].channels == last
        assert cuts[-1].kind == "vector"
        _recomposes(model, torch.randn(2, 3, 64, 64))


def test_timm_resnet_and_vit_cut_where_their_feature_info_says():
    torch.manual_seed(0)
    res = timm.create_model("resnet18", pretrained=False, num_classes=5)
    cuts = cut_points(res)
    assert [c.name for c in cuts] == [f["module"] for f in res.feature_info] + ["pool"]
    assert [c.channels for c in cuts[:-1]] == [f["num_chs"] for f in res.feature_info]
    assert [c.reduction for c in cuts[:-1]] == [f["reduction"] for f in res.feature_info]
    _recomposes(res, torch.randn(2, 3, 64, 64))

    vit = timm.models.VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3,
                                        num_classes=10)
    cuts = cut_points(vit)
    assert [c.name for c in cuts] == ["blocks.0", "blocks.1", "blocks.2", "pool"]
    assert [c.kind for c in cuts] == ["tokens"] * 3 + ["vector"] and cuts[0].channels == 48
    _recomposes(vit, torch.randn(2, 3, 32, 32))


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.act(self.conv(x)))), 1))


SPINE = ["conv", "act", "block", "pool", "fc"]


def test_custom_model_with_a_declared_spine():
    torch.manual_seed(0)
    model = stitchlib.define_spine(Custom(), SPINE, torch.randn(2, 3, 16, 16))
    cuts = cut_points(model)
    assert [(c.name, c.channels, c.kind) for c in cuts] == [
        ("conv", 8, "map"), ("act", 8, "map"), ("block", 8, "map"), ("pool", 8, "map")]
    assert "_stitchlib_spine" not in str(list(model.state_dict()))  # the state_dict is untouched
    _recomposes(model, torch.randn(3, 3, 16, 16))


@pytest.mark.parametrize("names,match", [
    (["conv", "act", "blok", "pool", "fc"], r"\['blok'\] are not submodules of Custom.*'block'"),
    (["conv.weight", "act", "block", "pool", "fc"], "not submodules.*not state_dict keys"),
    (["conv", "act", "block", "block", "pool", "fc"], "repeats a module"),
    (["conv", "act", "block", "block.0", "pool", "fc"], "repeats a module"),
    (["conv", "act", "pool", "fc"], r"skips modules that hold parameters: \['block.0', 'block.1'\]"),
    (["act", "conv", "block", "pool", "fc"], "does not reproduce Custom"),
])
def test_bad_spines_say_what_is_wrong(names, match):
    with pytest.raises(ValueError, match=match):
        stitchlib.define_spine(Custom(), names, torch.randn(2, 3, 16, 16))


def test_models_without_a_catalogue_are_traced():
    # No catalogue and no declaration: the cut points of the torch.fx graph (tests/test_tracing.py).
    torch.manual_seed(0)
    assert [c.name for c in cut_points(Custom())] == ["conv", "act", "block.0", "block.1", "block.2", "pool",
                                                      "flatten"]
    mobile = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=3)
    assert cut_points(mobile)[-1].kind == "vector"
    _recomposes(mobile, torch.randn(2, 3, 64, 64))


def test_stitching_two_torchvision_resnets_and_across_widths(cifar):
    train = D.subset(cifar.train, 256, seed=0)
    test = D.subset(cifar.test, 256, seed=0)
    torch.manual_seed(0)
    a, b = torchvision.models.resnet18(num_classes=10), torchvision.models.resnet18(num_classes=10)
    res = stitchlib.stitch(b, a, "layer2.1", cifar, train=train, test=test, epochs=0, device="cpu")
    assert res.cut.channels == 128 and res.stitched.stitcher.linear.weight.shape == (128, 128, 1, 1)
    self_res = stitchlib.stitch(a, a, "layer3.0", cifar, train=train, test=test, epochs=0, device="cpu")
    assert abs(self_res.penalty_init) <= 1.0  # least squares recovers A's own activations

    narrow = stitchlib.build_model("resnet18", seed=0, width=0.0625)
    wide = stitchlib.build_model("resnet18", seed=1, width=0.125)
    res = stitchlib.stitch(narrow, wide, "layer3.0", cifar, train=train, test=test, epochs=0, device="cpu")
    assert res.stitched.stitcher.linear.weight.shape == (32, 16, 1, 1)
    with pytest.raises(ValueError, match="spatial sizes differ"):
        stitchlib.stitch(narrow, a, "layer3.0", cifar, train=train, test=test, epochs=0, device="cpu")


def test_vit_token_stitching_from_least_squares_is_the_identity_on_itself(cifar):
    train = D.subset(cifar.train, 256, seed=0)
    test = D.subset(cifar.test, 256, seed=0)
    torch.manual_seed(0)
    vit = timm.models.VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3, num_classes=10)
    other = timm.models.VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3,
                                          num_classes=10)
    res = stitchlib.stitch(vit, vit, "blocks.1", cifar, train=train, test=test, epochs=0, device="cpu")
    assert abs(res.penalty_init) <= 1.0
    assert isinstance(res.stitched.stitcher[0], stitchlib.stitching.TokenBatchNorm)
    res = stitchlib.stitch(other, vit, "blocks.1", cifar, train=train, test=test, epochs=1, lr=1e-2, device="cpu")
    assert res.cut.kind == "tokens"
    with pytest.raises(ValueError, match="cannot stitch a tokens representation"):
        stitchlib.stitch(other, stitchlib.build_model("resnet18", seed=0, width=0.0625), 0, cifar,
                         top_at="layer1.0", train=train, test=test, epochs=0, device="cpu")

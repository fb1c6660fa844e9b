"""Cut points found by tracing (stitchlib.tracing): any model torch.fx can trace, no declaration.

Across architectures: torchvision ResNet-18/50, VGG-11, MobileNetV2, timm's ResNet and ViT, a
model written with functional ops and views, and a residual network whose skips are in forward().
Everywhere: top(bottom(x)) == model(x) exactly, at every cut; no cut where a skip crosses."""
import copy
import re

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import get_graph_node_names

import stitchlib
from stitchlib import data as D
from stitchlib.models import cut_points, split
from stitchlib.tracing import UntraceableModelError


def _recomposes_everywhere(model, x):
    model.eval()
    with torch.no_grad():
        full = model(x)
        for cut in cut_points(model):
            bottom, top = split(model, cut.name)
            h = bottom(x)
            assert h.shape[-1 if cut.kind == "tokens" else 1] == cut.channels, cut
            assert torch.equal(top(h), full), cut.name


def _inside(cuts, block: str) -> list[str]:
    """The cuts within `block` ("layer1.0"), by their torchvision-style names."""
    return [c.name[len(block) + 1:] for c in cuts if c.name.startswith(block + ".")]


@pytest.mark.parametrize("ctor,blocks,last", [(torchvision.models.resnet18, [2, 2, 2, 2], "relu_1"),
                                              (torchvision.models.resnet50, [3, 4, 6, 3], "relu_2")])
def test_torchvision_resnets_cut_between_blocks_never_inside(ctor, blocks, last):
    torch.manual_seed(0)
    model = stitchlib.trace_spine(ctor(num_classes=7))
    cuts = cut_points(model)
    # Named as torchvision's own feature extraction names the nodes, in graph order.
    _, eval_nodes = get_graph_node_names(model)
    names = [c.name for c in cuts]
    assert names == [n for n in eval_nodes if n in set(names)]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"] and names[-2:] == ["avgpool", "flatten"]
    # Inside a block only after the skip has joined: its addition and the relu that ends it.
    for layer, n in enumerate(blocks, start=1):
        for j in range(n):
            assert _inside(cuts, f"layer{layer}.{j}") == ["add", last], (layer, j)
    assert len(names) == 4 + 2 * sum(blocks) + 2
    ends = {c.name: c for c in cuts}
    assert ends["maxpool"].reduction == 4 and ends[f"layer4.{blocks[-1] - 1}.{last}"].reduction == 32
    assert ends["flatten"].kind == "vector" and ends["flatten"].channels == model.fc.in_features
    _recomposes_everywhere(model, torch.randn(2, 3, 32, 32))


def test_vgg11_cuts_after_every_layer():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=5)
    cuts = cut_points(model)  # no catalogue: traced by default
    assert [c.name for c in cuts] == ([f"features.{i}" for i in range(21)] + ["avgpool", "flatten"]
                                      + [f"classifier.{i}" for i in range(6)])
    assert [c.channels for c in cuts if c.name in ("features.0", "features.18", "classifier.0")] == [64, 512, 4096]
    _recomposes_everywhere(model, torch.randn(2, 3, 32, 32))


def test_mobilenet_v2_never_cuts_inside_an_inverted_residual():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=6)
    cuts = cut_points(model)
    residual = [i for i, block in enumerate(model.features) if getattr(block, "use_res_connect", False)]
    plain = [i for i, block in enumerate(model.features) if i and not getattr(block, "use_res_connect", True)]
    assert len(residual) == 10 and plain
    for i in residual:
        assert _inside(cuts, f"features.{i}") == ["add"], i
    for i in plain:  # no skip: every layer of the block is a cut
        assert len(_inside(cuts, f"features.{i}")) == len(model.features[i].conv), i
    _recomposes_everywhere(model, torch.randn(2, 3, 32, 32))


def test_timm_resnet_and_vit_traced():
    torch.manual_seed(0)
    res = stitchlib.trace_spine(timm.create_model("resnet18", pretrained=False, num_classes=5))
    cuts = cut_points(res)
    for layer in range(1, 5):
        for j in range(2):
            assert _inside(cuts, f"layer{layer}.{j}") == ["add", "act2"], (layer, j)
    _recomposes_everywhere(res, torch.randn(2, 3, 32, 32))

    vit = stitchlib.trace_spine(timm.models.VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=3,
                                                              num_heads=3, num_classes=10))
    cuts = cut_points(vit)
    # A block adds two skips (attention, then MLP): cuts only after each addition.
    for j in range(3):
        assert _inside(cuts, f"blocks.{j}") == ["add", "add_1"], j
    blocks = [c for c in cuts if c.name.startswith("blocks.")]
    assert {(c.kind, c.channels) for c in blocks} == {("tokens", 48)}
    names = [c.name for c in cuts]
    assert names.index("cat") < names.index("blocks.0.add") and names[-3:] == ["getitem_1", "fc_norm", "head_drop"]
    assert cuts[names.index("getitem_1")].kind == "vector"  # the class token, after the final norm
    _recomposes_everywhere(vit, torch.randn(2, 3, 32, 32))


class FunctionalResNet(nn.Module):
    """A CIFAR ResNet as such models are often written: functional ops and a view in forward(),
    the skip connections inside the blocks (kuangliu/pytorch-cifar style)."""

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.shortcut = nn.Sequential()
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += self.shortcut(x)
            return F.relu(out)

    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(self.Block(width, width, 1), self.Block(width, width, 1))
        self.layer2 = nn.Sequential(self.Block(width, 2 * width, 2), self.Block(2 * width, 2 * width, 1))
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


def test_functional_ops_and_views_between_modules():
    torch.manual_seed(0)
    model = FunctionalResNet()
    cuts = cut_points(model)
    names = [c.name for c in cuts]
    assert names[:3] == ["conv1", "bn1", "relu"] and names[-2:] == ["avg_pool2d", "view"]
    for block in ("layer1.0", "layer1.1", "layer2.0", "layer2.1"):
        assert _inside(cuts, block) == ["add", "relu_1"], block
    # The size() feeding avg_pool2d and the view is not a cut: it is a number, not a representation.
    assert not [n for n in names if re.search(r"size|getitem", n)]
    assert (cuts[-2].kind, cuts[-2].channels, cuts[-1].kind) == ("map", 16, "vector")
    _recomposes_everywhere(model, torch.randn(3, 3, 32, 32))


class SkipsInForward(nn.Module):
    """A residual network whose skip connections are written in forward(), not in modules."""

    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.a2(torch.relu(self.a1(x)))   # block a
        x = torch.relu(x)
        x = x + self.b2(torch.relu(self.b1(x)))   # block b
        return self.head(x.mean((2, 3)))


def test_skips_written_in_forward_leave_no_cut_inside_their_blocks():
    torch.manual_seed(0)
    model = SkipsInForward()
    names = [c.name for c in cut_points(model)]
    assert names == ["stem", "relu", "add", "relu_2", "add_1", "mean"]
    _recomposes_everywhere(model, torch.randn(2, 3, 16, 16))


def test_a_traced_model_stitches_and_survives_deepcopy(cifar):
    train, test = D.subset(cifar.train, 128, seed=0), D.subset(cifar.test, 128, seed=0)
    torch.manual_seed(0)
    a, b = FunctionalResNet(), FunctionalResNet()
    res = stitchlib.stitch(b, a, "layer1.1.relu_1", cifar, train=train, test=test, epochs=0, device="cpu")
    assert res.cut.channels == 8 and res.stitched.stitcher.linear.weight.shape == (8, 8, 1, 1)
    self_res = stitchlib.stitch(a, a, "layer2.0.relu_1", cifar, train=train, test=test, epochs=0, device="cpu")
    assert abs(self_res.penalty_init) <= 1.0  # least squares recovers A's own activations
    # A copy's stages run the copy's modules, not the original's.
    twin = copy.deepcopy(a).eval()
    with torch.no_grad():
        twin.linear.weight.mul_(2)
        x = torch.randn(2, 3, 32, 32)
        bottom, top = split(twin, "view")
        assert torch.equal(top(bottom(x)), twin(x)) and not torch.equal(twin(x), a.eval()(x))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.mean() > 0:  # control flow on a tensor's value: fx cannot trace it
            x = -x
        return self.conv(x)


def test_an_untraceable_model_names_the_operation_and_points_to_define_spine():
    with pytest.raises(TypeError, match=r"cannot trace DataDependent at test_tracing.py:\d+ `if x.mean\(\) > 0:"
                                        r".*define_spine") as err:
        cut_points(DataDependent())
    assert isinstance(err.value, UntraceableModelError)
    # Declared by hand, the same model is usable.
    model = stitchlib.define_spine(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)),
                                   ["0", "1", "2"], torch.randn(1, 3, 8, 8))
    assert [c.name for c in cut_points(model)] == ["0", "1"]


def test_a_cut_that_is_not_a_cut_point_lists_the_valid_ones():
    model = SkipsInForward()
    with pytest.raises(ValueError, match=r"no cut point 'a1'.*0=stem, 1=relu, 2=add, 3=relu_2, 4=add_1, 5=mean"):
        split(model, "a1")  # inside block a: the skip crosses it


def test_define_spine_names_the_stage_where_the_composition_breaks():
    with pytest.raises(ValueError, match=r"stage 4 'linear' fails on the output of 'layer2'.*"
                                         r"mat1 and mat2.*functional op.*traces it"):
        stitchlib.define_spine(FunctionalResNet(), ["conv1", "bn1", "layer1", "layer2", "linear"],
                               torch.randn(2, 3, 32, 32))

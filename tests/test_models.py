import pytest
import torch

from stitchlib.models import CutPoint, build_model, cut_points, split


RESNET18_CUTS = ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                 "layer4.0", "layer4.1", "pool"]


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 2.0])
def test_resnet18_cut_catalogue(width):
    model = build_model("resnet18", seed=0, width=width)
    cuts = cut_points(model)
    base = round(64 * width)
    assert [c.name for c in cuts] == RESNET18_CUTS
    assert [c.index for c in cuts] == list(range(10))
    assert [c.channels for c in cuts] == [base] * 3 + [2 * base] * 2 + [4 * base] * 2 + [8 * base] * 3
    assert [c.reduction for c in cuts] == [1, 1, 1, 2, 2, 4, 4, 8, 8, None]
    assert [c.kind for c in cuts][-1] == "vector" and {c.kind for c in cuts[:-1]} == {"map"}


@pytest.mark.parametrize("width,in_channels,size", [(0.125, 3, 32), (0.25, 1, 28), (0.5, 3, 32)])
def test_split_recomposes_model_exactly_at_every_cut(width, in_channels, size):
    model = build_model("resnet18", seed=3, width=width, in_channels=in_channels).eval()
    x = torch.randn(4, in_channels, size, size)
    with torch.no_grad():
        full = model(x)
        for cut in cut_points(model):
            bottom, top = split(model, cut.index)
            h = bottom(x)
            if cut.kind == "map":
                assert h.shape[1] == cut.channels and h.shape[2] == -(-size // cut.reduction)
            else:
                assert h.shape == (4, cut.channels)
            assert torch.equal(top(h), full), cut.name


def test_split_shares_modules_and_accepts_names_negative_and_cutpoints():
    model = build_model("resnet18", seed=0, width=0.125)
    bottom, top = split(model, "layer2.0")
    assert len(bottom) == 4 and len(top) == 7
    assert bottom[0] is model.stages["stem"]
    assert len(split(model, -1)[0]) == 10  # after pooling
    assert len(split(model, CutPoint(3, "layer2.0", 16, 2, "map"))[0]) == 4


@pytest.mark.parametrize("bad", [10, -11, "layer5.0", "layer1_0", "fc"])
def test_invalid_cut_lists_valid_ones(bad):
    model = build_model("resnet18", seed=0, width=0.125)
    with pytest.raises(ValueError) as err:
        split(model, bad)
    msg = str(err.value)
    assert repr(bad) in msg and "0=stem" in msg and "9=pool" in msg and "-10..9" in msg


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'.*resnet18"):
        build_model("vgg", seed=0)
    with pytest.raises(ValueError, match="width must be > 0"):
        build_model("resnet18", seed=0, width=0)
    with pytest.raises(ValueError, match="width must be > 0"):
        build_model("resnet18", seed=0, width=-0.5)
    # No catalogue, so it is traced: one layer has no point inside it that all information flows through.
    with pytest.raises(TypeError, match="Linear's graph has no point through which all information flows.*"
                                        "define_spine"):
        cut_points(torch.nn.Linear(3, 3))


def test_build_is_a_function_of_the_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("resnet18", seed=7, width=0.125)
    after = torch.rand(3)
    b = build_model("resnet18", seed=7, width=0.125)
    c = build_model("resnet18", seed=8, width=0.125)
    assert torch.equal(after, expected)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["stages.stem.0.weight"], sc["stages.stem.0.weight"])


@pytest.mark.parametrize("depth", [11, 20])
def test_preact_resnet_family_catalogue_and_exact_split(depth):
    n = (depth - 2) // 9
    model = build_model("preact_resnet", seed=0, width=0.5, depth=depth).eval()
    cuts = cut_points(model)
    names = ["stem"] + [f"stage{s}.{b}" for s in (1, 2, 3) for b in range(n)] + ["pool"]
    assert [c.name for c in cuts] == names
    assert [c.channels for c in cuts][1:] == [32] * n + [64] * n + [128] * n + [128]
    assert [c.reduction for c in cuts][1:-1] == [1] * n + [2] * n + [4] * n
    _assert_recomposes(model, cuts, torch.randn(3, 3, 32, 32))


def _assert_recomposes(model, cuts, x):
    with torch.no_grad():
        full = model(x)
        for cut in cuts:
            bottom, top = split(model, cut.index)
            assert torch.equal(top(bottom(x)), full), cut.name


def test_resnet164_is_the_papers_size():
    model = build_model("preact_resnet", seed=0, depth=164)
    assert len(cut_points(model)) == 1 + 54 + 1
    assert 1.6e6 < sum(p.numel() for p in model.parameters()) < 1.8e6  # 1.7M in He et al. (2016)


@pytest.mark.parametrize("depth", [12, 2, 165, "164"])
def test_preact_depth_must_be_9n_plus_2(depth):
    with pytest.raises(ValueError, match=r"depth must be 9n \+ 2"):
        build_model("preact_resnet", seed=0, depth=depth)


def test_myrtle_cnn_catalogue_and_exact_split():
    model = build_model("myrtle", seed=0, width=0.25).eval()
    cuts = cut_points(model)
    assert [(c.name, c.channels, c.reduction) for c in cuts] == [
        ("layer1", 16, 2), ("layer2", 32, 4), ("layer3", 64, 8), ("layer4", 128, 16), ("pool", 128, None)]
    _assert_recomposes(model, cuts, torch.randn(3, 3, 32, 32))


def test_vit_is_timms_adapted_to_cifar_and_cut_between_blocks():
    model = build_model("vit", seed=0, width=1 / 12, depth=3).eval()
    cuts = cut_points(model)
    assert [(c.name, c.channels, c.kind) for c in cuts] == [
        ("blocks.0", 64, "tokens"), ("blocks.1", 64, "tokens"), ("blocks.2", 64, "tokens"), ("pool", 64, "vector")]
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.img_size == (32, 32)
    paper = build_model("vit", seed=0)
    assert (paper.embed_dim, len(paper.blocks), paper.blocks[0].attn.num_heads) == (768, 12, 12)
    _assert_recomposes(model, cuts, torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="depth must be an int >= 2"):
        build_model("vit", seed=0, depth=1)

import math

import pytest
import torch

import stitchlib
from stitchlib import data as D
from stitchlib.ssl import nt_xent, simclr_views, train_simclr


def test_views_are_augmented_in_range_and_reproducible(cifar):
    x = cifar.test.images[:64].float() / 255
    v1 = simclr_views(x, D._generator(0))
    v2 = simclr_views(x, D._generator(0))
    v3 = simclr_views(x, D._generator(1))
    assert v1.shape == x.shape and v1.min() >= 0 and v1.max() <= 1
    assert torch.equal(v1, v2) and not torch.equal(v1, v3)
    assert (v1 - x).abs().mean() > 0.05  # not the identity
    # About p_gray = 20% of the views are grayscale (all three channels equal).
    gray = ((v1[:, 0] - v1[:, 1]).abs().amax((1, 2)) < 1e-6).float().mean().item()
    assert 0.02 < gray < 0.45
    # With no crop, jitter or grayscale, a view is the image or its mirror.
    same = simclr_views(x, D._generator(2), min_scale=1.0, ratio=(1, 1), p_jitter=0.0, p_gray=0.0)
    mirrored = (same - x.flip(3)).abs().amax((1, 2, 3)) < 1e-4
    kept = (same - x).abs().amax((1, 2, 3)) < 1e-4
    assert (mirrored | kept).all() and 10 < mirrored.sum() < 54
    one_channel = simclr_views(x[:, :1], D._generator(0))
    assert one_channel.shape == (64, 1, 32, 32)


def test_nt_xent_rewards_matching_views():
    torch.manual_seed(0)
    z = torch.randn(32, 16)
    matched = nt_xent(z, z + 0.01 * torch.randn(32, 16), temperature=0.1)
    unmatched = nt_xent(z, torch.randn(32, 16), temperature=0.1)
    assert matched < 0.1 < math.log(63) - 0.5 < unmatched  # chance is log(2B - 1)


def test_simclr_lowers_its_loss_and_trains_only_the_encoder(cifar):
    train = D.subset(cifar.train, 512, seed=0)
    model = stitchlib.build_model("resnet18", seed=0, width=0.0625)
    fc = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("stages.fc")}
    stem = model.state_dict()["stages.stem.0.weight"].clone()
    losses = train_simclr(model, train, cifar.mean, cifar.std, epochs=8, batch_size=64, device="cpu",
                          progress=False)
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in fc.items()) and fc
    assert not torch.equal(after["stages.stem.0.weight"], stem)
    again = stitchlib.build_model("resnet18", seed=0, width=0.0625)
    assert train_simclr(again, train, cifar.mean, cifar.std, epochs=8, batch_size=64, device="cpu",
                        progress=False) == pytest.approx(losses)

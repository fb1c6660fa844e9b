import numpy as np
import pytest
import torch

import stitchlib
from stitchlib.models import cut_points, split
from stitchlib.stitching import Stitcher, StitchedModel
from stitchlib.training import error_rate, misclassified


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _identical(before, model):
    after = model.state_dict()
    return all(torch.equal(before[k], after[k]) for k in before)


def test_a_model_stitched_to_itself_from_least_squares_has_zero_penalty_at_every_cut(cifar, small):
    a = small["a"]
    top_error = error_rate(a, small["test"], cifar.mean, cifar.std, device="cpu")
    for cut in cut_points(a):
        res = stitchlib.stitch(a, a, cut.index, cifar, train=small["train"], test=small["test"], epochs=0,
                               ls_samples=512, top_error=top_error, device="cpu")
        assert abs(res.penalty_init) <= 0.4, (cut.name, res.penalty_init)
        x = torch.randn(8, 3, 32, 32)
        with torch.no_grad():
            # The least-squares stitcher is (nearly) the identity on A's own activations.
            bottom, _ = split(a, cut.index)
            h = bottom(x)
            rel = (res.stitched.stitcher(h) - h).norm() / h.norm()
        assert rel < 0.02, (cut.name, float(rel))


def test_two_seeds_need_more_than_identity_and_training_helps(cifar, small):
    a, b = small["a"], small["b"]
    res = stitchlib.stitch(b, a, "layer3.0", cifar, train=small["train"], test=small["test"], epochs=2, lr=1e-2,
                           device="cpu", seed=0)
    assert res.penalty_init > 0.5  # different seeds are not the same network...
    assert res.penalty < res.penalty_init  # ...but a trained stitcher recovers part of the gap
    assert res.penalty == pytest.approx(res.error - res.top_error)


def test_frozen_parts_are_bit_identical_after_stitching(cifar, small):
    a, b = small["a"], small["b"]
    before_a, before_b = _snapshot(a), _snapshot(b)
    stitchlib.stitch(b, a, "layer2.0", cifar, train=small["train"], test=small["test"], epochs=1, device="cpu")
    assert _identical(before_a, a) and _identical(before_b, b)
    assert all(p.requires_grad for p in a.parameters())  # restored for the caller


def test_drift_policy_moves_batchnorm_statistics_of_copies_only(cifar, small):
    a, b = small["a"], small["b"]
    before_a = _snapshot(a)
    res = stitchlib.stitch(b, a, "layer2.0", cifar, train=small["train"], test=small["test"], epochs=1,
                           bn_policy="drift", device="cpu")
    assert _identical(before_a, a)  # the caller's model is untouched
    top_bn = [m for m in res.stitched.top.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    bns = [(k, m) for k, m in a.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    original = next(m for k, m in bns if k.startswith("stages.layer2_1"))
    assert not torch.equal(top_bn.running_mean, original.running_mean)  # the statistics drifted


def test_frozen_model_stays_in_eval_mode_under_train():
    stitched = StitchedModel(torch.nn.BatchNorm2d(4), Stitcher(4, 4), torch.nn.BatchNorm2d(4))
    stitched.train()
    assert stitched.stitcher.training and not stitched.bottom.training and not stitched.top.training
    drift = StitchedModel(torch.nn.BatchNorm2d(4), Stitcher(4, 4), torch.nn.BatchNorm2d(4), bn_policy="drift")
    drift.train()
    assert drift.bottom.training and drift.top.training


def test_least_squares_matches_an_independent_ridge_solution(cifar, small):
    """At the pooled cut the stitcher in eval mode must equal lstsq on standardised features."""
    a, b = small["a"], small["b"]
    res = stitchlib.stitch(b, a, "pool", cifar, train=small["train"], test=small["test"], epochs=0,
                           ls_samples=1024, ridge=0.0, device="cpu")
    loader = stitchlib.data.DeviceLoader(small["train"], cifar.mean, cifar.std, batch_size=1024)
    x, _ = next(iter(loader))
    with torch.no_grad():
        hb = split(b, "pool")[0](x).double().numpy()
        ha = split(a, "pool")[0](x).double().numpy()
        got = res.stitched.stitcher.eval()(torch.from_numpy(hb).float()).double().numpy()
    z = (hb - hb.mean(0)) / np.sqrt(hb.var(0) + 1e-5)
    design = np.hstack([z, np.ones((len(z), 1))])
    coef, *_ = np.linalg.lstsq(design, ha, rcond=None)
    assert np.abs(got - design @ coef).max() < 1e-3 * np.abs(ha).max()


def test_stitcher_shapes_and_kernel_sizes():
    x = torch.randn(2, 8, 16, 16)
    for k in (1, 3, 5):
        s = Stitcher(8, 12, kernel_size=k)
        assert s(x).shape == (2, 12, 16, 16)
    assert Stitcher(8, 12, kind="vector")(torch.randn(4, 8)).shape == (4, 12)
    for bad in (0, 2, -1):
        with pytest.raises(ValueError, match="positive odd"):
            Stitcher(8, 12, kernel_size=bad)
    assert Stitcher(8, 12, kind="tokens")(torch.randn(4, 5, 8)).shape == (4, 5, 12)
    with pytest.raises(ValueError, match="unknown representation kind 'graph'"):
        Stitcher(8, 12, kind="graph")
    with pytest.raises(ValueError, match="tokens cut takes a linear stitcher"):
        Stitcher(8, 12, kind="tokens", kernel_size=3)


def test_shape_mismatch_and_bad_options_are_refused(cifar, small):
    a, b = small["a"], small["b"]
    kw = dict(train=small["train"], test=small["test"], epochs=0, device="cpu")
    with pytest.raises(ValueError, match="cannot stitch a map representation"):
        stitchlib.stitch(b, a, "layer4.1", cifar, top_at="pool", **kw)
    with pytest.raises(ValueError, match="spatial sizes differ"):
        stitchlib.stitch(b, a, "stem", cifar, top_at="layer2.0", **kw)
    with pytest.raises(ValueError, match="no cut point 'layer9.0'.*0=stem"):
        stitchlib.stitch(b, a, "layer9.0", cifar, **kw)
    with pytest.raises(ValueError, match="unknown bn_policy"):
        stitchlib.stitch(b, a, 0, cifar, bn_policy="train", **kw)
    with pytest.raises(ValueError, match="unknown init"):
        stitchlib.stitch(b, a, 0, cifar, init="zeros", **kw)


def test_stitching_repeats_exactly_with_the_same_seed(cifar, small):
    a, b = small["a"], small["b"]
    kw = dict(train=small["train"], test=small["test"], epochs=1, init="random", seed=3, device="cpu")
    r1 = stitchlib.stitch(b, a, "layer1.1", cifar, **kw)
    r2 = stitchlib.stitch(b, a, "layer1.1", cifar, **kw)
    assert (r1.error_init, r1.error) == (r2.error_init, r2.error)
    s1, s2 = r1.stitched.stitcher.state_dict(), r2.stitched.stitcher.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_steps_zero_keeps_the_initialisation_and_steps_train(cifar, small):
    a, b = small["a"], small["b"]
    kw = dict(train=small["train"], test=small["test"], epochs=5, device="cpu")
    kept = stitchlib.stitch(b, a, "layer2.1", cifar, steps=0, **kw)
    assert kept.error == kept.error_init
    trained = stitchlib.stitch(b, a, "layer2.1", cifar, steps=3, lr=1e-2, **kw)
    assert trained.error_init == kept.error_init
    w_kept, w_trained = kept.stitched.stitcher.linear.weight, trained.stitched.stitcher.linear.weight
    assert not torch.equal(w_kept, w_trained)
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        stitchlib.stitch(b, a, 0, cifar, steps=-1, **kw)


def test_drift_is_measured_with_the_drifted_bottom(cifar, small):
    a, b = small["a"], small["b"]
    res = stitchlib.stitch(b, a, "layer1.0", cifar, train=small["train"], test=small["test"], epochs=1,
                           bn_policy="drift", device="cpu")
    # Re-evaluating the returned stitched model (its drifted bottom included) gives the reported error.
    assert error_rate(res.stitched, small["test"], cifar.mean, cifar.std, device="cpu") == res.error
    # Per-image correctness, in the test split's order, behind both reported errors.
    wrong = misclassified(res.stitched, small["test"], cifar.mean, cifar.std, device="cpu")
    assert torch.equal(res.wrong, wrong) and res.wrong.dtype == torch.bool and len(res.wrong) == len(small["test"])
    assert 100 * res.wrong_init.float().mean().item() == pytest.approx(res.error_init)


def _random_pair(arch, **options):
    return [stitchlib.build_model(arch, seed=seed, **options) for seed in (0, 1)]


@pytest.mark.parametrize("family", ["resnet18", "vit", "myrtle"])
def test_all_cuts_in_one_pass_give_each_cut_its_own_result(cifar, small, family):
    """Training every cut's stitcher on the same batches must not let the cuts interact: the
    joint run gives exactly what one cut at a time gives (map, token and vector cuts)."""
    if family == "resnet18":
        a, b = small["a"], small["b"]
    else:
        a, b = _random_pair(family, width=0.125, **({"depth": 2} if family == "vit" else {}))
    cuts = [c.name for c in cut_points(a)]
    chosen = [cuts[len(cuts) // 2], cuts[0], cuts[-1]]  # any order: results come back in this one
    kw = dict(train=small["train"], test=small["test"], steps=4, lr=1e-2, ls_samples=256, device="cpu",
              progress=False)
    joint = stitchlib.stitch(b, a, chosen, cifar, **kw)
    alone = [stitchlib.stitch(b, a, c, cifar, **kw) for c in chosen]
    assert [r.cut.name for r in joint] == chosen
    for j, s in zip(joint, alone):
        assert (j.error_init, j.error) == (s.error_init, s.error), j.cut.name
        sj, ss = j.stitched.stitcher.state_dict(), s.stitched.stitcher.state_dict()
        assert all(torch.equal(sj[k], ss[k]) for k in sj), j.cut.name
    # Training moved the stitchers: the equality above is not that of untouched initialisations.
    untrained = stitchlib.stitch(b, a, chosen, cifar, **{**kw, "steps": 0})
    assert any(not torch.equal(u.stitched.stitcher.linear.weight, j.stitched.stitcher.linear.weight)
               for u, j in zip(untrained, joint))


def test_a_list_of_cuts_is_checked_like_one(cifar, small):
    a, b = small["a"], small["b"]
    kw = dict(train=small["train"], test=small["test"], epochs=0, device="cpu")
    with pytest.raises(ValueError, match="no cut point 'layer9.0'.*0=stem"):
        stitchlib.stitch(b, a, ["stem", "layer9.0"], cifar, **kw)
    with pytest.raises(ValueError, match="at lists 2 cuts and top_at 1"):
        stitchlib.stitch(b, a, ["stem", "pool"], cifar, top_at=["stem"], **kw)
    with pytest.raises(ValueError, match="at least one cut"):
        stitchlib.stitch(b, a, [], cifar, **kw)
    # With drifting statistics the cuts share one copy of the bottom but each has its own top:
    # still exactly what one cut at a time gives, and the caller's models stay untouched.
    before_a, before_b = _snapshot(a), _snapshot(b)
    drift = stitchlib.stitch(b, a, ["layer1.0", "layer2.0"], cifar, bn_policy="drift", **{**kw, "epochs": 1})
    for res in drift:
        alone = stitchlib.stitch(b, a, res.cut.name, cifar, bn_policy="drift", **{**kw, "epochs": 1})
        assert (res.error_init, res.error) == (alone.error_init, alone.error), res.cut.name
    heads = [list(res.stitched.top.children())[-1] for res in drift]  # both tops end in A's classifier
    assert heads[0] is not heads[1]
    assert _identical(before_a, a) and _identical(before_b, b)


# ------------------------------------------------------------ Section 3's changed representations

def _images(cifar, small):
    from stitchlib.data import DeviceLoader
    return next(iter(DeviceLoader(small["test"], cifar.mean, cifar.std, batch_size=256, device="cpu")))[0]


def test_useless_coordinates_lower_cka_but_the_stitcher_throws_them_away(cifar, small):
    from stitchlib.similarity import linear_cka
    from stitchlib.stitching import make_transform
    a = small["a"]
    cut = cut_points(a)[3]
    plain = stitchlib.stitch(a, a, cut.index, cifar, train=small["train"], test=small["test"], epochs=0,
                             ls_samples=512, device="cpu")
    noisy = stitchlib.stitch(a, a, cut.index, cifar, train=small["train"], test=small["test"], epochs=0,
                             ls_samples=512, device="cpu", transform=("useless_coordinates", 1.0))
    # The stitcher sees twice the channels; least squares puts (almost) no weight on the noise.
    assert noisy.stitched.stitcher.linear.in_channels == 2 * cut.channels
    w = noisy.stitched.stitcher.linear.weight[:, :, 0, 0].abs()
    assert w[:, cut.channels:].mean() < 0.05 * w[:, :cut.channels].mean()
    assert abs(noisy.penalty_init - plain.penalty_init) <= 1.0
    # CKA of a representation with itself plus as much noise as signal (root mean square) falls
    # below 1, and further with more noise.
    x = _images(cifar, small)
    with torch.no_grad():
        h = split(a, cut.index)[0].eval()(x)
    t = make_transform(("useless_coordinates", 1.0), cut, seed=0)
    assert linear_cka(h, h) == pytest.approx(1.0)
    once = linear_cka(h, t(h))
    assert once < 0.97 and linear_cka(h, make_transform(("useless_coordinates", 4.0), cut, seed=0)(h)) < once - 0.05
    # Fresh draws at every call, the same sequence from the same seed.
    t2 = make_transform(("useless_coordinates", 1.0), cut, seed=0)
    first, again = t2(h), make_transform(("useless_coordinates", 1.0), cut, seed=0)(h)
    assert torch.equal(first, again) and not torch.equal(first, t2(h))


def test_permuted_positions_keep_cka_but_stitching_pays(cifar, small):
    from stitchlib.similarity import linear_cka
    from stitchlib.stitching import make_transform
    a, b = small["a"], small["b"]
    cut = [c for c in cut_points(a) if c.kind == "map"][2]
    x = _images(cifar, small)
    with torch.no_grad():
        ha, hb = split(a, cut.index)[0].eval()(x), split(b, cut.index)[0].eval()(x)
    t = make_transform(("permuted_positions",), cut, seed=0)
    moved = t(hb)
    assert moved.shape == hb.shape and not torch.equal(moved, hb)
    # The same values at other positions, the same permutation for every channel and image.
    assert torch.equal(moved.flatten(2).sort(-1).values, hb.flatten(2).sort(-1).values)
    assert linear_cka(ha, moved) == pytest.approx(linear_cka(ha, hb), abs=1e-9)
    plain = stitchlib.stitch(a, a, cut.index, cifar, train=small["train"], test=small["test"], epochs=0,
                             ls_samples=512, device="cpu")
    permuted = stitchlib.stitch(a, a, cut.index, cifar, train=small["train"], test=small["test"], epochs=0,
                                ls_samples=512, device="cpu", transform=("permuted_positions",))
    # A 1 x 1 stitcher cannot put pixels back: the stitched network no longer predicts as A does
    # (these tiny models are near chance, so the penalty itself moves by a few points only).
    assert permuted.penalty_init > plain.penalty_init + 2
    with torch.no_grad():
        agree = lambda m: (m.eval()(x).argmax(1) == a.eval()(x).argmax(1)).float().mean()  # noqa: E731
        assert agree(plain.stitched) > 0.99 and agree(permuted.stitched) < 0.8


def test_transforms_refuse_what_they_cannot_do(cifar, small):
    from stitchlib.stitching import make_transform
    a = small["a"]
    pooled = [c for c in cut_points(a) if c.kind == "vector"][0]
    with pytest.raises(ValueError, match="pooled vector: it has no spatial positions to permute"):
        stitchlib.stitch(a, a, pooled.index, cifar, train=small["train"], test=small["test"], epochs=0,
                         device="cpu", transform=("permuted_positions",))
    with pytest.raises(ValueError, match=r"unknown transform 'shuffle'; valid: \('useless_coordinates', "):
        make_transform(("shuffle",), pooled, 0)
    with pytest.raises(ValueError, match="takes one ratio > 0"):
        make_transform(("useless_coordinates", -1), pooled, 0)
    with pytest.raises(ValueError, match="transform must be None or a tuple"):
        make_transform("permuted_positions", pooled, 0)
    # A pooled vector takes useless coordinates: features appended.
    t = make_transform(("useless_coordinates", 0.5), pooled, 0)
    assert t(torch.ones(4, pooled.channels)).shape == (4, pooled.channels + round(0.5 * pooled.channels))


def test_permuting_a_vits_tokens_leaves_its_class_token_where_the_head_reads_it():
    from stitchlib.stitching import make_transform
    vit = stitchlib.build_model("vit", seed=0, width=0.0625, depth=2)
    cut = [c for c in cut_points(vit) if c.kind == "tokens"][0]
    h = torch.arange(2 * 65 * 3, dtype=torch.float32).reshape(2, 65, 3)  # a class token and 64 patches
    moved = make_transform(("permuted_positions",), cut, seed=0, model=vit)(h)
    assert torch.equal(moved[:, 0], h[:, 0]) and not torch.equal(moved[:, 1:], h[:, 1:])
    assert torch.equal(moved[:, 1:].sort(1).values, h[:, 1:].sort(1).values)
    # Without the model, nothing says which token is the class token: all move.
    assert not torch.equal(make_transform(("permuted_positions",), cut, seed=0)(h)[:, 0], h[:, 0])

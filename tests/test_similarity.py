"""Tests for stitchlib.similarity against an independent numpy reference written from the formulas."""

import math

import numpy as np
import pytest
import torch

from stitchlib.similarity import ESTIMATORS, CKAAccumulator, linear_cka

# ---------------------------------------------------------------------------------------------
# Independent reference: float64 numpy, Gram matrices of the raw (uncentred) features, explicit
# centring matrix for the biased HSIC and Kornblith's U-centring spelled out with loops for the
# unbiased one. Nothing here calls into stitchlib.


def ref_gram(x):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x @ x.T


def ref_hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_u_centre(k):
    """Kornblith's center_gram(unbiased=True), element by element."""
    n = k.shape[0]
    k = k.copy()
    for i in range(n):
        k[i, i] = 0.0
    col = [sum(k[i, j] for i in range(n)) for j in range(n)]
    total = sum(col)
    u = np.zeros_like(k)
    for i in range(n):
        for j in range(n):
            if i != j:
                u[i, j] = k[i, j] - col[i] / (n - 2) - col[j] / (n - 2) + total / ((n - 1) * (n - 2))
    return u


def ref_hsic_unbiased(k, l):
    n = k.shape[0]
    return np.sum(ref_u_centre(k) * ref_u_centre(l)) / (n * (n - 3))


def ref_hsic_song(k, l):
    """Song et al. (2012), eq. 5, as printed: a second, independent form of the unbiased HSIC."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l - np.diag(np.diag(l))
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def ref_cka(x, y, debiased=False):
    k, l = ref_gram(x), ref_gram(y)
    hsic = ref_hsic_unbiased if debiased else ref_hsic_biased
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


# ---------------------------------------------------------------------------------------------


def gen(seed):
    return torch.Generator().manual_seed(seed)


def related(n, p, q, seed, noise=1.0):
    """Two representations that share a random low-dimensional signal, plus a feature offset so
    that centring matters."""
    g = gen(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x = z @ torch.randn(3, p, generator=g, dtype=torch.float64) + noise * torch.randn(
        n, p, generator=g, dtype=torch.float64
    )
    y = z @ torch.randn(3, q, generator=g, dtype=torch.float64) + noise * torch.randn(
        n, q, generator=g, dtype=torch.float64
    )
    return x + 3.0, y - 2.0


# n, p, q: feature dims above n (Gram regime) and below n (feature regime)
REGIMES = [(12, 40, 25), (40, 6, 9), (30, 30, 5)]


def test_references_agree_with_each_other():
    x, y = related(9, 5, 7, seed=0)
    k, l = ref_gram(x.numpy()), ref_gram(y.numpy())
    assert ref_hsic_unbiased(k, l) == pytest.approx(ref_hsic_song(k, l), rel=1e-10)
    # the biased HSIC of centred features is ||Yc^T Xc||_F^2 / (n-1)^2
    xc, yc = x.numpy() - x.numpy().mean(0), y.numpy() - y.numpy().mean(0)
    assert ref_hsic_biased(k, l) == pytest.approx(np.sum((yc.T @ xc) ** 2) / 8**2, rel=1e-10)


@pytest.mark.parametrize("n,p,q", REGIMES)
@pytest.mark.parametrize("debiased", [False, True])
def test_matches_reference(n, p, q, debiased):
    x, y = related(n, p, q, seed=n + p)
    want = ref_cka(x.numpy(), y.numpy(), debiased)
    for form in ("auto", "gram", "feature"):
        assert linear_cka(x, y, debiased=debiased, form=form) == pytest.approx(want, abs=1e-8)


@pytest.mark.parametrize("n,p,q", REGIMES + [(300, 120, 80)])
@pytest.mark.parametrize("debiased", [False, True])
def test_gram_and_feature_forms_agree(n, p, q, debiased):
    x, y = related(n, p, q, seed=7)
    a = linear_cka(x, y, debiased=debiased, form="gram")
    b = linear_cka(x, y, debiased=debiased, form="feature")
    assert abs(a - b) < 1e-10


def test_gram_form_in_several_chunks(monkeypatch):
    import stitchlib.similarity as sim

    x, y = related(150, 20, 30, seed=3)
    whole = [linear_cka(x, y, debiased=d, form="gram") for d in (False, True)]
    # force chunk x chunk blocks so that the off-diagonal bookkeeping is exercised
    monkeypatch.setattr(sim, "_WORK_BYTES", 8 * 64 * 64 * 3)
    chunked = [linear_cka(x, y, debiased=d, form="gram") for d in (False, True)]
    assert np.allclose(whole, chunked, rtol=0, atol=1e-12)


def test_auto_form_picks_by_cost():
    import stitchlib.similarity as sim

    assert sim._choose_form(1000, 10, 10) == "feature"
    assert sim._choose_form(100, 5000, 5000) == "gram"


@pytest.mark.parametrize("debiased", [False, True])
def test_orthogonal_and_scaling_invariance(debiased):
    x, y = related(25, 15, 40, seed=11)
    base = linear_cka(x, y, debiased=debiased)
    q, _ = torch.linalg.qr(torch.randn(15, 15, generator=gen(1), dtype=torch.float64))
    assert linear_cka(x @ q, y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, 7.5 * y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(1e-3 * x, y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    # a general invertible map is NOT an invariance: this shows the comparison above can fail
    a = torch.randn(15, 15, generator=gen(2), dtype=torch.float64) @ torch.diag(
        torch.logspace(-2, 2, 15, dtype=torch.float64)
    )
    assert torch.linalg.matrix_rank(a) == 15
    assert abs(linear_cka(x @ a, y, debiased=debiased) - base) > 1e-2


@pytest.mark.parametrize("n,p", [(20, 50), (50, 8)])
def test_self_similarity_is_one(n, p):
    x, _ = related(n, p, 3, seed=5)
    assert abs(linear_cka(x, x) - 1.0) < 1e-12
    assert abs(linear_cka(x, x, debiased=True) - 1.0) < 1e-12
    assert abs(linear_cka(x, x.clone().float().double()) - 1.0) < 1e-12


def test_independent_inputs_are_below_one_and_biased_in_unit_interval():
    g = gen(9)
    for p, q in [(10, 10), (200, 300)]:
        x = torch.randn(50, p, generator=g)
        y = torch.randn(50, q, generator=g)
        c = linear_cka(x, y)
        # biased CKA of independent data is far from 0 when p, q > n (0.83 here): the bias
        # that the debiased estimator removes
        assert 0.0 <= c < 0.9
        assert abs(linear_cka(x, y, debiased=True)) < 0.1
    # related inputs score clearly higher than independent ones of the same shape (0.15)
    x, y = related(50, 10, 10, seed=4, noise=0.3)
    assert linear_cka(x, y) > 0.7
    assert linear_cka(x, y, debiased=True) > 0.7


def test_4d_input_equals_flattened():
    x = torch.randn(16, 3, 4, 5, generator=gen(0), dtype=torch.float64)
    y = torch.randn(16, 2, 3, 3, generator=gen(1), dtype=torch.float64)
    for d in (False, True):
        assert linear_cka(x, y, debiased=d) == linear_cka(x.reshape(16, -1), y.reshape(16, -1), debiased=d)
    # the module flattens per example (n, C*H*W), not per position (n*H*W, C): check against the
    # reference on that layout
    assert linear_cka(x, y) == pytest.approx(ref_cka(x.reshape(16, -1).numpy(), y.reshape(16, -1).numpy()), abs=1e-10)
    # non-contiguous input (channels-last view) flattens the same way
    xt = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not xt.is_contiguous()
    assert linear_cka(xt, y) == pytest.approx(linear_cka(x, y), abs=1e-14)


def test_low_precision_inputs_are_computed_in_float64():
    x, y = related(40, 30, 20, seed=8)
    x32, y32 = x.float(), y.float()
    # float32 storage perturbs the inputs by ~1e-7 only; the arithmetic itself is float64
    assert linear_cka(x32, y32) == pytest.approx(linear_cka(x, y), abs=1e-6)
    assert linear_cka(x32, y32) == linear_cka(x32.double(), y32.double())
    assert linear_cka(x.half(), y.bfloat16()) == linear_cka(x.half().double(), y.bfloat16().double())
    # numpy arrays and integer dtypes are accepted
    assert linear_cka(x.numpy(), y.numpy()) == linear_cka(x, y)
    xi = torch.randint(0, 5, (20, 6), generator=gen(0))
    assert linear_cka(xi, xi.double()) == pytest.approx(1.0, abs=1e-12)


def test_result_is_python_float_and_input_untouched():
    x, y = related(10, 4, 4, seed=1)
    x0, y0 = x.clone(), y.clone()
    c = linear_cka(x.requires_grad_(), y)
    assert type(c) is float
    assert torch.equal(x.detach(), x0) and torch.equal(y, y0)


# ---------------------------------------------------------------------------------------------
# errors


def test_error_n_mismatch():
    with pytest.raises(ValueError, match=r"x has n=10 and y has n=9"):
        linear_cka(torch.randn(10, 3), torch.randn(9, 3))


def test_error_too_few_examples():
    with pytest.raises(ValueError, match="at least 4 examples"):
        linear_cka(torch.randn(3, 5), torch.randn(3, 5), debiased=True)
    with pytest.raises(ValueError, match="at least 2 examples"):
        linear_cka(torch.randn(1, 5), torch.randn(1, 5))
    # defined from n = 4 on
    x4, y4 = torch.randn(4, 5, generator=gen(0)), torch.randn(4, 5, generator=gen(1))
    assert linear_cka(x4, y4, debiased=True) == pytest.approx(
        ref_cka(x4.numpy(), y4.numpy(), debiased=True), abs=1e-8
    )


@pytest.mark.parametrize("debiased", [False, True])
def test_error_constant_input_names_it(debiased):
    y = torch.randn(8, 5, generator=gen(0))
    const = torch.full((8, 5), 0.1, dtype=torch.float32)
    const[:, 2] = 3.7
    with pytest.raises(ValueError, match=r"^x is constant"):
        linear_cka(const, y, debiased=debiased)
    with pytest.raises(ValueError, match=r"^y is constant"):
        linear_cka(y, const, debiased=debiased)
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.zeros(8, 5), y, debiased=debiased)
    # tiny but real variation is not "constant"
    tiny = const.double() + 1e-6 * torch.randn(8, 5, generator=gen(1), dtype=torch.float64)
    assert math.isfinite(linear_cka(tiny, y, debiased=debiased))


def test_error_non_finite():
    x = torch.randn(6, 4)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x contains 1 NaN or infinite"):
        linear_cka(x, torch.randn(6, 4))
    y = torch.randn(6, 4)
    y[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"y contains 1 NaN or infinite"):
        linear_cka(torch.randn(6, 4), y)


def test_error_bad_arguments():
    with pytest.raises(ValueError, match="valid forms are 'auto', 'gram', 'feature'"):
        linear_cka(torch.randn(5, 2), torch.randn(5, 2), form="kernel")
    with pytest.raises(TypeError, match="real-valued"):
        linear_cka(torch.randn(5, 2, dtype=torch.complex64), torch.randn(5, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        linear_cka([[1.0, 2.0]] * 5, torch.randn(5, 2))
    with pytest.raises(ValueError, match="no features"):
        linear_cka(torch.randn(5, 0), torch.randn(5, 2))


# ---------------------------------------------------------------------------------------------
# accumulator

UNEVEN = [7, 1, 13, 4, 10]  # 5 batches, 35 examples


def batches(x, y, sizes):
    i = 0
    for s in sizes:
        yield x[i : i + s], y[i : i + s]
        i += s
    assert i == len(x)


@pytest.mark.parametrize("n,p,q", [(35, 60, 45), (35, 5, 8)])
@pytest.mark.parametrize("debiased", [False, True])
def test_exact_accumulator_equals_one_shot(n, p, q, debiased):
    x, y = related(n, p, q, seed=21)
    acc = CKAAccumulator("exact", debiased=debiased)
    for xb, yb in batches(x, y, UNEVEN):
        acc.update(xb, yb)
    assert acc.n == n
    assert abs(acc.value() - linear_cka(x, y, debiased=debiased)) < 1e-10
    # float32 batches are kept as float32 and still computed in float64
    acc32 = CKAAccumulator(debiased=debiased)
    for xb, yb in batches(x.float(), y.float(), UNEVEN):
        acc32.update(xb, yb)
    assert abs(acc32.value() - linear_cka(x.float(), y.float(), debiased=debiased)) < 1e-10


@pytest.mark.parametrize("p,q,form", [(40, 30, "feature"), (400, 300, "gram")])
def test_exact_accumulator_chunks_across_batch_boundaries(monkeypatch, p, q, form):
    import stitchlib.similarity as sim

    x, y = related(300, p, q, seed=2)
    sizes = [37] * 8 + [4]
    want = [linear_cka(x, y, debiased=d) for d in (False, True)]
    assert sim._choose_form(300, p, q) == form
    # 64-row chunks that straddle the 37-row batches
    monkeypatch.setattr(sim, "_WORK_BYTES", 8 * 64 * 64 * 3)
    for d in (False, True):
        acc = CKAAccumulator(debiased=d)
        for xb, yb in batches(x, y, sizes):
            acc.update(xb, yb)
        assert abs(acc.value() - want[d]) < 1e-10


def test_exact_accumulator_copies_batches_and_4d():
    x = torch.randn(12, 2, 3, 3, generator=gen(0))
    y = torch.randn(12, 5, generator=gen(1))
    want = linear_cka(x, y)
    acc = CKAAccumulator()
    buf_x, buf_y = torch.empty(6, 2, 3, 3), torch.empty(6, 5)
    for i in (0, 6):
        buf_x.copy_(x[i : i + 6])
        buf_y.copy_(y[i : i + 6])
        acc.update(buf_x, buf_y)  # the caller reuses its buffers
    assert abs(acc.value() - want) < 1e-12
    acc.value()  # value() does not consume the batches
    assert abs(acc.value() - want) < 1e-12


def test_minibatch_matches_hand_computation():
    x, y = related(40, 12, 30, seed=13)
    sizes = [8, 12, 5, 15]
    acc = CKAAccumulator("minibatch")
    hxy, hxx, hyy = [], [], []
    for xb, yb in batches(x, y, sizes):
        acc.update(xb, yb)
        k, l = ref_gram(xb.numpy()), ref_gram(yb.numpy())
        hxy.append(ref_hsic_unbiased(k, l))
        hxx.append(ref_hsic_unbiased(k, k))
        hyy.append(ref_hsic_unbiased(l, l))
    want = np.mean(hxy) / math.sqrt(np.mean(hxx) * np.mean(hyy))
    assert acc.value() == pytest.approx(want, abs=1e-8)
    # and it is a different number from the exact debiased CKA on the same data
    assert abs(want - linear_cka(x, y, debiased=True)) > 1e-3


def test_minibatch_single_batch_equals_debiased_exact():
    x, y = related(30, 20, 7, seed=17)
    acc = CKAAccumulator("minibatch", debiased=True)
    acc.update(x, y)
    assert abs(acc.value() - linear_cka(x, y, debiased=True)) < 1e-10


def test_minibatch_errors():
    with pytest.raises(ValueError, match="debiased"):
        CKAAccumulator("minibatch", debiased=False)
    acc = CKAAccumulator("minibatch")
    with pytest.raises(ValueError, match="at least 4 examples per batch; got a batch of 3"):
        acc.update(torch.randn(3, 5), torch.randn(3, 5))
    const = torch.ones(6, 5)
    acc.update(const, torch.randn(6, 5))
    acc.update(const * 2, torch.randn(6, 5))
    with pytest.raises(ValueError, match=r"^x is constant across the examples within every minibatch"):
        acc.value()
    # a constant batch among informative ones is fine
    acc.update(torch.randn(6, 5), torch.randn(6, 5))
    assert math.isfinite(acc.value())


def test_accumulator_errors():
    with pytest.raises(ValueError, match="valid estimators are 'exact', 'minibatch'"):
        CKAAccumulator("jackknife")
    assert ESTIMATORS == ("exact", "minibatch")
    acc = CKAAccumulator()
    with pytest.raises(ValueError, match="no batches"):
        acc.value()
    acc.update(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="5 features in x and 2 in y .* earlier batches had 3 and 2"):
        acc.update(torch.randn(4, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="x has n=4 and y has n=3"):
        acc.update(torch.randn(4, 3), torch.randn(3, 2))
    bad = torch.randn(4, 3)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        acc.update(bad, torch.randn(4, 2))
    assert acc.n == 4  # failed updates add nothing
    acc_u = CKAAccumulator(debiased=True)
    acc_u.update(torch.randn(3, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="at least 4 examples"):
        acc_u.value()


def test_exact_accumulator_memory_limit():
    acc = CKAAccumulator("exact", max_bytes=10_000)
    acc.update(torch.randn(20, 50), torch.randn(20, 50))  # 8000 bytes as float32
    with pytest.raises(MemoryError) as err:
        acc.update(torch.randn(20, 50), torch.randn(20, 50))
    msg = str(err.value)
    assert "16000 bytes" in msg and "40 examples" in msg and "max_bytes=10000" in msg
    assert "estimator='minibatch'" in msg and "fewer samples" in msg
    assert acc.n == 20  # the refused batch was not kept
    assert math.isfinite(acc.value())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("debiased", [False, True])
def test_cuda_matches_cpu(debiased):
    x, y = related(200, 300, 50, seed=0)
    want = linear_cka(x, y, debiased=debiased)
    xg, yg = x.float().cuda(), y.float().cuda()
    assert linear_cka(xg, yg, debiased=debiased) == pytest.approx(
        linear_cka(x.float(), y.float(), debiased=debiased), abs=1e-10
    )
    acc = CKAAccumulator(debiased=debiased)
    for xb, yb in batches(x.cuda(), y.cuda(), [50] * 4):
        acc.update(xb, yb)
    assert abs(acc.value() - want) < 1e-10

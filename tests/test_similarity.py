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


# ---------------------------------------------------------------------------------------------
# cka_matrix / CKAMatrix: every pair of layers at once

from stitchlib.similarity import CKAMatrix, cka_matrix  # noqa: E402


def layer_lists(n=40, seed=0):
    """Layers of two 'networks' sharing a latent signal: different widths and shapes (a 4-D
    conv-shaped one), float64 and float32, and feature offsets so that centring matters."""
    g = gen(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)

    def lin(*shape):
        d = math.prod(shape)
        w = torch.randn(4, d, generator=g, dtype=torch.float64)
        return (z @ w + torch.randn(n, d, generator=g, dtype=torch.float64)).reshape(n, *shape)

    a = [lin(30) + 3.0, lin(3, 4, 5), lin(7).float(), lin(2, 6) - 1.0]
    b = [lin(50), lin(9) + 2.0, lin(2, 3, 3)]
    return a, b


def per_pair(a, b, debiased):
    return np.array([[linear_cka(x, y, debiased=debiased) for y in b] for x in a])


@pytest.mark.parametrize("form", ["auto", "gram", "feature"])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_matches_linear_cka_every_pair(monkeypatch, form, debiased):
    import stitchlib.similarity as sim

    a, b = layer_lists()
    want = per_pair(a, b, debiased)
    if form != "auto":
        monkeypatch.setattr(sim, "_choose_matrix_form", lambda *args: form)
    got = cka_matrix(a, b, debiased=debiased)
    assert got.shape == (4, 3) and got.dtype == np.float64
    assert np.abs(got - want).max() < 1e-12
    # and the self-similarity matrix of a, through the shared path
    assert np.abs(cka_matrix(a, a, debiased=debiased) - per_pair(a, a, debiased)).max() < 1e-12


def test_cka_matrix_form_choice_and_tiles():
    import stitchlib.similarity as sim

    # Gram tiles: equal blocks of rows, all layers' tiles + two row chunks within _WORK_BYTES
    assert sim._tile_rows(2000, 4096, 20) == 1000
    assert sim._tile_rows(300, 100, 3) == 300
    side = sim._tile_rows(10000, 16384, 20)
    assert 500 < side < 10000 and 8 * side * (20 * side + 2 * 16384) <= sim._WORK_BYTES

    assert sim._choose_matrix_form(2000, [4096, 2048], [1024, 512]) == "gram"
    assert sim._choose_matrix_form(10000, [16, 32], [8]) == "feature"
    assert sim._choose_matrix_form(10000, [16, 32], None) == "feature"


@pytest.mark.parametrize("mode", ["auto", "gram tiles", "feature chunks"])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_streamed_equals_one_call(monkeypatch, mode, debiased):
    import stitchlib.similarity as sim

    a, b = layer_lists(n=90, seed=1)
    want = per_pair(a, b, debiased)
    one_call = cka_matrix(a, b, debiased=debiased)
    sizes = [7, 1, 30, 4, 25, 23]
    if mode == "gram tiles":
        # 3 x 3 blocks of 30 rows (6 tiles), diagonal tiles in strips of 16, chunks across batches
        monkeypatch.setattr(sim, "_tile_rows", lambda n, d, layers: 30)
        monkeypatch.setattr(sim, "_GRAM_TILE", 16)
        monkeypatch.setattr(sim, "_WORK_BYTES", 8 * 30 * 60)  # moments in chunks of 30 rows
        monkeypatch.setattr(sim, "_choose_matrix_form", lambda *args: "gram")
    elif mode == "feature chunks":
        monkeypatch.setattr(sim, "_WORK_BYTES", 8 * 64)  # chunks of 64 rows across batches
        monkeypatch.setattr(sim, "_choose_matrix_form", lambda *args: "feature")
    m = CKAMatrix(debiased=debiased)
    assert m.shape is None
    i = 0
    for s in sizes:
        m.update([x[i : i + s] for x in a], [y[i : i + s] for y in b])
        i += s
    assert m.n == 90 and m.shape == (4, 3)
    got = m.value()
    assert np.abs(got - want).max() < 1e-12
    assert np.abs(got - one_call).max() < 1e-12
    assert np.array_equal(m.value(), got)  # value() does not consume the batches


def test_cka_matrix_keeps_copies():
    a, b = layer_lists(n=24, seed=2)
    want = cka_matrix(a, b)
    m = CKAMatrix()
    bufs_a, bufs_b = [torch.empty_like(x[:12]) for x in a], [torch.empty_like(y[:12]) for y in b]
    for i in (0, 12):
        for buf, x in zip(bufs_a + bufs_b, a + b):
            buf.copy_(x[i : i + 12])
        m.update(bufs_a, bufs_b)  # the caller reuses its buffers
    assert np.abs(m.value() - want).max() < 1e-12


def test_cka_matrix_minibatch_matches_accumulator():
    a, b = layer_lists(n=60, seed=3)
    sizes = [8, 12, 5, 15, 20]
    m = CKAMatrix("minibatch")
    accs = [[CKAAccumulator("minibatch") for _ in b] for _ in a]
    i = 0
    for s in sizes:
        m.update([x[i : i + s] for x in a], [y[i : i + s] for y in b])
        for x, row in zip(a, accs):
            for y, acc in zip(b, row):
                acc.update(x[i : i + s], y[i : i + s])
        i += s
    want = np.array([[acc.value() for acc in row] for row in accs])
    assert np.abs(m.value() - want).max() < 1e-12
    # the convenience function: consecutive batches of batch_size, the last one smaller
    m2 = CKAMatrix("minibatch", debiased=True)
    for s in range(0, 60, 16):
        m2.update([x[s : s + 16] for x in a], [y[s : s + 16] for y in b])
    got = cka_matrix(a, b, estimator="minibatch", batch_size=16)
    assert np.abs(got - m2.value()).max() < 1e-12
    # one batch holding everything is the exact debiased CKA
    one = cka_matrix(a, b, estimator="minibatch", batch_size=60)
    assert np.abs(one - per_pair(a, b, True)).max() < 1e-12


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_constant_offset_stays_exact(debiased):
    a, b = layer_lists(n=40, seed=4)
    # float64 inputs (a[2] is float32 in layer_lists): the claim is about float64 centring
    a, b = [x.double() for x in a], [y.double() for y in b]
    a_off, b_off = [x + 1e3 for x in a], [y + 1e3 for y in b]
    got = cka_matrix(a_off, b_off, debiased=debiased)
    assert np.abs(got - per_pair(a_off, b_off, debiased)).max() < 1e-12
    # the offset itself moves the float64 inputs by ~1e-13 only: same matrix as without it
    assert np.abs(got - cka_matrix(a, b, debiased=debiased)).max() < 1e-12
    mb = cka_matrix(a_off, b_off, estimator="minibatch", batch_size=10)
    assert np.abs(mb - cka_matrix(a, b, estimator="minibatch", batch_size=10)).max() < 1e-12


@pytest.mark.parametrize("estimator", ["exact", "minibatch"])
def test_cka_matrix_self_similarity_symmetric_unit_diagonal(estimator):
    a, _ = layer_lists(n=32, seed=5)
    kw = dict(estimator=estimator, batch_size=8)
    for debiased in ([False, True] if estimator == "exact" else [True]):
        m = cka_matrix(a, a, debiased=debiased, **kw)
        assert np.array_equal(m, m.T)
        assert np.abs(np.diag(m) - 1.0).max() < 1e-12
        # the same tensors in another list, and copies (the general path), agree
        assert np.array_equal(cka_matrix(a, list(a), debiased=debiased, **kw), m)
        copies = cka_matrix(a, [x.clone() for x in a], debiased=debiased, **kw)
        assert np.abs(copies - m).max() < 1e-12
    # streamed, with b the same list every time
    acc = CKAMatrix(estimator)
    for s in range(0, 32, 8):
        batch = [x[s : s + 8] for x in a]
        acc.update(batch, batch)
    assert np.abs(np.diag(acc.value()) - 1.0).max() < 1e-12


def test_cka_matrix_computes_each_layer_once(monkeypatch):
    import stitchlib.similarity as sim

    calls = {"gram": 0, "moments": 0, "feature": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(sim._GramTiles, "compute", counting("gram", sim._GramTiles.compute))
    monkeypatch.setattr(sim, "_layer_moments", counting("moments", sim._layer_moments))
    monkeypatch.setattr(sim, "_feature_chunk", counting("feature", sim._feature_chunk))
    monkeypatch.setattr(sim, "_pair_stats", None)  # no per-pair work at all

    a, b = layer_lists(n=40, seed=6)
    monkeypatch.setattr(sim, "_choose_matrix_form", lambda *args: "gram")
    cka_matrix(a, b)
    assert calls == {"gram": 4 + 3, "moments": 4 + 3, "feature": 0}  # not 4 x 3 x 2
    calls.update(gram=0, moments=0)
    cka_matrix(a, a)
    assert calls == {"gram": 4, "moments": 4, "feature": 0}
    # minibatch: once per layer per batch
    calls.update(gram=0, moments=0)
    cka_matrix(a, b, estimator="minibatch", batch_size=10)
    assert calls == {"gram": 4 * (4 + 3), "moments": 4 * (4 + 3), "feature": 0}
    # several tiles: once per layer per tile (3 blocks of rows: 6 tiles)
    monkeypatch.setattr(sim, "_tile_rows", lambda n, d, layers: 14)
    calls.update(gram=0, moments=0)
    cka_matrix(a, b)
    assert calls == {"gram": 6 * (4 + 3), "moments": 4 + 3, "feature": 0}
    # feature form: one pass over the rows of each network per chunk
    monkeypatch.setattr(sim, "_choose_matrix_form", lambda *args: "feature")
    calls.update(gram=0, moments=0)
    cka_matrix(a, b)
    assert calls == {"gram": 0, "moments": 4 + 3, "feature": 2}


# errors


def test_cka_matrix_error_example_counts():
    a, b = layer_lists(n=10, seed=7)
    with pytest.raises(ValueError, match=r"a\[0\] has n=10 but b\[2\] has n=9"):
        cka_matrix(a, b[:2] + [b[2][:9]])
    with pytest.raises(ValueError, match=r"a\[0\] has n=10 but a\[3\] has n=8"):
        CKAMatrix().update(a[:3] + [a[3][:8]], b)


def test_cka_matrix_error_empty_and_types():
    a, b = layer_lists(n=10, seed=7)
    with pytest.raises(ValueError, match=r"^a is an empty list of layers"):
        cka_matrix([], b)
    with pytest.raises(ValueError, match=r"^b is an empty list of layers"):
        CKAMatrix().update(a, ())
    with pytest.raises(TypeError, match=r"a must be a list or tuple of tensors.*pass \[a\]"):
        cka_matrix(a[0], b)
    with pytest.raises(TypeError, match=r"b\[1\] must be a torch.Tensor"):
        cka_matrix(a, [b[0], "layer"])
    with pytest.raises(ValueError, match=r"b\[0\] has no features"):
        cka_matrix(a, [torch.randn(10, 0)])
    with pytest.raises(ValueError, match="valid estimators are 'exact', 'minibatch'"):
        CKAMatrix("jackknife")
    with pytest.raises(ValueError, match="no batches yet"):
        CKAMatrix().value()
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        cka_matrix(a, b, batch_size=0)


def test_cka_matrix_error_layers_change_between_batches():
    a, b = layer_lists(n=10, seed=8)
    m = CKAMatrix()
    m.update(a, b)
    with pytest.raises(ValueError, match=r"a\[1\] has 12 features after flattening in this batch, but 60 in earlier"):
        m.update(a[:1] + [torch.randn(10, 12)] + a[2:], b)
    with pytest.raises(ValueError, match=r"this batch has 3 layers in a and 3 in b, but earlier batches had 4 and 3"):
        m.update(a[:3], b)
    with pytest.raises(ValueError, match=r"b\[2\] has 9 features"):
        m.update(a, b[:2] + [torch.randn(10, 9)])
    s = CKAMatrix()
    s.update(a, a)
    with pytest.raises(ValueError, match="self-similarity"):
        s.update(a, [x.clone() for x in a])
    assert m.n == 10 and s.n == 10  # refused batches add nothing


def test_cka_matrix_error_non_finite():
    a, b = layer_lists(n=10, seed=9)
    bad = b[1].clone()
    bad[3, 0] = float("nan")
    m = CKAMatrix()
    with pytest.raises(ValueError, match=r"b\[1\] contains 1 NaN or infinite"):
        m.update(a, [b[0], bad, b[2]])
    assert m.n == 0
    bad_a = a[1].clone()
    bad_a[0, 0, 0, 0] = float("inf")
    bad_a[9, 2, 3, 4] = float("-inf")
    with pytest.raises(ValueError, match=r"a\[1\] contains 2 NaN or infinite"):
        cka_matrix([a[0], bad_a], b, estimator="minibatch", batch_size=5)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_error_constant_layer_named_before_gram_work(monkeypatch, debiased):
    import stitchlib.similarity as sim

    a, b = layer_lists(n=12, seed=10)
    const = torch.full((12, 2, 3), 0.1)
    const[:, 1] = 3.7

    def no_gram(*args):
        raise AssertionError("Gram work before the checks")

    monkeypatch.setattr(sim._GramTiles, "compute", no_gram)
    monkeypatch.setattr(sim, "_feature_chunk", no_gram)
    with pytest.raises(ValueError, match=r"^a\[3\] is constant across the examples"):
        cka_matrix(a[:3] + [const], b, debiased=debiased)
    with pytest.raises(ValueError, match=r"^b\[0\] is constant across the examples"):
        cka_matrix(a, [const + 1e3] + b[1:], debiased=debiased)
    monkeypatch.undo()
    # minibatch: constant within every batch is an error, in a single batch it is not
    m = CKAMatrix("minibatch")
    m.update([x[:6] for x in a[:3]] + [const[:6]], [y[:6] for y in b])
    with pytest.raises(ValueError, match=r"^a\[3\] is constant across the examples within every minibatch"):
        m.value()
    varied = torch.randn(6, 2, 3, generator=gen(0))
    m.update([x[6:] for x in a[:3]] + [varied], [y[6:] for y in b])
    assert np.isfinite(m.value()).all()


def test_cka_matrix_error_too_few_examples():
    a, b = layer_lists(n=10, seed=11)
    with pytest.raises(ValueError, match="at least 4 examples"):
        cka_matrix([x[:3] for x in a], [y[:3] for y in b], debiased=True)
    assert np.isfinite(cka_matrix([x[:3] for x in a], [y[:3] for y in b])).all()
    with pytest.raises(ValueError, match="at least 4 examples per batch; got a batch of 3"):
        CKAMatrix("minibatch").update([x[:3] for x in a], [y[:3] for y in b])
    with pytest.raises(ValueError, match=r"batch_size=4 over n=10 examples gives a batch of 2"):
        cka_matrix(a, b, estimator="minibatch", batch_size=4)
    with pytest.raises(ValueError, match="pass batch_size"):
        cka_matrix(a, b, estimator="minibatch")
    with pytest.raises(ValueError, match="debiased"):
        cka_matrix(a, b, estimator="minibatch", batch_size=5, debiased=False)


def test_cka_matrix_memory_limit():
    a = [torch.randn(20, 50), torch.randn(20, 25)]  # 6000 bytes as float32
    b = [torch.randn(20, 25)]  # 2000 bytes
    m = CKAMatrix(max_bytes=10_000)
    m.update(a, b)
    with pytest.raises(MemoryError) as err:
        m.update(a, b)
    msg = str(err.value)
    assert "16000 bytes" in msg and "40 examples x 100 features" in msg and "2 + 1 layers" in msg
    assert "max_bytes=10000" in msg and "estimator='minibatch'" in msg
    assert m.n == 20 and np.isfinite(m.value()).all()
    # a self-similarity matrix keeps each layer once
    s = CKAMatrix(max_bytes=12_000)
    s.update(a, a)
    s.update(a, a)
    assert s.n == 40


def test_check_finite_counts_in_bounded_chunks(monkeypatch):
    import stitchlib.similarity as sim

    x = torch.randn(50, 7)
    x[0, 0] = float("nan")
    x[20, 3] = float("inf")
    x[49, 6] = float("nan")
    x[49, 5] = float("-inf")
    seen = []
    real = torch.isfinite

    def spy(t):
        seen.append(t.numel())
        return real(t)

    monkeypatch.setattr(torch, "isfinite", spy)
    monkeypatch.setattr(sim, "_WORK_BYTES", 8 * 20)  # masks of at most 20 elements: 2 rows
    with pytest.raises(ValueError, match=r"^x contains 4 NaN or infinite value\(s\)"):
        sim._check_finite(x, "x")
    assert max(seen[1:]) <= 20 and len(seen) > 20  # seen[0]: the test of the sum (one element)
    # finite values whose float32 sum overflows are not reported
    seen.clear()
    big = torch.full((10, 4), 3e38)
    assert not torch.isfinite(big.sum())
    sim._check_finite(big, "big")
    assert len(seen) > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_cuda_matches_cpu(debiased):
    a, b = layer_lists(n=300, seed=12)
    want = cka_matrix(a, b, debiased=debiased)
    got = cka_matrix([x.cuda() for x in a], [y.cuda() for y in b], debiased=debiased)
    assert np.abs(got - want).max() < 1e-12
    m = CKAMatrix("minibatch")
    for s in range(0, 300, 100):
        m.update([x[s : s + 100].cuda() for x in a], [y[s : s + 100].cuda() for y in b])
    assert np.abs(m.value() - cka_matrix(a, b, estimator="minibatch", batch_size=100)).max() < 1e-12

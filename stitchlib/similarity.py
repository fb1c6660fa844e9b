"""Linear CKA with pinned definitions, computed in float64.

Every function here flattens each example to one vector: a tensor of shape (n, C, H, W) (or any
(n, ...)) becomes an (n, C*H*W) matrix whose rows are the examples. This is the convention of
Kornblith et al. (2019) and of Bansal, Nakkiran & Barak (2021); note that some libraries instead treat
every spatial position as a sample, (n*H*W, C), which gives a different number.

Notation used in the docstrings: X (n x p) and Y (n x q) are the flattened inputs, Xc and Yc the same
with every column centred (its mean over the n examples subtracted), K = Xc Xc^T and L = Yc Yc^T the
linear Gram matrices, H = I - 11^T/n, r_i = |xc_i|^2 the squared norms of the centred rows (the diagonal
of K), and s_i = |yc_i|^2.

Two HSIC estimators are used, and every number says which:

* biased (Kornblith et al. 2019, Gretton et al. 2005)::

      HSIC_b(K, L) = tr(K H L H) / (n - 1)^2 = ||Yc^T Xc||_F^2 / (n - 1)^2

* unbiased (Song et al. 2012, a U-statistic; Kornblith's ``center_gram(unbiased=True)``). With K~ and
  L~ the Gram matrices with their diagonals set to zero::

      HSIC_u(K, L) = [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2))
                       - 2/(n - 2) * 1^T K~ L~ 1 ] / (n (n - 3))

  which is defined for n >= 4 only. It is unchanged by centring the features, and on centred
  features (where K 1 = 0) it reduces to the feature-space expression::

      n (n - 3) HSIC_u = ||Xc^T Yc||_F^2 - n/(n - 2) * sum_i r_i s_i
                         + (sum_i r_i)(sum_i s_i) / ((n - 1)(n - 2))

  ``n (n - 3) HSIC_u(K, L)`` is also the inner product of the U-centred Gram matrices, so
  HSIC_u(K, K) >= 0 and the debiased CKA lies in [-1, 1] (it can be slightly negative).

CKA is HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for either estimator; the normalising constants
cancel in that ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

__all__ = ["linear_cka", "CKAAccumulator", "ESTIMATORS"]

ESTIMATORS = ("exact", "minibatch")
_FORMS = ("auto", "gram", "feature")

# Budget for the float64 working set of one chunked step. Large enough that the matmuls are
# efficient, small enough that a 10k x 16k-feature CKA does not allocate n x n or p x p at once.
_WORK_BYTES = 2**28
# The feature form keeps p x p, q x q and p x q float64 matrices alive at once; above this it
# would cost more memory than the chunked Gram form ever needs, whatever the flop count says.
_FEATURE_FORM_MAX_BYTES = 2**30
# Data whose centred energy is this small relative to its raw energy is constant up to the
# rounding of the float64 mean (about 1e-32 relative); any real float32 variation is >~1e-15.
_CONSTANT_RTOL = 1e-20
# The unbiased self-HSIC is a sum of squares of U-centred Gram entries, so it is >= 0; below
# this fraction of its natural scale (sum_i r_i)^2 it is cancellation noise, not signal.
_DEGENERATE_RTOL = 1e-12


def linear_cka(
    x: torch.Tensor, y: torch.Tensor, *, debiased: bool = False, form: str = "auto"
) -> float:
    """Linear CKA between two representations of the same n examples.

    Args:
        x: tensor of shape (n, ...), any real dtype, any device. Each example is flattened to one
            vector, so (n, C, H, W) becomes (n, C*H*W).
        y: tensor of shape (n, ...) holding the same n examples in the same order, on x's device.
        debiased: False (default) computes biased linear CKA (Kornblith et al. 2019)::

                CKA = HSIC_b(K, L) / sqrt(HSIC_b(K, K) HSIC_b(L, L))
                    = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),

            with HSIC_b(K, L) = tr(K H L H) / (n - 1)^2, K = Xc Xc^T, L = Yc Yc^T; it lies in
            [0, 1]. True computes the same ratio with the unbiased HSIC_u of Song et al. (2012)
            (see the module docstring for the formula); it needs n >= 4 and lies in [-1, 1].
        form: "gram" computes through chunks of the n x n Gram matrices, "feature" through the
            p x p, q x q and p x q (cross-)covariance matrices. Both give the same number up to
            float64 rounding (~1e-12). "auto" (default) picks the one with fewer flops, i.e. the
            Gram form when the feature dimension is large compared with n, unless the feature
            form's matrices would exceed 1 GiB.

    Returns:
        The CKA as a Python float. Computed in float64 on x's device (on the CPU for MPS tensors,
        which have no float64).

    Raises:
        ValueError: n differs between x and y; n < 2 (n < 4 when debiased); an input holds NaN or
            inf; an input is constant across the examples, or (debiased) its U-centred Gram matrix
            vanishes, so that CKA would be 0/0.
        TypeError: an input is not a real-valued tensor.
    """
    if not isinstance(debiased, bool):
        raise TypeError(f"debiased must be True or False, got {debiased!r}")
    xm = _as_matrix(x, "x")
    ym = _as_matrix(y, "y")
    _check_same_n(xm.shape[0], ym.shape[0])
    if xm.device != ym.device:
        raise ValueError(
            f"x is on {xm.device} and y on {ym.device}; move both to one device "
            "(CKA is computed on x's device)"
        )
    _check_enough_examples(xm.shape[0], debiased)
    _check_finite(xm, "x")
    _check_finite(ym, "y")
    device = _compute_device(xm.device)
    stats = _pair_stats(_Rows([xm], device), _Rows([ym], device), _resolve_form(form))
    return _cka_from_stats(stats, debiased)


class CKAAccumulator:
    """Streams batches of (x, y) pairs for ONE pair of representations.

    Each ``update(x, y)`` takes a batch of the same examples seen by both representations; every
    example is flattened to one vector, (n_k, C, H, W) -> (n_k, C*H*W), as in ``linear_cka``.

    Estimators:
        "exact": ``value()`` is the number ``linear_cka`` would return on the concatenation of all
            batches (biased, or debiased with ``debiased=True``). The batches are kept, detached
            copies in their own dtype and on their own device (move them to the CPU first to spare
            accelerator memory), and ``update`` raises as soon as they would exceed ``max_bytes``.
            ``value()`` additionally needs a chunked float64 working set of a few hundred MiB.
        "minibatch": the estimator of Nguyen, Raghu & Kornblith (2021), in constant memory::

                CKA_mb = mean_k HSIC_u(K_k, L_k)
                         / sqrt(mean_k HSIC_u(K_k, K_k) * mean_k HSIC_u(L_k, L_k)),

            with HSIC_u the unbiased estimator (module docstring) on batch k alone and an unweighted
            mean over batches, so uneven batches count equally. Every batch needs n_k >= 4. It is
            debiased by construction: leave ``debiased`` unset or pass True; ``debiased=False``
            raises, since a biased per-batch HSIC would make the number depend on batch size.
            With one batch holding all the data it equals the exact debiased CKA.

    Args:
        estimator: one of ``ESTIMATORS``.
        debiased: None (default) means False for "exact" and True for "minibatch".
        max_bytes: memory limit for the kept features of the "exact" estimator; unused otherwise.
    """

    def __init__(
        self,
        estimator: str = "exact",
        *,
        debiased: Optional[bool] = None,
        max_bytes: int = 4 * 2**30,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"unknown CKA estimator {estimator!r}; valid estimators are "
                + ", ".join(repr(e) for e in ESTIMATORS)
            )
        if debiased is not None and not isinstance(debiased, bool):
            raise TypeError(f"debiased must be None, True or False, got {debiased!r}")
        if estimator == "minibatch" and debiased is False:
            raise ValueError(
                "the minibatch estimator always uses the unbiased HSIC on each batch (Nguyen, "
                "Raghu & Kornblith 2021); a biased per-batch HSIC would depend on the batch size. "
                "Leave debiased unset (or pass True), or use estimator='exact' for biased CKA."
            )
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self.estimator = estimator
        self.debiased = True if estimator == "minibatch" else bool(debiased)
        self.max_bytes = max_bytes
        self._n = 0
        self._dims: Optional[tuple] = None
        self._device: Optional[torch.device] = None
        # exact: the kept batches
        self._xs: list = []
        self._ys: list = []
        self._bytes = 0
        # minibatch: sums over batches of HSIC_u(K,L), HSIC_u(K,K), HSIC_u(L,L), and of the
        # scales used for the constant/degenerate checks
        self._batches = 0
        self._h = [0.0, 0.0, 0.0]
        self._energy = [0.0, 0.0, 0.0, 0.0]  # sum sx, sum rawx, sum sy, sum rawy
        self._self_scale = [0.0, 0.0]  # sum_k (sum_i r_i)^2 / (n_k (n_k - 3)), same for y

    @property
    def n(self) -> int:
        """Number of examples seen so far."""
        return self._n

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch: x of shape (n_k, ...) and y of shape (n_k, ...) for the same examples."""
        xm = _as_matrix(x, "x")
        ym = _as_matrix(y, "y")
        _check_same_n(xm.shape[0], ym.shape[0])
        if xm.device != ym.device:
            raise ValueError(f"x is on {xm.device} and y on {ym.device}; move both to one device")
        dims = (xm.shape[1], ym.shape[1])
        if self._dims is not None and dims != self._dims:
            raise ValueError(
                f"this batch has {dims[0]} features in x and {dims[1]} in y after flattening, but "
                f"earlier batches had {self._dims[0]} and {self._dims[1]}; one accumulator "
                "serves one pair of representations"
            )
        nk = xm.shape[0]
        if self.estimator == "minibatch" and nk < 4:
            raise ValueError(
                f"the minibatch estimator computes the unbiased HSIC on each batch, which needs at "
                f"least 4 examples per batch; got a batch of {nk}"
            )
        _check_finite(xm, "x")
        _check_finite(ym, "y")
        if self._device is None:
            self._device = _compute_device(xm.device)
        if self.estimator == "exact":
            self._keep(xm, ym)
        else:
            self._add_minibatch(xm, ym)
        self._dims = dims
        self._n += nk

    def value(self) -> float:
        """The CKA of all batches so far (see the class docstring for which quantity)."""
        if self._n == 0:
            raise ValueError("no batches yet: call update(x, y) first")
        if self.estimator == "exact":
            _check_enough_examples(self._n, self.debiased)
            stats = _pair_stats(_Rows(self._xs, self._device), _Rows(self._ys, self._device), "auto")
            return _cka_from_stats(stats, self.debiased)
        sx, rawx, sy, rawy = self._energy
        _check_not_constant(sx, rawx, "x", " within every minibatch")
        _check_not_constant(sy, rawy, "y", " within every minibatch")
        hxy, hxx, hyy = (h / self._batches for h in self._h)
        _check_not_degenerate(hxx, self._self_scale[0] / self._batches, "x")
        _check_not_degenerate(hyy, self._self_scale[1] / self._batches, "y")
        return hxy / math.sqrt(hxx * hyy)

    def _keep(self, xm: torch.Tensor, ym: torch.Tensor) -> None:
        new = xm.numel() * xm.element_size() + ym.numel() * ym.element_size()
        need = self._bytes + new
        if need > self.max_bytes:
            n = self._n + xm.shape[0]
            raise MemoryError(
                f"CKAAccumulator(estimator='exact') needs at least {need} bytes "
                f"({need / 2**30:.2f} GiB) to keep {n} examples x ({xm.shape[1]} + {ym.shape[1]}) "
                f"features as {xm.dtype}/{ym.dtype}, more than max_bytes={self.max_bytes} "
                f"({self.max_bytes / 2**30:.2f} GiB). Use estimator='minibatch' (constant memory), "
                "fewer samples, or a larger max_bytes."
            )
        # Copies, so that a caller reusing its buffers cannot change what was accumulated.
        self._xs.append(xm.clone())
        self._ys.append(ym.clone())
        self._bytes = need

    def _add_minibatch(self, xm: torch.Tensor, ym: torch.Tensor) -> None:
        st = _pair_stats(_Rows([xm], self._device), _Rows([ym], self._device), "auto")
        n = st.n
        u = n * (n - 3)
        self._h[0] += _scaled_hsic_u(st.kl, st.rxy, st.sx, st.sy, n) / u
        self._h[1] += _scaled_hsic_u(st.kk, st.rxx, st.sx, st.sx, n) / u
        self._h[2] += _scaled_hsic_u(st.ll, st.ryy, st.sy, st.sy, n) / u
        self._energy[0] += st.sx
        self._energy[1] += st.rawx
        self._energy[2] += st.sy
        self._energy[3] += st.rawy
        self._self_scale[0] += st.sx**2 / u
        self._self_scale[1] += st.sy**2 / u
        self._batches += 1


# ---------------------------------------------------------------------------------------------
# internals


@dataclass
class _Stats:
    """Sufficient statistics of a pair of centred representations for both HSIC estimators."""

    n: int
    kl: float  # tr(K L) = ||Xc^T Yc||_F^2
    kk: float  # tr(K K)
    ll: float  # tr(L L)
    rxy: float  # sum_i r_i s_i
    rxx: float  # sum_i r_i^2
    ryy: float  # sum_i s_i^2
    sx: float  # sum_i r_i = tr K = ||Xc||_F^2
    sy: float  # sum_i s_i
    rawx: float  # ||X||_F^2 before centring, the scale of the constant-input check
    rawy: float


class _Rows:
    """Row chunks of a list of (n_k, d) tensors as float64 on one device, without concatenating."""

    def __init__(self, parts: Sequence[torch.Tensor], device: torch.device) -> None:
        self.parts = list(parts)
        self.device = device
        self.starts = [0]
        for p in self.parts:
            self.starts.append(self.starts[-1] + p.shape[0])
        self.n = self.starts[-1]
        self.d = self.parts[0].shape[1]

    def get(self, a: int, b: int) -> torch.Tensor:
        pieces = []
        for p, s0, s1 in zip(self.parts, self.starts[:-1], self.starts[1:]):
            lo, hi = max(a, s0), min(b, s1)
            if lo < hi:
                pieces.append(p[lo - s0 : hi - s0].to(device=self.device, dtype=torch.float64))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _pair_stats(xs: _Rows, ys: _Rows, form: str) -> _Stats:
    n, p, q = xs.n, xs.d, ys.d
    dev = xs.device
    f64 = torch.float64

    # First pass: column means (float64, so that centring does not lose the small variations
    # of features with a large mean) and the raw energy for the constant-input check.
    step = _chunk_rows(n, p + q, matrices=0)
    sum_x = torch.zeros(p, dtype=f64, device=dev)
    sum_y = torch.zeros(q, dtype=f64, device=dev)
    rawx = torch.zeros((), dtype=f64, device=dev)
    rawy = torch.zeros((), dtype=f64, device=dev)
    for a in range(0, n, step):
        xa, ya = xs.get(a, a + step), ys.get(a, a + step)
        sum_x += xa.sum(0)
        sum_y += ya.sum(0)
        rawx += (xa * xa).sum()
        rawy += (ya * ya).sum()
    mx, my = sum_x / n, sum_y / n

    if form == "auto":
        form = _choose_form(n, p, q)

    zero = lambda: torch.zeros((), dtype=f64, device=dev)  # noqa: E731
    kl, kk, ll, rxy, rxx, ryy, sx, sy = (zero() for _ in range(8))

    def row_terms(xc: torch.Tensor, yc: torch.Tensor) -> None:
        nonlocal rxy, rxx, ryy, sx, sy
        r = (xc * xc).sum(1)
        s = (yc * yc).sum(1)
        rxy = rxy + r @ s
        rxx = rxx + r @ r
        ryy = ryy + s @ s
        sx = sx + r.sum()
        sy = sy + s.sum()

    if form == "feature":
        cxx = torch.zeros(p, p, dtype=f64, device=dev)
        cyy = torch.zeros(q, q, dtype=f64, device=dev)
        cxy = torch.zeros(p, q, dtype=f64, device=dev)
        for a in range(0, n, step):
            xc = xs.get(a, a + step) - mx
            yc = ys.get(a, a + step) - my
            cxx.addmm_(xc.T, xc)
            cyy.addmm_(yc.T, yc)
            cxy.addmm_(xc.T, yc)
            row_terms(xc, yc)
        kl, kk, ll = (cxy * cxy).sum(), (cxx * cxx).sum(), (cyy * cyy).sum()
    else:
        # tr(KL) = sum over blocks (i, j) of <K_ij, L_ij>; K is symmetric, so visit j >= i and
        # count off-diagonal blocks twice. Never holds more than a few chunk x chunk blocks.
        step = _chunk_rows(n, p + q, matrices=3)
        for a in range(0, n, step):
            xa = xs.get(a, a + step) - mx
            ya = ys.get(a, a + step) - my
            row_terms(xa, ya)
            for b in range(a, n, step):
                if b == a:
                    xb, yb, w = xa, ya, 1.0
                else:
                    xb, yb, w = xs.get(b, b + step) - mx, ys.get(b, b + step) - my, 2.0
                kb = xa @ xb.T
                lb = ya @ yb.T
                kl = kl + w * (kb * lb).sum()
                kk = kk + w * (kb * kb).sum()
                ll = ll + w * (lb * lb).sum()

    vals = torch.stack([kl, kk, ll, rxy, rxx, ryy, sx, sy, rawx, rawy]).tolist()
    return _Stats(n, *vals)


def _cka_from_stats(st: _Stats, debiased: bool) -> float:
    _check_not_constant(st.sx, st.rawx, "x")
    _check_not_constant(st.sy, st.rawy, "y")
    if not debiased:
        return st.kl / math.sqrt(st.kk * st.ll)
    n = st.n
    hxy = _scaled_hsic_u(st.kl, st.rxy, st.sx, st.sy, n)
    hxx = _scaled_hsic_u(st.kk, st.rxx, st.sx, st.sx, n)
    hyy = _scaled_hsic_u(st.ll, st.ryy, st.sy, st.sy, n)
    _check_not_degenerate(hxx, st.sx**2, "x")
    _check_not_degenerate(hyy, st.sy**2, "y")
    return hxy / math.sqrt(hxx * hyy)


def _scaled_hsic_u(trace_kl: float, r_dot_s: float, sum_r: float, sum_s: float, n: int) -> float:
    """n (n - 3) HSIC_u(K, L) for centred features (module docstring)."""
    return trace_kl - n / (n - 2) * r_dot_s + sum_r * sum_s / ((n - 1) * (n - 2))


def _choose_form(n: int, p: int, q: int) -> str:
    feature_flops = n * (p * p + q * q + p * q)
    gram_flops = n * n * (p + q) / 2  # symmetric blocks only
    feature_bytes = 8 * (p * p + q * q + p * q)
    if feature_flops <= gram_flops and feature_bytes <= _FEATURE_FORM_MAX_BYTES:
        return "feature"
    return "gram"


def _chunk_rows(n: int, d: int, matrices: int) -> int:
    """Rows per chunk so that two float64 chunks plus `matrices` chunk x chunk blocks fit the budget."""
    c = _WORK_BYTES // (8 * max(2 * d, 1))
    if matrices:
        c = min(c, math.isqrt(_WORK_BYTES // (8 * matrices)))
    return max(1, min(n, max(c, 64)))


def _resolve_form(form: str) -> str:
    if form not in _FORMS:
        raise ValueError(f"unknown form {form!r}; valid forms are " + ", ".join(map(repr, _FORMS)))
    return form


def _compute_device(device: torch.device) -> torch.device:
    # MPS has no float64; the pinned float64 definition matters more than staying on device.
    return torch.device("cpu") if device.type == "mps" else device


def _as_matrix(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        try:
            import numpy as np
        except ImportError:  # pragma: no cover
            np = None
        if np is not None and isinstance(t, np.ndarray):
            t = torch.from_numpy(t)
        else:
            raise TypeError(f"{name} must be a torch.Tensor of shape (n, ...), got {type(t).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got dtype {t.dtype}")
    if t.dim() == 0:
        raise ValueError(f"{name} must have shape (n, ...) with examples along dim 0, got a scalar")
    n = t.shape[0]
    d = math.prod(t.shape[1:])
    if n == 0:
        raise ValueError(f"{name} holds no examples (shape {tuple(t.shape)})")
    if d == 0:
        raise ValueError(f"{name} has no features (shape {tuple(t.shape)})")
    return t.detach().reshape(n, d)


def _check_same_n(nx: int, ny: int) -> None:
    if nx != ny:
        raise ValueError(
            f"x and y must hold the same examples: x has n={nx} and y has n={ny} along dim 0"
        )


def _check_enough_examples(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise ValueError(
            f"debiased CKA uses the unbiased HSIC estimator, which needs at least 4 examples "
            f"(it divides by n(n-3)); got n={n}"
        )
    if n < 2:
        raise ValueError(f"CKA needs at least 2 examples to centre the features; got n={n}")


def _check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point():
        bad = (~torch.isfinite(t)).sum().item()
        if bad:
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s); CKA would be NaN")


def _check_not_constant(centred: float, raw: float, name: str, where: str = "") -> None:
    if centred <= _CONSTANT_RTOL * raw:
        raise ValueError(
            f"{name} is constant across the examples{where} (every feature equals its mean), so "
            f"HSIC({name}, {name}) = 0 and CKA is 0/0; check that this layer's output depends on "
            "the input"
        )


def _check_not_degenerate(self_hsic: float, scale: float, name: str) -> None:
    if not self_hsic > _DEGENERATE_RTOL * scale:
        raise ValueError(
            f"the unbiased HSIC of {name} with itself is {self_hsic:.3g}, zero up to rounding: "
            f"{name}'s U-centred Gram matrix vanishes (its features are nearly constant, or there "
            "are too few examples), so debiased CKA is 0/0; use more examples or debiased=False"
        )

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

``linear_cka`` and ``CKAAccumulator`` compare one pair of representations; ``cka_matrix`` and
``CKAMatrix`` compare every layer of one network with every layer of another (the CKA heatmap),
with the same definitions and estimators, computing each layer's statistics once for all its pairs.
"""

from __future__ import annotations

import collections.abc
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["linear_cka", "CKAAccumulator", "CKAMatrix", "cka_matrix", "ESTIMATORS"]

ESTIMATORS = ("exact", "minibatch")
_FORMS = ("auto", "gram", "feature")

# Budget for the float64 working set of one chunked step. Large enough that the matmuls are
# efficient, small enough that a 10k x 16k-feature CKA does not allocate n x n or p x p at once.
_WORK_BYTES = 2**28
# The feature form keeps p x p, q x q and p x q float64 matrices alive at once; above this it
# would cost more memory than the chunked Gram form ever needs, whatever the flop count says.
_FEATURE_FORM_MAX_BYTES = 2**30
# Height of the strips in which CKAMatrix computes a Gram tile on the diagonal: small enough that
# skipping the blocks below the diagonal spares most of the symmetric half, large enough for
# efficient matmuls.
_GRAM_TILE = 256
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


class _Streamed:
    """What both streaming accumulators share: the estimator (checked), the examples seen so far
    and the device the float64 work runs on (set by the first batch)."""

    def __init__(
        self,
        estimator: str = "exact",
        *,
        debiased: Optional[bool] = None,
        max_bytes: int = 4 * 2**30,
    ) -> None:
        _check_estimator_args(estimator, debiased, max_bytes)
        self.estimator = estimator
        self.debiased = True if estimator == "minibatch" else bool(debiased)
        self.max_bytes = max_bytes
        self._n = 0
        self._device: Optional[torch.device] = None
        self._start()

    def _start(self) -> None:
        """The estimator's own state, empty."""

    @property
    def n(self) -> int:
        """Number of examples seen so far."""
        return self._n


class CKAAccumulator(_Streamed):
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

    def _start(self) -> None:
        self._dims: Optional[tuple] = None
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


class CKAMatrix(_Streamed):
    """Streams batches of the layers of two networks and gives the CKA of EVERY pair of layers.

    Each ``update(a, b)`` takes one batch: ``a[i]`` is layer i of network A and ``b[j]`` layer j of
    network B, all for the same n_k examples in the same order, each of shape (n_k, ...) and
    flattened per example like the rest of the module. ``value()`` is the (L_a, L_b) float64 array
    whose entry (i, j) is the CKA between ``a[i]`` and ``b[j]``, the heatmap of Kornblith et al.
    (2019) and Nguyen, Raghu & Kornblith (2021). ``b`` may be the very same list as ``a`` (or list
    the same tensor objects): the self-similarity matrix, symmetric with unit diagonal, computed
    once.

    Every layer's statistics are computed once and shared by all the pairs it belongs to: its
    column means, its centred Gram matrix (in row x row tiles of a bounded size) or, when the
    widths are small compared with the number of examples, its centred features' (cross-)
    covariances. Entry (i, j) equals ``linear_cka(a[i], b[j], debiased=...)`` ("exact") or
    ``CKAAccumulator("minibatch")`` fed the same batches ("minibatch") up to float64 rounding.

    Estimators (as in ``CKAAccumulator``):
        "exact": the biased (default) or debiased CKA of all the examples. The batches are kept,
            detached copies in their own dtype and on their own device, and ``update`` raises
            MemoryError as soon as they would exceed ``max_bytes`` (summed over all layers; a
            self-similarity matrix keeps each layer once). ``value()`` needs a chunked float64
            working set of a few hundred MiB on top.
        "minibatch": Nguyen et al.'s estimator in constant memory: per batch the unbiased HSIC of
            every pair and of every layer with itself, averaged over batches (unweighted), then
            CKA_mb[i, j] = mean_k HSIC_u(K_ik, L_jk) / sqrt(mean_k HSIC_u(K_ik, K_ik)
            * mean_k HSIC_u(L_jk, L_jk)). Every batch needs n_k >= 4; ``debiased=False`` raises.

    Args: ``estimator``, ``debiased`` and ``max_bytes`` as for ``CKAAccumulator`` (``max_bytes``
    bounds the kept features of all layers together).
    """

    def _start(self) -> None:
        self._dims: Optional[Tuple[tuple, tuple]] = None  # per-layer feature counts of a and b
        self._same: Optional[bool] = None  # b lists the same tensors as a
        # exact: the kept batches, one list of parts per layer
        self._a_parts: List[list] = []
        self._b_parts: List[list] = []
        self._bytes = 0
        # minibatch: sums over batches of HSIC_u for every pair and every layer with itself, and
        # of the scales of the constant/degenerate checks
        self._batches = 0
        self._h_ab: Optional[np.ndarray] = None
        self._h_a: Optional[np.ndarray] = None
        self._h_b: Optional[np.ndarray] = None
        self._energy: Optional[list] = None  # [sum sx_a, sum raw_a, sum sx_b, sum raw_b]
        self._self_scale: Optional[list] = None  # [sum_k sx_a^2 / u_k, same for b]

    @property
    def shape(self) -> Optional[Tuple[int, int]]:
        """(L_a, L_b), the shape of ``value()``; None before the first batch."""
        return None if self._dims is None else (len(self._dims[0]), len(self._dims[1]))

    def update(self, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> None:
        """Add a batch: a[i] of shape (n_k, ...) for every layer i of network A, b[j] likewise for
        network B, all holding the same n_k examples. Nothing is added if the batch is refused."""
        self._update(a, b, copy=True)

    def value(self) -> np.ndarray:
        """The (L_a, L_b) float64 array of CKA values of all batches so far (see the class
        docstring for which estimator)."""
        if self._n == 0:
            raise ValueError("no batches yet: call update(a, b) first")
        if self.estimator == "exact":
            _check_enough_examples(self._n, self.debiased)
            la = [_Rows(parts, self._device) for parts in self._a_parts]
            lb = None if self._same else [_Rows(parts, self._device) for parts in self._b_parts]
            st = _matrix_stats(la, lb, check_constant=True)
            return _cka_matrix_from_stats(st, self.debiased)
        sx_a, raw_a, sx_b, raw_b = self._energy
        where = " within every minibatch"
        for name, sx, raw in _layer_names(self._same, sx_a, raw_a, sx_b, raw_b):
            _check_not_constant(sx, raw, name, where)
        h_ab, h_a, h_b = (h / self._batches for h in (self._h_ab, self._h_a, self._h_b))
        for name, h, scale in _layer_names(
            self._same, h_a, self._self_scale[0] / self._batches, h_b, self._self_scale[1] / self._batches
        ):
            _check_not_degenerate(h, scale, name)
        return h_ab / np.sqrt(np.outer(h_a, h_b))

    def _update(self, a, b, copy: bool, checked: bool = False) -> None:
        am, bm, same, nk = _layer_matrices(a, b)
        dims = (tuple(t.shape[1] for t in am), tuple(t.shape[1] for t in bm))
        if self._dims is not None:
            _check_same_layers(self._dims, dims)
            if self._same and not same:
                raise ValueError(
                    "earlier batches passed the same tensors as a and b (a self-similarity "
                    "matrix), this one passes other tensors in b; pass b=a again, or use a new "
                    "CKAMatrix for two different lists"
                )
            same = self._same
        if self.estimator == "minibatch" and nk < 4:
            raise ValueError(
                f"the minibatch estimator computes the unbiased HSIC on each batch, which needs at "
                f"least 4 examples per batch; got a batch of {nk}"
            )
        if not checked:
            _check_layers_finite(am, None if same else bm)
        if self._device is None:
            self._device = _compute_device(am[0].device)
        if self.estimator == "exact":
            self._keep(am, [] if same else bm, nk, dims, copy)
        else:
            self._add_minibatch(am, None if same else bm)
        self._dims = dims
        self._same = same
        self._n += nk

    def _keep(self, am, bm, nk: int, dims, copy: bool) -> None:
        new = sum(t.numel() * t.element_size() for t in list(am) + list(bm))
        need = self._bytes + new
        if copy and need > self.max_bytes:
            n = self._n + nk
            feats = sum(dims[0]) + (sum(dims[1]) if bm else 0)
            layers = f"{len(am)} + {len(bm)}" if bm else f"{len(am)} (a = b)"
            dtypes = "/".join(sorted({str(t.dtype) for t in list(am) + list(bm)}))
            raise MemoryError(
                f"CKAMatrix(estimator='exact') needs at least {need} bytes "
                f"({need / 2**30:.2f} GiB) to keep {n} examples x {feats} features (summed over "
                f"{layers} layers) as {dtypes}, more than max_bytes={self.max_bytes} "
                f"({self.max_bytes / 2**30:.2f} GiB). Use estimator='minibatch' (constant "
                "memory), fewer samples or layers, or a larger max_bytes."
            )
        # Copies, so that a caller reusing its buffers cannot change what was accumulated
        # (cka_matrix, which holds the whole data anyway, keeps views instead).
        keep = (lambda t: t.clone()) if copy else (lambda t: t)
        if not self._a_parts:
            self._a_parts = [[] for _ in am]
            self._b_parts = [[] for _ in bm]
        for parts, t in zip(self._a_parts, am):
            parts.append(keep(t))
        for parts, t in zip(self._b_parts, bm):
            parts.append(keep(t))
        self._bytes = need

    def _add_minibatch(self, am, bm) -> None:
        dev = self._device
        st = _matrix_stats([_Rows([t], dev) for t in am], None if bm is None else [_Rows([t], dev) for t in bm])
        n = st.n
        u = n * (n - 3)
        h_ab, h_a, h_b = _scaled_hsic_u_matrix(st)
        if self._h_ab is None:
            self._h_ab = np.zeros_like(h_ab)
            self._h_a, self._h_b = np.zeros_like(h_a), np.zeros_like(h_b)
            self._energy = [np.zeros_like(st.sx_a), np.zeros_like(st.sx_a), np.zeros_like(st.sx_b), np.zeros_like(st.sx_b)]
            self._self_scale = [np.zeros_like(st.sx_a), np.zeros_like(st.sx_b)]
        self._h_ab += h_ab / u
        self._h_a += h_a / u
        self._h_b += h_b / u
        for acc, v in zip(self._energy, (st.sx_a, st.raw_a, st.sx_b, st.raw_b)):
            acc += v
        self._self_scale[0] += st.sx_a**2 / u
        self._self_scale[1] += st.sx_b**2 / u
        self._batches += 1


def cka_matrix(
    a: Sequence[torch.Tensor],
    b: Sequence[torch.Tensor],
    *,
    debiased: Optional[bool] = None,
    estimator: str = "exact",
    batch_size: Optional[int] = None,
) -> np.ndarray:
    """CKA between every layer of ``a`` and every layer of ``b``, as an (L_a, L_b) float64 array.

    Args:
        a: list of tensors, layer i of network A as a[i] of shape (n, ...), flattened per example.
        b: list of tensors of shape (n, ...) for the same n examples; may be ``a`` itself for the
            self-similarity matrix (symmetric, unit diagonal).
        debiased: as in ``CKAMatrix``: None (default) is False (biased CKA) for "exact" and True
            for "minibatch"; entry (i, j) equals ``linear_cka(a[i], b[j], debiased=...)`` up to
            float64 rounding (~1e-14).
        estimator: "exact" (default) or "minibatch" (``CKAMatrix``).
        batch_size: the minibatch estimator's batch size, required for it: consecutive batches of
            ``batch_size`` examples, the last one possibly smaller (it must hold at least 4). The
            exact estimator works in bounded memory whatever the batch size, does not depend on
            it and ignores it.

    The inputs are neither copied nor modified; the arithmetic is float64 (``CKAMatrix``).
    """
    m = CKAMatrix(estimator, debiased=debiased)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    am, bm, same, n = _layer_matrices(a, b)  # every check that needs no arithmetic, up front
    if estimator == "exact":
        m._update(am, am if same else bm, copy=False)
        return m.value()
    if batch_size is None:
        raise ValueError(
            "estimator='minibatch' averages the unbiased HSIC over batches of batch_size "
            "examples: pass batch_size (at least 4), or use estimator='exact'"
        )
    if batch_size < 4 or 0 < n % batch_size < 4:
        last = batch_size if batch_size < 4 else n % batch_size
        raise ValueError(
            f"the minibatch estimator needs at least 4 examples per batch, but batch_size="
            f"{batch_size} over n={n} examples gives a batch of {last}; choose a batch_size of at "
            "least 4 for which n % batch_size is 0 or at least 4"
        )
    _check_layers_finite(am, None if same else bm)
    for s in range(0, n, batch_size):
        ab = [t[s : s + batch_size] for t in am]
        m._update(ab, ab if same else [t[s : s + batch_size] for t in bm], copy=False, checked=True)
    return m.value()


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
    """Raises if t holds NaN or inf, with their count. Counted chunk by chunk along dim 0, so that
    the boolean mask of one chunk stays within _WORK_BYTES / 8 elements instead of covering the
    whole input."""
    if not t.is_floating_point():
        return
    # A sum is finite only if every term is (NaN and inf propagate), and summing allocates
    # nothing: the exact count below runs only when a value is bad or the sum overflowed.
    if bool(torch.isfinite(t.sum())):
        return
    if t.dim() == 0:
        t = t.reshape(1)
    step = max(1, (_WORK_BYTES // 8) // max(1, t[0].numel()))
    bad = torch.zeros((), dtype=torch.int64, device=t.device)
    for a in range(0, t.shape[0], step):
        chunk = t[a : a + step]
        bad += chunk.numel() - torch.isfinite(chunk).sum()
    bad = int(bad.item())
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


# ---------------------------------------------------------------------------------------------
# internals of the all-pairs matrix


@dataclass
class _MatrixStats:
    """Sufficient statistics of every pair (i, j) of centred layers a[i], b[j] (float64 numpy)."""

    n: int
    kl: np.ndarray  # (L_a, L_b): tr(K_i L_j) = ||Xc_i^T Yc_j||_F^2
    kk_a: np.ndarray  # (L_a,): tr(K_i K_i)
    kk_b: np.ndarray  # (L_b,)
    rxy: np.ndarray  # (L_a, L_b): sum_k r_ik s_jk
    rxx_a: np.ndarray  # (L_a,): sum_k r_ik^2
    rxx_b: np.ndarray
    sx_a: np.ndarray  # (L_a,): sum_k r_ik = tr K_i
    sx_b: np.ndarray
    raw_a: np.ndarray  # (L_a,): ||X_i||_F^2 before centring
    raw_b: np.ndarray
    same: bool  # b is a: the _b arrays are the _a ones


def _layer_list(seq, name: str) -> list:
    if isinstance(seq, (torch.Tensor, np.ndarray, str, bytes)) or not isinstance(
        seq, collections.abc.Sequence
    ):
        raise TypeError(
            f"{name} must be a list or tuple of tensors, one per layer, each of shape (n, ...); "
            f"got {type(seq).__name__} (for a single layer pass [{name}])"
        )
    if len(seq) == 0:
        raise ValueError(
            f"{name} is an empty list of layers; pass at least one tensor of shape (n, ...)"
        )
    return [_as_matrix(t, f"{name}[{i}]") for i, t in enumerate(seq)]


def _layer_matrices(a, b):
    """Checks a batch of layers, returns (a as matrices, b as matrices, b is a, n)."""
    am = _layer_list(a, "a")
    same = b is a or (
        isinstance(b, collections.abc.Sequence)
        and not isinstance(b, (str, bytes))
        and len(b) == len(a)
        and all(x is y for x, y in zip(a, b))
    )
    bm = am if same else _layer_list(b, "b")
    n, dev = am[0].shape[0], am[0].device
    for name, ms in (("a", am), ("b", bm)):
        for i, t in enumerate(ms):
            if t.shape[0] != n:
                raise ValueError(
                    f"every layer must hold the same examples along dim 0: a[0] has n={n} but "
                    f"{name}[{i}] has n={t.shape[0]}"
                )
            if t.device != dev:
                raise ValueError(
                    f"a[0] is on {dev} but {name}[{i}] is on {t.device}; move every layer to one "
                    "device (CKA is computed on a[0]'s device)"
                )
    return am, bm, same, n


def _check_layers_finite(am, bm) -> None:
    for i, t in enumerate(am):
        _check_finite(t, f"a[{i}]")
    for j, t in enumerate(bm or ()):
        _check_finite(t, f"b[{j}]")


def _check_same_layers(before, now) -> None:
    if (len(now[0]), len(now[1])) != (len(before[0]), len(before[1])):
        raise ValueError(
            f"this batch has {len(now[0])} layers in a and {len(now[1])} in b, but earlier "
            f"batches had {len(before[0])} and {len(before[1])}; one CKAMatrix serves one pair of "
            "layer lists"
        )
    for name, d0, d1 in (("a", before[0], now[0]), ("b", before[1], now[1])):
        for i, (p0, p1) in enumerate(zip(d0, d1)):
            if p0 != p1:
                raise ValueError(
                    f"{name}[{i}] has {p1} features after flattening in this batch, but {p0} in "
                    "earlier batches; every batch must list the same layers in the same order"
                )


def _layer_names(same: bool, va, wa, vb, wb):
    """(name, v, w) per layer of a, then of b unless b is a."""
    out = [(f"a[{i}]", float(v), float(w)) for i, (v, w) in enumerate(zip(va, wa))]
    if not same:
        out += [(f"b[{j}]", float(v), float(w)) for j, (v, w) in enumerate(zip(vb, wb))]
    return out


def _fill(rows: _Rows, a: int, b: int, buf: torch.Tensor, mean: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rows [a, b) of one layer as float64 in the preallocated flat buffer buf, centred when a mean
    is given; returns the contiguous (b - a, d) view. Reusing buffers spares the allocation (and
    page faults) of a fresh float64 copy per chunk, which costs as much as the copy itself."""
    out = buf[: (b - a) * rows.d].view(b - a, rows.d)
    for p, s0, s1 in zip(rows.parts, rows.starts[:-1], rows.starts[1:]):
        lo, hi = max(a, s0), min(b, s1)
        if lo < hi:
            out[lo - a : hi - a].copy_(p[lo - s0 : hi - s0])
    if mean is not None:
        out.sub_(mean)
    return out


def _layer_moments(rows: _Rows, buf: torch.Tensor, name: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Float64 column means and raw energy ||X||_F^2 of one layer, in one pass of row chunks that
    fit buf. The sums run over X - x_0 (x_0 its first row), which keeps the mean exact under a
    large offset and gives the centred energy ||X - 1 mean^T||_F^2 = ||X - x_0||^2 - n ||mean -
    x_0||^2 without a second pass (exactly 0 for a constant layer). With a name, a constant layer
    raises here, before any Gram work."""
    n, d = rows.n, rows.d
    step = max(1, min(n, buf.numel() // d))
    ones = torch.ones(step, dtype=torch.float64, device=buf.device)
    x0 = _fill(rows, 0, 1, buf)[0].clone()
    total = torch.zeros(d, dtype=torch.float64, device=buf.device)
    raw = torch.zeros((), dtype=torch.float64, device=buf.device)
    shifted = torch.zeros((), dtype=torch.float64, device=buf.device)
    for a in range(0, n, step):
        x = _fill(rows, a, min(n, a + step), buf)
        flat = x.view(-1)
        raw += torch.dot(flat, flat)
        x.sub_(x0)
        total += ones[: x.shape[0]] @ x
        shifted += torch.dot(flat, flat)
    shift = total / n
    if name is not None:
        _check_not_constant((shifted - n * torch.dot(shift, shift)).item(), raw.item(), name)
    return x0 + shift, raw


class _GramTiles:
    """The centred Gram matrices of L layers over rows [r0, r1) x columns [c0, c1), c0 >= r0,
    held as two flat (L, .) views of a preallocated store: `diag`, the square sub-blocks on the
    Gram diagonal (counted once), and `off`, every block above the diagonal (standing for itself
    and its mirror). A tile on the diagonal is computed in strips of _GRAM_TILE rows from the
    diagonal rightwards, so that only its upper half (plus the small diagonal squares) costs
    flops; an off-diagonal tile is one matrix product. Each layer's rows are converted to float64
    and centred once per tile."""

    def __init__(self, r: Tuple[int, int], c: Tuple[int, int], layers: int, store: torch.Tensor) -> None:
        self.r, self.c = r, c
        mr, mc = r[1] - r[0], c[1] - c[0]
        if r == c:
            s = _GRAM_TILE
            self.strips = [(a, min(mr, a + s)) for a in range(0, mr, s)]
            n_diag = sum((b - a) ** 2 for a, b in self.strips)
            n_off = sum((b - a) * (mr - b) for a, b in self.strips)
        else:
            self.strips = None
            n_diag, n_off = 0, mr * mc
        self.diag = store[: layers * n_diag].view(layers, n_diag)
        self.off = store[layers * n_diag : layers * (n_diag + n_off)].view(layers, n_off)

    def compute(self, i: int, rows: _Rows, mean: torch.Tensor, bufs) -> None:
        xr = _fill(rows, *self.r, bufs[0], mean)
        if self.strips is None:
            xc = _fill(rows, *self.c, bufs[1], mean)
            torch.mm(xr, xc.T, out=self.off[i].view(xr.shape[0], xc.shape[0]))
            return
        mr, od, oo = xr.shape[0], 0, 0
        for a, b in self.strips:
            h = b - a
            torch.mm(xr[a:b], xr[a:b].T, out=self.diag[i, od : od + h * h].view(h, h))
            if b < mr:
                torch.mm(xr[a:b], xr[b:].T, out=self.off[i, oo : oo + h * (mr - b)].view(h, mr - b))
            od, oo = od + h * h, oo + h * (mr - b)

    def row_norms(self) -> torch.Tensor:
        """(L, r1 - r0): the squared norms of the centred rows, the diagonal of the Gram tile."""
        out, od = [], 0
        for a, b in self.strips:
            h = b - a
            out.append(torch.diagonal(self.diag[:, od : od + h * h].view(-1, h, h), dim1=1, dim2=2))
            od += h * h
        return torch.cat(out, dim=1)


def _feature_chunk(layers, means, a: int, b: int, out: torch.Tensor) -> torch.Tensor:
    """Centred float64 rows [a, b) of every layer side by side in out; returns the squared norms
    of each layer's centred rows, (L, b - a)."""
    off = 0
    r = torch.empty(len(layers), b - a, dtype=torch.float64, device=out.device)
    for i, (rows, mean) in enumerate(zip(layers, means)):
        x = out[:, off : off + rows.d]
        for p, s0, s1 in zip(rows.parts, rows.starts[:-1], rows.starts[1:]):
            lo, hi = max(a, s0), min(b, s1)
            if lo < hi:
                x[lo - a : hi - a].copy_(p[lo - s0 : hi - s0])
        x.sub_(mean)
        r[i] = (x * x).sum(1)
        off += rows.d
    return r


def _choose_matrix_form(n: int, dims_a: Sequence[int], dims_b: Optional[Sequence[int]]) -> str:
    """"feature" when the (cross-)covariances cost fewer flops than the shared Gram matrices and
    fit in _FEATURE_FORM_MAX_BYTES, else "gram"."""
    p = sum(dims_a)
    if dims_b is None:
        feature_elems = p * p
        gram_flops = n * n * (p + len(dims_a) ** 2) / 2
    else:
        q = sum(dims_b)
        feature_elems = p * q + sum(d * d for d in dims_a) + sum(d * d for d in dims_b)
        gram_flops = n * n * (p + q + len(dims_a) * len(dims_b) + len(dims_a) + len(dims_b)) / 2
    if n * feature_elems <= gram_flops and 8 * feature_elems <= _FEATURE_FORM_MAX_BYTES:
        return "feature"
    return "gram"


def _tile_rows(n: int, d: int, layers: int) -> int:
    """Side of the square Gram tiles of _matrix_stats: the tiles of all `layers` (at most
    layers x side^2 float64) and two float64 row chunks of the widest layer (2 x side x d) fit
    _WORK_BYTES together. Large tiles convert each layer's rows to float64 fewer times; the n
    rows are split into equal blocks."""
    blocks = 1
    while True:
        side = -(-n // blocks)
        if side <= 64 or 8 * side * (layers * side + 2 * d) <= _WORK_BYTES:
            return max(1, side)
        blocks += 1


def _matrix_stats(
    layers_a: List[_Rows], layers_b: Optional[List[_Rows]], form: str = "auto", check_constant: bool = False
) -> _MatrixStats:
    """Statistics of every pair (a[i], b[j]); layers_b None means b is a. Each layer's mean, Gram
    tiles or covariances are computed once, whatever the number of pairs. check_constant raises
    for a constant layer before any Gram or covariance work."""
    same = layers_b is None
    if same:
        layers_b = layers_a
    n, dev, f64 = layers_a[0].n, layers_a[0].device, torch.float64
    la, lb = len(layers_a), len(layers_b)
    dims_a = [rows.d for rows in layers_a]
    dims_b = [rows.d for rows in layers_b]
    if form == "auto":
        form = _choose_matrix_form(n, dims_a, None if same else dims_b)
    new = lambda *shape: torch.zeros(*shape, dtype=f64, device=dev)  # noqa: E731

    if form == "feature":
        p, q = sum(dims_a), sum(dims_b)
        step = _chunk_rows(n, p + (0 if same else q), matrices=0)
        buf_a = torch.empty(step, p, dtype=f64, device=dev)
        buf_b = buf_a if same else torch.empty(step, q, dtype=f64, device=dev)
        scratch = buf_a.view(-1)
    else:
        tile = _tile_rows(n, max(dims_a + dims_b), la + (0 if same else lb))
        bufs = [torch.empty(tile * max(dims_a + dims_b), dtype=f64, device=dev) for _ in range(2)]
        scratch = bufs[0]

    name = (lambda s, i: f"{s}[{i}]") if check_constant else (lambda s, i: None)  # noqa: E731
    mom_a = [_layer_moments(rows, scratch, name("a", i)) for i, rows in enumerate(layers_a)]
    mom_b = mom_a if same else [_layer_moments(rows, scratch, name("b", j)) for j, rows in enumerate(layers_b)]
    mean_a = [m_ for m_, _ in mom_a]
    mean_b = [m_ for m_, _ in mom_b]
    raw_a = torch.stack([r for _, r in mom_a])
    raw_b = torch.stack([r for _, r in mom_b])

    kl, rxy = new(la, lb), new(la, lb)
    kk_a, sx_a, rxx_a = new(la), new(la), new(la)
    kk_b, sx_b, rxx_b = new(lb), new(lb), new(lb)

    if form == "feature":
        c_ab = new(p, q)
        c_a = None if same else [new(d, d) for d in dims_a]
        c_b = None if same else [new(d, d) for d in dims_b]
        for a in range(0, n, step):
            b = min(n, a + step)
            xa = buf_a[: b - a]
            ra = _feature_chunk(layers_a, mean_a, a, b, xa)
            if same:
                xb, rb = xa, ra
            else:
                xb = buf_b[: b - a]
                rb = _feature_chunk(layers_b, mean_b, a, b, xb)
                for cov, x in zip(c_a, torch.split(xa, dims_a, dim=1)):
                    cov.addmm_(x.T, x)
                for cov, x in zip(c_b, torch.split(xb, dims_b, dim=1)):
                    cov.addmm_(x.T, x)
                sx_b += rb.sum(1)
                rxx_a += (ra * ra).sum(1)
                rxx_b += (rb * rb).sum(1)
            c_ab.addmm_(xa.T, xb)
            rxy += ra @ rb.T
            sx_a += ra.sum(1)
        # kl[i, j] is the squared Frobenius norm of block (i, j) of the cross-covariance
        ind_a = _block_indicator(dims_a, dev)
        ind_b = ind_a if same else _block_indicator(dims_b, dev)
        kl = ind_a.T @ (c_ab * c_ab) @ ind_b
        if not same:
            kk_a = torch.stack([(c * c).sum() for c in c_a])
            kk_b = torch.stack([(c * c).sum() for c in c_b])
    else:
        # One store for the tiles of every layer, a's then b's, so that one product of the
        # stacked tiles gives the pairs (a[i], b[j]) and the self terms together.
        lt = la + (0 if same else lb)
        store = torch.empty(lt * tile * tile, dtype=f64, device=dev)
        layers, means = layers_a + ([] if same else layers_b), mean_a + ([] if same else mean_b)
        gram = new(lt, lt)
        for r0 in range(0, n, tile):
            r = (r0, min(n, r0 + tile))
            for c0 in range(r0, n, tile):
                c = (c0, min(n, c0 + tile))
                g = _GramTiles(r, c, lt, store)
                for i, rows in enumerate(layers):
                    g.compute(i, rows, means[i], bufs)
                # Gram matrices are symmetric: a block above the diagonal stands for its mirror
                # too, hence weight 2 (blocks on the diagonal are computed whole, weight 1)
                for w, f in ((1.0, g.diag), (2.0, g.off)):
                    if f.shape[1]:
                        gram.addmm_(f, f.T, alpha=w)
                if c0 == r0:
                    rn = g.row_norms()
                    ra, rb = rn[:la], (rn if same else rn[la:])
                    rxy += ra @ rb.T
                    sx_a += ra.sum(1)
                    if not same:
                        sx_b += rb.sum(1)
                        rxx_a += (ra * ra).sum(1)
                        rxx_b += (rb * rb).sum(1)
        if same:
            kl = gram
        else:
            kl = gram[:la, la:].clone()
            kk_a, kk_b = torch.diagonal(gram)[:la].clone(), torch.diagonal(gram)[la:].clone()

    if same:
        # exactly symmetric whatever the order of the matmul's sums, and the diagonal of the pair
        # matrices IS each layer's self term: an exactly unit diagonal
        kl, rxy = (kl + kl.T) / 2, (rxy + rxy.T) / 2
        kk_a = torch.diagonal(kl).clone()
        rxx_a = torch.diagonal(rxy).clone()
        kk_b, sx_b, rxx_b = kk_a, sx_a, rxx_a
    to = lambda t: t.cpu().numpy()  # noqa: E731
    return _MatrixStats(
        n, to(kl), to(kk_a), to(kk_b), to(rxy), to(rxx_a), to(rxx_b), to(sx_a), to(sx_b),
        to(raw_a), to(raw_b), same,
    )


def _block_indicator(dims: Sequence[int], device: torch.device) -> torch.Tensor:
    """(sum(dims), len(dims)) float64 matrix with a 1 where feature f belongs to layer i."""
    layer = torch.repeat_interleave(torch.arange(len(dims), device=device), torch.tensor(dims, device=device))
    return torch.nn.functional.one_hot(layer, len(dims)).to(torch.float64)


def _scaled_hsic_u_matrix(st: _MatrixStats):
    """n (n - 3) HSIC_u for every pair, every layer of a and every layer of b with itself."""
    n = st.n
    h_ab = _scaled_hsic_u(st.kl, st.rxy, st.sx_a[:, None], st.sx_b[None, :], n)
    h_a = _scaled_hsic_u(st.kk_a, st.rxx_a, st.sx_a, st.sx_a, n)
    h_b = h_a if st.same else _scaled_hsic_u(st.kk_b, st.rxx_b, st.sx_b, st.sx_b, n)
    return h_ab, h_a, h_b


def _cka_matrix_from_stats(st: _MatrixStats, debiased: bool) -> np.ndarray:
    for name, sx, raw in _layer_names(st.same, st.sx_a, st.raw_a, st.sx_b, st.raw_b):
        _check_not_constant(sx, raw, name)
    if not debiased:
        return st.kl / np.sqrt(np.outer(st.kk_a, st.kk_b))
    h_ab, h_a, h_b = _scaled_hsic_u_matrix(st)
    for name, h, sx in _layer_names(st.same, h_a, st.sx_a, h_b, st.sx_b):
        _check_not_degenerate(h, sx**2, name)
    return h_ab / np.sqrt(np.outer(h_a, h_b))


def _check_estimator_args(estimator: str, debiased, max_bytes) -> None:
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

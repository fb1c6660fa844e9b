"""The layer-by-layer CKA heatmap of two networks (every layer of A against every layer of B), four
ways, timed in one run on this machine, with each one's error against a float64 reference.

    python bench/cka_matrix_speed.py [--n 2000] [--layers 10] [--repeat 1] [--batch-size 256]
                                     [--offset 1000]

The features: n examples (float32) through two random linear-ReLU networks that share their input,
`--layers` layers each, widths from 4,096 down to 512 (geometric), so that the layers are
correlated within and across the networks. Timed:

  (a)  `linear_cka` once per pair (L x L calls): the reference for exact biased CKA;
  (b)  `cka_matrix(a, b)`, exact biased CKA, each layer's statistics computed once;
  (a') `CKAAccumulator("minibatch")` once per pair over batches of `--batch-size`: the float64
       reference for the minibatch estimator (Nguyen, Raghu & Kornblith 2021);
  (c)  `cka_matrix(a, b, estimator="minibatch", batch_size=...)`, the same estimator all pairs at
       once;
  (d)  pytorch-cka's all-pairs computation (github.com/AntixK/PyTorch-Model-Compare, PyPI
       `torch_cka`): its `CKA.compare` over a DataLoader of the same batches, fed the stored
       features through stand-in modules that return them, so that its hooks see exactly these
       tensors (its float32 unbiased HSIC per batch, averaged over batches). Where `torch_cka`
       is not installed, a faithful copy of its `_HSIC` and `compare` loop runs instead, and the
       output says so.

(d) estimates the same quantity as (c), so its error is measured against (a'); it is measured
again on the features with their column means removed beforehand. Then every feature is shifted
by the constant `--offset` (still float32): CKA is unchanged by it, and the error of (b), (c) and
(d) is measured again against float64 references on the shifted features ((b) against
`linear_cka` on the L diagonal pairs, to keep the run short). Times are the best of
`--repeat` runs; beside each, the share of the CPU that other processes took meanwhile. Run it
on an otherwise idle machine: with torch's threads competing for the cores, times grow several-
fold, the more so for many small operations.
"""
import argparse
import datetime
import os
import platform
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-cka's progress bar

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from stitchlib.similarity import CKAAccumulator, cka_matrix, linear_cka  # noqa: E402


def features(n, layers, seed):
    """One network's layers: a random linear-ReLU stack of widths 4096 .. 512 on a shared input."""
    widths = [round(4096 * (512 / 4096) ** (i / max(layers - 1, 1))) for i in range(layers)]
    h = torch.randn(n, 256, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    out = []
    for w in widths:
        weight = torch.randn(h.shape[1], w, generator=g) / h.shape[1] ** 0.5
        h = torch.relu(h @ weight + 0.5 * torch.randn(w, generator=g))
        out.append(h)
    return out, widths


def _busy_seconds():
    """CPU seconds spent by the whole machine (all processes) so far, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def best_of(repeat, fn):
    """Best wall time of `repeat` runs, the result, and the share of the machine's CPU that OTHER
    processes took during that run (a busy machine makes every time here meaningless)."""
    best, result, others = float("inf"), None, float("nan")
    cores = os.cpu_count() or 1
    for _ in range(repeat):
        busy, own, start = _busy_seconds(), time.process_time(), time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
        other = (_busy_seconds() - busy - (time.process_time() - own)) / (wall * cores)
        if wall < best:
            best, others = wall, max(0.0, other)
    return best, result, others


def per_pair_exact(a, b, pairs=None):
    pairs = pairs or [(i, j) for i in range(len(a)) for j in range(len(b))]
    out = np.full((len(a), len(b)), np.nan)
    for i, j in pairs:
        out[i, j] = linear_cka(a[i], b[j])
    return out


def per_pair_minibatch(a, b, batch_size):
    out = np.zeros((len(a), len(b)))
    n = a[0].shape[0]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            acc = CKAAccumulator("minibatch")
            for s in range(0, n, batch_size):
                acc.update(x[s : s + batch_size], y[s : s + batch_size])
            out[i, j] = acc.value()
    return out


# ---------------------------------------------------------------------------------------------
# (d) pytorch-cka


class _Pick(torch.nn.Module):
    """Stands in for one layer: returns its stored features for the examples indexed by the input."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def forward(self, idx):
        return self.feats[idx]


class _Replay(torch.nn.Module):
    """Stands in for a network whose layers output the stored features, in order."""

    def __init__(self, layers):
        super().__init__()
        self.layers = torch.nn.ModuleList(_Pick(f) for f in layers)

    def forward(self, idx):
        for layer in self.layers:
            layer(idx)


def pytorch_cka_package(a, b, batch_size):
    from torch_cka import CKA

    names = [f"layers.{i}" for i in range(len(a))], [f"layers.{j}" for j in range(len(b))]
    cka = CKA(_Replay(a), _Replay(b), model1_name="A", model2_name="B",
              model1_layers=names[0], model2_layers=names[1], device="cpu")
    loader = DataLoader(TensorDataset(torch.arange(a[0].shape[0])), batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cka.compare(loader)
        except AssertionError as err:  # its own NaN check, after the matrix is computed
            if "NANs" not in str(err):
                raise
    return cka.hsic_matrix.numpy().astype(np.float64)


def _hsic_copy(K, L):
    """torch_cka 0.21 `CKA._HSIC`, unchanged but for `self`: unbiased HSIC (Song et al. 2012) of
    Gram matrices whose diagonal the caller zeroed, in their dtype (float32)."""
    N = K.shape[0]
    ones = torch.ones(N, 1)
    result = torch.trace(K @ L)
    result += ((ones.t() @ K @ ones @ ones.t() @ L @ ones) / ((N - 1) * (N - 2))).item()
    result -= ((ones.t() @ K @ L @ ones) * 2 / (N - 2)).item()
    return (1 / (N * (N - 3)) * result).item()


def pytorch_cka_copy(a, b, batch_size):
    """torch_cka 0.21 `CKA.compare`'s loop over batches and layer pairs, on stored features."""
    n = a[0].shape[0]
    num_batches = -(-n // batch_size)
    hsic_matrix = torch.zeros(len(a), len(b), 3)
    for s in range(0, n, batch_size):
        for i, feat1 in enumerate(a):
            X = feat1[s : s + batch_size].flatten(1)
            K = X @ X.t()
            K.fill_diagonal_(0.0)
            hsic_matrix[i, :, 0] += _hsic_copy(K, K) / num_batches
            for j, feat2 in enumerate(b):
                Y = feat2[s : s + batch_size].flatten(1)
                L = Y @ Y.t()
                L.fill_diagonal_(0)
                hsic_matrix[i, j, 1] += _hsic_copy(K, L) / num_batches
                hsic_matrix[i, j, 2] += _hsic_copy(L, L) / num_batches
    out = hsic_matrix[:, :, 1] / (hsic_matrix[:, :, 0].sqrt() * hsic_matrix[:, :, 2].sqrt())
    return out.numpy().astype(np.float64)


def maxdiff(x, ref):
    """Max |x - ref| over the entries where ref is known, and how many entries of x are NaN."""
    known = ~np.isnan(ref)
    bad = np.isnan(x) & known
    d = np.abs(x - ref)[known & ~bad]
    text = f"{d.max():.1e}" if d.size else "-"
    if bad.any():
        text += f" on the other entries; {int(bad.sum())} of {int(known.sum())} entries NaN"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--offset", type=float, default=1000.0)
    args = parser.parse_args()

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"# bench/cka_matrix_speed.py, {datetime.date.today()}, {cpu}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    try:
        import torch_cka

        pytorch_cka, which = pytorch_cka_package, f"torch_cka {getattr(torch_cka, '__version__', '?')} CKA.compare"
    except ImportError:
        pytorch_cka, which = pytorch_cka_copy, "copy of torch_cka 0.21's algorithm (not installed)"

    a, widths = features(args.n, args.layers, seed=1)
    b, _ = features(args.n, args.layers, seed=2)
    la, bs = len(a), args.batch_size
    print(f"n={args.n} examples, 2 networks x {la} layers of widths {widths[0]}..{widths[-1]} "
          f"({sum(widths)} features per network), float32; minibatch estimators: batches of {bs}")

    t_a, ref, o_a = best_of(args.repeat, lambda: per_pair_exact(a, b))
    t_b, exact, o_b = best_of(args.repeat, lambda: cka_matrix(a, b))
    t_a2, ref_mb, o_a2 = best_of(args.repeat, lambda: per_pair_minibatch(a, b, bs))
    t_c, mb, o_c = best_of(args.repeat, lambda: cka_matrix(a, b, estimator="minibatch", batch_size=bs))
    t_d, theirs, o_d = best_of(args.repeat, lambda: pytorch_cka(a, b, bs))

    rows = [
        (f"(a)  linear_cka per pair ({la * la} calls)", t_a, o_a, "reference (exact, biased)"),
        ("(b)  cka_matrix exact", t_b, o_b, f"{maxdiff(exact, ref)} vs (a)"),
        ("(a') CKAAccumulator minibatch per pair", t_a2, o_a2, "reference (minibatch)"),
        ("(c)  cka_matrix minibatch", t_c, o_c, f"{maxdiff(mb, ref_mb)} vs (a')"),
        (f"(d)  pytorch-cka: {which}", t_d, o_d, f"{maxdiff(theirs, ref_mb)} vs (a')"),
    ]
    print(f"{'method':58s} {'time':>8s} {'(a)/time':>9s} {'others':>7s}   max |CKA - float64 reference|")
    for name, t, other, err in rows:
        print(f"{name:58s} {t:7.2f}s {t_a / t:8.1f}x {other:6.0%}    {err}")
    print("(others: share of the machine's CPU that other processes used during that timing)")
    print(f"ratios in this run: (d)/(b) = {t_d / t_b:.2f}, (d)/(c) = {t_d / t_c:.2f}, "
          f"(a)/(b) = {t_a / t_b:.1f}, (a')/(c) = {t_a2 / t_c:.1f}")

    # pytorch-cka's float32 Gram matrices of uncentred features lose the variation under the
    # features' mean (ReLU outputs are positive); with the column means removed first it is close
    centre = lambda xs: [(x.double() - x.double().mean(0)).float() for x in xs]  # noqa: E731
    a_c, b_c = centre(a), centre(b)
    print(f"(d) on features centred beforehand (column means removed, float32): "
          f"{maxdiff(pytorch_cka(a_c, b_c, bs), per_pair_minibatch(a_c, b_c, bs))} vs (a') on them")

    off = args.offset
    a_off = [x + off for x in a]
    b_off = [y + off for y in b]
    diag = [(i, i) for i in range(min(la, len(b)))]
    ref_off = per_pair_exact(a_off, b_off, diag)
    ref_mb_off = per_pair_minibatch(a_off, b_off, bs)
    print(f"every feature + {off:g} (float32; CKA is unchanged by a constant offset in exact arithmetic):")
    print(f"  (b) cka_matrix exact      {maxdiff(cka_matrix(a_off, b_off), ref_off)} vs linear_cka on the "
          f"{len(diag)} diagonal pairs")
    print(f"  (c) cka_matrix minibatch  {maxdiff(cka_matrix(a_off, b_off, estimator='minibatch', batch_size=bs), ref_mb_off)}"
          " vs (a') on the shifted features")
    d_off = pytorch_cka(a_off, b_off, bs)
    print(f"  (d) pytorch-cka           {maxdiff(d_off, ref_mb_off)} vs (a') on the shifted features; "
          f"its values range over [{np.nanmin(d_off):.3g}, {np.nanmax(d_off):.3g}], the reference's over "
          f"[{ref_mb_off.min():.3g}, {ref_mb_off.max():.3g}]")


if __name__ == "__main__":
    main()

"""Stitching: frozen bottom of B -> one small trainable layer -> frozen top of A.

The stitching penalty (Section 2 of the paper) is the stitched model's test error minus
the test error of A, the network whose top is used. It is reported twice: at the
least-squares initialisation (direct matching of B's activations onto A's) and after
training the stitcher on the task loss. The two measure different things.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .data import Dataset, DeviceLoader, Split
from .models import CutPoint, resolve_cut, split
from .training import as_nhwc, channels_last, error_rate, resolve_device, run_steps

__all__ = ["Stitcher", "TokenBatchNorm", "StitchedModel", "StitchResult", "stitch", "BN_POLICIES", "INITS"]

BN_POLICIES = ("frozen", "drift")
INITS = ("least_squares", "random")


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the feature dim of (B, N, D) tokens, every token a sample: the
    normalisation of the conv stitcher (every pixel a sample), adapted to transformers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class Stitcher(nn.Sequential):
    """BatchNorm -> Conv k x k -> BatchNorm for feature maps; BatchNorm1d -> Linear ->
    BatchNorm1d for pooled vectors (the layers of the paper's original code); the same
    token-wise for transformer tokens (B, N, D). The BatchNorms add no capacity; they only
    help optimisation."""

    def __init__(self, c_in: int, c_out: int, *, kind: str = "map", kernel_size: int = 1):
        if kind == "map":
            if not (isinstance(kernel_size, int) and kernel_size > 0 and kernel_size % 2 == 1):
                raise ValueError(f"kernel_size must be a positive odd int (1, 3, 5, ...), got {kernel_size!r}")
            layers = [nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                      nn.BatchNorm2d(c_out)]
        elif kind in ("vector", "tokens"):
            if kernel_size != 1:
                raise ValueError(f"a {kind} cut takes a linear stitcher: kernel_size must be 1")
            norm = nn.BatchNorm1d if kind == "vector" else TokenBatchNorm
            layers = [norm(c_in), nn.Linear(c_in, c_out), norm(c_out)]
        else:
            raise ValueError(f"unknown representation kind {kind!r}; valid: 'map', 'vector', 'tokens'")
        super().__init__(*layers)
        self.kind, self.kernel_size = kind, kernel_size

    @property
    def linear(self) -> nn.Module:
        return self[1]


class StitchedModel(nn.Module):
    """top(stitcher(bottom(x))). Only the stitcher trains.

    bn_policy "frozen" (default) keeps bottom and top in eval mode whatever `.train()` is
    called with, so their BatchNorm statistics never move. "drift" reproduces the
    original code, which put the whole stitched model in train mode: the frozen parts'
    running statistics then follow the stitched data and are used at test time.
    """

    def __init__(self, bottom: nn.Module, stitcher: Stitcher, top: nn.Module, *, bn_policy: str = "frozen"):
        super().__init__()
        if bn_policy not in BN_POLICIES:
            raise ValueError(f"unknown bn_policy {bn_policy!r}; valid: {BN_POLICIES}")
        self.bottom, self.stitcher, self.top, self.bn_policy = bottom, stitcher, top, bn_policy
        for p in [*bottom.parameters(), *top.parameters()]:
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.bn_policy == "frozen":
            self.bottom.eval()
            self.top.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The bottom never needs gradients; skipping its graph halves the work before the cut.
        with torch.set_grad_enabled(False):
            h = self.bottom(x)
        return self.top(self.stitcher(h))


@dataclass
class StitchResult:
    """Errors in percent on the test split; penalties are relative to the top model A."""

    cut: CutPoint
    top_error: float
    error_init: float
    error: float
    stitched: StitchedModel = field(repr=False)
    config: dict = field(default_factory=dict, repr=False)

    @property
    def penalty_init(self) -> float:
        return self.error_init - self.top_error

    @property
    def penalty(self) -> float:
        return self.error - self.top_error


def _check_compatible(bottom_model, top_model, bcut: CutPoint, tcut: CutPoint, x: torch.Tensor):
    b_bottom, _ = split(bottom_model, bcut)
    t_bottom, _ = split(top_model, tcut)
    with torch.no_grad():
        hb, ht = b_bottom(x[:2]), t_bottom(x[:2])
    if bcut.kind != tcut.kind:
        raise ValueError(
            f"cannot stitch a {bcut.kind} representation (shape {tuple(hb.shape[1:])}) at {bcut.name!r} "
            f"into a {tcut.kind} one (shape {tuple(ht.shape[1:])}) at {tcut.name!r}; the stitchers map "
            "map->map, tokens->tokens and vector->vector"
        )
    if bcut.kind == "map" and hb.shape[2:] != ht.shape[2:]:
        raise ValueError(
            f"spatial sizes differ at the cut: bottom {tuple(hb.shape[2:])} vs top {tuple(ht.shape[2:])}; "
            "a k x k stitcher with 'same' padding cannot resize"
        )
    if bcut.kind == "tokens" and hb.shape[1] != ht.shape[1]:
        raise ValueError(f"token counts differ at the cut: bottom {hb.shape[1]} vs top {ht.shape[1]}; "
                         "a token-wise stitcher cannot add or drop tokens")


def _pixels(h: torch.Tensor) -> torch.Tensor:
    """Every spatial position (or token) is one sample: (B, C, H, W) -> (B*H*W, C), (B, N, D) -> (B*N, D)."""
    if h.dim() == 4:
        return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    return h.reshape(-1, h.shape[-1])


@torch.no_grad()
def _least_squares_init(stitcher: Stitcher, b_bottom, t_bottom, loader, ridge: float, device) -> None:
    """Ridge regression from B's activations to A's own activations at the cut, with a bias.

    The normal equations are streamed over batches in float64, so memory stays flat.
    BN1 is set to the input's statistics and BN2 to the identity on the fitted outputs,
    so in eval mode the stitcher is exactly the ridge solution, and in train mode (batch
    statistics) very nearly so.
    """
    c_in = stitcher[0].num_features
    gram = torch.zeros(c_in + 1, c_in + 1, dtype=torch.float64, device=device)
    cross = None
    for x, _ in loader:
        x = as_nhwc(x)
        xb = _pixels(b_bottom(x)).double()
        yt = _pixels(t_bottom(x)).double()
        xa = torch.cat([xb, torch.ones(len(xb), 1, dtype=torch.float64, device=device)], 1)
        gram += xa.T @ xa
        cross = xa.T @ yt if cross is None else cross + xa.T @ yt
    n = gram[-1, -1]
    mean = gram[-1, :-1] / n
    var = (torch.diag(gram)[:-1] / n - mean**2).clamp_min(0)
    eps = stitcher[0].eps
    scale = torch.sqrt(var + eps)
    # Standardisation as a linear map on [x, 1]: x_std = (x - mean) / scale.
    t = torch.eye(c_in + 1, dtype=torch.float64, device=device)
    t[:-1, :-1] = torch.diag(1 / scale)
    t[-1, :-1] = -mean / scale
    g = t.T @ gram @ t
    c = t.T @ cross
    reg = ridge * torch.diag(g)[:-1].mean()
    g[:-1, :-1] += reg * torch.eye(c_in, dtype=torch.float64, device=device)
    sol = torch.linalg.solve(g, c)  # (c_in + 1, c_out)
    weight, bias = sol[:-1].T, sol[-1]

    bn1, lin, bn2 = stitcher
    bn1.running_mean.copy_(mean)
    bn1.running_var.copy_(var)
    bn1.weight.fill_(1.0)
    bn1.bias.zero_()
    if isinstance(lin, nn.Conv2d):
        lin.weight.zero_()
        k = lin.kernel_size[0] // 2
        lin.weight[:, :, k, k] = weight.to(lin.weight.dtype)
    else:
        lin.weight.copy_(weight)
    lin.bias.copy_(bias)
    # Fitted outputs' mean and variance follow from the Gram matrix without another pass.
    out_mean = (g[-1, :] @ sol) / n
    out_sq = torch.einsum("io,ij,jo->o", sol, g - reg * _pad_eye(c_in, device), sol) / n
    out_var = (out_sq - out_mean**2).clamp_min(0)
    bn2.running_mean.copy_(out_mean)
    bn2.running_var.copy_(out_var)
    bn2.weight.copy_(torch.sqrt(out_var + bn2.eps))
    bn2.bias.copy_(out_mean)


def _pad_eye(c: int, device) -> torch.Tensor:
    e = torch.zeros(c + 1, c + 1, dtype=torch.float64, device=device)
    e[:-1, :-1] = torch.eye(c, dtype=torch.float64, device=device)
    return e


@contextlib.contextmanager
def _restore_requires_grad(*modules: nn.Module):
    params = [p for m in modules for p in m.parameters()]
    before = [p.requires_grad for p in params]
    try:
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def stitch(
    bottom_model: nn.Module,
    top_model: nn.Module,
    at: int | str | CutPoint,
    dataset: Dataset,
    *,
    train: Split | None = None,
    test: Split | None = None,
    epochs: float = 1.0,
    steps: int | None = None,
    init: str = "least_squares",
    kernel_size: int = 1,
    bn_policy: str = "frozen",
    lr: float = 1e-3,
    batch_size: int = 128,
    ls_samples: int = 4096,
    ridge: float = 1e-4,
    seed: int = 0,
    top_error: float | None = None,
    top_at: int | str | CutPoint | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> StitchResult:
    """Stitch the bottom of `bottom_model` (B) up to cut `at` into the top of `top_model` (A).

    Only the stitcher trains: Adam, lr 1e-3, cosine schedule, cross-entropy, crop+flip,
    for `steps` batches if given, else `epochs` passes over `train` (default: the dataset's
    training split); 0 keeps the least-squares (or random) initialisation. Errors are
    measured on `test` (default: the dataset's test split). `top_at` picks a different
    cut in A (default: the same as `at`). The models' weights and statistics are left
    unchanged (they are moved to `device`, in channels-last layout, and put in eval mode);
    with bn_policy="drift" the stitched model works on copies of them.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {INITS}")
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"unknown bn_policy {bn_policy!r}; valid: {BN_POLICIES}")
    if not epochs >= 0:
        raise ValueError(f"epochs must be >= 0, got {epochs!r}")
    if steps is not None and not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an int >= 0 or None, got {steps!r}")
    device = resolve_device(device)
    train = dataset.train if train is None else train
    test = dataset.test if test is None else test
    bcut = resolve_cut(bottom_model, at)
    tcut = resolve_cut(top_model, at if top_at is None else top_at)
    if bn_policy == "drift":
        bottom_model, top_model = copy.deepcopy(bottom_model), copy.deepcopy(top_model)
    channels_last(bottom_model.to(device)).eval()
    channels_last(top_model.to(device)).eval()
    if top_error is None:
        top_error = error_rate(top_model, test, dataset.mean, dataset.std, device=device)

    probe = next(iter(DeviceLoader(test, dataset.mean, dataset.std, batch_size=2, device=device)))[0]
    _check_compatible(bottom_model, top_model, bcut, tcut, probe)
    b_bottom, _ = split(bottom_model, bcut)
    t_bottom, t_top = split(top_model, tcut)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        stitcher = channels_last(Stitcher(bcut.channels, tcut.channels, kind=bcut.kind,
                                          kernel_size=kernel_size).to(device))
    with _restore_requires_grad(bottom_model, top_model):
        model = StitchedModel(b_bottom, stitcher, t_top, bn_policy=bn_policy)
        if init == "least_squares":
            ls_split = train if len(train) <= ls_samples else _first(train, ls_samples)
            ls_loader = DeviceLoader(ls_split, dataset.mean, dataset.std, batch_size=256, device=device)
            _least_squares_init(stitcher, b_bottom, t_bottom, ls_loader, ridge, device)
        # The bottom's test activations serve both evaluations: computed once, not twice.
        test_features = _features(b_bottom, test, dataset, device)
        error_init = _error_from_features(stitcher, t_top, test_features)
        if (steps if steps is not None else epochs) > 0:
            _train_stitcher(model, train, dataset, epochs=epochs, steps=steps, lr=lr, batch_size=batch_size,
                            seed=seed, device=device, desc=f"stitch {bcut.name}", progress=progress)
        if bn_policy == "drift":
            # The bottom's BatchNorm statistics moved during training: its activations must be recomputed.
            test_features = _features(b_bottom, test, dataset, device)
        error = _error_from_features(stitcher, t_top, test_features)
    config = dict(at=bcut.name, top_at=tcut.name, epochs=epochs, steps=steps, init=init,
                  kernel_size=kernel_size, bn_policy=bn_policy, lr=lr, batch_size=batch_size,
                  ls_samples=ls_samples, ridge=ridge, seed=seed)
    return StitchResult(bcut, top_error, error_init, error, model, config)


@torch.no_grad()
def _features(bottom: nn.Module, split_: Split, dataset: Dataset, device) -> list:
    loader = DeviceLoader(split_, dataset.mean, dataset.std, batch_size=500, device=device)
    return [(bottom(as_nhwc(x)), y) for x, y in loader]


@torch.no_grad()
def _error_from_features(stitcher: Stitcher, top: nn.Module, features: list) -> float:
    """Test error in percent of top(stitcher(h)), both in eval mode, over precomputed h."""
    stitcher.eval()
    wrong = sum((top(stitcher(h)).argmax(1) != y).sum().item() for h, y in features)
    return 100.0 * wrong / sum(len(y) for _, y in features)


def _first(split_: Split, n: int) -> Split:
    return Split(split_.images[:n], split_.labels[:n], split_.num_classes, split_.recipe + (("first", n),))


def _train_stitcher(model: StitchedModel, train: Split, dataset: Dataset, *, epochs, steps, lr, batch_size, seed,
                    device, desc, progress):
    loader = DeviceLoader(train, dataset.mean, dataset.std, batch_size=batch_size, train=True, device=device, seed=seed)
    total = steps or max(1, math.ceil(epochs * len(loader)))
    opt = torch.optim.Adam(model.stitcher.parameters(), lr=lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    model.train()
    run_steps(model, loader, opt, sched, total, desc=desc, progress=progress)
    model.eval()

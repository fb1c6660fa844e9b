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
from .models import CutPoint, resolve_cut, spine, split
from .training import as_nhwc, channels_last, cross_entropy_step, error_rate, percent, resolve_device, run_steps
from .precision import autocast, check_precision

__all__ = ["Stitcher", "TokenBatchNorm", "StitchedModel", "StitchResult", "stitch", "BN_POLICIES", "INITS",
           "TRANSFORMS", "Transform", "make_transform"]

BN_POLICIES = ("frozen", "drift")
INITS = ("least_squares", "random")
# Section 3's two changes of a representation that CKA and stitching judge differently.
TRANSFORMS = ("useless_coordinates", "permuted_positions")


class Transform(nn.Module):
    """B's representation at one cut, changed before the stitcher sees it (Section 3's arguments).

    - "useless_coordinates" (ratio r): appends round(r x channels) channels (features, for a
      pooled vector or tokens) of Gaussian noise, drawn afresh at every call from a generator
      seeded by `seed`, at one scale per cut: the root mean square of the first batch it sees
      (so that an image's representation never depends on its batch companions). The paper's
      example appends 1,000 random Gaussian coordinates: CKA falls, but a stitcher can throw them
      away.
    - "permuted_positions": one fixed random permutation (from `seed`) of the spatial positions of
      a feature map (or of a transformer's patch tokens; the first `prefix_tokens`, a class token,
      stay where the head reads them), the same for every image: an orthogonal map of the
      flattened features, so CKA does not move, but a 1 x 1 stitcher cannot undo it. A pooled
      vector has no positions to permute: an error (experiments skip such cuts).
    """

    def __init__(self, spec: tuple, cut: CutPoint, seed: int, prefix_tokens: int = 0):
        super().__init__()
        kind, *args = spec
        if kind not in TRANSFORMS:
            raise ValueError(f"unknown transform {kind!r}; valid: {TRANSFORMS}")
        if kind == "useless_coordinates":
            if len(args) != 1 or not (isinstance(args[0], (int, float)) and args[0] > 0):
                raise ValueError(f'"useless_coordinates" takes one ratio > 0 (appended channels per channel of the '
                                 f"representation), got {tuple(args)!r}")
            self.extra = max(1, round(float(args[0]) * cut.channels))
        else:
            if args:
                raise ValueError(f'"permuted_positions" takes no arguments, got {tuple(args)!r}')
            if cut.kind == "vector":
                raise ValueError(f"cut {cut.name!r} is a pooled vector: it has no spatial positions to permute; "
                                 "permuted_positions needs a feature map or tokens")
            self.extra = 0
        self.kind, self.cut, self.seed, self.prefix_tokens = kind, cut, int(seed), int(prefix_tokens)
        self._generator = self._scale = None
        self._perm = {}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "useless_coordinates":
            if self._generator is None or self._generator.device != h.device:
                self._generator = torch.Generator(h.device).manual_seed(self.seed)
            shape = list(h.shape)
            channel_dim = 1 if h.dim() in (2, 4) else h.dim() - 1  # (B, C[, H, W]) or tokens (B, N, D)
            shape[channel_dim] = self.extra
            if self._scale is None:
                self._scale = h.detach().float().pow(2).mean().sqrt()
            noise = torch.randn(shape, generator=self._generator, device=h.device, dtype=torch.float32)
            noise *= self._scale.to(h.device)
            return torch.cat([h, noise.to(h.dtype)], channel_dim)
        if h.dim() == 4:  # (B, C, H, W): permute the H * W positions, the same way for every channel
            b, c, height, width = h.shape
            return h.reshape(b, c, height * width)[:, :, self._permutation(height * width, h.device)].reshape(
                b, c, height, width)
        k = self.prefix_tokens  # tokens (B, N, D): the class token stays first
        return torch.cat([h[:, :k], h[:, k:][:, self._permutation(h.shape[1] - k, h.device)]], 1)

    def _permutation(self, n: int, device) -> torch.Tensor:
        if n not in self._perm:  # drawn on the CPU: the same permutation on every device
            self._perm[n] = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return self._perm[n].to(device)


def make_transform(spec: tuple | list | None, cut: CutPoint, seed: int, model: nn.Module | None = None) -> nn.Module:
    """`Transform(spec, cut, seed + cut.index)` (each cut its own draw), or the identity for None.
    `model`: the network `cut` belongs to, whose class token (timm's `num_prefix_tokens`) a
    permutation of tokens leaves in place."""
    if spec is None:
        return nn.Identity()
    if isinstance(spec, str) or not isinstance(spec, (tuple, list)) or not spec:
        raise ValueError(f"transform must be None or a tuple (name, *arguments) with name in {TRANSFORMS}, e.g. "
                         f'("useless_coordinates", 1.0) or ("permuted_positions",); got {spec!r}')
    prefix = next((int(m.num_prefix_tokens) for m in model.modules() if hasattr(m, "num_prefix_tokens")), 0) \
        if model is not None and cut.kind == "tokens" else 0
    return Transform(tuple(spec), cut, seed + cut.index, prefix)


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
    # Which test images the stitched model gets wrong, at initialisation and after training.
    wrong_init: torch.Tensor | None = field(default=None, repr=False)
    wrong: torch.Tensor | None = field(default=None, repr=False)

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


class _RidgeFit:
    """Ridge regression from B's activations to A's own activations at one cut, with a bias.

    The normal equations are streamed over batches in float64, so memory stays flat.
    `apply` sets BN1 to the input's statistics and BN2 to the identity on the fitted outputs,
    so in eval mode the stitcher is exactly the ridge solution, and in train mode (batch
    statistics) very nearly so. A k x k stitcher gets the solution as its centre tap.
    """

    def __init__(self, c_in: int, device):
        self.gram = torch.zeros(c_in + 1, c_in + 1, dtype=torch.float64, device=device)
        self.cross = None

    def update(self, hb: torch.Tensor, ht: torch.Tensor) -> None:
        xb, yt = _pixels(hb).double(), _pixels(ht).double()
        xa = torch.cat([xb, torch.ones(len(xb), 1, dtype=torch.float64, device=xb.device)], 1)
        self.gram += xa.T @ xa
        self.cross = xa.T @ yt if self.cross is None else self.cross + xa.T @ yt

    @torch.no_grad()
    def apply(self, stitcher: Stitcher, ridge: float) -> None:
        gram, device = self.gram, self.gram.device
        c_in = gram.shape[0] - 1
        n = gram[-1, -1]
        mean = gram[-1, :-1] / n
        var = (torch.diag(gram)[:-1] / n - mean**2).clamp_min(0)
        scale = torch.sqrt(var + stitcher[0].eps)
        # Standardisation as a linear map on [x, 1]: x_std = (x - mean) / scale.
        t = torch.eye(c_in + 1, dtype=torch.float64, device=device)
        t[:-1, :-1] = torch.diag(1 / scale)
        t[-1, :-1] = -mean / scale
        g = t.T @ gram @ t
        c = t.T @ self.cross
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
    at: int | str | CutPoint | list,
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
    top_at: int | str | CutPoint | list | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    precision: str = "fp32",
    transform: tuple | None = None,
) -> StitchResult | list[StitchResult]:
    """Stitch the bottom of `bottom_model` (B) up to cut `at` into the top of `top_model` (A).

    Only the stitcher trains: Adam, lr 1e-3, cosine schedule, cross-entropy, crop+flip,
    for `steps` batches if given, else `epochs` passes over `train` (default: the dataset's
    training split); 0 keeps the least-squares (or random) initialisation. Errors are
    measured on `test` (default: the dataset's test split). `top_at` picks a different
    cut in A (default: the same as `at`). The models' weights and statistics are left
    unchanged (they are moved to `device`, in channels-last layout, and put in eval mode);
    with bn_policy="drift" the stitched model works on copies of them.

    `at` may also be a list of cuts (`top_at` then None or a list as long): every cut's
    stitcher trains on the same batches in one pass, the bottom running once per batch for
    all of them, and a list of results comes back in the same order. Each result is the one
    `stitch` at that cut alone gives.

    `precision`: "fp32", or "bf16" for bfloat16 autocast of every forward and backward pass (the
    least-squares initialisation still solves its normal equations in float64).

    `transform`: None, or a change of B's representation before the stitcher (`Transform`):
    `("useless_coordinates", ratio)` or `("permuted_positions",)`; each cut draws its own.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {INITS}")
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"unknown bn_policy {bn_policy!r}; valid: {BN_POLICIES}")
    if not epochs >= 0:
        raise ValueError(f"epochs must be >= 0, got {epochs!r}")
    if steps is not None and not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an int >= 0 or None, got {steps!r}")
    many = isinstance(at, (list, tuple))
    ats = list(at) if many else [at]
    top_ats = ats if top_at is None else (list(top_at) if many else [top_at])
    if not ats or len(top_ats) != len(ats):
        raise ValueError(f"at lists {len(ats)} cuts and top_at {len(top_ats)}; give at least one cut, and "
                         "top_at as None or a list as long as at")
    device = resolve_device(device)
    check_precision(precision, device)
    train = dataset.train if train is None else train
    test = dataset.test if test is None else test
    bcuts = [resolve_cut(bottom_model, a) for a in ats]
    tcuts = [resolve_cut(top_model, a) for a in top_ats]
    options = dict(epochs=epochs, steps=steps, init=init, kernel_size=kernel_size, bn_policy=bn_policy, lr=lr,
                   batch_size=batch_size, ls_samples=ls_samples, ridge=ridge, seed=seed, precision=precision,
                   transform=None if transform is None else list(transform))
    transforms = [make_transform(transform, c, seed, bottom_model) for c in bcuts]
    if bn_policy == "drift":
        # One copy of the bottom serves every cut: it sees the same batches whatever the cut, so its
        # statistics drift the same way. Each top drifts with its own cut's stitched activations,
        # so every cut gets its own copy of the top (made below).
        bottom_model = copy.deepcopy(bottom_model)
    channels_last(bottom_model.to(device)).eval()
    channels_last(top_model.to(device)).eval()
    if top_error is None:
        top_error = error_rate(top_model, test, dataset.mean, dataset.std, device=device, precision=precision)

    probe = next(iter(DeviceLoader(test, dataset.mean, dataset.std, batch_size=2, device=device)))[0]
    # A transform may widen B's representation (useless coordinates): the stitcher takes them all.
    c_in = [c.channels + getattr(t, "extra", 0) for c, t in zip(bcuts, transforms)]
    stitchers = []
    for bcut, tcut, channels in zip(bcuts, tcuts, c_in):
        _check_compatible(bottom_model, top_model, bcut, tcut, probe)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            stitchers.append(channels_last(Stitcher(channels, tcut.channels, kind=bcut.kind,
                                                    kernel_size=kernel_size).to(device)))
    b_index, t_index = [c.index for c in bcuts], [c.index for c in tcuts]
    b_stages, t_stages = spine(bottom_model), spine(top_model)
    with _restore_requires_grad(bottom_model, top_model), autocast(device, precision):
        tops = [copy.deepcopy(top_model) if bn_policy == "drift" else top_model for _ in bcuts]
        models = [StitchedModel(_then(split(bottom_model, b)[0], transform_), s, split(top, t)[1],
                                bn_policy=bn_policy)
                  for b, t, s, top, transform_ in zip(bcuts, tcuts, stitchers, tops, transforms)]
        bottoms = _BottomAtCuts(b_stages, b_index, transforms)
        if init == "least_squares":
            ls_split = train if len(train) <= ls_samples else _first(train, ls_samples)
            fits = [_RidgeFit(c, device) for c in c_in]
            with torch.no_grad():
                for x, _ in DeviceLoader(ls_split, dataset.mean, dataset.std, batch_size=256, device=device):
                    x = as_nhwc(x)
                    targets = dict(_at_cuts(t_stages, x, t_index))
                    for j, hb in bottoms(x):
                        fits[j].update(hb, targets.pop(j))
            for fit, stitcher in zip(fits, stitchers):
                fit.apply(stitcher, ridge)
        wrong_init = _misclassified(models, bottoms, test, dataset, device)
        if (steps if steps is not None else epochs) > 0:
            desc = f"stitch {bcuts[0].name}" if len(bcuts) == 1 else f"stitch {len(bcuts)} cuts"
            _train_stitchers(models, bottoms, train, dataset, epochs=epochs, steps=steps, lr=lr,
                             batch_size=batch_size, seed=seed, device=device, desc=desc, progress=progress)
        # Measured anew: with bn_policy="drift" the bottom's statistics have moved.
        wrong = _misclassified(models, bottoms, test, dataset, device)
    results = [StitchResult(b, top_error, percent(w_init), percent(w), m, dict(at=b.name, top_at=t.name, **options),
                            w_init, w)
               for b, t, w_init, w, m in zip(bcuts, tcuts, wrong_init, wrong, models)]
    return results if many else results[0]


@torch.no_grad()
def _at_cuts(stages: list[nn.Module], x: torch.Tensor, indices: list[int]):
    """Yields (j, output of stage indices[j]) for every j, shallowest first, from one pass without
    gradients. Used as the caller goes, only one cut's activations need to be alive at a time."""
    h, done = x, -1
    for j in sorted(range(len(indices)), key=lambda j: indices[j]):
        for stage in stages[done + 1 : indices[j] + 1]:
            h = stage(h)
        done = max(done, indices[j])
        yield j, h


def _then(bottom: nn.Module, transform: nn.Module) -> nn.Module:
    return bottom if isinstance(transform, nn.Identity) else nn.Sequential(bottom, transform)


@dataclass
class _BottomAtCuts:
    """B's representation at every cut (each through its cut's transform) from one pass."""

    stages: list
    index: list
    transforms: list

    def __call__(self, x: torch.Tensor):
        for j, h in _at_cuts(self.stages, x, self.index):
            yield j, self.transforms[j](h)


@torch.no_grad()
def _misclassified(models: list[StitchedModel], bottoms: _BottomAtCuts, split_: Split, dataset: Dataset,
                   device) -> list[torch.Tensor]:
    """Which test images every stitched model (in eval mode) gets wrong, the bottom run once per batch."""
    for model in models:
        model.eval()
    wrong = [[] for _ in models]
    for x, y in DeviceLoader(split_, dataset.mean, dataset.std, batch_size=500, device=device):
        for j, h in bottoms(as_nhwc(x)):
            wrong[j].append((models[j].top(models[j].stitcher(h)).argmax(1) != y).cpu())
    return [torch.cat(w) for w in wrong]


def _first(split_: Split, n: int) -> Split:
    return Split(split_.images[:n], split_.labels[:n], split_.num_classes, split_.recipe + (("first", n),))


def _train_stitchers(models: list[StitchedModel], bottoms: _BottomAtCuts, train: Split, dataset: Dataset, *, epochs,
                     steps, lr, batch_size, seed, device, desc, progress):
    loader = DeviceLoader(train, dataset.mean, dataset.std, batch_size=batch_size, train=True, device=device, seed=seed)
    total = steps or max(1, math.ceil(epochs * len(loader)))
    steps_per_cut = []
    for model in models:
        model.train()
        opt = torch.optim.Adam(model.stitcher.parameters(), lr=lr, betas=(0.9, 0.999))
        # Every stitcher has its own loss, optimiser and schedule: the cuts never interact.
        steps_per_cut.append(cross_entropy_step(nn.Sequential(model.stitcher, model.top), opt,
                                                torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)))

    def step(x, y):
        for j, h in bottoms(as_nhwc(x)):
            steps_per_cut[j](h, y)

    run_steps(loader, total, step, desc=desc, progress=progress)

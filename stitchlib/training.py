"""Base-model training (the paper's recipe, Appendix A.2) and evaluation."""

from __future__ import annotations

import math
import types
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .data import DeviceLoader, Split
from .models import spine
from .precision import autocast, check_precision, compiled

__all__ = ["Recipe", "RECIPES", "FAST_RECIPES", "RECIPE_SETS", "resolve_device", "device_name", "train_model",
           "error_rate", "misclassified"]


def channels_last(model: nn.Module) -> nn.Module:
    """NHWC is the faster layout for these convolutions on CPU (about 1.3x at width 0.25) and
    on GPU alike; it changes no result beyond float rounding order. On the CPU, strided 1x1
    convolutions of fewer than 8 input channels subsample first (`_subsample_first`)."""
    model = model.to(memory_format=torch.channels_last)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.device.type == "cpu" and m.kernel_size == (1, 1) \
                and m.stride != (1, 1) and m.padding == (0, 0) and m.in_channels < 8 \
                and "forward" not in m.__dict__:
            # A bound method: a deepcopy of the model calls its own copy of the convolution.
            m.forward = types.MethodType(_subsample_first, m)
    return model


def _subsample_first(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A strided 1x1 convolution as what it computes: the input at every stride-th position, then
    a 1x1 convolution of stride 1. oneDNN's channels-last weight gradient of the strided one with
    fewer than 8 input channels (its jit_1x1 AVX2 kernel) corrupts the heap: "double free or
    corruption" or a segfault with one thread, a hang with two (torch 2.14.1 on an AVX2-only AMD
    EPYC; the shortcut of a ResNet at width 0.0625). The stride-1 kernel is correct."""
    return F.conv2d(x[:, :, ::conv.stride[0], ::conv.stride[1]], conv.weight, conv.bias, 1, 0, conv.dilation,
                    conv.groups)


def as_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" means CUDA when present, else CPU; anything else is taken as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available; use 'auto' or 'cpu'")
    return resolved


def device_name(device: str | torch.device) -> str:
    """The hardware's own name: the GPU model for a CUDA device, the CPU model for the CPU."""
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine() or device.type


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant", "onecycle")


@dataclass(frozen=True)
class Recipe:
    """The defaults are the paper's ResNet recipe: SGD with momentum 0.9, lr 0.05 dropped by
    0.2 at 50% and 75% of the steps, weight decay 1e-4, batch 128, random crop (pad 4) +
    flip. The paper ran 64K steps; `steps`, when given, sets the length, else `epochs` does
    (steps = epochs x batches per epoch). `RECIPES` holds each architecture's."""

    epochs: float = 30
    steps: int | None = None
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    milestones: tuple[float, float] = (0.5, 0.75)
    gamma: float = 0.2
    optimizer: str = "sgd"
    schedule: str = "step"
    # The short schedules of the fast profile (FAST_RECIPES): Nesterov momentum, label smoothing,
    # and "onecycle": a linear warm-up over the first `warmup` of the steps, then linear decay to 0.
    nesterov: bool = False
    label_smoothing: float = 0.0
    warmup: float = 0.0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {SCHEDULES}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        if self.steps is not None and not (isinstance(self.steps, int) and self.steps > 0):
            raise ValueError(f"steps must be a positive int or None, got {self.steps!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.warmup < 1:
            raise ValueError(f"label_smoothing and warmup must lie in [0, 1), got {self.label_smoothing!r} and "
                             f"{self.warmup!r}")

    def as_config(self) -> dict:
        return asdict(self)

    def build(self, model: nn.Module, total: int):
        """(optimizer, scheduler) for `total` steps."""
        # Only what trains: frozen stages (freeze training) take no weight decay either.
        params = [p for p in model.parameters() if p.requires_grad]
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                  weight_decay=self.weight_decay, nesterov=self.nesterov)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule == "step":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, [round(m * total) for m in self.milestones],
                                                         gamma=self.gamma)
        elif self.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
        elif self.schedule == "onecycle":
            rise = max(1, round(self.warmup * total))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: (step + 1) / rise if step < rise else max(0.0, (total - step) / (total - rise + 1)))
        else:
            sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
        return opt, sched


# Appendix A: ResNets (18 and 164) share the SGD step recipe. The Myrtle CNN: a constant learning
# rate ("80K gradient steps with a constant learning rate of 1"; its output layer is scaled by
# 0.125, as in Page's network). The ViT's recipe is not given (it was trained on CIFAR-5m); AdamW
# with a cosine schedule is the usual choice for ViTs trained from scratch.
RECIPES = {
    "resnet18": Recipe(),
    "preact_resnet": Recipe(),
    "myrtle": Recipe(lr=1.0, schedule="constant"),
    "vit": Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="cosine"),
}

# The fast profile's short schedules: not Appendix A's. Batch 512 (fewer, larger steps keep a GPU
# busy), a one-cycle learning rate (linear warm-up over the first 20% of the steps, then linear
# decay to zero), Nesterov momentum and label smoothing 0.1: the usual recipe for training CIFAR
# ResNets to >90% in about ten epochs (Smith & Topin 2019; Page 2018 for the Myrtle CNN). The
# peak rates follow the linear scaling rule from the paper's 0.05 at batch 128 (x4, doubled
# for the short run's warm-up); the ViT keeps AdamW with a one-cycle schedule.
FAST_RECIPES = {
    "resnet18": Recipe(lr=0.4, batch_size=512, weight_decay=5e-4, schedule="onecycle", warmup=0.2, nesterov=True,
                       label_smoothing=0.1),
    "preact_resnet": Recipe(lr=0.4, batch_size=512, weight_decay=5e-4, schedule="onecycle", warmup=0.2,
                            nesterov=True, label_smoothing=0.1),
    "myrtle": Recipe(lr=0.4, batch_size=512, weight_decay=5e-4, schedule="onecycle", warmup=0.2, nesterov=True,
                     label_smoothing=0.1),
    "vit": Recipe(optimizer="adamw", lr=1e-3, batch_size=512, weight_decay=0.05, schedule="onecycle", warmup=0.1,
                  label_smoothing=0.1),
}
RECIPE_SETS = {"appendix_a": RECIPES, "short": FAST_RECIPES}


def train_model(
    model: nn.Module,
    split: Split,
    mean,
    std,
    recipe: Recipe = Recipe(),
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    checkpoints: tuple[float, ...] = (),
    frozen: int = 0,
    frozen_top: int = 0,
    until: float | None = None,
    desc: str = "train",
    progress: bool = True,
    precision: str = "fp32",
    compile: bool = False,
) -> dict[float, dict]:
    """Train `model` in place. Returns {epoch: state_dict} for every epoch listed in
    `checkpoints` (plus the final one), copied to the CPU.

    `until`: stop after this many epochs, with the schedule still that of the whole run: the
    early checkpoints of a run whose end is already known, for a fraction of its cost.

    `frozen`: the first `frozen` stages of the model's spine (see `cut_points`) stay exactly as
    they are: no gradient, no weight decay, and BatchNorm in eval mode so that its running
    statistics do not move either (freeze training, Appendix B.4). `frozen_top`: the same for the
    last `frozen_top` stages (the classifier among them), the top layers Appendix B.4 also freezes.

    `precision`: "fp32", or "bf16" for bfloat16 autocast (`stitchlib.precision`). `compile`: run
    the training forward through `torch.compile` (falls back to eager, with a warning, where it
    cannot compile)."""
    device = resolve_device(device)
    check_precision(precision, device)
    channels_last(model.to(device)).train()
    for name, n in (("frozen", frozen), ("frozen_top", frozen_top)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a number of stages >= 0, got {n!r}")
    stages = spine(model) if frozen or frozen_top else []  # any nn.Module trains; only freezing needs a spine
    if frozen + frozen_top >= max(len(stages), 1):
        raise ValueError(f"frozen={frozen} and frozen_top={frozen_top}, but the model has {len(stages)} stages and "
                         f"at least one must train; valid: frozen + frozen_top from 0 to {len(stages) - 1}")
    held_stages = stages[:frozen] + stages[len(stages) - frozen_top:] if frozen_top else stages[:frozen]
    held = [p for stage in held_stages for p in stage.parameters()]
    was_trainable = [p.requires_grad for p in held]
    for stage in held_stages:
        stage.eval().requires_grad_(False)
    loader = DeviceLoader(split, mean, std, batch_size=recipe.batch_size, train=True, device=device, seed=seed)
    total = recipe.steps or max(1, math.ceil(recipe.epochs * len(loader)))
    length = total / len(loader)
    bad = [c for c in checkpoints if not 0 < c <= length + 1e-9]
    if bad:
        raise ValueError(f"checkpoint epochs {bad} lie outside the run's length (0, {length:g}] epochs")
    wanted = {min(total, max(1, round(c * len(loader)))): c for c in checkpoints}
    wanted[total] = recipe.epochs if recipe.steps is None else length
    if until is not None and not 0 < until <= length + 1e-9:
        raise ValueError(f"until={until!r} lies outside the run's length (0, {length:g}] epochs")
    stop = total if until is None else min(total, max(1, round(until * len(loader))))
    opt, sched = recipe.build(model, total)
    saved: dict[float, dict] = {}

    def checkpoint(step: int) -> None:
        if step in wanted:
            saved[wanted[step]] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    try:
        with autocast(device, precision):
            run_steps(loader, stop, cross_entropy_step(compiled(model, compile), opt, sched, recipe.label_smoothing),
                      desc=desc, progress=progress, after_step=checkpoint)
    finally:
        for p, flag in zip(held, was_trainable):
            p.requires_grad_(flag)
    model.eval()
    return saved


def run_steps(loader: DeviceLoader, total: int, step, *, desc: str, progress: bool, after_step=None) -> None:
    """`step(x, y)` for `total` batches of `loader`, as many epochs as that takes."""
    done = 0
    with tqdm(total=total, desc=desc, leave=False, disable=not progress) as bar:
        while done < total:
            for x, y in loader:
                step(x, y)
                done += 1
                bar.update()
                if after_step is not None:
                    after_step(done)
                if done >= total:
                    return


def cross_entropy_step(model: nn.Module, opt, sched, label_smoothing: float = 0.0):
    """One SGD-style step of `model` on a batch: the loss of ordinary training."""

    def step(x, y):
        # The loss in float32 even under bfloat16 autocast: the logits are few, the sum is not.
        loss = nn.functional.cross_entropy(model(as_nhwc(x)).float(), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    return step


@torch.no_grad()
def misclassified(model: nn.Module, split: Split, mean, std, *, device="auto", batch_size: int = 500,
                  precision: str = "fp32") -> torch.Tensor:
    """Which images of `split` `model` (put in eval mode) gets wrong: a bool tensor on the CPU, in
    the split's order. Per-image results let errors of different models on the same images be
    compared pairwise and resampled together (see `stitchlib.statistics`)."""
    device = resolve_device(device)
    channels_last(model.to(device)).eval()
    with autocast(device, precision):
        return torch.cat([(model(as_nhwc(x)).argmax(1) != y).cpu()
                          for x, y in DeviceLoader(split, mean, std, batch_size=batch_size, device=device)])


def error_rate(model: nn.Module, split: Split, mean, std, *, device="auto", batch_size: int = 500,
               precision: str = "fp32") -> float:
    """Top-1 error in percent of `model` (put in eval mode) on `split`."""
    return percent(misclassified(model, split, mean, std, device=device, batch_size=batch_size, precision=precision))


def percent(wrong: torch.Tensor) -> float:
    """Error in percent from per-image correctness."""
    return 100.0 * wrong.sum().item() / len(wrong)

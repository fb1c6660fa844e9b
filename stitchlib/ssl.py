"""SimCLR (Chen et al. 2020) for the CIFAR models: two augmented views of every image, a projection
head, the NT-Xent loss; then a linear classifier on the frozen features, so that no layer but the
last ever sees a label (the paper's "SSS" networks, Section 5).

The augmentations run on the training device, vectorised over the batch, with their randomness
drawn on the CPU from a seeded generator, so a seed gives the same views on every device.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .data import DeviceLoader, Split, _generator
from .models import split as split_model
from .training import Recipe, as_nhwc, channels_last, resolve_device
from .precision import autocast, check_precision

__all__ = ["simclr_recipe", "simclr_views", "nt_xent", "train_simclr"]

# Luma weights (ITU-R 601) and the RGB <-> YIQ pair: a hue shift is a rotation of the I-Q plane.
_LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def simclr_recipe(epochs: float, batch_size: int = 256) -> Recipe:
    """SimCLR's usual CIFAR recipe: SGD with momentum 0.9, lr 0.06 x batch / 256, weight decay
    5e-4, a cosine schedule (with temperature 0.5 and a 2-layer projection head to 128 dims)."""
    return Recipe(epochs=epochs, lr=0.06 * batch_size / 256, weight_decay=5e-4, batch_size=batch_size,
                  schedule="cosine")


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def simclr_views(x: torch.Tensor, g: torch.Generator, *, min_scale: float = 0.2, ratio=(3 / 4, 4 / 3),
                 jitter: float = 0.4,
                 hue: float = 0.1, p_jitter: float = 0.8, p_gray: float = 0.2) -> torch.Tensor:
    """One augmented view of images `x` in [0, 1] (B, C, H, W): a random resized crop (area
    fraction in [min_scale, 1], aspect ratio in `ratio`) with a horizontal flip, then with
    probability p_jitter a colour jitter (brightness, contrast, saturation by a factor in
    [1 - jitter, 1 + jitter], hue by up to `hue` of a turn), and with probability p_gray
    grayscale. Colour steps are skipped for one-channel images."""
    b, c, _, _ = x.shape
    dev = x.device

    def uniform(lo, hi, *shape):
        return (torch.rand(*shape, generator=g) * (hi - lo) + lo).to(dev)

    area = uniform(min_scale, 1.0, b)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1]), b))
    w, h = torch.sqrt(area * aspect).clamp(max=1.0), torch.sqrt(area / aspect).clamp(max=1.0)
    cx, cy = (uniform(-1, 1, b) * (1 - w)), (uniform(-1, 1, b) * (1 - h))
    flip = torch.where(uniform(0, 1, b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    # One affine grid per image does crop, resize and flip for the whole batch.
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear",
                      padding_mode="reflection", align_corners=False)
    if c != 3:
        return x
    do_jitter = (uniform(0, 1, b) < p_jitter).view(b, 1, 1, 1)
    bright, contrast, sat = (uniform(1 - jitter, 1 + jitter, b).view(b, 1, 1, 1) for _ in range(3))
    angle = uniform(-hue, hue, b) * 2 * math.pi
    y = (x * bright).clamp(0, 1)
    mean = _gray(y).mean((2, 3), keepdim=True)
    y = ((y - mean) * contrast + mean).clamp(0, 1)
    gray = _gray(y)
    y = ((y - gray) * sat + gray).clamp(0, 1)
    to_yiq = _RGB2YIQ.to(dev)
    rot = torch.zeros(b, 3, 3, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    mix = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # per-image 3 x 3 hue rotation in RGB
    y = torch.einsum("bij,bjhw->bihw", mix, y).clamp(0, 1)
    x = torch.where(do_jitter, y, x)
    do_gray = (uniform(0, 1, b) < p_gray).view(b, 1, 1, 1)
    return torch.where(do_gray, _gray(x).expand(-1, 3, -1, -1), x)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The normalised-temperature cross entropy: each view's positive is the other view of the
    same image, its negatives the 2B - 2 other views in the batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def train_simclr(model: nn.Module, train: Split, mean, std, *, epochs: float, batch_size: int = 256,
                 temperature: float = 0.5, projection_dim: int = 128, seed: int = 0, device="auto",
                 progress: bool = True, precision: str = "fp32") -> list[float]:
    """Train `model`'s layers up to its pooled features with SimCLR, in place (its classifier is
    left as it was). Returns the mean loss of every epoch. `precision`: "fp32", or "bf16" for
    bfloat16 autocast (the loss itself in float32)."""
    device = resolve_device(device)
    check_precision(precision, device)
    channels_last(model.to(device)).train()
    encoder, _ = split_model(model, "pool")
    dim = encoder(torch.zeros(2, *train.images.shape[1:], device=device)).shape[1]
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, projection_dim)).to(device)
    recipe = simclr_recipe(epochs, batch_size)
    # Shuffled [0, 1] images (mean 0, std 1); the views are normalised with the data's statistics.
    loader = DeviceLoader(train, (0.0,) * len(mean), (1.0,) * len(std), batch_size=batch_size, train=True,
                          augment=False, device=device, seed=seed)
    norm = [torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in (mean, std)]
    total = max(1, math.ceil(epochs * len(loader)))
    opt, sched = recipe.build(nn.ModuleList([encoder, head]), total)
    g = _generator(seed + 10_000)
    losses, step = [], 0
    with tqdm(total=total, desc="SimCLR", leave=False, disable=not progress) as bar:
        while step < total:
            epoch_losses = []
            for x, _ in loader:
                v1, v2 = ((simclr_views(x, g) - norm[0]) / norm[1] for _ in range(2))
                with autocast(device, precision):
                    z1, z2 = head(encoder(as_nhwc(v1))), head(encoder(as_nhwc(v2)))
                loss = nt_xent(z1.float(), z2.float(), temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                epoch_losses.append(loss.detach())  # no .item() per step: it would wait for the GPU
                step += 1
                bar.update()
                if step >= total:
                    break
            losses.append(torch.stack(epoch_losses).mean().item())
    model.eval()
    return losses

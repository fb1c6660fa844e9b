"""Models with an ordered catalogue of cut points, and `split` at any of them.

Every model here is a *spine*: an ordered list of named stages whose composition is the
model's forward pass. A cut point sits after a stage, so `split` only ever slices the
spine and ``top(bottom(x))`` is the same computation as ``model(x)``, bit for bit.
(The stage after the last cut point is the classifier head; it is never a cut.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["CutPoint", "ARCHITECTURES", "build_model", "cut_points", "split", "spine"]


@dataclass(frozen=True)
class CutPoint:
    """Where a network can be cut: after the stage `name`.

    `channels` is the width of the representation there; `reduction` the spatial
    down-sampling factor relative to the input (None for a pooled vector);
    `kind` is "map" for (B, C, H, W) feature maps and "vector" for (B, C).
    """

    index: int
    name: str
    channels: int
    reduction: int | None
    kind: str


class Segment(nn.Sequential):
    """A contiguous run of spine stages; shares (does not copy) the model's modules."""


class SpineModel(nn.Module):
    """Base class: subclasses fill `self.stages` (an nn.ModuleDict in forward order) and
    `self._cuts` (one CutPoint per stage except the last)."""

    stages: nn.ModuleDict
    _cuts: list[CutPoint]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return x

    def cut_points(self) -> list[CutPoint]:
        return list(self._cuts)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class ResNet18(SpineModel):
    """The CIFAR ResNet-18 of the paper (3x3 stem, no max-pool), first layer 64 x `width`.

    Cut points: after the stem, after each of the 8 residual blocks, after global pooling.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        _check_positive("width", width)
        _check_positive("num_classes", num_classes)
        _check_positive("in_channels", in_channels)
        self.width, self.num_classes, self.in_channels = width, num_classes, in_channels
        base = max(1, round(64 * width))
        stages: dict[str, nn.Module] = {
            "stem": nn.Sequential(nn.Conv2d(in_channels, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU())
        }
        cuts = [("stem", base, 1, "map")]
        c_in = base
        for layer, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], start=1):
            c_out = base * mult
            for block in range(2):
                name = f"layer{layer}.{block}"
                stages[name] = BasicBlock(c_in, c_out, stride if block == 0 else 1)
                c_in = c_out
                cuts.append((name, c_out, 2 ** (layer - 1), "map"))
        stages["pool"] = GlobalPool()
        cuts.append(("pool", c_in, None, "vector"))
        stages["fc"] = nn.Linear(c_in, num_classes)
        # ModuleDict keys cannot contain dots; the cut names keep the familiar "layer1.0" form.
        self.stages = nn.ModuleDict({k.replace(".", "_"): v for k, v in stages.items()})
        self._cuts = [CutPoint(i, n, c, r, k) for i, (n, c, r, k) in enumerate(cuts)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _check_positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


ARCHITECTURES = {"resnet18": ResNet18}


def build_model(arch: str, *, seed: int, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> SpineModel:
    """A freshly initialised network whose weights depend on `seed` alone.

    The seed drives a private generator state, so building a model never disturbs (or
    depends on) the caller's global random state.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {sorted(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[arch](width=width, num_classes=num_classes, in_channels=in_channels)


def cut_points(model: nn.Module) -> list[CutPoint]:
    """The ordered cut points of `model`."""
    if isinstance(model, SpineModel):
        return model.cut_points()
    raise TypeError(
        f"{type(model).__name__} has no cut-point catalogue; stitchlib models ({sorted(ARCHITECTURES)}) do"
    )


def spine(model: nn.Module) -> list[nn.Module]:
    """The model's stages in order: stage i ends at cut point i; the last one is the head."""
    if isinstance(model, SpineModel):
        return list(model.stages.values())
    cut_points(model)  # raises the informative error
    raise AssertionError("unreachable")


def resolve_cut(model: nn.Module, at: int | str | CutPoint) -> CutPoint:
    """Forgiving cut resolution in timm's style: an index (negative counts from the end),
    a cut point's name, or a CutPoint. Anything else lists the valid cut points."""
    cuts = cut_points(model)
    if isinstance(at, CutPoint):
        at = at.name
    if isinstance(at, bool) or not isinstance(at, (int, str)):
        raise TypeError(f"cut point must be an int index or a name, got {type(at).__name__}")
    if isinstance(at, int) and -len(cuts) <= at < len(cuts):
        return cuts[at]
    if isinstance(at, str):
        for cut in cuts:
            if cut.name == at:
                return cut
    listing = ", ".join(f"{c.index}={c.name}" for c in cuts)
    raise ValueError(
        f"no cut point {at!r} in {type(model).__name__}; valid cut points are indices "
        f"{-len(cuts)}..{len(cuts) - 1} or names: {listing}"
    )


def split(model: nn.Module, at: int | str | CutPoint) -> tuple[Segment, Segment]:
    """(bottom, top) with ``top(bottom(x)) == model(x)``: bottom runs the stages up to and
    including cut point `at`, top the rest. Both share the model's modules."""
    cut = resolve_cut(model, at)
    stages = spine(model)
    return Segment(*stages[: cut.index + 1]), Segment(*stages[cut.index + 1 :])

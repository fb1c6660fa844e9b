"""Models with an ordered catalogue of cut points, and `split` at any of them.

Every model here is a *spine*: an ordered list of named stages whose composition is the
model's forward pass. A cut point sits after a stage, so `split` only ever slices the
spine and ``top(bottom(x))`` is the same computation as ``model(x)``, bit for bit.
(The stage after the last cut point is the classifier head; it is never a cut.)

Where the spine comes from: stitchlib's own models declare it; torchvision and timm ResNets and
timm ViTs have a catalogue here (their blocks, as in timm's `feature_info`); `define_spine`
declares one by hand; any other model is traced with torch.fx (`stitchlib.tracing`), and
`trace_spine` asks for the traced one even where a catalogue exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["CutPoint", "ARCHITECTURES", "build_model", "cut_points", "split", "spine", "define_spine",
           "trace_spine"]


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
    """Base class: subclasses call `_set_spine` with their stages in forward order and one
    cut point per stage except the last."""

    stages: nn.ModuleDict
    _cuts: list[CutPoint]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return x

    def cut_points(self) -> list[CutPoint]:
        return list(self._cuts)

    def _set_spine(self, stages: dict[str, nn.Module], cuts: list[tuple], *, kaiming: bool = False) -> None:
        """Register `stages` in order and the cut after each (name, channels, reduction, kind)."""
        # ModuleDict keys cannot contain dots; the cut names keep the familiar "layer1.0" form.
        self.stages = nn.ModuleDict({k.replace(".", "_"): v for k, v in stages.items()})
        self._cuts = [CutPoint(i, *cut) for i, cut in enumerate(cuts)]
        if kaiming:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


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
        self._set_spine(stages, cuts, kaiming=True)


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 with an identity (or projected) shortcut
    (He et al. 2016, "Identity Mappings in Deep Residual Networks")."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * self.expansion
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, width, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(width), nn.Conv2d(width, c_out, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        # The projection reads the pre-activated input, as in the paper's pre-activation design.
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + skip


class PreActResNet(SpineModel):
    """The deep pre-activation bottleneck ResNet of CIFAR (ResNet-164 at depth 164), any
    depth = 9n + 2: three stages of n bottleneck blocks, 16 x `width` channels at the stem.

    Cut points: after the stem, after every residual block, after the final BN-ReLU and pooling.
    """

    def __init__(self, depth: int = 164, width: float = 1.0, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if not (isinstance(depth, int) and depth >= 11 and (depth - 2) % 9 == 0):
            raise ValueError(f"depth must be 9n + 2 with n >= 1 (11, 20, 29, ..., 164), got {depth!r}")
        _check_positive("width", width)
        n = (depth - 2) // 9
        base = max(1, round(16 * width))
        stages: dict[str, nn.Module] = {"stem": nn.Conv2d(in_channels, base, 3, 1, 1, bias=False)}
        cuts = [("stem", base, 1, "map")]
        c_in = base
        for stage, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2)], start=1):
            for block in range(n):
                stages[f"stage{stage}.{block}"] = PreActBottleneck(c_in, base * mult, stride if block == 0 else 1)
                c_in = base * mult * PreActBottleneck.expansion
                cuts.append((f"stage{stage}.{block}", c_in, 2 ** (stage - 1), "map"))
        stages["pool"] = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), GlobalPool())
        cuts.append(("pool", c_in, None, "vector"))
        stages["fc"] = nn.Linear(c_in, num_classes)
        self.depth, self.width = depth, width
        self._set_spine(stages, cuts, kaiming=True)


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"{self.factor}"


class MyrtleCNN(SpineModel):
    """The Myrtle CNN (Page, 2018): four Conv3x3-BatchNorm-ReLU layers of 64, 128, 256, 512 x
    `width` channels, each followed by 2 x 2 max pooling, global max pooling, and a fully
    connected output layer scaled by 0.125 as in Page's network.

    Two readings exist. `pool_first=True` (the default) is the paper's text (Appendix A: "four
    Conv-BatchNorm-ReLU-MaxPool layers"): every layer pools, 32 -> 16 -> 8 -> 4 -> 2. Page's own
    network does not pool after its first ("prep") layer: `pool_first=False` gives that one,
    32 -> 32 -> 16 -> 8 -> 4, at four times the first layers' cost.

    Cut points: after each of the four layers and after pooling.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3, pool_first: bool = True):
        super().__init__()
        _check_positive("width", width)
        if not isinstance(pool_first, bool):
            raise ValueError(f"pool_first must be True (the paper's text: every layer pools) or False (Page's "
                             f"network: the first layer does not), got {pool_first!r}")
        stages: dict[str, nn.Module] = {}
        cuts = []
        c_in, reduction = in_channels, 1
        for i, mult in enumerate([1, 2, 4, 8], start=1):
            c_out = max(1, round(64 * width)) * mult
            pool = i > 1 or pool_first
            reduction *= 2 if pool else 1
            stages[f"layer{i}"] = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                                                nn.ReLU(), *([nn.MaxPool2d(2)] if pool else []))
            cuts.append((f"layer{i}", c_out, reduction, "map"))
            c_in = c_out
        stages["pool"] = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1))
        cuts.append(("pool", c_in, None, "vector"))
        stages["fc"] = nn.Sequential(nn.Linear(c_in, num_classes, bias=False), Scale(0.125))
        self.width = width
        self._set_spine(stages, cuts)


def _check_positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def vit(width: float = 1.0, num_classes: int = 10, in_channels: int = 3, depth: int = 12, img_size: int = 32,
        patch_size: int = 4) -> nn.Module:
    """timm's Vision Transformer adapted to CIFAR: 32 x 32 inputs, patch 4 (64 tokens + class
    token). At width 1: embed dim 768, 12 heads, depth 12 (the paper's). The embed dim scales
    with `width` in steps of one 64-dim head. Cut between transformer blocks."""
    import timm

    _check_positive("width", width)
    if not (isinstance(depth, int) and depth >= 2):
        raise ValueError(f"depth must be an int >= 2 (a cut needs a block on each side), got {depth!r}")
    heads = max(1, round(12 * width))
    return timm.models.VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_channels,
                                         num_classes=num_classes, embed_dim=64 * heads, depth=depth,
                                         num_heads=heads)


ARCHITECTURES = {"resnet18": ResNet18, "preact_resnet": PreActResNet, "myrtle": MyrtleCNN, "vit": vit}


def build_model(arch: str, *, seed: int, width: float = 1.0, num_classes: int = 10, in_channels: int = 3,
                **options) -> SpineModel:
    """A freshly initialised network whose weights depend on `seed` alone. `options` go to the
    architecture (e.g. ``depth=164`` for "preact_resnet").

    The seed drives a private generator state, so building a model never disturbs (or
    depends on) the caller's global random state.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {sorted(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[arch](width=width, num_classes=num_classes, in_channels=in_channels, **options)


class Call(nn.Module):
    """A stage that calls a bound method of the wrapped model (e.g. timm's ``_pos_embed``)."""

    def __init__(self, fn, name: str, **kwargs):
        super().__init__()
        self.fn, self.name, self.kwargs = fn, name, kwargs

    def forward(self, x):
        return self.fn(x, **self.kwargs)

    def extra_repr(self) -> str:
        return self.name


class FlattenInto(nn.Module):
    """Runs `module` on x flattened to (B, -1) when x has more than 2 dims: the reshape a
    forward() typically does between pooling and the classifier."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(torch.flatten(x, 1) if x.dim() > 2 else x)


@dataclass
class Spine:
    """A model as an ordered list of stages; stage i ends at cut point i, the last is the head."""

    stages: list[nn.Module]
    cuts: list[CutPoint]


_SPINE_ATTR = "_stitchlib_spine"


def _measure_cuts(model: nn.Module, names: list[str], stages: list[nn.Module], example: torch.Tensor):
    """Channels, reduction and kind of every cut, read off one eval-mode forward pass."""
    cuts, h, size = [], example, example.shape[-1]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, (name, stage) in enumerate(zip(names, stages[:-1])):
                h = stage(h)
                if h.dim() == 4:
                    cuts.append(CutPoint(i, name, h.shape[1], max(1, round(size / h.shape[-1])), "map"))
                else:
                    cuts.append(CutPoint(i, name, h.shape[-1], None, "tokens" if h.dim() == 3 else "vector"))
    finally:
        model.train(was_training)
    return cuts


def _torchvision_resnet_spine(model) -> Spine:
    names, stages = ["stem"], [Segment(model.conv1, model.bn1, model.relu, model.maxpool)]
    for layer in range(1, 5):
        for i, block in enumerate(getattr(model, f"layer{layer}")):
            names.append(f"layer{layer}.{i}")
            stages.append(block)
    names.append("pool")
    stages += [Segment(model.avgpool, nn.Flatten(1)), model.fc]
    example = torch.zeros(1, model.conv1.in_channels, 64, 64)
    return Spine(stages, _measure_cuts(model, names, stages, example))


def _timm_spine(model) -> Spine:
    """timm ResNets and ViTs, cut where their own `feature_info` says, plus the pooled features."""
    family = type(model).__name__
    info = [f["module"] for f in model.feature_info]
    if family == "ResNet" and info[:2] == ["act1", "layer1"]:
        stages = [Segment(model.conv1, model.bn1, model.act1), Segment(model.maxpool, model.layer1)]
        stages += [getattr(model, m) for m in info[2:]]
        stages += [Call(model.forward_head, "forward_head", pre_logits=True), model.fc]
        example = torch.zeros(1, model.conv1.in_channels, 64, 64)
    elif family == "VisionTransformer":
        embed = Segment(model.patch_embed, Call(model._pos_embed, "_pos_embed"), model.patch_drop, model.norm_pre)
        blocks = list(model.blocks)
        # Bound methods, not closures: a deepcopy of the model then calls its own copy.
        head_in = Call(model.forward_head, "forward_head", pre_logits=True)
        stages = [Segment(embed, blocks[0]), *blocks[1:], Segment(model.norm, head_in), model.head]
        size = model.patch_embed.img_size
        example = torch.zeros(1, model.patch_embed.proj.in_channels, *size)
    else:
        raise TypeError(f"timm {family} has no spine recipe here (timm ResNets and VisionTransformers do); "
                        "declare its sequential spine with stitchlib.define_spine(model, names, example)")
    names = info + ["pool"]
    return Spine(stages, _measure_cuts(model, names, stages, example))


def define_spine(model: nn.Module, names: list[str], example: torch.Tensor) -> nn.Module:
    """Declare that running the submodules `names` in order is `model`'s forward pass.

    Cut points then sit after each of them but the last. `example` is one input batch: the
    composition must reproduce ``model(example)`` (checked in eval mode), and each cut's
    shape is measured on it. A flatten is inserted before a Linear stage that receives
    more than 2 dims, as forward() methods usually do there. Returns `model`, now usable
    with `cut_points`, `split` and `stitch`.
    """
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or n == ""]
    if unknown:
        shallow = [n for n in modules if n and n.count(".") <= 1]
        raise ValueError(f"{unknown} are not submodules of {type(model).__name__}; give module names as in "
                         f"named_modules() (not state_dict keys), e.g. {shallow[:40]}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    nested = [(a, b) for a in names for b in names if a != b and b.startswith(a + ".")]
    if repeated or nested:
        raise ValueError(f"the spine repeats a module: {repeated or nested} (each module once, none inside another)")
    covered = {id(p) for n in names for p in modules[n].parameters()}
    skipped = sorted({k.rsplit(".", 1)[0] for k, p in model.named_parameters() if id(p) not in covered})
    if skipped:
        raise ValueError(f"the spine skips modules that hold parameters: {skipped}")
    stages = [FlattenInto(modules[n]) if isinstance(modules[n], nn.Linear) else modules[n] for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want, got = model(example), example
            for i, (name, stage) in enumerate(zip(names, stages)):
                try:
                    got = stage(got)
                except Exception as exc:  # the composition broke inside a stage: say which
                    raise ValueError(
                        f"running {names} in order does not reproduce {type(model).__name__}(x): stage {i} "
                        f"{name!r} fails on the output of {names[i - 1] if i else 'the input'!r} (shape "
                        f"{tuple(got.shape)}): {type(exc).__name__}: {exc}. forward() does something between "
                        "these modules that the spine lacks (a functional op such as F.avg_pool2d, a view); "
                        "leave the spine undeclared and cut_points(model) traces it, or wrap that op in a "
                        "module") from exc
    finally:
        model.train(was_training)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
        diff = (got - want).abs().max().item() if got.shape == want.shape else f"shape {tuple(got.shape)}"
        raise ValueError(f"running {names} in order does not reproduce {type(model).__name__}(x) (difference "
                         f"{diff}); check the order, and that forward() does nothing else between these modules")
    model.__dict__[_SPINE_ATTR] = Spine(stages, _measure_cuts(model, names, stages, example))
    return model


def _spine(model: nn.Module) -> Spine:
    if isinstance(model, SpineModel):
        return Spine(list(model.stages.values()), model.cut_points())
    # Kept outside nn.Module's registry (via __dict__) so the state_dict is unchanged.
    cached = model.__dict__.get(_SPINE_ATTR)
    if cached is not None:
        return cached
    module = type(model).__module__
    if module.startswith("torchvision.models") and type(model).__name__ == "ResNet":
        found = _torchvision_resnet_spine(model)
    elif module.startswith("timm.") and hasattr(model, "feature_info") and \
            type(model).__name__ in ("ResNet", "VisionTransformer"):
        found = _timm_spine(model)
    else:
        # No catalogue: the cut points of its torch.fx graph (an UntraceableModelError, a TypeError
        # pointing to define_spine, where it cannot be traced).
        from .tracing import traced_spine

        found = traced_spine(model)
    model.__dict__[_SPINE_ATTR] = found
    return found


def trace_spine(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """Use the cut points of `model`'s torch.fx graph (`stitchlib.tracing`), even where a
    catalogue exists: every node through which all information flows, named as
    torchvision's `get_graph_node_names` names it. `example` is an input batch to measure the
    cuts' shapes on (default: one image of zeros at the model's stated input size, else 32, 64 or 224 pixels).
    Models without a catalogue get this by default. Returns `model`."""
    from .tracing import traced_spine

    model.__dict__[_SPINE_ATTR] = traced_spine(model, example)
    return model


def cut_points(model: nn.Module) -> list[CutPoint]:
    """The ordered cut points of `model`: its catalogue (stitchlib's models, torchvision and
    timm ResNets, timm ViTs), its declared spine (`define_spine`), else its traced graph's."""
    return list(_spine(model).cuts)


def spine(model: nn.Module) -> list[nn.Module]:
    """The model's stages in order: stage i ends at cut point i; the last one is the head."""
    return list(_spine(model).stages)


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

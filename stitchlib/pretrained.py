"""ImageNet ResNet-50s of Fig. 2B: the supervised torchvision model, VISSL's SimCLR and SwAV, and
DINO, all mapped onto one torchvision ResNet-50, and ImageNet validation images from a folder.

Weights come from a local file or, when online, from the public address (saved into the weights
folder first). Every file is read with ``torch.load(..., weights_only=True)``: a checkpoint that
needs arbitrary unpickling is refused, with the reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
import torchvision

from . import locations
from .data import DataNotFoundError, Dataset, Split, _decode_rgb, _download, _short, data_sha256

__all__ = ["IMAGENET_WEIGHTS", "LAYOUTS", "WeightsNotFoundError", "load_resnet50", "resnet50_state_dict",
           "detect_layout", "weights_dir", "load_imagenet_folder"]

LAYOUTS = ("torchvision", "vissl", "dino")


@dataclass(frozen=True)
class Weights:
    url: str
    layout: str
    file: str
    note: str


IMAGENET_WEIGHTS = {
    "supervised": Weights("https://download.pytorch.org/models/resnet50-0676ba61.pth", "torchvision",
                          "resnet50-0676ba61.pth", "torchvision IMAGENET1K_V1, end-to-end supervised (the paper's)"),
    "simclr": Weights("https://dl.fbaipublicfiles.com/vissl/model_zoo/simclr_rn50_800ep_simclr_8node_resnet_16_07_20"
                      ".7e8feed1/model_final_checkpoint_phase799.torch", "vissl", "vissl_simclr_rn50_800ep.torch",
                      "VISSL model zoo, SimCLR, 800 epochs (Goyal et al. 2021)"),
    "swav": Weights("https://dl.fbaipublicfiles.com/vissl/model_zoo/swav_in1k_rn50_800ep_swav_8node_resnet_27_07_20"
                    ".a0a6b676/model_final_checkpoint_phase799.torch", "vissl", "vissl_swav_rn50_800ep.torch",
                    "VISSL model zoo, SwAV, 800 epochs (Goyal et al. 2021)"),
    "dino": Weights("https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth", "dino",
                    "dino_resnet50_pretrain.pth", "DINO ResNet-50 backbone (Caron et al. 2021)"),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFoundError(FileNotFoundError):
    """No local file and no way to download it; the message says where to put it."""


def weights_dir() -> pathlib.Path:
    """``$STITCHLIB_WEIGHTS`` if set, else ``<checkout>/data/weights``, else the per-user folder
    (`stitchlib.locations`)."""
    return locations.weights_dir()


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def detect_layout(checkpoint: dict) -> str:
    """Which of LAYOUTS a loaded checkpoint is in."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    keys = list(checkpoint)
    if "classy_state_dict" in checkpoint or "model_state_dict" in checkpoint or \
            any(str(k).startswith("_feature_blocks.") for k in keys):
        return "vissl"
    if "teacher" in checkpoint or "student" in checkpoint or \
            any(str(k).startswith(("backbone.", "module.")) for k in keys):
        return "dino"
    if "conv1.weight" in checkpoint:
        return "dino" if "fc.weight" not in checkpoint else "torchvision"
    raise ValueError(f"unknown checkpoint layout (top-level keys {keys[:6]}...); valid: {list(LAYOUTS)}: torchvision "
                     "(conv1.weight ... fc.weight), vissl (classy_state_dict/base_model/model/trunk or "
                     "model_state_dict, keys _feature_blocks.*), dino (backbone state dict without fc, or a full "
                     "checkpoint with teacher/student)")


def resnet50_state_dict(checkpoint: dict, layout: str | None = None) -> dict:
    """The checkpoint's backbone as torchvision ResNet-50 keys (with fc.* only if it has a
    classifier), checked against ResNet-50's keys and shapes."""
    layout = layout or detect_layout(checkpoint)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; valid: {list(LAYOUTS)}")
    if layout == "torchvision":
        state = dict(checkpoint.get("state_dict", checkpoint))
    elif layout == "vissl":
        if "classy_state_dict" in checkpoint:
            trunk = checkpoint["classy_state_dict"]["base_model"]["model"]["trunk"]
        else:
            trunk = checkpoint.get("model_state_dict", checkpoint)
        state = _strip(trunk, "_feature_blocks.")
    else:
        state = checkpoint.get("teacher", checkpoint)
        for prefix in ("module.", "backbone."):
            if any(k.startswith(prefix) for k in state):
                state = _strip(state, prefix)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc."))}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = {k: v.shape for k, v in torchvision.models.resnet50().state_dict().items()
                if not k.endswith("num_batches_tracked")}
    backbone = {k for k in expected if not k.startswith("fc.")}
    missing = sorted(backbone - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k}: {tuple(state[k].shape)} (ResNet-50: {tuple(expected[k])})" for k in set(state) & set(expected)
                   if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        raise ValueError(f"this {layout} checkpoint does not fit torchvision's ResNet-50: "
                         f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys "
                         f"{unexpected[:4]}, {len(wrong)} wrong shapes {wrong[:3]}")
    return state


def _read(path: pathlib.Path) -> tuple[dict, str]:
    """The checkpoint and the sha256 of its bytes, from one read of the file."""
    data = path.read_bytes()
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), hashlib.sha256(data).hexdigest()
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise ValueError(f"{path} cannot be read with torch.load(weights_only=True) ({_short(err)}). Checkpoints "
                         "that pickle arbitrary objects are not loaded; extract the backbone's state dict once "
                         "(e.g. torch.save(ckpt['teacher'], ...)) from a file you trust, and give that file") from err


def load_resnet50(weights: str | os.PathLike, *, layout: str | None = None, download: bool = True):
    """A torchvision ResNet-50 (eval mode) with `weights`: a name in IMAGENET_WEIGHTS (looked for
    in `weights_dir()`, downloaded there when absent and `download`) or a path to a checkpoint
    in any of LAYOUTS. Returns (model, info): path, layout, sha256 of the file, and
    has_classifier, whether fc came with the weights (self-supervised backbones have none: use them as bottoms)."""
    if str(weights) in IMAGENET_WEIGHTS:
        known = IMAGENET_WEIGHTS[str(weights)]
        path, layout = weights_dir() / known.file, layout or known.layout
        if not path.exists():
            problems = [] if download else ["download disabled"]
            if download:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}")
                os.close(fd)
                try:
                    # Atomic: a broken download never leaves a file that looks like weights.
                    if _download(lambda: torch.hub.download_url_to_file(known.url, tmp, progress=True), problems):
                        os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
            if not path.exists():
                problem = "; ".join(problems)
                raise WeightsNotFoundError(f"no {weights} weights ({known.note}) at {path} ({problem}). Download "
                                           f"{known.url} to that path, or set STITCHLIB_WEIGHTS to the folder that "
                                           f"holds {known.file}")
    else:
        path = pathlib.Path(weights).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(f"no checkpoint at {path}; give a path or one of {sorted(IMAGENET_WEIGHTS)}")
    checkpoint, digest = _read(path)
    layout = layout or detect_layout(checkpoint)
    state = resnet50_state_dict(checkpoint, layout)
    model = torchvision.models.resnet50()
    model.load_state_dict(state, strict=False)
    return model.eval(), {"path": str(path), "layout": layout, "sha256": digest, "has_classifier": "fc.weight" in state}


def random_resnet50(seed: int) -> tuple[torchvision.models.ResNet, dict]:
    """The random control of Fig. 2B: a freshly built, untrained torchvision ResNet-50 (eval mode)
    whose weights depend on `seed` alone (every random state, CUDA's included, is left as it was).
    Returns (model, info) as `load_resnet50` does; info's sha256 is the weights' digest, so that a
    change in torchvision's initialisation never reuses results of other weights."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        model = torchvision.models.resnet50().eval()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return model, {"path": None, "layout": "torchvision", "sha256": digest.hexdigest(), "has_classifier": True}


def load_imagenet_folder(root: str | os.PathLike, samples: int, *, seed: int = 0, size: int = 224) -> Dataset:
    """`samples` ImageNet validation images from an image folder (root/<class>/<image>), resized to
    256 on the short side and centre-cropped to `size`, split in two halves: "train" (for the
    stitcher) and "test". The class folders, sorted, give the labels (1000 for ImageNet).

    The draw is stratified, at random with `seed` (the same folder, `samples` and `seed` give the
    same tensors). Each class gets ``samples // C`` images or one more (C classes); a class with
    fewer images gives all it has and the rest is spread, as evenly, over the others. Within a
    class the drawn images alternate between the halves, so a class with ``k`` images has
    ``k // 2`` or ``k - k // 2`` in each half, hence at least one in each: both halves cover every
    class. The classes with an odd count alternate which half gets their extra image, so "train"
    has exactly ``samples // 2`` images and "test" ``samples - samples // 2``. Within a half the
    images are in class order.

    Raises ValueError when a class folder has fewer than 2 images, or `samples` is not in
    ``[2 * C, number of images]``."""
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"no ImageNet folder at {root}: give the validation set as <root>/<class>/<image>")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    per_class = [[f for f in sorted((root / name).iterdir()) if f.is_file()] for name in classes]
    total = sum(map(len, per_class))
    if not classes or not total:
        raise DataNotFoundError(f"{root} has no class folders with images: expected <root>/<class>/<image> "
                                "(e.g. val/n01440764/ILSVRC2012_val_00000293.JPEG)")
    short = [(name, len(fs)) for name, fs in zip(classes, per_class) if len(fs) < 2]
    if short:
        listed = ", ".join(f"{name} ({n})" for name, n in short[:5]) + (", ..." if len(short) > 5 else "")
        raise ValueError(f"{len(short)} class folder(s) under {root} have fewer than 2 images: {listed}. Both halves "
                         "need an image of every class, so each class folder needs at least 2 images")
    num = len(classes)
    if samples < 2 * num:
        raise ValueError(f"samples={samples} cannot give both halves an image of each of the {num} classes: give "
                         f"samples >= {2 * num} (and <= {total}, the images under {root})")
    if samples > total:
        raise ValueError(f"samples must be in [{2 * num}, {total}] (2 per class, up to the images under {root}), "
                         f"got {samples}")
    gen = torch.Generator().manual_seed(seed)
    # How many of each class: fill the smallest classes first; a class with no more than its even
    # share gives all its images, the others share the rest, with the remainder to random ones.
    quota = [0] * num
    left, open_ = samples, num
    order = sorted(range(num), key=lambda c: len(per_class[c]))
    for i, c in enumerate(order):
        if len(per_class[c]) > left // open_:
            rest = order[i:]
            break
        quota[c] = len(per_class[c])
        left -= quota[c]
        open_ -= 1
    else:
        rest = []
    if rest:  # every class in rest has more than left // len(rest) images, so each can take one extra
        base, extra = divmod(left, len(rest))
        for c in rest:
            quota[c] = base
        for k in torch.randperm(len(rest), generator=gen)[:extra].tolist():
            quota[rest[k]] += 1
    assert sum(quota) == samples and all(2 <= q <= len(fs) for q, fs in zip(quota, per_class))
    halves: tuple[list, list] = ([], [])
    drawn = [torch.randperm(len(fs), generator=gen)[:q].sort().values.tolist() for fs, q in zip(per_class, quota)]
    odd = [c for c in range(num) if quota[c] % 2]
    # The odd classes alternate, in random order, which half gets their extra image; the first
    # gives it to test, so train has samples // 2 and test samples - samples // 2.
    extra_to_train = {odd[k]: n % 2 == 1 for n, k in enumerate(torch.randperm(len(odd), generator=gen).tolist())}
    for c, picks in enumerate(drawn):
        first = 0 if extra_to_train.get(c, True) else 1  # the half that gets the class's first image
        for n, j in enumerate(picks):
            halves[(first + n) % 2].append((per_class[c][j], c))
    resize = torchvision.transforms.Compose([torchvision.transforms.Resize(256),
                                             torchvision.transforms.CenterCrop(size)])
    split = dict(num_classes=num, classes=tuple(classes))
    parts = []
    for name, files in zip(("train", "test"), halves):
        images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
        labels = torch.empty(len(files), dtype=torch.int64)
        for i, (f, c) in enumerate(files):
            rgb = torch.from_numpy(np.array(_decode_rgb(f))).permute(2, 0, 1)  # a writable copy
            images[i] = resize(rgb)
            labels[i] = c
        parts.append(Split(images, labels, recipe=(("imagenet", str(root), samples, seed, "stratified", name),),
                           **split))
    train, test = parts
    identity = {"name": "imagenet", "source": f"folder:{root}", "sha256": data_sha256(train, test)}
    return Dataset("imagenet", train, test, list(classes), IMAGENET_MEAN, IMAGENET_STD, identity)

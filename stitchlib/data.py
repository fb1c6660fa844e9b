"""Datasets for stitching experiments: loading, cached decoding, label transforms, device-side batching.

``load_dataset`` returns uint8 images and int64 labels as tensors together with an ``identity``
(source and a sha256 of the exact pixels and labels) that results should record. The transforms
(``subset``, ``disjoint_subsets``, ``with_label_noise``, ``coarse_labels``) are pure and seeded and
append themselves to ``Split.recipe``. ``DeviceLoader`` keeps a split on the training device and
does crop+flip augmentation there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import pathlib
import pickle
import socket
import struct
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from . import locations

__all__ = [
    "ARCHIVE_NAME",
    "CIFAR10_CLASSES",
    "COARSE_CLASSES",
    "COARSE_OF_CIFAR10",
    "DATASETS",
    "DataNotFoundError",
    "Dataset",
    "DeviceLoader",
    "FASHION_MNIST_CLASSES",
    "Split",
    "coarse_labels",
    "crop_flip",
    "data_dir",
    "data_sha256",
    "disjoint_subsets",
    "load_dataset",
    "subset",
    "with_label_noise",
]

DATASETS = ("cifar10", "fashion_mnist")
# What planning needs to know of each dataset without loading it: split sizes, classes, image shape.
DATASET_INFO = {
    "cifar10": dict(train=50000, test=10000, num_classes=10, shape=(3, 32, 32)),
    "fashion_mnist": dict(train=60000, test=10000, num_classes=10, shape=(1, 28, 28)),
}

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
COARSE_CLASSES = ("animal", "object")
# Indexed by CIFAR-10 label. Bansal et al. (2021), App. A.2, list the animals without "bird";
# a bird is an animal, so it is 0 here.
COARSE_OF_CIFAR10 = (1, 1, 0, 0, 0, 0, 0, 0, 1, 1)

ARCHIVE_NAME = "cifar10-jpeg-q75.tar.gz"
ARCHIVE_ENV = "STITCHLIB_CIFAR10_ARCHIVE"
DATA_ENV = locations.DATA_ENV
FASHION_MNIST_ENV = "STITCHLIB_FASHION_MNIST_DIR"
# Debian's `dataset-fashion-mnist` installs the idx files here.
FASHION_MNIST_SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# The source checkout the package runs from, None for an installed copy (`stitchlib.locations`): only
# a checkout looks for the CIFAR-10 archive in <checkout>/../shared/data. Read at call time (not frozen
# into defaults) so tests can point it elsewhere.
REPO_ROOT = locations.checkout_root()

DOWNLOAD_TIMEOUT_S = 20.0
# Bump when the cache layout or the decoding changes, so old caches are ignored, not misread.
CACHE_FORMAT = 1
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
_FASHION_STEMS = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
_ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
# What a present-but-unreadable source raises; such a source is skipped with a warning, not fatal.
_SOURCE_ERRORS = (OSError, ValueError, RuntimeError, EOFError, KeyError, tarfile.TarError,
                  pickle.UnpicklingError, zlib.error)


def _short(err: BaseException) -> str:
    # Some errors (torch.load's weights_only refusal) span many lines of advice that does not apply.
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


class DataNotFoundError(FileNotFoundError):
    """No usable copy of a dataset was found; the message names every way to provide one."""


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True, eq=False)
class Split:
    """One split: uint8 images (N, C, H, W), int64 labels (N,), and the transforms that made it.

    Treat the tensors as read-only: transforms return new Splits that may share them.
    ``classes`` names labels ``0..num_classes-1`` when known (empty otherwise).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    recipe: tuple = ()
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got "
                             f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"labels must be an int64 tensor (N,), got "
                             f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if int(self.num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for {self.num_classes} classes")
        # frozen: the normalised values are set through object.__setattr__.
        object.__setattr__(self, "images", images.contiguous())
        object.__setattr__(self, "labels", labels.contiguous())
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "recipe", tuple(self.recipe))
        object.__setattr__(self, "classes", tuple(self.classes))

    def __len__(self) -> int:
        return len(self.labels)

    def _derive(self, *, images=None, labels=None, num_classes=None, classes=None, step: tuple) -> Split:
        return Split(
            images=self.images if images is None else images,
            labels=self.labels if labels is None else labels,
            num_classes=self.num_classes if num_classes is None else num_classes,
            recipe=self.recipe + (step,),
            classes=self.classes if classes is None else classes,
        )


@dataclass(eq=False)
class Dataset:
    """A loaded dataset. ``mean``/``std`` are per channel, in [0, 1] units, from the train images.

    ``identity = {"name", "source": "<kind>:<path>", "sha256"}``; see ``data_sha256`` for the digest.
    """

    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    identity: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- locations


def data_dir() -> pathlib.Path:
    """``$STITCHLIB_DATA`` if set, else ``<checkout>/data``, else the per-user folder
    (`stitchlib.locations`; independent of the cwd)."""
    return locations.data_dir()


_DEFAULT_ROOT = "<checkout>/data in a source checkout, else the per-user folder <user data dir>/data"


def _archive_candidates(root: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    out = []
    env = os.environ.get(ARCHIVE_ENV)
    if env:
        out.append(("env", pathlib.Path(env).expanduser()))
    out.append(("root", root / ARCHIVE_NAME))
    if REPO_ROOT is not None:
        out.append(("shared", locations.shared_data_dir(REPO_ROOT) / ARCHIVE_NAME))
    return out


# --------------------------------------------------------------------------- sources


@dataclass
class _Source:
    kind: str                      # "torchvision" | "imagefolder" | "archive" | "idx"
    path: pathlib.Path
    files: list[pathlib.Path]      # whose size and mtime key the cache
    build: Callable[[], dict]      # -> {"train_images", ..., "classes"}

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.path}"


def _fingerprint(source: _Source) -> list:
    out = []
    for f in source.files:
        st = f.stat()
        out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


def _hwc_to_chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()


def _arrays(train_images, train_labels, test_images, test_labels, classes) -> dict:
    return {
        "train_images": train_images.contiguous(),
        "train_labels": torch.as_tensor(train_labels, dtype=torch.int64).contiguous(),
        "test_images": test_images.contiguous(),
        "test_labels": torch.as_tensor(test_labels, dtype=torch.int64).contiguous(),
        "classes": list(classes),
    }


def _check_cifar_classes(classes: Sequence[str], where: str) -> None:
    if tuple(classes) != CIFAR10_CLASSES:
        raise ValueError(f"{where}: classes {sorted(classes)} are not the 10 CIFAR-10 classes "
                         f"{list(CIFAR10_CLASSES)}")


def _torchvision_cifar10_source(root: pathlib.Path) -> _Source | None:
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir():
        return None
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]

    def build() -> dict:
        import torchvision

        parts = [torchvision.datasets.CIFAR10(str(root), train=t, download=False) for t in (True, False)]
        _check_cifar_classes(parts[0].classes, str(folder))
        return _arrays(_hwc_to_chw(parts[0].data), parts[0].targets,
                       _hwc_to_chw(parts[1].data), parts[1].targets, parts[0].classes)

    return _Source("torchvision", folder, [folder / n for n in names if (folder / n).exists()], build)


def _decode_rgb(data: bytes | pathlib.Path) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        return np.asarray(im.convert("RGB"))


def _stack_split(items: dict, classes: Sequence[str], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """items: {(class, filename): HWC array} -> images in (class, filename) order, labels."""
    if not items:
        raise ValueError(f"{where}: no images")
    index = {c: i for i, c in enumerate(classes)}
    keys = sorted(items, key=lambda k: (index[k[0]], k[1]))
    shapes = {items[k].shape for k in keys}
    if len(shapes) != 1:
        raise ValueError(f"{where}: images differ in size/channels: {sorted(shapes)}")
    images = _hwc_to_chw(np.stack([items[k] for k in keys]))
    labels = torch.tensor([index[k[0]] for k in keys], dtype=torch.int64)
    return images, labels


def _imagefolder_source(root: pathlib.Path) -> _Source | None:
    folder = root / "cifar10"
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        return None
    files = {}
    for split in ("train", "test"):
        for cdir in sorted(p for p in (folder / split).iterdir() if p.is_dir()):
            files[(split, cdir.name)] = sorted(
                p for p in cdir.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES)

    def build() -> dict:
        out = {}
        for split in ("train", "test"):
            classes = sorted(c for s, c in files if s == split)
            _check_cifar_classes(classes, str(folder / split))
            items = {(c, p.name): _decode_rgb(p)
                     for (s, c), paths in files.items() if s == split for p in paths}
            out[split] = _stack_split(items, CIFAR10_CLASSES, str(folder / split))
        return _arrays(*out["train"], *out["test"], CIFAR10_CLASSES)

    return _Source("imagefolder", folder, [p for paths in files.values() for p in paths], build)


def _decode_archive(path: pathlib.Path) -> dict:
    """Decode every train/test image of the JPEG archive, whatever folder prefix it has."""
    items: dict[str, dict] = {"train": {}, "test": {}}
    prefixes = set()
    with tarfile.open(path, "r:*") as tar:
        # Iterating members streams the gzip once; getmember/extractfile by name would rescan it.
        for member in tar:
            if not member.isfile():
                continue
            parts = pathlib.PurePosixPath(member.name).parts
            if len(parts) < 3 or parts[-1].startswith("."):
                continue  # also skips macOS "._*" resource forks
            split, cls, fname = parts[-3:]
            if split not in items or pathlib.PurePosixPath(fname).suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            prefixes.add(parts[:-3])
            if cls not in CIFAR10_CLASSES:
                raise ValueError(f"{path}: member {member.name!r}: {cls!r} is not a CIFAR-10 class")
            data = tar.extractfile(member).read()
            items[split][(cls, fname)] = _decode_rgb(data)
    if len(prefixes) > 1:
        raise ValueError(f"{path}: images under several top folders {sorted(prefixes)}")
    out = {}
    for split, its in items.items():
        _check_cifar_classes(sorted({c for c, _ in its}), f"{path} ({split})")
        out[split] = _stack_split(its, CIFAR10_CLASSES, f"{path} ({split})")
    return _arrays(*out["train"], *out["test"], CIFAR10_CLASSES)


def _archive_source(path: pathlib.Path) -> _Source:
    path = path.resolve()
    return _Source("archive", path, [path], lambda: _decode_archive(path))


def _read_idx(path: pathlib.Path) -> np.ndarray:
    """Read an idx file (optionally .gz) of unsigned bytes; checks the header against the size."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] or data[1]:
        raise ValueError(f"{path}: not an idx file")
    if data[2] != 0x08:
        raise ValueError(f"{path}: idx type 0x{data[2]:02x} is not unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims} ({math.prod(dims)} bytes) but holds {body.size}")
    return body.reshape(dims)


def _idx_files(folder: pathlib.Path) -> list[pathlib.Path] | None:
    out = []
    for stem in _FASHION_STEMS:
        # torchvision leaves both the .gz and its extraction; the plain file is faster to read.
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                out.append(folder / name)
                break
        else:
            return None
    return out


def _idx_source(kind: str, folder: pathlib.Path) -> _Source | None:
    files = _idx_files(folder)
    if files is None:
        return None

    def build() -> dict:
        tr_x, tr_y, te_x, te_y = (_read_idx(f) for f in files)
        for x, y, f in ((tr_x, tr_y, files[0]), (te_x, te_y, files[2])):
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"{f}: images {x.shape} do not match labels {y.shape}")
            if len(y) and int(y.max()) >= len(FASHION_MNIST_CLASSES):
                raise ValueError(f"{f}: label {int(y.max())} out of range")
        return _arrays(torch.from_numpy(tr_x.copy())[:, None], torch.from_numpy(tr_y.astype(np.int64)),
                       torch.from_numpy(te_x.copy())[:, None], torch.from_numpy(te_y.astype(np.int64)),
                       FASHION_MNIST_CLASSES)

    return _Source(kind, folder.resolve(), files, build)


# --------------------------------------------------------------------------- identity & cache


def data_sha256(train: Split, test: Split) -> str:
    """sha256 over train images, train labels, test images, test labels, in that order.

    Each array contributes ``b"<key>:<dtype>:<shape>;"`` then its C-order bytes (labels as
    little-endian int64), so the digest depends only on the decoded data, not on how it was read.
    """
    h = hashlib.sha256()
    for key, t in zip(_ARRAY_KEYS, (train.images, train.labels, test.images, test.labels)):
        a = t.detach().cpu().contiguous().numpy()
        if a.dtype == np.int64:
            a = a.astype("<i8", copy=False)
        h.update(f"{key}:{a.dtype.str}:{tuple(a.shape)};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _cache_key(name: str, source: _Source) -> str:
    return json.dumps([CACHE_FORMAT, name, source.label, _fingerprint(source)])


def _cache_path(root: pathlib.Path, name: str, key: str) -> pathlib.Path:
    return root / "cache" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _read_cache(path: pathlib.Path, key: str) -> dict | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(blob, dict) or blob.get("key") != key:
            raise ValueError("written for another source")
        for k, dtype, ndim in (("train_images", torch.uint8, 4), ("train_labels", torch.int64, 1),
                               ("test_images", torch.uint8, 4), ("test_labels", torch.int64, 1)):
            t = blob.get(k)
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != ndim:
                raise ValueError(f"{k} missing or malformed")
        blob["classes"] = [str(c) for c in blob["classes"]]
        return blob
    except Exception as err:  # any unreadable cache is rebuilt, whatever the failure
        warnings.warn(f"stitchlib: data cache {path} is unreadable ({_short(err)}); "
                      "rebuilding it", UserWarning, stacklevel=4)
        return None


def _write_cache(path: pathlib.Path, blob: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(blob, f)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache is shareable data
            # A reader, or a concurrent writer, sees either no file or a whole one.
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        warnings.warn(f"stitchlib: could not write data cache {path} ({err}); continuing uncached",
                      UserWarning, stacklevel=4)


def _mean_std(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    means, stds = [], []
    for c in range(images.shape[1]):
        # A histogram makes the float64 moments exact and is cheaper than a float copy of the images.
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        values = torch.arange(256, dtype=torch.float64) / 255.0
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / n
        means.append(round(float(mean), 4))
        stds.append(round(float(var.sqrt()), 4))
    return tuple(means), tuple(stds)


def _load_from(name: str, root: pathlib.Path, source: _Source) -> Dataset:
    key = _cache_key(name, source)
    path = _cache_path(root, name, key)
    blob = _read_cache(path, key)
    if blob is not None:
        train = Split(blob["train_images"], blob["train_labels"], len(blob["classes"]),
                      classes=tuple(blob["classes"]))
        test = Split(blob["test_images"], blob["test_labels"], len(blob["classes"]),
                     classes=tuple(blob["classes"]))
        digest = data_sha256(train, test)
        if digest != blob.get("sha256"):
            warnings.warn(f"stitchlib: data cache {path} does not match its recorded sha256; rebuilding it",
                          UserWarning, stacklevel=3)
            blob = None
    if blob is None:
        arrays = source.build()
        classes = tuple(arrays["classes"])
        train = Split(arrays["train_images"], arrays["train_labels"], len(classes), classes=classes)
        test = Split(arrays["test_images"], arrays["test_labels"], len(classes), classes=classes)
        digest = data_sha256(train, test)
        _write_cache(path, {"key": key, "name": name, "source": source.label, "classes": list(classes),
                            "sha256": digest, **{k: arrays[k] for k in _ARRAY_KEYS}})
    mean, std = _mean_std(train.images)
    identity = {"name": name, "source": source.label, "sha256": digest}
    _remember_identity(root, identity)
    return Dataset(name=name, train=train, test=test, classes=list(train.classes), mean=mean, std=std,
                   identity=identity)


def _identity_path(root: pathlib.Path, name: str) -> pathlib.Path:
    return root / "cache" / f"{name}.identity.json"


def _remember_identity(root: pathlib.Path, identity: dict) -> None:
    """Note the identity of the data last loaded from `root`, so that a plan can name the store keys
    of its tasks without loading (decoding and hashing) the images."""
    path = _identity_path(root, identity["name"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(identity, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # only planning reads it, and a plan without it says so


def last_identity(name: str, root: str | os.PathLike | None = None) -> dict | None:
    """The identity of dataset `name` as last loaded from `root` (``data_dir()`` by default), or
    None if it never was: what a plan uses to find its tasks in the store without loading data."""
    root = pathlib.Path(root).expanduser().resolve() if root is not None else data_dir()
    try:
        identity = json.loads(_identity_path(root, name).read_text())
    except (OSError, ValueError):
        return None
    return identity if isinstance(identity, dict) and identity.get("name") == name else None


def _try_sources(name: str, root: pathlib.Path, sources, problems: list[str]) -> Dataset | None:
    for make in sources:
        source = None
        try:
            source = make()
            if source is None:
                continue
            return _load_from(name, root, source)
        except _SOURCE_ERRORS as err:
            where = source.label if source is not None else "a source"
            msg = f"{where} is present but unusable ({_short(err)})"
            warnings.warn(f"stitchlib: {msg}; trying the next source", UserWarning, stacklevel=3)
            problems.append(msg)
    return None


def _download(fn: Callable[[], None], problems: list[str]) -> bool:
    # The default timeout is process-wide, but only a global setting reaches torchvision's
    # urllib calls; without it an offline machine can hang for minutes on connect.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        fn()
        return True
    except Exception as err:  # offline, mirror down, bad checksum: all mean "not downloadable now"
        problems.append(f"download through torchvision failed ({_short(err)})")
        return False
    finally:
        socket.setdefaulttimeout(previous)


def _load_cifar10(root: pathlib.Path, download: bool) -> Dataset:
    problems: list[str] = []
    archives = _archive_candidates(root)
    env = os.environ.get(ARCHIVE_ENV)

    def archive(where: str, path: pathlib.Path) -> _Source | None:
        if path.is_file():
            return _archive_source(path)
        if where == "env":
            # An explicit setting that points nowhere is likely a typo: say so, then go on.
            warnings.warn(f"stitchlib: ${ARCHIVE_ENV}={env} is not a file; looking elsewhere",
                          UserWarning, stacklevel=4)
            problems.append(f"${ARCHIVE_ENV}={env} is not a file")
        return None

    sources = [lambda: _torchvision_cifar10_source(root), lambda: _imagefolder_source(root)]
    sources += [(lambda w=w, p=p: archive(w, p)) for w, p in archives]
    ds = _try_sources("cifar10", root, sources, problems)
    if ds is not None:
        return ds
    if download:
        def fetch() -> None:
            import torchvision

            for train in (True, False):
                torchvision.datasets.CIFAR10(str(root), train=train, download=True)

        if _download(fetch, problems):
            ds = _try_sources("cifar10", root, [lambda: _torchvision_cifar10_source(root)], problems)
            if ds is not None:
                return ds
    else:
        problems.append("download=False was given")
    ways = "\n".join([
        f"  1. torchvision's format: {root / 'cifar-10-batches-py'}",
        f"  2. image folders: {root / 'cifar10' / 'train'}/<class>/* and {root / 'cifar10' / 'test'}/<class>/*"
        " (the 10 CIFAR-10 class names)",
        f"  3. the JPEG archive {ARCHIVE_NAME}: ${ARCHIVE_ENV} (currently {env or 'unset'}), or "
        + ", or ".join(str(path) for where, path in archives if where != "env"),
        f"  4. run once online to download through torchvision ({CIFAR10_URL}) into {root}",
    ])
    raise DataNotFoundError(
        f"CIFAR-10 not found under root {root} (root is the root= argument, else ${DATA_ENV}, "
        f"else {_DEFAULT_ROOT}). Provide it in one of these ways:\n{ways}\n"
        + ("Problems seen: " + "; ".join(problems) if problems else ""))


def _load_fashion_mnist(root: pathlib.Path, download: bool) -> Dataset:
    problems: list[str] = []
    raw = root / "FashionMNIST" / "raw"
    env = os.environ.get(FASHION_MNIST_ENV)
    sources = [lambda: _idx_source("torchvision", raw)]
    if env:
        sources.append(lambda: _idx_source("idx", pathlib.Path(env).expanduser()))
    sources.append(lambda: _idx_source("idx", FASHION_MNIST_SYSTEM_DIR))
    ds = _try_sources("fashion_mnist", root, sources, problems)
    if ds is not None:
        return ds
    if download:
        def fetch() -> None:
            import torchvision

            for train in (True, False):
                torchvision.datasets.FashionMNIST(str(root), train=train, download=True)

        if _download(fetch, problems):
            ds = _try_sources("fashion_mnist", root, [lambda: _idx_source("torchvision", raw)], problems)
            if ds is not None:
                return ds
    else:
        problems.append("download=False was given")
    stems = ", ".join(_FASHION_STEMS)
    ways = "\n".join([
        f"  1. torchvision's format: {raw}/<file> or <file>.gz",
        f"  2. idx files (<file>.gz or plain) in ${FASHION_MNIST_ENV} (currently {env or 'unset'})",
        f"  3. idx files in {FASHION_MNIST_SYSTEM_DIR}: apt-get install dataset-fashion-mnist",
        f"  4. run once online to download through torchvision into {root}",
    ])
    raise DataNotFoundError(
        f"Fashion-MNIST not found under root {root} (root is the root= argument, else ${DATA_ENV}, "
        f"else {_DEFAULT_ROOT}); the files are {stems}. Provide them in one of these ways:\n{ways}\n"
        + ("Problems seen: " + "; ".join(problems) if problems else ""))


def load_dataset(name: str, root: str | os.PathLike | None = None, *, download: bool = True) -> Dataset:
    """Load ``"cifar10"`` or ``"fashion_mnist"`` from the first usable source under ``root``.

    ``root`` defaults to ``data_dir()``; decoded arrays are cached in ``root/cache``. CIFAR-10 is
    looked for as ``root/cifar-10-batches-py``, then ``root/cifar10/{train,test}/<class>/``, then the
    JPEG archive (``$STITCHLIB_CIFAR10_ARCHIVE``, ``root/cifar10-jpeg-q75.tar.gz``, and in a source
    checkout ``<checkout>/../shared/data/cifar10-jpeg-q75.tar.gz``), then downloaded if ``download``.
    Fashion-MNIST: ``root/FashionMNIST/raw``, ``$STITCHLIB_FASHION_MNIST_DIR``,
    ``/usr/share/datasets/fashion-mnist``, then download. Raises ``DataNotFoundError`` if none works.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    root = pathlib.Path(root).expanduser().resolve() if root is not None else data_dir()
    if name == "cifar10":
        return _load_cifar10(root, download)
    return _load_fashion_mnist(root, download)


# --------------------------------------------------------------------------- transforms


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _take(split: Split, idx: torch.Tensor, step: tuple) -> Split:
    idx = idx.sort().values  # keep the source order, so a subset of an ordered split stays ordered
    return split._derive(images=split.images[idx], labels=split.labels[idx], step=step)


def subset(split: Split, size: int, seed: int) -> Split:
    """``size`` distinct random examples, in their original order.

    Subsets with one seed are nested: a smaller size yields a subset of a larger one.
    """
    n = len(split)
    if not 0 < size <= n:
        raise ValueError(f"subset size must be in [1, {n}] (len(split) = {n}), got {size}")
    idx = torch.randperm(n, generator=_generator(seed))[:size]
    return _take(split, idx, ("subset", int(size), int(seed)))


def disjoint_subsets(split: Split, sizes: Sequence[int], seed: int) -> list[Split]:
    """Non-overlapping random subsets of the given sizes (consecutive slices of one permutation)."""
    n = len(split)
    sizes = [int(s) for s in sizes]
    if any(s <= 0 for s in sizes):
        raise ValueError(f"subset sizes must be positive, got {sizes}")
    if sum(sizes) > n:
        raise ValueError(f"sizes {sizes} sum to {sum(sizes)} > len(split) = {n}")
    perm = torch.randperm(n, generator=_generator(seed))
    out, start = [], 0
    for k, s in enumerate(sizes):
        out.append(_take(split, perm[start:start + s], ("disjoint_subsets", tuple(sizes), int(seed), k)))
        start += s
    return out


def with_label_noise(split: Split, p: float, seed: int) -> Split:
    """Give exactly ``round(p * N)`` random examples a label drawn uniformly from all classes.

    The new label may equal the true one by chance (probability 1/num_classes), so the fraction of
    labels that actually change is about ``p * (1 - 1/num_classes)``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label noise p must be in [0, 1], got {p}")
    n = len(split)
    k = round(p * n)
    g = _generator(seed)
    idx = torch.randperm(n, generator=g)[:k]
    labels = split.labels.clone()
    labels[idx] = torch.randint(0, split.num_classes, (k,), generator=g, dtype=torch.int64)
    return split._derive(labels=labels, step=("label_noise", float(p), int(seed)))


def coarse_labels(split: Split) -> Split:
    """CIFAR-10 labels to Animals (0) vs Objects (1), Bansal et al. (2021), App. A.2.

    Animals: bird, cat, deer, dog, frog, horse (the paper's list omits bird, but a bird is an
    animal). Objects: airplane, automobile, ship, truck. Requires 10-class CIFAR-10 label order;
    a split whose ``classes`` are known must name the CIFAR-10 classes.
    """
    if split.num_classes != 10 or (split.classes and split.classes != CIFAR10_CLASSES):
        raise ValueError("coarse_labels needs CIFAR-10 labels (10 classes in the order "
                         f"{list(CIFAR10_CLASSES)}); got num_classes={split.num_classes}, "
                         f"classes={list(split.classes) or 'unknown'}")
    mapping = torch.tensor(COARSE_OF_CIFAR10, dtype=torch.int64)
    return split._derive(labels=mapping[split.labels], num_classes=2, classes=COARSE_CLASSES,
                         step=("coarse",))


# --------------------------------------------------------------------------- device loader

PAD = 4


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Crop each zero-padded image at ``offsets[i] = (top, left)`` (in ``[0, 2*pad]``), mirror if ``flips[i]``.

    One advanced-indexing gather does crop and flip for the whole batch, on the images' device.
    """
    b, c, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=dev)
    cols = offsets[:, 1, None] + torch.arange(w, device=dev)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[torch.arange(b, device=dev)[:, None, None, None],
                  torch.arange(c, device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """Batches of (float32 normalised images (B, C, H, W), int64 labels) from a split held on ``device``.

    ``train=True``: a new shuffle every epoch (epoch ``e`` is seeded ``seed + e``; ``epoch`` counts
    calls to ``iter``), crop+flip augmentation and ``drop_last`` by default. ``train=False``: the
    split's order, no augmentation, the last partial batch kept. Randomness is drawn on the CPU, so
    a seed gives the same batches on every device.
    """

    def __init__(self, split: Split, mean: Sequence[float], std: Sequence[float], *,
                 batch_size: int = 128, train: bool = False, device: str | torch.device = "cpu",
                 seed: int = 0, augment: bool | None = None, drop_last: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        channels = split.images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values (one per channel), got {len(mean)}/{len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.augment = self.train if augment is None else bool(augment)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        if len(split) and len(self) == 0:
            raise ValueError(f"drop_last with {len(split)} examples < batch_size {batch_size} "
                             "would give no batches; lower batch_size or pass drop_last=False")

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images on the loader's device to float32, scaled to [0, 1], then standardised."""
        return images.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The epoch advances when iteration starts, not at the first batch, so abandoning an
        # iterator early still moves the next one to a new shuffle.
        epoch, self.epoch = self.epoch, self.epoch + 1
        n = len(self.labels)
        order = offsets = flips = None
        if self.train or self.augment:
            g = _generator(self.seed + epoch)
            if self.train:
                order = torch.randperm(n, generator=g).to(self.device)
            if self.augment:
                offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g).to(self.device)
                flips = torch.randint(0, 2, (n,), generator=g).bool().to(self.device)
        return self._batches(order, offsets, flips)

    def _batches(self, order, offsets, flips) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        for b in range(len(self)):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            if order is None:
                x, y = self.images[sl], self.labels[sl]
            else:
                idx = order[sl]
                x, y = self.images[idx], self.labels[idx]
            if offsets is not None:
                x = crop_flip(x, offsets[sl], flips[sl])
            yield self.normalise(x), y

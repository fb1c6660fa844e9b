"""Tests for stitchlib.data: sources, cache, identity, transforms, DeviceLoader."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pathlib
import pickle
import socket
import struct
import tarfile
import time
import types
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from stitchlib import data
from stitchlib.data import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    DataNotFoundError,
    DeviceLoader,
    Split,
    coarse_labels,
    crop_flip,
    data_dir,
    data_sha256,
    disjoint_subsets,
    load_dataset,
    subset,
    with_label_noise,
)

ENV_VARS = (data.DATA_ENV, data.ARCHIVE_ENV, data.FASHION_MNIST_ENV)
# Values measured on the JPEG copy (see /work/shared/data/README.md).
JPEG_CIFAR_MEAN = (0.4913, 0.4821, 0.4465)
JPEG_CIFAR_STD = (0.2452, 0.2428, 0.2606)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def no_fallbacks(monkeypatch, tmp_path):
    """Hide the shared archive and Debian's Fashion-MNIST, so only what a test writes is found."""
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "no-repo" / "repo")
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-fmnist")


# --------------------------------------------------------------------------- helpers


def index_split(n: int, num_classes: int = 10, hw: int = 4) -> Split:
    """Images whose first two channels encode their index (i % 256, i // 256); labels i % num_classes."""
    i = torch.arange(n)
    images = torch.zeros(n, 3, hw, hw, dtype=torch.uint8)
    images[:, 0] = (i % 256).to(torch.uint8)[:, None, None]
    images[:, 1] = (i // 256).to(torch.uint8)[:, None, None]
    return Split(images, i % num_classes, num_classes)


def indices_of(split: Split) -> torch.Tensor:
    return split.images[:, 0, 0, 0].long() + 256 * split.images[:, 1, 0, 0].long()


def write_fake_cifar_batches(root: pathlib.Path, monkeypatch, n: int = 3):
    """torchvision's cifar-10-batches-py with n images per batch; returns the expected arrays."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name, obj):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    rows, labels = {}, {}
    train_list, test_list = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels[name] = rng.integers(0, 10, n).tolist()
        entry = dump(name, {"batch_label": name, "labels": labels[name], "data": rows[name],
                            "filenames": [f"{name}_{k}.png" for k in range(n)]})
        (test_list if name == "test_batch" else train_list).append(entry)
    meta = dump("batches.meta", {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": n,
                                 "num_vis": 3072})
    # torchvision checks the real files' MD5s; point it at ours so its reader runs unmodified.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta",
                        {"filename": "batches.meta", "key": "label_names", "md5": meta[1]})
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    # The CIFAR row layout is 1024 red, 1024 green, 1024 blue values, each row-major 32x32.
    train = np.concatenate([rows[k] for k in train_names]).reshape(-1, 3, 32, 32)
    test = rows["test_batch"].reshape(-1, 3, 32, 32)
    return (torch.from_numpy(train), torch.tensor(sum((labels[k] for k in train_names), [])),
            torch.from_numpy(test), torch.tensor(labels["test_batch"]))


def write_image_folder(root: pathlib.Path, classes=CIFAR10_CLASSES, per_class=(2, 1)):
    """root/cifar10/{train,test}/<class>/NN.png with random pixels; returns expected arrays in load order."""
    rng = np.random.default_rng(1)
    out = {}
    for split, count in zip(("train", "test"), per_class):
        images, labels = [], []
        for label, cls in enumerate(sorted(classes)):
            (root / "cifar10" / split / cls).mkdir(parents=True)
            # Names written out of order: the loader must sort them.
            for k in reversed(range(count)):
                a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(a).save(root / "cifar10" / split / cls / f"{k:02d}.png")
                images.insert(len(images) - (count - 1 - k), a)
                labels.append(label)
        out[split] = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), torch.tensor(labels))
    (root / "cifar10" / "train" / CIFAR10_CLASSES[0] / ".DS_Store").write_bytes(b"junk")
    return out


def write_idx(path: pathlib.Path, arr: np.ndarray) -> None:
    payload = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_fake_fashion(folder: pathlib.Path, gz: bool = True, n_train: int = 20, n_test: int = 10, seed: int = 2):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arr)
    return arrays


def np_mean_std(images: torch.Tensor):
    x = images.numpy().astype(np.float64) / 255.0
    return (tuple(round(float(v), 4) for v in x.mean(axis=(0, 2, 3))),
            tuple(round(float(v), 4) for v in x.std(axis=(0, 2, 3))))


# --------------------------------------------------------------------------- CIFAR-10, real JPEG archive


@pytest.fixture(scope="session")
def cifar(tmp_path_factory):
    """One uncached load (decodes the archive, ~5-13 s) and one cached load, from a fresh root."""
    archive = pathlib.Path(os.environ.get(data.ARCHIVE_ENV)
                           or data.REPO_ROOT.parent / "shared" / "data" / data.ARCHIVE_NAME)
    if not archive.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {archive}")
    root = tmp_path_factory.mktemp("cifar-root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(data.DATA_ENV, str(root))
        mp.setenv(data.ARCHIVE_ENV, str(archive))
        t0 = time.perf_counter()
        fresh = load_dataset("cifar10")
        fresh_s = time.perf_counter() - t0

        def must_not_decode(path):
            raise AssertionError("the second load decoded the archive instead of using the cache")

        mp.setattr(data, "_decode_archive", must_not_decode)
        t0 = time.perf_counter()
        cached = load_dataset("cifar10")
        cached_s = time.perf_counter() - t0
    print(f"\nCIFAR-10 archive: uncached load {fresh_s:.2f} s, cached load {cached_s:.2f} s")
    return types.SimpleNamespace(root=root, archive=archive, fresh=fresh, cached=cached,
                                 fresh_s=fresh_s, cached_s=cached_s)


def test_cifar_archive_contents(cifar):
    ds = cifar.fresh
    assert ds.name == "cifar10"
    assert ds.classes == list(CIFAR10_CLASSES)
    assert len(ds.train) == 50000 and len(ds.test) == 10000
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.test.images.shape == (10000, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.train.images.is_contiguous() and ds.test.images.is_contiguous()
    assert ds.train.labels.bincount().tolist() == [5000] * 10
    assert ds.test.labels.bincount().tolist() == [1000] * 10
    assert ds.train.num_classes == 10 and ds.train.classes == CIFAR10_CLASSES
    assert ds.identity["name"] == "cifar10"
    assert ds.identity["source"] == f"archive:{cifar.archive.resolve()}"
    assert len(ds.identity["sha256"]) == 64
    assert ds.mean == pytest.approx(JPEG_CIFAR_MEAN, abs=2e-4)
    assert ds.std == pytest.approx(JPEG_CIFAR_STD, abs=2e-4)
    # Exact integer moments, independent of the loader's histogram method.
    s1 = torch.zeros(3, dtype=torch.int64)
    s2 = torch.zeros(3, dtype=torch.int64)
    for chunk in ds.train.images.split(5000):
        x = chunk.to(torch.int32)
        s1 += x.sum((0, 2, 3), dtype=torch.int64)
        s2 += (x * x).sum((0, 2, 3), dtype=torch.int64)
    n = 50000 * 32 * 32
    s1, s2 = s1.double(), s2.double()
    mean = s1 / n / 255
    std = ((s2 / n - (s1 / n) ** 2).sqrt() / 255)
    assert ds.mean == tuple(round(float(v), 4) for v in mean)
    assert ds.std == tuple(round(float(v), 4) for v in std)


def test_cifar_archive_order_matches_files(cifar):
    """Examples are in (class, file name) order: index 0 is train/airplane/0000.jpg, etc."""
    wanted = {"train/airplane/0000.jpg": cifar.fresh.train.images[0],
              "train/truck/4999.jpg": cifar.fresh.train.images[49999],
              "test/bird/0000.jpg": cifar.fresh.test.images[2000]}
    found = {}
    with tarfile.open(cifar.archive) as tar:
        for member in tar:
            key = "/".join(pathlib.PurePosixPath(member.name).parts[-3:])
            if member.isfile() and key in wanted:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    found[key] = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
                if len(found) == len(wanted):
                    break
    assert found.keys() == wanted.keys()
    for key, img in found.items():
        assert torch.equal(img, wanted[key]), key


def test_cifar_cache_is_used_and_identical(cifar):
    # The fixture's second load fails if it decodes the archive; how long it takes is a benchmark's
    # business (a wall-clock bound here failed on a loaded 2-core machine).
    assert cifar.cached.identity == cifar.fresh.identity
    assert data_sha256(cifar.cached.train, cifar.cached.test) == cifar.fresh.identity["sha256"]
    for a, b in ((cifar.fresh.train, cifar.cached.train), (cifar.fresh.test, cifar.cached.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert (cifar.cached.mean, cifar.cached.std) == (cifar.fresh.mean, cifar.fresh.std)
    caches = list((cifar.root / "cache").glob("cifar10-*.pt"))
    assert len(caches) == 1 and not list((cifar.root / "cache").glob("*.tmp"))


def test_cifar_coarse_counts(cifar):
    coarse = coarse_labels(cifar.fresh.train)
    # bird, cat, deer, dog, frog, horse are animals; 6 x 5000 of them.
    assert coarse.labels.bincount().tolist() == [30000, 20000]
    assert coarse.classes == ("animal", "object")


# --------------------------------------------------------------------------- CIFAR-10, other sources


def test_cifar_torchvision_format(tmp_path, monkeypatch, no_fallbacks):
    tr_x, tr_y, te_x, te_y = write_fake_cifar_batches(tmp_path, monkeypatch)
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert torch.equal(ds.train.images, tr_x) and torch.equal(ds.train.labels, tr_y)
    assert torch.equal(ds.test.images, te_x) and torch.equal(ds.test.labels, te_y)
    assert len(ds.train) == 15 and len(ds.test) == 3
    assert ds.classes == list(CIFAR10_CLASSES)
    assert ds.identity["source"] == f"torchvision:{tmp_path / 'cifar-10-batches-py'}"
    assert (ds.mean, ds.std) == np_mean_std(tr_x)
    # Second load: from the cache, same identity even with torchvision's reader broken.
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", None)
    again = load_dataset("cifar10", tmp_path, download=False)
    assert again.identity == ds.identity and torch.equal(again.train.images, tr_x)


def test_cifar_image_folder(tmp_path, no_fallbacks):
    expected = write_image_folder(tmp_path)
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.identity["source"] == f"imagefolder:{tmp_path / 'cifar10'}"
    assert ds.classes == list(CIFAR10_CLASSES)
    for split, name in ((ds.train, "train"), (ds.test, "test")):
        images, labels = expected[name]
        assert torch.equal(split.images, images) and torch.equal(split.labels, labels)
    assert ds.train.labels.tolist() == [c for c in range(10) for _ in range(2)]


def test_cifar_source_priority(tmp_path, monkeypatch, no_fallbacks):
    write_image_folder(tmp_path)
    write_fake_cifar_batches(tmp_path, monkeypatch)
    assert load_dataset("cifar10", tmp_path, download=False).identity["source"].startswith("torchvision:")


def test_cifar_image_folder_wrong_classes(tmp_path, no_fallbacks):
    write_image_folder(tmp_path, classes=CIFAR10_CLASSES[:9] + ("unicorn",))
    with pytest.warns(UserWarning, match="not the 10 CIFAR-10 classes"):
        with pytest.raises(DataNotFoundError, match="unicorn"):
            load_dataset("cifar10", tmp_path, download=False)


def test_cifar_archive_with_prefix(tmp_path, no_fallbacks, monkeypatch):
    """A small archive with a top folder and junk members loads in (class, name) order."""
    rng = np.random.default_rng(3)
    expected = {"train": [], "test": []}
    path = tmp_path / "custom.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        def add(name, payload):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        add("CIFAR-10-images/README.txt", b"hello")
        for split in ("test", "train"):
            for cls in reversed(CIFAR10_CLASSES):
                a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, format="PNG")
                add(f"CIFAR-10-images/{split}/{cls}/0000.png", buf.getvalue())
                add(f"CIFAR-10-images/{split}/{cls}/._0000.png", b"mac resource fork")
                expected[split].insert(0, a)
    monkeypatch.setenv(data.ARCHIVE_ENV, str(path))
    ds = load_dataset("cifar10", tmp_path / "root", download=False)
    assert ds.identity["source"] == f"archive:{path}"
    assert ds.train.labels.tolist() == list(range(10))
    assert torch.equal(ds.train.images, torch.from_numpy(np.stack(expected["train"])).permute(0, 3, 1, 2))
    assert torch.equal(ds.test.images, torch.from_numpy(np.stack(expected["test"])).permute(0, 3, 1, 2))


def test_cifar_not_found_names_every_way(tmp_path, monkeypatch, no_fallbacks):
    calls = []

    class OfflineCIFAR10:
        def __init__(self, root, train=True, download=False, **kw):
            calls.append((root, download, socket.getdefaulttimeout()))
            raise OSError("network is unreachable (test)")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    monkeypatch.setenv(data.ARCHIVE_ENV, str(tmp_path / "missing.tar.gz"))
    root = tmp_path / "root"
    before = socket.getdefaulttimeout()
    with pytest.warns(UserWarning, match="not a file"):
        with pytest.raises(DataNotFoundError) as info:
            load_dataset("cifar10", root)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    for needle in (str(root / "cifar-10-batches-py"), str(root / "cifar10" / "train"),
                   str(root / "cifar10" / "test"), str(root / data.ARCHIVE_NAME),
                   str(data.REPO_ROOT.parent / "shared" / "data" / data.ARCHIVE_NAME),
                   data.ARCHIVE_ENV, str(tmp_path / "missing.tar.gz"), data.DATA_ENV,
                   "run once online to download through torchvision", "network is unreachable (test)"):
        assert needle in msg, needle
    # The download was tried, under the short timeout, which was restored afterwards.
    assert calls and calls[0][1] is True and calls[0][2] == data.DOWNLOAD_TIMEOUT_S
    assert socket.getdefaulttimeout() == before

    calls.clear()
    with pytest.warns(UserWarning, match="not a file"):
        with pytest.raises(DataNotFoundError, match="download=False"):
            load_dataset("cifar10", root, download=False)
    assert calls == []


def test_unknown_name():
    with pytest.raises(ValueError, match="cifar10, fashion_mnist"):
        load_dataset("imagenet")


def test_data_dir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert data_dir() == pathlib.Path(data.__file__).resolve().parent.parent / "data"
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "elsewhere"))
    assert data_dir() == tmp_path / "elsewhere"


# --------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_from_idx_dir(tmp_path, monkeypatch, no_fallbacks):
    arrays = write_fake_fashion(tmp_path / "idx")
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path / "idx"))
    ds = load_dataset("fashion_mnist", tmp_path / "root", download=False)
    assert ds.identity["source"] == f"idx:{tmp_path / 'idx'}"
    assert ds.classes == list(FASHION_MNIST_CLASSES)
    assert ds.train.images.shape == (20, 1, 28, 28) and ds.test.images.shape == (10, 1, 28, 28)
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert ds.train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert torch.equal(ds.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert ds.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert (ds.mean, ds.std) == np_mean_std(ds.train.images)


def test_fashion_torchvision_raw_preferred(tmp_path, monkeypatch, no_fallbacks):
    raw = write_fake_fashion(tmp_path / "root" / "FashionMNIST" / "raw", gz=False, seed=5)
    write_fake_fashion(tmp_path / "idx", seed=6)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path / "idx"))
    ds = load_dataset("fashion_mnist", tmp_path / "root", download=False)
    assert ds.identity["source"] == f"torchvision:{tmp_path / 'root' / 'FashionMNIST' / 'raw'}"
    assert ds.train.labels.tolist() == raw["train-labels-idx1-ubyte"].tolist()


def test_fashion_bad_idx_is_skipped(tmp_path, monkeypatch, no_fallbacks):
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    write_fake_fashion(raw, gz=False)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 99, 28, 28))
    good = write_fake_fashion(tmp_path / "idx", seed=7)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path / "idx"))
    with pytest.warns(UserWarning, match="header says"):
        ds = load_dataset("fashion_mnist", tmp_path / "root", download=False)
    assert ds.identity["source"].startswith("idx:")
    assert ds.train.labels.tolist() == good["train-labels-idx1-ubyte"].tolist()


def test_fashion_not_found(tmp_path, monkeypatch, no_fallbacks):
    class OfflineFashion:
        def __init__(self, *a, **kw):
            raise OSError("offline (test)")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", OfflineFashion)
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion_mnist", tmp_path / "root")
    msg = str(info.value)
    for needle in ("apt-get install dataset-fashion-mnist", data.FASHION_MNIST_ENV,
                   str(tmp_path / "root" / "FashionMNIST" / "raw"), str(data.FASHION_MNIST_SYSTEM_DIR),
                   "run once online to download through torchvision", "offline (test)"):
        assert needle in msg, needle


def test_fashion_debian_package(tmp_path):
    if data._idx_files(data.FASHION_MNIST_SYSTEM_DIR) is None:
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed in {data.FASHION_MNIST_SYSTEM_DIR}")
    ds = load_dataset("fashion_mnist", tmp_path, download=False)
    assert ds.identity["source"] == f"idx:{data.FASHION_MNIST_SYSTEM_DIR.resolve()}"
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.train.labels.bincount().tolist() == [6000] * 10
    assert ds.test.labels.bincount().tolist() == [1000] * 10
    # Fashion-MNIST's well-known statistics.
    assert ds.mean == pytest.approx((0.2860,), abs=1e-4) and ds.std == pytest.approx((0.3530,), abs=1e-4)
    with pytest.raises(ValueError, match="CIFAR-10"):
        coarse_labels(ds.train)


# --------------------------------------------------------------------------- cache


def _fashion_root(tmp_path, monkeypatch):
    write_fake_fashion(tmp_path / "idx")
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path / "idx"))
    root = tmp_path / "root"
    ds = load_dataset("fashion_mnist", root, download=False)
    (cache,) = (root / "cache").glob("fashion_mnist-*.pt")
    return root, ds, cache


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, no_fallbacks):
    root, ds, cache = _fashion_root(tmp_path, monkeypatch)
    cache.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        again = load_dataset("fashion_mnist", root, download=False)
    assert again.identity == ds.identity and torch.equal(again.train.images, ds.train.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache is whole again
        assert load_dataset("fashion_mnist", root, download=False).identity == ds.identity


def test_tampered_cache_is_rebuilt(tmp_path, monkeypatch, no_fallbacks):
    root, ds, cache = _fashion_root(tmp_path, monkeypatch)
    blob = torch.load(cache, weights_only=True)
    blob["train_images"][0, 0, 0, 0] ^= 1
    torch.save(blob, cache)
    with pytest.warns(UserWarning, match="sha256"):
        again = load_dataset("fashion_mnist", root, download=False)
    assert torch.equal(again.train.images, ds.train.images) and again.identity == ds.identity


def test_cache_follows_source_changes(tmp_path, monkeypatch, no_fallbacks):
    root, ds, _ = _fashion_root(tmp_path, monkeypatch)
    new = write_fake_fashion(tmp_path / "idx", seed=11)
    again = load_dataset("fashion_mnist", root, download=False)
    assert again.train.labels.tolist() == new["train-labels-idx1-ubyte"].tolist()
    assert again.identity["sha256"] != ds.identity["sha256"]


# --------------------------------------------------------------------------- transforms


def test_split_validation():
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), 10)
    with pytest.raises(ValueError, match="labels must lie"):
        Split(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 10]), 10)
    s = Split(torch.zeros(4, 4, 3, 2, dtype=torch.uint8).permute(0, 2, 3, 1), torch.zeros(4, dtype=torch.int64), 2)
    assert s.images.is_contiguous() and len(s) == 4 and s.recipe == ()


def test_subset():
    split = index_split(1000)
    a, b = subset(split, 100, seed=3), subset(split, 100, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    idx = indices_of(a)
    assert len(a) == 100 and len(set(idx.tolist())) == 100
    assert torch.equal(idx, idx.sort().values)  # source order is kept
    assert torch.equal(a.labels, idx % 10)      # labels travel with their images
    assert not torch.equal(idx, indices_of(subset(split, 100, seed=4)))
    assert set(idx.tolist()) <= set(indices_of(subset(split, 500, seed=3)).tolist())  # nested
    assert a.recipe == (("subset", 100, 3),) and a.num_classes == 10
    assert len(split) == 1000 and torch.equal(indices_of(split), torch.arange(1000))  # untouched
    for bad in (0, -1, 1001):
        with pytest.raises(ValueError, match="len\\(split\\) = 1000"):
            subset(split, bad, seed=0)


def test_disjoint_subsets():
    split = index_split(1000)
    parts = disjoint_subsets(split, [300, 200, 500], seed=1)
    assert [len(p) for p in parts] == [300, 200, 500]
    sets = [set(indices_of(p).tolist()) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(range(1000))
    again = disjoint_subsets(split, [300, 200, 500], seed=1)
    assert all(torch.equal(p.images, q.images) for p, q in zip(parts, again))
    assert parts[1].recipe == (("disjoint_subsets", (300, 200, 500), 1, 1),)
    with pytest.raises(ValueError, match="1001 > len\\(split\\) = 1000"):
        disjoint_subsets(split, [500, 501], seed=0)


def test_label_noise_exact_count():
    # With an enormous label space a redrawn label never equals the old one, so every noisy
    # example is visible and the count must be exactly round(p * N) (Python's round: half to even).
    n = 1000
    split = Split(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), 2**62)
    for p, expected in ((0.0, 0), (0.1, 100), (0.2375, 238), (0.0005, 0), (1.0, 1000)):
        noisy = with_label_noise(split, p, seed=5)
        assert int((noisy.labels != split.labels).sum()) == expected == round(p * n), p
    small = Split(torch.zeros(5, 1, 1, 1, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64), 2**62)
    assert int((with_label_noise(small, 0.5, seed=0).labels != 0).sum()) == 2


def test_label_noise_distribution():
    split = index_split(20000)  # balanced: 2000 per class
    noisy = with_label_noise(split, 0.3, seed=7)
    changed = noisy.labels != split.labels
    # 6000 relabelled, of which 1/10 keep their label by chance: expect 5400 (sd ~23).
    assert 5250 < int(changed.sum()) < 5550
    counts = noisy.labels.bincount(minlength=10)
    assert int(counts.min()) > 1850 and int(counts.max()) < 2150
    # Wrong labels are spread over all the other classes.
    offsets = ((noisy.labels - split.labels) % 10)[changed].bincount(minlength=10)
    assert offsets[0] == 0 and int(offsets[1:].min()) > 450
    assert torch.equal(noisy.images, split.images) and torch.equal(split.labels, torch.arange(20000) % 10)
    assert torch.equal(with_label_noise(split, 0.3, seed=7).labels, noisy.labels)
    assert not torch.equal(with_label_noise(split, 0.3, seed=8).labels, noisy.labels)
    assert noisy.recipe == (("label_noise", 0.3, 7),)
    for bad in (-0.1, 1.01):
        with pytest.raises(ValueError, match="\\[0, 1\\]"):
            with_label_noise(split, bad, seed=0)


def test_coarse_labels():
    split = Split(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10), 10, classes=CIFAR10_CLASSES)
    coarse = coarse_labels(split)
    assert coarse.labels.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert coarse.labels[CIFAR10_CLASSES.index("bird")] == 0
    assert coarse.labels[CIFAR10_CLASSES.index("ship")] == 1
    assert coarse.labels[CIFAR10_CLASSES.index("horse")] == 0
    assert coarse.labels[CIFAR10_CLASSES.index("truck")] == 1
    assert coarse.num_classes == 2 and coarse.classes == ("animal", "object")
    assert split.labels.tolist() == list(range(10))
    chained = coarse_labels(subset(split, 4, seed=0))
    assert chained.recipe == (("subset", 4, 0), ("coarse",))
    with pytest.raises(ValueError, match="CIFAR-10"):
        coarse_labels(coarse)
    with pytest.raises(ValueError, match="CIFAR-10"):
        coarse_labels(Split(split.images, split.labels, 10, classes=FASHION_MNIST_CLASSES))
    with pytest.raises(ValueError, match="num_classes=12"):
        coarse_labels(Split(split.images, split.labels, 12))


# --------------------------------------------------------------------------- DeviceLoader


def random_split(n: int, hw: int = 32, seed: int = 0) -> Split:
    """Random images; label i = example index (num_classes = n) so a batch reveals its sources."""
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, hw, hw), dtype=torch.uint8, generator=g), torch.arange(n), n)


def epochs(loader, k):
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(k)]


def test_eval_loader_exact_and_ordered():
    split = random_split(50)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = DeviceLoader(split, mean, std, batch_size=16)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    expected = (split.images.to(torch.float32) / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x, expected, rtol=0, atol=1e-6)
    assert torch.equal(y, split.labels)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, list(loader)))  # no shuffle, no augmentation


def test_train_loader_determinism():
    split = random_split(100, hw=8)
    make = lambda seed: DeviceLoader(split, (0.5,) * 3, (0.25,) * 3, batch_size=32, train=True, seed=seed)
    a, b = make(0), make(0)
    assert len(a) == 3  # drop_last
    ea, eb = epochs(a, 3), epochs(b, 3)
    for run_a, run_b in zip(ea, eb):
        for (xa, ya), (xb, yb) in zip(run_a, run_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    labels = [torch.cat([y for _, y in ep]) for ep in ea]
    for lab in labels:
        assert len(lab) == 96 and len(set(lab.tolist())) == 96  # a permutation, last 4 dropped
    assert not torch.equal(labels[0], labels[1])
    assert a.epoch == 3
    other = torch.cat([y for _, y in make(1)])
    assert not torch.equal(other, labels[0])
    # Epoch e is seeded seed + e.
    assert torch.equal(other, labels[1])


def test_augmentation_is_crop_and_flip():
    split = random_split(64)
    loader = DeviceLoader(split, (0.0,) * 3, (1.0,) * 3, batch_size=16, train=True, seed=3)
    padded = torch.nn.functional.pad(split.images, (4, 4, 4, 4))
    seen_offsets, seen_flips = set(), set()
    for _ in range(3):
        for x, y in loader:
            pixels = torch.round(x * 255).to(torch.uint8)
            assert torch.equal(pixels.float() / 255, x)
            for img, i in zip(pixels, y.tolist()):
                matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                           if torch.equal(img, (lambda w: w.flip(-1) if f else w)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
                assert len(matches) == 1, (i, matches)
                seen_offsets.add(matches[0][:2])
                seen_flips.add(matches[0][2])
    assert {dy for dy, _ in seen_offsets} == set(range(9)) and {dx for _, dx in seen_offsets} == set(range(9))
    assert seen_flips == {False, True}


def test_crop_flip_known_offsets():
    img = torch.randint(1, 256, (2, 3, 8, 8), dtype=torch.uint8)
    same = crop_flip(img, torch.tensor([[4, 4], [4, 4]]), torch.tensor([False, True]))
    assert torch.equal(same[0], img[0]) and torch.equal(same[1], img[1].flip(-1))
    shifted = crop_flip(img, torch.tensor([[0, 8], [8, 0]]), torch.tensor([False, False]))
    assert torch.equal(shifted[0, :, 4:, :4], img[0, :, :4, 4:]) and shifted[0, :, :4].eq(0).all()
    assert torch.equal(shifted[1, :, :4, 4:], img[1, :, 4:, :4]) and shifted[1, :, :, :4].eq(0).all()


def test_loader_options_and_errors():
    split = random_split(10, hw=4)
    with pytest.raises(ValueError, match="no batches"):
        DeviceLoader(split, (0,) * 3, (1,) * 3, batch_size=16, train=True)
    loader = DeviceLoader(split, (0,) * 3, (1,) * 3, batch_size=16, train=True, drop_last=False, augment=False)
    (x, y), = list(loader)
    assert sorted(y.tolist()) == list(range(10))
    assert torch.equal(x, split.images[y].float() / 255)  # shuffled but not augmented
    with pytest.raises(ValueError, match="3 values"):
        DeviceLoader(split, (0.5,), (1.0,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_loader_on_cuda_matches_cpu():
    split = random_split(300)
    cpu = DeviceLoader(split, (0.5,) * 3, (0.25,) * 3, batch_size=64, train=True, seed=9)
    gpu = DeviceLoader(split, (0.5,) * 3, (0.25,) * 3, batch_size=64, train=True, seed=9, device="cuda")
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.device.type == "cuda" and torch.equal(yc, yg.cpu())
        assert torch.allclose(xc, xg.cpu(), rtol=0, atol=1e-6)

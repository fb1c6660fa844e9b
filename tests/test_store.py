import hashlib
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import stitchlib
from stitchlib import store as store_mod
from stitchlib.store import (
    CorruptArtifactWarning,
    Store,
    code_version,
    default_store_root,
    frame_to_payload,
    payload_to_frame,
)

REPO_ROOT = pathlib.Path(stitchlib.__file__).resolve().parent.parent

CONFIG = {
    "model": {"arch": "resnet18", "width": 64, "layers": (2, 2, 2, 2)},
    "opt": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    "dataset": {"name": "cifar10", "sha256": "ab" * 32},
    "seed": 0,
    "note": None,
}


def files_under(root: pathlib.Path) -> list[pathlib.Path]:
    """The artifacts and temporary files (not the lock files, which `cached` leaves in .locks/)."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and ".locks" not in p.relative_to(root).parts)


class Counter:
    def __init__(self, payload):
        self.payload = payload
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.payload


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


@pytest.fixture
def strict_warnings():
    # Any warning (e.g. a spurious corruption warning) becomes a test failure.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------- code version, roots


def test_code_version_format_and_cached():
    v = code_version()
    assert re.fullmatch(re.escape(stitchlib.__version__) + r"\+[0-9a-f]{12}", v)
    assert code_version() is v


def test_source_hash_tracks_every_byte_and_name(tmp_path):
    (tmp_path / "a.py").write_bytes(b"x = 1\n")
    (tmp_path / "b.py").write_bytes(b"y = 2\n")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    base = store_mod._hash_sources(tmp_path, ("a.py", "b.py", "c.py"))

    (tmp_path / "notes.txt").write_bytes(b"still ignored")
    assert store_mod._hash_sources(tmp_path, ("a.py", "b.py", "c.py")) == base

    (tmp_path / "b.py").write_bytes(b"y = 3\n")
    changed = store_mod._hash_sources(tmp_path, ("a.py", "b.py", "c.py"))
    assert changed != base

    (tmp_path / "b.py").rename(tmp_path / "c.py")
    assert store_mod._hash_sources(tmp_path, ("a.py", "b.py", "c.py")) != changed


def _package_copy(tmp_path):
    import shutil

    import stitchlib
    copy = tmp_path / "stitchlib"
    shutil.copytree(pathlib.Path(stitchlib.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


PIPELINE = sorted(f"experiments/{p.name}" for p in (pathlib.Path(stitchlib.__file__).parent / "experiments").glob("*.py")
                  if p.name != "compute.py")


@pytest.mark.parametrize("edited", PIPELINE + ["claims.py", "plotting.py", "report.py", "statistics.py", "paper.py",
                                               "tables.py", "__main__.py", "__init__.py"])
def test_editing_a_pipeline_keeps_every_stored_key(tmp_path, edited):
    """A paper-profile user who edits a notebook's pipeline, a claim or a plot keeps every trained
    model: keys cover only the modules that compute what is stored."""
    copy = _package_copy(tmp_path)
    base = store_mod._hash_sources(copy)
    with open(copy / edited, "a") as f:
        f.write("\n# an edit\n")
    assert store_mod._hash_sources(copy) == base


@pytest.mark.parametrize("edited", ["training.py", "precision.py", "models.py", "data.py", "stitching.py", "similarity.py",
                                    "ssl.py", "experiments/compute.py"])
def test_editing_what_computes_an_artifact_changes_its_key(tmp_path, edited):
    copy = _package_copy(tmp_path)
    base = store_mod._hash_sources(copy)
    with open(copy / edited, "a") as f:
        f.write("\n# an edit\n")
    assert store_mod._hash_sources(copy) != base


def test_every_computing_module_exists_and_readers_store_nothing():
    import stitchlib.claims
    import stitchlib.plotting
    root = pathlib.Path(stitchlib.claims.__file__).parent
    assert all((root / name).is_file() for name in store_mod.COMPUTING_MODULES)
    # The modules outside the key may not feed anything the store keeps.
    for module in (stitchlib.claims, stitchlib.plotting):
        assert "Store" not in vars(module) and "cached" not in open(module.__file__).read()
    for path in (root / "experiments").glob("*.py"):
        if path.name != "compute.py":
            assert ".cached(" not in path.read_text() and "train_model(" not in path.read_text(), path.name


def test_env_var_moves_root(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    monkeypatch.setenv("STITCHLIB_STORE", str(target))
    assert default_store_root() == target
    s = Store()
    assert s.root == target
    saved = s.save("metric", {"a": 1}, {"v": 1.0})
    assert saved.parent.parent == target
    assert Store(target).load("metric", {"a": 1}) == {"v": 1.0}


def test_default_root_is_repo_runs_store_and_cwd_independent(tmp_path, monkeypatch):
    monkeypatch.delenv("STITCHLIB_STORE", raising=False)
    before = default_store_root()
    assert before == REPO_ROOT / "runs" / "store"
    assert before.is_absolute()
    monkeypatch.chdir(tmp_path)
    assert default_store_root() == before
    assert Store().root == before


def test_root_created_lazily(tmp_path):
    root = tmp_path / "lazy" / "store"
    s = Store(root)
    assert not root.exists()
    assert s.load("model", {"a": 1}) is None
    assert not root.exists()
    s.save("model", {"a": 1}, torch.zeros(1))
    assert root.is_dir()


# --------------------------------------------------------------------------- keys


def test_same_config_same_key(store):
    assert store.key("model", CONFIG) == store.key("model", json.loads(json.dumps(CONFIG)))
    assert re.fullmatch(r"[0-9a-f]{64}", store.key("model", CONFIG))


def test_key_changes_with_config_kind_and_code(store, monkeypatch):
    base = store.key("model", CONFIG)
    assert store.key("model", {**CONFIG, "seed": 1}) != base
    assert store.key("model", {**CONFIG, "opt": {**CONFIG["opt"], "lr": 0.01}}) != base
    assert store.key("model", {**CONFIG, "extra": None}) != base
    assert store.key("stitcher", CONFIG) != base
    monkeypatch.setattr(store_mod, "code_version", lambda: "0.1.0+000000000000")
    assert store.key("model", CONFIG) != base


def test_key_is_the_documented_hash(store):
    expected = hashlib.sha256(
        json.dumps(
            {"kind": "k", "config": {"a": [1, 2], "b": "x"}, "code": code_version()},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    ).hexdigest()
    assert store.key("k", {"b": "x", "a": (1, 2)}) == expected


def test_key_independent_of_insertion_order(store):
    a = {"x": 1, "y": {"p": 1, "q": [1, {"m": 1, "n": 2}]}}
    b = {"y": {"q": [1, {"n": 2, "m": 1}], "p": 1}, "x": 1}
    assert store.key("model", a) == store.key("model", b)


def test_tuples_are_lists_but_types_matter(store):
    assert store.key("m", {"a": (1, 2)}) == store.key("m", {"a": [1, 2]})
    assert store.key("m", {"a": 1}) != store.key("m", {"a": 1.0})
    assert store.key("m", {"a": 1}) != store.key("m", {"a": True})
    assert store.key("m", {"a": 1}) != store.key("m", {"a": "1"})


@pytest.mark.parametrize(
    "config, path",
    [
        ({"opt": {"lr": object()}}, "config['opt']['lr']"),
        ({"layers": [1, 2, {"act": torch.nn.ReLU()}]}, "config['layers'][2]['act']"),
        ({"seed": np.int64(3)}, "config['seed']"),
        ({"tags": {"a", "b"}}, "config['tags']"),
        ({"t": torch.tensor(1.0)}, "config['t']"),
    ],
)
def test_non_json_config_value_names_key(store, config, path):
    with pytest.raises(TypeError, match=re.escape(path)):
        store.key("model", config)
    with pytest.raises(TypeError, match=re.escape(path)):
        store.cached("model", config, lambda: 1)
    assert files_under(store.root) == []


def test_non_str_dict_key_rejected(store):
    # {1: ...} and {"1": ...} would otherwise collide in JSON.
    with pytest.raises(TypeError, match=r"config\['a'\]"):
        store.key("model", {"a": {1: "x"}})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_config_rejected(store, bad):
    with pytest.raises(ValueError, match=re.escape("config['opt']['wd']")):
        store.key("model", {"opt": {"wd": bad}})


@pytest.mark.parametrize("kind", ["", "../x", "a/b", ".hidden", "..", "a b"])
def test_unsafe_kind_rejected(store, kind):
    with pytest.raises(ValueError, match="kind"):
        store.path(kind, {})


def test_config_must_be_dict(store):
    with pytest.raises(TypeError, match="dict"):
        store.key("model", [1, 2])


def test_path_layout(store):
    p = store.path("model", CONFIG)
    assert p == store.root / "model" / f"{store.key('model', CONFIG)}.pt"


# --------------------------------------------------------------------------- save / load / cached


def test_cached_computes_once_then_loads(store, strict_warnings):
    compute = Counter({"w": torch.arange(5.0)})
    first = store.cached("model", CONFIG, compute)
    second = store.cached("model", CONFIG, compute)
    third = Store(store.root).cached("model", dict(reversed(list(CONFIG.items()))), compute)
    assert compute.calls == 1
    for got in (first, second, third):
        assert torch.equal(got["w"], torch.arange(5.0))
    store.cached("model", {**CONFIG, "seed": 7}, compute)
    assert compute.calls == 2


def test_cached_none_payload_counts_as_hit(store, strict_warnings):
    compute = Counter(None)
    assert store.cached("metric", {"a": 1}, compute) is None
    assert store.cached("metric", {"a": 1}, compute) is None
    assert compute.calls == 1


def test_load_absent_is_none(store, strict_warnings):
    assert store.load("model", CONFIG) is None


def test_payload_round_trips_exactly(store, strict_warnings):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    payload = {
        "state": {
            "conv.weight": torch.randn(4, 3, 3, 3),
            "bn.num_batches": torch.tensor(17, dtype=torch.int64),
            "half": torch.randn(5).half(),
            "bf16": torch.randn(5).to(torch.bfloat16),
            "f64": torch.randn(2, 2, dtype=torch.float64),
            "u8": torch.arange(256, dtype=torch.uint8),
            "i32": torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32),
            "mask": torch.tensor([True, False, True]),
            "complex": torch.randn(3, dtype=torch.complex64),
            "empty": torch.empty(0, 7),
            "view_t": base.t(),
            "view_slice": base[1:, ::2],
        },
        "history": [{"epoch": 0, "loss": 2.3, "acc": 0.1}, {"epoch": 1, "loss": 1.7, "acc": 0.4}],
        "pair": (1, "two", 3.0),
        "name": "résnet-π",
        "big": 2**70,
        "neg_zero": -0.0,
        "flags": [True, False, None],
        "nested": {"a": {"b": {"c": [torch.ones(2), [torch.zeros(1, dtype=torch.int16)]]}}},
    }

    def check(a, b):
        assert type(a) is type(b), (a, b)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b)
        elif isinstance(a, dict):
            assert list(a) == list(b)
            for k in a:
                check(a[k], b[k])
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                check(x, y)
        elif isinstance(a, float):
            assert a == b and math.copysign(1, a) == math.copysign(1, b)
        else:
            assert a == b

    store.save("model", CONFIG, payload)
    check(payload, store.load("model", CONFIG))


def test_save_overwrites_and_sidecar_is_consistent(store, strict_warnings):
    store.save("model", CONFIG, {"v": torch.zeros(3)})
    pt = store.save("model", CONFIG, {"v": torch.ones(3)})
    assert torch.equal(store.load("model", CONFIG)["v"], torch.ones(3))
    meta = json.loads(pt.with_suffix(".json").read_text())
    assert set(meta) == {"kind", "config", "code", "sha256", "created"}
    assert meta["kind"] == "model"
    assert meta["code"] == code_version()
    assert meta["config"] == json.loads(json.dumps(CONFIG))  # tuples stored as lists
    assert meta["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert sorted(p.name for p in files_under(store.root)) == sorted([pt.name, pt.stem + ".json"])


def test_loaded_tensors_are_on_cpu(store):
    payload = {"w": torch.ones(2)}
    if torch.cuda.is_available():
        payload["w"] = payload["w"].cuda()
    store.save("model", {}, payload)
    assert store.load("model", {})["w"].device.type == "cpu"


# --------------------------------------------------------------------------- corruption


def _flip_bytes(pt: pathlib.Path) -> None:
    data = bytearray(pt.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    pt.write_bytes(bytes(data))


def _truncate(pt: pathlib.Path) -> None:
    pt.write_bytes(pt.read_bytes()[: len(pt.read_bytes()) // 3])


def _delete_sidecar(pt: pathlib.Path) -> None:
    pt.with_suffix(".json").unlink()


def _garbage_sidecar(pt: pathlib.Path) -> None:
    pt.with_suffix(".json").write_text("{not json")


def _sidecar_for_other_entry(pt: pathlib.Path) -> None:
    # A valid-looking sidecar whose config does not hash to this key.
    side = pt.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["config"]["seed"] = 12345
    side.write_text(json.dumps(meta))


class _NotAllowed:
    pass


def _unpicklable_but_checksummed(pt: pathlib.Path) -> None:
    # Checksum matches, but weights_only refuses the content.
    torch.save({"obj": _NotAllowed()}, pt)
    side = pt.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage",
    [
        _flip_bytes,
        _truncate,
        _delete_sidecar,
        _garbage_sidecar,
        _sidecar_for_other_entry,
        _unpicklable_but_checksummed,
    ],
)
def test_corrupt_file_warns_and_is_recomputed(store, damage):
    compute = Counter({"w": torch.randn(64, 64), "n": 3})
    pt = store.path("model", CONFIG)
    store.cached("model", CONFIG, compute)
    assert pt.exists()
    damage(pt)

    with pytest.warns(CorruptArtifactWarning, match=re.escape(str(pt))) as record:
        got = store.cached("model", CONFIG, compute)
    assert compute.calls == 2
    assert "recomputed" in str(record[0].message)
    assert torch.equal(got["w"], compute.payload["w"])

    # The recomputed entry is valid: it loads silently and matches its sidecar.
    meta = json.loads(pt.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = store.cached("model", CONFIG, compute)
    assert compute.calls == 2
    assert torch.equal(again["w"], compute.payload["w"])


def test_corrupt_load_deletes_and_returns_none(store):
    pt = store.save("model", CONFIG, {"w": torch.ones(10)})
    _truncate(pt)
    with pytest.warns(CorruptArtifactWarning, match=re.escape(str(pt))):
        assert store.load("model", CONFIG) is None
    assert files_under(store.root) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.load("model", CONFIG) is None


def test_orphan_sidecar_reads_as_absent(store, strict_warnings):
    pt = store.save("model", CONFIG, {"w": torch.ones(1)})
    pt.unlink()
    assert store.load("model", CONFIG) is None


# --------------------------------------------------------------------------- failures leave nothing


def test_compute_raising_writes_nothing(store):
    def boom():
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        store.cached("model", CONFIG, boom)
    assert files_under(store.root) == []
    # Only the (empty) lock file and its folders: no artifact, sidecar or temporary file.
    assert {p.name for p in store.root.rglob("*") if p.is_file()} <= {f"{store.key('model', CONFIG)}.lock"}


def _generator():
    yield 1


@pytest.mark.parametrize(
    "payload",
    [
        {"fn": lambda x: x},
        {"gen": _generator()},
        {"obj": _NotAllowed()},  # torch.save accepts it, weights_only load would not
        {"w": torch.ones(2), "nested": [{"frame": pd.DataFrame({"a": [1]})}]},
    ],
    ids=["lambda", "generator", "custom-class", "dataframe"],
)
def test_unserialisable_payload_errors_and_leaves_nothing(store, payload):
    with pytest.raises(TypeError, match="payload"):
        store.save("model", CONFIG, payload)
    assert files_under(store.root) == []
    with pytest.raises(TypeError):
        store.cached("model", CONFIG, lambda: payload)
    assert files_under(store.root) == []


def test_failed_save_keeps_previous_entry(store, strict_warnings):
    store.save("model", CONFIG, {"w": torch.ones(3)})
    before = files_under(store.root)
    with pytest.raises(TypeError):
        store.save("model", CONFIG, {"fn": lambda: 0})
    assert files_under(store.root) == before
    assert torch.equal(store.load("model", CONFIG)["w"], torch.ones(3))


# --------------------------------------------------------------------------- interrupted save

_KILLED_SAVE = """
import os, sys, torch
from stitchlib import store

def die(src, dst):
    os._exit(17)  # like SIGKILL: no cleanup handlers run

store.os.replace = die
# Pin the parent's code version: sibling modules may be edited between the two
# processes, which would otherwise change the key.
store.code_version = lambda: sys.argv[2]
store.Store(sys.argv[1]).save("model", {"a": 1}, {"w": torch.ones(3)})
"""


def test_interrupted_save_leaves_only_ignored_temp_file(store, strict_warnings):
    # Chosen behaviour: a temp file orphaned by a killed writer is ignored by
    # load/cached and never removed automatically (a live writer elsewhere may
    # own it); Store.sweep_temp removes those older than a threshold.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_SAVE, str(store.root), code_version()],
        env=env,
        capture_output=True,
    )
    assert proc.returncode == 17, proc.stderr.decode()

    left = files_under(store.root)
    assert len(left) == 1
    tmp = left[0]
    key = store.key("model", {"a": 1})
    assert tmp.name.startswith(f".{key}.pt.") and tmp.name.endswith(".tmp")
    assert not store.path("model", {"a": 1}).exists()

    assert store.load("model", {"a": 1}) is None
    compute = Counter({"w": torch.full((3,), 2.0)})
    got = store.cached("model", {"a": 1}, compute)
    assert compute.calls == 1 and torch.equal(got["w"], torch.full((3,), 2.0))
    assert torch.equal(store.load("model", {"a": 1})["w"], torch.full((3,), 2.0))
    assert tmp.exists()

    assert store.sweep_temp() == []  # too young to be known-dead
    assert store.sweep_temp(older_than_s=0) == [tmp]
    assert sorted(p.suffix for p in files_under(store.root)) == [".json", ".pt"]
    assert store.cached("model", {"a": 1}, compute)["w"].sum() == 6
    assert compute.calls == 1


def test_sweep_temp_on_missing_root(tmp_path):
    assert Store(tmp_path / "nope").sweep_temp(older_than_s=0) == []


# --------------------------------------------------------------------------- DataFrames


def _assert_frames_identical(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True, check_index_type=True,
                                  check_column_type=True, check_names=True)
    assert list(a.columns) == list(b.columns)
    assert [str(d) for d in a.dtypes] == [str(d) for d in b.dtypes]
    assert list(a.dtypes) == list(b.dtypes)
    assert a.columns.dtype == b.columns.dtype and a.index.dtype == b.index.dtype


def _tidy_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": ["resnet18", "vgg11", "résnet"],
            "layer": [3, 7, -1],
            "stitch_loss": [0.125, float("nan"), 1e-300],
            "frozen": [True, False, True],
            "acc32": np.array([0.5, 0.25, 1 / 3], dtype=np.float32),
            "n32": np.array([1, 2, 3], dtype=np.int32),
            "u64": np.array([0, 1, 2**64 - 1], dtype=np.uint64),
            "objstr": pd.Series(["a", None, float("nan")], dtype=object),
            "nullable": pd.array([1, None, 3], dtype="Int64"),
            "maybe": pd.array([True, None, False], dtype="boolean"),
            "strNA": pd.array(["x", None, "z"], dtype="string"),
            "strnan": pd.Series(["x", None, "z"], dtype="str"),
        }
    )[["stitch_loss", "model", "layer", "frozen", "acc32", "n32", "u64",
       "objstr", "nullable", "maybe", "strNA", "strnan"]]  # fmt: skip


def test_frame_round_trip(store, strict_warnings):
    df = _tidy_frame()
    back = payload_to_frame(frame_to_payload(df))
    _assert_frames_identical(df, back)
    assert back["objstr"].iloc[1] is None and math.isnan(back["objstr"].iloc[2])

    store.save("metric", {"exp": "cka"}, frame_to_payload(df))
    _assert_frames_identical(df, payload_to_frame(store.load("metric", {"exp": "cka"})))


def test_frame_round_trip_index_and_labels(strict_warnings):
    df = _tidy_frame().iloc[[2, 0]]  # non-default index
    df.index.name = "row"
    _assert_frames_identical(df, payload_to_frame(frame_to_payload(df)))

    dup = pd.DataFrame([[1, 2.5, "a"]], columns=["x", "x", 3])
    _assert_frames_identical(dup, payload_to_frame(frame_to_payload(dup)))

    mixed = pd.DataFrame({"m": pd.Series([1, 1.0, True, "1", None], dtype=object)})
    back = payload_to_frame(frame_to_payload(mixed))
    _assert_frames_identical(mixed, back)
    assert [type(v) for v in back["m"]] == [int, float, bool, str, type(None)]

    labelled = pd.DataFrame({"v": [1.0, 2.0]}, index=pd.Index(["a", "b"], dtype=object, name="k"))
    _assert_frames_identical(labelled, payload_to_frame(frame_to_payload(labelled)))

    unnamed = pd.DataFrame(np.arange(6).reshape(2, 3))  # RangeIndex columns
    _assert_frames_identical(unnamed, payload_to_frame(frame_to_payload(unnamed)))


def test_frame_round_trip_empty(strict_warnings):
    df = _tidy_frame().iloc[:0]
    _assert_frames_identical(df, payload_to_frame(frame_to_payload(df)))
    nothing = pd.DataFrame()
    _assert_frames_identical(nothing, payload_to_frame(frame_to_payload(nothing)))


@pytest.mark.parametrize(
    "df",
    [
        pd.DataFrame({"tuples": pd.Series([(1, 2), "a"], dtype=object)}),
        pd.DataFrame({"npscalar": pd.Series([np.int64(1)], dtype=object)}),
        pd.DataFrame({"t": pd.to_datetime(["2024-01-01"])}),
        pd.DataFrame({"c": pd.Categorical(["a"])}),
        pd.DataFrame({"v": [1]}, index=pd.MultiIndex.from_tuples([("a", 1)])),
    ],
    ids=["tuple-object", "numpy-scalar-object", "datetime", "category", "multiindex"],
)
def test_frame_unsupported_is_rejected(df):
    with pytest.raises(TypeError):
        frame_to_payload(df)


def test_payload_to_frame_rejects_foreign_payload():
    with pytest.raises(ValueError):
        payload_to_frame({"columns": []})

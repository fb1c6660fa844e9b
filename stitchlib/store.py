"""Content-addressed artifact store.

Trained models, stitchers and metrics are stored under a hash of everything
that determined them: the artifact kind, its full configuration (which the
caller makes include the dataset identity) and the version of this code.
Re-running with the same parameters therefore loads instead of recomputing,
and any change to the code or the parameters silently misses the cache rather
than returning a stale result.

On-disk layout, for ``root/<kind>/``::

    <key>.pt              torch.save output of the payload
    <key>.json            sidecar: kind, config, code version, sha256 of the .pt, created
    .<key>.pt.<rand>.tmp  an unfinished write (only ever left by a killed process)

Durability and failure model:

* Both files are written to a temporary file in the same folder, fsynced and
  moved into place with ``os.replace``, so a reader never sees a half-written
  ``.pt`` or sidecar under its final name.
* The sidecar is written after the ``.pt``. A ``.pt`` whose sidecar is missing
  or disagrees with it is treated as corrupt: ``load`` warns, deletes both and
  reports a miss, so the caller recomputes. Data is never returned unverified.
* A process killed between writing a temporary file and renaming it leaves a
  hidden ``.tmp`` file behind. The store ignores such files (they can never
  match ``<key>.pt``) and does not delete them on its own, because a live
  writer in another process may still own one; ``Store.sweep_temp`` removes
  those older than a given age.
* Many workers share one store (processes on one machine, or Ray workers on a
  file system every node mounts). ``cached`` computes each key at most once:
  on a miss it takes a per-key lock (``root/.locks/<kind>/<key>.lock``, an
  ``flock`` through the ``filelock`` package), looks again, and only then
  computes. A worker waiting for the lock loads what the holder stored. The
  kernel drops the lock of a killed worker, so a stale lock is taken over at
  once; what the killed worker left is at most an ignored ``.tmp`` file.
  ``save`` alone (without ``cached``) takes no lock: a reader then gets either
  a verified payload or a miss.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import io
import json
import math
import os
import pathlib
import re
import tempfile
import time
import warnings
from typing import Any, Callable

import filelock
import torch

from . import locations

__all__ = [
    "CorruptArtifactWarning",
    "Store",
    "code_version",
    "default_store_root",
    "frame_to_payload",
    "payload_to_frame",
]

ENV_VAR = locations.STORE_ENV

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_KIND_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TEMP_SUFFIX = ".tmp"
_CHUNK = 1 << 20


class CorruptArtifactWarning(UserWarning):
    """A stored artifact failed verification and was deleted."""


# --------------------------------------------------------------------------- versions and roots


# The modules that compute what is stored: a stored artifact's key covers their source, and only
# theirs. Editing a notebook's pipeline (stitchlib/experiments/ but compute.py), the claims, the
# plots or the reports keeps every trained model; editing the training code does not.
COMPUTING_MODULES = ("data.py", "models.py", "training.py", "precision.py", "ssl.py", "stitching.py",
                     "similarity.py", "pretrained.py", "store.py", "experiments/compute.py")


def _hash_sources(directory: pathlib.Path, modules=COMPUTING_MODULES) -> str:
    h = hashlib.sha256()
    for name in sorted(modules):
        file = directory / name
        if not file.is_file():
            continue
        data = file.read_bytes()
        # Name and length frame each file so that renaming a module, or moving
        # bytes from one file to the next, also changes the digest.
        h.update(name.encode("utf-8") + b"\0")
        h.update(str(len(data)).encode("ascii") + b"\0")
        h.update(data)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """``<stitchlib.__version__>+<12 hex of sha256 over COMPUTING_MODULES>``, cached per process."""
    from stitchlib import __version__

    return f"{__version__}+{_hash_sources(_PACKAGE_DIR)[:12]}"


def default_store_root() -> pathlib.Path:
    """``$STITCHLIB_STORE`` if set and non-empty (made absolute now, so a later chdir cannot move an
    existing Store), else ``<checkout>/runs/store``, else the per-user folder: `stitchlib.locations`."""
    return locations.store_dir()


# --------------------------------------------------------------------------- canonical config


def _fmt_path(path: tuple) -> str:
    return "config" + "".join(f"[{p!r}]" for p in path)


def _canonical(value: Any, path: tuple = ()) -> Any:
    # bool before int: bool is an int subclass but must stay a JSON boolean.
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(
                f"config value at {_fmt_path(path)} is {value!r}; NaN and infinities have no "
                "canonical JSON form and would make the key unreliable"
            )
        return float(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                # JSON would coerce 1 and "1" to the same key, merging distinct configs.
                raise TypeError(
                    f"config key {k!r} at {_fmt_path(path)} is a {type(k).__name__}; "
                    "only str keys are allowed"
                )
            out[k] = _canonical(v, path + (k,))
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, path + (i,)) for i, v in enumerate(value)]
    raise TypeError(
        f"config value at {_fmt_path(path)} is not JSON-serialisable "
        f"(object of type {type(value).__module__}.{type(value).__qualname__})"
    )


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _key_for(kind: str, canonical_config: Any, code: str) -> str:
    return hashlib.sha256(
        _canonical_json({"kind": kind, "config": canonical_config, "code": code})
    ).hexdigest()


def _check_kind(kind: str) -> None:
    # kind becomes a directory name; anything path-like could escape the root.
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise ValueError(
            f"kind must match {_KIND_RE.pattern!r} (it is used as a folder name), got {kind!r}"
        )


# --------------------------------------------------------------------------- file helpers


def _fsync_dir(folder: pathlib.Path) -> None:
    # Makes the rename itself durable; not supported on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_temp(folder: pathlib.Path, final_name: str) -> tuple[int, pathlib.Path]:
    # Leading dot plus .tmp suffix: can never collide with "<key>.pt"/"<key>.json".
    fd, name = tempfile.mkstemp(prefix=f".{final_name}.", suffix=_TEMP_SUFFIX, dir=folder)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from collaborators
    return fd, pathlib.Path(name)


def _atomic_write_bytes(final: pathlib.Path, data: bytes) -> None:
    fd, tmp = _new_temp(final.parent, final.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the store


class Store:
    """Content-addressed, verified, atomically written store of torch payloads."""

    def __init__(self, root: str | os.PathLike | None = None):
        # The folder is created on first save, so merely constructing a Store
        # (e.g. to look something up) never litters the filesystem.
        self.root: pathlib.Path = (
            default_store_root() if root is None else pathlib.Path(root).expanduser().absolute()
        )

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ---- addressing

    def _describe(self, kind: str, config: dict) -> tuple[str, Any, str]:
        _check_kind(kind)
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        canonical = _canonical(config)
        code = code_version()
        return _key_for(kind, canonical, code), canonical, code

    def key(self, kind: str, config: dict) -> str:
        """sha256 hex of the canonical JSON of ``{"kind", "config", "code": code_version()}``."""
        return self._describe(kind, config)[0]

    def path(self, kind: str, config: dict) -> pathlib.Path:
        """``root/<kind>/<key>.pt``."""
        return self.root / kind / f"{self.key(kind, config)}.pt"

    # ---- reading

    def _load(self, kind: str, config: dict) -> tuple[bool, Any]:
        # (found, payload): a stored None must count as a hit in cached().
        key, _, _ = self._describe(kind, config)
        pt = self.root / kind / f"{key}.pt"
        sidecar = pt.with_suffix(".json")
        try:
            # One read serves both the checksum and the unpickling, so the file
            # cannot change between verification and use.
            blob = pt.read_bytes()
        except FileNotFoundError:
            return False, None

        try:
            meta = json.loads(sidecar.read_bytes())
        except FileNotFoundError:
            return self._discard(pt, sidecar, f"its sidecar {sidecar.name} is missing")
        except (ValueError, UnicodeDecodeError) as e:
            return self._discard(pt, sidecar, f"its sidecar {sidecar.name} is unreadable: {e}")
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            return self._discard(pt, sidecar, f"its sidecar {sidecar.name} is malformed")
        try:
            described = _key_for(meta.get("kind"), meta.get("config"), meta.get("code"))
        except (TypeError, ValueError):
            described = None
        if described != key:
            return self._discard(pt, sidecar, f"its sidecar {sidecar.name} describes another entry")
        if _sha256(blob) != meta["sha256"]:
            return self._discard(pt, sidecar, "checksum mismatch (truncated or modified)")
        try:
            payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "corrupt"
            return self._discard(pt, sidecar, f"cannot be unpickled: {type(e).__name__}: {e}")
        return True, payload

    def _discard(self, pt: pathlib.Path, sidecar: pathlib.Path, reason: str) -> tuple[bool, None]:
        warnings.warn(
            f"stitchlib store: artifact {pt} is corrupt ({reason}); "
            "deleting it, it will be recomputed",
            CorruptArtifactWarning,
            stacklevel=4,
        )
        # .pt first: a lone sidecar reads as "absent", a lone .pt as "corrupt".
        pt.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return False, None

    def load(self, kind: str, config: dict) -> Any | None:
        """The stored payload, or None if absent or corrupt (corrupt: warns and deletes)."""
        return self._load(kind, config)[1]

    # ---- writing

    def save(self, kind: str, config: dict, payload: Any) -> pathlib.Path:
        """Store ``payload`` atomically; returns the ``.pt`` path.

        Raises TypeError, leaving nothing behind, if the payload cannot be
        saved or would not load back with ``torch.load(weights_only=True)``;
        an existing entry for the same key is then left untouched.
        """
        key, canonical, code = self._describe(kind, config)
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{key}.pt"

        fd, tmp = _new_temp(folder, final.name)
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    torch.save(payload, f)
                except OSError:
                    raise
                except Exception as e:
                    raise TypeError(
                        f"payload for {kind!r} cannot be serialised by torch.save: "
                        f"{type(e).__name__}: {e}"
                    ) from e
                f.flush()
                os.fsync(f.fileno())
            blob = tmp.read_bytes()
            # Something torch.save accepts but weights_only rejects (any custom
            # class) would otherwise be "corrupt" on every load and recomputed
            # forever; refuse it here where the caller can see why.
            try:
                torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            except Exception as e:
                raise TypeError(
                    f"payload for {kind!r} would not load back with torch.load(weights_only=True); "
                    f"store only tensors, dicts, lists, tuples, str, int, float, bool and None "
                    f"({type(e).__name__}: {e})"
                ) from e
            digest = _sha256(blob)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)

        meta = {
            "kind": kind,
            "config": canonical,
            "code": code,
            "sha256": digest,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        sidecar = folder / f"{key}.json"
        try:
            _atomic_write_bytes(sidecar, json.dumps(meta, sort_keys=True, indent=1).encode("utf-8"))
        except BaseException:
            # Without its sidecar the .pt is unverifiable; don't leave it around.
            final.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        return final

    def cached(self, kind: str, config: dict, compute: Callable[[], Any]) -> Any:
        """Load the payload, or ``compute()`` it, save it and return it.

        On a miss the freshly computed object is returned as is (it may still
        live on the GPU); on a hit it is the CPU copy read from disk. If
        ``compute`` raises, nothing is written.
        """
        found, payload = self._load(kind, config)
        if found:
            return payload
        with self.lock(kind, config):
            # Another worker may have stored it while this one waited for the lock.
            found, payload = self._load(kind, config)
            if found:
                return payload
            payload = compute()
            self.save(kind, config, payload)
        return payload

    def lock(self, kind: str, config: dict) -> filelock.FileLock:
        """The per-key lock ``cached`` holds while it computes (a context manager). Lock files
        live apart from the artifacts, under ``root/.locks/``, and are left in place: deleting a
        lock file another worker has open would let two workers hold "the" lock at once."""
        key = self.key(kind, config)
        folder = self.root / ".locks" / kind
        folder.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(folder / f"{key}.lock")

    def check_writable(self) -> None:
        """Raise PermissionError, saying what to do, unless a worker can create files in the store
        (checked before any work, not after the first hour of training)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".write-check.", suffix=_TEMP_SUFFIX, dir=self.root)
            os.close(fd)
            os.unlink(name)
        except OSError as err:
            raise PermissionError(
                f"the artifact store {self.root} is not writable ({type(err).__name__}: {err}); give a folder this "
                f"user can write: store=... (notebooks), --store (command line) or ${ENV_VAR}"
            ) from None

    # ---- housekeeping

    def sweep_temp(self, older_than_s: float = 3600.0) -> list[pathlib.Path]:
        """Delete temporary files left by interrupted saves; returns what was removed.

        Only files older than ``older_than_s`` are touched, since a younger one
        may belong to a save still running in another process.
        """
        removed: list[pathlib.Path] = []
        if not self.root.is_dir():
            return removed
        cutoff = time.time() - older_than_s
        for tmp in self.root.glob(f"*/.*{_TEMP_SUFFIX}"):
            try:
                if tmp.is_file() and tmp.stat().st_mtime <= cutoff:
                    tmp.unlink()
                    removed.append(tmp)
            except FileNotFoundError:
                pass
        return removed


# --------------------------------------------------------------------------- DataFrames

_NUMPY_KINDS = "biuf"  # bool, signed, unsigned, float


def _encode_dtype(dtype: Any) -> str:
    import numpy as np
    import pandas as pd

    if isinstance(dtype, pd.StringDtype):
        # Storage and NA flavour are part of the dtype; "str" alone would be
        # rebuilt with whatever default the loading machine has.
        na = "nan" if dtype.na_value is np.nan else "NA"
        return f"string:{dtype.storage}:{na}"
    if isinstance(dtype, np.dtype):
        if dtype.kind in _NUMPY_KINDS:
            return dtype.name
        if dtype == object:
            return "object"
    if isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.name in _NULLABLE:
        return dtype.name
    raise TypeError(f"unsupported dtype {dtype!r}; use str, int, float or bool columns")


_NULLABLE = {
    "boolean", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
    "Float32", "Float64",
}  # fmt: skip


def _decode_dtype(spec: str) -> Any:
    import numpy as np
    import pandas as pd

    if spec.startswith("string:"):
        _, storage, na = spec.split(":")
        return pd.StringDtype(storage=storage, na_value=np.nan if na == "nan" else pd.NA)
    if spec == "object" or spec in _NULLABLE:
        return pd.api.types.pandas_dtype(spec)
    dtype = np.dtype(spec)
    if dtype.kind not in _NUMPY_KINDS:
        raise ValueError(f"unsupported dtype spec {spec!r}")
    return dtype


def _encode_values(values: Any, what: str) -> tuple[str, list]:
    import numpy as np
    import pandas as pd

    spec = _encode_dtype(values.dtype)
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in _NUMPY_KINDS:
        return spec, np.asarray(values).tolist()  # exact python bool/int/float
    out = []
    for v in values.tolist():
        if spec == "object":
            # Kept verbatim: pickle keeps 1 / 1.0 / True / "1" / None / NaN
            # distinct. Exact builtin types only, since a numpy scalar would
            # come back as a different type.
            if not (v is None or type(v) in (str, int, float, bool)):
                raise TypeError(
                    f"{what} is an object column holding a {type(v).__name__} ({v!r}); "
                    "only str, int, float, bool and None are supported"
                )
            out.append(v)
            continue
        if isinstance(v, np.generic):
            v = v.item()
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out.append(None)  # the dtype's own NA marker is restored on decode
        elif isinstance(v, (str, bool, int, float)):
            out.append(v)
        else:
            raise TypeError(
                f"{what} holds a {type(v).__name__} ({v!r}); only str, int, float, bool"
            )
    return spec, out


def _encode_label(label: Any, what: str) -> Any:
    if label is None or isinstance(label, (str, bool, int, float)):
        return label
    raise TypeError(f"{what} {label!r} must be str, int, float, bool or None")


def _encode_index(index: Any, what: str) -> dict:
    import pandas as pd

    if isinstance(index, pd.MultiIndex):
        raise TypeError(f"{what} is a MultiIndex; reset it first")
    name = _encode_label(index.name, f"{what} name")
    if isinstance(index, pd.RangeIndex):
        return {"range": [index.start, index.stop, index.step], "name": name}
    spec, values = _encode_values(index, what)
    return {"dtype": spec, "values": values, "name": name}


def _decode_index(enc: dict) -> Any:
    import pandas as pd

    if "range" in enc:
        return pd.RangeIndex(*enc["range"], name=enc["name"])
    # dtype passed explicitly: pandas would otherwise re-infer (object -> str).
    return pd.Index(enc["values"], dtype=_decode_dtype(enc["dtype"]), name=enc["name"])


def frame_to_payload(df: Any) -> dict:
    """Encode a DataFrame of str/int/float/bool columns as a weights_only-loadable dict.

    Column order, labels, dtypes, values (NaN and missing included) and the
    row and column index round-trip exactly through ``payload_to_frame``.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    dtypes, data = [], []
    # Positional access: labels may repeat, so a dict keyed by label would lose columns.
    for i in range(df.shape[1]):
        spec, values = _encode_values(df.iloc[:, i], f"column {df.columns[i]!r}")
        dtypes.append(spec)
        data.append(values)
    return {
        "format": "stitchlib.frame/1",
        "columns": _encode_index(df.columns, "column index"),
        "index": _encode_index(df.index, "row index"),
        "dtypes": dtypes,
        "data": data,
    }


def payload_to_frame(payload: dict) -> Any:
    """Inverse of ``frame_to_payload``."""
    import pandas as pd

    if not isinstance(payload, dict) or payload.get("format") != "stitchlib.frame/1":
        raise ValueError("not a payload produced by frame_to_payload")
    index = _decode_index(payload["index"])
    columns = _decode_index(payload["columns"])
    series = {
        i: pd.Series(values, dtype=_decode_dtype(spec), index=index)
        for i, (spec, values) in enumerate(zip(payload["dtypes"], payload["data"]))
    }
    df = pd.DataFrame(series, index=index)
    df.columns = columns
    return df

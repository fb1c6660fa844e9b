"""The record of a run beside every table and figure it writes (issue 14).

Naming: the record of an output sits in the same folder, named after the output's stem:
``01_connectivity.csv`` -> ``01_connectivity.record.json``; a figure's PNG and PDF
(``fig2a_connectivity.png``, ``.pdf``) share ``fig2a_connectivity.record.json``. Its ``files`` field
names the files it describes. (So a stem names one output: a table and a figure never share one.)

Fields (JSON, keys sorted, written atomically: temp file + rename):

- the output: ``files`` (names), ``written`` (ISO 8601 UTC, when the record was written, just after
  the files) and ``record_format``;
- the run (null where no run is known, see below): ``experiment``, ``notebook``, ``profile``,
  ``params`` (the resolved parameters, ``Params.as_dict()``), ``seeds`` and ``seed_pairs`` (the
  (top, bottom) pairs the seeds make), ``executor``, ``numerics``, ``device`` (e.g. "cuda:0"),
  ``device_name`` (the GPU model, or the CPU model), ``dataset`` (name, source, ``sha256`` of the
  decoded images and labels: `stitchlib.data.data_sha256`), ``store`` and ``figures`` (folders),
  ``started`` (ISO 8601 UTC, when the run's `Setup` was made);
- the machine and code: ``python``, ``torch``, ``torchvision``, ``cuda``, ``cudnn``, ``platform``,
  ``cpu`` (model), ``cpus``, ``cpu_flags`` (/proc/cpuinfo's flags; elsewhere
  ``platform.processor()``), ``cpu_capability`` (ATen's SIMD level, which decides CPU numerics),
  ``gpus``, ``stitchlib`` (version), ``code_version`` (the store's: `stitchlib.store.code_version`),
  ``git`` (``commit`` and ``dirty``: tracked files changed; both null outside a git checkout).

Everything but ``started`` and ``written`` is the same for the same run on the same machine and
checkout. Paths under the home folder are written as ``~/...``; ``params`` are kept as given.

Which run an output belongs to: the writer names it (``write_csv(frame, path, record=setup)``,
``save_figure(fig, folder, name, record=setup)``); with ``record=None`` (an output of no run) the
record has the machine and code fields only. A CSV written for a run also carries the run's
profile as its first column (`stitchlib.tables.write_csv`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import subprocess
import weakref
from pathlib import Path

__all__ = ["RECORD_FORMAT", "record_path", "build", "write", "write_for", "environment", "run_fields", "git_state",
           "dataset_fields", "now"]

RECORD_FORMAT = 1
SUFFIX = ".record.json"
_PACKAGE_DIR = Path(__file__).resolve().parent


def now() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record_path(path: str | os.PathLike) -> Path:
    """The record of the file `path`: <its name without the extension>.record.json beside it."""
    path = Path(path)
    return path.with_name(path.stem + SUFFIX)


def _tilde(text):
    """`text` with the home folder written as ~ (records are shared; home paths name their user)."""
    if not isinstance(text, str):
        return text
    home = str(Path.home())
    if home in ("", "/"):
        return text
    # Where a path starts: the text's start, or after "kind:" (a data source), "=" or a space.
    return re.sub(r"(?:^|(?<=[:=\s]))" + re.escape(home.rstrip("/")) + r"(?=/|$|\s)", "~", text)


# ------------------------------------------------------------------ the machine and the code


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, ARM
                    return sorted(set(value.split()))
    except OSError:
        pass
    return [platform.processor()] if platform.processor() else []


@functools.lru_cache(maxsize=None)
def _machine() -> dict:
    """What cannot change while the process runs (versions, the CPU), read once."""
    import torch

    from . import __version__
    from .store import code_version
    from .training import device_name

    try:
        import torchvision
        vision = torchvision.__version__
    except ImportError:
        vision = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        capability = None
    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=vision,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                else None, platform=platform.platform(), cpu=device_name("cpu"), cpus=os.cpu_count(),
                cpu_flags=_cpu_flags(), cpu_capability=capability, gpus=torch.cuda.device_count(),
                stitchlib=__version__, code_version=code_version())


def git_state(root: str | os.PathLike | None = None) -> dict:
    """{"commit": HEAD's sha, "dirty": whether tracked files differ from it} of the checkout that
    holds `root` (default: this package's), or both None outside a git checkout (or without git)."""
    root = Path(root) if root is not None else _PACKAGE_DIR.parent
    none = dict(commit=None, dirty=None)

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()
    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if top != root.resolve() and top not in root.resolve().parents:
            return none
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return none
    return dict(commit=commit if re.fullmatch(r"[0-9a-f]{40,64}", commit) else None, dirty=dirty)


def environment() -> dict:
    """The machine and code fields of a record (see the module docstring)."""
    return {**_machine(), "git": git_state()}


# ------------------------------------------------------------------ the run


_DIGESTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def dataset_fields(dataset) -> dict:
    """name, source and sha256 of a loaded dataset; the sha256 is its identity's, else computed
    once per dataset object (`stitchlib.data.data_sha256`)."""
    ident = dict(getattr(dataset, "identity", None) or {})
    digest = ident.get("sha256")
    if not digest:
        digest = _DIGESTS.get(dataset)
        if digest is None:
            from .data import data_sha256

            digest = _DIGESTS[dataset] = data_sha256(dataset.train, dataset.test)
    return dict(name=ident.get("name", getattr(dataset, "name", None)), source=_tilde(ident.get("source")),
                sha256=digest)


RUN_FIELDS = ("experiment", "notebook", "profile", "params", "seeds", "seed_pairs", "executor", "numerics", "device",
              "device_name", "dataset", "store", "figures", "started")


def run_fields(setup) -> dict:
    """The run's fields of a record: all None without a setup."""
    if setup is None:
        return dict.fromkeys(RUN_FIELDS)
    from .experiments.core import EXPERIMENTS
    from .training import device_name

    params = json.loads(json.dumps(setup.params, default=str))
    seeds = params.get("seeds")
    plan = getattr(setup, "plan", None)
    executor = getattr(setup, "executor", None)
    e = EXPERIMENTS.get(setup.experiment)
    return dict(experiment=setup.experiment, notebook=e.notebook if e else None, profile=setup.profile,
                params=params, seeds=seeds,
                seed_pairs=[list(pair) for pair in setup.p.seed_pairs()] if hasattr(setup, "p") else None,
                executor=getattr(executor, "name", None),
                numerics=dataclasses.asdict(plan.params.numerics()) if plan is not None else None,
                device=str(setup.device), device_name=device_name(setup.device),
                dataset=dataset_fields(setup.dataset), store=_tilde(str(Path(setup.store.root).absolute())),
                figures=_tilde(str(Path(setup.figures).absolute())), started=getattr(setup, "started", None))


def build(setup, files: list[str]) -> dict:
    """The record of `files` (names), written by the run of `setup` (None: machine and code only)."""
    return {**environment(), **run_fields(setup), "files": list(files), "record_format": RECORD_FORMAT,
            "written": now()}


def write(path: str | os.PathLike, record: dict, sort_keys: bool = True) -> Path:
    """Write `record` to `path` atomically (temp file + rename), keys sorted."""
    from .store import _atomic_write_bytes

    path = Path(path)
    _atomic_write_bytes(path, (json.dumps(record, sort_keys=sort_keys, indent=1, default=str) + "\n").encode())
    return path


def write_for(files: list[Path], setup) -> Path:
    """Write the record of `files` (one output: a table, or a figure in its formats, in one folder)
    beside them; `setup`: the run that wrote them (None: no run, the machine and code only)."""
    files = [Path(f) for f in files]
    return write(record_path(files[0]), build(setup, [f.name for f in files]))

"""Writing result tables, each with its record (`stitchlib.record`) beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import record as record_mod


def with_profile(frame: pd.DataFrame, profile: str | None) -> pd.DataFrame:
    """`frame` with a first column `profile` (a copy; `frame` itself if it has one already or
    `profile` is None)."""
    if profile is None or "profile" in frame.columns:
        return frame
    frame = frame.copy()
    frame.insert(0, "profile", profile)
    return frame


def write_csv(frame: pd.DataFrame, path: Path, record=None) -> Path:
    """Atomically (temp file + rename), so a crash never leaves half a table behind. Columns
    starting with "_" (per-image correctness) stay out. `record`: the run (`Setup`) that wrote
    it, whose profile becomes the table's first column where the table lacks one; its record
    (<name>.record.json, `stitchlib.record`) goes beside the table (None: no run; the record has
    the machine and code only)."""
    path = Path(path)
    frame = with_profile(frame, getattr(record, "profile", None))
    tmp = path.with_name(f".{path.name}.tmp")
    frame = frame[[c for c in frame.columns if not str(c).startswith("_")]]
    try:
        frame.to_csv(tmp, index=False, float_format="%.4f")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    record_mod.write_for([path], record)
    return path

"""Writing result tables."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Atomically (temp file + rename), so a crash never leaves half a table behind. Columns
    starting with "_" (per-image correctness) stay out."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    frame = frame[[c for c in frame.columns if not str(c).startswith("_")]]
    frame.to_csv(tmp, index=False, float_format="%.4f")
    os.replace(tmp, path)
    return path

"""Compare two runs' result tables (CSV folders) cell by cell: which files are identical, and in the
others which rows differ, named by their label columns. Columns only one run has are listed and
left out of the comparison (a column added by the code, say), so a new column alone does not make
a table differ.

    python bench/compare_tables.py BEFORE_DIR AFTER_DIR
"""
import sys
from pathlib import Path

import pandas as pd

LABELS = ("panel", "family", "pair", "run", "model", "claim", "method", "notebook", "width", "cut")


def main(before: Path, after: Path) -> int:
    differing = 0
    for old_path in sorted(before.glob("*.csv")):
        new_path = after / old_path.name
        if old_path.name == "timings.csv":
            continue
        if not new_path.exists():
            print(f"{old_path.name}: missing in {after}")
            differing += 1
            continue
        old, new = pd.read_csv(old_path), pd.read_csv(new_path)
        added, dropped = [c for c in new.columns if c not in old.columns], [c for c in old.columns if c not in new]
        shared = [c for c in old.columns if c in new.columns]
        note = (f" (columns added: {added})" if added else "") + (f" (columns dropped: {dropped})" if dropped else "")
        if len(old) != len(new):
            print(f"{old_path.name}: {len(old)} rows before, {len(new)} after{note}")
            differing += 1
            continue
        a, b = old[shared].reset_index(drop=True), new[shared].reset_index(drop=True)
        same = (a == b) | (a.isna() & b.isna())
        rows = ~same.all(axis=1)
        if not rows.any():
            print(f"{old_path.name}: identical{note}")
            continue
        differing += 1
        labels = [c for c in LABELS if c in shared]
        groups = a[rows][labels[:2]].drop_duplicates().astype(str).agg(" / ".join, axis=1).tolist()
        cols = sorted(same.columns[~same.all(axis=0)])
        print(f"{old_path.name}: {int(rows.sum())} of {len(a)} rows differ, in columns {cols}{note}; rows of: "
              + "; ".join(groups[:12]) + (" ..." if len(groups) > 12 else ""))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))

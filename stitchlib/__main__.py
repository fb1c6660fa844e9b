"""`python -m stitchlib readme`: rewrite the README's results block from the committed result
tables (results/<profile>/), after `python -m stitchlib collect` copied them from a run's
figures folder. `--check` only says whether the README is up to date (exit 1 if not)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .report import render_readme

ROOT = Path(__file__).resolve().parent.parent
# What a results folder keeps of a run: the claims, their per-cut summaries, the base models, the timings.
KEPT = ("*_claims.csv", "*_summary.csv", "*_models.csv", "timings.csv")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stitchlib")
    sub = parser.add_subparsers(dest="command", required=True)
    readme = sub.add_parser("readme", help="rewrite the README's results block from results/<profile>/")
    readme.add_argument("--profile", default="smoke")
    readme.add_argument("--readme", type=Path, default=ROOT / "README.md")
    readme.add_argument("--check", action="store_true", help="only check that the README is up to date")
    collect = sub.add_parser("collect", help="copy a run's result tables into results/<profile>/")
    collect.add_argument("--profile", default="smoke")
    collect.add_argument("--figures", type=Path, default=None, help="default: figures/<profile>")
    args = parser.parse_args(argv)
    results = ROOT / "results" / args.profile
    if args.command == "collect":
        source = args.figures or ROOT / "figures" / args.profile
        files = sorted(f for pattern in KEPT for f in source.glob(pattern))
        if not files:
            print(f"no result tables ({', '.join(KEPT)}) in {source}: run the notebooks first", file=sys.stderr)
            return 2
        results.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, results / f.name)
        print(f"copied {len(files)} tables to {results}")
        return 0
    text = render_readme(args.readme, results)
    if args.check:
        if text != args.readme.read_text():
            print(f"{args.readme} is out of date with {results}: run `python -m stitchlib readme`", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(text)
    print(f"rewrote the results block of {args.readme} from {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

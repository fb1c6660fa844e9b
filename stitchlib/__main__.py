"""The command line.

- `python -m stitchlib plan <notebook> [--profile P] [-p name value ...] [-y YAML] [-f params.yaml]`:
  check the parameters and print the experiment's plan (every task, whether it is in the store,
  its estimated cost) without loading data or training anything. Exit 2 on bad parameters.
- `python -m stitchlib readme`: rewrite the README's results block from the committed result
  tables (results/<profile>/), after `python -m stitchlib collect` copied them from a run's
  figures folder. `--check` only says whether the README is up to date (exit 1 if not).
"""

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
    planning = sub.add_parser("plan", help="check the parameters and print a notebook's plan and its cost")
    planning.add_argument("notebook", help="e.g. 04_more_is_better, more_is_better or notebooks/04_more_is_better.ipynb")
    planning.add_argument("--profile", default=None, help="smoke or paper (default: the -f file's, else smoke)")
    planning.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                          help="a parameter, typed as papermill's -p types it (lists and dicts: use -y)")
    planning.add_argument("-y", "--parameters_yaml", action="append", default=[], help="parameters as YAML")
    planning.add_argument("-f", "--parameters_file", action="append", default=[], help="a YAML file of parameters")
    planning.add_argument("--store", default=None, help="the artifact store (default: $STITCHLIB_STORE or runs/store)")
    planning.add_argument("--device", default=None, help="the device the run will use: store keys include its type "
                                                         "(default: the -p/-f device, else auto: CUDA if here)")
    planning.add_argument("--summary", action="store_true", help="only the cost per task kind, not every task")
    args = parser.parse_args(argv)
    if args.command == "plan":
        return _plan(args)
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


def _papermill_type(value: str):
    """The type papermill's -p gives a value: True/False/None, int, float, else text."""
    if value in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[value]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _plan(args) -> int:
    import yaml

    from .experiments import plan_report

    given: dict = {}
    # In papermill's order: files, then YAML, then -p.
    for f in args.parameters_file:
        given.update(yaml.safe_load(Path(f).read_text()) or {})
    for text in args.parameters_yaml:
        given.update(yaml.safe_load(text) or {})
    given.update({name: _papermill_type(value) for name, value in args.parameters})
    profile = args.profile or given.pop("profile", None) or "smoke"
    given.pop("profile", None)
    # The tasks are the same on every device; their store keys carry the device type.
    device = args.device or given.pop("device", None) or "auto"
    given.pop("device", None)
    try:
        text = plan_report(args.notebook, profile, store=args.store, device=device, summary=args.summary, **given)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

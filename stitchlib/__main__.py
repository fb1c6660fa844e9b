"""The command line.

- `python -m stitchlib plan <notebook> [--profile P] [-p name value ...] [-y YAML] [-f params.yaml]`:
  check the parameters and print the experiment's plan (every task, whether it is in the store,
  its estimated cost) without loading data or training anything. Exit 2 on bad parameters.
- `python -m stitchlib run <notebook|all> [--profile P] [-p/-y/-f ...] [--executor serial|ray|auto]
  [--ray-address ADDR] [--gpu-fraction F]`: compute the notebooks' plans without papermill, all of
  their tasks on one executor at once, then each notebook's tables and claims (printed, and written
  to the figures folder). The notebooks afterwards only load. Exit 2 on bad input, 1 if it failed.
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
    running = sub.add_parser("run", help="compute notebooks' plans (all their tasks on one executor), then their "
                                         "tables and claims, without papermill")
    for command in (planning, running):
        command.add_argument("notebook", help="e.g. 04_more_is_better, more_is_better, 04 or notebooks/04_more_is_better"
                                              ".ipynb" + (", or all" if command is running else ""))
        command.add_argument("--profile", default=None, help="smoke or paper (default: the -f file's, else smoke)")
        command.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                             help="a parameter, typed as papermill's -p types it (lists and dicts: use -y)")
        command.add_argument("-y", "--parameters_yaml", action="append", default=[], help="parameters as YAML")
        command.add_argument("-f", "--parameters_file", action="append", default=[], help="a YAML file of parameters")
        command.add_argument("--store", default=None, help="the artifact store (default: $STITCHLIB_STORE or runs/store)")
        command.add_argument("--device", default=None, help="the device the run will use: store keys include its type "
                                                            "(default: the -p/-f device, else auto: CUDA if here)")
    planning.add_argument("--summary", action="store_true", help="only the cost per task kind, not every task")
    running.add_argument("--executor", default=None, help="serial, ray or auto (default: the -p/-f executor, else auto)")
    running.add_argument("--ray-address", default=None, help="\"auto\" or ray://host:port to join a running cluster "
                                                             "(default: start Ray inside the run)")
    running.add_argument("--gpu-fraction", type=float, default=None, help="share of a GPU each Ray task reserves "
                                                                          "(default 0.25)")
    running.add_argument("--figures", default=None, help="where tables go (default: $STITCHLIB_FIGURES/<profile> or "
                                                         "figures/<profile>)")
    args = parser.parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    if args.command == "run":
        return _run(args)
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


def _given(args) -> tuple[str, dict, dict]:
    """(profile, the experiment's parameters, the run options) from -f files, -y YAML and -p, in
    papermill's order, with --profile, --device and the other flags taking precedence."""
    import yaml

    from .experiments.params import RUN_OPTIONS

    given: dict = {}
    for f in args.parameters_file:
        given.update(yaml.safe_load(Path(f).read_text()) or {})
    for text in args.parameters_yaml:
        given.update(yaml.safe_load(text) or {})
    given.update({name: _papermill_type(value) for name, value in args.parameters})
    options = {name: given.pop(name) for name in RUN_OPTIONS if name in given}
    flags = dict(profile=args.profile, device=args.device, executor=getattr(args, "executor", None),
                 ray_address=getattr(args, "ray_address", None), gpu_fraction=getattr(args, "gpu_fraction", None))
    options.update({k: v for k, v in flags.items() if v is not None})
    return options.pop("profile", None) or "smoke", given, options


def _plan(args) -> int:
    from .experiments import plan_report

    profile, given, options = _given(args)
    # The tasks are the same on every device; their store keys carry the device type.
    device = options.get("device", "auto")
    try:
        text = plan_report(args.notebook, profile, store=args.store, device=device, summary=args.summary, **given)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0


def _run(args) -> int:
    import time

    from .claims import check_claims
    from .experiments import EXPERIMENTS, experiment_named, setup

    start = time.perf_counter()
    profile, given, options = _given(args)
    try:
        names = list(EXPERIMENTS) if args.notebook == "all" else [experiment_named(args.notebook).name]
        if args.notebook == "all":
            declared = set().union(*(EXPERIMENTS[n].Params.names() for n in names))
            if set(given) - declared:
                raise ValueError(f"unknown parameters {sorted(set(given) - declared)} for every notebook; valid: "
                                 f"{sorted(declared)}")
        setups, executor = [], options.get("executor", "auto")
        # Every check (parameters, executor, cluster address) before any task runs.
        for name in names:
            mine = {k: v for k, v in given.items() if k in EXPERIMENTS[name].Params.names()}
            setups.append(setup(name, profile=profile, device=options.get("device", "auto"), store=args.store,
                                figures_dir=args.figures, executor=executor,
                                ray_address=options.get("ray_address", ""),
                                gpu_fraction=options.get("gpu_fraction", 0.25), **mine))
            executor = setups[0].executor  # one executor (one Ray session) for them all
    except (ValueError, TypeError, ImportError, ConnectionError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(setups)} notebook{'s' if len(setups) > 1 else ''} at profile {profile} on the {executor.name} "
          f"executor, {setups[0].p.threads} thread(s) per task; store {setups[0].store.root}", flush=True)
    try:
        with executor:
            # Every notebook's tasks at once, so that independent models of different notebooks run side
            # by side; shared tasks (01's seed pairs in 02-05) are one task.
            groups: dict = {}
            for s in setups:
                w = s.where()
                groups.setdefault((w.dataset, w.store, w.device, w.threads), (s, []))[1].extend(s.plan.tasks())
            for s, tasks in groups.values():
                s.compute(list(dict.fromkeys(tasks)), f"{len(setups)} notebooks" if len(setups) > 1 else s.experiment)
            for s in setups:
                results = EXPERIMENTS[s.experiment].run(s)
                claims = check_claims(results)
                print(f"\n== {EXPERIMENTS[s.experiment].notebook}: tables in {s.figures}")
                print(claims[["claim", "model", "threshold", "verdict"]].to_string(index=False), flush=True)
    except (ConnectionError, PermissionError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\ndone in {time.perf_counter() - start:,.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line.

- `python -m stitchlib plan <notebook> [--profile P] [-p name value ...] [-y YAML] [-f params.yaml]`:
  check the parameters and print the experiment's plan (every task, whether it is in the store,
  its estimated cost) without loading data or training anything. Exit 2 on bad parameters.
- `python -m stitchlib run <notebook|all> [--profile P] [-p/-y/-f ...] [--executor serial|ray|local|auto]
  [--ray-address ADDR] [--gpu-fraction F] [--no-plots]`: compute the notebooks' plans without
  papermill or Jupyter, all of their tasks on one executor at once, then each notebook's tables,
  claims (printed, and written as CSV) and figures into the figures folder, each with its record
  beside it (<name>.record.json: `stitchlib.record`), and run.json (the same fields for the whole
  run: hardware, versions, git commit, code version, data sha256, parameters and seeds; each step's
  seconds, every verdict). The notebooks afterwards only load.
  Exit 2 on bad input, 1 if it failed.
- `python -m stitchlib readme`: rewrite the README's results block from the committed result
  tables (results/<profile>/), after `python -m stitchlib collect` copied them from a run's
  figures folder. `--check` only says whether the README is up to date (exit 1 if not). Both work
  on a source checkout (README.md, results/); from an installed copy give the paths (--readme,
  --results) or they stop with an error.
- `python -m stitchlib notebooks DIR [--force]`: copy the numbered notebooks, their profiles'
  parameter files (params/) and sanitize.cfg into DIR, to open and run them there. An existing file
  that differs is left alone (exit 2) unless --force.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path

from . import locations
from .report import render_readme

# What a results folder keeps of a run: the claims, their per-cut summaries, the base models, the timings,
# and the record of each (`stitchlib.record`: <name>.record.json beside <name>.csv).
KEPT = ("*_claims.csv", "*_summary.csv", "*_models.csv", "timings.csv", "run.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stitchlib")
    sub = parser.add_subparsers(dest="command", required=True)
    readme = sub.add_parser("readme", help="rewrite the README's results block from results/<profile>/")
    readme.add_argument("--profile", default="smoke")
    readme.add_argument("--readme", type=Path, default=None, help="default: the source checkout's README.md")
    readme.add_argument("--results", type=Path, default=None, help="default: the source checkout's results/<profile>")
    readme.add_argument("--check", action="store_true", help="only check that the README is up to date")
    collect = sub.add_parser("collect", help="copy a run's result tables into results/<profile>/")
    collect.add_argument("--profile", default="smoke")
    collect.add_argument("--figures", type=Path, default=None, help="default: $STITCHLIB_FIGURES/<profile> or "
                                                                    "figures/<profile>")
    collect.add_argument("--results", type=Path, default=None, help="where they go (default: the source checkout's "
                                                                    "results/<profile>)")
    notebooks = sub.add_parser("notebooks", help="copy the notebooks and their parameter files into a folder")
    notebooks.add_argument("dir", type=Path, help="the folder (created if missing)")
    notebooks.add_argument("--force", action="store_true", help="overwrite files that differ from the notebooks'")
    planning = sub.add_parser("plan", help="check the parameters and print a notebook's plan and its cost")
    running = sub.add_parser("run", help="compute notebooks' plans (all their tasks on one executor), then their "
                                         "tables and claims, without papermill")
    for command in (planning, running):
        command.add_argument("notebook", help="e.g. 04_more_is_better, more_is_better, 04 or notebooks/04_more_is_better"
                                              ".ipynb" + (", or all" if command is running else ""))
        command.add_argument("--profile", default=None, help="smoke, fast or paper (default: the -f file's, else "
                                                             "smoke)")
        command.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                             help="a parameter, typed as papermill's -p types it (lists and dicts: use -y)")
        command.add_argument("-y", "--parameters_yaml", action="append", default=[], help="parameters as YAML")
        command.add_argument("-f", "--parameters_file", action="append", default=[], help="a YAML file of parameters")
        command.add_argument("--store", default=None, help="the artifact store (default: $STITCHLIB_STORE, else "
                                                                "runs/store in a source checkout, else the per-user "
                                                                "folder: stitchlib.locations)")
        command.add_argument("--device", default=None, help="the device the run will use: store keys include its type "
                                                            "(default: the -p/-f device, else auto: CUDA if here)")
        command.add_argument("--check", action="store_true", help="check the arguments, parameters and executor, "
                                                                  "then stop before any work (nothing loaded, stored "
                                                                  "or joined)")
    planning.add_argument("--summary", action="store_true", help="only the cost per task kind, not every task")
    running.add_argument("--executor", default=None, help="serial, ray, local or auto (default: the -p/-f executor, "
                                                          "else auto)")
    running.add_argument("--ray-address", default=None, help="\"auto\" or ray://host:port to join a running cluster "
                                                             "(default: start Ray inside the run)")
    running.add_argument("--gpu-fraction", type=float, default=None, help="share of a GPU each Ray or local task "
                                                                          "reserves (default 0.25)")
    running.add_argument("--figures", default=None, help="where tables, claims, figures and run.json go (default: "
                                                         "$STITCHLIB_FIGURES/<profile>, else figures/<profile> in "
                                                         "a source checkout or the per-user folder)")
    running.add_argument("--no-plots", action="store_true", help="tables and claims only (papermill draws the "
                                                                 "figures in the notebooks)")
    args = parser.parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    if args.command == "run":
        return _run(args)
    if args.command == "notebooks":
        return _copy_notebooks(args.dir, args.force)
    # readme and collect work on a source checkout's results/ and README.md: never beside an installed copy.
    checkout = locations.checkout_root()
    results = args.results or (checkout / "results" / args.profile if checkout else None)
    if args.command == "readme":
        args.readme = args.readme or (checkout / "README.md" if checkout else None)
    if results is None or (args.command == "readme" and args.readme is None):
        paths = "--readme and --results" if args.command == "readme" else "--results"
        print(f"error: `python -m stitchlib {args.command}` writes into a source checkout (README.md, results/), "
              f"but stitchlib runs from an installed copy ({locations.PACKAGE_DIR}): run it in a clone of the "
              f"repository, or give {paths}", file=sys.stderr)
        return 2
    if args.command == "collect":
        source = args.figures or locations.figures_dir() / args.profile
        from .record import record_path

        files = sorted(f for pattern in KEPT for f in source.glob(pattern))
        files += [record_path(f) for f in files if f.suffix == ".csv" and record_path(f).is_file()]
        if not files:
            print(f"no result tables ({', '.join(KEPT)}) in {source}: run the notebooks first", file=sys.stderr)
            return 2
        results.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, results / f.name)
        print(f"copied {len(files)} tables and records to {results}")
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


def _copy_notebooks(target: Path, force: bool) -> int:
    """Copy the notebooks (the checkout's, else those shipped in the package) into `target`: every file
    is checked before any is written, so a refusal leaves `target` as it was."""
    source = locations.notebooks_dir()
    files = sorted(source.glob("[0-9]*.ipynb")) + sorted(source.glob("params/*.yaml")) + [source / "sanitize.cfg"]
    if not any(f.suffix == ".ipynb" for f in files) or not files[-1].is_file():
        print(f"error: no notebooks in {source}: this copy of stitchlib was installed without them", file=sys.stderr)
        return 1
    target = target.expanduser().absolute()
    if target.exists() and not target.is_dir():
        print(f"error: {target} exists and is not a folder", file=sys.stderr)
        return 2
    plan = [(f, target / f.relative_to(source)) for f in files]
    blocked = [dest for f, dest in plan if dest.exists() and not dest.is_file()]
    if blocked:
        print(f"error: {', '.join(map(str, blocked))} exist{'s' if len(blocked) == 1 else ''} and not as a file; "
              "nothing was written", file=sys.stderr)
        return 2
    differ = [dest for f, dest in plan if dest.exists() and dest.read_bytes() != f.read_bytes()]
    if differ and not force:
        print(f"error: {len(differ)} file{'s' if len(differ) > 1 else ''} in {target} "
              f"differ{'s' if len(differ) == 1 else ''} from the notebooks' "
              f"({', '.join(str(d.relative_to(target)) for d in differ)}); nothing was written. Give --force to "
              "overwrite them", file=sys.stderr)
        return 2
    written = 0
    for f, dest in plan:
        relative = dest.relative_to(target)
        if dest.is_file() and dest.read_bytes() == f.read_bytes():
            print(f"unchanged  {relative}")
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        print(f"{'overwrote' if dest.exists() else 'wrote':10s} {relative}")
        shutil.copyfile(f, dest)
        written += 1
    print(f"{written} file{'s' if written != 1 else ''} written to {target} (from {source})")
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


def _check(args) -> int:
    """`plan|run --check`: every check `setup` makes, for each notebook named, then stop."""
    from .experiments import EXPERIMENTS, experiment_named
    from .experiments.core import check_setup

    profile, given, options = _given(args)
    try:
        names = list(EXPERIMENTS) if args.notebook == "all" else [experiment_named(args.notebook).name]
        declared = set().union(*(EXPERIMENTS[n].Params.names() for n in names))
        if set(given) - declared:
            raise ValueError(f"unknown parameters {sorted(set(given) - declared)}; valid: {sorted(declared)}")
        for name in names:
            mine = {k: v for k, v in given.items() if k in EXPERIMENTS[name].Params.names()}
            executor = options.get("executor", "auto") if args.command == "run" else "serial"
            check_setup(name, profile=profile, device=options.get("device", "auto"), executor=executor,
                        ray_address=options.get("ray_address", "") if args.command == "run" else "",
                        gpu_fraction=options.get("gpu_fraction", 0.25), others=given, reach_cluster=False,
                        **mine)
    except (ValueError, TypeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"checked: {', '.join(names)} at profile {profile}; stopped before any work (--check)")
    return 0


def _plan(args) -> int:
    from .experiments import plan_report

    if args.check:
        return _check(args)
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

    if args.check:
        return _check(args)
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
                                gpu_fraction=options.get("gpu_fraction", 0.25), others=given, reach_cluster=False,
                        **mine))
            executor = setups[0].executor  # one executor (one Ray session) for them all
    except (ValueError, TypeError, ImportError, ConnectionError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(setups)} notebook{'s' if len(setups) > 1 else ''} at profile {profile} on the {executor.name} "
          f"executor, {setups[0].p.threads} thread(s) per task; store {setups[0].store.root}", flush=True)
    record = _RunRecord(setups, executor.name, time.perf_counter() - start)
    try:
        with executor:
            # Every notebook's tasks at once, so that independent models of different notebooks run side
            # by side; shared tasks (01's seed pairs in 02-05) are one task.
            groups: dict = {}
            for s in setups:
                w = s.where()
                groups.setdefault((w.dataset, w.store, w.device, w.numerics), (s, []))[1].extend(s.plan.tasks())
            with record.step("compute"):
                for s, tasks in groups.values():
                    s.compute(list(dict.fromkeys(tasks)), f"{len(setups)} notebooks" if len(setups) > 1
                              else s.experiment)
            for s in setups:
                notebook = EXPERIMENTS[s.experiment].notebook
                with record.step(f"{notebook} tables"):
                    results = EXPERIMENTS[s.experiment].run(s)
                    claims = check_claims(results)  # also written: <notebook>_claims.csv
                record.claims(notebook, claims)
                if not args.no_plots:
                    from .plotting import plot

                    with record.step(f"{notebook} figures"):
                        plot(results)
                print(f"\n== {notebook}: tables{'' if args.no_plots else ', figures'} and claims in {s.figures}")
                print(claims[["claim", "model", "threshold", "verdict"]].to_string(index=False), flush=True)
    except (ConnectionError, PermissionError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    record.write(setups[0].figures / "run.json", total)
    print(f"\ndone in {total:,.0f} s (steps and hardware in {setups[0].figures / 'run.json'})")
    return 0


class _RunRecord:
    """run.json: what ran where (the fields of every table's record, `stitchlib.record`, with the
    parameters and seeds of each notebook), each step's seconds and every claim's verdict."""

    def __init__(self, setups, executor: str, startup: float):
        from . import record

        first = record.run_fields(setups[0])
        per_notebook = {s.experiment: record.run_fields(s) for s in setups}
        self.data = dict(
            record.environment(), **{k: first[k] for k in ("profile", "numerics", "device", "device_name", "dataset",
                                                           "store", "figures")},
            started=min(s.started for s in setups), notebooks=[s.experiment for s in setups], executor=executor,
            params={name: f["params"] for name, f in per_notebook.items()},
            seeds={name: f["seed_pairs"] for name, f in per_notebook.items()}, record_format=record.RECORD_FORMAT,
            seconds={"start-up": round(startup, 1)}, claims={})

    @contextlib.contextmanager
    def step(self, name: str):
        import time

        start = time.perf_counter()
        yield
        self.data["seconds"][name] = round(time.perf_counter() - start, 1)

    def claims(self, notebook: str, claims) -> None:
        self.data["claims"][notebook] = claims[["claim", "model", "statistic", "low", "high", "threshold",
                                                "verdict"]].to_dict("records")

    def write(self, path: Path, total: float) -> None:
        from . import record

        self.data["seconds"]["total"] = round(total, 1)
        self.data["written"] = record.now()
        record.write(path, self.data, sort_keys=False)  # the steps in the order they ran


if __name__ == "__main__":
    sys.exit(main())

"""What each panel of the suite costs at a profile: the FLOPs of the tasks that only it needs.

    python bench/panel_cost.py [--profile smoke] [--measured SECONDS]

A panel's own tasks are those no other panel of the suite (05's plan with the plans of 01-04 it
reads) needs: a task shared with another panel (the k = 1 stitch behind Section 3's "unchanged"
lines, 01's random networks) costs that panel nothing. Freeze training's runs (04) are one
"panel" per kind of run. With `--measured`, the wall seconds of the suite's compute measured in
one run (e.g. `make figures`' timings.csv), each panel's share of the FLOPs is turned into
seconds of that run: an estimate (stitching, CKA and training run at different rates per FLOP),
not a measurement of the panel.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from stitchlib.experiments import EXPERIMENTS, make_plan
from stitchlib.experiments.tasks import CKAMatrix

# The panels issue 14 added, by notebook.
NEW = {"05_ablations": ("useless_coordinates", "permuted_positions", "random_bn", "convergence"),
       "04_more_is_better": ("samples_reversed", "freeze: prefix_and_top")}


def panel_tasks(plan) -> dict[tuple, set]:
    """(notebook, panel) -> the tasks its comparisons (or runs) need."""
    out = defaultdict(set)
    plans = {"05_ablations": plan, **{EXPERIMENTS[name].notebook: p for name, p in plan.uses.items()}}
    for notebook, p in plans.items():
        for c in p.comparisons:
            for t in (c.top, c.bottom, c.stitch, c.cka):
                if t is not None:
                    out[(notebook, c.columns["panel_id"])] |= _with_deps(t)
        for t in p.extra:  # tasks beside the comparisons: freeze training, fine-tuning, 01's CKA matrix
            if p.experiment == "more_is_better":
                kind = "freeze: " + ("prefix_and_top" if t.frozen_top else "prefix" if t.frozen else "normal")
            else:
                kind = "cka_matrix" if isinstance(t, CKAMatrix) else "finetune"
            out[(notebook, kind)] |= _with_deps(t)
    return out


def _with_deps(task) -> set:
    seen = {task}
    for dep in task.deps():
        seen |= _with_deps(dep)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--measured", type=float, default=None,
                        help="wall seconds of the whole suite's compute, measured in one run")
    args = parser.parse_args()
    plan = make_plan("05_ablations", args.profile)
    shape = plan.params.data_info["shape"]
    flops = {t: t.cost(shape)[1] for t in plan.tasks()}
    total = sum(flops.values())
    panels = panel_tasks(plan)
    owners = defaultdict(set)
    for key, tasks in panels.items():
        for t in tasks:
            owners[t].add(key)
    print(f"profile {args.profile}: the suite's plan, {len(flops)} tasks, {total / 1e12:,.1f} TFLOP (estimated)")
    print(f"{'notebook':<18} {'panel':<30} {'own tasks':>9} {'TFLOP':>8} {'share':>7}"
          + ("  seconds of the measured run" if args.measured else ""))
    new_total = 0.0
    for (notebook, panel), tasks in sorted(panels.items()):
        own = [t for t in tasks if owners[t] == {(notebook, panel)}]
        f = sum(flops.get(t, 0.0) for t in own)
        new = panel in NEW.get(notebook, ())
        new_total += f if new else 0.0
        line = f"{notebook:<18} {panel + (' (new)' if new else ''):<30} {len(own):>9} {f / 1e12:>8.2f} {f / total:>7.1%}"
        if args.measured:
            line += f"  {args.measured * f / total:>8.0f}"
        print(line)
    line = f"issue 14's new panels together: {new_total / 1e12:.2f} TFLOP, {new_total / total:.1%} of the suite"
    if args.measured:
        line += f", about {args.measured * new_total / total:.0f} s of the measured {args.measured:.0f} s"
    print(line)


if __name__ == "__main__":
    main()

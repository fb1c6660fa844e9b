"""The smoke suite (`make figures`: every notebook, empty store) on each executor, side by side in
one session, and whether they give the same result tables.

    python bench/executor_speed.py [--profile smoke] [--out DIR] ray serial

Each executor gets its own empty store and figures folder under DIR (default: a temporary folder);
the Ray start-up counts. Prints each run's steps and total, the ratio of every run to the first,
and, cell by cell, whether the result tables agree (`bench/compare_tables.py`). Run it on an
otherwise idle machine: the runs take the whole CPU.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("executors", nargs="+", choices=["ray", "serial", "auto"])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="executor_speed_"))
    out.mkdir(parents=True, exist_ok=True)
    totals, timings = {}, {}
    for executor in args.executors:
        where = out / executor
        shutil.rmtree(where, ignore_errors=True)
        env = dict(os.environ, STITCHLIB_STORE=str(where / "store"), STITCHLIB_FIGURES=str(where / "figures"))
        env.pop("STITCHLIB_EXECUTOR", None)
        start = time.perf_counter()
        with open(out / f"{executor}.log", "w") as log:
            done = subprocess.run(["make", "figures", f"PROFILE={args.profile}", f"EXECUTOR={executor}"], cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        totals[executor] = time.perf_counter() - start
        if done.returncode:
            print(f"{executor}: make figures failed (exit {done.returncode}); see {out / f'{executor}.log'}")
            return 1
        timings[executor] = pd.read_csv(ROOT / "figures" / args.profile / "timings.csv")
        timings[executor].to_csv(where / "timings.csv", index=False)
    first = args.executors[0]
    t = timings[first].iloc[0]
    print(f"make figures PROFILE={args.profile}, empty store, {t['cpu']} ({t['cores']} cores), {t['date']}")
    for executor in args.executors:
        steps = ", ".join(f"{r.step} {r.seconds} s" for r in timings[executor].itertuples())
        print(f"  {executor:7s} {totals[executor]:7.0f} s in all ({steps})")
    for executor in args.executors[1:]:
        print(f"  {executor} / {first}: {totals[executor] / totals[first]:.2f}x the time")
    for executor in args.executors[1:]:
        print(f"result tables, {first} against {executor}:", flush=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "compare_tables.py"),
                        str(out / first / "figures" / args.profile), str(out / executor / "figures" / args.profile)])
    print(f"logs, stores and tables in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

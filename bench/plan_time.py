"""How long planning every notebook at every profile takes, with an empty store: what the plan
test and `python -m stitchlib plan` cost. Prints the import time and each plan's time (building
the plan, its store keys and its cost), and the total, with the machine.

    python bench/plan_time.py
"""
import os
import platform
import tempfile
import time

start = time.perf_counter()
import torch  # noqa: E402

import stitchlib  # noqa: E402
from stitchlib.experiments import EXPERIMENTS, PROFILES, plan_report  # noqa: E402

imported = time.perf_counter() - start
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
           platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
print(f"import stitchlib: {imported:.2f} s")
with tempfile.TemporaryDirectory() as empty:
    total = 0.0
    for e in EXPERIMENTS.values():
        for profile in PROFILES:
            t = time.perf_counter()
            plan_report(e.notebook, profile, store=empty)
            took = time.perf_counter() - t
            total += took
            print(f"  {e.notebook:18s} {profile:6s} {took:6.2f} s")
print(f"planning all {len(EXPERIMENTS)} notebooks at {len(PROFILES)} profiles: {total:.2f} s "
      f"(+ {imported:.2f} s import = {total + imported:.2f} s)")
print(f"stitchlib {stitchlib.__version__}")

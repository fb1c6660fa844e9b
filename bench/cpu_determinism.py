"""What makes two CPU configurations train different models from the same seed, and what pinning
each setting costs: one epoch of a width-1/8 ResNet-18 on 4,096 CIFAR-10 images, in a fresh
process per configuration (the settings are read when the libraries start), weights hashed.

Run from the repository root: `python bench/cpu_determinism.py` (about 2 minutes on 2 cores).
Prints one line per configuration: weights hash, training seconds, time relative to the default.
(To see that the core count no longer matters once everything is pinned, run the pinned
configuration under `taskset -c 0`.)
"""
import json
import os
import subprocess
import sys
import time

CONFIGS = [
    ("default", {}),
    ("ATen capped at AVX2", {"ATEN_CPU_CAPABILITY": "avx2"}),
    ("oneDNN off", {"NO_MKLDNN": "1"}),
    ("ATen AVX2 + MKL_CBWR=AVX2", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}),
    ("ATen AVX2 + MKL_CBWR + oneDNN AVX512_CORE", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2",
                                                   "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}),
    ("ATen AVX2 + MKL_CBWR + oneDNN AVX2 (an AVX2-only CPU)", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2",
                                                              "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("all pinned: oneDNN off + ATen AVX2 + MKL_CBWR", {"NO_MKLDNN": "1", "ATEN_CPU_CAPABILITY": "avx2",
                                                       "MKL_CBWR": "AVX2"}),
    ("all pinned, oneDNN capped and MKL limited too", {"NO_MKLDNN": "1", "ATEN_CPU_CAPABILITY": "avx2",
                                                       "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                                       "MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    ("ATen AVX2 + MKL_CBWR=AVX2, 1 thread", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "THREADS": "1"}),
]

CHILD = r"""
import hashlib, json, os, time
import torch
if os.environ.get("NO_MKLDNN"):
    torch.backends.mkldnn.enabled = False
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
import stitchlib
from stitchlib import data as D
from stitchlib.training import Recipe, train_model
ds = stitchlib.load_dataset("cifar10")
train = D.subset(ds.train, 4096, seed=0)
m = stitchlib.build_model("resnet18", seed=1, width=0.125)
t = time.perf_counter()
train_model(m, train, ds.mean, ds.std, Recipe(epochs=1), seed=1, device="cpu", progress=False)
dt = time.perf_counter() - t
h = hashlib.sha256(b"".join(v.detach().numpy().tobytes() for v in m.state_dict().values())).hexdigest()[:10]
print(json.dumps(dict(hash=h, seconds=dt, capability=torch.backends.cpu.get_cpu_capability())))
"""


def main():
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}
    print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    base = None
    for label, env in CONFIGS:
        out = subprocess.run([sys.executable, "-c", CHILD], env={**clean, **env}, capture_output=True, text=True,
                             timeout=900, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        base = base or r["seconds"]
        print(f"{label:55s} hash {r['hash']}  ATen {r['capability']:7s} {r['seconds']:5.1f} s  "
              f"{r['seconds'] / base:4.2f}x", flush=True)


if __name__ == "__main__":
    main()

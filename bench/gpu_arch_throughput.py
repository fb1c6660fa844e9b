"""Training throughput of every paper-profile architecture on a GPU, and the paper profile's
base-training time estimated from it (01_connectivity: two seeds per model, 50K images).

    PYTHONPATH=. python bench/gpu_arch_throughput.py OUT_DIR
"""
import json
import sys
import time
from pathlib import Path

import torch

import stitchlib
from stitchlib.experiments.connectivity import ConnectivityParams
from stitchlib.training import RECIPES, as_nhwc, channels_last

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
out.mkdir(parents=True, exist_ok=True)
dev = stitchlib.training.resolve_device("auto")
paper = ConnectivityParams.profile_values("paper")
models = [("resnet18", {"width": w}, paper["epochs"]) for w in paper["widths"]]
for arch, opts in paper["architectures"].items():
    opts = dict(opts)
    models.append((arch, opts, opts.pop("epochs", paper["epochs"])))
x = torch.randn(128, 3, 32, 32, device=dev)
y = torch.randint(0, 10, (128,), device=dev)
report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
          "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "models": []}
hours = 0.0
for arch, opts, epochs in models:
    m = channels_last(stitchlib.build_model(arch, seed=0, **opts).to(dev))
    opt, _ = RECIPES[arch].build(m, 100)
    for i in range(40):
        if i == 10:
            torch.cuda.synchronize() if dev.type == "cuda" else None
            t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(m(as_nhwc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize() if dev.type == "cuda" else None
    rate = 30 * 128 / (time.perf_counter() - t)
    h = 2 * epochs * paper["train_samples"] / rate / 3600
    hours += h
    report["models"].append({"arch": arch, **opts, "epochs": epochs, "train_img_s": round(rate),
                             "two_seeds_hours": round(h, 2)})
    print(report["models"][-1], flush=True)
report["base_training_hours_total"] = round(hours, 2)
(out / "gpu_arch_throughput.json").write_text(json.dumps(report, indent=2))
print("total base-training hours:", round(hours, 2))

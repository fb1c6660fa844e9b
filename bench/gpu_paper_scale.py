"""GPU check for the paper profile: throughput at the paper's widths, the paper profile's
runtime estimated from it, and 01_connectivity end to end on CUDA at a mid scale.

Run (on a machine with a GPU, from the repository root):
    PYTHONPATH=. python bench/gpu_paper_scale.py OUT_DIR
Writes OUT_DIR/gpu_paper_scale.json (updated after every stage, so a time-out keeps what finished).
"""
import json
import sys
import time
from pathlib import Path

import torch

import stitchlib
from stitchlib.experiments.connectivity import ConnectivityParams
from stitchlib.models import split
from stitchlib.training import as_nhwc, channels_last

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
out.mkdir(parents=True, exist_ok=True)
report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
          "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def save():
    (out / "gpu_paper_scale.json").write_text(
        json.dumps(report, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


dev = stitchlib.training.resolve_device("auto")
x = torch.randn(128, 3, 32, 32, device=dev)
y = torch.randint(0, 10, (128,), device=dev)
speeds = {}
for width in (0.5, 1.0, 2.0):
    m = channels_last(stitchlib.build_model("resnet18", seed=0, width=width).to(dev))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    for i in range(60):
        if i == 10:
            sync()
            t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(m(as_nhwc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    train = 50 * 128 / (time.perf_counter() - t)
    # A stitcher step runs the bottom without gradients and back-propagates through the top only.
    bottom, top = split(m, "layer2.0")
    for p in m.parameters():
        p.requires_grad_(False)
    s = channels_last(stitchlib.stitching.Stitcher(bottom[-1].conv2.out_channels, bottom[-1].conv2.out_channels).to(dev))
    sopt = torch.optim.Adam(s.parameters(), lr=1e-3)
    for i in range(60):
        if i == 10:
            sync()
            t = time.perf_counter()
        with torch.no_grad():
            h = bottom(as_nhwc(x))
        loss = torch.nn.functional.cross_entropy(top(s(h)), y)
        sopt.zero_grad()
        loss.backward()
        sopt.step()
    sync()
    stitch = 50 * 128 / (time.perf_counter() - t)
    speeds[width] = {"train_img_s": round(train), "stitch_img_s": round(stitch)}
    print(width, speeds[width], flush=True)

paper = ConnectivityParams.profile_values("paper")
pairs = len(paper["seeds"]) // 2
base_h = sum(2 * pairs * paper["epochs"] * paper["train_samples"] / speeds[w]["train_img_s"] for w in paper["widths"]) / 3600
stitch_h = sum(2 * pairs * 10 * paper["stitch_epochs"] * paper["stitch_samples"] / speeds[w]["stitch_img_s"]
               for w in paper["widths"]) / 3600
report["throughput_batch128_fp32_channels_last"] = speeds
report["paper_profile_estimate_hours"] = {"base_models": round(base_h, 2), "stitchers": round(stitch_h, 2),
                                          "note": "2 models per seed pair and width x 164 epochs; 20 stitchers per pair and width x 10 epochs at the "
                                                  "layer2.0 stitch speed; evaluation and CKA not counted"}
save()

# 01_connectivity end to end on CUDA, mid scale (a few minutes on one H200).
mid = dict(widths=[0.5, 1.0, 2.0], disjoint=True, train_samples=25000,
           architectures={"preact_resnet": {"width": 0.5, "depth": 11}, "myrtle": {"width": 0.25},
                          "vit": {"width": 0.0833, "depth": 2}}, epochs=10.0, test_samples=5000, stitch_samples=5000,
           stitch_epochs=2.0, stitch_lr=0.01, ls_samples=5000, cka_samples=5000, cka_estimator="minibatch")
t = time.perf_counter()
run = stitchlib.setup("connectivity", store=str(out / "store"), figures_dir=str(out / "figures"), **mid)
res = stitchlib.connectivity(run)
claims = stitchlib.check_claims(res, write=False)
report["mid_scale_run"] = {
    "params": mid, "seconds": round(time.perf_counter() - t, 1),
    "base_test_error": res.models.to_dict("records"),
    "claims": claims.to_dict("records"),
    "table": res.table[[c for c in res.table.columns if not c.startswith("_")]].round(3).to_dict("records"),
}
save()
stitchlib.summarize(res, claims)
print(json.dumps(report["paper_profile_estimate_hours"]))

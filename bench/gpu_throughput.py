"""Training throughput (images/s) and model FLOP utilisation of the paper's models, in float32
and on the fast path, measured in one run; and the aggregate with several tasks sharing the GPU.

Every training number goes through the library's own `train_model` (its data loader with the data
on the device, crop+flip on the device, channels-last, the recipe's optimiser and schedule), so it
is the rate a run gets, not a bare model's:

- fp32: batch 128, float32 (the paper profile's path, and the 16.7K images/s of
  bench/results/gpu_paper_scale_h200_2026-11-28.json for ResNet-18);
- bf16: the fast profile's path, batch 512 and bfloat16 autocast;
- bf16+compile (with --compile): the same through torch.compile; its compile time is reported, and
  the number of epochs after which compiling pays for itself.

Also a stitcher step (ResNet-18 width 1, 1x1 stitcher at layer2.1, bottom frozen, top frozen),
CKA over every cut of two ResNet-18s (float64, minibatch estimator), and the aggregate training rate
of ResNet-18 width 1 with 1, 2, 4 ... worker processes sharing one GPU (--tasks), each a spawned
process running `train_model` as the `local` executor's workers do.

MFU = (3 x forward FLOPs per image x images/s) / the chip's dense peak at that precision.

    python bench/gpu_throughput.py --out results/fast-h200-DATE            # on a GPU (about 4 min)
    python bench/gpu_throughput.py --tiny --device cpu --out /tmp/gt       # the CPU check of the script
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from pathlib import Path

import torch

# Dense peak FLOP/s per precision (vendor datasheets; bf16 without sparsity, fp32 without TF32).
PEAKS = {"H200": {"bf16": 989e12, "fp32": 67e12}, "H100": {"bf16": 989e12, "fp32": 67e12},
         "A100": {"bf16": 312e12, "fp32": 19.5e12}}
REFERENCE_FP32 = 16725  # ResNet-18 width 1, images/s, H200 (bench/results/gpu_paper_scale_h200_2026-11-28.json)
TARGET = 4 * REFERENCE_FP32


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak(device, precision):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p[precision] for key, p in PEAKS.items() if key in name), None)


def synthetic_split(n, num_classes=10, seed=0):
    from stitchlib.data import Split

    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, num_classes, (n,), generator=g), num_classes)


def forward_flops(arch, width, options):
    from stitchlib.experiments.tasks import architecture_info

    return architecture_info(arch, float(width), tuple(sorted(options.items())))[1]


def train_rate(arch, width, options, device, precision, batch, steps, compile_=False):
    """(images/s over `steps` timed steps, seconds of the first steps, which include compiling)."""
    import dataclasses

    from stitchlib import build_model
    from stitchlib.training import RECIPES, train_model

    recipe = dataclasses.replace(RECIPES[arch], batch_size=batch)
    split = synthetic_split(batch * 8)
    model = build_model(arch, seed=0, width=width, **options)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    run = dict(device=device, precision=precision, compile=compile_, progress=False)
    sync(device)
    start = time.perf_counter()
    train_model(model, split, mean, std, dataclasses.replace(recipe, steps=3), **run)  # warm-up (and compile)
    sync(device)
    first = time.perf_counter() - start
    start = time.perf_counter()
    train_model(model, split, mean, std, dataclasses.replace(recipe, steps=steps), **run)
    sync(device)
    return steps * batch / (time.perf_counter() - start), first


def stitch_rate(device, precision, batch, steps, width):
    """Images/s of stitcher training steps at ResNet-18's layer2 cut (both networks frozen)."""
    from stitchlib import build_model
    from stitchlib.models import resolve_cut, split
    from stitchlib.precision import autocast
    from stitchlib.stitching import StitchedModel, Stitcher
    from stitchlib.training import as_nhwc, channels_last

    a = channels_last(build_model("resnet18", seed=0, width=width).to(device)).eval().requires_grad_(False)
    b = channels_last(build_model("resnet18", seed=1, width=width).to(device)).eval().requires_grad_(False)
    cut = resolve_cut(a, "layer2.1")
    stitcher = channels_last(Stitcher(cut.channels, cut.channels, kind=cut.kind).to(device))
    model = StitchedModel(split(b, cut)[0], stitcher, split(a, cut)[1])
    model.train()
    opt = torch.optim.Adam(stitcher.parameters(), lr=1e-3)
    x = as_nhwc(torch.randn(batch, 3, 32, 32, device=device))
    y = torch.randint(0, 10, (batch,), device=device)
    for i in range(steps + 3):
        if i == 3:
            sync(device)
            start = time.perf_counter()
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def cka_rate(device, precision, batch, batches, width):
    """Images/s of CKA at every cut of two ResNet-18s: forward at `precision`, CKA in float64."""
    from stitchlib import build_model
    from stitchlib.models import spine
    from stitchlib.precision import autocast
    from stitchlib.similarity import CKAAccumulator
    from stitchlib.training import channels_last

    a, b = (channels_last(build_model("resnet18", seed=s, width=width).to(device)).eval() for s in (0, 1))
    stages_a, stages_b = spine(a), spine(b)
    accs = [CKAAccumulator("minibatch") for _ in stages_a]
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for i in range(batches + 1):
            if i == 1:
                sync(device)
                start = time.perf_counter()
            ha, hb = x, x
            for sa, sb, acc in zip(stages_a, stages_b, accs):
                with autocast(device, precision):
                    ha, hb = sa(ha), sb(hb)
                acc.update(ha, hb)
    sync(device)
    return batches * batch / (time.perf_counter() - start)


def _worker(args):
    """One of several processes sharing the GPU: its images/s over the common window."""
    arch, width, device, precision, batch, seconds, barrier = args
    import dataclasses

    from stitchlib import build_model
    from stitchlib.training import FAST_RECIPES, train_model

    device = torch.device(device)
    split = synthetic_split(batch * 8)
    model = build_model(arch, seed=0, width=width)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    recipe = dataclasses.replace(FAST_RECIPES[arch], batch_size=batch)
    train_model(model, split, mean, std, dataclasses.replace(recipe, steps=3), device=device, precision=precision,
                progress=False)
    barrier.wait()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        train_model(model, split, mean, std, dataclasses.replace(recipe, steps=8), device=device,
                    precision=precision, progress=False)
        steps += 8
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def aggregate_rate(tasks, device, precision, batch, seconds, width):
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(tasks)
        with context.Pool(tasks) as pool:
            rates = pool.map(_worker, [("resnet18", width, str(device), precision, batch, seconds, barrier)] * tasks)
    return sum(rates)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench/results", help="folder for gpu_throughput.json")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per configuration")
    ap.add_argument("--tasks", default="1,2,4,8", help="worker processes sharing the GPU, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed window of each shared-GPU measurement")
    ap.add_argument("--compile", action="store_true", help="also measure bf16 through torch.compile")
    ap.add_argument("--tiny", action="store_true", help="small widths and few steps: checks the script on a CPU")
    a = ap.parse_args()
    from stitchlib.training import resolve_device

    device = resolve_device(a.device)
    scale = 1 / 16 if a.tiny else 1.0
    steps = 2 if a.tiny else a.steps
    models = [("resnet18", w * scale, {}) for w in (0.5, 1.0, 2.0)]
    models += [("preact_resnet", scale, {"depth": 11 if a.tiny else 164}), ("myrtle", scale, {}),
               ("vit", scale * 4 if a.tiny else 1.0, {"depth": 2 if a.tiny else 12})]
    paths = [("fp32", 128, False), ("bf16", 512, False)] + ([("bf16", 512, True)] if a.compile else [])
    if a.tiny:
        paths = [(p, b // 8, c) for p, b, c in paths]
    report = dict(date=time.strftime("%Y-%m-%d"), device=torch.cuda.get_device_name(device) if device.type == "cuda"
                  else platform.processor() or "cpu", torch=torch.__version__, cuda=torch.version.cuda,
                  python=platform.python_version(), tiny=a.tiny, train=[], stitch=[], cka=[], shared_gpu=[])
    print(f"{report['device']}, torch {torch.__version__}", flush=True)
    for arch, width, options in models:
        flops = forward_flops(arch, width, options)
        for precision, batch, compile_ in paths:
            rate, first = train_rate(arch, width, options, device, precision, batch, steps, compile_)
            top = peak(device, precision)
            row = dict(arch=arch, width=width, **options, path=precision + ("+compile" if compile_ else ""),
                       batch=batch, images_per_s=round(rate), first_steps_s=round(first, 2),
                       mfu=round(3 * flops * rate / top, 4) if top else None)
            report["train"].append(row)
            print(row, flush=True)
    for precision, batch, _ in paths[:2]:
        row = dict(path=precision, batch=batch, images_per_s=round(stitch_rate(device, precision, batch, steps, scale)))
        report["stitch"].append(row)
        row = dict(path=precision, batch=batch, images_per_s=round(cka_rate(device, precision, batch, steps, scale)))
        report["cka"].append(row)
    print("stitch", report["stitch"], "\ncka", report["cka"], flush=True)
    for tasks in [int(t) for t in a.tasks.split(",")]:
        rate = aggregate_rate(tasks, device, "bf16", paths[1][1], 2.0 if a.tiny else a.seconds, scale)
        report["shared_gpu"].append(dict(tasks=tasks, images_per_s=round(rate)))
        print(report["shared_gpu"][-1], flush=True)

    # Ratios measured in this run: the fast path over fp32 per model, and the best aggregate.
    by = {(r["arch"], r["width"], r["path"]): r["images_per_s"] for r in report["train"]}
    report["speedup_bf16_over_fp32"] = {f"{arch} w={w:g}": round(by[(arch, w, "bf16")] / by[(arch, w, "fp32")], 2)
                                        for arch, w, _ in models}
    fp32_w1 = by[("resnet18", scale, "fp32")]
    best = max(report["shared_gpu"], key=lambda r: r["images_per_s"])
    report["resnet18_w1"] = dict(fp32=fp32_w1, bf16_one_task=by[("resnet18", scale, "bf16")],
                                 best_shared=best, ratio_best_over_fp32=round(best["images_per_s"] / fp32_w1, 2),
                                 target=TARGET, target_met=None if a.tiny else best["images_per_s"] >= TARGET)
    if a.compile:
        report["compile"] = [dict(arch=r["arch"], width=r["width"], first_steps_s=r["first_steps_s"])
                             for r in report["train"] if r["path"] == "bf16+compile"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_throughput.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("speedup_bf16_over_fp32", "resnet18_w1")}, indent=2))


if __name__ == "__main__":
    main()

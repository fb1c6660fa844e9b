"""How long finding a model's cut points by tracing takes (issue 15: ResNet-50 in at most 2 s on
2 cores). Prints the median of a few runs per model, each on a fresh model (nothing cached), and,
measured in the same run, the time of one eval forward pass of that model at 224 pixels, batch 1,
so the ratio carries across machines.

    .venv/bin/python bench/trace_speed.py [repeats]
"""
import platform
import statistics
import sys
import time

import torch
import torchvision

from stitchlib import tracing

MODELS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50,
          "vgg11": torchvision.models.vgg11, "mobilenet_v2": torchvision.models.mobilenet_v2}


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(repeats: int = 5):
    torch.manual_seed(0)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"# {platform.node()} {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}; median of {repeats}")
    tracing.traced_spine(torchvision.models.resnet18())  # imports and first-call costs, not measured
    print(f"{'model':14s} {'cuts':>5s} {'trace (s)':>10s} {'forward@224 (s)':>16s} {'ratio':>6s}")
    for name, ctor in MODELS.items():
        models = [ctor() for _ in range(repeats)]
        spine = tracing.traced_spine(models[0])
        it = iter(models)
        traced = median_seconds(lambda: tracing.traced_spine(next(it)), repeats)
        model = models[0].eval()
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            forward = median_seconds(lambda: model(x), repeats)
        print(f"{name:14s} {len(spine.cuts):5d} {traced:10.3f} {forward:16.3f} {traced / forward:6.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)

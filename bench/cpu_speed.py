"""CPU speed ratios, measured in one run on this machine (no timed tests: see README).

    python bench/cpu_speed.py

1. ResNet-18 training step, channels-last vs contiguous (NCHW) layout, at the smoke widths.
2. Evaluating a stitched model twice (at initialisation and after training): reusing the bottom's
   test activations vs running the bottom each time.
"""
import time

import torch

import stitchlib
from stitchlib import data as D
from stitchlib.models import split
from stitchlib.stitching import Stitcher, _error_from_features, _features
from stitchlib.training import as_nhwc, channels_last, error_rate

torch.set_num_threads(2)


def train_speed(width, nhwc, steps=8, batch=128):
    m = stitchlib.build_model("resnet18", seed=0, width=width)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if nhwc:
        m, x = channels_last(m), as_nhwc(x)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    for i in range(steps + 2):
        if i == 2:
            t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t)


print("1. training images/s, channels-last vs NCHW")
for width in (0.0625, 0.125, 0.25):
    nchw, nhwc = train_speed(width, False), train_speed(width, True)
    print(f"   width {width:<6}: NCHW {nchw:6.0f}  channels-last {nhwc:6.0f}  ratio {nhwc / nchw:.2f}x")

ds = stitchlib.load_dataset("cifar10")
test = D.subset(ds.test, 1000, seed=0)
a = channels_last(stitchlib.build_model("resnet18", seed=0, width=0.25)).eval()
cut = "layer3.0"
bottom, top = split(a, cut)
stitcher = channels_last(Stitcher(64, 64)).eval()
model = torch.nn.Sequential(bottom, stitcher, top)
t = time.perf_counter()
for _ in range(2):
    error_rate(model, test, ds.mean, ds.std, device="cpu")
twice = time.perf_counter() - t
t = time.perf_counter()
feats = _features(bottom, test, ds, "cpu")
for _ in range(2):
    _error_from_features(stitcher, top, feats)
reused = time.perf_counter() - t
print(f"2. two evaluations at {cut}, width 0.25, 1000 test images: bottom run twice {twice:.2f} s, "
      f"activations reused {reused:.2f} s, ratio {twice / reused:.2f}x")

"""CPU speed ratios, measured in one run on this machine (no timed tests: see README).

    python bench/cpu_speed.py

1. ResNet-18 training step, channels-last vs contiguous (NCHW) layout, at the smoke widths.
2. Stitching two ResNet-18s at every cut as the notebooks do (smoke sizes: 2,000 training images
   for 2 epochs, 500 for least squares, 1,000 test images): every cut in one pass over the data
   (the bottom run once per batch for all cuts) vs one cut at a time.
"""
import time

import torch

import stitchlib
from stitchlib import data as D
from stitchlib.training import as_nhwc, channels_last

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
train = D.subset(D.subset(ds.train, 10000, seed=0), 2000, seed=1)
test = D.subset(ds.test, 1000, seed=0)
a, b = (stitchlib.build_model("resnet18", seed=seed, width=0.25) for seed in (0, 1))
cuts = list(range(len(stitchlib.cut_points(a))))
kw = dict(train=train, test=test, epochs=2.0, lr=0.03, ls_samples=500, top_error=50.0, device="cpu", progress=False)
t = time.perf_counter()
alone = [stitchlib.stitch(b, a, c, ds, **kw) for c in cuts]
one_at_a_time = time.perf_counter() - t
t = time.perf_counter()
joint = stitchlib.stitch(b, a, cuts, ds, **kw)
one_pass = time.perf_counter() - t
same = all((j.error_init, j.error) == (s.error_init, s.error) for j, s in zip(joint, alone))
print(f"2. stitching at all {len(cuts)} cuts, width 0.25: one cut at a time {one_at_a_time:.1f} s, "
      f"all in one pass {one_pass:.1f} s, ratio {one_at_a_time / one_pass:.2f}x (identical errors: {same})")

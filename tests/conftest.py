import os

import pytest
import torch

# In-process unless a test asks for Ray: tests patch functions (counting training calls, say)
# that a Ray worker, another process, would not see.
os.environ.setdefault("STITCHLIB_EXECUTOR", "serial")

import stitchlib  # noqa: E402
from stitchlib import data as D  # noqa: E402
from stitchlib.training import Recipe, train_model  # noqa: E402

# Under pytest-xdist (-n 2) each worker gets one of the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def cifar():
    return stitchlib.load_dataset("cifar10")


@pytest.fixture(scope="session")
def small(cifar):
    """Small train/test subsets and two briefly trained narrow ResNet-18s (different seeds)."""
    train = D.subset(cifar.train, 1024, seed=0)
    test = D.subset(cifar.test, 512, seed=0)
    models = []
    for seed in (0, 1):
        m = stitchlib.build_model("resnet18", seed=seed, width=0.0625)
        train_model(m, train, cifar.mean, cifar.std, Recipe(epochs=2), seed=seed, device="cpu")
        models.append(m)
    return dict(train=train, test=test, a=models[0], b=models[1])

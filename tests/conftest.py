import pytest
import torch

import stitchlib
from stitchlib import data as D
from stitchlib.training import Recipe, train_model

torch.set_num_threads(2)


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

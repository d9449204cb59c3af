"""Shared fixtures of the model-library tests: small offline data sets, 2 CPU threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ae_pipeline.datasets import load_digits, load_fashion_mnist
from ae_pipeline.models import TrainConfig

torch.set_num_threads(2)


def _quick(**overrides) -> TrainConfig:
    settings = {"device": "cpu", "progress": False, "epochs": 5, "seed": 0}
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def quick():
    """Returns a factory of CPU train configs without a progress bar: ``quick(epochs=3)``."""
    return _quick


@pytest.fixture(scope="session")
def fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """20,000 training and 2,000 test Fashion-MNIST images as N x 784 pixels / 255."""
    x, y = load_fashion_mnist("train", limit=20000)
    xt, yt = load_fashion_mnist("test", limit=2000)
    return x, y, xt, yt


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits, 1797 x 64, pixels / 16."""
    return load_digits()

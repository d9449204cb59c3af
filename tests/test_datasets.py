"""Offline data sets."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from ae_pipeline.datasets import (
    FASHION_MNIST_CLASSES,
    load_breast_cancer,
    load_digits,
    load_fashion_mnist,
    read_idx,
)


def test_fashion_mnist_test_split():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 784) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(len(FASHION_MNIST_CLASSES)))


def test_fashion_mnist_images_limit_and_raw():
    x, y = load_fashion_mnist("train", limit=10, flatten=False, scale=False)
    assert x.shape == (10, 1, 28, 28) and x.dtype == np.uint8 and len(y) == 10
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


def test_read_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match="header says 5 data bytes, found 2"):
        read_idx(short)


def test_sklearn_tables():
    x, y = load_digits()
    assert x.shape == (1797, 64) and x.max() <= 1.0 and len(y) == 1797
    x, y = load_breast_cancer()
    assert x.shape == (569, 30) and abs(float(x.mean())) < 1e-4 and set(np.unique(y)) == {0, 1}

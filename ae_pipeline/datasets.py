"""Offline data sets for tests, benchmarks and demos.

* Fashion-MNIST (70k 28x28 grey images) from the IDX files of the Debian package
  ``dataset-fashion-mnist`` under ``/usr/share/datasets/fashion-mnist/`` (override with the
  ``AE_PIPELINE_FASHION_MNIST`` environment variable or ``root=``).
* scikit-learn's bundled ``digits`` (1797 x 64) and ``breast_cancer`` (569 x 30), loaded
  lazily (scikit-learn is a test dependency).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLITS = {"train": "train", "test": "t10k"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a numpy array.

    Raises:
        ValueError: if the file is not a well-formed IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic {data[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {expected} data bytes, found {len(data) - offset}")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Returns the directory holding the Fashion-MNIST IDX files."""
    return Path(root or os.environ.get("AE_PIPELINE_FASHION_MNIST") or FASHION_MNIST_DIR)


def load_fashion_mnist(
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    flatten: bool = True,
    scale: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads Fashion-MNIST images and labels.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: directory of the ``*-idx?-ubyte.gz`` files.
        limit: keep only the first ``limit`` images.
        flatten: return ``N x 784`` rows instead of ``N x 1 x 28 x 28`` images.
        scale: float32 pixels / 255 in [0, 1]; otherwise the raw uint8 values.

    Returns:
        ``(images, labels)``; labels are int64 class indices (see ``FASHION_MNIST_CLASSES``).

    Raises:
        ValueError: for an unknown split.
        FileNotFoundError: if the files are not installed.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    base = fashion_mnist_dir(root)
    prefix = _SPLITS[split]
    images = read_idx(base / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(base / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.reshape(len(images), -1) if flatten else images.reshape(len(images), 1, 28, 28)
    if scale:
        x = x.astype(np.float32) / np.float32(255.0)
    return x, labels


def load_digits(*, scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Returns scikit-learn's 8x8 digits as ``1797 x 64`` float32 rows (``/16`` when scaled)."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = bunch.data.astype(np.float32)
    return (x / np.float32(16.0) if scale else x), bunch.target.astype(np.int64)


def load_breast_cancer(*, standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Returns scikit-learn's breast-cancer table as ``569 x 30`` float32 rows.

    Args:
        standardize: scale each column to zero mean and unit variance.
    """
    from sklearn.datasets import load_breast_cancer as _load

    bunch = _load()
    x = bunch.data.astype(np.float32)
    if standardize:
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), bunch.target.astype(np.int64)

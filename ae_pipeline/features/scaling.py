"""Feature scaling: :class:`ColumnStats` merged in parallel, and the :class:`Scaler` (standard or
min-max) fitted from them and stored in the model artifact as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SCALERS = ("none", "standard", "minmax")


@dataclass
class ColumnStats:
    """Per-feature count, mean, M2 (sum of squared deviations), min and max; merge in parallel
    with Chan et al.'s update, so a Beam combiner can fit a scaler over any number of shards."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> ColumnStats:
        z = np.zeros(dim, dtype=np.float64)
        return cls(0, z, z.copy(), np.full(dim, np.inf), np.full(dim, -np.inf))

    @classmethod
    def of(cls, matrix: np.ndarray) -> ColumnStats:
        x = np.asarray(matrix, dtype=np.float64)
        if len(x) == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(axis=0)
        return cls(len(x), mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0))

    def merge(self, other: ColumnStats) -> ColumnStats:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return ColumnStats(
            n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        )

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))


@dataclass
class Scaler:
    """``scaled = (x - offset) / scale``, per feature.

    Attributes:
        kind: ``"none"``, ``"standard"`` (mean / std) or ``"minmax"`` (to [0, 1]).
        offset: per-feature offsets.
        scale: per-feature divisors (constant features get 1, never 0).
    """

    kind: str
    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def identity(cls, dim: int) -> Scaler:
        return cls("none", np.zeros(dim, np.float32), np.ones(dim, np.float32))

    @classmethod
    def fit(cls, kind: str, stats: ColumnStats) -> Scaler:
        """Fit a scaler of ``kind`` from merged column statistics.

        Raises:
            ValueError: for an unknown kind or statistics of no rows.
        """
        if kind not in SCALERS:
            raise ValueError(f"unknown scaler {kind!r}; choose one of {', '.join(SCALERS)}")
        dim = len(stats.mean)
        if kind == "none":
            return cls.identity(dim)
        if stats.count == 0:
            raise ValueError("cannot fit a scaler on zero rows")
        if kind == "standard":
            offset, scale = stats.mean, stats.std
        else:
            offset, scale = stats.min, stats.max - stats.min
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(kind, offset.astype(np.float32), scale.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "none":
            return np.asarray(x, dtype=np.float32)
        return ((np.asarray(x, dtype=np.float32) - self.offset) / self.scale).astype(
            np.float32, copy=False
        )

    def inverse(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "none":
            return np.asarray(x, dtype=np.float32)
        return (np.asarray(x, dtype=np.float32) * self.scale + self.offset).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scaler:
        kind = data.get("kind")
        if kind not in SCALERS:
            raise ValueError(f"scaler kind {kind!r} is not one of {SCALERS}")
        offset = np.asarray(data["offset"], dtype=np.float32)
        scale = np.asarray(data["scale"], dtype=np.float32)
        if offset.shape != scale.shape or offset.ndim != 1:
            raise ValueError(
                f"scaler offset {offset.shape} and scale {scale.shape} must be equal 1-D shapes"
            )
        if not (np.isfinite(offset).all() and np.isfinite(scale).all() and (scale != 0).all()):
            raise ValueError("scaler offset/scale must be finite and scale non-zero")
        return cls(kind, offset, scale)

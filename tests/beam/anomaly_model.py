"""The published model of the anomaly-detector tests: the shared kit's (importable on any Beam,
also from the side-environment job, which puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import numpy as np
from kit import models

from ae_pipeline.registry import ModelRegistry

COLUMNS = models.COLUMNS


def rows(n: int, seed: int) -> np.ndarray:
    """``n`` normal rows (6 features on a 2-D manifold, original units)."""
    return models.normal_rows(n, seed)


def publish(root: str) -> str:
    """Trains the kit's small model, publishes it under ``root``; returns the version dir."""
    version = models.publish(root, models.train(seed=0, epochs=15))
    return ModelRegistry(root).path(version)

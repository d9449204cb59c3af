"""Fixtures shared by the Beam AnomalyDetection tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory) -> str:
    """A published version of the small model in ``anomaly_model.py`` (6 features)."""
    sys.path.insert(0, str(HERE))
    try:
        import anomaly_model
    finally:
        sys.path.remove(str(HERE))
    return anomaly_model.publish(str(tmp_path_factory.mktemp("models")))

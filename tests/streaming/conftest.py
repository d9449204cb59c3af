"""Fixtures of the streaming tests: small trained models published to a registry root."""

from __future__ import annotations

import kit
import numpy as np
import pytest


@pytest.fixture(scope="session")
def trained():
    """A small undercomplete autoencoder trained on 6 correlated features (a few seconds)."""
    return kit.train()


@pytest.fixture
def model_root(tmp_path, trained):
    """A registry root holding one published version of ``trained``."""
    root = str(tmp_path / "models")
    kit.publish(root, trained)
    return root


@pytest.fixture
def version_dir(model_root):
    from ae_pipeline.registry import ModelRegistry

    reg = ModelRegistry(model_root)
    return reg.path(reg.latest())


@pytest.fixture
def rng():
    return np.random.default_rng(7)

"""A small published model for the anomaly-detector tests (importable on any Beam)."""

from __future__ import annotations

import numpy as np

from ae_pipeline.artifact import save_artifact
from ae_pipeline.calibration import calibrate
from ae_pipeline.features import ColumnStats, FeatureSpec, Scaler
from ae_pipeline.models import ModelConfig, Scorer, TrainConfig, fit
from ae_pipeline.registry import ModelRegistry

COLUMNS = [f"f{j}" for j in range(6)]
MIX = np.array([[1.0, 0.5, -0.3, 2.0, 0.0, 1.0], [0.0, 1.0, 0.8, -1.0, 1.5, 0.5]])


def rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 2)) @ MIX + 0.05 * rng.normal(size=(n, 6))).astype(np.float32)


def publish(root: str) -> str:
    x = rows(2000, 0)
    scaler = Scaler.fit("standard", ColumnStats.of(x))
    cfg = ModelConfig(6, hidden_dims=[16], latent_dim=2)
    tcfg = TrainConfig(epochs=15, batch_size=64, lr=3e-3, progress=False, device="cpu", seed=0)
    model, _ = fit(cfg, scaler.transform(x), tcfg)
    threshold = calibrate(Scorer(model).errors(scaler.transform(rows(1000, 1))), "quantile", 0.99)
    spec = FeatureSpec(columns=COLUMNS, key_column="id")
    registry = ModelRegistry(root)
    version = registry.publish(
        lambda d: save_artifact(
            d,
            model,
            cfg,
            feature_columns=COLUMNS,
            scaler=scaler.to_dict(),
            threshold=threshold,
            extra={"feature_spec": spec.to_dict()},
        )
    )
    return registry.path(version)

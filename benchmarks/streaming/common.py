"""Data and model shared by the parts of the streaming benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "streaming.json"
D = 24
COLUMNS = [f"f{j}" for j in range(D)]
BATCH = 500
RATE = 2000


# ---------------------------------------------------------------------------- data and model


def normal_rows(n: int, seed: int) -> np.ndarray:
    """``n`` rows of ``D`` features near a 4-D manifold, in original units."""
    mix = np.random.default_rng(1).normal(size=(4, D))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) @ mix + 0.1 * rng.normal(size=(n, D))
    return (x * 3.0 + 10.0).astype(np.float32)


def encode_records(rows: np.ndarray, start: int = 0) -> list[bytes]:
    import orjson

    out = []
    for i, row in enumerate(rows.tolist()):
        rec = {"id": start + i, **dict(zip(COLUMNS, row, strict=True))}
        out.append(orjson.dumps(rec))
    return out


def publish_model(root: Path, score: str = "normalized") -> tuple[str, Any, Any]:
    """Trains a small model on synthetic rows and publishes it, scored by ``score`` (the
    training job's default ``normalized``, or ``mse``); returns (version dir, model, scaler)."""
    from ae_pipeline.artifact import save_artifact
    from ae_pipeline.calibration import calibrate
    from ae_pipeline.features import ColumnStats, FeatureSpec, Scaler
    from ae_pipeline.models import (
        ModelConfig,
        Scorer,
        TrainConfig,
        Trainer,
        build_model,
        fit_score_function,
    )
    from ae_pipeline.registry import ModelRegistry

    x = normal_rows(20_000, 0)
    scaler = Scaler.fit("standard", ColumnStats.of(x))
    cfg = ModelConfig(D, hidden_dims=[16], latent_dim=4)
    model = build_model(cfg, seed=0)
    tcfg = TrainConfig(epochs=3, batch_size=256, lr=3e-3, progress=False, device="cpu", seed=0)
    Trainer(tcfg).fit(model, scaler.transform(x))
    calib = scaler.transform(normal_rows(5000, 7))
    fn = fit_score_function(Scorer(model), scaler.transform(x), calib, kind=score)
    errors = Scorer(model, score_function=fn).scores(calib)
    # With its score histogram: the explain mode and drift monitoring read it.
    threshold = calibrate(errors, "quantile", 0.99)
    spec = FeatureSpec(columns=COLUMNS, key_column="id")
    registry = ModelRegistry(str(root))
    version = registry.publish(
        lambda d: save_artifact(
            d,
            model,
            cfg,
            feature_columns=COLUMNS,
            scaler=scaler.to_dict(),
            threshold=threshold,
            score_function=fn,
            extra={"feature_spec": spec.to_dict()},
        )
    )
    return str(root / version), model, scaler

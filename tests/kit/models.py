"""A small trained model, published like the batch training job does, and records for it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ae_pipeline.artifact import save_artifact
from ae_pipeline.calibration import calibrate
from ae_pipeline.features import ColumnStats, FeatureSpec, Scaler
from ae_pipeline.models import ModelConfig, Scorer, TrainConfig, fit
from ae_pipeline.registry import ModelRegistry

COLUMNS = [f"f{j}" for j in range(6)]
SPEC = FeatureSpec(columns=COLUMNS, key_column="id")


def normal_rows(n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows of 6 features on a 2-D manifold, in original units (not centred, not unit)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    mix = np.array([[1.0, 0.5, -0.3, 2.0, 0.0, 1.0], [0.0, 1.0, 0.8, -1.0, 1.5, 0.5]])
    x = z @ mix + 0.05 * rng.normal(size=(n, 6))
    return (x * [10, 1, 5, 2, 100, 0.1] + [50, -3, 0, 7, 1000, 2]).astype(np.float32)


@dataclass
class Trained:
    model: object
    config: ModelConfig
    scaler: Scaler
    threshold: dict


def train(seed: int = 0, epochs: int = 12) -> Trained:
    """A small undercomplete autoencoder on :func:`normal_rows` (a few seconds), with a
    threshold calibrated at the 99th percentile of held-out errors."""
    x = normal_rows(2000, seed)
    scaler = Scaler.fit("standard", ColumnStats.of(x))
    cfg = ModelConfig(6, hidden_dims=[16], latent_dim=2)
    tcfg = TrainConfig(
        epochs=epochs, batch_size=64, lr=3e-3, progress=False, device="cpu", seed=seed
    )
    model, _ = fit(cfg, scaler.transform(x), tcfg)
    errors = Scorer(model).errors(scaler.transform(normal_rows(1000, seed + 100)))
    return Trained(model, cfg, scaler, calibrate(errors, "quantile", 0.99))


def publish_files(d: str, trained: Trained, *, spec: FeatureSpec = SPEC) -> None:
    """Saves ``trained`` into ``d`` with the conventions of the batch training job. The model
    keeps its own :data:`COLUMNS`; ``spec``, the records' layout saved beside it, may differ
    (a width mismatch the serving side must refuse)."""
    save_artifact(
        d,
        trained.model,
        trained.config,
        feature_columns=COLUMNS,
        scaler=trained.scaler.to_dict(),
        threshold=trained.threshold,
        metrics={"test": True},
        extra={"feature_spec": spec.to_dict()},
    )


def publish(root: str, trained: Trained, *, spec: FeatureSpec = SPEC) -> str:
    """Publishes ``trained`` under ``root``; returns the version name."""
    return ModelRegistry(root).publish(lambda d: publish_files(d, trained, spec=spec))


def record(i: int, row: np.ndarray) -> bytes:
    return json.dumps({"id": i, **dict(zip(COLUMNS, map(float, row), strict=True))}).encode()


# One poison record per dead-letter reason; key "reason" -> value.
POISON = {
    "bad_json": b"{not json",
    "not_object": b"[1, 2, 3]",
    "missing_field": json.dumps({"id": -1, "f0": 1.0}).encode(),
    "non_numeric": json.dumps(
        {"id": -2, **{c: "x" if c == "f3" else 1.0 for c in COLUMNS}}
    ).encode(),
    # JSON has no NaN (orjson refuses it as bad_json); a number beyond float32 is non-finite.
    "non_finite": b'{"id": -3, "f0": 1e39, "f1": 1, "f2": 1, "f3": 1, "f4": 1, "f5": 1}',
}
POISON_VALUES = list(POISON.values())


def records_with_poison(n_good: int, seed: int = 1, anomalies: int = 0) -> tuple[list[bytes], int]:
    """``n_good`` JSON records (the last ``anomalies`` of them far off the manifold) with the
    poison records interleaved; returns ``(values, n_poison)``."""
    rows = normal_rows(n_good, seed)
    if anomalies:
        rows[-anomalies:] += np.array([30, -5, 20, 10, 300, 1], dtype=np.float32)
    good = [record(i, r) for i, r in enumerate(rows)]
    poison = list(POISON_VALUES)
    out: list[bytes] = []
    step = max(1, n_good // (len(poison) + 1))
    for i, g in enumerate(good):
        out.append(g)
        if i % step == step - 1 and poison:
            out.append(poison.pop(0))
    out.extend(poison)
    return out, len(POISON)


def stream_values(start: int, n: int, *, poison_every: int = 50) -> list[bytes]:
    """Records ``start .. start+n-1``: good ones with a poison record every ``poison_every``."""
    rows = normal_rows(n, seed=start)
    out = []
    for j in range(n):
        i = start + j
        if poison_every and i % poison_every == poison_every - 1:
            out.append(POISON_VALUES[(i // poison_every) % len(POISON_VALUES)])
        else:
            out.append(record(i, rows[j]))
    return out

"""Shared settings and helpers of the quality studies."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ae_pipeline.models import TrainConfig, Trainer, fit

RESULTS = Path(__file__).resolve().parent.parent / "results"
PLOTS = RESULTS / "plots"


@dataclass
class Settings:
    """Sizes of one run: the default run or ``--quick``.

    The default run trains the Fashion-MNIST models on all 60,000 training images (the split
    is fixed; seeds change initialisation, shuffling and corruption). The expensive variants
    (stacked, convolutional) run at a subset of the code sizes (``stacked_dims``,
    ``conv_dims``) to keep the 5-seed run under 30 minutes on 2 CPU cores.
    """

    quick: bool = False
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    fashion_train: int = 60000
    fashion_test: int = 10000
    epochs: int = 3
    decay_epochs: int = 1
    dims: list[int] = field(default_factory=lambda: [32, 64, 8, 2])
    stacked_dims: list[int] = field(default_factory=lambda: [32])
    conv_dims: list[int] = field(default_factory=lambda: [32])
    conv_train: int = 10000
    conv_epochs: int = 2
    logreg_train: int = 3000
    # Chosen on a validation slice of the training images (see benchmarks/quality/denoise.py).
    denoise_train: int = 60000
    denoise_epochs: int = 5
    ovr_train_per_class: int = 600
    ovr_tasks: int | None = None
    epoch_scale: float = 1.0
    shuttle_limit: int | None = None
    batch_size: int = 128

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if not quick:
            return cls()
        return cls(
            quick=True,
            seeds=[0],
            fashion_train=6000,
            fashion_test=1000,
            epochs=2,
            decay_epochs=1,
            dims=[32],
            stacked_dims=[32],
            conv_dims=[32],
            conv_train=500,
            conv_epochs=1,
            logreg_train=600,
            denoise_train=3000,
            denoise_epochs=2,
            ovr_train_per_class=200,
            ovr_tasks=1,
            epoch_scale=0.1,
            shuttle_limit=2500,
        )


def train_config(seed: int, epochs: int, **kw: Any) -> TrainConfig:
    """CPU training settings of every model of the studies (Adam lr 2e-3, batch 128)."""
    settings = {
        "epochs": epochs,
        "lr": 2e-3,
        "batch_size": 128,
        "seed": seed,
        "device": "cpu",
        "progress": False,
    }
    settings.update(kw)
    return TrainConfig(**settings)


def decay(model: Any, x: Any, seed: int, epochs: int, lr: float = 2e-4, **kw: Any) -> list[float]:
    """Continues training ``model`` for ``epochs`` at a 10x lower learning rate (a step LR
    schedule: Adam at 2e-3, then 2e-4); returns the per-epoch training losses."""
    if epochs <= 0:
        return []
    hist = Trainer(train_config(seed + 10_000, epochs, lr=lr, **kw)).fit(model, x)
    return hist.train_losses


def fit_decay(cfg: Any, x: Any, seed: int, epochs: int, decay_epochs: int, **kw: Any) -> Any:
    """``fit`` at lr 2e-3 for ``epochs``, then ``decay_epochs`` at 2e-4.

    Returns ``(model, per-epoch training losses)``."""
    model, hist = fit(cfg, x, train_config(seed, epochs, **kw))
    return model, hist.train_losses + decay(model, x, seed, decay_epochs, **kw)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    return float(((a - b) ** 2).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the PSNR in dB of pixels in [0, 1]."""
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    per = ((a - b) ** 2).mean(axis=1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(per, 1e-10))))


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Returns ``(fn(*args, **kwargs), wall seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def summary(values: Iterable[float]) -> dict[str, Any]:
    """Mean, standard deviation, min, max and the values over seeds."""
    v = np.asarray(list(values), dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": len(v),
        "values": [float(x) for x in v],
    }


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", flush=True)

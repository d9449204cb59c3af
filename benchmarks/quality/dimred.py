"""Dimensionality reduction on Fashion-MNIST: PCA vs undercomplete, stacked and conv AEs.

Test MSE and PSNR at each code size d, and the test accuracy of a logistic regression trained
on the codes (against PCA codes and raw pixels). The split is fixed (first N training and test
images; the default run uses all 60,000 training and 10,000 test images); seeds change model
initialisation and shuffling. PCA is deterministic (one full SVD; PCA-d keeps the first d
components). Every AE uses a 784-256-d encoder with a mirrored decoder, sigmoid output, MSE
loss, Adam at lr 2e-3 (batch 128) then one epoch at 2e-4 (step schedule). The stacked and
convolutional AEs are trained at the code sizes of ``Settings.stacked_dims`` / ``conv_dims``
only (cost), the convolutional one on the first ``conv_train`` images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ae_pipeline.datasets import load_fashion_mnist
from ae_pipeline.models import ModelConfig, Scorer, fine_tune, pretrain_stack
from benchmarks.quality.common import (
    Settings,
    decay,
    fit_decay,
    log,
    mse,
    psnr,
    summary,
    timed,
    train_config,
)

HIDDEN = [256]
LOGREG_ROWS = [3000]  # set from Settings.logreg_train by run()


def _logreg_acc(z: np.ndarray, y: np.ndarray, zt: np.ndarray, yt: np.ndarray) -> float:
    z, y = z[: LOGREG_ROWS[0]], y[: LOGREG_ROWS[0]]
    scaler = StandardScaler().fit(z)
    clf = LogisticRegression(max_iter=200)
    clf.fit(scaler.transform(z), y)
    return float((clf.predict(scaler.transform(zt)) == yt).mean())


def _mlp(d: int) -> ModelConfig:
    return ModelConfig(784, hidden_dims=HIDDEN, latent_dim=d, output_activation="sigmoid")


def _stacked(d: int) -> ModelConfig:
    return ModelConfig(
        784,
        architecture="stacked",
        hidden_dims=HIDDEN,
        latent_dim=d,
        output_activation="sigmoid",
    )


def _conv(d: int) -> ModelConfig:
    return ModelConfig(
        architecture="conv",
        input_shape=[1, 28, 28],
        latent_dim=d,
        conv_channels=[16, 32],
        output_activation="sigmoid",
    )


def _train_stacked(
    cfg: ModelConfig, x: np.ndarray, seed: int, s: Settings
) -> tuple[Any, list[float]]:
    """Greedy layer-wise pretraining, then end-to-end fine-tuning with the step schedule."""
    stack, _ = pretrain_stack(cfg, x, train_config(seed, max(1, s.epochs // 2)))
    hist = fine_tune(stack, x, train_config(seed, s.epochs))
    return stack, hist.train_losses + decay(stack, x, seed, s.decay_epochs)


class _PCA:
    """PCA-d for every d from one full SVD (the first d components of PCA-k, k >= d)."""

    def __init__(self, x: np.ndarray, k: int) -> None:
        self.fit_s = 0.0
        pca, self.fit_s = timed(PCA(k, svd_solver="full").fit, x)
        self.mean = pca.mean_.astype(np.float32)
        self.components = pca.components_.astype(np.float32)

    def encode(self, x: np.ndarray, d: int) -> np.ndarray:
        return (x - self.mean) @ self.components[:d].T

    def reconstruct(self, x: np.ndarray, d: int) -> np.ndarray:
        return self.encode(x, d) @ self.components[:d] + self.mean


def run(s: Settings, checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs the study; ``checkpoint(out)`` is called after each seed (partial results).

    The code sizes run in the order of ``s.dims`` (the default puts d=32, the goal's, first)."""
    LOGREG_ROWS[0] = s.logreg_train
    x, y = load_fashion_mnist("train", limit=s.fashion_train)
    xt, yt = load_fashion_mnist("test", limit=s.fashion_test)
    out: dict[str, Any] = {
        "split": {"train": len(x), "test": len(xt), "conv_train": min(s.conv_train, len(x))},
        "epochs": s.epochs,
        "decay_epochs": s.decay_epochs,
        "conv_epochs": s.conv_epochs,
        "hidden_dims": HIDDEN,
        "stacked_dims": [d for d in s.dims if d in s.stacked_dims],
        "conv_dims": [d for d in s.dims if d in s.conv_dims],
        "logreg_train_rows": s.logreg_train,
        "by_d": {},
        "loss_curves": {},
    }
    raw_acc, _ = timed(lambda: _logreg_acc(x, y, xt, yt))
    out["logreg_raw_pixels"] = raw_acc
    log(f"dimred: raw-pixel logistic regression accuracy {raw_acc:.4f}")
    pca = _PCA(x, max(s.dims))
    for d in s.dims:
        rows: dict[str, dict[str, list[float]]] = {}

        def add(name: str, rows: dict = rows, **vals: float) -> None:
            for k, v in vals.items():
                rows.setdefault(name, {}).setdefault(k, []).append(v)

        rec = pca.reconstruct(xt, d)
        acc = _logreg_acc(pca.encode(x, d), y, pca.encode(xt, d), yt)
        for _ in s.seeds:
            add("pca", mse=mse(rec, xt), psnr=psnr(rec, xt), acc=acc, train_s=pca.fit_s)
        for seed in s.seeds:
            (model, losses), t = timed(fit_decay, _mlp(d), x, seed, s.epochs, s.decay_epochs)
            sc = Scorer(model)
            rec = sc.reconstruct(xt)
            acc = _logreg_acc(sc.encode(x), y, sc.encode(xt), yt)
            add("ae", mse=mse(rec, xt), psnr=psnr(rec, xt), acc=acc, train_s=t)
            if seed == s.seeds[0]:
                out["loss_curves"][f"ae_d{d}"] = losses

            if d in s.stacked_dims:
                (stack, losses), t = timed(_train_stacked, _stacked(d), x, seed, s)
                sc = Scorer(stack)
                rec = sc.reconstruct(xt)
                acc = _logreg_acc(sc.encode(x), y, sc.encode(xt), yt)
                add("stacked", mse=mse(rec, xt), psnr=psnr(rec, xt), acc=acc, train_s=t)

            if d in s.conv_dims:
                xc = x[: s.conv_train].reshape(-1, 1, 28, 28)
                (conv, losses), t = timed(
                    fit_decay, _conv(d), xc, seed, s.conv_epochs, s.decay_epochs
                )
                sc = Scorer(conv)
                rec = sc.reconstruct(xt.reshape(-1, 1, 28, 28))
                acc = _logreg_acc(
                    sc.encode(xc), y[: s.conv_train], sc.encode(xt.reshape(-1, 1, 28, 28)), yt
                )
                add("conv", mse=mse(rec, xt), psnr=psnr(rec, xt), acc=acc, train_s=t)
                if seed == s.seeds[0]:
                    out["loss_curves"][f"conv_d{d}"] = losses
            log(f"dimred d={d} seed {seed} done")
            out["by_d"][str(d)] = {
                name: {k: summary(v) for k, v in vals.items()} for name, vals in rows.items()
            }
            if checkpoint and seed != s.seeds[-1]:
                checkpoint(out)  # partial: the seeds done so far (n in each summary)
        log(
            f"dimred d={d}: "
            + ", ".join(
                f"{n} mse={out['by_d'][str(d)][n]['mse']['mean']:.4f}"
                f" acc={out['by_d'][str(d)][n]['acc']['mean']:.3f}"
                for n in rows
            )
        )
        if checkpoint:
            checkpoint(out)
    return out

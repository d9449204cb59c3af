"""Dimensionality reduction on Fashion-MNIST: PCA vs undercomplete, stacked and conv AEs.

Test MSE and PSNR at each code size d, and the test accuracy of a logistic regression trained
on the codes (against PCA codes and raw pixels). The split is fixed (first N training and test
images); seeds change model initialisation and shuffling. PCA is deterministic (full SVD).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ae_pipeline.datasets import load_fashion_mnist
from ae_pipeline.models import ModelConfig, Scorer, fine_tune, fit, pretrain_stack
from benchmarks.quality.common import Settings, log, mse, psnr, summary, timed, train_config

HIDDEN = [128]
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


def _train_stacked(cfg: ModelConfig, x: np.ndarray, layer_tc: Any, tc: Any) -> tuple[Any, Any]:
    """Greedy layer-wise pretraining, then end-to-end fine-tuning."""
    stack, _ = pretrain_stack(cfg, x, layer_tc)
    return stack, fine_tune(stack, x, tc)


def run(s: Settings) -> dict[str, Any]:
    LOGREG_ROWS[0] = s.logreg_train
    x, y = load_fashion_mnist("train", limit=s.fashion_train)
    xt, yt = load_fashion_mnist("test", limit=s.fashion_test)
    out: dict[str, Any] = {
        "split": {"train": len(x), "test": len(xt), "conv_train": min(s.conv_train, len(x))},
        "epochs": s.epochs,
        "conv_epochs": s.conv_epochs,
        "hidden_dims": HIDDEN,
        "logreg_train_rows": s.logreg_train,
        "by_d": {},
        "loss_curves": {},
    }
    raw_acc, _ = timed(lambda: _logreg_acc(x, y, xt, yt))
    out["logreg_raw_pixels"] = raw_acc
    log(f"dimred: raw-pixel logistic regression accuracy {raw_acc:.4f}")
    for d in s.dims:
        rows: dict[str, dict[str, list[float]]] = {}

        def add(name: str, rows: dict = rows, **vals: float) -> None:
            for k, v in vals.items():
                rows.setdefault(name, {}).setdefault(k, []).append(v)

        pca, t = timed(PCA(d, svd_solver="full").fit, x)
        rec = pca.inverse_transform(pca.transform(xt))
        acc = _logreg_acc(pca.transform(x), y, pca.transform(xt), yt)
        for _ in s.seeds:
            add("pca", mse=mse(rec, xt), psnr=psnr(rec, xt), acc=acc, train_s=t)
        for seed in s.seeds:
            tc = train_config(seed, s.epochs)
            (model, hist), t = timed(fit, _mlp(d), x, tc)
            sc = Scorer(model)
            rec = sc.reconstruct(xt)
            acc = _logreg_acc(sc.encode(x), y, sc.encode(xt), yt)
            add("ae", mse=mse(rec, xt), psnr=psnr(rec, xt), acc=acc, train_s=t)
            if seed == s.seeds[0]:
                out["loss_curves"][f"ae_d{d}"] = hist.train_losses

            ltc = train_config(seed, max(1, s.epochs // 2))
            (stack, hist), t = timed(_train_stacked, _stacked(d), x, ltc, tc)
            sc = Scorer(stack)
            rec = sc.reconstruct(xt)
            acc = _logreg_acc(sc.encode(x), y, sc.encode(xt), yt)
            add("stacked", mse=mse(rec, xt), psnr=psnr(rec, xt), acc=acc, train_s=t)

            xc = x[: s.conv_train].reshape(-1, 1, 28, 28)
            ctc = train_config(seed, s.conv_epochs, batch_size=128)
            (conv, hist), t = timed(fit, _conv(d), xc, ctc)
            sc = Scorer(conv)
            rec = sc.reconstruct(xt.reshape(-1, 1, 28, 28))
            acc = _logreg_acc(
                sc.encode(xc), y[: s.conv_train], sc.encode(xt.reshape(-1, 1, 28, 28)), yt
            )
            add("conv", mse=mse(rec, xt), psnr=psnr(rec, xt), acc=acc, train_s=t)
            if seed == s.seeds[0]:
                out["loss_curves"][f"conv_d{d}"] = hist.train_losses
        out["by_d"][str(d)] = {
            name: {k: summary(v) for k, v in vals.items()} for name, vals in rows.items()
        }
        log(
            f"dimred d={d}: "
            + ", ".join(
                f"{n} mse={out['by_d'][str(d)][n]['mse']['mean']:.4f}"
                f" acc={out['by_d'][str(d)][n]['acc']['mean']:.3f}"
                for n in rows
            )
        )
    return out

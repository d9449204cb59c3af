"""Training reports for people: loss curves and the score histogram as PNG, metrics as JSON.

Written through Beam FileSystems, so a report can live next to a model version on any
filesystem. Uses matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np


def _write(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(data)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def loss_curve_png(history: dict[str, Any], layers: list[dict] | None = None) -> bytes:
    """Training and validation loss per epoch (and each pretrained layer's, if stacked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = history.get("train_losses") or []
    val = [v for v in history.get("val_losses") or [] if v is not None]
    epochs = range(1, len(train) + 1)
    ax.plot(epochs, train, "o-", label="train")
    if val:
        ax.plot(range(1, len(val) + 1), val, "s-", label="validation")
    for layer in layers or []:
        h = layer["history"]
        ax.plot(
            range(1, len(h["train_losses"]) + 1),
            h["train_losses"],
            "--",
            alpha=0.6,
            label=f"layer {layer['layer']} pretrain",
        )
    if history.get("best_epoch"):
        ax.axvline(history["best_epoch"], color="gray", ls=":", label="best epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("training loss")
    ax.legend(fontsize=8)
    return _png(fig)


def histogram_png(threshold: dict[str, Any], errors: np.ndarray | None = None) -> bytes:
    """The calibration score histogram with the threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if errors is not None and len(errors):
        ax.hist(errors, bins=60, color="tab:blue", alpha=0.8)
    else:
        h = threshold["histogram"]
        edges = np.asarray(h["edges"])
        ax.stairs(h["counts"], edges, fill=True, alpha=0.8)
    ax.axvline(threshold["value"], color="tab:red", label=f"threshold {threshold['value']:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("reconstruction error")
    ax.set_ylabel("records")
    ax.set_title(f"validation scores ({threshold['method']} {threshold['param']})")
    ax.legend(fontsize=8)
    return _png(fig)


def write_training_report(
    directory: str,
    metrics: dict[str, Any],
    threshold: dict[str, Any] | None,
    errors: np.ndarray | None = None,
) -> list[str]:
    """Write ``loss.png``, ``scores.png`` (with a threshold) and ``metrics.json``; returns paths."""
    from apache_beam.io.filesystems import FileSystems

    FileSystems.mkdirs(directory) if not FileSystems.exists(directory) else None
    paths = []
    history = metrics.get("history") or {}
    if history.get("train_losses"):
        paths.append(FileSystems.join(directory, "loss.png"))
        _write(paths[-1], loss_curve_png(history, metrics.get("layers")))
    if threshold:
        paths.append(FileSystems.join(directory, "scores.png"))
        _write(paths[-1], histogram_png(threshold, errors))
    paths.append(FileSystems.join(directory, "metrics.json"))
    body = {"metrics": metrics, "threshold": threshold}
    _write(paths[-1], json.dumps(body, indent=2, default=float).encode())
    return paths

"""Reports for people: training (loss curves and the score histogram as PNG, metrics as JSON) and
evaluation against labels (ROC and precision-recall curves, ROC-AUC and PR-AUC, computed with
numpy: scikit-learn is not needed at run time).

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
    dots = len(train) <= 40  # markers only while they can be told apart
    ax.plot(epochs, train, "o-" if dots else "-", label="train")
    if val:
        ax.plot(range(1, len(val) + 1), val, "s-" if dots else "-", label="validation")
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


# ------------------------------------------------------------------------------------------
# Evaluation against labels: ROC and precision-recall (numpy only; no scikit-learn at run time)
# ------------------------------------------------------------------------------------------


def _counts(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct score, highest first: the score and the true/false positives at or above it."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    if scores.shape != positives.shape:
        raise ValueError(f"{scores.size} scores but {positives.size} labels")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positives[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of each run of equal scores
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return s[last], tps.astype(np.float64), fps.astype(np.float64)


def _need_both(positives: np.ndarray) -> tuple[int, int]:
    p = int(np.count_nonzero(positives))
    n = int(np.size(positives) - p)
    if p == 0 or n == 0:
        raise ValueError(
            f"evaluation needs both anomalies and normal rows; the labels give {p} anomalies "
            f"and {n} normal rows"
        )
    return p, n


def roc_curve(scores: np.ndarray, positives: np.ndarray) -> dict[str, np.ndarray]:
    """The ROC curve: ``fpr``, ``tpr`` and ``thresholds`` (a row is flagged when its score is
    ``>=`` the threshold), starting at (0, 0); tied scores make one point.

    Raises:
        ValueError: unequal lengths, or labels without both classes.
    """
    p, n = _need_both(np.asarray(positives, dtype=bool))
    thresholds, tps, fps = _counts(scores, positives)
    return {
        "fpr": np.r_[0.0, fps / n],
        "tpr": np.r_[0.0, tps / p],
        "thresholds": np.r_[np.inf, thresholds],
    }


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; ties count one half), in [0, 1]."""
    curve = roc_curve(scores, positives)
    x, y = curve["fpr"], curve["tpr"]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def precision_recall_curve(scores: np.ndarray, positives: np.ndarray) -> dict[str, np.ndarray]:
    """Precision and recall at each distinct score threshold, highest threshold first, starting
    at recall 0 with precision 1."""
    p, _ = _need_both(np.asarray(positives, dtype=bool))
    thresholds, tps, fps = _counts(scores, positives)
    return {
        "precision": np.r_[1.0, tps / (tps + fps)],
        "recall": np.r_[0.0, tps / p],
        "thresholds": np.r_[np.inf, thresholds],
    }


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision: ``sum((R_k - R_{k-1}) P_k)``
    over the thresholds (no interpolation; as scikit-learn's ``average_precision_score``)."""
    curve = precision_recall_curve(scores, positives)
    return float(np.sum(np.diff(curve["recall"]) * curve["precision"][1:]))


def _curve_png(x, y, *, xlabel: str, ylabel: str, title: str, diagonal: bool, mark=None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot(x, y, color="tab:blue", drawstyle="steps-post" if not diagonal else "default")
    if diagonal:
        ax.plot([0, 1], [0, 1], color="gray", ls=":", label="chance")
    if mark is not None:
        ax.plot([mark[0]], [mark[1]], "o", color="tab:red", label="at the threshold")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if diagonal or mark is not None:
        ax.legend(fontsize=8, loc="lower right" if diagonal else "lower left")
    return _png(fig)


def evaluate_scores(
    scores: np.ndarray, positives: np.ndarray, threshold: float | None = None
) -> dict[str, Any]:
    """ROC-AUC, PR-AUC (average precision) and, with ``threshold``, the confusion counts,
    precision, recall and false-positive rate of ``score > threshold`` (the serving rule).

    Raises:
        ValueError: unequal lengths, or labels without both classes.
    """
    positives = np.asarray(positives, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    p, n = _need_both(positives)
    out: dict[str, Any] = {
        "roc_auc": roc_auc(scores, positives),
        "pr_auc": average_precision(scores, positives),
        "anomalies": p,
        "normal": n,
        "anomaly_rate": p / (p + n),
    }
    if threshold is not None:
        flagged = scores > threshold
        tp = int(np.count_nonzero(flagged & positives))
        fp = int(np.count_nonzero(flagged & ~positives))
        out["at_threshold"] = {
            "threshold": float(threshold),
            "flagged": int(np.count_nonzero(flagged)),
            "true_positives": tp,
            "false_positives": fp,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / p,
            "fpr": fp / n,
        }
    return out


def write_evaluation_report(
    directory: str,
    scores: np.ndarray,
    positives: np.ndarray,
    threshold: float | None = None,
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``roc.png``, ``pr.png`` and ``evaluation.json`` into ``directory`` (any Beam
    filesystem); returns the metrics of :func:`evaluate_scores` with ``files``.

    Raises:
        ValueError: unequal lengths, or labels without both classes.
    """
    from apache_beam.io.filesystems import FileSystems

    metrics = evaluate_scores(scores, positives, threshold)
    at = metrics.get("at_threshold")
    FileSystems.mkdirs(directory) if not FileSystems.exists(directory) else None
    roc = roc_curve(scores, positives)
    pr = precision_recall_curve(scores, positives)
    files = {
        "roc": FileSystems.join(directory, "roc.png"),
        "pr": FileSystems.join(directory, "pr.png"),
        "metrics": FileSystems.join(directory, "evaluation.json"),
    }
    _write(
        files["roc"],
        _curve_png(
            roc["fpr"],
            roc["tpr"],
            xlabel="false-positive rate",
            ylabel="true-positive rate (recall)",
            title=f"ROC (AUC {metrics['roc_auc']:.4f})",
            diagonal=True,
            mark=None if at is None else (at["fpr"], at["recall"]),
        ),
    )
    _write(
        files["pr"],
        _curve_png(
            pr["recall"],
            pr["precision"],
            xlabel="recall",
            ylabel="precision",
            title=f"precision-recall (AP {metrics['pr_auc']:.4f})",
            diagonal=False,
            mark=None if at is None or at["precision"] is None else (at["recall"], at["precision"]),
        ),
    )
    metrics = {**metrics, **(extra or {}), "files": files}
    _write(files["metrics"], json.dumps(metrics, indent=2, default=float).encode())
    return metrics

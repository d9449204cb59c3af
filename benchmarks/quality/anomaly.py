"""Anomaly detection: ROC-AUC and average precision of our AEs against PyOD, IForest and PCA.

Every detector is fit on normal training rows only and scores the same test rows of the same
seeded split. Our scores are per-row reconstruction MSE (``Scorer.errors``). Our AEs train for
at most the dataset's epoch budget with early stopping (patience 10) on a validation split of
15% carved from the normal training rows, restoring the best epoch; tabular data are
standardised with the normal training rows' statistics, images stay in [0, 1] (sigmoid output).
PyOD's AutoEncoder (torch) gets the same hidden sizes, epoch budget (all of it: it has no early
stopping), batch size and learning rate as ours and otherwise its defaults (batch norm, dropout
0.2, its own standardisation). Models are never pickled or unpickled.

Apache Beam's ``AnomalyDetection`` transform with ``ZScore`` / ``IQR`` detectors is not part of
the pinned Beam 2.62.0 (``apache_beam.ml.anomaly`` does not exist there), so it is not compared.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.model_selection import train_test_split

from ae_pipeline.datasets import load_breast_cancer, load_digits, load_fashion_mnist
from ae_pipeline.models import CorruptionConfig, ModelConfig, Scorer, fit
from benchmarks.quality.common import Settings, log, summary, timed, train_config

BEAM_NOTE = (
    "apache_beam.ml.anomaly (AnomalyDetection, ZScore, IQR) does not exist in the pinned "
    "apache-beam 2.62.0; not compared."
)
METHODS = ("ae", "dae", "pyod_ae", "iforest", "pca")
FPR_GRID = np.linspace(0.0, 1.0, 101)


class Task:
    """One train/test problem: normal training rows, test rows, test labels (1 = anomaly)."""

    def __init__(
        self,
        x_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        hidden: list[int],
        latent: int,
        image: bool,
    ) -> None:
        self.x_train = x_train.astype(np.float32)
        self.x_test = x_test.astype(np.float32)
        self.y_test = y_test.astype(np.int64)
        self.hidden, self.latent, self.image = hidden, latent, image


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd = np.where(sd < 1e-8, 1.0, sd)
    return (train - mu) / sd, (test - mu) / sd


def _batch(task: Task) -> int:
    return min(256, max(32, len(task.x_train) // 8))


def _our_ae(task: Task, seed: int, epochs: int, denoise: bool) -> np.ndarray:
    corruption = None
    if denoise:
        corruption = (
            CorruptionConfig("masking", fraction=0.2)
            if task.image
            else CorruptionConfig("gaussian", sigma=0.2)
        )
    cfg = ModelConfig(
        task.x_train.shape[1],
        hidden_dims=task.hidden,
        latent_dim=task.latent,
        output_activation="sigmoid" if task.image else "identity",
        corruption=corruption,
    )
    tc = train_config(
        seed,
        epochs,
        batch_size=_batch(task),
        validation_fraction=0.15,
        patience=10,
        restore_best=True,
    )
    model, _ = fit(cfg, task.x_train, tc)
    return Scorer(model).errors(task.x_test)


def _pyod_ae(task: Task, seed: int, epochs: int) -> np.ndarray:
    from pyod.models.auto_encoder import AutoEncoder

    batch = _batch(task)
    det = AutoEncoder(
        hidden_neuron_list=[*task.hidden, task.latent],
        epoch_num=epochs,
        batch_size=batch,
        lr=2e-3,
        random_state=seed,
        verbose=0,
        device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.fit(task.x_train)
        return np.asarray(det.decision_function(task.x_test))


def _iforest(task: Task, seed: int) -> np.ndarray:
    det = IsolationForest(n_estimators=100, random_state=seed).fit(task.x_train)
    return -det.score_samples(task.x_test)


def _pca(task: Task) -> np.ndarray:
    k = min(task.latent, task.x_train.shape[1] - 1, len(task.x_train) - 1)
    pca = PCA(k, svd_solver="full").fit(task.x_train)
    rec = pca.inverse_transform(pca.transform(task.x_test))
    return ((rec - task.x_test) ** 2).mean(axis=1)


def _score_all(task: Task, seed: int, epochs: int) -> dict[str, tuple[np.ndarray, float]]:
    fns: dict[str, Callable[[], np.ndarray]] = {
        "ae": lambda: _our_ae(task, seed, epochs, False),
        "dae": lambda: _our_ae(task, seed, epochs, True),
        "pyod_ae": lambda: _pyod_ae(task, seed, epochs),
        "iforest": lambda: _iforest(task, seed),
        "pca": lambda: _pca(task),
    }
    return {name: timed(fn) for name, fn in fns.items()}


# ---- data sets -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _shuttle() -> tuple[np.ndarray, np.ndarray]:
    from river.datasets import Shuttle

    rows = list(Shuttle())
    x = np.array([list(f.values()) for f, _ in rows], dtype=np.float32)
    y = np.array([int(label) for _, label in rows], dtype=np.int64)
    return x, y


def shuttle_tasks(s: Settings, seed: int) -> list[Task]:
    x, y = _shuttle()
    if s.shuttle_limit:
        idx = np.random.default_rng(0).permutation(len(x))[: s.shuttle_limit]
        x, y = x[idx], y[idx]
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    tr, te = _standardize(xa[ya == 0], xb)
    return [Task(tr, te, yb, [32], 4, False)]


def breast_tasks(s: Settings, seed: int) -> list[Task]:
    x, target = load_breast_cancer(standardize=False)
    y = (target == 0).astype(np.int64)  # 0 = malignant in scikit-learn's encoding
    normal, anomalous = x[y == 0], x[y == 1]
    ntr, nte = train_test_split(normal, test_size=0.4, random_state=seed)
    te = np.concatenate([nte, anomalous])
    yt = np.r_[np.zeros(len(nte)), np.ones(len(anomalous))]
    tr, te = _standardize(ntr, te)
    return [Task(tr, te, yt, [16], 6, False)]


def mitdb_path() -> Path:
    import sktime

    return Path(os.path.dirname(sktime.__file__)) / "datasets" / "data" / "mitdb" / "mitdb.csv"


def mitdb_tasks(s: Settings, seed: int, window: int = 64, train_end: int = 5000) -> list[Task]:
    import pandas as pd

    df = pd.read_csv(mitdb_path())
    v = df["data"].to_numpy(np.float32)
    lab = df["label"].to_numpy(np.int64)
    w = np.lib.stride_tricks.sliding_window_view(v, window)
    wl = np.lib.stride_tricks.sliding_window_view(lab, window).max(axis=1)
    starts = np.arange(len(w))
    train = (starts + window <= train_end) & (wl == 0)
    test = starts >= train_end
    mu, sd = v[:train_end].mean(), v[:train_end].std()
    return [Task((w[train] - mu) / sd, (w[test] - mu) / sd, wl[test], [32], 8, False)]


def digits_tasks(s: Settings, seed: int) -> list[Task]:
    x, y = load_digits()
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    return [Task(xa[ya == c], xb, (yb != c).astype(int), [32], 8, True) for c in range(10)]


def fashion_tasks(s: Settings, seed: int) -> list[Task]:
    x, y = load_fashion_mnist("train", limit=s.ovr_train_per_class * 12)
    xt, yt = load_fashion_mnist("test", limit=s.fashion_test)
    return [
        Task(x[y == c][: s.ovr_train_per_class], xt, (yt != c).astype(int), [128], 32, True)
        for c in range(10)
    ]


DATASETS: dict[str, tuple[Callable[[Settings, int], list[Task]], str]] = {
    "shuttle": (shuttle_tasks, "river Shuttle (ODDS), 60/40 stratified split, train on normal"),
    "digits_ovr": (digits_tasks, "sklearn digits, each class normal in turn, mean of 10"),
    "fashion_ovr": (fashion_tasks, "Fashion-MNIST, each class normal in turn, mean of 10"),
    "breast_cancer": (breast_tasks, "sklearn breast cancer, malignant = anomaly"),
    "mitdb_ecg": (mitdb_tasks, "sktime MIT-BIH excerpt, 64-sample windows, train on t<5000"),
}


def _roc_points(y: np.ndarray, score: np.ndarray) -> list[float]:
    fpr, tpr, _ = roc_curve(y, score)
    return [round(float(v), 4) for v in np.interp(FPR_GRID, fpr, tpr)]


def _hist(y: np.ndarray, score: np.ndarray, bins: int = 30) -> dict[str, Any]:
    lo, hi = np.percentile(score, [0.5, 99.5])
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    clipped = np.clip(score, edges[0], edges[-1])
    return {
        "edges": [float(e) for e in edges],
        "normal": np.histogram(clipped[y == 0], edges)[0].tolist(),
        "anomaly": np.histogram(clipped[y == 1], edges)[0].tolist(),
    }


def run(s: Settings, only: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"beam": BEAM_NOTE, "methods": list(METHODS), "datasets": {}}
    budget = {  # maximum epochs (ours stop early on the validation loss)
        "shuttle": 10,
        "digits_ovr": 60,
        "fashion_ovr": 20,
        "breast_cancer": 100,
        "mitdb_ecg": 30,
    }
    epochs = {k: max(2, round(v * s.epoch_scale)) for k, v in budget.items()}
    for name, (make, desc) in DATASETS.items():
        if only and name not in only:
            continue
        per: dict[str, dict[str, list[float]]] = {
            m: {"roc_auc": [], "ap": [], "train_s": []} for m in METHODS
        }
        curves: dict[str, Any] = {}
        try:
            for seed in s.seeds:
                tasks = make(s, seed)
                if s.ovr_tasks and len(tasks) > s.ovr_tasks:
                    tasks = tasks[: s.ovr_tasks]
                acc: dict[str, dict[str, list[float]]] = {
                    m: {"roc_auc": [], "ap": [], "train_s": []} for m in METHODS
                }
                for ti, task in enumerate(tasks):
                    scores = _score_all(task, seed, epochs[name])
                    for m, (sc, t) in scores.items():
                        acc[m]["roc_auc"].append(float(roc_auc_score(task.y_test, sc)))
                        acc[m]["ap"].append(float(average_precision_score(task.y_test, sc)))
                        acc[m]["train_s"].append(t)
                        if seed == s.seeds[0] and ti == 0:
                            curves[m] = {
                                "roc_tpr": _roc_points(task.y_test, sc),
                                "hist": _hist(task.y_test, sc),
                            }
                    if seed == s.seeds[0] and ti == 0:
                        shape = {
                            "train_rows": len(task.x_train),
                            "test_rows": len(task.x_test),
                            "features": task.x_train.shape[1],
                            "test_anomaly_share": float(task.y_test.mean()),
                            "hidden": task.hidden,
                            "latent": task.latent,
                        }
                for m in METHODS:
                    for k in ("roc_auc", "ap", "train_s"):
                        per[m][k].append(float(np.mean(acc[m][k])))
        except (ImportError, FileNotFoundError, OSError) as exc:
            out["datasets"][name] = {"description": desc, "skipped": f"{type(exc).__name__}: {exc}"}
            log(f"anomaly {name}: skipped ({exc})")
            continue
        out["datasets"][name] = {
            "description": desc,
            "shape": shape,
            "tasks_per_seed": len(tasks),
            "epochs": epochs[name],
            "methods": {m: {k: summary(v) for k, v in per[m].items()} for m in METHODS},
            "curves_seed0_task0": curves,
            "fpr_grid": [round(float(v), 4) for v in FPR_GRID],
        }
        log(
            f"anomaly {name}: "
            + ", ".join(f"{m} {np.mean(per[m]['roc_auc']):.4f}" for m in METHODS)
        )
    return out

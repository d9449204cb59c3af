"""Anomaly detection: ROC-AUC and average precision of our AEs against PyOD, IForest and PCA.

Every detector is fit on normal training rows only and scores the same test rows of the same
seeded split. Two columns of ours:

* ``ae_default``: ``ae-pipeline train`` with every default, the same recipe on every data set
  (:func:`default_recipe`: the model sized from the width, the job's training settings and
  budget, the standard scaler, the ``normalized`` score); chosen on validation folds of the
  training portions only (``recipe_selection.py``), never on these test rows;
* ``ae`` / ``dae``: configured per data set (hidden sizes, code size, epoch budget; images in
  [0, 1] with a sigmoid output), scored by the plain reconstruction MSE (``Scorer.errors``);
  they train for at most the data set's epoch budget with early stopping (patience 10) on 15%
  of the normal training rows, restoring the best epoch. The gap between the two columns is
  what tuning buys.

PyOD's AutoEncoder (torch) gets the same hidden sizes, epoch budget (all of it: it has no early
stopping), batch size and learning rate as the tuned ``ae`` and otherwise its defaults (batch
norm, dropout 0.2, its own standardisation). Models are never pickled or unpickled.

Beam's own detectors (``apache_beam.ml.anomaly``, Beam >= 2.64) run in the main environment
(Beam 2.77), or in the Beam 2.70 side environment ``.venv-beam-anomaly`` under an older Beam
(``beam_detectors_side.py``): a ``ZScore`` + ``IQR`` ensemble per feature with max aggregation,
on the data sets they suit (low-dimensional tabular data and the univariate ECG stream, scored
per sample, a window's score being its samples' maximum); skipped (and said so) where neither
has them.
"""

from __future__ import annotations

import functools
import os
import subprocess
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
from benchmarks.beam_env import anomaly_beam_python
from benchmarks.quality.common import Settings, log, summary, timed, train_config

BEAM_NOTE = (
    "apache_beam.ml.anomaly (ZScore, IQR; Beam 2.77 in the main environment): beam_zscore_iqr "
    "= per-feature ZScore + IQR with Beam's defaults (sliding windows of 1,000), max score, "
    "streamed over the normal training rows then the test rows (score, then learn); on the "
    "low-dimensional tabular data sets and mitdb_ecg (per sample, a window's score the max)."
)
METHODS = ("ae_default", "ae", "dae", "pyod_ae", "iforest", "pca")
BEAM_METHOD = "beam_zscore_iqr"
BEAM_DATASETS = ("shuttle", "breast_cancer", "mitdb_ecg", "wine_ovr", "phishing")
SIDE_SCRIPT = Path(__file__).resolve().parent / "beam_detectors_side.py"
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
        # (train samples, test samples, window) of a univariate stream cut into windows
        self.stream: tuple[np.ndarray, np.ndarray, int] | None = None


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


def default_recipe(x_train: np.ndarray, seed: int, score: str = "normalized") -> _Scaled:
    """``ae-pipeline train`` with every default, in memory: 20% of the rows held out for early
    stopping and calibration (the job splits by key hash; here at random), the standard scaler
    fitted on the rest, the model sized from the width (:mod:`ae_pipeline.models.sizing`), the
    job's training settings and budget, and the ``score`` the job calibrates. Returns a
    scorer of raw rows (the scaler folded in by :func:`_scaled`)."""
    from ae_pipeline.features import ColumnStats, Scaler
    from ae_pipeline.models import TrainConfig, Trainer, build_model, fit_score_function
    from ae_pipeline.models.sizing import sized
    from ae_pipeline.training import JOB_BUDGET_DEFAULTS, SCORES, TRAIN_DEFAULTS, TrainJob

    job = TrainJob("unused", "unused", {})
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x_train))
    n_val = max(1, round(job.validation_fraction * len(x_train)))
    raw_val, raw_tr = x_train[idx[:n_val]], x_train[idx[n_val:]]
    scaler = Scaler.fit(job.scaler, ColumnStats.of(raw_tr))
    tr, va = scaler.transform(raw_tr), scaler.transform(raw_val)
    cfg = ModelConfig.from_dict(
        sized({**job.model_config, "input_dim": x_train.shape[1]}, x_train.shape[1])
    )
    tc = TrainConfig(
        **TRAIN_DEFAULTS, **JOB_BUDGET_DEFAULTS, seed=seed, device="cpu", progress=False
    )
    model = build_model(cfg, seed=seed)
    Trainer(tc).fit(model, tr, val=va)
    terms = SCORES[score]
    scorer = Scorer(model)
    if terms is not None:
        scorer = scorer.with_score_function(fit_score_function(scorer, tr, va, terms=terms))
    return _Scaled(scorer, scaler)


class _Scaled:
    """A scorer of raw rows: the job's scaler, then the scorer (as serving does)."""

    def __init__(self, scorer: Scorer, scaler: Any) -> None:
        self.scorer, self.scaler = scorer, scaler

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self.scorer.scores(self.scaler.transform(x))


def _pyod_ae(task: Task, seed: int, epochs: int) -> np.ndarray:
    from pyod.models.auto_encoder import AutoEncoder

    # PyOD trains no batch at all when its batch exceeds the rows (wine: 35 per cultivar)
    batch = min(_batch(task), max(4, len(task.x_train) // 4))
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
        "ae_default": lambda: default_recipe(task.x_train, seed).scores(task.x_test),
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
    """60/40 stratified split (so the training portion's malignant rows, never trained on,
    can serve the recipe selection's validation folds without touching the test rows)."""
    x, target = load_breast_cancer(standardize=False)
    y = (target == 0).astype(np.int64)  # 0 = malignant in scikit-learn's encoding
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    tr, te = _standardize(xa[ya == 0], xb)
    return [Task(tr, te, yb, [16], 6, False)]


def mitdb_path() -> Path:
    import sktime

    return Path(os.path.dirname(sktime.__file__)) / "datasets" / "data" / "mitdb" / "mitdb.csv"


def beat_period(signal: np.ndarray, lo: int = 20, hi: int = 2000) -> int:
    """The signal's dominant period in samples: the highest autocorrelation after its first
    zero crossing (for the ECG: one heartbeat)."""
    v = np.asarray(signal, np.float64) - np.mean(signal)
    ac = np.correlate(v, v, "full")[len(v) - 1 :]
    ac = ac / ac[0]
    first_zero = int(np.argmax(ac[lo:] < 0)) + lo
    return first_zero + int(np.argmax(ac[first_zero:hi]))


def mitdb_tasks(
    s: Settings, seed: int, window: int | None = None, train_end: int = 5000
) -> list[Task]:
    """Sliding windows of one heartbeat (the period of the training signal, 301 samples; a
    window shorter than a beat sees a fragment whose error says where the QRS complex falls,
    not whether the beat is normal: 64-sample windows scored below chance)."""
    import pandas as pd

    df = pd.read_csv(mitdb_path())
    v = df["data"].to_numpy(np.float32)
    lab = df["label"].to_numpy(np.int64)
    window = window or beat_period(v[:train_end])
    w = np.lib.stride_tricks.sliding_window_view(v, window)
    wl = np.lib.stride_tricks.sliding_window_view(lab, window).max(axis=1)
    starts = np.arange(len(w))
    train = (starts + window <= train_end) & (wl == 0)
    test = starts >= train_end
    mu, sd = v[:train_end].mean(), v[:train_end].std()
    task = Task((w[train] - mu) / sd, (w[test] - mu) / sd, wl[test], [128], 16, False)
    task.stream = (v[:train_end], v[train_end:], window)
    return [task]


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


def wine_tasks(s: Settings, seed: int) -> list[Task]:
    """scikit-learn's wine (13 chemical measurements): each cultivar normal in turn."""
    from sklearn.datasets import load_wine

    data = load_wine()
    x, y = data.data.astype(np.float32), data.target
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    out = []
    for c in np.unique(y):
        tr, te = _standardize(xa[ya == c], xb)
        out.append(Task(tr, te, (yb != c).astype(int), [8], 4, False))
    return out


def phishing_tasks(s: Settings, seed: int) -> list[Task]:
    """river's Phishing (9 web-page features, 1,250 pages): legitimate pages normal."""
    from river.datasets import Phishing

    rows = list(Phishing())
    x = np.array([[float(v) for v in f.values()] for f, _ in rows], dtype=np.float32)
    y = np.array([int(label) for _, label in rows], dtype=np.int64)
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    tr, te = _standardize(xa[ya == 0], xb)
    return [Task(tr, te, yb, [16], 4, False)]


# cheapest first, so that an interrupted run keeps the most data sets
DATASETS: dict[str, tuple[Callable[[Settings, int], list[Task]], str]] = {
    "breast_cancer": (breast_tasks, "sklearn breast cancer, malignant = anomaly"),
    "mitdb_ecg": (
        mitdb_tasks,
        "sktime MIT-BIH excerpt, one-beat (301-sample) windows, train on t<5000",
    ),
    "digits_ovr": (digits_tasks, "sklearn digits, each class normal in turn, mean of 10"),
    "shuttle": (shuttle_tasks, "river Shuttle (ODDS), 60/40 stratified split, train on normal"),
    "fashion_ovr": (fashion_tasks, "Fashion-MNIST, each class normal in turn, mean of 10"),
    # held out of the recipe selection (benchmarks/quality/recipe_selection.py)
    "wine_ovr": (wine_tasks, "sklearn wine, each cultivar normal in turn, mean of 3 (held out)"),
    "phishing": (phishing_tasks, "river Phishing, legitimate pages normal (held out)"),
}


def beam_scores(tasks: list[Task]) -> tuple[list[np.ndarray], float]:
    """Scores of Beam's ZScore + IQR ensemble per task (side environment) and the wall time."""
    import subprocess
    import tempfile
    import time

    python = anomaly_beam_python()
    arrays: dict[str, Any] = {"n": len(tasks)}
    for i, t in enumerate(tasks):
        if t.stream is not None:
            arrays[f"train_{i}"] = t.stream[0].reshape(-1, 1)
            arrays[f"test_{i}"] = t.stream[1].reshape(-1, 1)
        else:
            arrays[f"train_{i}"] = t.x_train
            arrays[f"test_{i}"] = t.x_test
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **arrays)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(
            [python, str(SIDE_SCRIPT), str(src), str(dst)],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise OSError(f"beam side run failed: {proc.stderr[-2000:]}")
        out = np.load(dst)
        scores = []
        for i, t in enumerate(tasks):
            sc = out[f"score_{i}"]
            if t.stream is not None:  # a window's score: the max of its samples' scores
                sc = np.lib.stride_tricks.sliding_window_view(sc, t.stream[2]).max(axis=1)
            scores.append(sc)
    return scores, time.perf_counter() - t0


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


def run(
    s: Settings,
    only: list[str] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs the study; ``checkpoint(out)`` is called after each data set (partial results)."""
    out: dict[str, Any] = {
        "beam": BEAM_NOTE,
        "methods": [*METHODS, BEAM_METHOD],
        "datasets": {},
    }
    budget = {  # maximum epochs (ours stop early on the validation loss)
        "shuttle": 10,
        "digits_ovr": 60,
        "fashion_ovr": 20,
        "breast_cancer": 100,
        "mitdb_ecg": 30,
        "wine_ovr": 100,
        "phishing": 60,
    }
    epochs = {k: max(2, round(v * s.epoch_scale)) for k, v in budget.items()}
    for name, (make, desc) in DATASETS.items():
        if only and name not in only:
            continue
        methods = [*METHODS, BEAM_METHOD] if name in BEAM_DATASETS else list(METHODS)
        per: dict[str, dict[str, list[float]]] = {
            m: {"roc_auc": [], "ap": [], "train_s": []} for m in methods
        }
        curves: dict[str, Any] = {}
        beam_skip = None
        try:
            for seed in s.seeds:
                tasks = make(s, seed)
                if s.ovr_tasks and len(tasks) > s.ovr_tasks:
                    tasks = tasks[: s.ovr_tasks]
                acc: dict[str, dict[str, list[float]]] = {
                    m: {"roc_auc": [], "ap": [], "train_s": []} for m in methods
                }
                beam: list[np.ndarray] | None = None
                if BEAM_METHOD in methods and beam_skip is None:
                    try:
                        beam, beam_t = beam_scores(tasks)
                    except (FileNotFoundError, OSError, subprocess.TimeoutExpired) as exc:
                        beam_skip = f"{type(exc).__name__}: {exc}"[:500]
                        log(f"anomaly {name}: Beam detectors skipped ({beam_skip})")
                for ti, task in enumerate(tasks):
                    scores = _score_all(task, seed, epochs[name])
                    if beam is not None:
                        scores[BEAM_METHOD] = (beam[ti], beam_t / len(tasks))
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
                for m in methods:
                    for k in ("roc_auc", "ap", "train_s"):
                        if acc[m][k]:
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
            "methods": {
                m: {k: summary(v) for k, v in per[m].items()} for m in methods if per[m]["roc_auc"]
            },
            **({"beam_skipped": beam_skip} if beam_skip else {}),
            "curves_seed0_task0": curves,
            "fpr_grid": [round(float(v), 4) for v in FPR_GRID],
        }
        log(
            f"anomaly {name}: "
            + ", ".join(
                f"{m} {np.mean(per[m]['roc_auc']):.4f}" for m in methods if per[m]["roc_auc"]
            )
        )
        if checkpoint:
            checkpoint(out)
    return out

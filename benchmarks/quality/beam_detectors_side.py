"""Beam's own univariate detectors (``ZScore`` + ``IQR`` per feature, max score) on a stream.

Runs under a Beam that has ``apache_beam.ml.anomaly`` (Beam >= 2.64: the main environment's
2.77, or the 2.70 side environment ``.venv-beam-anomaly`` under an older Beam), in its own
process; called by ``benchmarks/quality/anomaly.py``:

    .venv/bin/python beam_detectors_side.py IN.npz OUT.npz

``IN.npz`` holds ``n`` and, per task ``i``, ``train_i`` and ``test_i`` (rows x features). Each
feature gets a ``ZScore`` and an ``IQR`` detector with Beam's defaults (sliding windows of 1,000
values). As ``AnomalyDetection`` does on a stream, each detector first learns the normal
training rows (only the last window's worth can matter to a sliding window, so only those are
pushed), then scores each test row and learns it, in order. A row's score is the maximum over
its features' detectors (the ``MaxScore`` aggregation); a score Beam leaves undefined (NaN or
None: not enough data) counts as 0. ``OUT.npz`` holds ``score_i`` per task.
"""

from __future__ import annotations

import math
import sys

import apache_beam as beam
import numpy as np
from apache_beam.ml.anomaly.detectors.iqr import IQR
from apache_beam.ml.anomaly.detectors.zscore import ZScore

WINDOW = 1000  # Beam's DEFAULT_WINDOW_SIZE of the sliding trackers


def _clean(v: float | None) -> float:
    return 0.0 if v is None or math.isnan(v) else float(v)


def stream_scores(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    n_feat = train.shape[1]
    detectors = [(ZScore(), IQR()) for _ in range(n_feat)]
    for row in train[-WINDOW:]:
        for j, dets in enumerate(detectors):
            r = beam.Row(x=float(row[j]))
            for det in dets:
                det.learn_one(r)
    out = np.zeros(len(test), dtype=np.float64)
    for i, row in enumerate(test):
        best = 0.0
        for j, dets in enumerate(detectors):
            r = beam.Row(x=float(row[j]))
            for det in dets:
                best = max(best, _clean(det.score_one(r)))
                det.learn_one(r)
        out[i] = best
    return out


def main() -> int:
    data = np.load(sys.argv[1])
    out = {}
    for i in range(int(data["n"])):
        out[f"score_{i}"] = stream_scores(data[f"train_{i}"], data[f"test_{i}"])
    out["beam_version"] = np.array(beam.__version__)
    np.savez(sys.argv[2], **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

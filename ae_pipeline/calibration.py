"""Anomaly thresholds from reconstruction errors, and the score histogram kept with them.

Three ways to say where "anomalous" starts, all computed on the validation errors:

* ``quantile`` (param q, e.g. 0.99): the q-quantile of the errors;
* ``fpr`` (param f, e.g. 0.01): the target false-positive rate on normal data, i.e. the
  (1 - f)-quantile, for validation data believed clean;
* ``contamination`` (param c, e.g. 0.05): the expected fraction of anomalies in the data, i.e.
  the (1 - c)-quantile, for data that holds anomalies in that proportion.

Example:
    >>> import numpy as np
    >>> t = calibrate(np.arange(100.0), "fpr", 0.1)
    >>> round(t["value"], 1), t["method"]
    (89.1, 'fpr')
"""

from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("quantile", "fpr", "contamination")


def calibrate(
    errors: np.ndarray, method: str = "quantile", param: float = 0.99, *, bins: int = 50
) -> dict[str, Any]:
    """The threshold for ``errors`` by ``method`` and ``param``, with a histogram.

    Returns:
        ``{"value", "method", "param", "n_calibration", "histogram": {"edges", "counts"},
        "quantiles": {...}}`` (JSON-serialisable).

    Raises:
        ValueError: unknown method, a param outside (0, 1), or no finite errors.
    """
    if method not in METHODS:
        raise ValueError(f"threshold method {method!r} is not one of {', '.join(METHODS)}")
    if not 0.0 < float(param) < 1.0:
        raise ValueError(f"threshold param for {method!r} must be in (0, 1), got {param}")
    errors = np.asarray(errors, dtype=np.float64).ravel()
    errors = errors[np.isfinite(errors)]
    if errors.size == 0:
        raise ValueError("no finite reconstruction errors to calibrate a threshold on")
    q = float(param) if method == "quantile" else 1.0 - float(param)
    value = float(np.quantile(errors, q))
    hi = float(np.quantile(errors, 0.999))
    counts, edges = np.histogram(np.clip(errors, 0, hi), bins=bins, range=(0.0, max(hi, 1e-12)))
    return {
        "value": value,
        "method": method,
        "param": float(param),
        "n_calibration": int(errors.size),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "quantiles": {str(k): float(np.quantile(errors, k)) for k in (0.5, 0.9, 0.95, 0.99, 0.999)},
    }

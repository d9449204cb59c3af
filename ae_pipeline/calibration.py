"""Anomaly thresholds from reconstruction errors, and the score histogram kept with them.

Three ways to say where "anomalous" starts, all computed on the validation errors:

* ``quantile`` (param q, default 0.99, in [0.5, 1)): the q-quantile of the errors;
* ``fpr`` (param f, default 0.01, in (0, 0.5]): the target false-positive rate on normal data,
  i.e. the (1 - f)-quantile, for validation data believed clean;
* ``contamination`` (param c, default 0.01, in (0, 0.5]): the expected fraction of anomalies in
  the data, i.e. the (1 - c)-quantile, for data that holds anomalies in that proportion.

Each method has its own default parameter (:data:`DEFAULT_PARAMS`), so ``fpr`` alone targets 1%
false positives; a parameter outside its method's range is refused by :func:`check_threshold`
before any work starts (``fpr 0.99`` would flag 99% of normal data).

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

# The parameter each method takes when none is given: all three flag about 1% of normal data.
DEFAULT_PARAMS = {"quantile": 0.99, "fpr": 0.01, "contamination": 0.01}

# (low, high, low_inclusive, high_inclusive, what the parameter means)
_RANGES = {
    "quantile": (0.5, 1.0, True, False, "the share of normal data scored below the threshold"),
    "fpr": (0.0, 0.5, False, True, "the share of normal data flagged"),
    "contamination": (0.0, 0.5, False, True, "the expected share of anomalies"),
}


def default_param(method: str) -> float:
    """The parameter ``method`` uses when none is given (:data:`DEFAULT_PARAMS`).

    Raises:
        ValueError: unknown method.
    """
    check_method(method)
    return DEFAULT_PARAMS[method]


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`; else a ValueError listing them."""
    if method not in METHODS:
        raise ValueError(f"threshold method {method!r} is not one of {', '.join(METHODS)}")
    return method


def check_threshold(method: str, param: float | None = None) -> float:
    """The parameter ``method`` will use: ``param``, or the method's default when None.

    Guarantees the returned value is inside the method's range: quantile in [0.5, 1), fpr and
    contamination in (0, 0.5].

    Raises:
        ValueError: unknown method, or a parameter outside the range; the message says what the
            parameter means and suggests the default (e.g. ``fpr 0.99`` flags 99% of the data).
    """
    check_method(method)
    if param is None:
        return DEFAULT_PARAMS[method]
    try:
        value = float(param)
    except (TypeError, ValueError):
        raise ValueError(
            f"threshold param for {method!r} must be a number, got {param!r}"
        ) from None
    low, high, low_in, high_in, _ = _RANGES[method]
    inside = (low <= value if low_in else low < value) and (
        value <= high if high_in else value < high
    )
    if not inside:
        raise ValueError(
            f"threshold param {value:g} is out of range for {method!r}: {describe_param(method)}"
        )
    return value


def describe_param(method: str) -> str:
    """What ``method``'s parameter means, its range and default, e.g. ``"the share of normal
    data flagged, in (0, 0.5]; default 0.01"``."""
    low, high, low_in, high_in, meaning = _RANGES[check_method(method)]
    span = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
    return f"{meaning}, in {span}; default {DEFAULT_PARAMS[method]:g}"


def calibrate(
    errors: np.ndarray,
    method: str = "quantile",
    param: float | None = None,
    *,
    bins: int = 50,
) -> dict[str, Any]:
    """The threshold for ``errors`` by ``method`` and ``param``, with a histogram.

    Args:
        errors: reconstruction errors of (mostly) normal validation data.
        method: one of :data:`METHODS`.
        param: the method's parameter; None takes the method's default
            (:data:`DEFAULT_PARAMS`).

    Returns:
        ``{"value", "method", "param", "n_calibration", "histogram": {"edges", "counts"},
        "quantiles": {...}}`` (JSON-serialisable).

    Raises:
        ValueError: unknown method, a param outside the method's range (see
            :func:`check_threshold`), or no finite errors.
    """
    param = check_threshold(method, param)
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


class ScoreRanks:
    """Ranks scores against the calibration histogram (``calibrate(...)["histogram"]``): the
    fraction of calibration records that scored at or below each score, read off the
    histogram's cumulative counts (linear inside a bin, so as fine as its bins).

    The histogram stops at the calibration errors' 0.999 quantile (higher errors fall into the
    last bin): a score past its last edge ranks 1.0, one below its first edge 0.0.

    Example:
        >>> ranks = ScoreRanks(calibrate(np.arange(1000.0))["histogram"])
        >>> ranks.rank(np.array([-1.0, 250.0, 500.0, 5000.0])).round(2).tolist()
        [0.0, 0.25, 0.5, 1.0]

    Raises:
        ValueError: the histogram is malformed (see :func:`check_histogram`).
    """

    def __init__(self, histogram: Any) -> None:
        self.edges, counts = check_histogram(histogram)
        self.cdf = np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])

    def rank(self, scores: np.ndarray) -> np.ndarray:
        """Each score's rank in [0, 1] (NaN for a NaN score)."""
        return np.interp(np.asarray(scores, dtype=np.float64), self.edges, self.cdf)


def check_histogram(histogram: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``(edges, counts)`` arrays of a calibration histogram, or a ValueError naming what is
    wrong: ``{"edges": [...], "counts": [...]}`` with finite increasing edges, one count fewer
    than edges, counts finite, not negative, and not all zero."""
    if not isinstance(histogram, dict) or not {"edges", "counts"} <= set(histogram):
        raise ValueError(f"a histogram is an object with 'edges' and 'counts', got {histogram!r}")
    try:
        edges = np.asarray(histogram["edges"], dtype=np.float64)
        counts = np.asarray(histogram["counts"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("the histogram's edges and counts must be lists of numbers") from None
    if edges.ndim != 1 or edges.size < 2 or counts.shape != (edges.size - 1,):
        raise ValueError(
            f"a histogram needs at least 2 edges and one count fewer, got {edges.size} edges "
            f"and {counts.size} counts"
        )
    if not (np.isfinite(edges).all() and np.isfinite(counts).all()):
        raise ValueError("the histogram's edges and counts must be finite")
    if (np.diff(edges) <= 0).any():
        raise ValueError("the histogram's edges must increase")
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("the histogram's counts must not be negative, nor all zero")
    return edges, counts

"""Score drift: the live scores of a model version against the scores it was calibrated on.

Every published ``flag`` version keeps the histogram of its calibration scores (reconstruction
errors of held-out normal data; :func:`ae_pipeline.calibration.calibrate`). While the data the
model sees looks like the data it was trained on, a live score's rank in that histogram
(:class:`~ae_pipeline.calibration.ScoreRanks`) is uniform on [0, 1]; when the data drifts, the
ranks pile up at the top. Over a sliding window of live scores (the last ``window`` scores, or
the scores of the last ``window_s`` seconds), :func:`drift_figures` measures:

* ``psi``: the population stability index over ten equal-mass bins of the calibration scores
  (deciles of the rank). A common reading: under 0.1 stable, 0.1 to 0.25 moving, over 0.25 moved.
  With ``n`` live scores its noise floor is about ``9 / n`` (0.009 for 1,000).
* ``ks`` and ``ks_pvalue``: the Kolmogorov-Smirnov distance between the live scores and the
  calibration scores (two-sample, with the calibration set's size), and its asymptotic p-value.
* ``anomaly_rate`` against ``expected_anomaly_rate`` (the share of calibration scores above the
  threshold, which is what the threshold method targets): ``anomaly_rate_ratio``.

:class:`DriftMonitor` keeps the window, and when a limit (:class:`DriftLimits`) has been crossed
for ``for_s`` seconds, it returns a :class:`DriftEvent` (``state="drift"``); once every figure is
back under its limit, a ``"recovered"`` event. The plain consumer exports the figures as metrics
and sends the events to a drift topic (:mod:`ae_pipeline.ops`); the Beam streaming job does the
same with :class:`ae_pipeline.beam.drift.MonitorScoreDrift`.

Example:
    >>> import numpy as np
    >>> from ae_pipeline.calibration import calibrate
    >>> rng = np.random.default_rng(0)
    >>> reference = calibrate(rng.exponential(size=5000))
    >>> same = drift_figures(reference, rng.exponential(size=2000))
    >>> moved = drift_figures(reference, 3 * rng.exponential(size=2000))
    >>> same["psi"] < 0.05 < 0.25 < moved["psi"]
    True
    >>> same["anomaly_rate_ratio"] < 2 < moved["anomaly_rate_ratio"]
    True
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ae_pipeline.artifact import verify_artifact
from ae_pipeline.calibration import ScoreRanks

PSI_BINS = 10
# A bin's share never counts as less than this (an empty bin would make the PSI infinite).
_PSI_FLOOR = 1e-4

FIGURES = ("psi", "ks", "ks_pvalue", "anomaly_rate", "expected_anomaly_rate", "anomaly_rate_ratio")
"""The names :func:`drift_figures` returns (besides ``n``)."""


class DriftReference:
    """What live scores are compared with: a version's calibration (``threshold`` section of the
    artifact: ``value``, ``n_calibration`` and ``histogram``).

    Raises:
        ValueError: no usable histogram (the version was not calibrated), naming what is wrong.
    """

    def __init__(self, calibration: Mapping[str, Any], version: str | None = None) -> None:
        if not isinstance(calibration, Mapping) or "histogram" not in calibration:
            raise ValueError(
                "drift needs the version's calibration histogram (a flag model's 'threshold' "
                f"section); version {version!r} has none"
            )
        self.version = version
        self.ranks = ScoreRanks(calibration["histogram"])
        self.threshold = _finite_or_none(calibration.get("value"))
        counts = np.asarray(calibration["histogram"]["counts"], dtype=np.float64)
        self.n_calibration = int(calibration.get("n_calibration") or counts.sum())
        self.expected_anomaly_rate = (
            float(1.0 - self.ranks.rank(np.array([self.threshold]))[0])
            if self.threshold is not None
            else None
        )


RANK_BINS = 1000
"""Live scores are counted in this many bins of their calibration rank (the KS distance is
exact to ``1 / RANK_BINS``; the PSI deciles exactly)."""


class RankCounts:
    """Live scores summarised against a reference: counts per bin of calibration rank, the
    number of scores and of anomalies. Two summaries of one reference merge by addition, so a
    Beam ``CombineFn`` can build them in parallel (:mod:`ae_pipeline.beam.drift`).

    Example:
        >>> import numpy as np
        >>> from ae_pipeline.calibration import calibrate
        >>> ref = DriftReference(calibrate(np.arange(1000.0)))
        >>> a = RankCounts.of(ref, np.arange(0.0, 1000.0, 2))
        >>> b = RankCounts.of(ref, np.arange(1.0, 1000.0, 2))
        >>> round(a.merge(b).figures(ref)["ks"], 3)
        0.001
    """

    def __init__(self, counts: np.ndarray | None = None, n: int = 0, anomalies: int = 0) -> None:
        self.counts = np.zeros(RANK_BINS, np.int64) if counts is None else counts
        self.n = n
        self.anomalies = anomalies

    @classmethod
    def of(cls, reference: DriftReference, scores: np.ndarray) -> RankCounts:
        """The summary of ``scores`` (non-finite ones left out)."""
        scores = np.asarray(scores, dtype=np.float64).ravel()
        scores = scores[np.isfinite(scores)]
        bins = np.minimum(
            (reference.ranks.rank(scores) * RANK_BINS).astype(np.int64), RANK_BINS - 1
        )
        anomalies = (
            int(np.count_nonzero(scores > reference.threshold))
            if reference.threshold is not None
            else 0
        )
        return cls(np.bincount(bins, minlength=RANK_BINS), int(scores.size), anomalies)

    def merge(self, other: RankCounts) -> RankCounts:
        return RankCounts(
            self.counts + other.counts, self.n + other.n, self.anomalies + other.anomalies
        )

    def figures(self, reference: DriftReference) -> dict[str, float | int | None]:
        """The drift figures (:data:`FIGURES`, and ``n``); every figure None without scores."""
        n = self.n
        figures: dict[str, float | int | None] = dict.fromkeys(FIGURES)
        figures["n"] = n
        if n == 0:
            return figures
        # PSI over deciles of the calibration scores: the expected share of each is 1/10.
        live = self.counts.reshape(PSI_BINS, -1).sum(axis=1) / n
        live = np.maximum(live, _PSI_FLOOR)
        expected = 1.0 / PSI_BINS
        figures["psi"] = float(np.sum((live - expected) * np.log(live / expected)))
        # KS: the live ranks' distribution against the uniform one of the calibration ranks,
        # at every bin edge.
        cdf = np.cumsum(self.counts) / n
        edges = np.arange(1, RANK_BINS + 1) / RANK_BINS
        ks = float(np.max(np.abs(cdf - edges)))
        figures["ks"] = ks
        figures["ks_pvalue"] = ks_pvalue(ks, n, reference.n_calibration)
        if reference.threshold is not None:
            rate = self.anomalies / n
            expected_rate = reference.expected_anomaly_rate or 0.0
            figures["anomaly_rate"] = rate
            figures["expected_anomaly_rate"] = expected_rate
            # One anomaly in the window over an expectation of zero is not an infinite ratio.
            figures["anomaly_rate_ratio"] = rate / max(expected_rate, 1.0 / n)
        return figures


def drift_figures(
    reference: DriftReference | Mapping[str, Any], scores: np.ndarray
) -> dict[str, float | int | None]:
    """The drift figures (:data:`FIGURES`, and ``n``) of ``scores`` against ``reference``.

    Non-finite scores are left out. With no finite score, every figure is None.
    """
    if not isinstance(reference, DriftReference):
        reference = DriftReference(reference)
    return RankCounts.of(reference, scores).figures(reference)


def ks_pvalue(d: float, n: int, m: int) -> float:
    """The asymptotic p-value of a two-sample Kolmogorov-Smirnov distance ``d`` between samples
    of ``n`` and ``m`` values (Kolmogorov's distribution with Stephens' small-sample
    correction)."""
    if d <= 0:
        return 1.0
    effective = n * m / (n + m) if m else float(n)
    root = math.sqrt(effective)
    lam = (root + 0.12 + 0.11 / root) * d
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * lam * lam)
        if term == 0.0:  # underflowed: so would every later term (the same sum, fewer steps)
            break
        total += term if k % 2 else -term
    return float(min(1.0, max(0.0, 2.0 * total)))


@dataclass(frozen=True)
class DriftLimits:
    """When the figures count as drift (each limit None: not checked).

    Attributes:
        psi: the PSI above which the scores have moved (default 0.25).
        anomaly_rate_ratio: the live anomaly rate over the expected one above which the model
            flags too much (default 3.0; needs at least ``min_anomalies`` anomalies).
        ks_pvalue: the KS p-value below which the scores differ (default None: off, because
            with thousands of scores it rejects shifts too small to matter).
        for_s: how long a limit must stay crossed before a drift event (default 60 s).
        min_records: the fewest scores in the window before any judgement (default 200).
        min_anomalies: the fewest anomalies in the window before the rate counts (default 5).
    """

    psi: float | None = 0.25
    anomaly_rate_ratio: float | None = 3.0
    ks_pvalue: float | None = None
    for_s: float = 60.0
    min_records: int = 200
    min_anomalies: int = 5

    def __post_init__(self) -> None:
        for name in ("psi", "anomaly_rate_ratio", "ks_pvalue"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            ):
                raise ValueError(f"the drift limit {name} must be a number above 0, got {value!r}")
        if self.ks_pvalue is not None and self.ks_pvalue >= 1:
            raise ValueError(f"the drift limit ks_pvalue must be below 1, got {self.ks_pvalue!r}")
        if not (isinstance(self.for_s, (int, float)) and 0 <= self.for_s < float("inf")):
            raise ValueError(f"drift for_s must be 0 or more seconds, got {self.for_s!r}")
        for name in ("min_records", "min_anomalies"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"drift {name} must be a whole number of 1 or more, got {value!r}")

    def crossed(self, figures: Mapping[str, Any]) -> list[str]:
        """The names of the limits ``figures`` cross (empty: none, or too few scores)."""
        if (figures.get("n") or 0) < self.min_records:
            return []
        crossed = []
        if self.psi is not None and (figures.get("psi") or 0.0) > self.psi:
            crossed.append("psi")
        if (
            self.anomaly_rate_ratio is not None
            and (figures.get("anomaly_rate_ratio") or 0.0) > self.anomaly_rate_ratio
            and (figures.get("anomaly_rate") or 0.0) * figures["n"] >= self.min_anomalies
        ):
            crossed.append("anomaly_rate_ratio")
        pvalue = figures.get("ks_pvalue")
        if self.ks_pvalue is not None and pvalue is not None and pvalue < self.ks_pvalue:
            crossed.append("ks_pvalue")
        return crossed


@dataclass
class DriftEvent:
    """A change of drift state, as sent to the drift topic (:meth:`to_json`).

    Attributes:
        state: ``"drift"`` (limits crossed for ``for_s``) or ``"recovered"`` (all back under).
        model_version: the version whose calibration the scores were compared with.
        crossed: the limits crossed (``psi``, ``anomaly_rate_ratio``, ``ks_pvalue``).
        figures: the window's figures (:func:`drift_figures`).
        limits: the limits in force.
        window: ``{"records": n, "seconds": span}`` of the window judged, and its kind.
        since: when (Unix time) the limits were first crossed (``drift``), or when drift
            had been declared (``recovered``).
        time: when (Unix time) the event was made.
    """

    state: str
    model_version: str | None
    crossed: list[str]
    figures: dict[str, Any]
    limits: dict[str, Any]
    window: dict[str, Any]
    since: float
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        import json

        return json.dumps(self.to_dict(), allow_nan=False, default=_no_nan).encode()


class DriftMonitor:
    """A sliding window of live scores, judged against the serving version's calibration.

    Args:
        limits: :class:`DriftLimits`.
        window: judge the last this many scores (default 2,000), or
        window_s: the scores of the last this many seconds (instead of ``window``).
        every_s: judge at most this often (default 1 s); figures in between are the last ones.
        clock: seconds now (tests).

    Call :meth:`set_reference` when the serving version changes (the window starts over), then
    :meth:`add` each batch's scores; :meth:`add` returns the events to send (usually none).
    """

    def __init__(
        self,
        limits: DriftLimits | None = None,
        *,
        window: int | None = 2000,
        window_s: float | None = None,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s is not None:
            window = None
            if not (isinstance(window_s, (int, float)) and 0 < window_s < float("inf")):
                raise ValueError(
                    f"drift window_s must be a number of seconds above 0, got {window_s!r}"
                )
        elif isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"the drift window must be a whole number of scores, got {window!r}")
        self.limits = limits or DriftLimits()
        self.window = window
        self.window_s = window_s
        self.every_s = every_s
        self.clock = clock
        self.reference: DriftReference | None = None
        self.figures: dict[str, Any] = {}
        self.drifting = False
        self._chunks: deque[tuple[float, np.ndarray]] = deque()
        self._size = 0
        self._crossed_since: float | None = None
        self._drift_since = 0.0
        self._next_judgement = 0.0

    @property
    def version(self) -> str | None:
        return self.reference.version if self.reference is not None else None

    def set_reference(self, reference: DriftReference | None) -> None:
        """Compares from now on with ``reference`` (a new version: the window starts over and
        a drift declared against the old version ends without an event)."""
        self.figures = {}  # first: a reader never sees the old figures with the new version
        self._chunks.clear()
        self._size = 0
        self._crossed_since = None
        self.drifting = False
        self.reference = reference

    def add(self, scores: np.ndarray | list[float]) -> list[DriftEvent]:
        """Adds a batch's scores; returns the drift events this batch caused."""
        if self.reference is None:
            return []
        now = self.clock()
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if scores.size:
            self._chunks.append((now, scores))
            self._size += scores.size
        self._trim(now)
        if now < self._next_judgement:
            return []
        self._next_judgement = now + self.every_s
        return self.judge(now)

    def judge(self, now: float | None = None) -> list[DriftEvent]:
        """Computes the window's figures now and returns the events they cause."""
        if self.reference is None:
            return []
        now = self.clock() if now is None else now
        self._trim(now)
        scores = np.concatenate([c for _, c in self._chunks]) if self._chunks else np.empty(0)
        self.figures = drift_figures(self.reference, scores)
        crossed = self.limits.crossed(self.figures)
        if crossed:
            if self._crossed_since is None:
                self._crossed_since = now
            if not self.drifting and now - self._crossed_since >= self.limits.for_s:
                self.drifting = True
                self._drift_since = self._crossed_since
                return [self._event("drift", crossed, now, self._crossed_since)]
            return []
        self._crossed_since = None
        if self.drifting and self.figures["n"] >= self.limits.min_records:
            self.drifting = False
            return [self._event("recovered", [], now, self._drift_since)]
        return []

    def _trim(self, now: float) -> None:
        chunks = self._chunks
        if self.window_s is not None:
            while chunks and chunks[0][0] < now - self.window_s:
                self._size -= chunks.popleft()[1].size
            return
        assert self.window is not None
        while chunks and self._size - chunks[0][1].size >= self.window:
            self._size -= chunks.popleft()[1].size
        if self._size > self.window and chunks:  # cut the oldest chunk to fit
            t, oldest = chunks[0]
            chunks[0] = (t, oldest[self._size - self.window :])
            self._size = self.window

    def _event(self, state: str, crossed: list[str], now: float, since: float) -> DriftEvent:
        span = now - self._chunks[0][0] if self._chunks else 0.0
        window = {"records": self.figures.get("n", 0), "seconds": round(span, 3)}
        window.update({"size": self.window} if self.window_s is None else {"size_s": self.window_s})
        return DriftEvent(
            state=state,
            model_version=self.version,
            crossed=crossed,
            figures=dict(self.figures),
            limits=asdict(self.limits),
            window=window,
            since=since,
            time=now,
        )


def calibration_reference(version_dir: str, version: str | None = None) -> DriftReference | None:
    """The drift reference of the version in ``version_dir`` (its verified artifact's
    calibration), or None when it was not calibrated (an ``encode`` model)."""
    meta, _ = verify_artifact(version_dir)
    calibration = meta.get("threshold")
    if not isinstance(calibration, dict) or "histogram" not in calibration:
        return None
    return DriftReference(calibration, version or version_dir.rstrip("/").rsplit("/", 1)[-1])


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _no_nan(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


__all__ = [
    "FIGURES",
    "RANK_BINS",
    "DriftEvent",
    "DriftLimits",
    "DriftMonitor",
    "DriftReference",
    "RankCounts",
    "calibration_reference",
    "drift_figures",
    "ks_pvalue",
]

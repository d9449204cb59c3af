"""Prometheus metrics of the plain consumer, named like the streaming job's Beam metrics.

The Beam streaming job counts in the namespace ``ae_pipeline.scoring`` (``records_in``,
``results``, ``dead_letters``, ``dead_letters_<reason>``, ``anomalies``, ``batch_size``,
``score_batch_micros``, ``refused_versions_<reason>``). The consumer exports the same counts as
``ae_pipeline_scoring_<name>``; where a Beam counter carries a reason in its name, the Prometheus
metric carries it as a ``reason`` label (one metric, one dashboard panel):

==========================================  ===========================================
Prometheus (consumer)                       Beam metric (streaming job)
==========================================  ===========================================
``ae_pipeline_scoring_records_in_total``    ``ae_pipeline.scoring/records_in``
``ae_pipeline_scoring_results_total``       ``ae_pipeline.scoring/results``
``ae_pipeline_scoring_dead_letters_total``  ``dead_letters`` and ``dead_letters_<reason>``
``ae_pipeline_scoring_anomalies_total``     ``anomalies``
``ae_pipeline_scoring_batch_size``          ``batch_size`` (distribution)
``ae_pipeline_scoring_score_batch_seconds`` ``score_batch_micros`` (distribution)
``ae_pipeline_scoring_refused_versions``    ``refused_versions_<reason>``
``ae_pipeline_scoring_model``               (the ``model_version`` of each result)
``ae_pipeline_kafka_consumer_lag``          (the runner's own backlog metrics)
``ae_pipeline_drift_<figure>``              ``ae_pipeline.drift/<figure>`` (gauges)
==========================================  ===========================================

Each :class:`ScoringMetrics` has its own registry (two consumers in one process, or tests, do
not share counters); :mod:`ae_pipeline.ops.http` serves it.
"""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from ae_pipeline.drift import FIGURES

PREFIX = "ae_pipeline_scoring"

# Batches of 1 to 10,000 records; scoring 100 us to 30 s.
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LATENCY_BUCKETS = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)


class ScoringMetrics:
    """The consumer's counters, histograms and gauges in one registry.

    Example:
        >>> from prometheus_client import generate_latest
        >>> metrics = ScoringMetrics()
        >>> metrics.batch(records=3, results=2, dead_reasons=["bad_json"], anomalies=1,
        ...               seconds=0.002)
        >>> text = generate_latest(metrics.registry).decode()
        >>> 'ae_pipeline_scoring_dead_letters_total{reason="bad_json"} 1.0' in text
        True
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.records_in = Counter(
            f"{PREFIX}_records_in", "records polled and scored", registry=registry
        )
        self.results = Counter(f"{PREFIX}_results", "results produced", registry=registry)
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "dead letters produced, by reason",
            ["reason"],
            registry=registry,
        )
        self.anomalies = Counter(
            f"{PREFIX}_anomalies", "results flagged anomalous", registry=registry
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "records per scored batch",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_score_batch_seconds",
            "seconds to score one batch (decode, forward pass, results, serialisation)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.refused = Counter(
            f"{PREFIX}_refused_versions",
            "model versions refused (not served), by reason",
            ["reason"],
            registry=registry,
        )
        self.model = Info(f"{PREFIX}_model", "the model version serving", registry=registry)
        self.model_swaps = Gauge(
            f"{PREFIX}_model_swaps", "model versions loaded so far", registry=registry
        )
        self.scoring_process_restarts = Counter(
            f"{PREFIX}_scoring_process_restarts",
            "scoring child processes started again after one failed",
            registry=registry,
        )
        self.commit_failures = Counter(
            f"{PREFIX}_commit_failures", "offset commits refused or lost", registry=registry
        )
        self.lag = Gauge(
            "ae_pipeline_kafka_consumer_lag",
            "records of the input partition past this consumer's committed offset",
            ["topic", "partition"],
            registry=registry,
        )
        self.drift = {
            name: Gauge(
                f"ae_pipeline_drift_{name}",
                f"score drift: {name} of the live scores' window against the calibration",
                registry=registry,
            )
            for name in (*FIGURES, "window_records")
        }
        self.drifting = Gauge(
            "ae_pipeline_drift_state", "1 while drift is declared, else 0", registry=registry
        )
        self.drift_events = Counter(
            "ae_pipeline_drift_events", "drift events, by state", ["state"], registry=registry
        )
        self._version: str | None = None
        self._swaps: int | None = None
        self._refused: dict[str, int] = {}
        # Labelled children, looked up once per reason (``labels()`` costs a lock and a dict
        # lookup of the label tuple on every call).
        self._dead_letter_children: dict[str, Counter] = {}
        self._lag_keys: set[tuple[str, str]] = set()

    def batch(
        self,
        *,
        records: int,
        results: int,
        dead_reasons: Iterable[str],
        anomalies: int,
        seconds: float | None,
    ) -> None:
        """Counts one scored batch (one increment per counter and reason, one observation per
        histogram: the cost does not grow with the records in it)."""
        self.records_in.inc(records)
        if results:
            self.results.inc(results)
        if dead_reasons:
            for reason, count in _Tally(dead_reasons).items():
                child = self._dead_letter_children.get(reason)
                if child is None:
                    child = self._dead_letter_children[reason] = self.dead_letters.labels(reason)
                child.inc(count)
        if anomalies:
            self.anomalies.inc(anomalies)
        self.batch_size.observe(records)
        if seconds is not None:
            self.latency.observe(seconds)

    def version(self, version: str | None, swaps: int) -> None:
        """The version serving (the info metric changes only when it does)."""
        if version is not None and version != self._version:
            self._version = version
            self.model.info({"version": version})
        if swaps != self._swaps:
            self._swaps = swaps
            self.model_swaps.set(swaps)

    def refusals(self, totals: Mapping[str, int]) -> None:
        """The provider's refused versions so far, by reason (counted once each)."""
        for reason, total in totals.items():
            new = total - self._refused.get(reason, 0)
            if new > 0:
                self.refused.labels(reason).inc(new)
                self._refused[reason] = total

    def consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Per-partition lag; partitions no longer assigned are dropped."""
        keys = {(topic, str(partition)) for topic, partition in lags}
        for key in self._lag_keys - keys:
            self.lag.remove(*key)
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic, str(partition)).set(lag)
        self._lag_keys = keys

    def drift_figures(self, figures: Mapping[str, object], drifting: bool) -> None:
        for name, gauge in self.drift.items():
            value = figures.get("n" if name == "window_records" else name)
            if isinstance(value, (int, float)):
                gauge.set(value)
        self.drifting.set(1 if drifting else 0)


__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "PREFIX", "ScoringMetrics"]

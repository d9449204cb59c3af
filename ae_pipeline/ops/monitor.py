"""What an operator sees of a running consumer: metrics, probes, progress lines and drift.

:class:`ConsumerMonitor` is told by :class:`~ae_pipeline.consumer.ScoringConsumer` about each
scored batch (:meth:`~ConsumerMonitor.batch`) and each turn of its loop
(:meth:`~ConsumerMonitor.tick`), and from that

* counts into :class:`~ae_pipeline.ops.metrics.ScoringMetrics`, served with ``/healthz`` and
  ``/readyz`` by :class:`~ae_pipeline.ops.http.OpsServer` when a metrics port is given;
* with metrics, reads the consumer lag per partition every ``lag_interval_s`` (end offset less
  the committed offset, as ``kafka-consumer-groups.sh --describe`` shows it);
* logs a progress line every ``progress_interval_s`` (records/s, lag, anomalies, dead letters,
  version; its figures as ``fields`` for ``--log_format json``);
* feeds the results' scores to a :class:`~ae_pipeline.drift.DriftMonitor` against the serving
  version's calibration, exports its figures and hands its events to ``drift_sink`` (the
  consumer sends them to the drift topic).

None of it runs on the scoring path: a batch costs a few counter increments and one observation
per histogram, whatever its size, and the drift window keeps a reference to the batch's scores;
the drift figures are computed and exported at most every ``every_s``
(``benchmarks/bench_operating.py`` measures the cost).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ae_pipeline.drift import DriftEvent, DriftMonitor, DriftReference
from ae_pipeline.ops.http import OpsServer
from ae_pipeline.ops.metrics import ScoringMetrics

_log = logging.getLogger("ae_pipeline.consumer")

DEFAULT_PROGRESS_INTERVAL_S = 30.0
DEFAULT_LAG_INTERVAL_S = 10.0


class ConsumerMonitor:
    """See the module docstring.

    Args:
        metrics_port: serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port (0: any
            free one, see :attr:`port`); None: no server and no metrics.
        metrics_host: the address to listen on.
        progress_interval_s: a progress line this often (0: none).
        lag_interval_s: read the consumer lag this often (with metrics).
        drift: a :class:`~ae_pipeline.drift.DriftMonitor`, or None for none.
        drift_sink: called with each :class:`~ae_pipeline.drift.DriftEvent`.
        reference_of: ``version -> DriftReference`` (None where the version has no
            calibration), called once per version.
        stall_s: ``/healthz`` fails when the loop has not turned for this long.
    """

    def __init__(
        self,
        *,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
        progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S,
        lag_interval_s: float = DEFAULT_LAG_INTERVAL_S,
        drift: DriftMonitor | None = None,
        drift_sink: Callable[[DriftEvent], None] | None = None,
        reference_of: Callable[[str], DriftReference | None] | None = None,
        stall_s: float = 120.0,
    ) -> None:
        for name, value in (
            ("progress_interval_s", progress_interval_s),
            ("lag_interval_s", lag_interval_s),
            ("stall_s", stall_s),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be 0 or more seconds, got {value!r}")
        if metrics_port is not None and (
            isinstance(metrics_port, bool)
            or not isinstance(metrics_port, int)
            or not 0 <= metrics_port <= 65535
        ):
            raise ValueError(f"metrics_port must be a TCP port (0 to 65535), got {metrics_port!r}")
        self.metrics = ScoringMetrics() if metrics_port is not None else None
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.progress_interval_s = progress_interval_s
        self.lag_interval_s = lag_interval_s
        self.drift = drift
        self.drift_sink = drift_sink
        self.reference_of = reference_of
        self.stall_s = stall_s
        self.server: OpsServer | None = None
        self.version: str | None = None
        self.assigned = False
        self.lag: dict[tuple[str, int], int] = {}
        self._beat = time.monotonic()
        self._started = time.monotonic()
        self._next_lag = 0.0
        self._next_progress = time.monotonic() + (progress_interval_s or float("inf"))
        self._last_progress = (time.monotonic(), 0)
        self._drift_version: str | None = None
        self._swaps: int | None = None
        # The drift figures last exported as gauges: the monitor makes a new dict each time it
        # judges (at most every ``every_s``), so the gauges are set then, not after each batch.
        self._exported_figures: dict[str, Any] | None = None
        self._commit_failures = 0
        self._next_drift = 0.0

    @property
    def port(self) -> int | None:
        """The port the server listens on (None: no server)."""
        return self.server.port if self.server is not None else None

    def start(self) -> None:
        """Starts the HTTP server (if a port was given); idempotent."""
        if self.metrics is not None and self.server is None:
            self.server = OpsServer(
                self.metrics.registry,
                port=self.metrics_port or 0,
                host=self.metrics_host,
                health=self.health,
                ready=self.ready,
            )
            _log.info(
                "metrics on http://%s:%d/metrics (probes /healthz, /readyz)",
                self.metrics_host,
                self.server.port,
            )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    # ------------------------------------------------------------------ probes

    def health(self) -> tuple[bool, str]:
        """Alive while the loop turned within ``stall_s`` (model loading counts as turning)."""
        since = time.monotonic() - self._beat
        if since > self.stall_s:
            return False, f"the consumer loop has not turned for {since:.0f}s"
        return True, "the consumer loop is turning"

    def ready(self) -> tuple[bool, str]:
        """Ready once a model is loaded and partitions are assigned."""
        if self.version is None:
            return False, "no model version loaded yet"
        if not self.assigned:
            return False, "no partitions assigned (yet)"
        return True, f"serving {self.version} on assigned partitions"

    # ------------------------------------------------------------------ events

    def loaded(self, version: str | None, swaps: int = 0) -> None:
        """A model version serves (at start, or after an idle refresh)."""
        self._beat = time.monotonic()
        if version is None or (version == self.version and swaps == self._swaps):
            return  # each batch tells it again: nothing changed
        self.version = version
        self._swaps = swaps
        if self.metrics is not None:
            self.metrics.version(version, swaps)
        self._set_drift_reference(version)

    def heartbeat(self) -> None:
        self._beat = time.monotonic()

    def batch(self, scored: Any) -> None:
        """Counts a :class:`~ae_pipeline.scoring_process.ScoredBatch`."""
        self.loaded(scored.version, scored.swaps)
        if self.metrics is not None:
            self.metrics.batch(
                records=len(scored.outputs) + len(scored.letters),
                results=len(scored.outputs),
                dead_reasons=scored.dead_reasons,
                anomalies=scored.anomalies,
                seconds=scored.seconds,
            )
            if scored.refusals:
                self.metrics.refusals(scored.refusals)
        if self.drift is not None and len(scored.scores):
            self._drift_events(self.drift.add(scored.scores))

    def scoring_process_restarted(self) -> None:
        if self.metrics is not None:
            self.metrics.scoring_process_restarts.inc()

    def tick(self, consumer: Any, stats: Any, assigned: Callable[[Any], bool]) -> None:
        """A turn of the loop: heartbeat; assignment, lag and progress when they are due."""
        now = time.monotonic()
        self._beat = now
        if self.drift is not None and now >= self._next_drift:
            # Also while no record comes: a limit crossed by the last batches of a burst
            # becomes a drift event once it has been crossed for for_s.
            self._next_drift = now + max(self.drift.every_s, 0.5)
            self._drift_events(self.drift.judge())
        if self.metrics is None and not self.progress_interval_s:
            return
        if now >= self._next_lag:
            self._next_lag = now + (self.lag_interval_s or 0.0)
            self.assigned = assigned(consumer)
            if self.metrics is not None:
                # Broker round trips (end and committed offsets): only where metrics are asked
                # for. A client may block in them while its group rebalances or its
                # transaction is fenced; progress lines alone never make the loop wait.
                self.lag = consumer_lag(consumer)
                self.metrics.consumer_lag(self.lag)
                failures = stats.commit_failures - self._commit_failures
                if failures > 0:
                    self.metrics.commit_failures.inc(failures)
                    self._commit_failures = stats.commit_failures
        if now >= self._next_progress:
            self._next_progress = now + self.progress_interval_s
            self.progress(stats, now)

    def progress(self, stats: Any, now: float | None = None) -> None:
        """Logs one progress line (figures since the previous one)."""
        now = time.monotonic() if now is None else now
        then, records_then = self._last_progress
        rate = (stats.records_in - records_then) / max(now - then, 1e-9)
        self._last_progress = (now, stats.records_in)
        fields = {
            "records": stats.records_in,
            "records_per_s": round(rate, 1),
            "lag": sum(self.lag.values()) if self.lag else None,
            "anomalies": stats.anomalies,
            "dead_letters": stats.dead_letters,
            "model_version": stats.model_version,
        }
        if self.drift is not None and self.drift.figures.get("psi") is not None:
            fields["drift_psi"] = round(self.drift.figures["psi"], 4)
        _log.info(
            "progress: %d records (%.1f/s), lag %s, %d anomalies, %d dead letters, model %s",
            stats.records_in,
            rate,
            fields["lag"] if fields["lag"] is not None else "?",
            stats.anomalies,
            stats.dead_letters,
            stats.model_version,
            extra={"fields": fields},
        )

    # ------------------------------------------------------------------ drift

    def _set_drift_reference(self, version: str) -> None:
        if self.drift is None or version == self._drift_version:
            return
        self._drift_version = version
        reference = None
        if self.reference_of is not None:
            try:
                reference = self.reference_of(version)
            except Exception as err:  # drift is an observer: it never stops the scoring
                _log.warning("no drift monitoring for version %s: %s", version, err)
        self.drift.set_reference(reference)
        if reference is not None:
            _log.info(
                "drift: comparing live scores with version %s's calibration (%d scores)",
                version,
                reference.n_calibration,
            )

    def _drift_events(self, events: list[DriftEvent]) -> None:
        assert self.drift is not None
        figures = self.drift.figures
        if self.metrics is not None and figures and figures is not self._exported_figures:
            self._exported_figures = figures
            self.metrics.drift_figures(figures, self.drift.drifting)
        for event in events:
            log = _log.warning if event.state == "drift" else _log.info
            log(
                "drift event (%s) for version %s (%s): %s",
                event.state,
                event.model_version,
                ", ".join(event.crossed) or "all figures under their limits",
                {k: round(v, 4) if isinstance(v, float) else v for k, v in event.figures.items()},
                extra={"fields": event.to_dict()},
            )
            if self.metrics is not None:
                self.metrics.drift_events.labels(event.state).inc()
            if self.drift_sink is not None:
                self.drift_sink(event)


def consumer_lag(consumer: Any) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> records past the committed offset`` for the assigned partitions
    (the position where nothing is committed yet); empty where the client cannot tell."""
    try:
        tps = sorted(consumer.assignment())
        if not tps:
            return {}
        ends = consumer.end_offsets(tps)
        committed = consumer.committed(tps)
    except Exception as err:  # lag is for humans: a failed read is logged, never raised
        _log.debug("consumer lag not read: %s", err)
        return {}
    lags = {}
    for tp in tps:
        end = ends.get(tp)
        done = committed.get(tp)
        if done is None:
            try:
                done = consumer.position(tp)
            except Exception:
                continue
        if end is not None and done is not None and done >= 0:
            lags[(tp.topic, tp.partition)] = max(0, int(end) - int(done))
    return lags


__all__ = [
    "DEFAULT_LAG_INTERVAL_S",
    "DEFAULT_PROGRESS_INTERVAL_S",
    "ConsumerMonitor",
    "consumer_lag",
]

"""Score drift in a Beam pipeline: :class:`MonitorScoreDrift`, a transform any pipeline adds to
its scored results.

The same figures as the plain consumer (:mod:`ae_pipeline.drift`: PSI, KS, anomaly rate against
the serving version's calibration), over Beam's own windows:

    results -> (version, rank counts) per element      the version's calibration, loaded once
            -> SlidingWindows(window_s, period_s)      per worker from the model registry
            -> sum per (version, window)               (RankCounts merge by addition)
            -> one judge per version, windows in order (buffered until the watermark passes
                                                        them: a stateful DoFn with a timer)
            -> drift events (dicts), and optionally the drift topic

A limit (:class:`~ae_pipeline.drift.DriftLimits`) crossed in consecutive windows for
``for_s`` seconds of event time makes a ``drift`` event; all figures back under their limits, a
``recovered`` one. Each judged window sets the Beam gauges ``ae_pipeline.drift/<figure>_micro``
(the figure times 10^6: Beam gauges hold integers) and ``window_records``, and each event
counts in ``ae_pipeline.drift/events_<state>``.

Elements may be result dicts (``score``, ``model_version``), their JSON (bytes or str), Kafka
messages ``(key, value, headers)`` or records holding it, or lists of any of these (the
batches :class:`~ae_pipeline.beam.ScoreKafkaTopic` emits); elements without a score are skipped.

Example (a streaming job's results; see README "Operating")::

    scored = p | ScoreKafkaTopic("events", output_topic="scores", dead_letter_topic="dlq",
                                 kafka_config=config, mode="flag", model_root="/models")
    events = scored.results | MonitorScoreDrift(
        model_root="/models", window_s=300, period_s=60, drift_topic="ae-drift",
        kafka_config=config)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import Any

import apache_beam as beam
import msgspec
import numpy as np
from apache_beam.coders import BytesCoder, TupleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)

from ae_pipeline.drift import (
    FIGURES,
    DriftEvent,
    DriftLimits,
    DriftReference,
    RankCounts,
    calibration_reference,
)
from ae_pipeline.kafka import DEFAULT_CLIENT
from ae_pipeline.registry import ModelRegistry

_log = logging.getLogger(__name__)

NAMESPACE = "ae_pipeline.drift"


class _Scored(msgspec.Struct):
    score: float | None = None
    model_version: str | None = None


_decode = msgspec.json.Decoder(_Scored).decode


def version_scores(element: Any) -> Iterator[tuple[str, float]]:
    """``(model_version, score)`` of each result in ``element`` (see the module docstring)."""
    if isinstance(element, list):
        for item in element:
            yield from version_scores(item)
        return
    if isinstance(element, Mapping):
        score, version = element.get("score"), element.get("model_version")
    else:
        value = element
        if isinstance(element, tuple):  # (key, value, headers) or (topic, key, value, headers)
            value = element[1] if len(element) == 3 else element[2] if len(element) == 4 else None
        elif hasattr(element, "value"):  # a KafkaRecord
            value = element.value
        if not isinstance(value, (bytes, str)):
            return
        try:
            scored = _decode(value)
        except (msgspec.DecodeError, ValueError):
            return  # a dead letter or another shape: no score
        score, version = scored.score, scored.model_version
    if isinstance(score, (int, float)) and not isinstance(score, bool) and version:
        yield str(version), float(score)


class _References:
    """Each version's drift reference, loaded once per worker (None: not calibrated)."""

    def __init__(self, model_root: str | None, model_version_dir: str | None) -> None:
        self.model_root = model_root
        self.model_version_dir = model_version_dir
        self._cache: dict[str, DriftReference | None] = {}

    def get(self, version: str) -> DriftReference | None:
        if version not in self._cache:
            try:
                if self.model_root is not None:
                    path = ModelRegistry(self.model_root).path(version)
                else:
                    path = self.model_version_dir
                self._cache[version] = calibration_reference(path, version)
            except Exception as err:  # drift is an observer: never fail the pipeline for it
                _log.warning("no drift monitoring for version %s: %s", version, err)
                self._cache[version] = None
        return self._cache[version]


def _pack(counts: RankCounts) -> tuple[bytes, int, int]:
    return counts.counts.astype(np.int64).tobytes(), counts.n, counts.anomalies


def _unpack(packed: tuple[bytes, int, int]) -> RankCounts:
    data, n, anomalies = packed
    return RankCounts(np.frombuffer(data, dtype=np.int64).copy(), n, anomalies)


class _RankElements(beam.DoFn):
    """Element -> ``(version, packed RankCounts)`` per version it holds."""

    def __init__(self, model_root: str | None, model_version_dir: str | None) -> None:
        self._where = (model_root, model_version_dir)
        self._references: _References | None = None

    def setup(self) -> None:
        self._references = _References(*self._where)

    def process(self, element: Any) -> Iterator[tuple[str, tuple[bytes, int, int]]]:
        assert self._references is not None
        by_version: dict[str, list[float]] = {}
        for version, score in version_scores(element):
            by_version.setdefault(version, []).append(score)
        for version, scores in by_version.items():
            reference = self._references.get(version)
            if reference is not None:
                yield version, _pack(RankCounts.of(reference, np.asarray(scores)))


class _SumRankCounts(beam.CombineFn):
    def create_accumulator(self) -> tuple[bytes, int, int]:
        return _pack(RankCounts())

    def add_input(self, acc: tuple, packed: tuple) -> tuple:
        return _pack(_unpack(acc).merge(_unpack(packed)))

    def merge_accumulators(self, accumulators: Any) -> tuple:
        total = RankCounts()
        for acc in accumulators:
            total = total.merge(_unpack(acc))
        return _pack(total)

    def extract_output(self, acc: tuple) -> tuple:
        return acc


class _WithWindowEnd(beam.DoFn):
    def process(self, kv: tuple, win: Any = beam.DoFn.WindowParam) -> Iterator[tuple]:
        version, packed = kv
        yield version, (float(win.end), float(win.start), *packed)


class _Judge(beam.DoFn):
    """Per version: buffers window summaries until the watermark passes them, then judges them
    in order of their end (patience over event time)."""

    BUFFER = BagStateSpec(
        "windows",
        TupleCoder(
            [
                beam.coders.FloatCoder(),
                beam.coders.FloatCoder(),
                BytesCoder(),
                VarIntCoder(),
                VarIntCoder(),
            ]
        ),
    )
    STATE = ReadModifyWriteStateSpec(
        "state",
        TupleCoder([beam.coders.FloatCoder(), VarIntCoder(), beam.coders.FloatCoder()]),
    )
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(
        self, limits: DriftLimits, model_root: str | None, model_version_dir: str | None
    ) -> None:
        self.limits = limits
        self._where = (model_root, model_version_dir)
        self._references: _References | None = None

    def setup(self) -> None:
        self._references = _References(*self._where)
        self._gauges = {name: Metrics.gauge(NAMESPACE, f"{name}_micro") for name in FIGURES}
        self._records = Metrics.gauge(NAMESPACE, "window_records")
        self._drifting = Metrics.gauge(NAMESPACE, "state")

    def process(
        self,
        kv: tuple,
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        flush: Any = beam.DoFn.TimerParam(FLUSH),
    ) -> None:
        _, (end, start, data, n, anomalies) = kv
        buffer.add((end, start, data, n, anomalies))
        flush.set(end)

    @on_timer(FLUSH)
    def on_flush(
        self,
        key: Any = beam.DoFn.KeyParam,
        fire: Any = beam.DoFn.TimestampParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        state: Any = beam.DoFn.StateParam(STATE),
    ) -> Iterator[dict[str, Any]]:
        assert self._references is not None
        reference = self._references.get(key)
        entries = sorted(buffer.read())
        buffer.clear()
        due = [e for e in entries if e[0] <= float(fire)]
        for entry in entries[len(due) :]:  # windows the watermark has not passed yet
            buffer.add(entry)
        crossed_since, drifting, drift_since = state.read() or (-1.0, 0, 0.0)
        for end, start, data, n, anomalies in due:
            if reference is None:
                continue
            figures = _unpack((data, n, anomalies)).figures(reference)
            self._export(figures, bool(drifting))
            crossed = self.limits.crossed(figures)
            event = None
            if crossed:
                if crossed_since < 0:
                    crossed_since = start
                if not drifting and end - crossed_since >= self.limits.for_s:
                    drifting, drift_since = 1, crossed_since
                    event = ("drift", crossed, crossed_since)
            else:
                crossed_since = -1.0
                if drifting and n >= self.limits.min_records:
                    drifting = 0
                    event = ("recovered", [], drift_since)
            if event is not None:
                state_name, names, since = event
                Metrics.counter(NAMESPACE, f"events_{state_name}").inc()
                self._drifting.set(drifting)
                yield DriftEvent(
                    state=state_name,
                    model_version=key,
                    crossed=names,
                    figures=figures,
                    limits=asdict(self.limits),
                    window={"records": n, "start": start, "end": end},
                    since=since,
                    time=end,
                ).to_dict()
        state.write((crossed_since, drifting, drift_since))

    def _export(self, figures: dict[str, Any], drifting: bool) -> None:
        for name, gauge in self._gauges.items():
            value = figures.get(name)
            if isinstance(value, (int, float)):
                gauge.set(round(value * 1e6))
        self._records.set(int(figures.get("n") or 0))
        self._drifting.set(int(drifting))


def event_message(event: dict[str, Any]) -> tuple[bytes, bytes, list]:
    """A drift event as a Kafka message: key the model version, value its JSON."""
    value = DriftEvent(**event).to_json()
    return (event.get("model_version") or "").encode(), value, []


class MonitorScoreDrift(beam.PTransform):
    """Watches scored results for score drift; returns the drift events (dicts, as
    :meth:`~ae_pipeline.drift.DriftEvent.to_dict`).

    Args:
        model_root: the registry the results' versions were published to, or
        model_version_dir: the one version that scored them.
        limits: :class:`~ae_pipeline.drift.DriftLimits` (``for_s`` counts in event time).
        window_s: each window's length in seconds of event time.
        period_s: a window starts this often (sliding windows; None: ``window_s``, fixed
            windows).
        drift_topic: also write the events to this topic (with ``kafka_config``).
        kafka_config: the Kafka settings for ``drift_topic``.
        client: the Kafka client for ``drift_topic``.
    """

    def __init__(
        self,
        *,
        model_root: str | None = None,
        model_version_dir: str | None = None,
        limits: DriftLimits | None = None,
        window_s: float = 300.0,
        period_s: float | None = 60.0,
        drift_topic: str | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        client: str = DEFAULT_CLIENT,
    ) -> None:
        super().__init__()
        if (model_root is None) == (model_version_dir is None):
            raise ValueError(
                "MonitorScoreDrift needs exactly one of model_root and model_version_dir"
            )
        for name, value in (("window_s", window_s), ("period_s", period_s)):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < float("inf")
            ):
                raise ValueError(f"MonitorScoreDrift {name} must be seconds above 0, got {value!r}")
        if period_s is not None and period_s > window_s:
            raise ValueError(f"period_s ({period_s:g}) must not exceed window_s ({window_s:g})")
        if drift_topic is not None and not kafka_config:
            raise ValueError("drift_topic needs kafka_config (at least bootstrap.servers)")
        self.model_root = model_root
        self.model_version_dir = model_version_dir
        self.limits = limits or DriftLimits()
        self.window_s = window_s
        self.period_s = period_s
        self.drift_topic = drift_topic
        self.kafka_config = dict(kafka_config or {})
        self.client = client

    def expand(self, results: beam.PCollection) -> beam.PCollection:
        where = (self.model_root, self.model_version_dir)
        if self.period_s is None or self.period_s == self.window_s:
            windows = beam_window.FixedWindows(self.window_s)
        else:
            windows = beam_window.SlidingWindows(self.window_s, self.period_s)
        events = (
            results
            | "RankScores" >> beam.ParDo(_RankElements(*where))
            | "Window" >> beam.WindowInto(windows)
            | "SumPerWindow" >> beam.CombinePerKey(_SumRankCounts())
            | "WindowEnd" >> beam.ParDo(_WithWindowEnd())
            | "Rewindow" >> beam.WindowInto(beam_window.GlobalWindows())
            | "Judge" >> beam.ParDo(_Judge(self.limits, *where)).with_input_types(tuple[str, Any])
        )
        if self.drift_topic is not None:
            from ae_pipeline.beam.kafka_write import WriteKafkaRecords

            _ = (
                events
                | "AsMessages" >> beam.Map(event_message)
                | "WriteDrift"
                >> WriteKafkaRecords(self.drift_topic, self.kafka_config, client=self.client)
            )
        return events


__all__ = ["NAMESPACE", "MonitorScoreDrift", "event_message", "version_scores"]

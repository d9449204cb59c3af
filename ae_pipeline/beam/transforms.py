"""Encode, denoise and flag records in any Beam pipeline, with a dead-letter output.

:class:`Encode`, :class:`Denoise` and :class:`FlagAnomalies` (and :class:`ScoreRecords`, which
takes the mode as an argument) work on any PCollection of records: JSON ``bytes``/``str``,
dicts, ``beam.Row``, :class:`ae_pipeline.kafka.KafkaRecord` objects, ``(key, value)`` tuples
(what Beam's ``ReadFromKafka`` emits), or lists of those (what
:class:`ae_pipeline.beam.kafka_io.ReadKafkaRecords` emits: one list per poll). Records are
batched early (within each bundle by :class:`BatchAndScoreFn` in the global window; by
``beam.BatchElements`` in other windows or with ``max_batch_duration_secs``; or the lists as
they come with ``prebatched=True``) and scored by
:meth:`ae_pipeline.serving.ServingModel.score_records`, the same code the plain Kafka consumer
runs.

Each transform returns two PCollections of JSON-serialisable dicts, reachable as
``out.results`` / ``out.dead_letters`` (or ``out["results"]``, or ``results, dead = out``):
every input record leaves as exactly one result or one dead letter (with its ``reason``, one of
:data:`ae_pipeline.features.REASONS`). Beam Metrics in namespace :data:`NAMESPACE` count
``records_in``, ``results``, ``dead_letters``, ``dead_letters_<reason>`` and ``anomalies``.

The model comes from a fixed version directory (``model_version_dir=``) or follows the newest
version published under a registry root (``model_root=``, checked at most every
``poll_interval_s`` seconds per worker process; a version that fails to load is logged and
the previous model keeps serving). Both are loaded once per worker process (``shared.Shared``)
and every output carries ``model_version``. Following the registry this way works on every
runner, Prism included, where ``WatchFilePattern`` (RunInference's model-update side input)
does not run on Beam 2.62 (see :mod:`ae_pipeline.beam.model_handler`).

Example:
    >>> out = records | FlagAnomalies(model_root="gs://bucket/models")  # doctest: +SKIP
    >>> out.results | "Alerts" >> beam.Filter(lambda r: r["is_anomaly"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from ae_pipeline.features import REASONS, FeatureSpec
from ae_pipeline.hot_reload import FixedModel, ModelWatcher, open_model
from ae_pipeline.serving import as_inputs, check_mode

_log = logging.getLogger(__name__)

NAMESPACE = "ae_pipeline.scoring"
RESULTS = "results"
DEAD_LETTERS = "dead_letters"


@dataclass(frozen=True)
class ModelSource:
    """Where a scoring DoFn gets its model: one version directory, or the newest under a root.

    Attributes:
        version_dir: a fixed version directory.
        root: a registry root to follow (newest published version).
        poll_interval_s: seconds between registry checks when following a root.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        spec: a :class:`FeatureSpec` dict overriding the model's saved spec.
        threshold: overrides the model's calibrated threshold.
        top_k: per-feature contributions in ``flag`` results (None: all).
        batch_size: rows per forward pass.
        torch_threads: torch's intra-op CPU threads in each worker thread that scores
            (None: torch's default).
    """

    version_dir: str | None = None
    root: str | None = None
    poll_interval_s: float = 30.0
    device: str = "auto"
    spec: Mapping[str, Any] | None = None
    threshold: float | None = None
    top_k: int | None = 5
    batch_size: int = 8192
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if (self.version_dir is None) == (self.root is None):
            raise ValueError("give exactly one of model_version_dir and model_root")
        if self.poll_interval_s < 0:
            raise ValueError(f"poll_interval_s must be >= 0, got {self.poll_interval_s}")

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`ServingModel.load`."""
        return {
            "device": self.device,
            "spec": FeatureSpec.from_dict(self.spec) if self.spec is not None else None,
            "threshold": self.threshold,
            "top_k": self.top_k,
            "batch_size": self.batch_size,
            "torch_threads": self.torch_threads,
        }

    def tag(self) -> str:
        """Identifies what a shared (per-process) model or watcher was built from."""
        return repr(self)


class ScoreBatchesFn(beam.DoFn):
    """Scores lists of records; emits results on the main output and dead letters tagged
    :data:`DEAD_LETTERS`.

    Args:
        mode: ``"encode"``, ``"denoise"`` or ``"flag"``.
        source: where the model comes from.
        passthrough: record fields copied into each result.
    """

    def __init__(
        self,
        mode: str,
        source: ModelSource,
        passthrough: Sequence[str] = (),
        emit_batches: bool = False,
    ) -> None:
        self._mode = check_mode(mode)
        self._source = source
        self._passthrough = tuple(passthrough)
        self._emit_batches = emit_batches
        self._shared = shared.Shared()

    def _open(self) -> FixedModel | ModelWatcher:
        src = self._source
        provider = open_model(
            version_dir=src.version_dir,
            root=src.root,
            interval_s=src.poll_interval_s,
            **src.load_kwargs(),
        )
        provider.current()  # fail early (in setup) when nothing can be served yet
        return provider

    def setup(self) -> None:
        self._provider = self._shared.acquire(self._open, tag=self._source.tag())
        self._version: str | None = None
        self._records_in = Metrics.counter(NAMESPACE, "records_in")
        self._results = Metrics.counter(NAMESPACE, "results")
        self._dead = Metrics.counter(NAMESPACE, "dead_letters")
        self._by_reason = {r: Metrics.counter(NAMESPACE, f"dead_letters_{r}") for r in REASONS}
        self._anomalies = Metrics.counter(NAMESPACE, "anomalies")
        self._batch_sizes = Metrics.distribution(NAMESPACE, "batch_size")
        self._latency = Metrics.distribution(NAMESPACE, "score_batch_micros")

    def process(self, batch: Any) -> Sequence[Any]:
        # A plain function returning its outputs (not a generator with an early return, which
        # Beam warns about: apache/beam#22969).
        items = batch if isinstance(batch, list) else [batch]
        if any(issubclass(kind, list) for kind in set(map(type, items))):  # lists: flatten
            items = [i for item in items for i in (item if isinstance(item, list) else [item])]
        if not items:
            return _NOTHING
        values, sources = as_inputs(items)
        results, dead = self._score(values, sources)
        if self._emit_batches:
            out: list[Any] = [results] if results else []
            if dead:
                out.append(beam.pvalue.TaggedOutput(DEAD_LETTERS, dead))
            return out
        if not dead:
            return results
        return [*results, *(beam.pvalue.TaggedOutput(DEAD_LETTERS, letter) for letter in dead)]

    def _score(self, values: list[Any], sources: list[Any]) -> tuple[list[dict], list[dict]]:
        """Scores one batch with the current model and counts it in the metrics."""
        model = self._provider.current()
        if model.version != self._version:
            _log.info("scoring (%s) with model version %s", self._mode, model.version)
            self._version = model.version
        start = time.perf_counter()
        results, dead = model.score_records(
            values, self._mode, sources=sources, passthrough=self._passthrough
        )
        self._latency.update(int((time.perf_counter() - start) * 1e6))
        self._records_in.inc(len(values))
        self._batch_sizes.update(len(values))
        self._results.inc(len(results))
        if self._mode == "flag":
            self._anomalies.inc(sum(map(_IS_ANOMALY, results)))
        if dead:
            self._dead.inc(len(dead))
            for letter in dead:
                counter = self._by_reason.get(letter["reason"])
                if counter is not None:
                    counter.inc()
        return results, dead


class BatchAndScoreFn(ScoreBatchesFn):
    """Batches records of the global window within a bundle and scores each batch: what
    ``BatchElements`` + :class:`ScoreBatchesFn` do, in one step with less work per record.

    A batch is scored when it reaches ``max_batch_size`` records and at the end of each
    bundle. As with ``BatchElements``, the outputs are timestamped at the end of the global
    window.
    """

    def __init__(
        self,
        mode: str,
        source: ModelSource,
        passthrough: Sequence[str] = (),
        emit_batches: bool = False,
        max_batch_size: int = 1000,
    ) -> None:
        super().__init__(mode, source, passthrough, emit_batches)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._max_batch_size = max_batch_size

    def start_bundle(self) -> None:
        self._batch: list[Any] = []

    def process(self, element: Any) -> Sequence[Any]:
        # A plain function, not a generator: most calls only add to the batch. (Not ``return
        # None``: Beam reads the source and warns about that line.)
        self._batch.append(element)
        if len(self._batch) >= self._max_batch_size:
            return self._flush()
        return _NOTHING

    def finish_bundle(self) -> Sequence[Any]:
        return self._flush() if self._batch else _NOTHING

    def _flush(self) -> list[Any]:
        batch, self._batch = self._batch, []
        values, sources = as_inputs(batch)
        results, dead = self._score(values, sources)
        at_end = GlobalWindows.windowed_value_at_end_of_window
        if self._emit_batches:
            out: list[Any] = [at_end(results)] if results else []
            if dead:
                out.append(beam.pvalue.TaggedOutput(DEAD_LETTERS, at_end(dead)))
            return out
        out = [WindowedValue(r, _END_OF_GLOBAL_WINDOW, _GLOBAL_WINDOWS) for r in results]
        out.extend(beam.pvalue.TaggedOutput(DEAD_LETTERS, at_end(letter)) for letter in dead)
        return out


_IS_ANOMALY = operator.itemgetter("is_anomaly")
_NOTHING: tuple[()] = ()  # no outputs
_END_OF_GLOBAL_WINDOW = GlobalWindow().max_timestamp()
_GLOBAL_WINDOWS = (GlobalWindow(),)


class ScoreRecords(beam.PTransform):
    """Scores records in ``mode`` (see the module docstring); returns results and dead letters.

    Args:
        mode: ``"encode"``, ``"denoise"`` or ``"flag"``.
        model_version_dir: score with this version directory.
        model_root: follow the newest version published under this registry root.
        poll_interval_s: seconds between registry checks (with ``model_root``).
        device: ``"auto"`` (GPU when the worker has one), ``"cpu"``, ``"cuda"``...
        spec: a :class:`FeatureSpec` (or its dict) overriding the model's saved spec; one that
            does not fit the model is refused when the model loads.
        threshold: overrides the calibrated anomaly threshold.
        top_k: per-feature contributions kept in ``flag`` results (None: all).
        passthrough: record fields copied into each result.
        torch_threads: torch's intra-op CPU threads in each worker thread that scores (None:
            torch's default, one per core; 1-2 is usually faster for many small batches).
        min_batch_size: smallest batch ``beam.BatchElements`` forms (where it is used: see the
            module docstring).
        max_batch_size: largest batch scored at once.
        max_batch_duration_secs: with a value, ``BatchElements`` batches across bundles
            (stateful; streaming), emitting at least this often.
        prebatched: the input elements are already lists of records (e.g. the per-poll lists
            of ``ReadKafkaRecords``): skip ``BatchElements``.
        emit_batches: emit one list of results (and one of dead letters) per scored batch
            instead of one element per record: far less per-element overhead when the next
            step takes lists (``WriteKafkaRecords`` does).
    """

    def __init__(
        self,
        mode: str,
        *,
        model_version_dir: str | None = None,
        model_root: str | None = None,
        poll_interval_s: float = 30.0,
        device: str = "auto",
        spec: FeatureSpec | Mapping[str, Any] | None = None,
        threshold: float | None = None,
        top_k: int | None = 5,
        passthrough: Sequence[str] = (),
        torch_threads: int | None = None,
        min_batch_size: int = 1,
        max_batch_size: int = 1000,
        max_batch_duration_secs: float | None = None,
        prebatched: bool = False,
        emit_batches: bool = False,
    ) -> None:
        super().__init__()
        self._mode = check_mode(mode)
        if isinstance(spec, FeatureSpec):
            spec = spec.to_dict()
        self._source = ModelSource(
            version_dir=model_version_dir,
            root=model_root,
            poll_interval_s=poll_interval_s,
            device=device,
            spec=spec,
            threshold=threshold,
            top_k=top_k,
            torch_threads=torch_threads,
        )
        self._passthrough = tuple(passthrough)
        self._batching = {
            "min_batch_size": min_batch_size,
            "max_batch_size": max_batch_size,
            "max_batch_duration_secs": max_batch_duration_secs,
        }
        self._prebatched = prebatched
        self._emit_batches = emit_batches

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        args = (self._mode, self._source, self._passthrough, self._emit_batches)
        if self._prebatched:
            batches, fn = pcoll, ScoreBatchesFn(*args)
        elif self._batching["max_batch_duration_secs"] is None and pcoll.windowing.is_default():
            # Global window, no batching across bundles: batch and score in one step.
            max_size = self._batching["max_batch_size"]
            batches, fn = pcoll, BatchAndScoreFn(*args, max_batch_size=max_size)
        else:
            batches = pcoll | "Batch" >> beam.BatchElements(**self._batching)
            fn = ScoreBatchesFn(*args)
        return batches | "Score" >> beam.ParDo(fn).with_outputs(DEAD_LETTERS, main=RESULTS)

    def display_data(self) -> dict[str, Any]:
        return {
            "mode": self._mode,
            "model": self._source.version_dir or f"newest under {self._source.root}",
        }


class Encode(ScoreRecords):
    """Latent vector of each record (``latent``); see :class:`ScoreRecords` for the arguments."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("encode", **kwargs)


class Denoise(ScoreRecords):
    """Reconstruction of each record in its original units (``reconstruction``, keyed by
    feature name); see :class:`ScoreRecords` for the arguments."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("denoise", **kwargs)


class FlagAnomalies(ScoreRecords):
    """``score``, ``threshold``, ``is_anomaly``, top ``contributions`` and ``model_version`` of
    each record; see :class:`ScoreRecords` for the arguments."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("flag", **kwargs)


__all__ = [
    "DEAD_LETTERS",
    "NAMESPACE",
    "RESULTS",
    "BatchAndScoreFn",
    "Denoise",
    "Encode",
    "FlagAnomalies",
    "ModelSource",
    "ScoreBatchesFn",
    "ScoreRecords",
]

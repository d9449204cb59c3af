"""Encode, denoise and flag records in any Beam pipeline, with a dead-letter output.

:class:`Encode`, :class:`Denoise` and :class:`FlagAnomalies` (and :class:`ScoreRecords`, which
takes the mode as an argument) work on any PCollection of records: JSON ``bytes``/``str``,
dicts, ``beam.Row``, :class:`ae_pipeline.kafka.KafkaRecord` objects, ``(key, value)`` tuples
(what Beam's ``ReadFromKafka`` emits), or lists of those (what
:class:`ae_pipeline.beam.kafka_read.ReadKafkaRecords` emits: one list per poll). The element type
picks the path, as Beam's ``AnomalyDetection`` does: a PCollection of lists (its element type a
``list[...]``, or lists met at run time) is scored one list at a time, so
``ReadKafkaRecords(...) | FlagAnomalies(...)`` needs no flag (``prebatched=True`` still forces
that path); single records are batched early (within each bundle by :class:`BatchAndScoreFn`
in the global window; by ``beam.BatchElements`` in other windows or with
``max_batch_duration_secs``). Batches are scored by
:meth:`ae_pipeline.serving.ServingModel.score_records` (or, with ``as_messages=True``,
:meth:`~ae_pipeline.serving.ServingModel.score_messages`: ready-made, size-bounded Kafka
messages), the same code the plain Kafka consumer runs.

No record can fail a bundle: whatever bytes a record holds, the worst it earns is a dead letter.
Should scoring a batch raise anyway, the batch is scored again record by record and a record that
still fails becomes a dead letter with reason ``internal`` and the exception type in ``detail``
(metric ``batch_fallbacks``). Failures that are not a record's fault still fail the bundle, so
that nothing is committed: no model can be loaded, the model cannot serve the mode (``flag``
without a threshold), or the Kafka write fails.

Each transform returns two PCollections of JSON-serialisable dicts, reachable as
``out.results`` / ``out.dead_letters`` (or ``out["results"]``, or ``results, dead = out``):
every input record leaves as exactly one result or one dead letter (with its ``reason``, one of
:data:`ae_pipeline.features.REASONS`). Beam Metrics in namespace :data:`NAMESPACE` count
``records_in``, ``results``, ``dead_letters``, ``dead_letters_<reason>``, ``anomalies`` and
``batch_fallbacks``.

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
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.typehints import typehints

from ae_pipeline.beam.scoring_fns import (
    DEAD_LETTERS,
    NAMESPACE,
    RESULTS,
    BatchAndScoreFn,
    ModelSource,
    OutputForm,
    ScoreBatchesFn,
)
from ae_pipeline.features import FeatureSpec
from ae_pipeline.serving import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MESSAGE_KEY,
    OutputMode,
    check_passthrough,
    get_mode,
)

_log = logging.getLogger(__name__)


class ScoreRecords(beam.PTransform):
    """Scores records in ``mode`` (see the module docstring); returns results and dead letters.

    Args:
        mode: an output mode by name (``"encode"``, ``"denoise"``, ``"flag"``, ``"explain"``)
            or an :class:`~ae_pipeline.serving.modes.OutputMode`.
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
        prebatched: score each element as a batch of records (no ``BatchElements``). Not
            needed for a PCollection of lists (e.g. the per-poll lists of
            ``ReadKafkaRecords``): its element type picks that path, and a list met at run
            time is taken as a batch of records on every path.
        emit_batches: emit one list of results (and one of dead letters) per scored batch
            instead of one element per record: far less per-element overhead when the next
            step takes lists (``WriteKafkaRecords`` does).
        as_messages: emit Kafka messages ``(key, value, headers)`` ready for
            ``WriteKafkaRecords`` (:meth:`ServingModel.score_messages`) instead of dicts.
        max_message_bytes: with ``as_messages``, the most bytes of one message (key + value
            + headers): a result over it becomes a ``too_large`` dead letter, a dead letter's
            original value is cut to fit (``value_length`` and ``value_sha256`` kept). Keep it
            under the producer's request size and the topics' ``max.message.bytes``.
        message_key: with ``as_messages``, a result's message key: ``"input"`` (default: the
            input Kafka message's key, so results join and partition like the input and their
            dead letters) or ``"record"`` (the record's key field).

    Raises:
        ValueError: an argument out of range, or a ``passthrough`` field that collides with
            a result field (``ServingError``).
    """

    def __init__(
        self,
        mode: str | OutputMode,
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
        as_messages: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        message_key: str = DEFAULT_MESSAGE_KEY,
    ) -> None:
        super().__init__()
        self._mode = get_mode(mode)
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                "need 1 <= min_batch_size <= max_batch_size, got "
                f"{min_batch_size}, {max_batch_size}"
            )
        if max_batch_duration_secs is not None and max_batch_duration_secs <= 0:
            raise ValueError(f"max_batch_duration_secs must be > 0, got {max_batch_duration_secs}")
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
        self._passthrough = check_passthrough(tuple(passthrough), mode)
        self._batching = {
            "min_batch_size": min_batch_size,
            "max_batch_size": max_batch_size,
            "max_batch_duration_secs": max_batch_duration_secs,
        }
        self._prebatched = prebatched
        self._form = OutputForm(emit_batches, as_messages, max_message_bytes, message_key)

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        args = (self._mode, self._source, self._passthrough)
        form = self._form
        if self._prebatched or _is_list_type(pcoll.element_type):
            # Batches already (e.g. ReadKafkaRecords' polls): score each as it comes.
            batches, fn = pcoll, ScoreBatchesFn(*args, form=form)
        elif self._batching["max_batch_duration_secs"] is None and pcoll.windowing.is_default():
            # Global window, no batching across bundles: batch and score in one step.
            max_size = self._batching["max_batch_size"]
            batches, fn = pcoll, BatchAndScoreFn(*args, max_batch_size=max_size, form=form)
        else:
            batches = pcoll | "Batch" >> beam.BatchElements(**self._batching)
            fn = ScoreBatchesFn(*args, form=form)
        return batches | "Score" >> beam.ParDo(fn).with_outputs(DEAD_LETTERS, main=RESULTS)

    def display_data(self) -> dict[str, Any]:
        return {
            "mode": self._mode,
            "model": self._source.version_dir or f"newest under {self._source.root}",
        }


def _is_list_type(element_type: Any) -> bool:
    """Whether a PCollection's element type is a list (``list[...]``, ``List[...]``)."""
    return isinstance(element_type, typehints.ListConstraint) or element_type is list


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


class ExplainScores(ScoreRecords):
    """``score``, ``rank`` (the fraction of calibration records that scored at or below it)
    and ``feature_errors`` (every feature's squared error) of each record; see
    :class:`ScoreRecords` for the arguments."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("explain", **kwargs)


__all__ = [
    "DEAD_LETTERS",
    "NAMESPACE",
    "RESULTS",
    "BatchAndScoreFn",
    "Denoise",
    "Encode",
    "ExplainScores",
    "FlagAnomalies",
    "ModelSource",
    "OutputForm",
    "ScoreBatchesFn",
    "ScoreRecords",
]

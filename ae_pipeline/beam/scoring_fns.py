"""The DoFns that score batches of records in Beam: :class:`ScoreBatchesFn` (lists of records,
scored one list at a time) and :class:`BatchAndScoreFn` (single records, batched within each
bundle in the global window), with where the model comes from (:class:`ModelSource`) and what
they emit (:class:`OutputForm`). The transforms that use them are in
:mod:`ae_pipeline.beam.transforms`."""

from __future__ import annotations

import base64
import collections
import hashlib
import logging
import operator
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from ae_pipeline.features import INTERNAL, REASONS, FeatureSpec, internal_detail
from ae_pipeline.hot_reload import FixedModel, ModelWatcher, open_model
from ae_pipeline.serving import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MESSAGE_KEY,
    OutputMode,
    ServingError,
    ServingModel,
    as_input,
    as_inputs,
    check_max_message_bytes,
    check_message_key,
    check_passthrough,
    get_mode,
    to_messages,
)

_log = logging.getLogger(__name__)

_END_OF_GLOBAL_WINDOW = GlobalWindow().max_timestamp()
_GLOBAL_WINDOWS = (GlobalWindow(),)

NAMESPACE = "ae_pipeline.scoring"
RESULTS = "results"
DEAD_LETTERS = "dead_letters"


@dataclass(frozen=True)
class ModelSource:
    """Where a scoring DoFn gets its model: one version directory, or the newest under a root.

    Example:
        >>> source = ModelSource(root="gs://bucket/models", device="cpu")
        >>> {k: source.load_kwargs()[k] for k in ("device", "top_k", "batch_size")}
        {'device': 'cpu', 'top_k': 5, 'batch_size': 8192}
        >>> try:
        ...     ModelSource(root="gs://bucket/models", version_dir="gs://bucket/models/v1")
        ... except ValueError as err:
        ...     print(err)
        give exactly one of model_version_dir and model_root

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
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (None: all), got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.torch_threads is not None and self.torch_threads < 0:
            raise ValueError(
                f"torch_threads must be >= 0 (0: torch's default), got {self.torch_threads}"
            )

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


@dataclass(frozen=True)
class OutputForm:
    """What the scoring DoFns emit.

    Example:
        >>> OutputForm(emit_batches=True, as_messages=True, message_key="record").message_key
        'record'
        >>> try:
        ...     OutputForm(as_messages=True, message_key="value")
        ... except ValueError as err:  # a ServingError
        ...     print(err)
        message_key 'value' is not one of input, record

    Attributes:
        emit_batches: one list of results (and one of dead letters) per scored batch instead
            of one element per record.
        as_messages: Kafka messages ``(key, value, headers)`` of
            :meth:`~ae_pipeline.serving.ServingModel.score_messages` instead of dicts.
        max_message_bytes: with ``as_messages``, the most bytes of one message.
        message_key: with ``as_messages``, a result's message key: ``"input"`` (the input
            Kafka message's key) or ``"record"`` (the record's key field).
    """

    emit_batches: bool = False
    as_messages: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    message_key: str = DEFAULT_MESSAGE_KEY

    def __post_init__(self) -> None:
        check_max_message_bytes(self.max_message_bytes)
        check_message_key(self.message_key)


class _Scored(NamedTuple):
    """One scored batch: results, dead letters, each dead letter's reason, anomalies."""

    results: list
    dead: list
    reasons: list
    anomalies: int


class ScoreBatchesFn(beam.DoFn):
    """Scores lists of records; emits results on the main output and dead letters tagged
    :data:`DEAD_LETTERS`.

    Args:
        mode: an output mode by name (``"encode"``, ``"denoise"``, ``"flag"``, ``"explain"``)
            or an :class:`~ae_pipeline.serving.modes.OutputMode`.
        source: where the model comes from.
        passthrough: record fields copied into each result.
        emit_batches: see :class:`OutputForm` (or pass ``form``).
        form: what to emit (lists or single outputs, dicts or Kafka messages).
    """

    def __init__(
        self,
        mode: str | OutputMode,
        source: ModelSource,
        passthrough: Sequence[str] = (),
        emit_batches: bool = False,
        form: OutputForm | None = None,
    ) -> None:
        self._mode = get_mode(mode)
        self._source = source
        self._passthrough = check_passthrough(tuple(passthrough), mode)
        self._form = form or OutputForm(emit_batches=emit_batches)
        self._emit_batches = self._form.emit_batches
        self._shared = shared.Shared()

    def _open(self) -> FixedModel | ModelWatcher:
        src = self._source
        provider = open_model(
            version_dir=src.version_dir,
            root=src.root,
            interval_s=src.poll_interval_s,
            mode=self._mode,  # a version that cannot serve this mode is refused
            background=src.root is not None,  # checks the root while no record arrives, too
            **src.load_kwargs(),
        )
        provider.current()  # fail early (in setup) when nothing can be served yet
        return provider

    def setup(self) -> None:
        # Per mode too: a version that serves encode may lack what flag needs.
        tag = f"{self._mode}:{self._source.tag()}"
        self._provider = self._shared.acquire(self._open, tag=tag)
        self._version: str | None = None
        self._records_in = Metrics.counter(NAMESPACE, "records_in")
        self._results = Metrics.counter(NAMESPACE, "results")
        self._dead = Metrics.counter(NAMESPACE, "dead_letters")
        self._by_reason = {r: Metrics.counter(NAMESPACE, f"dead_letters_{r}") for r in REASONS}
        self._anomalies = Metrics.counter(NAMESPACE, "anomalies")
        self._fallbacks = Metrics.counter(NAMESPACE, "batch_fallbacks")
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
        results, dead = self._score(items)
        if self._emit_batches:
            out: list[Any] = [results] if results else []
            if dead:
                out.append(beam.pvalue.TaggedOutput(DEAD_LETTERS, dead))
            return out
        if not dead:
            return results
        return [*results, *(beam.pvalue.TaggedOutput(DEAD_LETTERS, letter) for letter in dead)]

    def _score(self, items: list[Any]) -> tuple[list[Any], list[Any]]:
        """Scores one batch of elements (records in any accepted form) with the current model
        and counts it in the metrics.

        Never raises because of a record (see the module docstring); raises what is not the
        records' fault (no model, a model that cannot serve the mode)."""
        model = self._provider.current()
        if model.version != self._version:
            _log.info("scoring (%s) with model version %s", self._mode, model.version)
            self._version = model.version
        self._count_refusals()
        start = time.perf_counter()
        try:
            scored = self._score_with(model, items)
        except ServingError:
            raise  # not the records' fault: fail the bundle, commit nothing
        except Exception as err:
            scored = self._score_one_by_one(model, items, err)
        results, dead, reasons, anomalies = scored
        self._latency.update(int((time.perf_counter() - start) * 1e6))
        self._records_in.inc(len(items))
        self._batch_sizes.update(len(items))
        self._results.inc(len(results))
        if anomalies:
            self._anomalies.inc(anomalies)
        if dead:
            self._dead.inc(len(dead))
            for reason in reasons:
                counter = self._by_reason.get(reason)
                if counter is not None:
                    counter.inc()
        return results, dead

    def _score_with(self, model: ServingModel, items: list[Any]) -> _Scored:
        """The batch's results and dead letters in the output form (may raise)."""
        values, sources = as_inputs(items)
        form = self._form
        if form.as_messages:
            msgs = model.score_messages(
                values,
                self._mode,
                sources=sources,
                passthrough=self._passthrough,
                max_message_bytes=form.max_message_bytes,
                message_key=form.message_key,
            )
            return _Scored(msgs.results, msgs.dead_letters, msgs.dead_reasons, msgs.anomalies)
        results, dead = model.score_records(
            values, self._mode, sources=sources, passthrough=self._passthrough
        )
        anomalies = sum(map(_IS_ANOMALY, results)) if self._mode.flags else 0
        return _Scored(results, dead, [d["reason"] for d in dead], anomalies)

    def _score_one_by_one(self, model: ServingModel, items: list[Any], first: Exception) -> _Scored:
        """The batch, record by record (after ``first`` escaped the batch); a record that
        still fails becomes an ``internal`` dead letter."""
        self._fallbacks.inc()
        results: list[Any] = []
        dead: list[Any] = []
        reasons: list[str] = []
        anomalies = 0
        failed = 0
        for item in items:
            try:
                r, d, why, a = self._score_with(model, [item])
            except ServingError:
                raise
            except Exception as err:
                failed += 1
                r, d, why, a = [], [self._internal_letter(model, item, err)], [INTERNAL], 0
            results += r
            dead += d
            reasons += why
            anomalies += a
        _log.warning(
            "scoring a batch of %d records raised %s; scored them one by one, %d dead-lettered "
            "as %r",
            len(items),
            internal_detail(first),
            failed,
            INTERNAL,
        )
        return _Scored(results, dead, reasons, anomalies)

    def _internal_letter(self, model: ServingModel, item: Any, err: Exception) -> Any:
        """An ``internal`` dead letter (a dict, or its bounded message) for an element whose
        scoring raised ``err``."""
        try:
            value, source = as_input(item)
        except Exception:  # not even unpackable: the element itself is the value
            value, source = item, None
        letter = _internal_dead_letter(model.version, value, source, err)
        if not self._form.as_messages:
            return letter
        key = _attr(source, "key")
        if key is not None and not isinstance(key, bytes):
            key = str(key).encode("utf-8", "backslashreplace")
        (message,) = to_messages(
            [letter], keys=[key], max_message_bytes=self._form.max_message_bytes
        )
        return message

    def _count_refusals(self) -> None:
        """Exports the model provider's refused versions as the counters
        ``refused_versions_<reason>`` (each refusal once per process)."""
        refusals = getattr(self._provider, "refusals", None)
        if not refusals:
            return
        with _EXPORTED_LOCK:
            exported = _EXPORTED.setdefault(id(self._provider), collections.Counter())
            new = {r: n - exported[r] for r, n in refusals.items() if n > exported[r]}
            exported.update(new)
        for reason, n in new.items():
            Metrics.counter(NAMESPACE, f"refused_versions_{reason}").inc(n)


# Per model provider (one per process and source, shared by the DoFn instances): the refusals
# already exported as metrics.
_EXPORTED: dict[int, collections.Counter] = {}
_EXPORTED_LOCK = threading.Lock()


def _internal_dead_letter(version: str, value: Any, source: Any, err: Exception) -> dict[str, Any]:
    """A dead letter (reason ``internal``) made without the scoring path: key, Kafka
    coordinates, the original value (bytes as base64, with length and SHA-256)."""
    letter: dict[str, Any] = {
        "reason": INTERNAL,
        "detail": internal_detail(err),
        "model_version": version,
        "key": None,
    }
    if source is not None:
        key = _attr(source, "key")
        if isinstance(key, (bytes, bytearray)):
            try:
                key = bytes(key).decode()
            except UnicodeDecodeError:
                key = base64.b64encode(bytes(key)).decode()
        if type(key) is str:
            key = key.encode("utf-8", "backslashreplace").decode()  # lone surrogates escaped
        letter["key"] = key if key is None or type(key) in (str, int) else _text(key)
        for name, kind in (("topic", str), ("partition", int), ("offset", int)):
            field = _attr(source, name)
            if type(field) is kind:
                letter[name] = field
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        letter.update(
            value_b64=base64.b64encode(raw).decode(),
            value_length=len(raw),
            value_sha256=hashlib.sha256(raw).hexdigest(),
            value_truncated=False,
        )
    else:
        text = _text(value)
        letter.update(value=text[:10_000], value_truncated=len(text) > 10_000)
    return letter


def _attr(obj: Any, name: str) -> Any:
    """``obj.name``, None where it is missing or raises."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _text(value: Any) -> str:
    """``repr(value)``, or its type's name where even that raises."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


class BatchAndScoreFn(ScoreBatchesFn):
    """Batches records of the global window within a bundle and scores each batch: what
    ``BatchElements`` + :class:`ScoreBatchesFn` do, in one step with less work per record.

    A batch is scored when it reaches ``max_batch_size`` records and at the end of each
    bundle. As with ``BatchElements``, the outputs are timestamped at the end of the global
    window.
    """

    def __init__(
        self,
        mode: str | OutputMode,
        source: ModelSource,
        passthrough: Sequence[str] = (),
        emit_batches: bool = False,
        max_batch_size: int = 1000,
        form: OutputForm | None = None,
    ) -> None:
        super().__init__(mode, source, passthrough, emit_batches, form)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._max_batch_size = max_batch_size

    def start_bundle(self) -> None:
        self._batch: list[Any] = []

    def process(self, element: Any) -> Sequence[Any]:
        # A plain function, not a generator: most calls only add to the batch. (Not ``return
        # None``: Beam reads the source and warns about that line.) A list is a batch of
        # records (a poll of ReadKafkaRecords), never one record.
        if type(element) is list:
            self._batch.extend(element)
        else:
            self._batch.append(element)
        if len(self._batch) >= self._max_batch_size:
            return self._flush()
        return _NOTHING

    def finish_bundle(self) -> Sequence[Any]:
        return self._flush() if self._batch else _NOTHING

    def _flush(self) -> list[Any]:
        batch, self._batch = self._batch, []
        results, dead = self._score(batch)
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

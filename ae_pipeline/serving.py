"""Scoring records with a published model: the one path shared by Beam and the Kafka consumer.

:class:`ServingModel` holds one verified model version together with everything needed to turn
records into results: the :class:`~ae_pipeline.features.FeatureSpec` the model was trained on,
its :class:`~ae_pipeline.features.Scaler`, its anomaly threshold and its version name.
:meth:`ServingModel.score_records` takes a batch of records (JSON bytes, dicts, ``beam.Row``,
Kafka records) and returns one result per usable record and one dead letter per rejected one,
so ``len(results) + len(dead_letters) == len(records)`` always holds. Three modes:

* ``encode``: ``latent`` (list of floats);
* ``denoise``: ``reconstruction`` in the records' original units (the scaler is inverted), keyed
  by feature name (a list when the features have no names, e.g. a ``vector_field`` of pixels);
* ``flag``: ``score`` (mean squared reconstruction error of the scaled record, the same number
  :class:`~ae_pipeline.models.Scorer` computes offline), ``threshold``, ``is_anomaly``
  (``score > threshold``) and ``contributions``: the ``top_k`` features with the largest
  squared errors, ``{feature: squared error}`` in descending order (over all features they sum
  to ``score * D``).

Every result and dead letter carries ``model_version`` and the record's ``key``; when the
record came from Kafka, ``topic``, ``partition`` and ``offset`` too. A dead letter has the
``reason`` (one of :data:`ae_pipeline.features.REASONS`), a ``detail`` and the original value
(``value_b64`` for bytes, ``value`` otherwise; with ``value_length`` and ``value_sha256`` of the
original bytes and ``value_truncated``).

Whatever bytes a record holds, the worst it earns is a dead letter: a failure while decoding,
scoring or serialising is isolated to the records that caused it (the batch is retried record by
record; a record that still fails becomes a dead letter with reason ``internal`` and the
exception type in ``detail``). :meth:`ServingModel.score_messages` turns the outputs into Kafka
messages of at most ``max_message_bytes`` (:data:`DEFAULT_MAX_MESSAGE_BYTES`): a dead letter's
original value is cut to fit, and a result too large to write becomes a ``too_large`` dead
letter. A result's message key is the input message's key by default (``message_key="input"``),
so results and dead letters join and are partitioned like the input; the record's own key field
stays in the body as ``key``.

Hot reload (which version serves, and when it changes) is :mod:`ae_pipeline.hot_reload`.

This module imports nothing from Apache Beam itself; the registry and artifact modules it uses
read files through Beam's ``FileSystems`` (so ``gs://`` and ``s3://`` roots work).

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from ae_pipeline.artifact import save_artifact
    >>> from ae_pipeline.models import ModelConfig, build_model
    >>> cfg = ModelConfig(2, hidden_dims=[], latent_dim=1)
    >>> path = save_artifact(tempfile.mkdtemp(), build_model(cfg, seed=0), cfg,
    ...                      feature_columns=["a", "b"], threshold={"value": 0.5})
    >>> model = ServingModel.load(path, device="cpu")
    >>> results, dead = model.score_records([b'{"a": 1, "b": 2}', b'{"a": 1}'], "flag")
    >>> sorted(results[0]), dead[0]["reason"]
    (['contributions', 'is_anomaly', 'key', 'model_version', 'score', 'threshold'], 'missing_field')
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import operator
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch

try:  # a Beam dependency, several times faster than json
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None  # type: ignore[assignment]

from ae_pipeline.artifact import ArtifactError, LoadedArtifact, load_artifact
from ae_pipeline.features import (
    INTERNAL,
    NON_FINITE,
    TOO_LARGE,
    DecodedBatch,
    FeatureSpec,
    RecordError,
    Scaler,
    decode_records,
    internal_detail,
)
from ae_pipeline.registry import MARKER, version_of_marker

_log = logging.getLogger(__name__)

MODES = ("encode", "denoise", "flag")

# The most bytes one output message (key + value + headers) may take. The tightest default on
# the way to the broker is librdkafka's ``message.max.bytes`` (1,000,000; kafka-python's
# ``max_request_size`` is 1,048,576, a topic's ``max.message.bytes`` 1,048,588); 900,000 leaves
# 100 kB for the record batch framing. A dead letter over it keeps the first bytes of the
# original value (``value_truncated``), a result over it becomes a ``too_large`` dead letter.
DEFAULT_MAX_MESSAGE_BYTES = 900_000
MIN_MAX_MESSAGE_BYTES = 4096  # room for a dead letter's own fields
# Which key a result's Kafka message carries: the input message's key ("input": results and
# dead letters join, and are partitioned, like the input) or the record's key field ("record").
MESSAGE_KEYS = ("input", "record")
DEFAULT_MESSAGE_KEY = "input"
# A message: (key, value, headers).
Message = tuple["bytes | None", bytes, list[tuple[str, bytes]]]
# Fields every result may carry, then those of each mode (a passthrough field may not reuse one).
_BASE_FIELDS = ("key", "model_version", "topic", "partition", "offset", "timestamp_ms")
_MODE_FIELDS = {
    "encode": ("latent",),
    "denoise": ("reconstruction",),
    "flag": ("score", "threshold", "is_anomaly", "contributions"),
}


class ServingError(ValueError):
    """A model cannot serve the requested records or mode; the message says why."""


class NoModelError(ServingError):
    """No model version is published under the watched root (yet)."""


class Source(NamedTuple):
    """Where a record came from (Kafka coordinates, all optional; a named tuple: one is made
    per record on the hot path).

    Attributes:
        topic: the topic.
        partition: the partition.
        offset: the record's offset in the partition.
        key: the message key (bytes or str), used as the result key when the record itself
            carries none.
        timestamp_ms: the record's timestamp, passed through as ``timestamp_ms``.
    """

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: Any = None
    timestamp_ms: int | None = None


def _timestamp(ts: Any) -> int | None:
    """A record timestamp in ms, None where the client has none (-1) or gives no int."""
    return ts if isinstance(ts, int) and ts >= 0 else None


def as_input(element: Any) -> tuple[Any, Source | None]:
    """Splits an element into ``(value, source)``.

    Accepts a Kafka record object (anything with ``value`` and ``offset`` attributes, such as
    ``ae_pipeline.kafka.KafkaRecord`` or a kafka-python ``ConsumerRecord``), a plain 2-tuple
    ``(key, value)`` (what Beam's ``ReadFromKafka`` emits), or a bare record (JSON bytes/str,
    dict, ``beam.Row``).
    """
    if hasattr(element, "value") and hasattr(element, "offset") and not isinstance(element, dict):
        value = element.value
        if callable(value):  # confluent-kafka Message: methods, not attributes
            ts = element.timestamp()[1] if hasattr(element, "timestamp") else None
            return value(), Source(
                element.topic(), element.partition(), element.offset(), element.key(), ts
            )
        # KafkaRecord has timestamp_ms; kafka-python's ConsumerRecord has timestamp (ms).
        ts = getattr(element, "timestamp_ms", getattr(element, "timestamp", None))
        return value, Source(
            getattr(element, "topic", None),
            getattr(element, "partition", None),
            getattr(element, "offset", None),
            getattr(element, "key", None),
            _timestamp(ts),
        )
    if type(element) is tuple and len(element) == 2:
        return element[1], Source(key=element[0])
    return element, None


def as_inputs(elements: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """:func:`as_input` of each element: ``(values, sources)``, with fast paths for bare JSON
    bytes and for ``ae_pipeline.kafka.KafkaRecord`` (what the consumer and
    ``ReadKafkaRecords`` score), which serves as its own source: it has the attributes of a
    :class:`Source` (a negative ``timestamp_ms`` means none)."""
    kinds = set(map(type, elements))
    if kinds == {bytes}:  # bare JSON values only: no per-element work
        return list(elements), [None] * len(elements)
    records_module = sys.modules.get("ae_pipeline.kafka.records")  # no import: layering
    kafka_record = getattr(records_module, "KafkaRecord", None)
    values: list[Any] = []
    sources: list[Any] = []
    for element in elements:
        kind = type(element)
        if kind is bytes:  # a bare JSON value
            values.append(element)
            sources.append(None)
        elif kind is kafka_record:
            values.append(element.value)
            sources.append(element)
        else:
            value, source = as_input(element)
            values.append(value)
            sources.append(source)
    return values, sources


def _key_text(key: Any) -> Any:
    if isinstance(key, (bytes, bytearray, memoryview)):
        try:
            return bytes(key).decode()
        except UnicodeDecodeError:
            return base64.b64encode(bytes(key)).decode()
    return key


def _original(value: Any) -> dict[str, Any]:
    """The original value of a rejected record, JSON-safe; bytes and text with their length
    (in bytes) and SHA-256, so that a dead letter cut to size (``value_truncated``) still says
    what it held."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return {
            "value_b64": base64.b64encode(raw).decode(),
            "value_length": len(raw),
            "value_sha256": hashlib.sha256(raw).hexdigest(),
            "value_truncated": False,
        }
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        return {
            "value": value,
            "value_length": len(raw),
            "value_sha256": hashlib.sha256(raw).hexdigest(),
            "value_truncated": False,
        }
    as_dict = getattr(value, "_asdict", None) or getattr(value, "as_dict", None)
    if isinstance(value, Mapping) or as_dict is not None:
        data = dict(value) if isinstance(value, Mapping) else as_dict()
        return {"value": {str(k): _json_safe(v) for k, v in data.items()}}
    return {"value": _json_safe(value)}


def _safe_original(value: Any) -> dict[str, Any]:
    """:func:`_original`, or the value's ``repr`` (cut) where it cannot be made JSON-safe
    (e.g. a mapping nested deeper than the interpreter's recursion limit)."""
    try:
        return _original(value)
    except Exception:
        try:
            text = repr(value)[:10_000]
        except Exception:
            text = f"<{type(value).__name__}>"
        return {"value": text, "value_truncated": True}


def _dead_letter(reason: str, detail: str, version: str, value: Any, source: Any) -> dict:
    """A dead letter: the reason, the record's Kafka key and coordinates, its original value."""
    return {
        "reason": reason,
        "detail": detail,
        "model_version": version,
        "key": _key_text(source.key) if source is not None else None,
        **_coordinates(source),
        **_safe_original(value),
    }


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return repr(value)


def _coordinates(source: Any) -> dict[str, Any]:
    """The Kafka coordinates of a :class:`Source` (or a ``KafkaRecord``) that are known."""
    if source is None:
        return {}
    topic, partition, offset = source.topic, source.partition, source.offset
    ts = source.timestamp_ms
    if type(ts) is not int or ts < 0:
        ts = None
    if topic is not None and partition is not None and offset is not None and ts is not None:
        return {"topic": topic, "partition": partition, "offset": offset, "timestamp_ms": ts}
    out: dict[str, Any] = {}
    if topic is not None:
        out["topic"] = topic
    if partition is not None:
        out["partition"] = partition
    if offset is not None:
        out["offset"] = offset
    if ts is not None:
        out["timestamp_ms"] = ts
    return out


_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})


def _drop_unscalable(batch: DecodedBatch, scaler: Scaler) -> DecodedBatch:
    """Moves records whose features overflow float32 once scaled (finite, but near the limit)
    to the errors as ``non_finite``: the model would score them NaN and never flag them."""
    if not len(batch.matrix):
        return batch
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.isfinite(scaler.transform(batch.matrix)).all(axis=1)
    if ok.all():
        return batch
    errors = list(batch.errors)
    for row in np.flatnonzero(~ok):
        detail = "a feature overflows float32 after scaling (value too extreme)"
        errors.append(RecordError(batch.index[row], NON_FINITE, detail))
    errors.sort(key=lambda e: e.index)
    keep = [bool(k) for k in ok]

    def kept(items: list) -> list:
        return [x for x, k in zip(items, keep, strict=True) if k]

    return DecodedBatch(
        batch.matrix[ok], kept(batch.index), kept(batch.keys), errors, kept(batch.records)
    )


def set_torch_threads(threads: int | None) -> None:
    """Sets torch's intra-op CPU thread count (``torch.set_num_threads``) from the calling thread.

    Torch defaults to one thread per core. A Beam worker or a consumer host scores many small
    batches, often beside other busy processes; there, threads that wait on each other cost more
    than they give, and 1-2 threads per process usually score faster (``benchmarks/
    bench_streaming.py`` measures it). ``None`` or 0 keeps torch's default.

    Part of what ``torch.set_num_threads`` sets belongs to the calling thread (OpenMP's and
    MKL's per-thread settings), and Beam's SDK harness runs bundles on a pool of threads; so
    :class:`ServingModel` makes the call again, once, in each thread that scores with it
    (:func:`_torch_threads_here`).

    Raises:
        ValueError: a negative count.
    """
    if threads is None or threads == 0:
        return
    if threads < 0:
        raise ValueError(f"torch_threads must be >= 0 (0: torch's default), got {threads}")
    if torch.get_num_threads() != threads:
        _log.info("torch intra-op threads: %d -> %d", torch.get_num_threads(), threads)
    torch.set_num_threads(threads)
    _THREAD.torch_threads = threads


_THREAD = threading.local()  # per thread: the torch_threads set in it


def _torch_threads_here(threads: int | None) -> None:
    """Calls ``torch.set_num_threads(threads)`` once in each thread that is about to score.

    Measured on Prism with LOOPBACK workers (2 cores, ``benchmarks/bench_streaming.py``'s
    ``ae_batched`` pipeline, 200,000 records): with the call made only in the main thread, the
    bundle thread scored them in 3.2-3.8 s; with the call made in the bundle thread, 1.2-1.4 s
    (torch's default, 2 threads: 1.4-1.8 s)."""
    if threads and getattr(_THREAD, "torch_threads", None) != threads:
        torch.set_num_threads(threads)
        _THREAD.torch_threads = threads


def version_name(version_dir: str) -> str:
    """The version name of a version directory: its last path component (local paths and
    ``gs://`` / ``s3://`` URLs alike)."""
    return version_dir.rstrip("/").rsplit("/", 1)[-1]


class ServingModel:
    """One model version, ready to score records.

    Build it with :meth:`load`.

    Attributes:
        artifact: the verified artifact.
        spec: how records carry the features.
        scaler: the feature scaler (identity when the artifact has none).
        threshold: the anomaly threshold (``None`` when not calibrated; ``flag`` is refused).
        version: the version name (last component of the directory).
        path: the version directory.
        top_k: number of per-feature contributions a ``flag`` result carries (``None``: all).
    """

    def __init__(
        self,
        artifact: LoadedArtifact,
        spec: FeatureSpec,
        scaler: Scaler,
        threshold: float | None,
        *,
        version: str,
        batch_size: int = 8192,
        top_k: int | None = 5,
        torch_threads: int | None = None,
    ) -> None:
        self.artifact = artifact
        self.torch_threads = torch_threads or None
        self.spec = spec
        self.scaler = scaler
        self.threshold = threshold
        self.version = version
        self.path = artifact.path
        self.top_k = top_k
        self.scorer = artifact.scorer(batch_size=batch_size)
        self.input_dim = artifact.input_dim
        self.feature_names: list[str] | None = list(spec.columns) or None
        self._names_array: np.ndarray | None = None  # feature names as objects (contributions)

    @classmethod
    def load(
        cls,
        version_dir: str,
        *,
        device: str = "auto",
        spec: FeatureSpec | None = None,
        threshold: float | None = None,
        batch_size: int = 8192,
        top_k: int | None = 5,
        torch_threads: int | None = None,
    ) -> ServingModel:
        """Loads and verifies a version directory (checksums, safetensors, shapes).

        Args:
            version_dir: the version directory (a ``…/_PUBLISHED`` marker path is accepted too).
            device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            spec: how records carry the features; default: the spec saved with the model
                (``extra.feature_spec``), else its ``feature_columns``. A spec whose width or
                columns differ from the model's is refused.
            threshold: override the calibrated threshold.
            batch_size: rows per forward pass.
            top_k: per-feature contributions kept in ``flag`` results (``None``: all).
            torch_threads: torch's intra-op CPU threads, in every thread that scores with
                this model (see :func:`set_torch_threads`); ``None`` or 0 keeps torch's default.

        Raises:
            ArtifactError: the artifact is missing, corrupt or unsafe, or the spec does not fit.
        """
        set_torch_threads(torch_threads)
        if version_name(version_dir) == MARKER:
            version_dir = version_of_marker(version_dir.rstrip("/"))
        artifact = load_artifact(version_dir, device=device)
        saved = (artifact.meta.get("extra") or {}).get("feature_spec")
        if spec is None:
            if saved is not None:
                spec = FeatureSpec.from_dict(saved)
            elif artifact.feature_columns:
                spec = FeatureSpec(columns=list(artifact.feature_columns))
            else:
                spec = FeatureSpec(width=artifact.input_dim)
        try:
            dim = spec.dim
        except ValueError as err:
            raise ArtifactError(f"{version_dir}: {err}") from None
        artifact.check_input(expected_input_dim=dim, feature_columns=list(spec.columns) or None)
        if artifact.scaler is None:
            scaler = Scaler.identity(dim)
        else:
            try:
                scaler = Scaler.from_dict(artifact.scaler)
            except (ValueError, KeyError, TypeError) as err:
                raise ArtifactError(f"{version_dir}: invalid scaler: {err}") from None
            if scaler.offset.shape[0] != dim:
                raise ArtifactError(
                    f"{version_dir}: the scaler has {scaler.offset.shape[0]} features, "
                    f"the model takes {dim}"
                )
        if threshold is None and artifact.threshold is not None:
            try:
                threshold = float(artifact.threshold["value"])
            except (KeyError, TypeError, ValueError) as err:
                raise ArtifactError(f"{version_dir}: invalid threshold: {err}") from None
        return cls(
            artifact,
            spec,
            scaler,
            threshold,
            version=version_name(version_dir),
            batch_size=batch_size,
            top_k=top_k,
            torch_threads=torch_threads,
        )

    # ------------------------------------------------------------------ matrices

    def score_matrix(self, x: np.ndarray, mode: str) -> dict[str, np.ndarray]:
        """Scores an ``N x D`` block of features in original units.

        Returns:
            ``encode``: ``{"latent": N x L}``; ``denoise``: ``{"reconstruction": N x D}`` in
            original units; ``flag``: ``{"score": N, "is_anomaly": N (bool),
            "contributions": N x D}``.

        Raises:
            ServingError: for an unknown mode, a block of the wrong width, or ``flag`` without
                a threshold.
        """
        check_mode(mode)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ServingError(
                f"model {self.version} takes N x {self.input_dim} blocks, got shape {x.shape}"
            )
        scaled = self.scaler.transform(x)
        _torch_threads_here(self.torch_threads)
        if mode == "encode":
            return {"latent": self.scorer.encode(scaled)}
        if mode == "denoise":
            return {"reconstruction": self.scaler.inverse(self.scorer.reconstruct(scaled))}
        if self.threshold is None:
            raise ServingError(
                f"model {self.version} has no calibrated threshold; pass threshold=... to flag"
            )
        result = self.scorer.score(scaled, latent=False, reconstruction=False)
        return {
            "score": result.error,
            "is_anomaly": result.error > self.threshold,
            "contributions": result.contributions,
        }

    # ------------------------------------------------------------------ records

    def score_records(
        self,
        values: Sequence[Any],
        mode: str,
        *,
        sources: Sequence[Any] | None = None,
        passthrough: Sequence[str] = (),
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Scores a batch of records; every record becomes a result or a dead letter.

        Whatever bytes a record holds, the worst it earns is a dead letter: the batch is scored
        in one go, and only if that raises, record by record; a record that still fails is
        dead-lettered with reason ``internal`` and the exception type in ``detail``, and the
        other records get their results.

        Args:
            values: JSON bytes/str, mappings or ``beam.Row``-like records. Elements that are
                Kafka records or ``(key, value)`` tuples are unpacked with :func:`as_input`
                unless ``sources`` is given.
            mode: ``"encode"``, ``"denoise"`` or ``"flag"``.
            sources: Kafka coordinates per value (same length; :class:`Source` objects or
                anything with the same attributes, such as ``KafkaRecord``), copied into the
                outputs.
            passthrough: record fields copied into each result (see :func:`check_passthrough`).

        Returns:
            ``(results, dead_letters)``, each in input order; JSON-serialisable dicts.

        Raises:
            ServingError: the mode is unknown, a passthrough field collides with a result
                field, or the model cannot serve the mode (``flag`` without a threshold): not
                the records' fault.
        """
        values, sources = self._inputs(values, mode, sources, passthrough)
        results, _, dead, _ = self._score_isolated(values, sources, mode, passthrough)
        return results, dead

    def score_messages(
        self,
        values: Sequence[Any],
        mode: str,
        *,
        sources: Sequence[Any] | None = None,
        passthrough: Sequence[str] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        message_key: str = DEFAULT_MESSAGE_KEY,
    ) -> ScoredMessages:
        """:meth:`score_records`, then each output as a Kafka message (:func:`to_messages`),
        bounded in size; never raises because of a record.

        A result that cannot be serialised (reason ``internal``) or whose message would exceed
        ``max_message_bytes`` (reason ``too_large``) becomes a dead letter holding the original
        value; a dead letter's original value is cut to fit (``value_truncated``, with
        ``value_length`` and ``value_sha256`` of the whole).

        Args:
            values, mode, sources, passthrough: as for :meth:`score_records`.
            max_message_bytes: the most bytes (key + value + headers) of one message.
            message_key: a result's message key: ``"input"`` (default), the input message's
                key as it was (None where it had none; a record with no Kafka source: its key
                field), or ``"record"``, the record's key field (the result's ``key``). Dead
                letters always carry the input message's key.

        Returns:
            :class:`ScoredMessages`; ``len(results) + len(dead_letters) == len(values)``.
        """
        check_message_key(message_key)
        check_max_message_bytes(max_message_bytes)
        values, sources = self._inputs(values, mode, sources, passthrough)
        results, index, dead, dead_index = self._score_isolated(values, sources, mode, passthrough)
        keys = None
        if message_key == "input":
            keys = [
                results[j].get("key") if sources[i] is None else sources[i].key
                for j, i in enumerate(index)
            ]
        messages, failed = _serialise(results, keys, max_message_bytes)
        if failed:
            moved = {}
            for j, reason, detail in failed:
                i = index[j]
                moved[j] = (i, _dead_letter(reason, detail, self.version, values[i], sources[i]))
            results = [r for j, r in enumerate(results) if j not in moved]
            dead = [*dead, *(letter for _, letter in moved.values())]
            dead_index = [*dead_index, *(i for i, _ in moved.values())]
            if len(moved) < len(dead):  # back in input order
                order = sorted(range(len(dead)), key=dead_index.__getitem__)
                dead = [dead[k] for k in order]
                dead_index = [dead_index[k] for k in order]
        dead_keys = [_raw_key(sources[i]) for i in dead_index]
        letters, _ = _serialise(dead, dead_keys, max_message_bytes)
        anomalies = sum(map(_IS_ANOMALY, results)) if mode == "flag" else 0
        return ScoredMessages(
            messages, letters, [d["reason"] for d in dead], anomalies, self.version
        )

    def _inputs(
        self,
        values: Sequence[Any],
        mode: str,
        sources: Sequence[Any] | None,
        passthrough: Sequence[str],
    ) -> tuple[Sequence[Any], Sequence[Any]]:
        """Checks the mode and passthrough fields; the values and their sources."""
        check_mode(mode)
        _checked_passthrough(tuple(passthrough), mode)
        if sources is None:
            return as_inputs(values)
        if len(sources) != len(values):
            raise ValueError(f"{len(values)} values but {len(sources)} sources")
        return values, sources

    def _score_isolated(
        self, values: Sequence[Any], sources: Sequence[Any], mode: str, passthrough: Sequence[str]
    ) -> tuple[list[dict], list[int], list[dict], list[int]]:
        """:meth:`_score_batch` of the whole batch; if it raises (anything but a
        :class:`ServingError`), of each record alone, a record that still fails becoming an
        ``internal`` dead letter. Only a failed batch costs the fallback."""
        try:
            return self._score_batch(values, sources, mode, passthrough)
        except ServingError:
            raise
        except Exception as err:
            first = err
        results: list[dict] = []
        index: list[int] = []
        dead: list[dict] = []
        dead_index: list[int] = []
        failed = 0
        for i in range(len(values)):
            try:
                r, _, d, _ = self._score_batch([values[i]], [sources[i]], mode, passthrough)
            except ServingError:
                raise
            except Exception as err:
                failed += 1
                r = []
                d = [
                    _dead_letter(
                        INTERNAL, internal_detail(err), self.version, values[i], sources[i]
                    )
                ]
            results += r
            index += [i] * len(r)
            dead += d
            dead_index += [i] * len(d)
        _log.warning(
            "a batch of %d records failed to score (%s); scored record by record, %d "
            "dead-lettered as %r",
            len(values),
            internal_detail(first),
            failed,
            INTERNAL,
        )
        return results, index, dead, dead_index

    def _score_batch(
        self, values: Sequence[Any], sources: Sequence[Any], mode: str, passthrough: Sequence[str]
    ) -> tuple[list[dict], list[int], list[dict], list[int]]:
        """Scores a batch: ``(results, their input indices, dead letters, their indices)``."""
        batch = _drop_unscalable(decode_records(values, self.spec, fields=passthrough), self.scaler)
        version = self.version
        dead = [
            _dead_letter(err.reason, err.detail, version, values[err.index], sources[err.index])
            for err in batch.errors
        ]
        dead_index = [err.index for err in batch.errors]
        if not batch.index:
            return [], [], dead, dead_index
        return self._results(batch, sources, mode, passthrough), batch.index, dead, dead_index

    def _results(
        self, batch: DecodedBatch, sources: Sequence[Any], mode: str, passthrough: Sequence[str]
    ) -> list[dict[str, Any]]:
        """The results of a batch's usable records."""
        scores = self.score_matrix(batch.matrix, mode)
        keys, extras = self._keys_and_extras(batch, sources, passthrough)
        version = self.version
        # One dict display per result (sized once): the hot path of every scoring step.
        # ``extras`` (coordinates, passthrough fields) are None for bare records.
        if mode != "flag" and extras is None:
            extras = [_NO_FIELDS] * len(keys)
        if mode == "encode":
            rows = zip(keys, extras, scores["latent"].tolist(), strict=True)
            return [{"key": k, "model_version": version, **e, "latent": z} for k, e, z in rows]
        if mode == "denoise":
            names = self.feature_names
            recon = scores["reconstruction"].tolist()
            values_out = [dict(zip(names, r, strict=True)) for r in recon] if names else recon
            rows = zip(keys, extras, values_out, strict=True)
            return [
                {"key": k, "model_version": version, **e, "reconstruction": r} for k, e, r in rows
            ]
        threshold = float(self.threshold)  # type: ignore[arg-type]
        columns = (
            scores["score"].tolist(),
            scores["is_anomaly"].tolist(),
            *self._top_contributions(scores["contributions"]),
        )
        if extras is None:  # bare records: the same dicts without merging empty extras
            return [
                {
                    "key": k,
                    "model_version": version,
                    "score": s,
                    "threshold": threshold,
                    "is_anomaly": a,
                    "contributions": dict(zip(n, c)),  # noqa: B905 (equal by construction)
                }
                for k, s, a, n, c in zip(keys, *columns, strict=True)
            ]
        rows = zip(keys, extras, *columns, strict=True)
        return [
            {
                "key": k,
                "model_version": version,
                **e,
                "score": s,
                "threshold": threshold,
                "is_anomaly": a,
                "contributions": dict(zip(n, c)),  # noqa: B905 (equal by construction)
            }
            for k, e, s, a, n, c in rows
        ]

    @staticmethod
    def _keys_and_extras(
        batch: DecodedBatch, sources: Sequence[Any], passthrough: Sequence[str]
    ) -> tuple[list[Any], list[dict[str, Any]] | None]:
        """Each scored record's key (the record's key field, else the Kafka key) and the fields
        that follow ``model_version`` in its result: Kafka coordinates, then the passthrough
        fields (None when no record has any)."""
        keys = batch.keys
        # Bare records only (a C-speed check for the lists the callers pass; the first element
        # is looked at first, as list.count would call a Kafka record's __eq__ per element).
        if (
            (not sources or sources[0] is None) and sources.count(None) == len(sources)
            if isinstance(sources, (list, tuple))
            else all(source is None for source in sources)
        ):
            if not passthrough:
                return keys, None
            chosen: list[Any] = [None] * len(keys)
            extras = [{} for _ in chosen]
        else:
            chosen = [sources[i] for i in batch.index]
            keys = [
                _key_text(source.key) if key is None and source is not None else key
                for key, source in zip(keys, chosen, strict=True)
            ]
            extras = [_coordinates(source) for source in chosen]
        if passthrough:
            for extra, record in zip(extras, batch.records, strict=True):
                extra.update({f: _json_safe(record.get(f)) for f in passthrough})
        return keys, extras

    def anomaly_scores(self, values: Sequence[Any]) -> tuple[np.ndarray, dict[int, str]]:
        """Reconstruction-error score of each record, in input order (the ``flag`` score
        without the threshold: for detectors that threshold scores themselves).

        Returns:
            ``(scores, reasons)``: an ``N`` float array, NaN where a record cannot be scored,
            and ``{index: "reason: detail"}`` for those records.
        """
        try:
            return self._anomaly_scores(values)
        except Exception:  # isolate the records that fail: one at a time
            pass
        scores = np.full(len(values), np.nan, dtype=np.float64)
        reasons: dict[int, str] = {}
        for i in range(len(values)):
            try:
                one, why = self._anomaly_scores([values[i]])
            except Exception as err:
                reasons[i] = f"{INTERNAL}: {internal_detail(err)}"
                continue
            scores[i] = one[0]
            if 0 in why:
                reasons[i] = why[0]
        return scores, reasons

    def _anomaly_scores(self, values: Sequence[Any]) -> tuple[np.ndarray, dict[int, str]]:
        batch = _drop_unscalable(decode_records(values, self.spec, fields=()), self.scaler)
        scores = np.full(len(values), np.nan, dtype=np.float64)
        reasons = {err.index: f"{err.reason}: {err.detail}" for err in batch.errors}
        if batch.index:
            scaled = self.scaler.transform(batch.matrix)
            _torch_threads_here(self.torch_threads)
            error = self.scorer.score(scaled, latent=False, reconstruction=False).error
            scores[np.asarray(batch.index)] = error
        return scores, reasons

    def _top_contributions(self, contributions: np.ndarray) -> tuple[Iterator, Iterator]:
        """Per row, the names and values of the ``top_k`` largest per-feature contributions,
        largest first (two iterators of tuples, one per row)."""
        dim = contributions.shape[1]
        k = dim if self.top_k is None else min(self.top_k, dim)
        if k < dim:
            top = np.argpartition(-contributions, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(contributions, top, axis=1).argsort(axis=1)[:, ::-1]
            top = np.take_along_axis(top, order, axis=1)
        else:
            top = np.argsort(-contributions, axis=1, kind="stable")
        values = np.take_along_axis(contributions, top, axis=1).ravel().tolist()
        names = self._names_array
        if names is None or len(names) != dim:
            names = np.asarray(self.feature_names or [str(j) for j in range(dim)], dtype=object)
            self._names_array = names
        # Rows as tuples made one at a time from flat lists (one list of names, one of values):
        # no per-row list stays alive for the garbage collector to count and traverse.
        if k == 0:
            return iter([()] * len(contributions)), iter([()] * len(contributions))
        flat_names = names[top].ravel().tolist()
        return zip(*[iter(flat_names)] * k), zip(*[iter(values)] * k)  # noqa: B905


def check_mode(mode: str) -> str:
    """Refuses anything but ``encode``, ``denoise`` or ``flag``."""
    if mode not in MODES:
        raise ServingError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


class ScoredMessages(NamedTuple):
    """What :meth:`ServingModel.score_messages` returns.

    Attributes:
        results: ``(key, value, headers)`` messages of the results.
        dead_letters: the same for the dead letters (with a ``reason`` header).
        dead_reasons: each dead letter's reason, in order.
        anomalies: results flagged anomalous (``flag`` mode).
        version: the model version that scored the batch.
    """

    results: list[Message]
    dead_letters: list[Message]
    dead_reasons: list[str]
    anomalies: int
    version: str


def result_fields(mode: str) -> tuple[str, ...]:
    """The fields a result of ``mode`` may carry (besides passed-through ones)."""
    return _BASE_FIELDS + _MODE_FIELDS[check_mode(mode)]


def check_passthrough(fields: Iterable[str], mode: str) -> tuple[str, ...]:
    """Refuses passthrough fields that would overwrite a result's own field.

    A passed-through ``offset`` would replace the record's real offset (and ``key`` the
    message key, ``model_version`` the version header): call this before any work starts.

    Returns:
        The fields, as a tuple.

    Raises:
        ServingError: naming the first field that is empty, repeated, or the name of a result
            field of ``mode`` (:func:`result_fields`).
    """
    fields = tuple(fields)
    taken = result_fields(mode)
    seen: set[str] = set()
    for name in fields:
        if not isinstance(name, str) or not name:
            raise ServingError(f"passthrough field names must be non-empty text, got {name!r}")
        if name in taken:
            raise ServingError(
                f"passthrough field {name!r} would overwrite the result field of that name "
                f"(a {mode} result has {', '.join(taken)}); pass through other fields"
            )
        if name in seen:
            raise ServingError(f"passthrough field {name!r} is given twice")
        seen.add(name)
    return fields


_checked_passthrough = functools.lru_cache(maxsize=256)(check_passthrough)


def check_message_key(message_key: str) -> str:
    """Refuses anything but ``input`` or ``record`` (see :meth:`ServingModel.score_messages`)."""
    if message_key not in MESSAGE_KEYS:
        raise ServingError(f"message_key {message_key!r} is not one of {', '.join(MESSAGE_KEYS)}")
    return message_key


def check_max_message_bytes(max_message_bytes: int) -> int:
    """Refuses a message size limit too small for a dead letter's own fields."""
    if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int):
        raise ServingError(f"max_message_bytes must be an integer, got {max_message_bytes!r}")
    if max_message_bytes < MIN_MAX_MESSAGE_BYTES:
        raise ServingError(
            f"max_message_bytes must be at least {MIN_MAX_MESSAGE_BYTES}, got {max_message_bytes}"
        )
    return max_message_bytes


_IS_ANOMALY = operator.itemgetter("is_anomaly")
_KEY_ROOM = 1024  # bytes of a key a dead letter keeps when the whole key does not fit


def _message_key(key: Any) -> bytes | None:
    """A message key as bytes: bytes as they are, text as UTF-8 (raises for text that has
    no UTF-8 form, such as a lone surrogate)."""
    if key is None or type(key) is bytes:
        return key
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    return str(key).encode()


def _raw_key(source: Any) -> Any:
    """The input message key of a record (None without a source)."""
    return source.key if source is not None else None


def _dumps(output: Mapping[str, Any]) -> bytes:
    """JSON of an output (orjson, else :func:`to_json`); raises what both raise."""
    if _orjson is not None:
        try:
            return _orjson.dumps(output, option=_orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # e.g. an int beyond 64 bits, a lone surrogate, deep nesting
            pass
    return json.dumps(
        output, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)
    ).encode()


def _headers_size(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(name) + len(value) for name, value in headers)


def _serialise(
    outputs: Sequence[Mapping[str, Any]], keys: Sequence[Any] | None, limit: int
) -> tuple[list[Message], list[tuple[int, str, str]]]:
    """Messages of ``outputs`` (message keys ``keys``, else each output's ``key``), none over
    ``limit`` bytes.

    A dead letter (an output with a ``reason``) always becomes a message: its original value
    is cut to fit, and what cannot be serialised is left out. A result that cannot be
    serialised, or whose message is over ``limit``, does not: it is listed in the second list
    as ``(position, reason, detail)`` and left out of the first.
    """
    headers_of: dict[tuple[Any, Any], tuple[list[tuple[str, bytes]], int]] = {}
    messages: list[Message] = []
    append = messages.append
    failed: list[tuple[int, str, str]] = []
    dumps = _orjson.dumps if _orjson is not None else None
    option = _orjson.OPT_SERIALIZE_NUMPY if _orjson is not None else None
    for j, output in enumerate(outputs):
        reason = output.get("reason")
        which = (output.get("model_version", ""), reason)
        known = headers_of.get(which)
        if known is None:
            headers = message_headers(*which)
            known = headers_of[which] = (headers, _headers_size(headers))
        headers, header_size = known
        try:
            key = _message_key(output.get("key") if keys is None else keys[j])
            try:  # to_json, without a call per record
                value = dumps(output, option=option) if dumps is not None else _dumps(output)
            except TypeError:
                value = _dumps(output)
            size = len(value) + header_size + (len(key) if key else 0)
            if size > limit:
                if reason is None:
                    detail = (
                        f"the result's message has {size} bytes, more than "
                        f"max_message_bytes={limit}"
                    )
                    failed.append((j, TOO_LARGE, detail))
                    continue
                key, value = _fit_letter(output, key, header_size, limit)
        except Exception as err:
            if reason is None:
                failed.append((j, INTERNAL, internal_detail(err)))
                continue
            key, value = _fit_letter(output, _safe_key(output, keys, j), header_size, limit)
        append((key, value, headers))
    return messages, failed


def _safe_key(output: Mapping[str, Any], keys: Sequence[Any] | None, j: int) -> bytes | None:
    """A dead letter's message key, whatever the key holds (text that has no UTF-8 form is
    written with its surrogates as they are)."""
    key = output.get("key") if keys is None else keys[j]
    try:
        return _message_key(key)
    except Exception:
        try:
            return str(key).encode("utf-8", "surrogatepass")
        except Exception:
            return None


def _fit_letter(
    letter: Mapping[str, Any], key: bytes | None, header_size: int, limit: int
) -> tuple[bytes | None, bytes]:
    """A dead letter's ``(message key, value)`` within ``limit`` bytes: the original value cut
    (``value_truncated``; ``value_length`` and ``value_sha256`` still describe the whole), a
    key over a quarter of the limit cut to its first 1 KiB (``key_truncated``); what cannot
    be serialised at all is left out."""
    if key is not None and len(key) > limit // 4:
        key = key[:_KEY_ROOM]
    room = limit - header_size - (len(key) if key else 0)
    out = dict(letter)
    out["value_truncated"] = True
    body_key = out.get("key")
    if isinstance(body_key, str) and len(body_key) > _KEY_ROOM:
        out["key"] = body_key[:_KEY_ROOM]
        out["key_truncated"] = True
    field = "value_b64" if "value_b64" in out else "value"
    original = out.get(field)
    out[field] = "" if isinstance(original, str) else None
    try:
        base = len(_dumps(out))
    except Exception:
        return key, _minimal_letter(letter)
    if isinstance(original, str) and room > base:
        # base64 is ASCII (4 characters per 3 bytes); text may be escaped up to 6 bytes a
        # character (\uXXXX).
        spare = room - base - 16
        out[field] = original[: spare // 4 * 4] if field == "value_b64" else original[: spare // 6]
    try:
        value = _dumps(out)
    except Exception:
        return key, _minimal_letter(letter)
    if len(value) > room:
        return key, _minimal_letter(letter)
    return key, value


def _minimal_letter(letter: Mapping[str, Any]) -> bytes:
    """A dead letter's plain fields only (reason, detail, coordinates, the original's length
    and hash), as ASCII JSON: what is left when the rest cannot be serialised or fit."""
    kept: dict[str, Any] = {"value_truncated": True}
    for name in (
        "reason",
        "detail",
        "model_version",
        "key",
        "topic",
        "partition",
        "offset",
        "timestamp_ms",
        "value_length",
        "value_sha256",
    ):
        value = letter.get(name)
        if value is None or isinstance(value, (bool, int)):
            kept[name] = value
        else:
            try:
                kept[name] = str(value)[:_KEY_ROOM]
            except Exception:
                kept[name] = None
    return json.dumps(kept).encode()


def to_message(
    output: Mapping[str, Any], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Message:
    """A result or dead letter as a Kafka message ``(key, value, headers)``.

    The key is the output's ``key`` (UTF-8 text; None when absent), the value its JSON, and
    the headers carry ``model_version`` (and ``reason`` for a dead letter), so that consumers
    can route without parsing. See :func:`to_messages` for what it does with an output that
    cannot be written.
    """
    return to_messages([output], max_message_bytes=max_message_bytes)[0]


def to_messages(
    outputs: Iterable[Mapping[str, Any]],
    *,
    keys: Sequence[Any] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> list[Message]:
    """:func:`to_message` of each output, in order; never raises because of one output.

    Outputs of one model version (and dead-letter reason) share one header list, which
    callers must not change. No message is over ``max_message_bytes`` (key + value +
    headers): a dead letter's original value is cut to fit (``value_truncated``). A result
    that cannot be serialised (e.g. a key with no UTF-8 form) or would be too large is
    replaced by a dead-letter message (reason ``internal`` or ``too_large``, with its key and
    coordinates; it has no original value to keep): route by the ``reason`` header, or use
    :meth:`ServingModel.score_messages`, which sends such results to the dead letters with
    their original value.

    Args:
        outputs: results and dead letters (dicts of :meth:`ServingModel.score_records`).
        keys: the message key of each output (bytes or text; None: no key); default: each
            output's ``key``.
        max_message_bytes: the most bytes of one message.
    """
    check_max_message_bytes(max_message_bytes)
    if not isinstance(outputs, (list, tuple)):
        outputs = list(outputs)
    if keys is not None and len(keys) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs but {len(keys)} keys")
    messages, failed = _serialise(outputs, keys, max_message_bytes)
    if not failed:
        return messages
    letters = {}
    for j, reason, detail in failed:
        output = outputs[j]
        letter = {
            "reason": reason,
            "detail": detail,
            "model_version": output.get("model_version"),
            "key": _json_safe_or_none(output.get("key")),
            **{f: output[f] for f in ("topic", "partition", "offset") if f in output},
        }
        letters[j] = _serialise([letter], [_safe_key(output, keys, j)], max_message_bytes)[0][0]
    done = iter(messages)
    return [letters[j] if j in letters else next(done) for j in range(len(outputs))]


def _json_safe_or_none(value: Any) -> Any:
    try:
        return _json_safe(value)
    except Exception:
        return None


def message_headers(version: Any, reason: Any = None) -> list[tuple[str, bytes]]:
    """The headers of an output message: ``model_version``, and ``reason`` for a dead letter
    (``reason`` not None)."""
    headers = [("model_version", str(version).encode())]
    if reason is not None:
        headers.append(("reason", str(reason).encode()))
    return headers


def to_json(obj: Any) -> bytes:
    """Serialises a result or dead letter (or any JSON data with numpy values) to bytes."""
    if _orjson is not None:
        try:
            return _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # e.g. an int beyond 64 bits, which Python's json writes as is
            pass
    return json.dumps(
        obj, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)
    ).encode()


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MESSAGE_KEY",
    "MESSAGE_KEYS",
    "MIN_MAX_MESSAGE_BYTES",
    "MODES",
    "Message",
    "NoModelError",
    "ScoredMessages",
    "ServingError",
    "ServingModel",
    "Source",
    "as_input",
    "check_max_message_bytes",
    "check_message_key",
    "check_mode",
    "check_passthrough",
    "message_headers",
    "result_fields",
    "to_json",
    "to_message",
    "to_messages",
    "version_name",
]

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
(``value_b64`` for bytes, ``value`` otherwise).

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
import json
import logging
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
    NON_FINITE,
    DecodedBatch,
    FeatureSpec,
    RecordError,
    Scaler,
    decode_records,
)
from ae_pipeline.registry import MARKER, version_of_marker

_log = logging.getLogger(__name__)

MODES = ("encode", "denoise", "flag")


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
    """The original value of a rejected record, JSON-safe."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"value_b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, str):
        return {"value": value}
    as_dict = getattr(value, "_asdict", None) or getattr(value, "as_dict", None)
    if isinstance(value, Mapping) or as_dict is not None:
        data = dict(value) if isinstance(value, Mapping) else as_dict()
        return {"value": {str(k): _json_safe(v) for k, v in data.items()}}
    return {"value": _json_safe(value)}


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

        Args:
            values: JSON bytes/str, mappings or ``beam.Row``-like records. Elements that are
                Kafka records or ``(key, value)`` tuples are unpacked with :func:`as_input`
                unless ``sources`` is given.
            mode: ``"encode"``, ``"denoise"`` or ``"flag"``.
            sources: Kafka coordinates per value (same length; :class:`Source` objects or
                anything with the same attributes, such as ``KafkaRecord``), copied into the
                outputs.
            passthrough: record fields copied into each result.

        Returns:
            ``(results, dead_letters)``, each in input order; JSON-serialisable dicts.
        """
        check_mode(mode)
        if sources is None:
            values, sources = as_inputs(values)
        elif len(sources) != len(values):
            raise ValueError(f"{len(values)} values but {len(sources)} sources")
        batch = _drop_unscalable(decode_records(values, self.spec, fields=passthrough), self.scaler)
        dead = [
            {
                "reason": err.reason,
                "detail": err.detail,
                "model_version": self.version,
                "key": _key_text(sources[err.index].key) if sources[err.index] else None,
                **_coordinates(sources[err.index]),
                **_original(values[err.index]),
            }
            for err in batch.errors
        ]
        if not batch.index:
            return [], dead
        scores = self.score_matrix(batch.matrix, mode)
        keys, extras = self._keys_and_extras(batch, sources, passthrough)
        version = self.version
        # One dict display per result (sized once): the hot path of every scoring step.
        # ``extras`` (coordinates, passthrough fields) are None for bare records.
        if mode != "flag" and extras is None:
            extras = [_NO_FIELDS] * len(keys)
        if mode == "encode":
            rows = zip(keys, extras, scores["latent"].tolist(), strict=True)
            return [
                {"key": k, "model_version": version, **e, "latent": z} for k, e, z in rows
            ], dead
        if mode == "denoise":
            names = self.feature_names
            recon = scores["reconstruction"].tolist()
            values_out = [dict(zip(names, r, strict=True)) for r in recon] if names else recon
            rows = zip(keys, extras, values_out, strict=True)
            return [
                {"key": k, "model_version": version, **e, "reconstruction": r} for k, e, r in rows
            ], dead
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
            ], dead
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
        ], dead

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


def to_message(output: Mapping[str, Any]) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """A result or dead letter as a Kafka message ``(key, value, headers)``.

    The key is the output's ``key`` (UTF-8 text; None when absent), the value its JSON, and
    the headers carry ``model_version`` (and ``reason`` for a dead letter), so that consumers
    can route without parsing. The Beam job and the plain consumer both produce these.
    """
    return to_messages([output])[0]


def to_messages(
    outputs: Iterable[Mapping[str, Any]],
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """:func:`to_message` of each output; outputs of one model version (and dead-letter
    reason) share one header list, which callers must not change."""
    headers_of: dict[tuple[Any, Any], list[tuple[str, bytes]]] = {}
    messages = []
    append = messages.append
    dumps = _orjson.dumps if _orjson is not None else to_json
    option = _orjson.OPT_SERIALIZE_NUMPY if _orjson is not None else None
    for output in outputs:
        key = output.get("key")
        if key is not None and type(key) is not bytes:
            key = str(key).encode()
        which = (output.get("model_version", ""), output.get("reason"))
        headers = headers_of.get(which)
        if headers is None:
            headers = headers_of[which] = message_headers(*which)
        try:  # to_json, without a call per record
            value = dumps(output, option=option) if option is not None else dumps(output)
        except TypeError:
            value = to_json(output)
        append((key, value, headers))
    return messages


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
    "MODES",
    "NoModelError",
    "ServingError",
    "ServingModel",
    "Source",
    "as_input",
    "check_mode",
    "message_headers",
    "to_json",
    "to_message",
    "to_messages",
    "version_name",
]

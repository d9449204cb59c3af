"""What scoring takes in: records with their Kafka coordinates (:class:`Source`), and the
dead letters of records that cannot be scored."""

from __future__ import annotations

import base64
import hashlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np


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

"""The Kafka message format of results and dead letters: JSON values, keys, headers, and
the size limit every message keeps (:func:`to_messages`).

Example:
    >>> key, value, headers = to_message({"key": "k1", "model_version": "v1", "score": 0.5})
    >>> key, value, headers
    (b'k1', b'{"key":"k1","model_version":"v1","score":0.5}', [('model_version', b'v1')])
    >>> message_headers("v1", reason="bad_json")  # a dead letter's headers
    [('model_version', b'v1'), ('reason', b'bad_json')]
    >>> import numpy as np
    >>> to_json({"latent": np.array([0.5, 1.0], dtype=np.float32), "n": np.int64(3)})
    b'{"latent":[0.5,1.0],"n":3}'

    A result too large for ``max_message_bytes`` becomes a ``too_large`` dead letter:

    >>> [(key, headers)] = [(m[0], m[2]) for m in to_messages(
    ...     [{"key": "k2", "model_version": "v1", "latent": [0.0] * 3000}], max_message_bytes=4096)]
    >>> key, headers
    (b'k2', [('model_version', b'v1'), ('reason', b'too_large')])
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

try:  # a Beam dependency, several times faster than json
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None  # type: ignore[assignment]

from ae_pipeline.features import (
    INTERNAL,
    TOO_LARGE,
    internal_detail,
)
from ae_pipeline.serving.errors import ServingError
from ae_pipeline.serving.inputs import _json_safe

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


class ScoredMessages(NamedTuple):
    """What :meth:`ServingModel.score_messages` returns.

    Attributes:
        results: ``(key, value, headers)`` messages of the results.
        dead_letters: the same for the dead letters (with a ``reason`` header).
        dead_reasons: each dead letter's reason, in order.
        anomalies: results flagged anomalous (``flag`` mode).
        version: the model version that scored the batch.
        scores: each result's ``score``, in order, where the mode has one (``flag``,
            ``explain``); empty otherwise (what score drift is measured on).
    """

    results: list[Message]
    dead_letters: list[Message]
    dead_reasons: list[str]
    anomalies: int
    version: str
    scores: Sequence[float] = ()


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

"""Write Kafka records from Beam pipelines, in Python, with either Kafka client.

:class:`WriteKafkaRecords` produces ``(key, value[, headers])`` tuples, :class:`KafkaRecord`
objects or lists of either, with one producer per DoFn instance, flushed at the end of each
bundle. A failed flush sends the bundle again with a new producer (duplicates, not losses)
until ``retry_timeout_s``; only then does the bundle fail (for the runner to retry it). With
``max_message_bytes``, a message larger than that is never sent (the broker would refuse it, and
the bundle, with every partition in it, would fail on every retry): it is counted
(``records_too_large``) and emitted on the transform's output for the pipeline to dead-letter.

Example:
    >>> with beam.Pipeline(options=options) as p:                       # doctest: +SKIP
    ...     _ = (p | beam.Create([(b"k", b"v")])
    ...          | WriteKafkaRecords("copy", {"bootstrap.servers": "127.0.0.1:9092"}))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from ae_pipeline.beam.kafka_read import NAMESPACE, RETRY_FIRST_S, RETRY_MAX_S
from ae_pipeline.kafka import (
    DEFAULT_CLIENT,
    DeliveryError,
    KafkaClientError,
    KafkaConfig,
    KafkaProducerClient,
    create_producer,
)
from ae_pipeline.kafka.client import check_client, close_quietly
from ae_pipeline.kafka.errors import is_too_large, is_transient

_LOG = logging.getLogger(__name__)


def _to_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"Kafka keys and values must be bytes, str or None, not {type(value)}")


def _messages(element: Any, topic: str | None) -> Iterator[tuple[str, Any, Any, Any]]:
    """``(topic, key, value, headers)`` for each record in ``element``."""
    if isinstance(element, list):
        for item in element:
            yield from _messages(item, topic)
        return
    if hasattr(element, "value"):  # KafkaRecord-like
        target = topic or getattr(element, "topic", None)
        key, value = getattr(element, "key", None), element.value
        headers = getattr(element, "headers", None) or ()
    elif isinstance(element, tuple) and len(element) in (2, 3):
        target, key, value = topic, element[0], element[1]
        headers = element[2] if len(element) == 3 else ()
    else:
        raise TypeError(
            "WriteKafkaRecords takes (key, value[, headers]) tuples, KafkaRecord-like objects "
            f"or lists of them, not {type(element).__name__}"
        )
    if not target:
        raise ValueError("no topic: give WriteKafkaRecords a topic or write KafkaRecords")
    yield target, _to_bytes(key), _to_bytes(value), [(n, _to_bytes(v)) for n, v in headers]


def message_size(message: tuple[str, Any, Any, Any]) -> int:
    """Bytes of a ``(topic, key, value, headers)`` message as a limit counts them: key, value
    and each header's name and value."""
    _, key, value, headers = message
    size = len(key or b"") + len(value or b"")
    for name, header in headers:
        size += len(name) + len(header or b"")
    return size


class _WriteFn(beam.DoFn):
    """Produces each bundle's records and waits for their acknowledgements at its end.

    A flush that failed because the broker is unreachable (time-outs, lost connections, no
    leader: see :func:`_transient`) does not fail the bundle at once: the producer is rebuilt
    and the whole bundle sent again (records that had been delivered are then duplicated,
    never lost) until ``retry_timeout_s`` has passed; only then does the bundle fail, for the
    runner to retry it. Other delivery errors (a record too large, ...) fail it at once.
    """

    def __init__(
        self, topic, config, client, flush_timeout_s, retry_timeout_s=300.0, max_message_bytes=None
    ):
        self._topic = topic
        self._config = config
        self._client = client
        self._flush_timeout = flush_timeout_s
        self._retry_timeout = retry_timeout_s
        self._max_bytes = max_message_bytes
        self._written = Metrics.counter(NAMESPACE, "records_written")
        self._retries = Metrics.counter(NAMESPACE, "write_retries")
        self._too_large = Metrics.counter(NAMESPACE, "records_too_large")

    def setup(self) -> None:
        self._producer: KafkaProducerClient | None = None
        self._bundle: list[tuple[str, Any, Any, Any]] = []
        self._send_error: KafkaClientError | None = None

    def start_bundle(self) -> None:
        if self._bundle or self._send_error is not None:
            self._drop_producer()  # the last bundle failed: its queued records are not ours
        self._bundle, self._send_error = [], None

    def process(self, element: Any) -> Iterable[tuple[str, Any, Any, Any]]:
        refused = []
        for message in _messages(element, self._topic):
            if self._max_bytes is not None and message_size(message) > self._max_bytes:
                refused.append(message)  # never sent: the broker would refuse the bundle
                continue
            self._bundle.append(message)
            if self._send_error is None:
                try:
                    self._send(message)
                except KafkaClientError as e:
                    self._send_error = e  # sent again, with the rest, in finish_bundle
        if refused:
            self._too_large.inc(len(refused))
            _LOG.error(
                "%d messages for %s are over max_message_bytes=%d (largest %d bytes): not sent, "
                "passed on to be dead-lettered",
                len(refused),
                refused[0][0],
                self._max_bytes,
                max(map(message_size, refused)),
            )
        return refused

    def _send(self, message: tuple[str, Any, Any, Any]) -> None:
        if self._producer is None:
            self._producer = create_producer(self._config, self._client)
        topic, key, value, headers = message
        self._producer.send(topic, value, key=key, headers=headers)

    def finish_bundle(self) -> None:
        deadline = time.monotonic() + self._retry_timeout
        attempt = 0
        while True:
            try:
                if self._send_error is not None:
                    raise self._send_error
                if self._producer is not None:
                    self._producer.flush(self._flush_timeout)
                break
            except KafkaClientError as e:  # DeliveryError included
                attempt += 1
                if time.monotonic() >= deadline or not is_transient(e):
                    if is_too_large(e):
                        _LOG.error(
                            "the broker refused a message as too large: set max_message_bytes "
                            "(ae-pipeline stream: --max_message_bytes) under the topic's "
                            "max.message.bytes and the producer's message.max.bytes / "
                            "max.request.size"
                        )
                    raise  # the runner retries the bundle
                delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempt - 1))
                self._retries.inc()
                # Only unacknowledged records (the broker is slow or away): the producer still
                # holds them and keeps sending; flush it again rather than send them twice.
                waiting = isinstance(e, DeliveryError) and e.failed == e.unacknowledged > 0
                _LOG.warning(
                    "writing %d records failed (try %d), %s in %.1fs: %s",
                    len(self._bundle),
                    attempt,
                    "waiting for them again" if waiting else "sending them again",
                    delay,
                    e,  # scrubbed of secrets by the client layer
                )
                time.sleep(delay)
                if waiting:
                    continue
                self._drop_producer()
                self._send_error = None
                try:
                    for message in self._bundle:
                        self._send(message)
                except KafkaClientError as send_error:
                    self._send_error = send_error
        self._written.inc(len(self._bundle))
        self._bundle = []

    def _drop_producer(self) -> None:
        """Drops the producer of a failed bundle, with its undelivered records: the bundle is
        sent again by a new producer (or by the runner's retry)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.abort()
            except Exception as e:  # best effort
                _LOG.warning("aborting a Kafka producer failed: %s", e)

    def teardown(self) -> None:
        producer, self._producer = getattr(self, "_producer", None), None
        close_quietly(producer)


class WriteKafkaRecords(beam.PTransform):
    """Produce records to Kafka; every bundle's records are acknowledged (``acks=all``)
    before the bundle completes.

    Elements may be ``(key, value)`` or ``(key, value, headers)`` tuples, objects with
    ``value`` (and optionally ``key``, ``headers``, ``topic``) attributes such as
    :class:`KafkaRecord`, or lists of these (e.g. the batches :class:`ReadKafkaRecords` emits).
    ``str`` keys and values are encoded as UTF-8. Returns the messages refused as larger than
    ``max_message_bytes``, as ``(topic, key, value, headers)`` tuples (empty without a limit).

    Args:
        topic: topic to write to (None: each record's own ``topic``).
        config: a :class:`KafkaConfig` or one config dict.
        client: ``"kafka-python"`` or ``"confluent"``.
        flush_timeout_s: how long one flush waits for acknowledgements.
        retry_timeout_s: how long a bundle whose flush failed keeps sending its records again
            (rebuilding the producer each time, so records can be duplicated, not lost)
            before it fails.
        max_message_bytes: messages larger than this (key + value + headers) are not sent
            but returned (see above); keep it under the producer's ``message.max.bytes`` /
            ``max.request.size`` and the topic's ``max.message.bytes``. None: no check (the
            broker's refusal then fails the bundle).

    Raises:
        ae_pipeline.kafka.DeliveryError: (in the bundle) when records were still not delivered
            after ``retry_timeout_s``, or were refused for a reason sending again cannot cure
            (too large for the topic, not authorised, no such topic).
    """

    def __init__(
        self,
        topic: str | None,
        config: KafkaConfig | Mapping[str, Any],
        *,
        client: str = DEFAULT_CLIENT,
        flush_timeout_s: float = 60.0,
        retry_timeout_s: float = 300.0,
        max_message_bytes: int | None = None,
    ):
        super().__init__()
        check_client(client)
        if max_message_bytes is not None and max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {max_message_bytes}")
        self._fn = _WriteFn(
            topic,
            KafkaConfig.from_dict(config),
            client,
            flush_timeout_s,
            retry_timeout_s,
            max_message_bytes,
        )

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Produce" >> beam.ParDo(self._fn)

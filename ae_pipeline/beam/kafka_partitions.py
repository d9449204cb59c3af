"""The partitions a Beam Kafka read splits into: their discovery and starting offsets, the
offset-range restrictions that track them, event time, and the coder of :class:`KafkaRecord`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import msgspec
from apache_beam.coders.coder_impl import StreamCoderImpl
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Timestamp

from ae_pipeline.kafka import (
    KafkaConsumerClient,
    KafkaRecord,
    TopicPartition,
    create_consumer,
)

_LOG = logging.getLogger(__name__)

MAX_OFFSET = 2**63 - 1
"""The end of an unbounded partition's restriction (Java's ``Long.MAX_VALUE``)."""

STARTS = ("committed", "earliest", "latest")


# A record's fields as one msgpack array, decoded into exact types (msgspec: no code runs,
# unlike pickle): topic, partition, offset, timestamp_ms, key, value, headers.
_RecordFields = tuple[
    str, int, int, int, bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]
]
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_RecordFields)


class _KafkaRecordCoderImpl(StreamCoderImpl):
    def encode_to_stream(self, r: KafkaRecord, out: Any, nested: bool) -> None:
        fields = (r.topic, r.partition, r.offset, r.timestamp_ms, r.key, r.value, r.headers)
        out.write(_ENCODER.encode(fields), nested)

    def decode_from_stream(self, in_stream: Any, nested: bool) -> KafkaRecord:
        return KafkaRecord(*_DECODER.decode(in_stream.read_all(nested)))


class KafkaRecordCoder(beam.coders.Coder):
    """Coder for :class:`KafkaRecord`: its fields as one msgpack array (msgspec, typed decode;
    no pickle), faster than Beam's fallback coder (which pickles the dataclass), also inside
    ``list[KafkaRecord]``. Registered for ``KafkaRecord`` when this module is imported."""

    def _create_impl(self) -> StreamCoderImpl:
        return _KafkaRecordCoderImpl()

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> type:
        return KafkaRecord


beam.coders.registry.register_coder(KafkaRecord, KafkaRecordCoder)


@dataclass(frozen=True)
class PartitionToRead:
    """The element of the splittable read: one partition and where to stop.

    Attributes:
        topic: topic name.
        partition: partition number.
        start_offset: first offset to read.
        stop_offset: offset to stop before (None: unbounded).
        deadline: wall-clock time (seconds since the epoch) to stop at (None: never).
        partitions: how many partitions the read covers, this one included.
    """

    topic: str
    partition: int
    start_offset: int
    stop_offset: int | None = None
    deadline: float | None = None
    partitions: int = 1

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class _DiscoverPartitions(beam.DoFn):
    """Impulse -> one :class:`PartitionToRead` per partition, offsets resolved now."""

    def __init__(self, config, client, topics, start, reset, bounded, max_records, max_seconds):
        self._config = config
        self._client = client
        self._topics = topics
        self._start = start
        self._reset = reset
        self._bounded = bounded
        self._max_records = max_records
        self._max_seconds = max_seconds

    def process(self, _: Any) -> Iterator[PartitionToRead]:
        deadline = time.time() + self._max_seconds if self._max_seconds is not None else None
        with create_consumer(self._config, self._client) as consumer:
            tps = [TopicPartition(t, p) for t in self._topics for p in consumer.partitions(t)]
            starts = self._start_offsets(consumer, tps)
            ends = consumer.end_offsets(tps) if self._bounded else {}
        for tp in tps:
            start = starts[tp]
            stop = max(start, ends[tp]) if self._bounded else None
            if self._max_records is not None:
                stop = min(stop if stop is not None else MAX_OFFSET, start + self._max_records)
            _LOG.info("reading %s[%d] from offset %d to %s", *tp, start, stop or "the end")
            yield PartitionToRead(tp.topic, tp.partition, start, stop, deadline, len(tps))

    def _start_offsets(self, consumer: KafkaConsumerClient, tps) -> dict[TopicPartition, int]:
        if self._start == "earliest":
            return consumer.beginning_offsets(tps)
        if self._start == "latest":
            return consumer.end_offsets(tps)
        committed = consumer.committed(tps)
        missing = [tp for tp, offset in committed.items() if offset is None]
        if missing:
            fallback = (
                consumer.beginning_offsets(missing)
                if self._reset == "earliest"
                else consumer.end_offsets(missing)
            )
            committed.update(fallback)
        return committed


class _PartitionTracker(OffsetRestrictionTracker):
    """Offset tracker that only splits at the current position (checkpoints).

    A split at a fraction of ``[offset, MAX_OFFSET)`` would start a residual at an offset that
    does not exist yet; and checkpoint-only splits keep each partition's reads (and commits)
    in order.
    """

    def try_split(self, fraction_of_remainder: float):
        if fraction_of_remainder != 0:
            return None
        return super().try_split(0)

    def is_bounded(self) -> bool:
        return self.current_restriction().stop < MAX_OFFSET


class _PartitionRestrictions(RestrictionProvider):
    def initial_restriction(self, element: PartitionToRead) -> OffsetRange:
        stop = element.stop_offset if element.stop_offset is not None else MAX_OFFSET
        return OffsetRange(element.start_offset, stop)

    def create_tracker(self, restriction: OffsetRange) -> _PartitionTracker:
        return _PartitionTracker(restriction)

    def restriction_size(self, element: PartitionToRead, restriction: OffsetRange) -> float:
        # An unbounded partition's true backlog is unknown here; keep it small and equal.
        return float(restriction.size()) if restriction.stop < MAX_OFFSET else 1.0

    def truncate(self, element: PartitionToRead, restriction: OffsetRange):
        # On drain, an unbounded partition stops at its last checkpoint.
        return restriction if restriction.stop < MAX_OFFSET else None


def _event_time(record: KafkaRecord) -> Timestamp:
    if record.timestamp_ms < 0:
        return Timestamp.now()
    return Timestamp(micros=record.timestamp_ms * 1000)


def _advance(watermark: ManualWatermarkEstimator, to: Timestamp) -> None:
    current = watermark.current_watermark()
    if current is None or to > current:
        watermark.set_watermark(to)


class _SharedWatermarks:
    """One watermark for all partitions of a read in this process: the least of theirs.

    Prism (seen on 2.77) takes a stage's output watermark from the residuals of the bundle
    that finished last, not the least over every restriction still pending or in progress.
    When it splits the partitions of a slow first bundle into concurrent bundles, the
    watermark one partition reports (its records, or "now" minus the idle lag) overtakes
    records another partition has not emitted yet, or emitted in a bundle not yet finished,
    and those are dropped downstream as late. Every partition of a read reporting the least
    watermark of them all (and none until each has set one) keeps any one bundle's estimate
    below what the others still hold. Sound only where every partition of the read is read
    in this process: Prism's one SDK harness, not a runner with several workers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks: dict[str, dict[TopicPartition, Timestamp]] = {}

    def advance(
        self, read_id: str, part: PartitionToRead, estimator: ManualWatermarkEstimator, to
    ) -> None:
        """Records ``to`` as ``part``'s watermark and advances ``estimator`` to the least
        watermark of the read's partitions, once every one of them has one."""
        with self._lock:
            marks = self._marks.setdefault(read_id, {})
            tp = part.topic_partition
            if tp not in marks or to > marks[tp]:
                marks[tp] = to
            if len(marks) < part.partitions:
                return
            least = min(marks.values())
        _advance(estimator, least)


SHARED_WATERMARKS = _SharedWatermarks()

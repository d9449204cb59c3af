"""The record type both Kafka clients return, and a topic-partition name.

Example:
    >>> r = KafkaRecord("events", 0, 41, 1_700_000_000_000, b"k", b'{"x": 1}')
    >>> r.topic_partition, r.timestamp
    (TopicPartition(topic='events', partition=0), 1700000000.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

Headers = tuple[tuple[str, "bytes | None"], ...]


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One Kafka record, as consumed (or to be produced).

    Attributes:
        topic: topic name.
        partition: partition number.
        offset: offset within the partition (-1 for a record not yet produced).
        timestamp_ms: the record's timestamp in milliseconds since the epoch (-1 if none).
        key: key bytes, or None.
        value: value bytes (None for a tombstone).
        headers: ``(name, value bytes)`` pairs, in order.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def timestamp(self) -> float | None:
        """Seconds since the epoch, or None when the record has no timestamp."""
        return self.timestamp_ms / 1000.0 if self.timestamp_ms >= 0 else None


def next_offsets(records: Iterable[KafkaRecord]) -> dict[TopicPartition, int]:
    """The offset to commit after ``records``: per partition, one past the highest offset."""
    last: dict[tuple[str, int], int] = {}
    get = last.get
    for r in records:
        where = (r.topic, r.partition)
        if r.offset >= get(where, -1):
            last[where] = r.offset
    return {TopicPartition(t, p): o + 1 for (t, p), o in last.items()}

"""Read and write Kafka records in Beam pipelines, in Python, with either Kafka client.

:class:`ReadKafkaRecords` is a splittable DoFn over topic partitions: one element per
partition (discovered when the pipeline starts), an ``OffsetRange`` restriction claimed one
record offset at a time, a watermark from record timestamps (moved on to "now" when a
partition is idle, so windows close on quiet partitions), self-checkpoints every
``max_bundle_seconds`` or when a poll comes back empty, and consumer-group offsets committed
by a bundle finalizer, i.e. only once the runner has made the bundle's output durable
(at-least-once). Tested here on the FnApiRunner, Prism (batch and streaming) and Flink.

Broker outages: a Kafka client error while reading (the broker is down, a request times out)
does not fail the bundle, which on Prism would fail the whole job: the partition's consumer is
closed and the rest of the restriction deferred with a backoff (0.5 s doubling to 10 s), then
read from the first unclaimed offset by a fresh consumer (metric ``read_client_errors``). An
error that is not an outage and repeats at the same offset (a record the client cannot decode)
is not retried forever: after five in a row the bundle fails with a message naming the offset,
and nothing past it is committed. Offset
commits run in a background thread (:class:`_OffsetCommitter`): a failed or stuck commit is
retried and counted (metric ``commit_failures``), never raised into the finalizer; until it
succeeds a restarted job re-reads those records (duplicates, never losses).

Runner notes (Beam 2.62):

* Flink's portable runner refuses bundle finalization in batch mode (apache/beam#19526): a
  bounded read that commits raises a ValueError at construction on Flink without
  ``--streaming``; pass ``commit_offsets=False`` there. In streaming mode Flink runs the
  finalizers, hence the commits, only when a checkpoint completes
  (``--checkpointing_interval``), and needs ``--finish_bundle_before_checkpointing``: without
  it, a bundle open at a checkpoint keeps its output until the step's next input, which the
  one-element partition-listing step never gets (no output at all; see deploy/flink/README).
* On FnApiRunner and Prism the finalizer runs right after each bundle.

Unbounded by default; ``bounded=True`` stops every partition at the end offset it had when
the pipeline started, ``max_records_per_partition`` after that many offsets, ``max_seconds``
after that much wall time (any of them makes the read bounded, for batch runs and tests).

:class:`WriteKafkaRecords` produces ``(key, value[, headers])`` tuples, :class:`KafkaRecord`
objects or lists of either, with one producer per DoFn instance, flushed at the end of each
bundle. A failed flush sends the bundle again with a new producer (duplicates, not losses)
until ``retry_timeout_s``; only then does the bundle fail (for the runner to retry it). With
``max_message_bytes``, a message larger than that is never sent (the broker would refuse it, and
the bundle, with every partition in it, would fail on every retry): it is counted
(``records_too_large``) and emitted on the transform's output for the pipeline to dead-letter.

:func:`java_read` / :func:`java_write` are Beam's cross-language Java KafkaIO with the same
config, expanded by :func:`java_expansion_service` from the local classpath and run, without
Docker, in a local :class:`JavaWorkerPool` (an ``EXTERNAL`` environment).

Example:
    >>> read = ReadKafkaRecords(                                        # doctest: +SKIP
    ...     "events", {"bootstrap.servers": "127.0.0.1:9092", "group.id": "scorers"},
    ...     client="confluent")
    >>> with beam.Pipeline(options=options) as p:                       # doctest: +SKIP
    ...     batches = p | read                        # PCollection[list[KafkaRecord]]
    ...     _ = (batches | beam.FlatMap(lambda b: [(r.key, r.value) for r in b])
    ...          | WriteKafkaRecords("copy", {"bootstrap.servers": "127.0.0.1:9092"}))
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import pickle
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.coders.coder_impl import StreamCoderImpl
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms import window
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp

from ae_pipeline.kafka import (
    DEFAULT_CLIENT,
    BrokerUnreachableError,
    DeliveryError,
    KafkaClientError,
    KafkaConfig,
    KafkaConsumerClient,
    KafkaProducerClient,
    KafkaRecord,
    TopicPartition,
    create_consumer,
    create_producer,
)
from ae_pipeline.kafka.client import _module as _client_module

_LOG = logging.getLogger(__name__)

MAX_OFFSET = 2**63 - 1
"""The end of an unbounded partition's restriction (Java's ``Long.MAX_VALUE``)."""

STARTS = ("committed", "earliest", "latest")
_NAMESPACE = "ae_pipeline.kafka"


class _KafkaRecordCoderImpl(StreamCoderImpl):
    def encode_to_stream(self, r: KafkaRecord, out: Any, nested: bool) -> None:
        fields = (r.topic, r.partition, r.offset, r.timestamp_ms, r.key, r.value, r.headers)
        out.write(pickle.dumps(fields, protocol=5), nested)

    def decode_from_stream(self, in_stream: Any, nested: bool) -> KafkaRecord:
        return KafkaRecord(*pickle.loads(in_stream.read_all(nested)))


class KafkaRecordCoder(beam.coders.Coder):
    """Coder for :class:`KafkaRecord`: a pickled tuple of its fields, about 2x faster than
    Beam's fallback coder (which pickles the dataclass), also inside ``list[KafkaRecord]``.
    Registered for ``KafkaRecord`` when this module is imported."""

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
    """

    topic: str
    partition: int
    start_offset: int
    stop_offset: int | None = None
    deadline: float | None = None

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
            yield PartitionToRead(tp.topic, tp.partition, start, stop, deadline)

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


_RETRY_FIRST_S = 0.5
"""First wait after a Kafka client error (doubled after each further error in a row)."""
_RETRY_MAX_S = 10.0
"""Longest wait between retries after Kafka client errors."""
_MAX_STUCK_ERRORS = 5
"""Read errors in a row at one offset (not a broker outage) before the read gives up."""
_FINALIZE_WAIT_S = 5.0
"""Longest a bundle finalizer waits for its offsets' commit."""
_COMMIT_STUCK_S = 45.0
"""A commit unanswered this long is given up and retried by a fresh thread and consumer
(longer than kafka-python's 30 s bootstrap timeout)."""


class _OffsetCommitter:
    """Commits finalized offsets from a background thread, latest offset per partition first.

    A bundle finalizer hands the offset over (:meth:`offer`) and waits a bounded time: a
    commit that blocks or fails while the broker is down must neither hold up nor break the
    runner's finalization. A failed commit is counted (:meth:`take_failures`, reported as the
    metric ``commit_failures`` by the reading DoFn, since Beam metrics only count in bundle
    threads), logged without secrets, and retried with a backoff together with any later
    offsets. A commit still unanswered after ``_COMMIT_STUCK_S`` (a client can wait forever
    on a coordinator lost in an outage) is abandoned with its thread and consumer, and its
    offsets are committed by a fresh thread. Until a commit succeeds, a restarted job re-reads
    those records (duplicates, never losses).
    """

    def __init__(self, config: KafkaConfig, client: str):
        self._config = config
        self._client = client
        self._pending: dict[TopicPartition, int] = {}
        self._inflight: dict[TopicPartition, int] = {}
        self._inflight_since: float | None = None
        self._committed: dict[TopicPartition, int] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._generation = 0  # of the current thread; an abandoned one sees a newer number
        self._failures = 0  # failed or abandoned commits not yet reported by take_failures()

    def offer(self, tp: TopicPartition, offset: int) -> None:
        """Commit ``offset`` for ``tp`` soon (unless a later offset is committed first)."""
        with self._cond:
            known = max(
                self._committed.get(tp, -1),
                self._pending.get(tp, -1),
                self._inflight.get(tp, -1),
            )
            if offset <= known:
                return  # a later bundle already got further
            self._pending[tp] = offset
            self._check_thread()
            self._cond.notify_all()

    def _check_thread(self) -> None:
        """(Re)start the committing thread when there is none or its commit is stuck."""
        stuck = (
            self._inflight_since is not None
            and time.monotonic() - self._inflight_since > _COMMIT_STUCK_S
        )
        if stuck:
            _LOG.warning(
                "a commit of group %s got no answer in %.0fs: retrying it with a new consumer",
                self._config.group_id,
                _COMMIT_STUCK_S,
            )
            self._failures += 1
            for tp, offset in self._inflight.items():
                self._pending[tp] = max(offset, self._pending.get(tp, -1))
            self._inflight, self._inflight_since = {}, None
        if self._thread is None or stuck:
            self._generation += 1
            self._thread = threading.Thread(
                target=self._run,
                args=(self._generation,),
                name="kafka-offset-committer",
                daemon=True,
            )
            self._thread.start()

    def take_failures(self) -> int:
        """Failed commits since the last call (and a restart of a stuck commit, if due)."""
        with self._cond:
            if self._thread is not None:
                self._check_thread()
            failures, self._failures = self._failures, 0
            return failures

    def wait(self, tp: TopicPartition, offset: int, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` until ``offset`` (or a later one) is committed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._committed.get(tp, -1) < offset:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
            return True

    def _run(self, generation: int) -> None:
        consumer: KafkaConsumerClient | None = None
        failures = 0
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        if generation != self._generation:
                            return
                        self._cond.wait()
                    if generation != self._generation or not self._pending:
                        return  # abandoned, or closed with nothing left
                    batch, self._pending = self._pending, {}
                    self._inflight, self._inflight_since = batch, time.monotonic()
                try:
                    if consumer is None:
                        consumer = create_consumer(self._config, self._client)
                    consumer.commit(batch)
                except KafkaClientError as e:
                    failures += 1
                    delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2 ** (failures - 1))
                    # A group coordinator that is still starting up (a new group, a fresh
                    # broker) answers the first commit with NotCoordinator: routine, retried.
                    starting = failures == 1 and "coordinator" in str(e).lower()
                    _LOG.log(
                        logging.INFO if starting else logging.WARNING,
                        "committing offsets of group %s failed (%d in a row), retrying in "
                        "%.1fs: %s",
                        self._config.group_id,
                        failures,
                        delay,
                        e,  # scrubbed of secrets by the client layer
                    )
                    _close_quietly(consumer)
                    consumer = None
                    with self._cond:
                        if generation != self._generation:
                            return  # abandoned meanwhile: the new thread has the offsets
                        self._failures += 1
                        self._inflight, self._inflight_since = {}, None
                        for tp, offset in batch.items():  # retried with anything newer
                            self._pending[tp] = max(offset, self._pending.get(tp, -1))
                        if self._closed:
                            return  # the records are re-read after a restart (duplicates)
                        self._cond.notify_all()
                        self._cond.wait(delay)
                    continue
                failures = 0
                with self._cond:
                    for tp, offset in batch.items():
                        self._committed[tp] = max(offset, self._committed.get(tp, -1))
                    if generation == self._generation:
                        self._inflight, self._inflight_since = {}, None
                    self._cond.notify_all()
                _LOG.debug("committed %s for group %s", batch, self._config.group_id)
        finally:
            _close_quietly(consumer)

    def close(self, timeout_s: float = 10.0) -> None:
        """Commit what is pending (one try, waiting at most ``timeout_s``) and stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)  # a thread stuck on a lost broker ends with the process


def _nothing_to_finalize() -> None:
    """The finalization of a bundle that read nothing."""


def _close_quietly(client: Any) -> None:
    if client is not None:
        try:
            client.close()
        except Exception as e:  # closing is best effort
            _LOG.warning("closing a Kafka client failed: %s", e)


class _ReadPartitionsFn(beam.DoFn):
    """Reads the claimed offsets of one partition per call (bounded restrictions)."""

    def __init__(self, config: KafkaConfig, client: str, options: dict[str, Any]):
        self._config = config
        self._client = client
        self._batch = options["batch"]
        self._max_batch = options["max_batch_size"]
        self._poll_timeout = options["poll_timeout_s"]
        self._bundle_seconds = options["max_bundle_seconds"]
        self._idle_lag = Duration.of(options["idle_watermark_lag_s"])
        self._max_consumers = options["max_cached_consumers"]
        self._records = Metrics.counter(_NAMESPACE, "records_read")
        self._polls = Metrics.counter(_NAMESPACE, "polls")
        self._read_errors = Metrics.counter(_NAMESPACE, "read_client_errors")
        self._commit_failures = Metrics.counter(_NAMESPACE, "commit_failures")

    def setup(self) -> None:
        # One consumer per recently read partition (LRU), positioned where the last call ended.
        self._consumers: collections.OrderedDict[TopicPartition, KafkaConsumerClient] = (
            collections.OrderedDict()
        )
        self._positions: dict[TopicPartition, int] = {}
        self._failures: dict[TopicPartition, int] = {}  # client errors in a row, per partition
        self._stuck: dict[TopicPartition, tuple[int, int]] = {}  # (offset, errors there in a row)
        self._committer: _OffsetCommitter | None = None

    def teardown(self) -> None:
        for tp in list(self._consumers):
            self._evict(tp)
        if self._committer is not None:
            self._committer.close()
            self._committer = None

    def _evict(self, tp: TopicPartition) -> None:
        self._positions.pop(tp, None)
        _close_quietly(self._consumers.pop(tp, None))

    def _consumer_at(self, tp: TopicPartition, offset: int) -> KafkaConsumerClient:
        consumer = self._consumers.pop(tp, None)
        if consumer is None:
            while len(self._consumers) >= self._max_consumers:
                self._evict(next(iter(self._consumers)))
            consumer = create_consumer(
                self._config.with_group(None), self._client, max_poll_records=self._max_batch
            )
        self._consumers[tp] = consumer
        if self._positions.get(tp) != offset:
            consumer.assign({tp: offset})
            self._positions[tp] = offset
        return consumer

    def _emit(self, records: list[KafkaRecord]) -> Iterator[window.TimestampedValue]:
        if self._batch:
            yield window.TimestampedValue(records, max(_event_time(r) for r in records))
        else:
            for r in records:
                yield window.TimestampedValue(r, _event_time(r))

    def _read(self, part: PartitionToRead, tracker, watermark, finalizer) -> Iterator[Any]:
        if finalizer is not None:
            # Every bundle asks for finalization, also one that read nothing: Prism 2.62 sends
            # the finalize request for such a bundle anyway, and the SDK harness, which had
            # released it, logs "Bundle is not in a finalizable state" tracebacks.
            finalizer.register(_nothing_to_finalize)
        restriction = tracker.current_restriction()
        if restriction.start >= restriction.stop:
            return
        tp = part.topic_partition
        if self._committer is not None:
            self._commit_failures.inc(self._committer.take_failures())
        call_ends = time.monotonic() + self._bundle_seconds
        expected = restriction.start  # next offset to claim
        try:
            consumer = self._consumer_at(tp, restriction.start)
            while True:
                stop = tracker.current_restriction().stop
                if part.deadline is not None and time.time() >= part.deadline:
                    tracker.try_claim(stop)  # fails: marks the restriction done
                    return
                records = consumer.poll(self._poll_timeout, self._max_batch)
                self._polls.inc()
                self._failures.pop(tp, None)
                if not records:
                    if consumer.position(tp) >= stop:  # offsets up to stop hold no records
                        tracker.try_claim(stop)
                        return
                    _advance(watermark, Timestamp.now() - self._idle_lag)
                    tracker.defer_remainder(Duration.of(0))
                    return
                self._positions[tp] = records[-1].offset + 1
                claimed = []
                for record in records:
                    if record.offset < expected:
                        continue  # already claimed (never expected after a seek)
                    if not tracker.try_claim(record.offset):
                        break
                    claimed.append(record)
                    expected = record.offset + 1
                if claimed:
                    self._records.inc(len(claimed))
                    yield from self._emit(claimed)
                    _advance(watermark, max(_event_time(r) for r in claimed))
                if records[-1].offset >= stop - 1:
                    return  # claimed stop - 1, or a claim past stop failed: done
                if time.monotonic() >= call_ends:
                    tracker.defer_remainder(Duration.of(0))
                    return
        except KafkaClientError as e:
            # The broker is unreachable (or the request failed): nothing to read now. What was
            # claimed so far is emitted (and committed once durable); the rest is resumed later
            # from `expected` by a fresh consumer, so a broker outage never fails the bundle.
            self._evict(tp)
            failures = self._failures[tp] = self._failures.get(tp, 0) + 1
            delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2 ** (failures - 1))
            self._read_errors.inc()
            self._give_up_on_a_stuck_offset(tp, expected, e)
            # The message is scrubbed of secrets by the client layer.
            _LOG.warning(
                "reading %s[%d] at offset %d failed (%d in a row), retrying in %.1fs: %s",
                *tp,
                expected,
                failures,
                delay,
                e,
            )
            tracker.defer_remainder(Duration.of(delay))
            return
        except Exception:
            self._evict(tp)  # a failed consumer is not reused by the retry
            raise
        finally:
            _LOG.debug("read %s[%d] offsets [%d, %d)", *tp, restriction.start, expected)
            if finalizer is not None and expected > restriction.start:
                finalizer.register(functools.partial(self._commit_offset, tp, expected))

    def _give_up_on_a_stuck_offset(self, tp: TopicPartition, offset: int, error: Exception) -> None:
        """Raises once reading ``tp`` has failed ``_MAX_STUCK_ERRORS`` times in a row at the
        same ``offset`` with an error that is not a broker outage (e.g. a record whose
        compression codec the client cannot decode): retrying it forever would hold the
        partition, and its commits, without a word. An outage keeps being retried."""
        if _outage(error):
            self._stuck.pop(tp, None)
            return
        at, count = self._stuck.get(tp, (offset, 0))
        count = count + 1 if at == offset else 1
        self._stuck[tp] = (offset, count)
        if count >= _MAX_STUCK_ERRORS:
            self._stuck.pop(tp, None)
            raise RuntimeError(
                f"cannot read {tp.topic}[{tp.partition}] at offset {offset}: the same error "
                f"{count} times in a row, not an outage (does the client support the topic's "
                f"compression codec?): {error}"
            ) from None

    def _commit_offset(self, tp: TopicPartition, offset: int) -> None:
        """Commit once the runner made the bundle durable (the bundle finalizer).

        The commit itself runs in :class:`_OffsetCommitter`'s thread; this waits for it at
        most ``_FINALIZE_WAIT_S`` (so that a healthy commit is done when the bundle is) and
        never fails: with the broker down the committer keeps retrying in the background.
        """
        if self._committer is None:
            self._committer = _OffsetCommitter(self._config, self._client)
        self._committer.offer(tp, offset)
        self._committer.wait(tp, offset, _FINALIZE_WAIT_S)

    def process(
        self,
        part: PartitionToRead,
        tracker=beam.DoFn.RestrictionParam(_PartitionRestrictions()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        yield from self._read(part, tracker, watermark, None)


# Four variants of one read, because runners look at the process signature: a bundle
# finalizer parameter (needed to commit offsets) is refused by Flink's batch mode, and
# unbounded_per_element marks the output unbounded.


class _CommittingReadPartitionsFn(_ReadPartitionsFn):
    """:class:`_ReadPartitionsFn` that commits offsets once bundles are durable."""

    def process(
        self,
        part: PartitionToRead,
        finalizer=beam.DoFn.BundleFinalizerParam,  # first: Beam passes it by position
        tracker=beam.DoFn.RestrictionParam(_PartitionRestrictions()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        yield from self._read(part, tracker, watermark, finalizer)


class _UnboundedReadPartitionsFn(_ReadPartitionsFn):
    """:class:`_ReadPartitionsFn` for unbounded restrictions."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        part: PartitionToRead,
        tracker=beam.DoFn.RestrictionParam(_PartitionRestrictions()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        yield from self._read(part, tracker, watermark, None)


class _UnboundedCommittingReadPartitionsFn(_ReadPartitionsFn):
    """:class:`_CommittingReadPartitionsFn` for unbounded restrictions."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        part: PartitionToRead,
        finalizer=beam.DoFn.BundleFinalizerParam,
        tracker=beam.DoFn.RestrictionParam(_PartitionRestrictions()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        yield from self._read(part, tracker, watermark, finalizer)


_READ_FNS = {
    (True, False): _ReadPartitionsFn,
    (True, True): _CommittingReadPartitionsFn,
    (False, False): _UnboundedReadPartitionsFn,
    (False, True): _UnboundedCommittingReadPartitionsFn,
}


class ReadKafkaRecords(beam.PTransform):
    """Read Kafka topics as a splittable DoFn over their partitions.

    Emits ``list[KafkaRecord]`` (one list per poll of one partition, timestamped with its
    latest record) or, with ``batch=False``, single :class:`KafkaRecord` elements timestamped
    with their own Kafka timestamps.

    Args:
        topics: one topic or several.
        config: a :class:`KafkaConfig` or one config dict (see :meth:`KafkaConfig.from_dict`).
        client: ``"kafka-python"`` (default, pure Python) or ``"confluent"`` (fast).
        start: ``"committed"`` (the group's offsets; default when the config has a group),
            ``"earliest"`` (default without a group) or ``"latest"``.
        reset: where ``"committed"`` starts a partition the group never committed:
            ``"earliest"`` or ``"latest"``.
        bounded: stop each partition at the end offset it had when the read started.
        max_records_per_partition: stop each partition after this many offsets (makes the
            read bounded; on compacted or transactional topics offsets are not all records).
        max_seconds: stop every partition this long after the read started (makes the read
            bounded).
        batch: emit one list per poll (default) rather than one element per record.
        max_batch_size: most records per poll (and per list).
        poll_timeout_s: how long one poll waits for records.
        max_bundle_seconds: a partition's read checkpoints after this long, so that its output
            moves on downstream and its offsets get committed.
        commit_offsets: commit the group's offsets once each bundle's output is durable
            (default: when the config has a group id).
        idle_watermark_lag_s: on an empty poll the partition's watermark moves to now minus
            this lag (records produced later with older timestamps would be late).
        max_cached_consumers: consumers (one per partition) each DoFn instance keeps open.
        redistribute: reshuffle the partitions before reading them, so that runners spread
            them over workers (default: yes, except on Prism, whose one local worker gains
            nothing from it and which, on Beam 2.62, finalizes the bundles of the step the
            reshuffle cuts off, making the SDK harness log "Bundle is not in a finalizable
            state" tracebacks).
    """

    def __init__(
        self,
        topics: str | Sequence[str],
        config: KafkaConfig | Mapping[str, Any],
        *,
        client: str = DEFAULT_CLIENT,
        start: str | None = None,
        reset: str = "earliest",
        bounded: bool = False,
        max_records_per_partition: int | None = None,
        max_seconds: float | None = None,
        batch: bool = True,
        max_batch_size: int = 500,
        poll_timeout_s: float = 0.5,
        max_bundle_seconds: float = 1.0,
        commit_offsets: bool | None = None,
        idle_watermark_lag_s: float = 2.0,
        max_cached_consumers: int = 16,
        redistribute: bool | None = None,
    ):
        super().__init__()
        self._config = KafkaConfig.from_dict(config)
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        if not self._topics:
            raise ValueError("no topics to read")
        _client_module(client)  # fail now, not on a worker, for an unknown/missing client
        has_group = self._config.group_id is not None
        start = start or ("committed" if has_group else "earliest")
        if start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, not {start!r}")
        if reset not in ("earliest", "latest"):
            raise ValueError(f"reset must be 'earliest' or 'latest', not {reset!r}")
        commit_offsets = has_group if commit_offsets is None else commit_offsets
        if (start == "committed" or commit_offsets) and not has_group:
            raise ValueError("start='committed' and commit_offsets need group_id in the config")
        self._client = client
        self._start, self._reset = start, reset
        self._bounded = bounded
        self._max_records = max_records_per_partition
        self._max_seconds = max_seconds
        self._redistribute = redistribute
        self._options = {
            "batch": batch,
            "max_batch_size": max_batch_size,
            "poll_timeout_s": poll_timeout_s,
            "max_bundle_seconds": max_bundle_seconds,
            "commit_offsets": commit_offsets,
            "idle_watermark_lag_s": idle_watermark_lag_s,
            "max_cached_consumers": max_cached_consumers,
        }

    @property
    def is_bounded(self) -> bool:
        """Whether every partition's read ends (and so the output PCollection is bounded)."""
        return self._bounded or self._max_records is not None or self._max_seconds is not None

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        discover = _DiscoverPartitions(
            self._config,
            self._client,
            self._topics,
            self._start,
            self._reset,
            self._bounded,
            self._max_records,
            self._max_seconds,
        )
        parts = pbegin | "Impulse" >> beam.Impulse() | "Partitions" >> beam.ParDo(discover)
        redistribute = self._redistribute
        if redistribute is None:
            redistribute = not _is_prism(pbegin.pipeline.options)
        if redistribute:
            parts = parts | "Redistribute" >> beam.Reshuffle()
        commit = self._options["commit_offsets"]
        if commit and self.is_bounded and _is_flink_batch(pbegin.pipeline.options):
            raise ValueError(
                "Flink's portable runner has no bundle finalization in batch mode "
                "(apache/beam#19526), so a bounded read cannot commit offsets there: pass "
                "commit_offsets=False, or run with --streaming"
            )
        fn_class = _READ_FNS[self.is_bounded, commit]
        read = beam.ParDo(fn_class(self._config, self._client, self._options))
        output_type = list[KafkaRecord] if self._options["batch"] else KafkaRecord
        return parts | "Read" >> read.with_output_types(output_type)

    def display_data(self) -> dict[str, Any]:
        return {
            "topics": ",".join(self._topics),
            "bootstrap_servers": self._config.bootstrap_servers,
            "group_id": self._config.group_id or "",
            "client": self._client,
            "start": self._start,
            "bounded": self.is_bounded,
        }


def _is_prism(options: PipelineOptions | None) -> bool:
    if options is None:
        return False
    return "prism" in str(options.view_as(StandardOptions).runner or "").lower()


def _is_flink_batch(options: PipelineOptions | None) -> bool:
    if options is None:
        return False
    runner = options.view_as(StandardOptions).runner or ""
    return "flink" in str(runner).lower() and not options.view_as(StandardOptions).streaming


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


_TRANSIENT = (
    "timed out",
    "timeout",
    "not acknowledged",
    "expired",
    "connection",
    "transport",
    "bootstrap",
    "disconnect",
    "notleader",
    "not leader",
    "leadernotavailable",
    "leader not available",
    "network",
    "notenoughreplicas",
    "not enough replicas",
    "all brokers down",
)
"""What the errors of an unreachable or restarting broker say (either client), lower case."""


def _outage(error: Exception) -> bool:
    """Whether a read error may be the broker's or the network's (retried for as long as it
    lasts) rather than one record's (given up on after a few tries at the same offset)."""
    if isinstance(error, BrokerUnreachableError) or _transient(error):
        return True
    text = str(error).lower()
    return any(word in text for word in _OUTAGE_WORDS)


_OUTAGE_WORDS = ("broker", "unreachable", "metadata", "coordinator", "leader", "connect", "auth")


def _too_large(error: KafkaClientError) -> bool:
    """Whether a delivery failed because a message was over a broker's or producer's limit."""
    reasons = [r for _, _, r in getattr(error, "errors", ())] or [str(error)]
    return any(
        word in reason.lower().replace("_", "")
        for reason in reasons
        for word in ("toolarge", "too large", "msgsizetoolarge", "messagesizetoolarge")
    )


def message_size(message: tuple[str, Any, Any, Any]) -> int:
    """Bytes of a ``(topic, key, value, headers)`` message as a limit counts them: key, value
    and each header's name and value."""
    _, key, value, headers = message
    size = len(key or b"") + len(value or b"")
    for name, header in headers:
        size += len(name) + len(header or b"")
    return size


def _transient(error: KafkaClientError) -> bool:
    """Whether sending again may help: every failure looks like an unreachable or restarting
    broker (a record too large, a missing permission, ... fail the bundle at once)."""
    reasons = [r for _, _, r in getattr(error, "errors", ())] or [str(error)]
    return all(any(word in reason.lower() for word in _TRANSIENT) for reason in reasons)


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
        self._written = Metrics.counter(_NAMESPACE, "records_written")
        self._retries = Metrics.counter(_NAMESPACE, "write_retries")
        self._too_large = Metrics.counter(_NAMESPACE, "records_too_large")

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
                if time.monotonic() >= deadline or not _transient(e):
                    if _too_large(e):
                        _LOG.error(
                            "the broker refused a message as too large: set max_message_bytes "
                            "(ae-pipeline stream: --max_message_bytes) under the topic's "
                            "max.message.bytes and the producer's message.max.bytes / "
                            "max.request.size"
                        )
                    raise  # the runner retries the bundle
                delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2 ** (attempt - 1))
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
        _close_quietly(producer)


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
        _client_module(client)
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


# --- Beam's cross-language (Java) KafkaIO, expanded from the local classpath ---------------

# Jars the Java SDK harness needs beyond the expansion service's classpath: jamm is a
# "provided" dependency of beam-sdks-java-harness (NoClassDefFoundError without it), and
# slf4j-api 2.x lets the classpath's slf4j-jdk14 2.x binding log (1.7.30 there makes it NOP).
_HARNESS_EXTRAS = {
    "jamm-0.4.0.jar": "com/github/jbellis/jamm/0.4.0",
    "slf4j-api-2.0.16.jar": "org/slf4j/slf4j-api/2.0.16",
}


def _harness_extra_jars() -> list[str]:
    from ae_pipeline.local.paths import LocalToolMissing, classpath_dir

    m2 = Path(os.environ.get("MAVEN_REPOSITORY", Path.home() / ".m2" / "repository"))
    found = []
    for name, folder in _HARNESS_EXTRAS.items():
        candidates = [classpath_dir("expansion") / "lib" / name, m2 / folder / name]
        jar = next((c for c in candidates if c.exists()), None)
        if jar is None and name.startswith("jamm"):
            raise LocalToolMissing(
                f"{name} is needed by the Java SDK harness; run `mvn dependency:get "
                "-Dartifact=com.github.jbellis:jamm:0.4.0` (or add it to "
                "deploy/local/expansion/pom.xml)"
            )
        if jar is not None:
            found.append(str(jar))
    return found


class JavaWorkerPool:
    """A local Java SDK worker pool for the ``EXTERNAL`` environment of Java transforms.

    Cross-language transforms run in a Java SDK harness; runners start it in Docker unless
    the environment is ``EXTERNAL``. This starts Beam's ``ExternalWorkerService`` from the
    expansion service's classpath (which holds KafkaIO and the Kafka client), so that Prism
    and Flink can run Java KafkaIO here without Docker.

    Example:
        >>> with JavaWorkerPool() as pool:                              # doctest: +SKIP
        ...     service = java_expansion_service(pool.address)
    """

    def __init__(self, startup_timeout_s: float = 60.0):
        self.startup_timeout_s = startup_timeout_s
        self.address: str | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> JavaWorkerPool:
        """Start the pool and wait until it accepts connections.

        Raises:
            ae_pipeline.local.paths.LocalToolMissing: without the classpath or jamm.
            RuntimeError: when the pool exits or does not listen in time.
        """
        from ae_pipeline.local.kafka_broker import free_port
        from ae_pipeline.local.paths import classpath, logs_dir

        port = free_port()
        self.address = f"localhost:{port}"
        options = {"options": {"environmentOptions": [f"external_service_address={self.address}"]}}
        self.log_path = logs_dir() / f"java-worker-pool-{port}.log"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    "java",
                    "-cp",
                    os.pathsep.join([*_harness_extra_jars(), classpath("expansion")]),
                    "org.apache.beam.fn.harness.ExternalWorkerService",
                ],
                env={**os.environ, "PIPELINE_OPTIONS": json.dumps(options)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the Java worker pool exited; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Java worker pool did not listen on {self.address}")

    def stop(self) -> None:
        """Stop the pool (and every Java SDK harness it runs)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=20)
        self._proc = None

    def __enter__(self) -> JavaWorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def java_expansion_service(worker_pool_address: str | None = None):
    """Beam's Java expansion service (KafkaIO included) started from the local classpath.

    Args:
        worker_pool_address: a :class:`JavaWorkerPool` address; the expanded Java transforms
            then run in that ``EXTERNAL`` environment instead of the Docker default.
    """
    from apache_beam.transforms.external import JavaJarExpansionService

    from ae_pipeline.local.paths import launcher_jar

    args = ["{{PORT}}"]
    if worker_pool_address:
        args += [
            "--defaultEnvironmentType=EXTERNAL",
            f"--defaultEnvironmentConfig={worker_pool_address}",
        ]
    return JavaJarExpansionService(str(launcher_jar("expansion")), extra_args=args)


def java_read(
    topics: str | Sequence[str],
    config: KafkaConfig | Mapping[str, Any],
    expansion_service: Any,
    *,
    start: str = "earliest",
    max_num_records: int | None = None,
    commit_offsets: bool = False,
    with_metadata: bool = False,
) -> beam.PTransform:
    """Beam's cross-language ``ReadFromKafka`` with our config (Java client properties).

    Emits ``(key, value)`` bytes pairs, or Beam Rows with topic/partition/offset/timestamp
    with ``with_metadata=True``. The config, secrets included, travels in the pipeline
    definition (the Java transform's payload): runners may show it.

    Args:
        topics: one topic or several.
        config: a :class:`KafkaConfig` or one config dict.
        expansion_service: from :func:`java_expansion_service`.
        start: ``"earliest"`` or ``"latest"`` (Kafka's ``auto.offset.reset``; a group with
            committed offsets starts there).
        max_num_records: stop after this many records (a bounded read).
        commit_offsets: commit the group's offsets in bundle finalization.
        with_metadata: emit Rows with the records' metadata.
    """
    from apache_beam.io.kafka import ReadFromKafka

    config = KafkaConfig.from_dict(config)
    return ReadFromKafka(
        consumer_config={**config.java_properties(), "auto.offset.reset": start},
        topics=[topics] if isinstance(topics, str) else list(topics),
        max_num_records=max_num_records,
        commit_offset_in_finalize=commit_offsets,
        with_metadata=with_metadata,
        expansion_service=expansion_service,
    )


def java_write(
    topic: str, config: KafkaConfig | Mapping[str, Any], expansion_service: Any
) -> beam.PTransform:
    """Beam's cross-language ``WriteToKafka``; takes ``(key, value)`` bytes pairs (declare
    ``.with_output_types(tuple[bytes, bytes])`` on the input). See :func:`java_read`."""
    from apache_beam.io.kafka import WriteToKafka

    properties = KafkaConfig.from_dict(config).with_group(None).java_properties()
    return WriteToKafka(
        producer_config=properties, topic=topic, expansion_service=expansion_service
    )

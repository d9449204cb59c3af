"""Read Kafka records in Beam pipelines, in Python, with either Kafka client.

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
* Prism (2.77) takes a step's output watermark from the residuals of the bundle that finished
  last, and splits a slow first bundle's partitions into concurrent bundles: one partition's
  watermark then overtook records other partitions had not emitted yet, which windows
  downstream dropped as late. On Prism an unbounded read therefore reports, from every
  partition, the least watermark of all its partitions (``shared_watermark``; Prism's one SDK
  harness reads them all in one process).

Unbounded by default; ``bounded=True`` stops every partition at the end offset it had when
the pipeline started, ``max_records_per_partition`` after that many offsets, ``max_seconds``
after that much wall time (any of them makes the read bounded, for batch runs and tests).

Example:
    >>> read = ReadKafkaRecords(                                        # doctest: +SKIP
    ...     "events", {"bootstrap.servers": "127.0.0.1:9092", "group.id": "scorers"},
    ...     client="confluent")
    >>> with beam.Pipeline(options=options) as p:                       # doctest: +SKIP
    ...     batches = p | read                        # PCollection[list[KafkaRecord]]
"""

from __future__ import annotations

import collections
import functools
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Duration, Timestamp

from ae_pipeline.beam.kafka_commit import (
    _FINALIZE_WAIT_S,
    _MAX_STUCK_ERRORS,
    RETRY_FIRST_S,
    RETRY_MAX_S,
    _OffsetCommitter,
)
from ae_pipeline.beam.kafka_partitions import (
    SHARED_WATERMARKS,
    STARTS,
    PartitionToRead,
    _advance,
    _DiscoverPartitions,
    _event_time,
    _PartitionRestrictions,
)
from ae_pipeline.kafka import (
    DEFAULT_CLIENT,
    KafkaClientError,
    KafkaConfig,
    KafkaConsumerClient,
    KafkaRecord,
    TopicPartition,
    create_consumer,
)
from ae_pipeline.kafka.client import check_client, close_quietly
from ae_pipeline.kafka.errors import is_outage

_LOG = logging.getLogger(__name__)

NAMESPACE = "ae_pipeline.kafka"
"""The Beam metrics namespace of the Kafka read and write."""


def _nothing_to_finalize() -> None:
    """The finalization of a bundle that read nothing."""


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
        self._shared_watermark_id = options.get("shared_watermark_id")
        self._records = Metrics.counter(NAMESPACE, "records_read")
        self._polls = Metrics.counter(NAMESPACE, "polls")
        self._read_errors = Metrics.counter(NAMESPACE, "read_client_errors")
        self._commit_failures = Metrics.counter(NAMESPACE, "commit_failures")

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
        close_quietly(self._consumers.pop(tp, None))

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

    def _advance(self, part: PartitionToRead, watermark, to: Timestamp) -> None:
        if self._shared_watermark_id is None:
            _advance(watermark, to)
        else:  # Prism: the least of the read's partitions (see _SharedWatermarks)
            SHARED_WATERMARKS.advance(self._shared_watermark_id, part, watermark, to)

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
                    self._advance(part, watermark, Timestamp.now() - self._idle_lag)
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
                    self._advance(part, watermark, max(_event_time(r) for r in claimed))
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
            delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (failures - 1))
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
        if is_outage(error):
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
        shared_watermark: every partition reports the least watermark of all the read's
            partitions, which must all be read in one process (default: on Prism, for an
            unbounded read; Prism 2.77 lets the last finished bundle's watermark stand for
            the whole step, so one partition's would make another's unread records late).
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
        shared_watermark: bool | None = None,
    ):
        super().__init__()
        self._config = KafkaConfig.from_dict(config)
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        if not self._topics:
            raise ValueError("no topics to read")
        check_client(client)  # fail now, not on a worker, for an unknown/missing client
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
        self._shared_watermark = shared_watermark
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
        shared = self._shared_watermark
        if shared is None:
            shared = not self.is_bounded and _is_prism(pbegin.pipeline.options)
        # One id per application of the transform: its partitions share a watermark.
        options = {**self._options, "shared_watermark_id": uuid.uuid4().hex if shared else None}
        fn_class = _READ_FNS[self.is_bounded, commit]
        read = beam.ParDo(fn_class(self._config, self._client, options))
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

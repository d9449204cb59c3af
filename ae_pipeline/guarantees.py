"""The plain consumer's processing guarantees as objects: how a batch's outputs are sent,
confirmed and committed, and what happens when that fails.

* :class:`AtLeastOnce`: each batch's outputs are flushed (acknowledged), then its offsets
  committed (asynchronously where the client supports it, a last synchronous commit of every
  written offset at the end). A crash replays what was not committed: duplicates, never loss.
* :class:`ExactlyOnce`: the outputs of the batches of one commit interval and their offsets
  (with the group metadata of the transaction's first poll, KIP-447) are committed in one Kafka
  transaction. A failed transaction is aborted and its records read again from the committed
  offsets; a fatal one (fenced, a broken producer) takes a new producer.

:class:`~ae_pipeline.consumer.ScoringConsumer` polls and scores; its guarantee object
(:func:`guarantee_for`) does the rest, so the loop never asks which guarantee it runs.

Example:
    >>> PROCESSING_GUARANTEES
    ('at_least_once', 'exactly_once')
    >>> check_processing_guarantee("exactly_once")
    'exactly_once'
    >>> try:
    ...     check_processing_guarantee("exactly-once")
    ... except ValueError as err:
    ...     print(err)
    processing_guarantee must be one of at_least_once, exactly_once, got 'exactly-once'
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ae_pipeline.kafka import (
    KafkaClientError,
    KafkaConsumerClient,
    KafkaProducerClient,
    TopicPartition,
    TransactionError,
    close_quietly,
    create_producer,
)
from ae_pipeline.scoring_process import ScoredBatch

if TYPE_CHECKING:  # pragma: no cover
    from ae_pipeline.consumer import ScoringConsumer

_log = logging.getLogger(__name__)

AT_LEAST_ONCE = "at_least_once"
EXACTLY_ONCE = "exactly_once"
PROCESSING_GUARANTEES = (AT_LEAST_ONCE, EXACTLY_ONCE)
MAX_ABORTS_IN_A_ROW = 10
"""Transactions that may fail in a row (each aborted, its records read again) before
:meth:`ExactlyOnce.rewind` gives up with a :class:`~ae_pipeline.kafka.TransactionError`."""


@dataclass
class Polled:
    """A batch submitted to the scorer: the offsets to commit after it, and (exactly once)
    the group metadata of the generation it was read in."""

    offsets: dict[TopicPartition, int]
    group_metadata: Any = None


@dataclass
class Sent:
    """Outputs sent but not yet confirmed and committed: one batch (at least once), or the
    batches of the open transaction (exactly once: ``scored``, counted at its commit)."""

    offsets: dict[TopicPartition, int]
    scored: list[ScoredBatch] = field(default_factory=list)
    group_metadata: Any = None  # of the transaction's first poll
    opened: float = 0.0  # when the transaction began (monotonic seconds)


class Guarantee:
    """What a processing guarantee does for :class:`~ae_pipeline.consumer.ScoringConsumer`
    (``owner``: its settings, scorer and stats)."""

    name: ClassVar[str]
    isolation_level: ClassVar[str | None] = None  # what the input consumer reads

    def __init__(self, owner: ScoringConsumer) -> None:
        self.owner = owner
        self.written: dict[TopicPartition, int] = {}  # offsets whose outputs are durable

    def describe(self) -> str:
        """For the start-up log line."""
        return self.name.replace("_", " ")

    def group_metadata(self, consumer: KafkaConsumerClient) -> Any:
        """What a polled batch keeps of the consumer group's generation (None: nothing)."""
        return None

    def new_producer(self) -> KafkaProducerClient:
        """The producer of the outputs."""
        return create_producer(self.owner.config, self.owner.client)

    def poll_wait(self, in_flight: Sent | None) -> float:
        """How long a poll may wait for records with nothing in the scorer."""
        return self.owner.poll_timeout_s

    def send(
        self,
        polled: Polled,
        consumer: KafkaConsumerClient,
        producer: KafkaProducerClient,
        in_flight: Sent | None,
    ) -> Sent:
        """Collects the oldest scored batch (``polled``) and sends its outputs; returns what
        is now in flight (confirming the batch before it first where due)."""
        raise NotImplementedError

    def confirm(
        self,
        sent: Sent | None,
        consumer: KafkaConsumerClient,
        producer: KafkaProducerClient,
        *,
        final: bool = False,
    ) -> None:
        """Makes ``sent`` durable and commits its offsets (``final``: the run ends)."""
        raise NotImplementedError

    def rewind(
        self,
        err: TransactionError,
        scoring: deque[Polled],
        consumer: KafkaConsumerClient,
        producer: KafkaProducerClient,
    ) -> KafkaProducerClient:
        """After ``err``: whatever lets the run go on (the producer to go on with), or raise."""
        raise err

    def _send_outputs(self, producer: KafkaProducerClient, scored: ScoredBatch) -> None:
        owner = self.owner
        producer.send_many(owner.output_topic, scored.outputs)
        if scored.letters:
            producer.send_many(owner.dead_letter_topic, scored.letters)


class AtLeastOnce(Guarantee):
    """Flush, then commit: a crash replays what was not committed (see the module)."""

    name = AT_LEAST_ONCE

    def __init__(self, owner: ScoringConsumer) -> None:
        super().__init__(owner)
        self._sync_commit_failures = 0

    def send(self, polled, consumer, producer, in_flight):
        # Confirming first lets a scoring process go on with the next batch while this one
        # waits for the acknowledgements (a flush sends at once, without lingering).
        self.confirm(in_flight, consumer, producer)
        assert self.owner._scorer is not None
        scored: ScoredBatch = self.owner._scorer.collect()
        self._send_outputs(producer, scored)
        self.owner._count(scored)
        return Sent(polled.offsets)

    def confirm(self, sent, consumer, producer, *, final=False):
        """Waits until the outputs of ``sent`` are acknowledged, then commits its offsets
        (asynchronously in the loop, where the client supports it: a later commit supersedes
        a lost one; synchronously at the end, so that a stopped consumer has committed
        everything it wrote)."""
        if sent is None:
            return
        stats = self.owner.stats
        stats.commit_failures = self._sync_commit_failures + getattr(
            consumer, "async_commit_failures", 0
        )
        producer.flush(self.owner.flush_timeout_s)  # raises DeliveryError: replayed
        self.written.update(sent.offsets)
        try:
            # The last commit covers every partition written to, in case an earlier
            # asynchronous one was lost.
            consumer.commit(
                dict(self.written) if final else sent.offsets,
                asynchronous=not final and consumer.async_commits,
            )
        except KafkaClientError as err:  # e.g. the group rebalanced: the batch is replayed
            self._sync_commit_failures += 1
            stats.commit_failures += 1
            _log.warning("commit of %s failed (the batch will be replayed): %s", sent.offsets, err)
        stats.batches += 1


class ExactlyOnce(Guarantee):
    """One Kafka transaction per commit interval (see the module)."""

    name = EXACTLY_ONCE
    isolation_level = "read_committed"

    def __init__(self, owner: ScoringConsumer) -> None:
        super().__init__(owner)
        self._aborts_in_a_row = 0

    def describe(self) -> str:
        return f"exactly once (transactional id {self.owner.transactional_id})"

    def group_metadata(self, consumer):
        # The group generation the records were read in: a transaction sends their offsets
        # with it, so that the broker refuses them after a rebalance (KIP-447).
        return consumer.group_metadata()

    def new_producer(self):
        """A transactional producer, initialised (which fences an older producer of the same
        transactional id and aborts what it left open)."""
        owner = self.owner
        producer = create_producer(
            owner.config,
            owner.client,
            transactional_id=owner.transactional_id,
            transaction_timeout_s=owner.transaction_timeout_s,
        )
        try:
            producer.init_transactions(owner.flush_timeout_s)
        except BaseException:
            close_quietly(producer, "producer")
            raise
        return producer

    def poll_wait(self, in_flight):
        """No longer than the open transaction has left before it is due."""
        timeout = self.owner.poll_timeout_s
        if in_flight is None:
            return timeout
        left = in_flight.opened + self.owner.commit_interval_s - time.monotonic()
        return min(timeout, max(0.0, left))

    @property
    def wait_s(self) -> float:
        """How long a transactional call may wait: longer would be in vain, the broker aborts
        the transaction after ``transaction_timeout_s``."""
        return min(self.owner.flush_timeout_s, self.owner.transaction_timeout_s)

    def send(self, polled, consumer, producer, in_flight):
        """The outputs go into the open transaction (begun here if none is), which is
        committed first if it is due (``commit_interval_s``)."""
        owner = self.owner
        assert owner._scorer is not None
        if in_flight is not None and time.monotonic() - in_flight.opened >= owner.commit_interval_s:
            self.confirm(in_flight, consumer, producer)
            in_flight = None
        scored = owner._scorer.collect()
        if in_flight is None:
            producer.begin_transaction()
            # The offsets go in at the commit, with the group generation of the transaction's
            # first poll (KIP-447): after a rebalance during the transaction the broker refuses
            # them and it aborts, instead of committing offsets of partitions that another
            # member reads now. One round trip per transaction, not per batch.
            in_flight = Sent({}, group_metadata=polled.group_metadata, opened=time.monotonic())
        self._send_outputs(producer, scored)
        in_flight.offsets.update(polled.offsets)
        in_flight.scored.append(scored)  # counted at the commit
        return in_flight

    def confirm(self, sent, consumer, producer, *, final=False):
        """Sends the transaction's offsets into it (with the group metadata of its first poll)
        and commits it (raises :class:`~ae_pipeline.kafka.TransactionError` when that
        fails)."""
        if sent is None:
            return
        producer.send_offsets_to_transaction(sent.offsets, sent.group_metadata, self.wait_s)
        producer.commit_transaction(self.wait_s)
        self._aborts_in_a_row = 0
        self.written.update(sent.offsets)
        stats = self.owner.stats
        for scored in sent.scored:
            self.owner._count(scored)
        stats.batches += len(sent.scored)
        stats.transactions += 1

    def rewind(self, err, scoring, consumer, producer):
        """Aborts the failed transaction, drops the batches in the scorer, and moves every
        assigned partition back to the group's committed offset, so that the next polls read
        again exactly what the aborted transaction held. Returns the producer to go on with
        (a new one after a fatal error).

        Raises:
            TransactionError: another live process uses this fixed transactional id, or
                :data:`MAX_ABORTS_IN_A_ROW` transactions failed without a commit between.
        """
        owner = self.owner
        self._aborts_in_a_row += 1
        owner.stats.aborted_transactions += 1
        if err.fatal and err.fenced and owner.fixed_transactional_id:
            raise TransactionError(
                f"another producer took over transactional id {owner.transactional_id!r} "
                f"(two processes must not share one): {err}",
                fatal=True,
                fenced=True,
            ) from None
        if self._aborts_in_a_row > MAX_ABORTS_IN_A_ROW:
            raise TransactionError(
                f"{MAX_ABORTS_IN_A_ROW} transactions in a row failed; the last: {err}",
                fatal=err.fatal,
                fenced=err.fenced,
            ) from None
        _log.warning(
            "transaction aborted (%s); reading its records again from the committed offsets",
            err,
        )
        assert owner._scorer is not None
        # Everything scored past the failed transaction is read again. The scorer may hold one
        # batch more than ``scoring`` lists (taken off it by a send whose confirm failed).
        scoring.clear()
        while owner._scorer.pending:
            owner._scorer.collect()
        if not err.fatal:
            try:
                producer.abort_transaction(self.wait_s)
            except TransactionError as abort_err:
                _log.warning("aborting failed too (%s): a new producer takes over", abort_err)
                err = abort_err
                err.fatal = True
        if err.fatal:
            owner.stats.producer_restarts += 1
            _abort_producer(producer)
            # Back off a little (a broker coming back, a coordinator moving).
            owner._stop.wait(min(5.0, 0.2 * 2**self._aborts_in_a_row))
            producer = self.new_producer()
        seek_to_committed(consumer)
        return producer


def guarantee_for(name: str, owner: ScoringConsumer) -> Guarantee:
    """The guarantee object named ``name`` (one of :data:`PROCESSING_GUARANTEES`)."""
    return {AT_LEAST_ONCE: AtLeastOnce, EXACTLY_ONCE: ExactlyOnce}[
        check_processing_guarantee(name)
    ](owner)


def check_processing_guarantee(guarantee: str) -> str:
    """Returns ``guarantee`` if it is one of :data:`PROCESSING_GUARANTEES`.

    Raises:
        ValueError: naming the choices.
    """
    if guarantee not in PROCESSING_GUARANTEES:
        raise ValueError(
            f"processing_guarantee must be one of {', '.join(PROCESSING_GUARANTEES)}, "
            f"got {guarantee!r}"
        )
    return guarantee


def seek_to_committed(consumer: KafkaConsumerClient) -> None:
    """Moves each assigned partition to the group's committed offset (its first offset where
    the group has none, as ``auto_offset_reset="earliest"``)."""
    assigned = sorted(consumer.assignment())
    if not assigned:
        return
    committed = consumer.committed(assigned)
    missing = [tp for tp, offset in committed.items() if offset is None]
    first = consumer.beginning_offsets(missing) if missing else {}
    offsets = {tp: first[tp] if o is None else o for tp, o in committed.items()}
    try:
        consumer.seek(offsets)
    except KafkaClientError:
        # A rebalance took partitions meanwhile: those the group assigns again start from
        # the committed offsets anyway; the ones still held must be moved back.
        held = consumer.assignment()
        consumer.seek({tp: o for tp, o in offsets.items() if tp in held})


def _abort_producer(producer: KafkaProducerClient) -> None:
    """Drops a producer that cannot go on (best effort: it may already be broken)."""
    try:
        producer.abort()
    except Exception as err:
        _log.debug("dropping the failed producer: %s", err)


__all__ = [
    "AT_LEAST_ONCE",
    "EXACTLY_ONCE",
    "MAX_ABORTS_IN_A_ROW",
    "PROCESSING_GUARANTEES",
    "AtLeastOnce",
    "ExactlyOnce",
    "Guarantee",
    "Polled",
    "Sent",
    "check_processing_guarantee",
    "guarantee_for",
    "seek_to_committed",
]

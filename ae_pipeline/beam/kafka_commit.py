"""Committing a Beam Kafka read's offsets to its consumer group: one background thread per
worker that commits what the bundle finalizers offer, retries through broker outages and
reports failures (:class:`_OffsetCommitter`)."""

from __future__ import annotations

import logging
import threading
import time

from ae_pipeline.kafka import (
    KafkaClientError,
    KafkaConfig,
    KafkaConsumerClient,
    TopicPartition,
    create_consumer,
)
from ae_pipeline.kafka.client import close_quietly

_LOG = logging.getLogger(__name__)


RETRY_FIRST_S = 0.5
"""First wait after a Kafka client error (doubled after each further error in a row)."""
RETRY_MAX_S = 10.0
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
                    delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (failures - 1))
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
                    close_quietly(consumer)
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
            close_quietly(consumer)

    def close(self, timeout_s: float = 10.0) -> None:
        """Commit what is pending (one try, waiting at most ``timeout_s``) and stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)  # a thread stuck on a lost broker ends with the process

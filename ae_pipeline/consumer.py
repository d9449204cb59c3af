"""The scoring service as a plain Kafka consumer-group process (no Beam runner).

:class:`ScoringConsumer` runs the loop

    poll batch k -> ``ServingModel.score_records`` -> flush (batch k-1's outputs
    acknowledged) -> commit batch k-1's offsets -> produce batch k's results and dead letters

so offsets are committed only after the outputs they cover are written: at-least-once. Batch k
is polled and scored while batch k-1's outputs are on their way to the broker (one batch in
flight), so scoring overlaps the produce round trip. A crash before a commit replays the
uncommitted batches (duplicates, never losses); results carry the input
``topic``/``partition``/``offset`` so that consumers downstream can count or drop duplicates.
Run N processes with the same group id to scale out (up to the number of partitions).

Where the process may use 2 CPUs or more (affinity and cgroup quota), the scoring runs in a
child process by default (:class:`~ae_pipeline.scoring_process.ScoringProcess`;
``scoring_process=None``, ``--scoring_process=auto``): batch ``k + 1`` is scored there while this
process produces batch ``k`` and commits batch ``k - 1``. On one CPU it scores inline, in this
process; ``scoring_process=True`` / ``False`` forces either. ``benchmarks/bench_streaming.py``
measures both ways.

SIGTERM / SIGINT (after :meth:`ScoringConsumer.install_signal_handlers`) stop it gracefully:
the batch in hand is finished, flushed and committed, then the consumer leaves its group. With
a model root it hot-reloads: a :class:`~ae_pipeline.hot_reload.ModelWatcher` swaps to a newly
published version between batches and keeps the old one if the new one fails to load.

Outputs are the messages of :func:`ae_pipeline.serving.to_message`: JSON values keyed by the
record's key (its key field, else the input message key) with a ``model_version`` header; dead
letters (``reason``, ``detail``, the original value base64 in ``value_b64``, topic, partition,
offset) also carry a ``reason`` header.

Example:
    >>> consumer = ScoringConsumer(                                   # doctest: +SKIP
    ...     {"bootstrap.servers": "127.0.0.1:9092", "group.id": "scorers"},
    ...     input_topic="events", output_topic="scores", dead_letter_topic="events-dlq",
    ...     mode="flag", model_root="/models")
    >>> consumer.install_signal_handlers()                            # doctest: +SKIP
    >>> with consumer:  # close() stops the scoring process           # doctest: +SKIP
    ...     stats = consumer.run()
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ae_pipeline.kafka import (
    DEFAULT_CLIENT,
    KafkaClientError,
    KafkaConfig,
    KafkaConsumerClient,
    KafkaProducerClient,
    TopicPartition,
    create_consumer,
    create_producer,
    next_offsets,
)
from ae_pipeline.scoring_process import (
    InlineScorer,
    ScoredBatch,
    ScoringProcess,
    ScoringProcessError,
    default_scoring_process,
)
from ae_pipeline.serving import NoModelError, check_mode

_log = logging.getLogger(__name__)


@dataclass
class ConsumerStats:
    """What a :class:`ScoringConsumer` has done so far.

    Attributes:
        records_in: records polled and scored.
        results: results produced.
        dead_letters: dead letters produced.
        dead_letters_by_reason: dead letters per reason.
        anomalies: results flagged anomalous (``flag`` mode).
        batches: batches processed (each produced, flushed and committed).
        commit_failures: commits refused or lost (e.g. after a rebalance or a broker restart;
            the batch will be replayed unless a later commit covers it).
        model_version: the version that scored the last batch.
        model_swaps: how many times a model was (re)loaded.
        seconds: wall time of :meth:`ScoringConsumer.run`.
        stopped_by: why the loop ended (``signal``, ``max_records``, ``idle``, ``stop``).
    """

    records_in: int = 0
    results: int = 0
    dead_letters: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=Counter)
    anomalies: int = 0
    batches: int = 0
    commit_failures: int = 0
    model_version: str | None = None
    model_swaps: int = 0
    seconds: float = 0.0
    stopped_by: str | None = None

    @property
    def records_per_s(self) -> float:
        return self.records_in / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dead_letters_by_reason"] = dict(self.dead_letters_by_reason)
        data["records_per_s"] = round(self.records_per_s, 1)
        return data


class ScoringConsumer:
    """Scores a topic as a consumer-group member; see the module docstring.

    Args:
        config: a :class:`~ae_pipeline.kafka.KafkaConfig` or config dict; needs a group id.
        input_topic: the topic to score.
        output_topic: where results go.
        dead_letter_topic: where rejected records go.
        mode: ``"encode"``, ``"denoise"`` or ``"flag"``.
        model_root: follow the newest version published under this root (hot reload).
        model_version_dir: or score with this one version.
        model_poll_interval_s: seconds between registry checks (with ``model_root``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        torch_threads: torch's intra-op CPU threads (None: torch's default, one per core).
        client: ``"kafka-python"`` (default) or ``"confluent"`` (several times faster).
        max_batch: most records per poll (and per produce/flush/commit cycle).
        poll_timeout_s: how long one poll waits; also how quickly a stop request is seen.
        flush_timeout_s: how long to wait for the outputs' acknowledgements.
        top_k: per-feature contributions in ``flag`` results (None: all).
        passthrough: record fields copied into each result.
        wait_for_model_s: at start, wait this long for a first published version.
        scoring_process: score in a child process
            (:class:`~ae_pipeline.scoring_process.ScoringProcess`), so that scoring overlaps
            the Kafka I/O on another core (True), or in this process (False); None (default):
            a child process where this process may use 2 CPUs or more
            (:func:`~ae_pipeline.scoring_process.default_scoring_process`).
        consumer: an already built consumer client (tests); default: built from ``config``.
        producer: an already built producer client (tests).
    """

    def __init__(
        self,
        config: KafkaConfig | Mapping[str, Any],
        *,
        input_topic: str,
        output_topic: str,
        dead_letter_topic: str,
        mode: str = "flag",
        model_root: str | None = None,
        model_version_dir: str | None = None,
        model_poll_interval_s: float = 30.0,
        device: str = "auto",
        torch_threads: int | None = None,
        client: str = DEFAULT_CLIENT,
        max_batch: int = 500,
        poll_timeout_s: float = 0.5,
        flush_timeout_s: float = 60.0,
        top_k: int | None = 5,
        passthrough: tuple[str, ...] = (),
        wait_for_model_s: float = 0.0,
        scoring_process: bool | None = None,
        consumer: KafkaConsumerClient | None = None,
        producer: KafkaProducerClient | None = None,
    ) -> None:
        self.config = KafkaConfig.from_dict(config)
        if self.config.group_id is None:
            raise ValueError("the consumer needs a group id (group.id) to commit its offsets")
        if (model_root is None) == (model_version_dir is None):
            raise ValueError("give exactly one of model_root and model_version_dir")
        self.mode = check_mode(mode)
        self.input_topic = input_topic
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.client = client
        self.max_batch = max_batch
        self.poll_timeout_s = poll_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self.passthrough = tuple(passthrough)
        self._model_args = {
            "version_dir": model_version_dir,
            "root": model_root,
            "interval_s": model_poll_interval_s,
            "device": device,
            "top_k": top_k,
            "torch_threads": torch_threads,
        }
        self.wait_for_model_s = wait_for_model_s
        self._consumer = consumer
        self._producer = producer
        self.scoring_process = (
            default_scoring_process() if scoring_process is None else bool(scoring_process)
        )
        self._scorer: InlineScorer | ScoringProcess | None = None
        self._written: dict[TopicPartition, int] = {}  # offsets whose outputs are acknowledged
        self._sync_commit_failures = 0
        self._stop = threading.Event()
        self._stop_reason = "stop"
        self.stats = ConsumerStats()

    # ------------------------------------------------------------------ control

    def stop(self, reason: str = "stop") -> None:
        """Ask the loop to finish the batch in hand, commit it and return (thread-safe)."""
        self._stop_reason = reason
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop gracefully (main thread only)."""

        def handle(signum: int, _frame: Any) -> None:
            _log.info("received %s: finishing the batch in hand", signal.Signals(signum).name)
            self.stop("signal")

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # ------------------------------------------------------------------ loop

    def _open_scorer(self) -> InlineScorer | ScoringProcess:
        """The scorer, with its model loaded (waiting up to ``wait_for_model_s`` for a first
        published version)."""
        kind = ScoringProcess if self.scoring_process else InlineScorer
        scorer = kind(self._model_args, mode=self.mode, passthrough=self.passthrough)
        deadline = time.monotonic() + self.wait_for_model_s
        try:
            while True:
                try:
                    self.stats.model_version = scorer.open()
                    return scorer
                except NoModelError:
                    if time.monotonic() >= deadline or self._stop.is_set():
                        raise
                    _log.info("waiting for a model version under %s", self._model_args["root"])
                    self._stop.wait(min(5.0, max(0.1, deadline - time.monotonic())))
        except BaseException:
            scorer.close()
            raise

    def run(
        self, *, max_records: int | None = None, idle_timeout_s: float | None = None
    ) -> ConsumerStats:
        """Consume, score, produce and commit until stopped.

        Args:
            max_records: return after about this many records (whole batches).
            idle_timeout_s: return after this long without any record (batch-style runs).

        Returns:
            The :class:`ConsumerStats` (also in ``self.stats``).

        Raises:
            ae_pipeline.kafka.DeliveryError: outputs could not be delivered; the batch was not
                committed and will be replayed by the next consumer of its partitions.
            ae_pipeline.scoring_process.ScoringProcessError: the scoring process failed or
                died; nothing it held was committed.
        """
        start = time.monotonic()
        self._scorer = self._scorer or self._open_scorer()
        scorer = self._scorer
        consumer = self._consumer or create_consumer(
            self.config, self.client, max_poll_records=self.max_batch
        )
        producer = self._producer or create_producer(self.config, self.client)
        _log.info(
            "scoring %s -> %s (dead letters: %s), mode %s, group %s, client %s, model %s, "
            "scoring %s",
            self.input_topic,
            self.output_topic,
            self.dead_letter_topic,
            self.mode,
            self.config.group_id,
            self.client,
            self.stats.model_version,
            "in a child process" if self.scoring_process else "inline",
        )
        polled = self.stats.records_in
        # Batches submitted to the scorer and not yet produced: their offsets, oldest first.
        scoring: deque[dict[TopicPartition, int]] = deque()
        in_flight: _Sent | None = None
        try:
            consumer.subscribe([self.input_topic])
            last_record = time.monotonic()
            while not self._stop.is_set():
                # With a batch in the scorer, only take what is already buffered: waiting here
                # would hold back that batch's outputs.
                records = consumer.poll(0 if scoring else self.poll_timeout_s, self.max_batch)
                if not records:
                    if scoring:
                        in_flight = self._drain(scoring, consumer, producer, in_flight)
                        continue
                    # Idle: settle the batch in flight with a synchronous commit of every
                    # written offset (which also repairs a lost asynchronous commit).
                    self._confirm(in_flight, consumer, producer, final=True)
                    in_flight = None
                    if idle_timeout_s is not None and (
                        time.monotonic() - last_record >= idle_timeout_s
                    ):
                        self._stop_reason = "idle"
                        break
                    continue
                last_record = time.monotonic()
                scorer.submit(records)
                scoring.append(next_offsets(records))
                polled += len(records)
                while len(scoring) > scorer.depth:
                    in_flight = self._send(scoring.popleft(), consumer, producer, in_flight)
                if max_records is not None and polled >= max_records:
                    self._stop_reason = "max_records"
                    break
            in_flight = self._drain(scoring, consumer, producer, in_flight)
            self._confirm(in_flight, consumer, producer, final=True)
            in_flight = None
            self.stats.stopped_by = self._stop_reason
        except BaseException as err:
            # Batches still in the scorer are dropped uncommitted (replayed later); a scoring
            # process that failed is started afresh by the next run().
            if scoring or isinstance(err, ScoringProcessError):
                scorer.close()
                self._scorer = None
            raise
        finally:
            self.stats.seconds = time.monotonic() - start
            if self._consumer is None:
                _close(consumer, "consumer")
            if self._producer is None:
                _close(producer, "producer")
        _log.info("consumer stopped (%s): %s", self.stats.stopped_by, self.stats.to_dict())
        return self.stats

    def close(self) -> None:
        """Stops the scoring process, if any (``run`` can be called again before this)."""
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def __enter__(self) -> ScoringConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(
        self,
        scoring: deque[dict[TopicPartition, int]],
        consumer: KafkaConsumerClient,
        producer: KafkaProducerClient,
        in_flight: _Sent | None,
    ) -> _Sent | None:
        """Produces every batch still in the scorer."""
        while scoring:
            in_flight = self._send(scoring.popleft(), consumer, producer, in_flight)
        return in_flight

    def _send(
        self,
        offsets: dict[TopicPartition, int],
        consumer: KafkaConsumerClient,
        producer: KafkaProducerClient,
        in_flight: _Sent | None,
    ) -> _Sent:
        """Confirms the batch in flight, collects the oldest scored batch and sends its
        outputs. Confirming first lets a scoring process go on with the next batch while this
        one waits for the acknowledgements (a flush sends at once, without lingering)."""
        assert self._scorer is not None
        self._confirm(in_flight, consumer, producer)
        scored: ScoredBatch = self._scorer.collect()
        producer.send_many(self.output_topic, scored.outputs)
        if scored.letters:
            producer.send_many(self.dead_letter_topic, scored.letters)
        stats = self.stats
        stats.records_in += len(scored.outputs) + len(scored.letters)
        stats.results += len(scored.outputs)
        stats.dead_letters += len(scored.letters)
        for reason in scored.dead_reasons:
            stats.dead_letters_by_reason[reason] += 1
        stats.anomalies += scored.anomalies
        stats.model_version = scored.version
        stats.model_swaps = scored.swaps
        return _Sent(offsets)

    def _confirm(
        self,
        sent: _Sent | None,
        consumer: KafkaConsumerClient,
        producer: KafkaProducerClient,
        *,
        final: bool = False,
    ) -> None:
        """Waits until the outputs of ``sent`` are acknowledged, then commits its offsets
        (asynchronously in the loop: a later commit supersedes a lost one; synchronously at the
        end, so that a stopped consumer has committed everything it wrote)."""
        if sent is None:
            return
        self.stats.commit_failures = self._sync_commit_failures + getattr(
            consumer, "async_commit_failures", 0
        )
        producer.flush(self.flush_timeout_s)  # raises DeliveryError: no commit, replayed
        self._written.update(sent.offsets)
        try:
            # The last commit covers every partition written to, in case an earlier
            # asynchronous one was lost. Asynchronous only with confluent-kafka: kafka-python's
            # failed asynchronous commits resurface as errors of later polls (broker restarts).
            consumer.commit(
                dict(self._written) if final else sent.offsets,
                asynchronous=not final and self.client == "confluent",
            )
        except KafkaClientError as err:  # e.g. the group rebalanced: the batch is replayed
            self._sync_commit_failures += 1
            self.stats.commit_failures += 1
            _log.warning("commit of %s failed (the batch will be replayed): %s", sent.offsets, err)
        self.stats.batches += 1


@dataclass
class _Sent:
    """A batch whose outputs were sent but not yet confirmed and committed."""

    offsets: dict[TopicPartition, int]


def _close(client: Any, what: str) -> None:
    try:
        client.close()
    except Exception as err:  # closing is best effort
        _log.warning("closing the Kafka %s failed: %s", what, err)


__all__ = ["ConsumerStats", "ScoringConsumer"]

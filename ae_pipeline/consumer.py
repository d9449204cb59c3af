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

With ``processing_guarantee="exactly_once"`` the same loop runs in Kafka transactions: each
batch's results and dead letters are sent in the open transaction; its offsets go in at the
commit (with the group metadata of the transaction's first poll: KIP-447 fencing, so a
rebalance during the transaction makes it abort); the transaction commits once it
has been open ``commit_interval_s`` (as Kafka Streams' ``commit.interval.ms``; several batches in
one transaction), when the input goes quiet and when the run stops. Any failure aborts it, drops
the batches scored past it and moves the partitions back to the committed offsets; the input is
read with ``read_committed``. A ``read_committed`` reader of the outputs then sees every record
once, whatever crashes, rebalances or zombies happen.

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

Outputs are the messages of :meth:`ae_pipeline.serving.ServingModel.score_messages`: JSON values
keyed by the input message's key (``message_key="input"``; ``"record"``: the record's key field)
with a ``model_version`` header; dead letters (``reason``, ``detail``, the original value base64
in ``value_b64`` with its ``value_length`` and ``value_sha256``, topic, partition, offset) also
carry a ``reason`` header. Whatever bytes a record holds, the worst it earns is a dead letter, and
no message is over ``max_message_bytes``. A failure that is not a record's fault (the broker
unreachable, a topic missing, authorisation refused, outputs not acknowledged) stops the run
without committing what it did not write.

Example:
    >>> consumer = ScoringConsumer(                                   # doctest: +SKIP
    ...     {"bootstrap.servers": "127.0.0.1:9092", "group.id": "scorers"},
    ...     input_topic="events", output_topic="scores", dead_letter_topic="events-dlq",
    ...     mode="flag", model_root="/models")
    >>> consumer.install_signal_handlers()                            # doctest: +SKIP
    >>> with consumer:  # close() stops the scoring process           # doctest: +SKIP
    ...     stats = consumer.run()

Size (over 500 lines): one class, the consumer-group loop, with its two dozen documented
options and their checks; how batches are sent and committed is :mod:`ae_pipeline.guarantees`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ae_pipeline.drift import DriftEvent, DriftMonitor, DriftReference, calibration_reference
from ae_pipeline.guarantees import (
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    MAX_ABORTS_IN_A_ROW,
    PROCESSING_GUARANTEES,
    Polled,
    Sent,
    check_processing_guarantee,
    guarantee_for,
)
from ae_pipeline.kafka import (
    DEFAULT_CLIENT,
    KafkaConfig,
    KafkaConsumerClient,
    KafkaProducerClient,
    TransactionError,
    close_quietly,
    create_consumer,
    create_producer,
    next_offsets,
    topic_partitions,
)
from ae_pipeline.ops.monitor import (
    DEFAULT_PROGRESS_INTERVAL_S,
    ConsumerMonitor,
)
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.scoring_process import (
    InlineScorer,
    ScoredBatch,
    ScoringProcess,
    ScoringProcessError,
    default_scoring_process,
)
from ae_pipeline.serving import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MESSAGE_KEY,
    NoModelError,
    OutputMode,
    check_max_message_bytes,
    check_message_key,
    check_mode,
    check_passthrough,
    get_mode,
)

_log = logging.getLogger(__name__)

DEFAULT_TRANSACTION_TIMEOUT_S = 10.0
# How long a transaction collects batches before it commits (Kafka Streams' commit.interval.ms
# under exactly-once is 100 ms as well).
DEFAULT_COMMIT_INTERVAL_S = 0.1


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
        transactions: transactions committed (``exactly_once``; each holds the batches of
            ``commit_interval_s``).
        aborted_transactions: transactions aborted and their batches read again
            (``exactly_once``; e.g. after a rebalance or a broker restart).
        producer_restarts: transactional producers replaced after a fatal error
            (``exactly_once``).
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
    transactions: int = 0
    aborted_transactions: int = 0
    producer_restarts: int = 0
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
        mode: an output mode by name (``"encode"``, ``"denoise"``, ``"flag"``, ``"explain"``)
            or an :class:`~ae_pipeline.serving.modes.OutputMode` (the scoring process gets
            its name: a mode of your own must be registered when its module is imported).
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
        passthrough: record fields copied into each result (none may be named like a result
            field: :func:`ae_pipeline.serving.check_passthrough`).
        max_message_bytes: the most bytes of one output message (key + value + headers); a
            dead letter's original value is cut to fit, a larger result becomes a ``too_large``
            dead letter (:data:`ae_pipeline.serving.DEFAULT_MAX_MESSAGE_BYTES`: 900,000, which
            fits Kafka's default 1 MB limits).
        message_key: a result's message key: ``"input"`` (the input message's key, so results
            and dead letters are partitioned like the input) or ``"record"`` (the record's key
            field).
        wait_for_model_s: at start, wait this long for a first published version.
        assignment_timeout_s: while no partition is assigned, check this often that the
            input topic can be reached (a broker down or a topic missing stops the run with
            :class:`~ae_pipeline.kafka.KafkaClientError`).
        processing_guarantee: ``"at_least_once"`` (default: outputs first, then the offsets;
            a crash replays what was written past the last commit) or ``"exactly_once"``
            (each batch's results, dead letters and offsets in one Kafka transaction, read
            with ``read_committed``: after a crash, a rebalance or a zombie, a
            ``read_committed`` reader sees every output once; see the README).
        transactional_id: ``exactly_once`` only: the producer's transactional id. Default: a
            fresh ``ae-pipeline.<group>.<random>`` per process (zombies are fenced by the
            group's generation, KIP-447; the transaction of a process that died stays open
            until ``transaction_timeout_s``). A stable id per instance (a StatefulSet's pod
            name) lets a restart abort the dead process's transaction at once; two live
            processes must never share one.
        transaction_timeout_s: ``exactly_once`` only: how long the broker lets a transaction
            stay open before aborting it (what a crashed process costs its partitions'
            ``read_committed`` readers).
        commit_interval_s: ``exactly_once`` only: a transaction takes the batches of this many
            seconds, then commits (0: one transaction per batch). Longer: fewer commits, more
            records per second; outputs reach ``read_committed`` readers at the commit, so
            their latency grows by up to this much. Less than ``transaction_timeout_s``.
        metrics_port: serve Prometheus ``/metrics`` and the ``/healthz`` / ``/readyz`` probes on
            this port (0: any free one; :attr:`monitor` ``.port`` says which); None: off
            (:mod:`ae_pipeline.ops`).
        metrics_host: the address the metrics server listens on.
        progress_interval_s: log a progress line this often (0: never).
        drift: watch the results' scores for drift against the serving version's calibration
            (a :class:`~ae_pipeline.drift.DriftMonitor`; ``flag`` and ``explain`` modes).
        drift_topic: send drift events (JSON, keyed by model version) to this topic.
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
        mode: str | OutputMode = "flag",
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
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        message_key: str = DEFAULT_MESSAGE_KEY,
        wait_for_model_s: float = 0.0,
        assignment_timeout_s: float = 30.0,
        processing_guarantee: str = AT_LEAST_ONCE,
        transactional_id: str | None = None,
        transaction_timeout_s: float = DEFAULT_TRANSACTION_TIMEOUT_S,
        commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
        progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S,
        drift: DriftMonitor | None = None,
        drift_topic: str | None = None,
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
        _check_options(
            max_batch=max_batch,
            poll_timeout_s=poll_timeout_s,
            flush_timeout_s=flush_timeout_s,
            top_k=top_k,
            torch_threads=torch_threads,
            model_poll_interval_s=model_poll_interval_s,
            wait_for_model_s=wait_for_model_s,
            assignment_timeout_s=assignment_timeout_s,
            transaction_timeout_s=transaction_timeout_s,
            commit_interval_s=commit_interval_s,
        )
        if commit_interval_s >= transaction_timeout_s:
            raise ValueError(
                f"commit_interval_s ({commit_interval_s:g}) must be less than "
                f"transaction_timeout_s ({transaction_timeout_s:g}): the broker would abort "
                "every transaction before it commits"
            )
        self.exactly_once = check_processing_guarantee(processing_guarantee) == EXACTLY_ONCE
        self.guarantee = guarantee_for(processing_guarantee, self)  # sends, confirms, commits
        if transactional_id is not None and (
            not self.exactly_once or not isinstance(transactional_id, str) or not transactional_id
        ):
            raise ValueError(
                "transactional_id is a non-empty name, and only used with "
                f"processing_guarantee={EXACTLY_ONCE!r}"
            )
        self.fixed_transactional_id = transactional_id is not None
        self.transactional_id = transactional_id or (
            f"ae-pipeline.{self.config.group_id}.{uuid.uuid4().hex[:12]}"
        )
        self.transaction_timeout_s = transaction_timeout_s
        self.commit_interval_s = commit_interval_s
        self.passthrough = check_passthrough(passthrough, mode)
        self.max_message_bytes = check_max_message_bytes(max_message_bytes)
        self.message_key = check_message_key(message_key)
        self.assignment_timeout_s = assignment_timeout_s
        self.input_topic = input_topic
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.client = client
        self.max_batch = max_batch
        self.poll_timeout_s = poll_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self._model_args = {
            "version_dir": model_version_dir,
            "root": model_root,
            "interval_s": model_poll_interval_s,
            "mode": self.mode,  # a version that cannot serve this mode is refused
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
        self._stop = threading.Event()
        self._stop_reason = "stop"
        self._next_refresh = 0.0  # when an idle poll next lets the model check for a version
        self.stats = ConsumerStats()
        if drift is not None and "score" not in get_mode(self.mode).fields:
            raise ValueError(
                f"drift is measured on the results' scores; mode {self.mode!r} has none "
                "(use flag or explain)"
            )
        if drift_topic is not None and drift is None:
            raise ValueError("drift_topic needs drift monitoring (drift=DriftMonitor(...))")
        self.drift_topic = drift_topic
        self._drift_producer: KafkaProducerClient | None = None
        self.monitor = ConsumerMonitor(
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            progress_interval_s=progress_interval_s,
            drift=drift,
            drift_sink=self._send_drift_event if drift_topic else None,
            reference_of=self._drift_reference,
            stall_s=max(120.0, 2 * flush_timeout_s),
        )
        self._scorer_failed = False

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
        scorer = kind(
            self._model_args,
            mode=self.mode,
            passthrough=self.passthrough,
            max_message_bytes=self.max_message_bytes,
            message_key=self.message_key,
        )
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
            idle_timeout_s: return after this long without any record (batch-style runs),
                counted from when partitions are first assigned to this consumer.

        Returns:
            The :class:`ConsumerStats` (also in ``self.stats``).

        Raises:
            ae_pipeline.kafka.DeliveryError: outputs could not be delivered; the batch was not
                committed and will be replayed by the next consumer of its partitions.
            ae_pipeline.scoring_process.ScoringProcessError: the scoring process failed or
                died; nothing it held was committed.
            ae_pipeline.kafka.KafkaClientError: the input topic cannot be reached (broker
                down, topic missing, not authorised); nothing uncommitted was committed.
                With ``exactly_once``: :class:`~ae_pipeline.kafka.TransactionError` when
                transactions keep failing (:data:`MAX_ABORTS_IN_A_ROW` aborts in a row), or
                when another live process uses this one's fixed ``transactional_id``.
            ValueError: ``max_records`` or ``idle_timeout_s`` is not a positive number.
        """
        check_run_args(max_records, idle_timeout_s)
        start = time.monotonic()
        self.monitor.start()
        if self._scorer is None and self._scorer_failed and self.monitor.metrics is not None:
            self.monitor.metrics.scoring_process_restarts.inc()
        self._scorer = self._scorer or self._open_scorer()
        self._scorer_failed = False
        scorer = self._scorer
        self.monitor.loaded(self.stats.model_version, self.stats.model_swaps)
        consumer = self._consumer or create_consumer(
            self.config,
            self.client,
            max_poll_records=self.max_batch,
            **({"isolation_level": level} if (level := self.guarantee.isolation_level) else {}),
        )
        producer = self._producer
        _log.info(
            "scoring %s -> %s (dead letters: %s), mode %s, group %s, client %s, model %s, "
            "scoring %s, %s",
            self.input_topic,
            self.output_topic,
            self.dead_letter_topic,
            self.mode,
            self.config.group_id,
            self.client,
            self.stats.model_version,
            "in a child process" if self.scoring_process else "inline",
            self.guarantee.describe(),
        )
        # Batches submitted to the scorer and not yet produced: their offsets, oldest first.
        scoring: deque[Polled] = deque()
        try:
            producer = producer or self.guarantee.new_producer()
            consumer.subscribe([self.input_topic])
            while True:
                in_flight: Sent | None = None
                try:
                    in_flight = self._loop(consumer, producer, scoring, max_records, idle_timeout_s)
                    in_flight = self._drain(scoring, consumer, producer, in_flight)
                    self.guarantee.confirm(in_flight, consumer, producer, final=True)
                    break
                except TransactionError as err:
                    producer = self.guarantee.rewind(err, scoring, consumer, producer)
            self.stats.stopped_by = self._stop_reason
        except BaseException as err:
            # Batches still in the scorer are dropped uncommitted (replayed later); a scoring
            # process that failed is started afresh by the next run().
            if scoring or scorer.pending or isinstance(err, ScoringProcessError):
                scorer.close()
                self._scorer = None
                self._scorer_failed = isinstance(err, ScoringProcessError)
            raise
        finally:
            self.stats.seconds = time.monotonic() - start
            if self._consumer is None:
                close_quietly(consumer, "consumer")
            if self._producer is None and producer is not None:
                close_quietly(producer, "producer")
        _log.info("consumer stopped (%s): %s", self.stats.stopped_by, self.stats.to_dict())
        return self.stats

    def _loop(
        self,
        consumer: KafkaConsumerClient,
        producer: KafkaProducerClient,
        scoring: deque[Polled],
        max_records: int | None,
        idle_timeout_s: float | None,
    ) -> Sent | None:
        """Polls, scores and sends until stopped, idle or ``max_records``; returns the batch
        in flight (sent, not yet confirmed). Batches still in the scorer stay in ``scoring``."""
        scorer = self._scorer
        assert scorer is not None
        in_flight: Sent | None = None
        polled = self.stats.records_in
        # Idle time counts once partitions are assigned: a restarted member may wait for
        # the group to rebalance before it gets any.
        idle_since: float | None = None
        unassigned_since = time.monotonic()
        self._next_refresh = time.monotonic() + self._refresh_interval()
        while not self._stop.is_set():
            self.monitor.tick(consumer, self.stats, _assigned)
            # With a batch in the scorer, only take what is already buffered: waiting here
            # would hold back that batch's outputs.
            records = consumer.poll(self._poll_wait(scoring, in_flight), self.max_batch)
            if not records:
                if scoring:
                    in_flight = self._drain(scoring, consumer, producer, in_flight)
                    continue
                # Idle: settle the batch in flight with a synchronous commit of every
                # written offset (which also repairs a lost asynchronous commit).
                self.guarantee.confirm(in_flight, consumer, producer, final=True)
                in_flight = None
                self._refresh_model()
                now = time.monotonic()
                if idle_since is None:
                    if _assigned(consumer):
                        idle_since = now
                    elif now - unassigned_since >= self.assignment_timeout_s:
                        # Not assigned for long: fail if the topic cannot be reached (a
                        # member beyond the partition count simply waits). A client of its
                        # own asks: metadata requests of the group's client make it rejoin.
                        topic_partitions(self.config, self.input_topic, client=self.client)
                        unassigned_since = now
                if (
                    idle_timeout_s is not None
                    and idle_since is not None
                    and now - idle_since >= idle_timeout_s
                ):
                    self._stop_reason = "idle"
                    break
                continue
            idle_since = time.monotonic()
            scorer.submit(records)
            scoring.append(Polled(next_offsets(records), self.guarantee.group_metadata(consumer)))
            polled += len(records)
            while len(scoring) > scorer.depth:
                in_flight = self.guarantee.send(scoring.popleft(), consumer, producer, in_flight)
            if max_records is not None and polled >= max_records:
                self._stop_reason = "max_records"
                break
        return in_flight

    def _poll_wait(self, scoring: deque[Polled], in_flight: Sent | None) -> float:
        """How long the next poll may wait: not at all with a batch in the scorer (its outputs
        would wait), no longer than the open transaction has left before it is due."""
        if scoring:
            return 0.0
        return self.guarantee.poll_wait(in_flight)

    def _refresh_interval(self) -> float:
        interval = self._model_args["interval_s"]
        return float(interval) if self._model_args["root"] is not None else float("inf")

    def _refresh_model(self) -> None:
        """On an idle poll, lets a hot-reloading model check for a new version when its interval
        has passed, so that a quiet topic still swaps (the watcher logs the swap)."""
        if self._scorer is None or time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + self._refresh_interval()
        version, swaps = self._scorer.refresh()
        self.stats.model_version = version or self.stats.model_version
        self.stats.model_swaps = swaps
        self.monitor.loaded(self.stats.model_version, swaps)

    def close(self) -> None:
        """Stops the scoring process, if any, and the metrics server (``run`` can be called
        again before this)."""
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None
        self.monitor.close()
        if self._drift_producer is not None:
            close_quietly(self._drift_producer, "drift producer")
            self._drift_producer = None

    def _drift_reference(self, version: str) -> DriftReference | None:
        """The calibration of ``version`` (read from its directory), for drift monitoring."""
        root = self._model_args["root"]
        path = ModelRegistry(root).path(version) if root else self._model_args["version_dir"]
        return calibration_reference(path, version)

    def _send_drift_event(self, event: DriftEvent) -> None:
        """Sends a drift event to the drift topic (its own producer, outside any transaction);
        a failure is logged: drift is an observer and never stops the scoring."""
        try:
            if self._drift_producer is None:
                self._drift_producer = create_producer(self.config, self.client)
            key = (event.model_version or "").encode()
            self._drift_producer.send(self.drift_topic, event.to_json(), key=key)
            self._drift_producer.flush(10.0)
        except Exception as err:
            _log.warning("drift event not sent to %s: %s", self.drift_topic, err)

    def __enter__(self) -> ScoringConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(
        self,
        scoring: deque[Polled],
        consumer: KafkaConsumerClient,
        producer: KafkaProducerClient,
        in_flight: Sent | None,
    ) -> Sent | None:
        """Produces every batch still in the scorer."""
        while scoring:
            in_flight = self.guarantee.send(scoring.popleft(), consumer, producer, in_flight)
        return in_flight

    def _count(self, scored: ScoredBatch) -> None:
        stats = self.stats
        stats.records_in += len(scored.outputs) + len(scored.letters)
        stats.results += len(scored.outputs)
        stats.dead_letters += len(scored.letters)
        for reason in scored.dead_reasons:
            stats.dead_letters_by_reason[reason] += 1
        stats.anomalies += scored.anomalies
        stats.model_version = scored.version
        stats.model_swaps = scored.swaps
        self.monitor.batch(scored)


def _check_options(**options: Any) -> None:
    """Refuses option values that would hang, crash later or mislead (one line each)."""
    positive = (
        "max_batch",
        "poll_timeout_s",
        "flush_timeout_s",
        "assignment_timeout_s",
        "transaction_timeout_s",
    )
    for name, value in options.items():
        if value is None and name in ("top_k", "torch_threads"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{name} must be a number, got {value!r}")
        if name == "max_batch" and not isinstance(value, int):
            raise ValueError(f"max_batch must be a whole number, got {value!r}")
        if value == float("inf") and name != "assignment_timeout_s":
            raise ValueError(f"{name} must be finite, got {value!r}")
        if name in positive and value <= 0:
            raise ValueError(f"{name} must be greater than 0, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value!r}")


def check_run_args(max_records: int | None, idle_timeout_s: float | None) -> None:
    """Refuses a ``max_records`` below 1 or a negative or non-finite ``idle_timeout_s``.

    Raises:
        ValueError: naming the argument.
    """
    if max_records is not None and (
        isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1
    ):
        raise ValueError(f"max_records must be a whole number of 1 or more, got {max_records!r}")
    if idle_timeout_s is not None and (
        isinstance(idle_timeout_s, bool)
        or not isinstance(idle_timeout_s, (int, float))
        or not 0 <= idle_timeout_s < float("inf")
    ):
        raise ValueError(f"idle_timeout_s must be 0 or more seconds, got {idle_timeout_s!r}")


def _assigned(consumer: Any) -> bool:
    """Whether the group has assigned partitions to ``consumer`` (True where the client cannot
    tell: then idle time counts from the start, as before)."""
    for client in (consumer, getattr(consumer, "_consumer", None)):
        assignment = getattr(client, "assignment", None)
        if callable(assignment):
            try:
                return bool(assignment())
            except Exception:  # a closed or failing client: the next poll says why
                return False
    return True


__all__ = [
    "AT_LEAST_ONCE",
    "DEFAULT_COMMIT_INTERVAL_S",
    "DEFAULT_TRANSACTION_TIMEOUT_S",
    "EXACTLY_ONCE",
    "MAX_ABORTS_IN_A_ROW",
    "PROCESSING_GUARANTEES",
    "ConsumerStats",
    "ScoringConsumer",
    "check_processing_guarantee",
    "check_run_args",
]

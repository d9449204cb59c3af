"""The confluent-kafka (librdkafka) implementation of the client interface: the fast path.

Needs the ``[fast]`` extra (``pip install ae-pipeline[fast]``).

Size (just over 500 lines): one client's consumer, producer and transactions, with the
watchdog around librdkafka's calls that can hang (confluentinc/librdkafka#5456).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

try:
    import confluent_kafka as ck
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the 'confluent' Kafka client needs confluent-kafka: pip install 'ae-pipeline[fast]'"
    ) from e

from ae_pipeline.kafka.client import (
    BrokerWatch,
    KafkaConsumerClient,
    KafkaProducerClient,
    scrubbed_errors,
)
from ae_pipeline.kafka.config import KafkaConfig
from ae_pipeline.kafka.errors import DeliveryError, KafkaClientError, TransactionError
from ae_pipeline.kafka.records import Headers, KafkaRecord, TopicPartition
from ae_pipeline.kafka.redaction import scrub

SECTION = "confluent"
"""This client's pass-through section of ``KafkaConfig`` (as registered in ``kafka/clients.py``):
librdkafka properties, applied last."""

# librdkafka insists on a group id even for a consumer that only assigns partitions.
UNSET_GROUP = "ae-pipeline-unset"
# librdkafka's own log lines go through Python logging (served by poll/consume/flush).
_LIBRDKAFKA_LOG = logging.getLogger("ae_pipeline.kafka.librdkafka")
_TIMEOUT_S = 30.0
# A transactional call that has not returned this long after its own timeout is given up.
_TXN_GRACE_S = 5.0
# How often librdkafka reports its brokers' states (to tell an unreachable broker), unless the
# config sets statistics.interval.ms itself.
_STATS_INTERVAL_MS = 1000


def _record(m: Any) -> KafkaRecord:
    _, timestamp_ms = m.timestamp()
    return KafkaRecord(
        m.topic(),
        m.partition(),
        m.offset(),
        timestamp_ms,
        m.key(),
        m.value(),
        tuple(m.headers() or ()),
    )


def _brokers_up(stats: str) -> bool | None:
    """Whether librdkafka's statistics (JSON) show a broker connection up (None: unreadable).

    Only real brokers count (``source`` configured or learned), not the logical or internal
    ones."""
    try:
        brokers = json.loads(stats).get("brokers", {})
    except (ValueError, AttributeError):
        return None
    return any(
        b.get("state") == "UP" and b.get("source") in ("configured", "learned")
        for b in brokers.values()
    )


def settings(config: KafkaConfig) -> dict[str, Any]:
    """confluent-kafka's translation of a :class:`KafkaConfig`: librdkafka properties, the
    ``confluent`` section applied last."""
    conf: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": config.client_id,
        "security.protocol": config.security_protocol,
    }
    if config.group_id is not None:
        conf["group.id"] = config.group_id
    if config.uses_sasl:
        conf["sasl.mechanism"] = config.sasl_mechanism
        if config.sasl_username is not None:
            conf["sasl.username"] = config.sasl_username
            conf["sasl.password"] = config.sasl_password or ""
    if config.uses_ssl:
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if config.ssl_check_hostname else "none"
        )
        for key, value in (
            ("ssl.ca.location", config.ssl_cafile),
            ("ssl.certificate.location", config.ssl_certfile),
            ("ssl.key.location", config.ssl_keyfile),
            ("ssl.key.password", config.ssl_key_password),
        ):
            if value is not None:
                conf[key] = value
    conf.update(config.section(SECTION))
    return conf


class Consumer(KafkaConsumerClient):
    """A confluent-kafka ``Consumer``; auto-commit off."""

    async_commits = True  # librdkafka reports a failed commit to on_commit, nowhere else

    def __init__(
        self,
        config: KafkaConfig,
        *,
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 500,
        isolation_level: str | None = None,
    ):
        self._config = config
        conf = settings(config)
        if isolation_level is not None:
            conf["isolation.level"] = isolation_level
        conf.setdefault("group.id", UNSET_GROUP)
        conf.setdefault("logger", _LIBRDKAFKA_LOG)
        conf.setdefault("enable.auto.commit", False)
        conf.setdefault("enable.auto.offset.store", False)
        conf.setdefault("auto.offset.reset", auto_offset_reset)
        conf.setdefault("on_commit", self._on_commit)
        # Broker states arrive with librdkafka's statistics, served by poll/consume.
        self._up: bool | None = None
        self._user_stats_cb = conf.pop("stats_cb", None)
        conf["stats_cb"] = self._on_stats
        conf.setdefault("statistics.interval.ms", _STATS_INTERVAL_MS)
        self._watch = BrokerWatch(config, lambda: self._up)
        self._max_poll_records = max_poll_records
        self.async_commit_failures = 0  # commits that failed after commit(asynchronous=True)
        self._assigned: dict[TopicPartition, int] = {}
        with scrubbed_errors(config, "confluent-kafka consumer"):
            self._consumer = ck.Consumer(conf)

    def partitions(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        with scrubbed_errors(self._config, f"partitions of {topic!r}"):
            meta = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaClientError(f"topic {topic!r} does not exist (or is not visible)")
        return sorted(meta.partitions)

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        with scrubbed_errors(self._config, "assign"):
            self._consumer.assign([ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()])
        self._assigned = dict(offsets)

    def _on_stats(self, stats: str) -> None:
        self._up = _brokers_up(stats)
        if self._user_stats_cb is not None:
            self._user_stats_cb(stats)

    def subscribe(self, topics: Sequence[str]) -> None:
        self._watch.check()
        with scrubbed_errors(self._config, "subscribe"):
            self._consumer.subscribe(list(topics))

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        for (topic, partition), offset in offsets.items():
            deadline = time.monotonic() + _TIMEOUT_S
            while True:
                try:
                    with scrubbed_errors(self._config, "seek"):
                        self._consumer.seek(ck.TopicPartition(topic, partition, offset))
                    break
                except KafkaClientError:
                    # A partition just assigned is not fetching yet ("Erroneous state"):
                    # serve the assignment and try again.
                    if time.monotonic() > deadline:
                        raise
                    self._consumer.consume(0, 0.05)

    def group_metadata(self) -> Any:
        with scrubbed_errors(self._config, "group metadata"):
            return self._consumer.consumer_group_metadata()

    def assignment(self) -> set[TopicPartition]:
        with scrubbed_errors(self._config, "assignment"):
            found = self._consumer.assignment()
        return {TopicPartition(tp.topic, tp.partition) for tp in found}

    def poll(self, timeout_s: float, max_records: int) -> list[KafkaRecord]:
        with scrubbed_errors(self._config, "poll"):
            # consume() waits its whole timeout unless the batch fills: drain what is buffered,
            # and only when nothing is, wait for one message and drain again.
            messages = self._consumer.consume(max_records, 0)
            if not messages:
                first = self._consumer.poll(timeout_s)
                if first is not None:
                    messages = [first, *self._consumer.consume(max_records - 1, 0)]
        records = []
        for m in messages:
            error = m.error()
            if error is None:
                records.append(_record(m))
            elif error.code() != ck.KafkaError._PARTITION_EOF:
                raise KafkaClientError(scrub(f"poll: {error}", self._config.secrets()))
        if records:
            self._watch.last_up = time.monotonic()  # records prove a connection
        else:
            self._watch.check()
        return records

    def position(self, tp: TopicPartition) -> int:
        with scrubbed_errors(self._config, "position"):
            (found,) = self._consumer.position([ck.TopicPartition(*tp)])
        if found.offset >= 0:
            return found.offset
        return self._assigned.get(tp, found.offset)  # nothing consumed since assign()

    def _watermarks(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        with scrubbed_errors(self._config, "watermark offsets"):
            return {
                tp: self._consumer.get_watermark_offsets(
                    ck.TopicPartition(*tp), timeout=_TIMEOUT_S, cached=False
                )
                for tp in map(TopicPartition._make, tps)
            }

    def beginning_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: low for tp, (low, _) in self._watermarks(tps).items()}

    def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: high for tp, (_, high) in self._watermarks(tps).items()}

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        self._need_group("committed offsets")
        with scrubbed_errors(self._config, "committed offsets"):
            found = self._consumer.committed(
                [ck.TopicPartition(*tp) for tp in tps], timeout=_TIMEOUT_S
            )
        return {
            TopicPartition(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
            for tp in found
        }

    def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        self._need_group("commit")
        with scrubbed_errors(self._config, "commit"):
            result = self._consumer.commit(
                offsets=[ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=asynchronous,
            )
        if asynchronous:
            return  # failures reach _on_commit
        failed = [tp for tp in result or () if tp.error is not None]
        if failed:
            raise KafkaClientError(
                scrub(
                    f"commit failed for {failed[0].topic}[{failed[0].partition}]: "
                    f"{failed[0].error}",
                    self._config.secrets(),
                )
            )

    def _on_commit(self, error: Any, partitions: Any) -> None:
        failed = [tp for tp in partitions or () if tp.error is not None]
        if error is not None or failed:
            self.async_commit_failures += 1
            detail = error if error is not None else failed[0].error
            _LIBRDKAFKA_LOG.warning(
                "commit failed (the records will be replayed): %s",
                scrub(str(detail), self._config.secrets()),
            )

    def close(self) -> None:
        with scrubbed_errors(self._config, "close"):
            self._consumer.close()

    def _need_group(self, what: str) -> None:
        if self._config.group_id is None:
            raise KafkaClientError(f"{what} needs a consumer group: set group_id in the config")


PRODUCER_LIMIT = (SECTION, "message.max.bytes", 1_000_000)
"""librdkafka's limit on one message (the setting in the ``confluent`` section, and its default
in bytes)."""


def create_topics(
    config: KafkaConfig,
    wanted: Mapping[str, int],
    *,
    replication_factor: int,
    exist_ok: bool,
    timeout_s: float,
) -> None:
    """Creates ``{name: partitions}`` with confluent-kafka's ``AdminClient``
    (:func:`ae_pipeline.kafka.create_topics` waits for their metadata)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings(config))
    futures = admin.create_topics(
        [NewTopic(name, count, replication_factor) for name, count in wanted.items()],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for future in futures.values():
        try:
            future.result(timeout=timeout_s)
        except ck.KafkaException as err:
            if not (exist_ok and err.args[0].code() == ck.KafkaError.TOPIC_ALREADY_EXISTS):
                raise


def call_with_deadline(call: Any, args: Sequence[Any], deadline_s: float, *, name: str) -> bool:
    """Runs ``call(*args)`` in a daemon thread and waits at most ``deadline_s`` for it.

    Returns True when the call returned (its exception, if any, is raised here), False when
    it is still running: it then runs on, abandoned, in a daemon thread, which never keeps
    the interpreter from exiting (a ``concurrent.futures`` worker would: the interpreter
    joins those at exit, for ever when the call never returns).
    """
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def run() -> None:
        try:
            call(*args)
            outcome.append(None)
        except BaseException as err:  # handed to the waiting thread
            outcome.append(err)
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(deadline_s):
        return False
    if outcome[0] is not None:
        raise outcome[0]
    return True


class Producer(KafkaProducerClient):
    """A confluent-kafka ``Producer`` with ``acks=all`` (transactional with a
    ``transactional_id``)."""

    def __init__(
        self,
        config: KafkaConfig,
        *,
        transactional_id: str | None = None,
        transaction_timeout_s: float = 60.0,
    ):
        self._config = config
        conf = settings(config)
        if "group.id" not in config.section(SECTION):
            conf.pop("group.id", None)  # a consumer property
        conf.setdefault("acks", "all")
        if transactional_id is not None:
            conf["transactional.id"] = transactional_id
            conf["transaction.timeout.ms"] = int(transaction_timeout_s * 1000)
            # A transaction's first send after a commit is refused with
            # CONCURRENT_TRANSACTIONS while the broker still writes the previous one's
            # markers, and retried after retry.backoff.ms (100 ms by default): a pause per
            # transaction. The Java producer retries that case after 20 ms (KAFKA-5477).
            # Measured here (a probe, 2 runs each, noisy): exactly once at 0.80x of at least
            # once with 100 ms, 1.03x with 10 ms, 0.86x with 20 ms.
            conf.setdefault("retry.backoff.ms", 20)
        if config.compression_type is not None:
            conf.setdefault("compression.type", config.compression_type)
        conf.setdefault("logger", _LIBRDKAFKA_LOG)
        with scrubbed_errors(config, "confluent-kafka producer"):
            self._producer = ck.Producer(conf)
        self._queued = 0
        self._errors: list[tuple[str, int | None, str]] = []
        self._stuck = False  # a transactional call never returned: the producer is abandoned

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            reason = scrub(str(error), self._config.secrets())
            self._errors.append((message.topic(), message.partition(), reason))

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | Sequence[tuple[str, bytes | None]] = (),
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        with scrubbed_errors(self._config, f"send to {topic!r}"):
            while True:
                try:
                    self._producer.produce(topic, value, key, **kwargs)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self._producer.poll(0.05)
            self._producer.poll(0)
        self._queued += 1

    def send_many(
        self,
        topic: str,
        messages: Sequence[tuple[bytes | None, bytes | None, Headers | Sequence[Any]]],
    ) -> None:
        produce = self._producer.produce
        on_delivery = self._on_delivery
        with scrubbed_errors(self._config, f"send to {topic!r}"):
            for key, value, headers in messages:
                while True:
                    try:
                        if headers:
                            if type(headers) is not list:
                                headers = list(headers)
                            produce(topic, value, key, on_delivery=on_delivery, headers=headers)
                        else:
                            produce(topic, value, key, on_delivery=on_delivery)
                        break
                    except BufferError:  # local queue full: let deliveries drain
                        self._producer.poll(0.05)
                self._queued += 1
            self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> int:
        with scrubbed_errors(self._config, "flush"):
            remaining = self._producer.flush(timeout_s)
        queued, self._queued = self._queued, remaining  # the remaining ones stay queued
        errors, self._errors = self._errors, []
        if remaining:
            errors.append(("*", None, f"{remaining} not acknowledged within {timeout_s:g}s"))
        failed = len(errors) - 1 + remaining if remaining else len(errors)
        if errors:
            raise DeliveryError(
                f"{failed} of {queued} records were not delivered; "
                f"first: topic {errors[0][0]!r}: {errors[0][2]}",
                failed,
                errors[:10],
                unacknowledged=remaining,
            )
        return queued

    def close(self) -> None:
        if not self._stuck:
            with scrubbed_errors(self._config, "close"):
                self._producer.flush(0)
        self._producer = None  # librdkafka's producer stops when it is freed

    # -------------------------------------------------------------- transactions

    def _transaction_step(self, what: str, call: Any, *args: Any, retries: int = 0) -> None:
        """``call(*args)``; a retriable error is retried ``retries`` times (librdkafka: the
        same call again after a timeout), then every error is a :class:`TransactionError`."""
        while True:
            try:
                self._within_timeout(what, call, *args)
                return
            except ck.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not isinstance(error, ck.KafkaError):
                    raise TransactionError(
                        scrub(f"{what}: {exc}", self._config.secrets())
                    ) from None
                if retries > 0 and error.retriable() and not error.txn_requires_abort():
                    retries -= 1
                    continue
                code = error.code()
                fenced = code in (
                    ck.KafkaError._FENCED,
                    ck.KafkaError.PRODUCER_FENCED,
                    ck.KafkaError.INVALID_PRODUCER_EPOCH,
                    ck.KafkaError.ILLEGAL_GENERATION,
                    ck.KafkaError.UNKNOWN_MEMBER_ID,
                    ck.KafkaError.FENCED_INSTANCE_ID,
                )
                message = scrub(f"{what}: {error.str()}", self._config.secrets())
                raise TransactionError(message, fatal=error.fatal(), fenced=fenced) from None

    def _within_timeout(self, what: str, call: Any, *args: Any) -> None:
        """``call(*args)`` (its last argument a timeout in seconds), given up if it has not
        returned ``_TXN_GRACE_S`` after that timeout.

        librdkafka's ``send_offsets_to_transaction`` can block past its timeout, for good,
        when the group coordinator goes away mid-request (confluentinc/librdkafka#5456,
        #5511; seen here when the broker restarts). The call then runs on in its thread, and
        this producer is abandoned: :class:`TransactionError` (``fatal``) tells the caller to
        take a new producer with the same transactional id, which fences this one.
        """
        if not args or self._stuck:
            call(*args)
            return
        deadline_s = float(args[-1]) + _TXN_GRACE_S
        if not call_with_deadline(call, args, deadline_s, name=f"ae-pipeline-txn-{what}"):
            self._stuck = True
            raise TransactionError(
                f"{what} did not return within {deadline_s:g}s although its timeout had "
                "passed (librdkafka #5456): this producer is abandoned",
                fatal=True,
            )

    def init_transactions(self, timeout_s: float) -> None:
        self._transaction_step("init_transactions", self._producer.init_transactions, timeout_s)

    def begin_transaction(self) -> None:
        self._transaction_step("begin_transaction", self._producer.begin_transaction)

    def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: Any, timeout_s: float
    ) -> None:
        positions = [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self._transaction_step(
            "send_offsets_to_transaction",
            self._producer.send_offsets_to_transaction,
            positions,
            group_metadata,
            timeout_s,
            retries=2,
        )

    def commit_transaction(self, timeout_s: float) -> int:
        self._transaction_step(
            "commit_transaction", self._producer.commit_transaction, timeout_s, retries=2
        )
        queued, self._queued, self._errors = self._queued, 0, []
        return queued

    def abort_transaction(self, timeout_s: float) -> None:
        self._transaction_step(
            "abort_transaction", self._producer.abort_transaction, timeout_s, retries=2
        )
        self._queued, self._errors = 0, []

    def abort(self) -> None:
        if self._stuck:  # a call still blocks in librdkafka: touch nothing, let it go
            self._producer = None
            return
        # A freed producer still delivers its queue: purge it first (queued and in-flight
        # requests; a request already sent may still be written by the broker).
        with scrubbed_errors(self._config, "abort"):
            self._producer.purge(in_queue=True, in_flight=True, blocking=True)
            self._producer.flush(0)  # serves the purged records' delivery reports
        self._errors, self._queued = [], 0
        self._producer = None

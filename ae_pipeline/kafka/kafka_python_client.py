"""The kafka-python implementation of the client interface (pure Python, the default)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as _KTP
from kafka import codec as _codec
from kafka import errors as _errors
from kafka.errors import KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from ae_pipeline.kafka.client import (
    COORDINATOR_MOVES,
    BrokerWatch,
    KafkaConsumerClient,
    KafkaProducerClient,
    scrubbed_errors,
    unreachable,
)
from ae_pipeline.kafka.config import KafkaConfig
from ae_pipeline.kafka.errors import DeliveryError, KafkaClientError, TransactionError
from ae_pipeline.kafka.records import Headers, KafkaRecord, TopicPartition
from ae_pipeline.kafka.redaction import scrub

_log = logging.getLogger(__name__)

SECTION = "kafka_python"
"""This client's pass-through section of ``KafkaConfig`` (as registered in ``kafka/clients.py``):
keyword arguments, each given to the kafka-python classes that accept it."""

_KNOWN = (
    set(KafkaConsumer.DEFAULT_CONFIG)
    | set(KafkaProducer.DEFAULT_CONFIG)
    | set(KafkaAdminClient.DEFAULT_CONFIG)
)

# The codecs beside gzip and the package kafka-python needs for each (its extras of that name).
_CODECS = {
    "snappy": (_codec.has_snappy, "python-snappy"),
    "lz4": (_codec.has_lz4, "lz4"),
    "zstd": (_codec.has_zstd, "zstandard"),
}
_warned_codecs = False


def missing_codecs() -> list[str]:
    """The compression codecs this kafka-python installation cannot read or write."""
    return [name for name, (available, _) in _CODECS.items() if not available()]


def _warn_missing_codecs() -> None:
    global _warned_codecs
    missing = missing_codecs()
    if missing and not _warned_codecs:
        _warned_codecs = True
        _log.warning(
            "kafka-python cannot read %s-compressed topics here: install %s "
            "(pip install 'kafka-python[%s]')",
            "/".join(missing),
            " ".join(_CODECS[m][1] for m in missing),
            ",".join(missing),
        )


def _connected(client: Any) -> bool | None:
    """Whether the kafka-python client has a broker connection up (None: cannot tell)."""
    conns = getattr(getattr(client, "_manager", None), "_conns", None)
    if conns is None:  # another kafka-python version: never report the broker unreachable
        return None
    return any(getattr(conn, "connected", False) for conn in list(conns.values()))


def _build(config: KafkaConfig, cls: type, kwargs: dict[str, Any], what: str) -> Any:
    """``cls(**kwargs)``; kafka-python connects while it builds a client: a broker that
    cannot be reached within ``bootstrap_timeout_ms`` is a :class:`BrokerUnreachableError`."""
    start = time.monotonic()
    with scrubbed_errors(config, what):
        try:
            return cls(**kwargs)
        except KafkaTimeoutError:  # kafka-python 3: 'Unable to bootstrap from [...]'
            raise unreachable(config, time.monotonic() - start) from None


def settings(config: KafkaConfig) -> dict[str, Any]:
    """kafka-python's translation of a :class:`KafkaConfig`: keyword arguments common to its
    consumer, producer and admin client (``group_id`` and the ``kafka_python`` section are
    added by :func:`client_kwargs`)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
    }
    if config.uses_sasl:
        kwargs["sasl_mechanism"] = config.sasl_mechanism
        if config.sasl_username is not None:
            kwargs["sasl_plain_username"] = config.sasl_username
            kwargs["sasl_plain_password"] = config.sasl_password or ""
    if config.uses_ssl:
        kwargs["ssl_check_hostname"] = config.ssl_check_hostname
        for key, value in (
            ("ssl_cafile", config.ssl_cafile),
            ("ssl_certfile", config.ssl_certfile),
            ("ssl_keyfile", config.ssl_keyfile),
            ("ssl_password", config.ssl_key_password),
        ):
            if value is not None:
                kwargs[key] = value
    return kwargs


def client_kwargs(config: KafkaConfig, cls: type, **defaults: Any) -> dict[str, Any]:
    """Keyword arguments for the kafka-python class ``cls``: the common settings, then
    ``defaults``, then the ``kafka_python`` section's keys that ``cls`` accepts.

    Raises:
        ValueError: for a ``kafka_python`` key that no kafka-python client accepts.
    """
    section = config.section(SECTION)
    unknown = sorted(set(section) - _KNOWN)
    if unknown:
        raise ValueError(f"kafka-python accepts no setting named {unknown}")
    kwargs = settings(config)
    if "bootstrap_timeout_ms" in cls.DEFAULT_CONFIG:  # kafka-python >= 3
        kwargs["bootstrap_timeout_ms"] = int(config.unreachable_timeout_s * 1000)
    kwargs.update(defaults)
    accepted = cls.DEFAULT_CONFIG
    kwargs.update({k: v for k, v in section.items() if k in accepted})
    return kwargs


def _record(r: Any) -> KafkaRecord:
    return KafkaRecord(
        r.topic,
        r.partition,
        r.offset,
        r.timestamp if r.timestamp is not None else -1,
        r.key,
        r.value,
        tuple(r.headers) if r.headers else (),
    )


PRODUCER_LIMIT = (SECTION, "max_request_size", 1_048_576)
"""The producer's own limit on one request (the setting in the ``kafka_python`` section, and its
default in bytes): a message must fit in it."""


def create_topics(
    config: KafkaConfig,
    wanted: Mapping[str, int],
    *,
    replication_factor: int,
    exist_ok: bool,
    timeout_s: float,
) -> None:
    """Creates ``{name: partitions}`` with kafka-python's admin client
    (:func:`ae_pipeline.kafka.create_topics` waits for their metadata)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**client_kwargs(config, KafkaAdminClient))
    try:
        for name, count in wanted.items():
            try:
                topic = NewTopic(name, count, replication_factor)
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                if not exist_ok:
                    raise
    finally:
        admin.close()


class Consumer(KafkaConsumerClient):
    """A kafka-python ``KafkaConsumer``; auto-commit off, no topic auto-creation.

    Raises (from the constructor):
        BrokerUnreachableError: no broker answered within the config's
            ``unreachable_timeout_s``.
    """

    # A failed commit_async resurfaces as an error of a later poll (a broker restart): no.
    async_commits = False

    def __init__(
        self,
        config: KafkaConfig,
        *,
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 500,
        isolation_level: str | None = None,
    ):
        self._config = config
        self.async_commit_failures = 0  # commits that failed after commit(asynchronous=True)
        kwargs = client_kwargs(
            config,
            KafkaConsumer,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            max_poll_records=max_poll_records,
            allow_auto_create_topics=False,
        )
        if isolation_level is not None:
            kwargs["isolation_level"] = isolation_level
        _warn_missing_codecs()
        COORDINATOR_MOVES.install()
        self._consumer = _build(config, KafkaConsumer, kwargs, "kafka-python consumer")
        self._watch = BrokerWatch(
            config, lambda: _connected(getattr(self._consumer, "_client", None))
        )
        self._failing_since: float | None = None  # first of consecutive retriable poll errors

    def partitions(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        deadline = time.monotonic() + timeout_s
        with scrubbed_errors(self._config, f"partitions of {topic!r}"):
            while True:
                found = self._consumer.partitions_for_topic(topic)
                if found or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        if not found:
            raise KafkaClientError(f"topic {topic!r} does not exist (or is not visible)")
        return sorted(found)

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        with scrubbed_errors(self._config, "assign"):
            self._consumer.assign([_KTP(*tp) for tp in offsets])
            for tp, offset in offsets.items():
                self._consumer.seek(_KTP(*tp), offset)

    def subscribe(self, topics: Sequence[str]) -> None:
        self._watch.check()
        with scrubbed_errors(self._config, "subscribe"):
            self._consumer.subscribe(list(topics))

    def poll(self, timeout_s: float, max_records: int) -> list[KafkaRecord]:
        with scrubbed_errors(self._config, "poll"):
            try:
                batches = self._consumer.poll(
                    timeout_ms=int(timeout_s * 1000), max_records=max_records
                )
            except _errors.KafkaError as err:
                # kafka-python 3 lets a refused connection out of poll() while the broker
                # restarts (2.x retried it inside): a retriable error is an empty poll, and
                # the watch below raises BrokerUnreachableError once the outage outlasts
                # ``unreachable_timeout_s``; so does one that keeps coming that long.
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                too_long = now - self._failing_since > self._config.unreachable_timeout_s
                if not getattr(err, "retriable", False) or too_long:
                    raise
                _log.debug("poll: %s (retried)", type(err).__name__)
                time.sleep(min(timeout_s, 0.1))  # a refused connection fails at once
                batches = {}
            else:
                self._failing_since = None
        if not batches:
            self._watch.check()  # records prove a connection: only an empty poll asks
        else:
            self._watch.last_up = time.monotonic()
        return [_record(r) for records in batches.values() for r in records]

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        with scrubbed_errors(self._config, "seek"):
            for tp, offset in offsets.items():
                self._consumer.seek(_KTP(*tp), offset)

    def group_metadata(self) -> Any:
        with scrubbed_errors(self._config, "group metadata"):
            return self._consumer.group_metadata()

    def assignment(self) -> set[TopicPartition]:
        with scrubbed_errors(self._config, "assignment"):
            found = self._consumer.assignment()
        return {TopicPartition(tp.topic, tp.partition) for tp in found}

    def position(self, tp: TopicPartition) -> int:
        with scrubbed_errors(self._config, "position"):
            return self._consumer.position(_KTP(*tp))

    def beginning_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        with scrubbed_errors(self._config, "beginning offsets"):
            found = self._consumer.beginning_offsets([_KTP(*tp) for tp in tps])
        return {TopicPartition(tp.topic, tp.partition): o for tp, o in found.items()}

    def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        with scrubbed_errors(self._config, "end offsets"):
            found = self._consumer.end_offsets([_KTP(*tp) for tp in tps])
        return {TopicPartition(tp.topic, tp.partition): o for tp, o in found.items()}

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        self._need_group("committed offsets")
        with scrubbed_errors(self._config, "committed offsets"):
            return {TopicPartition(*tp): self._consumer.committed(_KTP(*tp)) for tp in tps}

    def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        self._need_group("commit")
        request = {_KTP(*tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        with scrubbed_errors(self._config, "commit"):
            if asynchronous:
                self._consumer.commit_async(request, callback=self._on_commit)
            else:
                self._consumer.commit(request)

    def _on_commit(self, offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):
            self.async_commit_failures += 1
            _log.warning(
                "asynchronous commit failed (the records will be replayed): %s",
                scrub(str(response), self._config.secrets()),
            )

    def close(self) -> None:
        with scrubbed_errors(self._config, "close"):
            self._consumer.close(autocommit=False)

    def _need_group(self, what: str) -> None:
        if self._config.group_id is None:
            raise KafkaClientError(f"{what} needs a consumer group: set group_id in the config")


# Errors after which a transactional producer cannot go on (kafka-python also marks its
# transaction manager fatal, which is checked first).
_FATAL = (
    _errors.ProducerFencedError,
    _errors.InvalidProducerEpochError,
    _errors.TransactionalIdAuthorizationFailedError,
    _errors.UnsupportedVersionError,
    _errors.UnsupportedForMessageFormatError,
)
_FENCED = (_errors.ProducerFencedError, _errors.InvalidProducerEpochError)
# Group errors of send_offsets_to_transaction that mean "a rebalance took the partitions"
_GROUP_FENCED = ("IllegalGeneration", "UnknownMemberId", "FencedInstanceId", "CommitFailed")


class Producer(KafkaProducerClient):
    """A kafka-python ``KafkaProducer`` with ``acks=all`` (transactional with a
    ``transactional_id``)."""

    def __init__(
        self,
        config: KafkaConfig,
        *,
        transactional_id: str | None = None,
        transaction_timeout_s: float = 60.0,
    ):
        self._config = config
        defaults: dict[str, Any] = {"acks": "all"}
        if transactional_id is not None:
            defaults["transactional_id"] = transactional_id
            defaults["transaction_timeout_ms"] = int(transaction_timeout_s * 1000)
        if config.compression_type is not None:
            defaults["compression_type"] = (
                None if config.compression_type == "none" else config.compression_type
            )
        kwargs = client_kwargs(config, KafkaProducer, **defaults)
        codec = kwargs.get("compression_type")
        if codec in _CODECS and codec in missing_codecs():
            raise KafkaClientError(
                f"compression_type {codec!r} needs the {_CODECS[codec][1]} package: "
                f"pip install 'kafka-python[{codec}]'"
            )
        self._producer = _build(config, KafkaProducer, kwargs, "kafka-python producer")
        self._pending: list[tuple[str, Any]] = []

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | Sequence[tuple[str, bytes | None]] = (),
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        with scrubbed_errors(self._config, f"send to {topic!r}"):
            future = self._producer.send(
                topic,
                value=value,
                key=key,
                headers=list(headers) or None,
                partition=partition,
                timestamp_ms=timestamp_ms,
            )
        self._pending.append((topic, future))

    def flush(self, timeout_s: float = 60.0) -> int:
        with contextlib.suppress(KafkaTimeoutError):  # unfinished futures are reported below
            self._producer.flush(timeout=timeout_s)
        pending, self._pending = self._pending, []
        errors: list[tuple[str, int | None, str]] = []
        for topic, future in pending:
            if not future.is_done:
                errors.append((topic, None, f"not acknowledged within {timeout_s:g}s"))
                self._pending.append((topic, future))  # still queued: the next flush reports it
            elif future.failed():
                reason = scrub(
                    f"{type(future.exception).__name__}: {future.exception}", self._config.secrets()
                )
                errors.append((topic, None, reason))
        if errors:
            raise DeliveryError(
                f"{len(errors)} of {len(pending)} records were not delivered; "
                f"first: topic {errors[0][0]!r}: {errors[0][2]}",
                len(errors),
                errors[:10],
                unacknowledged=len(self._pending),
            )
        return len(pending)

    def close(self) -> None:
        with scrubbed_errors(self._config, "close"):
            self._producer.close(timeout=5)

    # -------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def _transaction_step(self, what: str):
        try:
            yield
        except TransactionError:
            raise
        except Exception as err:
            manager = getattr(self._producer, "_transaction_manager", None)
            fatal = isinstance(err, _FATAL) or bool(
                manager is not None and manager.has_fatal_error()
            )
            fenced = isinstance(err, _FENCED) or any(n in type(err).__name__ for n in _GROUP_FENCED)
            message = scrub(f"{what}: {type(err).__name__}: {err}", self._config.secrets())
            raise TransactionError(message, fatal=fatal, fenced=fenced) from None

    def init_transactions(self, timeout_s: float) -> None:
        with self._transaction_step("init_transactions"):
            self._producer.init_transactions()

    def begin_transaction(self) -> None:
        with self._transaction_step("begin_transaction"):
            self._producer.begin_transaction()

    def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: Any, timeout_s: float
    ) -> None:
        request = {_KTP(*tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        with self._transaction_step("send_offsets_to_transaction"):
            self._producer.send_offsets_to_transaction(request, group_metadata)

    def commit_transaction(self, timeout_s: float) -> int:
        try:
            sent = self.flush(timeout_s)  # every record delivered, or the error says which
        except DeliveryError as err:
            raise TransactionError(f"commit_transaction: {err}") from None
        with self._transaction_step("commit_transaction"):
            self._producer.commit_transaction()
        return sent

    def abort_transaction(self, timeout_s: float) -> None:
        with self._transaction_step("abort_transaction"):
            self._producer.abort_transaction()
        self._pending = []

    def abort(self) -> None:
        sender = getattr(self._producer, "_sender", None)  # kafka-python's I/O thread
        with scrubbed_errors(self._config, "abort"):
            if sender is not None:
                sender.force_close()  # fails the unsent batches instead of sending them
            with contextlib.suppress(KafkaTimeoutError):  # close() flushes first
                self._producer.close(timeout=0)
        self._pending = []

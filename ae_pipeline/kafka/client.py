"""A small client interface over kafka-python and confluent-kafka, and the factories.

``kafka-python`` (pure Python, always installed) is the default; ``confluent`` (librdkafka,
the ``[fast]`` extra) is several times faster. Both return :class:`KafkaRecord` objects and
raise :class:`KafkaClientError` / :class:`DeliveryError` with secret-free messages.

Example:
    >>> with create_consumer({"bootstrap.servers": "127.0.0.1:9092"}) as c:  # doctest: +SKIP
    ...     c.assign({TopicPartition("events", 0): 0})
    ...     batch = c.poll(timeout_s=1.0, max_records=500)
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ae_pipeline.kafka.clients as clients
from ae_pipeline.kafka.config import KafkaConfig
from ae_pipeline.kafka.errors import BrokerUnreachableError, KafkaClientError
from ae_pipeline.kafka.records import Headers, KafkaRecord, TopicPartition
from ae_pipeline.kafka.redaction import guard_logs, scrub

_log = logging.getLogger(__name__)

CLIENTS = clients.in_process_clients()
"""The clients with a consumer and a producer in this process, from the registry
(:mod:`ae_pipeline.kafka.clients`): ``kafka-python`` and ``confluent``."""
DEFAULT_CLIENT = "kafka-python"


class KafkaConsumerClient(abc.ABC):
    """A consumer with manual partition assignment (or a group subscription).

    What a client supports is declared here, so callers ask the client, never its name:

    Attributes:
        async_commits: whether ``commit(..., asynchronous=True)`` is worth using: its failures
            are counted in ``async_commit_failures`` and never resurface elsewhere (False:
            callers commit synchronously).
    """

    async_commits: bool = False

    @abc.abstractmethod
    def partitions(self, topic: str) -> list[int]:
        """The partition numbers of ``topic``.

        Raises:
            KafkaClientError: when the topic does not exist.
        """

    @abc.abstractmethod
    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read exactly these partitions, each from the given offset."""

    @abc.abstractmethod
    def subscribe(self, topics: Sequence[str]) -> None:
        """Join the consumer group on ``topics`` (partitions assigned by the group, during
        :meth:`poll`).

        Raises:
            BrokerUnreachableError: as :meth:`poll`.
        """

    @abc.abstractmethod
    def poll(self, timeout_s: float, max_records: int) -> list[KafkaRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first.

        Records are returned whatever codec their batches were compressed with (none, gzip,
        snappy, lz4, zstd).

        Raises:
            BrokerUnreachableError: when no broker connection has been up for the config's
                ``unreachable_timeout_s`` (checked at every poll).
            KafkaClientError: for any other failure.
        """

    @abc.abstractmethod
    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer reads now: those given to :meth:`assign`, or those the
        group assigned after :meth:`subscribe` (empty until then: the group assigns during
        :meth:`poll`). Asks no broker: cheap enough to call after every poll."""

    @abc.abstractmethod
    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record this consumer will return for an assigned ``tp``."""

    @abc.abstractmethod
    def beginning_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The first available offset of each partition."""

    @abc.abstractmethod
    def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last record of each partition: the high watermark, or for a
        ``read_committed`` consumer (confluent-kafka's default) the last stable offset (below
        any transaction still open)."""

    @abc.abstractmethod
    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition, None where it has none."""

    @abc.abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int], *, asynchronous: bool = False) -> None:
        """Commit ``offsets`` (the next offset to read) for the group.

        Synchronous by default (raises on failure). ``asynchronous=True`` sends the commit
        without waiting for the broker's answer; a failure is only logged (the records are
        replayed: duplicates, never losses), and a later commit supersedes it. Finish with a
        synchronous commit.
        """

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read each of these assigned partitions from the given offset on (the next poll
        returns records from there)."""
        raise NotImplementedError(f"{type(self).__name__} cannot seek")

    def group_metadata(self) -> Any:
        """This member's group metadata now (group id, generation, member id), for
        :meth:`KafkaProducerClient.send_offsets_to_transaction`: the broker refuses offsets
        sent with a generation that is no longer current (KIP-447), which fences a zombie."""
        raise NotImplementedError(f"{type(self).__name__} has no group metadata")

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the group (if subscribed) and close connections."""

    def __enter__(self) -> KafkaConsumerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KafkaProducerClient(abc.ABC):
    """A producer whose :meth:`flush` reports every failed delivery since the last flush."""

    @abc.abstractmethod
    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | Sequence[tuple[str, bytes | None]] = (),
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue one record (asynchronous; failures surface in :meth:`flush`)."""

    def send_many(
        self,
        topic: str,
        messages: Sequence[tuple[bytes | None, bytes | None, Headers | Sequence[Any]]],
    ) -> None:
        """Queue ``(key, value, headers)`` messages to ``topic``, in order; like :meth:`send`
        for each (clients override it to spend less per message)."""
        for key, value, headers in messages:
            self.send(topic, value, key=key, headers=headers)

    @abc.abstractmethod
    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait until every queued record is acknowledged.

        Returns:
            how many records were delivered since the last flush.

        Raises:
            DeliveryError: when any record since the last flush failed or timed out.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the producer (without flushing: call :meth:`flush` first)."""

    # Transactions (a producer built with a ``transactional_id``). Every method raises
    # TransactionError: ``fatal`` when the producer cannot go on (fenced), else the transaction
    # can be aborted (abort_transaction) and the work done again.

    def init_transactions(self, timeout_s: float) -> None:
        """Register the transactional id with the broker, fencing an older producer with the
        same id and aborting the transaction it left open."""
        raise NotImplementedError(f"{type(self).__name__} is not transactional")

    def begin_transaction(self) -> None:
        """Start a transaction: records sent until it is committed or aborted belong to it."""
        raise NotImplementedError(f"{type(self).__name__} is not transactional")

    def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: Any, timeout_s: float
    ) -> None:
        """Commit ``offsets`` (the next offsets to read) for the consumer group of
        ``group_metadata`` (:meth:`KafkaConsumerClient.group_metadata`) as part of the open
        transaction: they count only if it commits."""
        raise NotImplementedError(f"{type(self).__name__} is not transactional")

    def commit_transaction(self, timeout_s: float) -> int:
        """Deliver every record of the open transaction and commit it.

        Returns:
            how many records the transaction held.
        """
        raise NotImplementedError(f"{type(self).__name__} is not transactional")

    def abort_transaction(self, timeout_s: float) -> None:
        """Abort the open transaction: its records are never seen by ``read_committed``
        readers and its offsets never count."""
        raise NotImplementedError(f"{type(self).__name__} is not transactional")

    def abort(self) -> None:
        """Close the producer and drop the records it has not delivered yet, so that a caller
        who sends them again (with a new producer) does not also get them from this one.
        Records already on the wire may still arrive."""
        self.close()

    def __enter__(self) -> KafkaProducerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _module(client: str):
    """The module of the in-process client ``client`` (see :mod:`ae_pipeline.kafka.clients`)."""
    names = clients.in_process_clients()
    if client not in names:
        raise ValueError(f"unknown Kafka client {client!r}; choose one of {', '.join(names)}")
    return clients.load(client)


def check_client(client: str) -> str:
    """Returns ``client`` if it is one of :data:`CLIENTS` and its package is installed.

    Raises:
        ValueError: an unknown client, naming the choices.
        ImportError: its package is missing, naming the extra that brings it.
    """
    _module(client)
    return client


def producer_limit(config: KafkaConfig, client: str) -> tuple[str, int] | None:
    """``(setting, bytes)`` of the client's own limit on one produce request: its module's
    ``PRODUCER_LIMIT`` (``KafkaConfig`` section, setting, default), read from the config
    (None where the client declares none)."""
    declared = getattr(_module(client), "PRODUCER_LIMIT", None)
    if declared is None:
        return None
    section, name, default = declared
    return name, int(config.section(section).get(name, default))


def close_quietly(client: Any, what: str = "client") -> None:
    """Closes a Kafka client (or None), logging instead of raising: closing is best effort."""
    if client is None:
        return
    try:
        client.close()
    except Exception as err:
        _log.warning("closing the Kafka %s failed: %s", what, err)


def create_consumer(
    config: KafkaConfig | Mapping[str, Any],
    client: str = DEFAULT_CLIENT,
    **options: Any,
) -> KafkaConsumerClient:
    """A consumer built from one config.

    Args:
        config: a :class:`KafkaConfig` or a dict for :meth:`KafkaConfig.from_dict`.
        client: ``"kafka-python"`` or ``"confluent"``.
        **options: ``auto_offset_reset`` (``"earliest"``/``"latest"``), ``max_poll_records``
            and ``isolation_level`` (None: the client's default, which is ``"read_uncommitted"``
            for kafka-python and ``"read_committed"`` for confluent-kafka;
            ``"read_committed"``: records of open or aborted transactions are never returned,
            and committed offsets are read once stable); client-specific settings belong in
            the config's sections.

    Raises:
        ImportError: for ``"confluent"`` without confluent-kafka installed.
        KafkaClientError: when the client refuses the config (message scrubbed).
    """
    config = KafkaConfig.from_dict(config)
    module = _module(client)
    guard_logs(config.secrets())
    if config.uses_ssl:
        _TLS_ERRORS.watch()
    return module.Consumer(config, **options)


def create_producer(
    config: KafkaConfig | Mapping[str, Any],
    client: str = DEFAULT_CLIENT,
    *,
    transactional_id: str | None = None,
    transaction_timeout_s: float = 60.0,
) -> KafkaProducerClient:
    """A producer (``acks=all``) built from one config; see :func:`create_consumer`.

    With ``transactional_id``, an idempotent transactional producer: call
    :meth:`~KafkaProducerClient.init_transactions` once, then send inside
    ``begin_transaction`` / ``commit_transaction``. ``transaction_timeout_s``: how long the
    broker lets a transaction stay open before it aborts it (a producer that died mid-
    transaction blocks ``read_committed`` readers of its partitions that long).
    """
    config = KafkaConfig.from_dict(config)
    module = _module(client)
    guard_logs(config.secrets())
    if config.uses_ssl:
        _TLS_ERRORS.watch()
    if transactional_id is None:
        return module.Producer(config)
    if not transactional_id or not 0 < transaction_timeout_s < float("inf"):
        raise ValueError(
            "a transactional producer needs a non-empty transactional_id and a "
            f"transaction_timeout_s > 0, got {transactional_id!r}, {transaction_timeout_s!r}"
        )
    return module.Producer(
        config, transactional_id=transactional_id, transaction_timeout_s=transaction_timeout_s
    )


@contextlib.contextmanager
def scrubbed_errors(config: KafkaConfig, what: str) -> Iterator[None]:
    """Re-raise any client exception as :class:`KafkaClientError` without secrets.

    The original exception is neither chained nor shown as context: its message may hold one.
    """
    try:
        yield
    except KafkaClientError:
        raise
    except Exception as e:
        message = f"{what}: {type(e).__name__}: {e}"
        if config.uses_ssl:
            message += _TLS_ERRORS.hint()
        raise KafkaClientError(scrub(message, config.secrets())) from None


class BrokerWatch:
    """Turns "no broker connection for ``unreachable_timeout_s``" into
    :class:`BrokerUnreachableError`.

    ``connected()`` says whether the client has a broker connection up now: True, False, or
    None when it cannot tell (then nothing is ever raised). :meth:`check` (called by the
    clients at every poll) asks it at most every ``interval_s``.
    """

    def __init__(
        self,
        config: KafkaConfig,
        connected: Callable[[], bool | None],
        interval_s: float = 0.5,
    ):
        self._config = config
        self._connected = connected
        self._interval = interval_s
        self.last_up = time.monotonic()  # creation counts as the start of the wait
        self._next_check = 0.0

    def check(self) -> None:
        """Raises:
        BrokerUnreachableError: when no connection has been up for the timeout."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._interval
        up = self._connected()
        if up:
            self.last_up = now
        elif up is False and now - self.last_up >= self._config.unreachable_timeout_s:
            raise unreachable(self._config, now - self.last_up)


def unreachable(config: KafkaConfig, waited_s: float) -> BrokerUnreachableError:
    """The error for a broker that could not be reached for ``waited_s`` seconds."""
    message = (
        f"no Kafka broker reachable at {config.bootstrap_servers} for {waited_s:.0f}s "
        f"(unreachable_timeout_s={config.unreachable_timeout_s:g}); check the address, that "
        "the broker is up, and the security settings (protocol, TLS, SASL credentials)"
    )
    if config.uses_ssl:
        message += _TLS_ERRORS.hint()
    return BrokerUnreachableError(
        scrub(message, config.secrets()), config.bootstrap_servers, waited_s
    )


class _TlsErrors(logging.Handler):
    """Remembers the last TLS failure that the client libraries logged.

    Both clients log the cause of a failed TLS handshake (``certificate verify failed``,
    a host-name mismatch...), while their exceptions only say that no broker could be reached;
    :func:`scrubbed_errors` appends the cause to the error of a client that uses TLS.
    """

    WINDOW_S = 120.0
    LOGGERS = ("kafka", "ae_pipeline.kafka.librdkafka")

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.last: tuple[float, str] | None = None
        self._watching = False
        self._guard = threading.Lock()

    def watch(self) -> None:
        with self._guard:
            if not self._watching:
                for name in self.LOGGERS:
                    logging.getLogger(name).addHandler(self)
                self._watching = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed log call is not ours to report
            return
        low = text.lower()
        if "certificate" in low or "handshake" in low or ("ssl" in low and "fail" in low):
            self.last = (time.monotonic(), " ".join(text.split())[:400])

    def hint(self) -> str:
        last = self.last
        if last is None or time.monotonic() - last[0] > self.WINDOW_S:
            return ""
        return f" (the client logged this TLS error: {last[1]})"


_TLS_ERRORS = _TlsErrors()


class _CoordinatorMoves(logging.Filter):
    """Shows kafka-python's "Marking the coordinator dead ... NotCoordinatorError" at DEBUG.

    kafka-python logs it as a WARNING whenever the broker answers that it is not (or not yet)
    the group's coordinator: after a fresh broker creates ``__consumer_offsets``, or when the
    coordinator moves. The client then looks the coordinator up again and retries: an expected,
    retriable condition, not a warning. Other reasons (a lost connection...) keep their level.
    """

    LOGGER = "kafka.coordinator"
    RETRIABLE = ("NotCoordinatorError", "CoordinatorNotAvailableError")

    def __init__(self) -> None:
        super().__init__()
        self._installed = False
        self._guard = threading.Lock()

    def install(self) -> None:
        with self._guard:
            if not self._installed:
                logging.getLogger(self.LOGGER).addFilter(self)
                self._installed = True

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not str(record.msg).startswith(
            "Marking the coordinator dead"
        ):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if not any(type(a).__name__ in self.RETRIABLE for a in args):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


COORDINATOR_MOVES = _CoordinatorMoves()

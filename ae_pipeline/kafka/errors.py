"""Errors of the Kafka layer; their messages never carry a secret."""

from __future__ import annotations


class KafkaClientError(RuntimeError):
    """A Kafka client could not be built or a request failed (message already scrubbed)."""


class DeliveryError(KafkaClientError):
    """Records were not acknowledged by the broker when a producer flushed.

    Attributes:
        failed: how many records failed (``unacknowledged`` included).
        errors: up to ten ``(topic, partition, reason)`` examples.
        unacknowledged: how many of them were neither delivered nor refused when the flush
            gave up: they stay queued in the producer, which keeps sending them, and the next
            flush reports them.
    """

    def __init__(
        self,
        message: str,
        failed: int,
        errors: list[tuple[str, int | None, str]],
        unacknowledged: int = 0,
    ):
        super().__init__(message)
        self.failed = failed
        self.errors = errors
        self.unacknowledged = unacknowledged


class BrokerUnreachableError(KafkaClientError):
    """No broker could be reached for ``waited_s`` seconds (``KafkaConfig.unreachable_timeout_s``).

    Raised by a consumer's ``poll``/``subscribe`` (and by ``create_consumer`` /
    ``create_producer`` with kafka-python, which connects while it is built), counted from the
    client's creation or from the last moment it had a broker connection.

    Attributes:
        bootstrap_servers: the addresses tried.
        waited_s: how long no broker connection was up.
    """

    def __init__(self, message: str, bootstrap_servers: str, waited_s: float):
        super().__init__(message)
        self.bootstrap_servers = bootstrap_servers
        self.waited_s = waited_s


class TransactionError(KafkaClientError):
    """A Kafka transaction could not be completed (exactly-once processing).

    Attributes:
        fatal: True when the producer cannot go on: another producer with the same
            transactional id fenced it, or the client reports a fatal error. False when the
            transaction can be aborted and the batch read again (a rebalance fenced this
            member's offsets, a delivery failed, a request timed out).
        fenced: True when the error says that a newer producer or group member took over.
    """

    def __init__(self, message: str, *, fatal: bool = False, fenced: bool = False):
        super().__init__(message)
        self.fatal = fatal
        self.fenced = fenced


# --- what kind of failure an error is (both clients' wording) ------------------------------

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


def is_outage(error: Exception) -> bool:
    """Whether an error may be the broker's or the network's (retried for as long as it
    lasts) rather than one record's (given up on after a few tries at the same offset)."""
    if isinstance(error, BrokerUnreachableError) or is_transient(error):
        return True
    text = str(error).lower()
    return any(word in text for word in _OUTAGE_WORDS)


_OUTAGE_WORDS = ("broker", "unreachable", "metadata", "coordinator", "leader", "connect", "auth")


def is_too_large(error: KafkaClientError) -> bool:
    """Whether a delivery failed because a message was over a broker's or producer's limit."""
    reasons = [r for _, _, r in getattr(error, "errors", ())] or [str(error)]
    return any(
        word in reason.lower().replace("_", "")
        for reason in reasons
        for word in ("toolarge", "too large", "msgsizetoolarge", "messagesizetoolarge")
    )


def is_transient(error: KafkaClientError) -> bool:
    """Whether sending again may help: every failure looks like an unreachable or restarting
    broker (a record too large, a missing permission, ... fail the bundle at once)."""
    reasons = [r for _, _, r in getattr(error, "errors", ())] or [str(error)]
    return all(any(word in reason.lower() for word in _TRANSIENT) for reason in reasons)

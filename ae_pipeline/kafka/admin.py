"""One-call helpers: create topics, list partitions, end and committed offsets.

Each opens a short-lived client from one config and closes it.

Example:
    >>> cfg = {"bootstrap.servers": "127.0.0.1:9092", "group.id": "scorers"}  # doctest: +SKIP
    >>> create_topics(cfg, {"events": 4})                                     # doctest: +SKIP
    >>> end_offsets(cfg, "events")                                            # doctest: +SKIP
    {TopicPartition(topic='events', partition=0): 0, ...}
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ae_pipeline.kafka.client import DEFAULT_CLIENT, _module, create_consumer, scrubbed_errors
from ae_pipeline.kafka.config import KafkaConfig
from ae_pipeline.kafka.records import TopicPartition
from ae_pipeline.kafka.redaction import guard_logs

ConfigLike = KafkaConfig | Mapping[str, Any]


def create_topics(
    config: ConfigLike,
    topics: Mapping[str, int] | Iterable[str],
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    exist_ok: bool = True,
    timeout_s: float = 30.0,
    client: str = DEFAULT_CLIENT,
) -> None:
    """Create topics and wait until their metadata is visible.

    Args:
        config: connection settings.
        topics: ``{name: partitions}``, or names (each with ``partitions``).
        partitions: partitions of topics given by name only.
        replication_factor: replicas per partition.
        exist_ok: do not fail on a topic that already exists.
        timeout_s: how long to wait for the broker.
        client: the Kafka client whose admin API creates them (each client module's
            ``create_topics``).

    Raises:
        ae_pipeline.kafka.KafkaClientError: the broker refused (a topic that exists with
            ``exist_ok=False``: reason in the message), or cannot be reached.
        TimeoutError: a topic's partitions did not all show within ``timeout_s``.
    """
    config = KafkaConfig.from_dict(config)
    guard_logs(config.secrets())
    wanted = dict(topics) if isinstance(topics, Mapping) else dict.fromkeys(topics, partitions)
    with scrubbed_errors(config, "create topics"):
        _module(client).create_topics(
            config,
            wanted,
            replication_factor=replication_factor,
            exist_ok=exist_ok,
            timeout_s=timeout_s,
        )
    deadline = time.monotonic() + timeout_s
    with create_consumer(config.with_group(None), client) as consumer:
        for name, count in wanted.items():
            while len(consumer.partitions(name, timeout_s=timeout_s)) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {name!r} did not show {count} partitions")
                time.sleep(0.1)


def topic_partitions(
    config: ConfigLike, topic: str, *, client: str = DEFAULT_CLIENT
) -> list[TopicPartition]:
    """Every partition of ``topic``."""
    with create_consumer(KafkaConfig.from_dict(config).with_group(None), client) as consumer:
        return [TopicPartition(topic, p) for p in consumer.partitions(topic)]


def _resolve(consumer: Any, what: str | Sequence[TopicPartition]) -> list[TopicPartition]:
    if isinstance(what, str):
        return [TopicPartition(what, p) for p in consumer.partitions(what)]
    return [TopicPartition(*tp) for tp in what]


def end_offsets(
    config: ConfigLike,
    topic_or_partitions: str | Sequence[TopicPartition],
    *,
    client: str = DEFAULT_CLIENT,
) -> dict[TopicPartition, int]:
    """The end offset (next offset to be written) of each partition of a topic, or of the
    given partitions."""
    with create_consumer(KafkaConfig.from_dict(config).with_group(None), client) as consumer:
        return consumer.end_offsets(_resolve(consumer, topic_or_partitions))


def committed_offsets(
    config: ConfigLike,
    topic_or_partitions: str | Sequence[TopicPartition],
    *,
    group_id: str | None = None,
    client: str = DEFAULT_CLIENT,
) -> dict[TopicPartition, int | None]:
    """The committed offsets of a consumer group (``group_id`` or the config's), None where
    the group has none."""
    config = KafkaConfig.from_dict(config)
    if group_id is not None:
        config = config.with_group(group_id)
    with create_consumer(config, client) as consumer:
        return consumer.committed(_resolve(consumer, topic_or_partitions))

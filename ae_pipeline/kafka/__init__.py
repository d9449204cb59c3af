"""Kafka clients for ae-pipeline: one config, two clients, records, admin helpers.

No Apache Beam here: the Beam transforms (``ae_pipeline.beam.kafka_read``, ``kafka_write``)
and the plain consumer build on this package.

* :class:`KafkaConfig` - connection settings for kafka-python, confluent-kafka and Java.
* :func:`create_consumer`, :func:`create_producer` - clients behind one small interface.
* :class:`BrokerUnreachableError` - no broker reachable for ``unreachable_timeout_s``;
  :class:`TransactionError` - a transaction failed (abort and redo, or ``fatal``).
* :class:`KafkaRecord`, :class:`TopicPartition` - what consumers return; :func:`next_offsets`
  - the offsets to commit after a batch of records.
* :func:`redact`, :func:`scrub` - secrets never reach logs, reprs or error messages.
* :func:`create_topics`, :func:`topic_partitions`, :func:`end_offsets`,
  :func:`committed_offsets` - one-call admin helpers.
"""

from ae_pipeline.kafka.admin import (
    committed_offsets,
    create_topics,
    end_offsets,
    topic_partitions,
)
from ae_pipeline.kafka.client import (
    CLIENTS,
    DEFAULT_CLIENT,
    KafkaConsumerClient,
    KafkaProducerClient,
    check_client,
    close_quietly,
    create_consumer,
    create_producer,
)
from ae_pipeline.kafka.config import COMPRESSION_TYPES, KafkaConfig
from ae_pipeline.kafka.errors import (
    BrokerUnreachableError,
    DeliveryError,
    KafkaClientError,
    TransactionError,
)
from ae_pipeline.kafka.records import KafkaRecord, TopicPartition, next_offsets
from ae_pipeline.kafka.redaction import REDACTED, redact, scrub

__all__ = [
    "CLIENTS",
    "COMPRESSION_TYPES",
    "DEFAULT_CLIENT",
    "REDACTED",
    "BrokerUnreachableError",
    "DeliveryError",
    "KafkaClientError",
    "KafkaConfig",
    "KafkaConsumerClient",
    "KafkaProducerClient",
    "KafkaRecord",
    "TopicPartition",
    "TransactionError",
    "check_client",
    "close_quietly",
    "committed_offsets",
    "create_consumer",
    "create_producer",
    "create_topics",
    "end_offsets",
    "next_offsets",
    "redact",
    "scrub",
    "topic_partitions",
]

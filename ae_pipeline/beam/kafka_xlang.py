"""Beam's cross-language Java KafkaIO with ae-pipeline's Kafka config: :func:`java_read` /
:func:`java_write` build ``ReadFromKafka`` / ``WriteToKafka`` with the Java client properties
of a :class:`~ae_pipeline.kafka.KafkaConfig` (SASL/SSL settings included), as the Java
client module translates it (:mod:`ae_pipeline.kafka.java_client`).

They need an expansion service: Beam's default (which downloads its jar), one of your own, or,
without Docker or network, :func:`ae_pipeline.local.java_xlang.java_expansion_service` with a
local :class:`~ae_pipeline.local.java_xlang.JavaWorkerPool` (what the tests use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam

from ae_pipeline.kafka import KafkaConfig, java_client


def java_properties(config: KafkaConfig) -> dict[str, str]:
    """The Java Kafka client's translation of a :class:`KafkaConfig` (for Beam's
    cross-language KafkaIO), the ``java`` section last: the Java client module's own
    :func:`ae_pipeline.kafka.java_client.settings`.

    Raises:
        ValueError: for mutual TLS with separate certificate and key files (Java reads one
            PEM key store; pass ``ssl.keystore.*`` in the ``java`` section instead).
    """
    return java_client.settings(config)


def java_read(
    topics: str | Sequence[str],
    config: KafkaConfig | Mapping[str, Any],
    expansion_service: Any,
    *,
    start: str = "earliest",
    max_num_records: int | None = None,
    commit_offsets: bool = False,
    with_metadata: bool = False,
) -> beam.PTransform:
    """Beam's cross-language ``ReadFromKafka`` with our config (Java client properties).

    Emits ``(key, value)`` bytes pairs, or Beam Rows with topic/partition/offset/timestamp
    with ``with_metadata=True``. The config, secrets included, travels in the pipeline
    definition (the Java transform's payload): runners may show it.

    Args:
        topics: one topic or several.
        config: a :class:`KafkaConfig` or one config dict.
        expansion_service: an expansion service (see the module docstring).
        start: ``"earliest"`` or ``"latest"`` (Kafka's ``auto.offset.reset``; a group with
            committed offsets starts there).
        max_num_records: stop after this many records (a bounded read).
        commit_offsets: commit the group's offsets in bundle finalization.
        with_metadata: emit Rows with the records' metadata.
    """
    from apache_beam.io.kafka import ReadFromKafka

    config = KafkaConfig.from_dict(config)
    return ReadFromKafka(
        consumer_config={**java_properties(config), "auto.offset.reset": start},
        topics=[topics] if isinstance(topics, str) else list(topics),
        max_num_records=max_num_records,
        commit_offset_in_finalize=commit_offsets,
        with_metadata=with_metadata,
        expansion_service=expansion_service,
    )


def java_write(
    topic: str, config: KafkaConfig | Mapping[str, Any], expansion_service: Any
) -> beam.PTransform:
    """Beam's cross-language ``WriteToKafka``; takes ``(key, value)`` bytes pairs (declare
    ``.with_output_types(tuple[bytes, bytes])`` on the input). See :func:`java_read`."""
    from apache_beam.io.kafka import WriteToKafka

    properties = java_properties(KafkaConfig.from_dict(config).with_group(None))
    return WriteToKafka(
        producer_config=properties, topic=topic, expansion_service=expansion_service
    )

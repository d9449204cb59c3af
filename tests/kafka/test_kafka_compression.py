"""Every codec Kafka allows (gzip, snappy, lz4, zstd), read and written by both clients.

The topics are written once per module: per codec by Kafka's own console producer (a client we
did not write) and by each of our producers with ``compression_type``. What the broker really
stored is read from its log segments (Kafka's DumpLogSegments), so a test cannot pass on
uncompressed batches.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import pytest

from ae_pipeline.beam.kafka_xlang import java_properties
from ae_pipeline.kafka import (
    COMPRESSION_TYPES,
    KafkaConfig,
    KafkaRecord,
    TopicPartition,
    create_consumer,
    create_producer,
    create_topics,
)
from ae_pipeline.kafka.kafka_python_client import missing_codecs
from ae_pipeline.local.kafka_broker import console_produce

pytestmark = pytest.mark.kafka

CODECS = ("gzip", "snappy", "lz4", "zstd")
CLIENTS = ("kafka-python", "confluent")
N = 60


def _record(codec: str, i: int) -> tuple[bytes, bytes]:
    """Key and value of record ``i``: JSON that compresses well, and differs per record."""
    value = {"id": i, "codec": codec, "f0": i * 0.25, "pad": "abc" * (i % 7), "flag": i % 2 == 0}
    return f"k{i}".encode(), json.dumps(value, separators=(",", ":")).encode()


def _expected(codec: str) -> list[tuple[bytes, bytes]]:
    return [_record(codec, i) for i in range(N)]


@pytest.fixture(scope="module")
def written(kafka_broker):
    """``(topics, stored)``: topics[(writer, codec)] -> topic name, for writer "console" and
    each client; stored[topic] -> {codec: record batches} as the broker keeps them."""
    config = KafkaConfig(kafka_broker.bootstrap_servers)
    topics: dict[tuple[str, str], str] = {}
    for codec in CODECS:
        for writer in ("console", *CLIENTS):
            topic = f"codec-{writer}-{codec}-{uuid.uuid4().hex[:6]}"
            create_topics(config, {topic: 1})
            topics[(writer, codec)] = topic
        lines = [f"{k.decode()}\t{v.decode()}" for k, v in _expected(codec)]
        console_produce(
            kafka_broker.bootstrap_servers,
            topics[("console", codec)],
            lines,
            compression=codec,
            key_separator="\t",
        )
        # Records wait a little to share batches: a client may send a batch that compression
        # would not shrink (one small record) uncompressed, as kafka-python does.
        producer_config = dataclasses.replace(
            config,
            compression_type=codec,
            kafka_python={"linger_ms": 200},
            confluent={"linger.ms": 200},
        )
        for client in CLIENTS:
            with create_producer(producer_config, client) as producer:
                for key, value in _expected(codec):
                    producer.send(topics[(client, codec)], value, key=key)
                assert producer.flush(30) == N
    return topics, kafka_broker.batch_codecs(*topics.values())


def _read_all(config: KafkaConfig, client: str, topic: str) -> list[KafkaRecord]:
    out: list[KafkaRecord] = []
    with create_consumer(config, client) as consumer:
        consumer.assign({TopicPartition(topic, 0): 0})
        deadline = time.monotonic() + 30
        while len(out) < N and time.monotonic() < deadline:
            out.extend(consumer.poll(0.5, 100))
    return out


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("client", CLIENTS)
def test_console_producer_topics_of_every_codec_are_read_by_both_clients(
    written, bootstrap_servers, client, codec
):
    topics, stored = written
    topic = topics[("console", codec)]
    # Really compressed, with that codec (a batch that would not shrink may stay uncompressed).
    assert codec in stored[topic] and set(stored[topic]) <= {codec, "none"}, stored[topic]
    records = _read_all(KafkaConfig(bootstrap_servers), client, topic)
    assert [(r.key, r.value) for r in records] == _expected(codec)
    assert [r.offset for r in records] == list(range(N))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("writer", CLIENTS)
def test_both_producers_write_every_codec_and_both_clients_read_it(
    written, bootstrap_servers, writer, codec
):
    topics, stored = written
    topic = topics[(writer, codec)]
    # Compressed with the codec (a batch that would not shrink may stay uncompressed).
    assert codec in stored[topic] and set(stored[topic]) <= {codec, "none"}, stored[topic]
    for reader in CLIENTS:
        records = _read_all(KafkaConfig(bootstrap_servers), reader, topic)
        assert [(r.key, r.value) for r in records] == _expected(codec), (writer, reader)


def test_kafka_python_has_every_codec_installed():
    # Without python-snappy, lz4 or zstandard kafka-python cannot read such topics at all.
    assert missing_codecs() == []


def test_compression_type_is_checked_and_translated_for_every_client():
    config = KafkaConfig.from_dict({"bootstrap.servers": "b:9092", "compression.type": "LZ4"})
    assert config.compression_type == "lz4"
    assert java_properties(config)["compression.type"] == "lz4"
    assert "compression.type" not in java_properties(KafkaConfig("b:9092"))
    assert set(COMPRESSION_TYPES) == {"none", *CODECS}
    with pytest.raises(ValueError, match="compression_type must be one of none, gzip"):
        KafkaConfig("b:9092", compression_type="brotli")

"""Smoke tests of the real broker with both Kafka clients: keys, headers, committed resumes."""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = pytest.mark.kafka

N = 20
COMMIT_AT = 12


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def test_kafka_python_keys_headers_and_group_resume(bootstrap_servers):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topic, group = _topic("smoke-kp"), _topic("group")
    _create_topic(bootstrap_servers, topic)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    for i in range(N):
        producer.send(
            topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("h", b"%d" % i)]
        )
    producer.flush()
    producer.close()

    def consumer() -> KafkaConsumer:
        return KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    def take(consumer: KafkaConsumer, n: int) -> list:
        """The next ``n`` messages (the group's join included: up to a minute)."""
        out: list = []
        deadline = time.monotonic() + 60
        while len(out) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=n - len(out)).values():
                out.extend(batch)
        assert len(out) == n, f"timed out after {len(out)} of {n} messages"
        return out

    first = consumer()
    seen = take(first, COMMIT_AT)
    tp = TopicPartition(topic, 0)
    first.commit({tp: OffsetAndMetadata(seen[-1].offset + 1, "", -1)})
    first.close()
    assert [m.key for m in seen] == [f"k{i}".encode() for i in range(COMMIT_AT)]
    assert [m.value for m in seen] == [f"v{i}".encode() for i in range(COMMIT_AT)]
    assert seen[3].headers == [("h", b"3")]

    second = consumer()
    rest = take(second, N - COMMIT_AT)
    assert not second.poll(timeout_ms=1000)  # nothing beyond the end
    second.close()
    # Resumes exactly at the commit: no gap, no replay.
    assert [m.offset for m in rest] == list(range(COMMIT_AT, N))
    assert rest[0].key == f"k{COMMIT_AT}".encode()


def test_confluent_kafka_keys_headers_and_group_resume(bootstrap_servers):
    confluent_kafka = pytest.importorskip("confluent_kafka", reason="the [fast] extra")
    from confluent_kafka import Consumer, Producer

    topic, group = _topic("smoke-ck"), _topic("group")
    _create_topic(bootstrap_servers, topic)
    producer = Producer({"bootstrap.servers": bootstrap_servers, "acks": "all"})
    for i in range(N):
        producer.produce(topic, key=f"k{i}", value=f"v{i}", headers=[("h", b"%d" % i)])
    assert producer.flush(30) == 0

    conf = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }

    def take(consumer: Consumer, n: int) -> list:
        """The next ``n`` messages (the group's join included: up to a minute)."""
        out = []
        deadline = time.monotonic() + 60
        while len(out) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                out.append(msg)
        assert len(out) == n, f"timed out after {len(out)} of {n} messages"
        return out

    first = Consumer(conf)
    first.subscribe([topic])
    seen = take(first, COMMIT_AT)
    first.commit(message=seen[-1], asynchronous=False)
    first.close()
    assert [m.key() for m in seen] == [f"k{i}".encode() for i in range(COMMIT_AT)]
    assert seen[5].headers() == [("h", b"5")]

    second = Consumer(conf)
    second.subscribe([topic])
    rest = take(second, N - COMMIT_AT)
    assert second.poll(1.0) is None  # nothing beyond the end
    second.close()
    assert [m.offset() for m in rest] == list(range(COMMIT_AT, N))
    assert confluent_kafka.version()[0]

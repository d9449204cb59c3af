"""Both Kafka clients behind one interface, against the real broker."""

from __future__ import annotations

import logging
import time
import uuid
from types import SimpleNamespace

import pytest

from ae_pipeline.kafka import (
    DeliveryError,
    KafkaClientError,
    KafkaRecord,
    TopicPartition,
    committed_offsets,
    create_consumer,
    create_producer,
    end_offsets,
    next_offsets,
    topic_partitions,
)

pytestmark = pytest.mark.kafka


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request):
    if request.param == "confluent":
        pytest.importorskip("confluent_kafka", reason="the [fast] extra")
    return request.param


def _drain(consumer, n: int, timeout_s: float = 20.0) -> list[KafkaRecord]:
    out: list[KafkaRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out.extend(consumer.poll(0.5, 100))
    return out


def test_produce_assign_poll_offsets_and_commit(client, kafka_config, new_topic):
    topic = new_topic(partitions=3)
    with create_producer(kafka_config, client) as producer:
        for i in range(30):
            producer.send(
                topic,
                f"v{i}".encode(),
                key=f"k{i}".encode(),
                headers=[("h", b"%d" % i)],
                partition=i % 3,
                timestamp_ms=1_700_000_000_000 + i,
            )
        assert producer.flush(30) == 30
    tps = topic_partitions(kafka_config, topic, client=client)
    assert tps == [TopicPartition(topic, p) for p in range(3)]
    assert end_offsets(kafka_config, topic, client=client) == dict.fromkeys(tps, 10)

    with create_consumer(kafka_config, client) as consumer:
        assert consumer.partitions(topic) == [0, 1, 2]
        assert consumer.beginning_offsets(tps) == dict.fromkeys(tps, 0)
        consumer.assign({tps[0]: 0, tps[1]: 4, tps[2]: 10})
        records = _drain(consumer, 16)
        assert len(records) == 16
        assert consumer.poll(0.2, 100) == []  # caught up: nothing more, quickly
        assert consumer.position(tps[1]) == 10
        first = min((r for r in records if r.partition == 0), key=lambda r: r.offset)
        assert first == KafkaRecord(topic, 0, 0, 1_700_000_000_000, b"k0", b"v0", (("h", b"0"),))
        assert sorted((r.partition, r.offset) for r in records) == [
            *((0, o) for o in range(10)),
            *((1, o) for o in range(4, 10)),
        ]
        assert consumer.committed(tps) == dict.fromkeys(tps, None)
        consumer.commit({tps[0]: 10, tps[1]: 7})
    assert committed_offsets(kafka_config, topic, client=client) == {
        tps[0]: 10,
        tps[1]: 7,
        tps[2]: None,
    }


def test_unknown_topic_and_missing_group_are_clear_errors(client, kafka_config):
    with create_consumer(kafka_config.with_group(None), client) as consumer:
        with pytest.raises(KafkaClientError, match="does not exist"):
            consumer.partitions(f"missing-{uuid.uuid4().hex[:6]}", timeout_s=1.0)
        with pytest.raises(KafkaClientError, match="group_id"):
            consumer.commit({TopicPartition("t", 0): 1})


def test_broker_rejection_is_a_delivery_error(client, kafka_config):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = f"small-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_config.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "200"})])
    finally:
        admin.close()
    topic_partitions(kafka_config, topic)  # wait for metadata
    with create_producer(kafka_config, client) as producer:
        producer.send(topic, b"small")
        assert producer.flush(30) == 1
        producer.send(topic, b"x" * 5_000)
        with pytest.raises(DeliveryError) as info:
            producer.flush(30)
    assert info.value.failed == 1
    assert "1 of 1 records were not delivered" in str(info.value)
    assert "large" in str(info.value).lower()


def test_send_many_keeps_order_headers_and_reports_failures(client, kafka_config, new_topic):
    """``send_many`` queues like :meth:`send` per message (order, keys, header lists and
    tuples, none), and its failures surface in ``flush`` like those of ``send``."""
    topic = new_topic(partitions=1)
    shared = [("model_version", b"v1")]
    messages = [
        (f"k{i}".encode() if i % 2 else None, f"v{i}".encode(), shared if i % 3 else (("h", b"t"),))
        for i in range(40)
    ]
    messages[5] = (b"k5", b"v5", ())
    with create_producer(kafka_config, client) as producer:
        producer.send_many(topic, messages)
        assert producer.flush(30) == 40
        with pytest.raises((DeliveryError, KafkaClientError)):  # at send or at flush
            producer.send_many(topic, [(None, b"x" * 2_000_000, ())])  # over message.max.bytes
            producer.flush(10)
    assert shared == [("model_version", b"v1")]  # header lists are not changed
    with create_consumer(kafka_config, client) as consumer:
        consumer.assign({TopicPartition(topic, 0): 0})
        records = _drain(consumer, 40)
    assert [(r.key, r.value, r.headers) for r in records] == [
        (k, v, tuple(h) if h else ()) for k, v, h in messages
    ]


def test_next_offsets_is_one_past_the_highest_offset_per_partition():
    records = [KafkaRecord("a", p, o, -1, None, b"") for p, o in ((0, 4), (1, 9), (0, 6), (0, 5))]
    assert next_offsets(records) == {TopicPartition("a", 0): 7, TopicPartition("a", 1): 10}
    assert next_offsets([]) == {}


def test_abort_drops_the_producer_without_waiting(client, kafka_config, new_topic):
    """``abort`` (used before a bundle is sent again by a new producer) returns at once with
    records still queued, and never delivers a record twice by itself."""
    topic = new_topic(partitions=1)
    producer = create_producer(kafka_config, client)
    producer.send(topic, b"first")
    assert producer.flush(30) == 1
    for i in range(2000):
        producer.send(topic, b"%d" % i)
    started = time.monotonic()
    producer.abort()
    assert time.monotonic() - started < 5
    with create_producer(kafka_config, client) as again:
        again.send(topic, b"last")
        assert again.flush(30) == 1
    with create_consumer(kafka_config, client) as consumer:
        consumer.assign({TopicPartition(topic, 0): 0})
        values = [r.value for r in _drain(consumer, 2, timeout_s=5)]
        values += [r.value for r in _drain(consumer, 10_000, timeout_s=2)]
    assert values[0] == b"first" and b"last" in values
    assert len(values) == len(set(values)) <= 2002  # aborted records: at most once


def test_assignment_is_empty_until_assigned_then_the_partitions(
    client, kafka_config, new_topic, produce
):
    topic = new_topic(partitions=2)
    produce(topic, 2, 2)
    with create_consumer(kafka_config, client) as consumer:
        assert consumer.assignment() == set()
        consumer.assign({TopicPartition(topic, 1): 0})
        assert consumer.assignment() == {TopicPartition(topic, 1)}
    with create_consumer(kafka_config, client) as consumer:
        consumer.subscribe([topic])
        assert consumer.assignment() == set()  # the group assigns during poll()
        assert len(_drain(consumer, 2)) == 2
        assert consumer.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}


def test_coordinator_moves_are_debug_not_warnings(kafka_config, caplog):
    # kafka-python's own code path: a broker answering NotCoordinator is retried by the client.
    from kafka import errors
    from kafka.coordinator.base import BaseCoordinator

    create_consumer(kafka_config, "kafka-python").close()  # installs the filter
    coordinator = SimpleNamespace(coordinator_id="coordinator-1", group_id="g")
    with caplog.at_level(logging.INFO, logger="kafka.coordinator"):
        BaseCoordinator.coordinator_dead(coordinator, errors.NotCoordinatorError())
        coordinator.coordinator_id = "coordinator-1"
        BaseCoordinator.coordinator_dead(coordinator, errors.KafkaConnectionError("lost"))
    dead = [r for r in caplog.records if "coordinator dead" in r.getMessage()]
    assert [(r.levelname, "NotCoordinator" in r.getMessage()) for r in dead] == [("WARNING", False)]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="kafka.coordinator"):
        coordinator.coordinator_id = "coordinator-1"
        BaseCoordinator.coordinator_dead(coordinator, errors.NotCoordinatorError())
    dead = [r for r in caplog.records if "coordinator dead" in r.getMessage()]
    assert [r.levelname for r in dead] == ["DEBUG"]


def test_create_topics_with_either_clients_admin_api(client, kafka_config):
    from ae_pipeline.kafka import create_topics

    tag = uuid.uuid4().hex[:8]
    wanted = {f"adm-a-{tag}": 3, f"adm-b-{tag}": 1}
    create_topics(kafka_config, wanted, client=client)
    for name, count in wanted.items():
        assert len(topic_partitions(kafka_config, name, client=client)) == count
    create_topics(kafka_config, wanted, client=client)  # exist_ok: nothing happens
    with pytest.raises(KafkaClientError, match=r"(?i)already exists|TOPIC_ALREADY_EXISTS"):
        create_topics(kafka_config, [f"adm-a-{tag}"], exist_ok=False, client=client)

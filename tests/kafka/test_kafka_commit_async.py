"""Asynchronous commits (what the plain consumer uses inside its loop), on the real broker."""

from __future__ import annotations

import time

import pytest

from ae_pipeline.kafka import TopicPartition, create_consumer, create_producer


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request):
    return request.param


def test_asynchronous_commit_lands_and_a_later_commit_supersedes(client, kafka_config, new_topic):
    topic = new_topic(partitions=2)
    with create_producer(kafka_config, client) as producer:
        for i in range(20):
            producer.send(topic, b"v%d" % i, partition=i % 2)
        producer.flush(30)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    with create_consumer(kafka_config, client) as consumer:
        consumer.subscribe([topic])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            got.extend(consumer.poll(0.5, 100))
        assert len(got) == 20
        consumer.commit({tps[0]: 3, tps[1]: 4}, asynchronous=True)
        consumer.commit({tps[0]: 7}, asynchronous=True)
        deadline = time.monotonic() + 20
        seen = None
        while time.monotonic() < deadline:
            consumer.poll(0.2, 1)  # serves the commit callbacks
            seen = consumer.committed(tps)
            if seen == {tps[0]: 7, tps[1]: 4}:
                break
        assert seen == {tps[0]: 7, tps[1]: 4}
        consumer.commit({tps[0]: 10, tps[1]: 10})  # synchronous
        assert consumer.committed(tps) == {tps[0]: 10, tps[1]: 10}

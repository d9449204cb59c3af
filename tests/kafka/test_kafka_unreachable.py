"""An unreachable broker is an error, the same for both clients: BrokerUnreachableError once no
broker connection has been up for ``unreachable_timeout_s`` (at start, or after it went away);
a reachable broker with nothing to read is never one."""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest

from ae_pipeline.kafka import (
    BrokerUnreachableError,
    KafkaClientError,
    KafkaConfig,
    create_consumer,
    create_producer,
    create_topics,
)
from ae_pipeline.kafka.client import BrokerWatch
from ae_pipeline.local.kafka_broker import KafkaBroker, free_port

CLIENTS = ("kafka-python", "confluent")
TIMEOUT_S = 3.0
MARGIN_S = 30.0  # a loaded machine may serve a poll late; the error never comes early


def _poll_until_error(consumer, limit_s: float) -> BrokerUnreachableError:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            consumer.poll(0.2, 10)
        except BrokerUnreachableError as e:
            return e
    raise AssertionError(f"no BrokerUnreachableError within {limit_s}s")


# ---- the rule, on its own -------------------------------------------------------------------


def test_watch_raises_only_after_the_timeout_without_a_connection():
    config = KafkaConfig("b:9092", unreachable_timeout_s=0.3)
    state = {"up": True}
    watch = BrokerWatch(config, lambda: state["up"], interval_s=0)
    end = time.monotonic() + 0.6
    while time.monotonic() < end:  # connected all along: never
        watch.check()
    state["up"] = False
    last_seen_up = watch.last_up
    with pytest.raises(BrokerUnreachableError) as caught:
        while True:
            watch.check()
    assert time.monotonic() - last_seen_up >= 0.3
    assert caught.value.waited_s >= 0.3
    assert caught.value.bootstrap_servers == "b:9092"
    assert isinstance(caught.value, KafkaClientError)


def test_watch_never_raises_when_the_client_cannot_tell():
    watch = BrokerWatch(KafkaConfig("b:9092", unreachable_timeout_s=0.1), lambda: None, 0)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        watch.check()


def test_timeout_is_configurable_and_checked():
    assert KafkaConfig("b:9092").unreachable_timeout_s == 60.0
    config = KafkaConfig.from_dict({"bootstrap.servers": "b:9092", "unreachable.timeout.s": 5})
    assert config.unreachable_timeout_s == 5
    assert config.with_unreachable_timeout(7.5).unreachable_timeout_s == 7.5
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError, match="unreachable_timeout_s must be a number > 0"):
            KafkaConfig("b:9092", unreachable_timeout_s=bad)


# ---- against a port where nothing listens ----------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_no_broker_at_the_address_is_an_error_after_the_timeout(client):
    address = f"127.0.0.1:{free_port()}"
    config = KafkaConfig(address, group_id="g", unreachable_timeout_s=TIMEOUT_S)
    start = time.monotonic()
    with pytest.raises(BrokerUnreachableError) as caught:
        # kafka-python connects while it builds the consumer; confluent-kafka in poll().
        consumer = create_consumer(config, client)
        try:
            consumer.subscribe(["events"])
            raise _poll_until_error(consumer, TIMEOUT_S + MARGIN_S)
        finally:
            consumer.close()
    elapsed = time.monotonic() - start
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + MARGIN_S
    message = str(caught.value)
    assert address in message and "unreachable_timeout_s=3" in message
    assert "\n" not in message


# ---- a broker that goes away -----------------------------------------------------------------


@pytest.fixture(scope="module")
def own_broker():
    """A broker of this module's own: the test stops it."""
    broker = KafkaBroker().start()
    yield broker
    broker.stop()


@pytest.mark.kafka
def test_broker_that_goes_away_is_an_error_for_both_clients_and_idle_is_not(own_broker):
    config = KafkaConfig(own_broker.bootstrap_servers, unreachable_timeout_s=TIMEOUT_S)
    topic = f"gone-{uuid.uuid4().hex[:8]}"
    create_topics(config, {topic: 2})
    with create_producer(config, "confluent") as producer:
        for i in range(4):
            producer.send(topic, b"v%d" % i, partition=i % 2)
        producer.flush(30)
    consumers = {
        c: create_consumer(config.with_group(f"g-{c}-{uuid.uuid4().hex[:6]}"), c) for c in CLIENTS
    }
    try:
        for consumer in consumers.values():
            assert consumer.assignment() == set()
            consumer.subscribe([topic])
        # Read everything, then stay idle longer than the timeout: a reachable broker with
        # nothing to read is no error.
        got = dict.fromkeys(CLIENTS, 0)
        deadline = time.monotonic() + 60
        while min(got.values()) < 4 and time.monotonic() < deadline:
            for c, consumer in consumers.items():
                got[c] += len(consumer.poll(0.2, 10))
        assert got == dict.fromkeys(CLIENTS, 4)
        idle_until = time.monotonic() + TIMEOUT_S + 1.5
        while time.monotonic() < idle_until:
            for consumer in consumers.values():
                assert consumer.poll(0.2, 10) == []
        for consumer in consumers.values():
            assert {tp.partition for tp in consumer.assignment()} == {0, 1}

        own_broker.stop(remove_data=False)
        stopped = time.monotonic()
        for c, consumer in consumers.items():
            error = _poll_until_error(consumer, TIMEOUT_S + MARGIN_S)
            assert error.waited_s >= TIMEOUT_S, c
            assert own_broker.bootstrap_servers in str(error), c
        assert time.monotonic() - stopped < TIMEOUT_S + MARGIN_S
    finally:
        for consumer in consumers.values():
            with contextlib.suppress(KafkaClientError):  # the broker is gone: may fail
                consumer.close()


@pytest.mark.kafka
@pytest.mark.parametrize("client", CLIENTS)
def test_a_short_outage_is_no_error_and_reading_resumes(client):
    """A broker restart shorter than ``unreachable_timeout_s``: every poll during it returns
    (kafka-python 3 raised KafkaConnectionError out of poll() here), and the records sent
    after the restart are read."""
    broker = KafkaBroker().start()
    try:
        config = KafkaConfig(broker.bootstrap_servers, unreachable_timeout_s=120)
        topic = f"blip-{uuid.uuid4().hex[:8]}"
        create_topics(config, {topic: 1})
        consumer = create_consumer(config.with_group(f"g-{uuid.uuid4().hex[:6]}"), client)
        try:
            consumer.subscribe([topic])
            got = []
            with create_producer(config, "confluent") as producer:
                producer.send(topic, b"before")
                producer.flush(30)
            deadline = time.monotonic() + 60
            while not got and time.monotonic() < deadline:
                got += consumer.poll(0.2, 10)
            assert [r.value for r in got] == [b"before"]
            broker.stop(remove_data=False)
            down_until = time.monotonic() + 6
            while time.monotonic() < down_until:
                assert consumer.poll(0.2, 10) == []
            broker.start()
            with create_producer(config, "confluent") as producer:
                producer.send(topic, b"after")
                producer.flush(60)
            deadline = time.monotonic() + 90
            while len(got) < 2 and time.monotonic() < deadline:
                got += consumer.poll(0.2, 10)
            assert [r.value for r in got] == [b"before", b"after"]
        finally:
            with contextlib.suppress(KafkaClientError):
                consumer.close()
    finally:
        broker.stop()

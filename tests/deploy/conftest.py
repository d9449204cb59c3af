"""Fixtures of the deploy tests: a SASL_PLAINTEXT broker and the local Flink session cluster."""

from __future__ import annotations

import pytest
from deploy_kit import SASL_PASSWORD, SASL_USER  # also puts deploy/* scripts on sys.path

from ae_pipeline.local.kafka_broker import KafkaBroker


@pytest.fixture(scope="module")
def sasl_broker():
    """A broker with a SASL_PLAINTEXT (PLAIN) listener beside its PLAINTEXT one, the way
    tests/kafka/test_kafka_sasl.py configures it; ``.sasl_bootstrap`` is its address."""
    broker = KafkaBroker()
    broker.add_sasl_plain_listener({SASL_USER: SASL_PASSWORD})
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def flink_session_cluster():
    """A Flink 1.19 session cluster from deploy/flink/local_cluster.py: a JobManager and a
    TaskManager JVM (2 slots), on free ports, killed on teardown; logs under logs/flink-<port>/.
    """
    from local_cluster import FlinkSessionCluster

    cluster = FlinkSessionCluster(taskmanagers=1, slots=2)
    cluster.start()
    yield cluster
    cluster.stop()

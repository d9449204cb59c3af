"""Fixtures of the deploy tests: a SASL_PLAINTEXT broker and the local Flink session cluster."""

from __future__ import annotations

import pytest
from deploy_kit import SASL_PASSWORD, SASL_USER  # also puts deploy/* scripts on sys.path

from ae_pipeline.local.kafka_broker import KafkaBroker, free_port


@pytest.fixture(scope="module")
def sasl_broker():
    """A broker with a SASL_PLAINTEXT (PLAIN) listener beside its PLAINTEXT one, the way
    tests/kafka/test_kafka_sasl.py configures it; ``.sasl_bootstrap`` is its address."""
    broker = KafkaBroker()
    sasl_port = free_port()
    broker.extra_config.update(
        {
            "listeners": f"PLAINTEXT://127.0.0.1:{broker.port},"
            f"SASL_PLAINTEXT://127.0.0.1:{sasl_port},"
            f"CONTROLLER://127.0.0.1:{broker.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker.port},"
            f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
            "SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'user_{SASL_USER}="{SASL_PASSWORD}";'
            ),
        }
    )
    broker.start()
    broker.sasl_bootstrap = f"127.0.0.1:{sasl_port}"
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

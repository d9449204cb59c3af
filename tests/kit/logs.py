"""Logging helpers of the tests: a fixture for tests that check what the Kafka clients log
(secrets never among it), and the quieting of Kafka clients that outlive their broker."""

from __future__ import annotations

import logging

import pytest

# Loggers of the Kafka clients: kafka-python's, ours (librdkafka's logs included) and the Beam
# read/write DoFns'.
KAFKA_CLIENT_LOGGERS = (
    "kafka",
    "ae_pipeline.kafka",
    "ae_pipeline.beam.kafka_read",
    "ae_pipeline.beam.kafka_write",
)


@pytest.fixture
def all_logs(caplog):
    """``caplog`` at DEBUG, the kafka-python loggers included (WARNING again afterwards).
    Import it into a ``conftest.py`` to use it."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("kafka").setLevel(logging.DEBUG)
    yield caplog
    logging.getLogger("kafka").setLevel(logging.WARNING)


def quiet_abandoned_kafka_clients() -> None:
    """Silences the Kafka clients' loggers for the rest of the process. Only for the teardown
    of a session's broker, once every test has run: Beam never tears down the DoFns of a
    cancelled streaming job, and their clients log connection errors for as long as the
    process lives once their broker stops."""
    for name in KAFKA_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)

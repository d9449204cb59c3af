"""SASL/PLAIN against a real broker: credentials pass through both clients and the Beam read,
and the password never shows in str/repr, error messages, logs or stderr."""

from __future__ import annotations

import traceback

import kit
import pytest

from ae_pipeline.kafka import (
    KafkaClientError,
    KafkaConfig,
    create_consumer,
    create_producer,
)
from ae_pipeline.local.kafka_broker import KafkaBroker

pytestmark = pytest.mark.kafka

PASSWORD = "Tr0ub4dor-&3-sasl"
WRONG = "wrong-Pa55word-9"


@pytest.fixture(scope="module")
def sasl_broker():
    """A second broker with a SASL_PLAINTEXT listener (user alice) beside its PLAINTEXT one."""
    broker = KafkaBroker()
    broker.add_sasl_plain_listener({"alice": PASSWORD})
    broker.start()
    yield broker
    broker.stop()


def _config(broker, password: str, **extra) -> KafkaConfig:
    return KafkaConfig.from_dict(
        {
            "bootstrap.servers": broker.sasl_bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "alice",
            "sasl.password": password,
            **extra,
        }
    )


def _assert_hidden(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_sasl_credentials_work_and_never_show(client, sasl_broker, all_logs, capfd):
    config = _config(sasl_broker, PASSWORD)
    assert kit.round_trip(config, client, f"sasl-{client}") == [(b"k", b"v")]
    out, err = capfd.readouterr()
    _assert_hidden(PASSWORD, repr(config), str(config), all_logs.text, out, err)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_wrong_password_fails_without_showing_it(client, sasl_broker, all_logs, capfd):
    # kafka-python retries a failed bootstrap until bootstrap_timeout_ms (default 30 s).
    config = _config(sasl_broker, WRONG, kafka_python={"bootstrap_timeout_ms": 3000})
    with pytest.raises(KafkaClientError) as info, create_consumer(config, client) as consumer:
        consumer.partitions("anything", timeout_s=2)
    out, err = capfd.readouterr()
    shown = "".join(traceback.format_exception(info.value))
    _assert_hidden(WRONG, shown, repr(info.value), all_logs.text, out, err)
    # The client's own exception is neither the cause nor shown as context.
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_client_config_errors_are_scrubbed():
    pytest.importorskip("confluent_kafka")
    # librdkafka echoes a rejected value into its error message: here, the password.
    config = KafkaConfig(
        "127.0.0.1:1",
        security_protocol="SASL_PLAINTEXT",
        sasl_username="alice",
        sasl_password=WRONG,
        confluent={"compression.type": WRONG},
    )
    with pytest.raises(KafkaClientError) as info:
        create_producer(config, "confluent")
    assert 'Invalid value "***" for configuration property' in str(info.value)
    _assert_hidden(WRONG, "".join(traceback.format_exception(info.value)))


def test_beam_round_trip_over_sasl_never_logs_the_password(
    sasl_broker, all_logs, capfd, beam_options
):
    config = _config(sasl_broker, PASSWORD, **{"group.id": "sasl-beam"})
    read, p, copied = kit.copy_with_beam(beam_options("fnapi"), config, "sasl-in", "sasl-out")
    assert copied == sorted(b"%d" % i for i in range(10))
    out, err = capfd.readouterr()
    _assert_hidden(
        PASSWORD,
        all_logs.text,
        out,
        err,
        repr(read),
        str(read.display_data()),
        str(p.to_runner_api().components.transforms),
    )

"""One config dict, translated for kafka-python, confluent-kafka and Java KafkaIO."""

from __future__ import annotations

import pytest

from ae_pipeline.beam.kafka_xlang import java_properties
from ae_pipeline.kafka import KafkaConfig
from ae_pipeline.kafka.confluent_client import settings as confluent_settings
from ae_pipeline.kafka.kafka_python_client import client_kwargs
from ae_pipeline.kafka.kafka_python_client import settings as kafka_python_settings


def test_plaintext_minimal():
    config = KafkaConfig.from_dict({"bootstrap_servers": "a:1,b:2"})
    assert kafka_python_settings(config) == {
        "bootstrap_servers": ["a:1", "b:2"],
        "client_id": "ae-pipeline",
        "security_protocol": "PLAINTEXT",
    }
    assert confluent_settings(config) == {
        "bootstrap.servers": "a:1,b:2",
        "client.id": "ae-pipeline",
        "security.protocol": "PLAINTEXT",
    }
    assert config.group_id is None


@pytest.mark.parametrize(
    "spelling",
    [
        {"sasl.username": "u", "sasl.password": "p", "sasl.mechanism": "SCRAM-SHA-512"},
        {"sasl_plain_username": "u", "sasl_plain_password": "p", "sasl_mechanism": "SCRAM-SHA-512"},
        {"sasl_username": "u", "sasl_password": "p", "sasl.mechanisms": "SCRAM-SHA-512"},
    ],
)
def test_sasl_ssl_in_any_spelling(spelling):
    config = KafkaConfig.from_dict(
        {
            "bootstrap.servers": "b:9093",
            "group.id": "g",
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": "/ca.pem",
            "ssl_check_hostname": False,
            **spelling,
        }
    )
    kp = kafka_python_settings(config)
    assert kp["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kp["sasl_plain_username"], kp["sasl_plain_password"]) == ("u", "p")
    assert kp["ssl_cafile"] == "/ca.pem"
    assert kp["ssl_check_hostname"] is False
    ck = confluent_settings(config)
    assert ck["security.protocol"] == "SASL_SSL"
    assert ck["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (ck["sasl.username"], ck["sasl.password"]) == ("u", "p")
    assert ck["ssl.ca.location"] == "/ca.pem"
    assert ck["ssl.endpoint.identification.algorithm"] == "none"
    assert ck["group.id"] == "g"
    java = java_properties(config)
    assert java["sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="u" password="p";'
    )
    assert java["ssl.truststore.type"] == "PEM"
    assert java["ssl.endpoint.identification.algorithm"] == ""


def test_sasl_plaintext_defaults_to_plain_mechanism():
    config = KafkaConfig("b:1", security_protocol="SASL_PLAINTEXT", sasl_username="u")
    assert config.sasl_mechanism == "PLAIN"
    assert "ssl.ca.location" not in confluent_settings(config)


def test_mutual_tls_files():
    config = KafkaConfig(
        "b:1",
        security_protocol="SSL",
        ssl_certfile="/c.pem",
        ssl_keyfile="/k.pem",
        ssl_key_password="kp",
    )
    kp = kafka_python_settings(config)
    assert (kp["ssl_certfile"], kp["ssl_keyfile"], kp["ssl_password"]) == (
        "/c.pem",
        "/k.pem",
        "kp",
    )
    ck = confluent_settings(config)
    assert (ck["ssl.certificate.location"], ck["ssl.key.location"]) == ("/c.pem", "/k.pem")
    assert ck["ssl.key.password"] == "kp"
    with pytest.raises(ValueError, match="one PEM file"):
        java_properties(config)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"security.protocol": "TLS"}, "security_protocol"),
        ({"security.protocol": "SASL_SSL"}, "sasl_mechanism"),
        ({"sasl.password": "p"}, "without sasl_username"),
        ({"bootstrap.servers": ""}, "bootstrap_servers"),
    ],
)
def test_invalid_configs_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        KafkaConfig.from_dict({"bootstrap.servers": "b:1", **bad})


def test_client_sections_pass_through():
    from kafka import KafkaConsumer, KafkaProducer

    config = KafkaConfig.from_dict(
        {
            "bootstrap.servers": "b:1",
            "kafka_python": {"fetch_max_wait_ms": 50, "linger_ms": 7},
            "confluent": {"fetch.wait.max.ms": 50},
            "java": {"max.poll.records": 100},
        }
    )
    consumer = client_kwargs(config, KafkaConsumer, enable_auto_commit=False)
    assert consumer["fetch_max_wait_ms"] == 50
    assert "linger_ms" not in consumer  # a producer setting: not given to the consumer
    assert client_kwargs(config, KafkaProducer)["linger_ms"] == 7
    assert confluent_settings(config)["fetch.wait.max.ms"] == 50
    assert java_properties(config)["max.poll.records"] == "100"
    with pytest.raises(ValueError, match="no_such_setting"):
        client_kwargs(KafkaConfig("b:1", kafka_python={"no_such_setting": 1}), KafkaConsumer)


def test_with_group_copies():
    config = KafkaConfig("b:1", group_id="g")
    assert config.with_group(None).group_id is None
    assert config.group_id == "g"

"""Secrets never show: redaction of configs, scrubbing of messages."""

from __future__ import annotations

import pickle

import pytest

from ae_pipeline.beam.kafka_xlang import java_properties
from ae_pipeline.kafka import REDACTED, KafkaConfig, redact, scrub
from ae_pipeline.kafka.confluent_client import settings as confluent_settings
from ae_pipeline.kafka.kafka_python_client import settings as kafka_python_settings
from ae_pipeline.kafka.redaction import is_secret_key, secret_values

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "sasl_plain_password",
        "ssl.key.password",
        "ssl_password",
        "sasl.oauthbearer.client.secret",
        "sasl.jaas.config",
        "access_token",
        "ssl.key.pem",
        "ssl.keystore.key",
        "SASL.PASSWORD",
        "private_key",
        "schema.registry.basic.auth.credentials",
    ],
)
def test_secret_keys_are_recognised(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["bootstrap.servers", "sasl.username", "ssl.key.location", "ssl_keyfile", "group.id", "key"],
)
def test_plain_keys_are_not_secret(key):
    assert not is_secret_key(key)


def test_redact_masks_nested_secrets_and_keeps_none():
    config = {
        "sasl.username": "alice",
        "sasl.password": SECRET,
        "ssl_key_password": None,
        "confluent": {"sasl.oauthbearer.client.secret": SECRET, "linger.ms": 5},
    }
    shown = redact(config)
    assert shown == {
        "sasl.username": "alice",
        "sasl.password": REDACTED,
        "ssl_key_password": None,
        "confluent": {"sasl.oauthbearer.client.secret": REDACTED, "linger.ms": 5},
    }
    assert config["sasl.password"] == SECRET  # the input is not modified
    assert secret_values(config) == [SECRET, SECRET]


def test_scrub_masks_longest_secret_first():
    assert scrub(f"bad {SECRET}x and {SECRET}", [SECRET, f"{SECRET}x"]) == "bad *** and ***"
    assert scrub("nothing here", []) == "nothing here"


def test_config_repr_str_and_redacted_hide_secrets_but_clients_get_them():
    config = KafkaConfig.from_dict(
        {
            "bootstrap.servers": "b:9093",
            "security.protocol": "sasl_ssl",
            "sasl.username": "alice",
            "sasl.password": SECRET,
            "ssl.key.password": SECRET + "2",
            "confluent": {"sasl.oauthbearer.client.secret": SECRET + "3"},
        }
    )
    for text in (repr(config), str(config), str(config.redacted()), f"{config}"):
        assert SECRET not in text
        assert "alice" in text
    assert confluent_settings(config)["sasl.password"] == SECRET
    assert kafka_python_settings(config)["sasl_plain_password"] == SECRET
    assert f'password="{SECRET}"' in java_properties(config)["sasl.jaas.config"]
    assert set(config.secrets()) == {SECRET, SECRET + "2", SECRET + "3"}
    # Workers get the real secret through pickling.
    assert pickle.loads(pickle.dumps(config)).sasl_password == SECRET


def test_unknown_key_error_names_keys_but_never_values():
    with pytest.raises(ValueError) as info:
        KafkaConfig.from_dict({"bootstrap.servers": "b:1", "sasl.pasword": SECRET})
    assert "sasl.pasword" in str(info.value)
    assert SECRET not in str(info.value)


def test_guard_logs_scrubs_kafka_client_log_records(caplog):
    import logging

    from ae_pipeline.kafka.redaction import guard_logs

    secret = "gu4rd-Me'\x01"
    child = logging.getLogger("kafka.some.module.created.before")
    guard_logs([secret])
    caplog.set_level(logging.DEBUG, logger="kafka")
    child.debug("config %s", {"sasl_plain_password": secret})
    child.debug("auth bytes %r", b"alice\x00" + secret.encode())
    try:
        raise RuntimeError(f"failed with {secret}")
    except RuntimeError:
        logging.getLogger("ae_pipeline.kafka.test").exception("boom")
    assert len(caplog.records) == 3
    assert secret not in caplog.text
    assert repr(secret.encode())[2:-1] not in caplog.text
    assert "***" in caplog.text

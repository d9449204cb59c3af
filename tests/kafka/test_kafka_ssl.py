"""SSL and SASL_SSL against a real broker whose test CA and certificate are made at test time
(openssl, or Java's keytool): both clients and the Beam read/write connect and verify the
broker; the SASL password never shows; a client trusting another CA fails, with the
certificate failure named in the logs."""

from __future__ import annotations

import logging
import subprocess
import traceback

import kit
import pytest

from ae_pipeline.kafka import (
    KafkaClientError,
    KafkaConfig,
    create_consumer,
)
from ae_pipeline.local.kafka_broker import KafkaBroker, make_test_certificates

pytestmark = pytest.mark.kafka

PASSWORD = "Ssl-S4sl-pa55word-&%!"
CLIENTS = ["kafka-python", "confluent"]


@pytest.fixture(scope="module")
def ssl_broker():
    """A broker with SSL and SASL_SSL (user alice) listeners beside its PLAINTEXT one."""
    broker = KafkaBroker()
    broker.add_ssl_listener(sasl_users={"alice": PASSWORD})
    broker.start()
    yield broker
    broker.stop()


def _config(broker, protocol: str, *, cafile: str | None = None, **extra) -> KafkaConfig:
    settings = {
        "security.protocol": protocol,
        "ssl.cafile": cafile or broker.ssl_cafile,
        # kafka-python retries a failed bootstrap until bootstrap_timeout_ms (default 30 s).
        "kafka_python": {"bootstrap_timeout_ms": 5000},
        **extra,
    }
    if protocol == "SASL_SSL":
        settings.update({"sasl.mechanism": "PLAIN", "sasl.username": "alice"})
        settings.setdefault("sasl.password", PASSWORD)
        settings["bootstrap.servers"] = broker.sasl_ssl_bootstrap
    else:
        settings["bootstrap.servers"] = broker.ssl_bootstrap
    return KafkaConfig.from_dict(settings)


@pytest.mark.parametrize("client", CLIENTS)
def test_ssl_round_trip_verifies_the_broker(client, ssl_broker):
    config = _config(ssl_broker, "SSL")
    assert config.ssl_check_hostname  # the broker's certificate is checked for 127.0.0.1
    assert kit.round_trip(config, client, f"ssl-{client}") == [(b"k", b"v")]


@pytest.mark.parametrize("client", CLIENTS)
def test_sasl_ssl_credentials_work_and_never_show(client, ssl_broker, all_logs, capfd):
    config = _config(ssl_broker, "SASL_SSL")
    assert kit.round_trip(config, client, f"sasl-ssl-{client}") == [(b"k", b"v")]
    out, err = capfd.readouterr()
    for where, text in {
        "repr": repr(config),
        "str": str(config),
        "logs": all_logs.text,
        "stdout": out,
        "stderr": err,
    }.items():
        assert PASSWORD not in text, f"the password shows in {where}"


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_a_wrong_ca_fails_clearly(client, protocol, ssl_broker, tmp_path, all_logs, capfd):
    other_ca = make_test_certificates(tmp_path / "other").ca_pem
    config = _config(ssl_broker, protocol, cafile=str(other_ca))
    with pytest.raises(KafkaClientError) as info, create_consumer(config, client) as consumer:
        consumer.partitions("anything", timeout_s=3)
    out, err = capfd.readouterr()
    # The clients name the cause in their ERROR logs (the exception says the broker could not
    # be reached: "Unable to bootstrap" / "Broker transport failure").
    failures = [r.getMessage() for r in all_logs.records if r.levelno >= logging.ERROR]
    assert any("certificate verify failed" in m for m in failures), failures[-5:]
    # ... and the exception carries it (the clients themselves only say "no broker").
    assert "certificate verify failed" in str(info.value), str(info.value)
    shown = "".join(traceback.format_exception(info.value))
    for text in (shown, all_logs.text, out, err):
        assert PASSWORD not in text


def test_plaintext_client_is_refused_by_the_ssl_listener(ssl_broker):
    config = KafkaConfig.from_dict(
        {
            "bootstrap.servers": ssl_broker.ssl_bootstrap,
            "kafka_python": {"bootstrap_timeout_ms": 3000},
        }
    )
    with pytest.raises(KafkaClientError), create_consumer(config, "kafka-python") as consumer:
        consumer.partitions("anything", timeout_s=2)


@pytest.mark.parametrize("tool", ["openssl", "keytool"])
def test_test_certificates_verify_for_127_0_0_1(tool, tmp_path):
    certs = make_test_certificates(tmp_path, tool=tool)
    leaf = tmp_path / "broker.pem"
    checked = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs.ca_pem), "-verify_ip", "127.0.0.1", str(leaf)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    wrong_ip = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs.ca_pem), "-verify_ip", "10.0.0.1", str(leaf)],
        capture_output=True,
        text=True,
    )
    assert wrong_ip.returncode != 0
    assert certs.broker_properties["ssl.keystore.location"]


def test_beam_round_trip_over_sasl_ssl_never_logs_the_password(
    ssl_broker, all_logs, capfd, beam_options
):
    config = _config(ssl_broker, "SASL_SSL", **{"group.id": "sasl-ssl-beam"})
    options = beam_options("fnapi")
    read, p, copied = kit.copy_with_beam(options, config, "sasl-ssl-in", "sasl-ssl-out")
    assert copied == sorted(b"%d" % i for i in range(10))
    out, err = capfd.readouterr()
    for text in (all_logs.text, out, err, repr(read), str(p.to_runner_api().components)):
        assert PASSWORD not in text

"""Each client module owns its translation and its pass-through section; the registry
(``kafka/clients.py``) is what config.py and client.py know of them. No broker needed."""

from __future__ import annotations

import logging
import sys
import types

import pytest
from kafka import KafkaConsumer, KafkaProducer

from ae_pipeline.kafka import KafkaConfig, check_client, clients, create_consumer
from ae_pipeline.kafka.client import producer_limit
from ae_pipeline.kafka.kafka_python_client import client_kwargs
from ae_pipeline.kafka.redaction import REDACTED, guard_logs

SECRET = "s3ct10n-Pa55"

SASL_SSL = {
    "bootstrap.servers": "b1:9093,b2:9093",
    "group.id": "scorers",
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-256",
    "sasl.username": "alice",
    "sasl.password": SECRET,
    "ssl.ca.location": "/ca.pem",
    "compression.type": "zstd",
}


def test_every_registered_client_module_owns_its_section_and_translation():
    entries = {entry.name: entry for entry in clients.registered()}
    assert set(entries) >= {"kafka-python", "confluent", "java"}
    for entry in entries.values():
        module = clients.load(entry.name)
        assert entry.section == module.SECTION
        assert callable(module.settings)
        if entry.in_process:
            assert {"Consumer", "Producer", "create_topics"} <= set(vars(module))
            assert module.PRODUCER_LIMIT[0] == entry.section
    assert clients.in_process_clients() == ("kafka-python", "confluent")
    assert clients.sections() == ("kafka_python", "confluent", "java")


def test_section_names_never_shadow_config_attributes():
    for section in clients.sections():
        assert not hasattr(KafkaConfig, section), section


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (
            "kafka-python",
            {
                "bootstrap_servers": ["b1:9093", "b2:9093"],
                "client_id": "ae-pipeline",
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": "alice",
                "sasl_plain_password": SECRET,
                "ssl_check_hostname": True,
                "ssl_cafile": "/ca.pem",
            },
        ),
        (
            "confluent",
            {
                "bootstrap.servers": "b1:9093,b2:9093",
                "client.id": "ae-pipeline",
                "security.protocol": "SASL_SSL",
                "group.id": "scorers",
                "sasl.mechanism": "SCRAM-SHA-256",
                "sasl.username": "alice",
                "sasl.password": SECRET,
                "ssl.endpoint.identification.algorithm": "https",
                "ssl.ca.location": "/ca.pem",
            },
        ),
        (
            "java",
            {
                "bootstrap.servers": "b1:9093,b2:9093",
                "client.id": "ae-pipeline",
                "security.protocol": "SASL_SSL",
                "group.id": "scorers",
                "sasl.mechanism": "SCRAM-SHA-256",
                "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule "
                f'required username="alice" password="{SECRET}";',
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": "/ca.pem",
                "compression.type": "zstd",
            },
        ),
    ],
)
def test_each_client_translates_the_shared_fields_itself(client, expected):
    assert clients.settings(KafkaConfig.from_dict(SASL_SSL), client) == expected


def test_beam_java_properties_is_the_java_client_translation():
    pytest.importorskip("apache_beam")
    from ae_pipeline.beam.kafka_xlang import java_properties

    config = KafkaConfig.from_dict({**SASL_SSL, "java": {"max.poll.records": 7}})
    assert java_properties(config) == clients.settings(config, "java")


def test_sections_reach_their_own_client_only():
    config = KafkaConfig.from_dict(
        {
            "bootstrap.servers": "b:1",
            "kafka_python": {"linger_ms": 11, "fetch_max_wait_ms": 12},
            "confluent": {"queue.buffering.max.kbytes": 13},
            "java": {"max.poll.records": 14},
        }
    )
    producer = client_kwargs(config, KafkaProducer)
    consumer = client_kwargs(config, KafkaConsumer)
    confluent = clients.settings(config, "confluent")
    java = clients.settings(config, "java")
    assert (producer["linger_ms"], consumer["fetch_max_wait_ms"]) == (11, 12)
    assert confluent["queue.buffering.max.kbytes"] == 13
    assert java["max.poll.records"] == "14"
    for key in ("queue.buffering.max.kbytes", "max.poll.records"):
        assert key not in producer and key not in consumer
    for key in ("linger_ms", "fetch_max_wait_ms", "max.poll.records"):
        assert key not in confluent
    for key in ("linger_ms", "fetch_max_wait_ms", "queue.buffering.max.kbytes"):
        assert key not in java
    # kafka-python's base translation holds no section setting at all.
    assert "linger_ms" not in clients.settings(config, "kafka-python")


def test_sections_read_by_name_attribute_or_mapping_alike():
    a = KafkaConfig("b:1", confluent={"linger.ms": 5}, java={})
    b = KafkaConfig("b:1", sections={"confluent": {"linger.ms": 5}})
    c = KafkaConfig.from_dict({"bootstrap.servers": "b:1", "confluent": {"linger.ms": 5}})
    assert a == b == c
    assert a.sections == {"confluent": {"linger.ms": 5}}  # empty sections are dropped
    assert a.confluent == a.section("confluent") == {"linger.ms": 5}
    assert a.java == a.kafka_python == {}
    assert KafkaConfig.from_dict(a.to_dict()) == a
    assert list(a.to_dict())[-3:] == ["kafka_python", "confluent", "java"]
    assert a.with_group("g").confluent == {"linger.ms": 5}


@pytest.mark.parametrize(
    "build",
    [
        lambda: KafkaConfig.from_dict({"bootstrap.servers": "b:1", "rdkafka": {"x": SECRET}}),
        lambda: KafkaConfig("b:1", rdkafka={"x": SECRET}),
        lambda: KafkaConfig("b:1", sections={"rdkafka": {"x": SECRET}}),
        lambda: KafkaConfig("b:1").section("rdkafka"),
    ],
)
def test_an_unknown_section_is_one_line_naming_the_known_ones(build):
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert message == (
        "unknown Kafka client section 'rdkafka'; the sections are kafka_python, confluent, java"
    )
    assert SECRET not in message


def test_a_section_is_a_mapping_and_a_stray_keyword_is_a_type_error():
    with pytest.raises(ValueError, match="'confluent' section is a mapping"):
        KafkaConfig("b:1", confluent=[("linger.ms", 5)])
    with pytest.raises(TypeError, match="unexpected keyword argument 'group'"):
        KafkaConfig("b:1", group="g")
    with pytest.raises(AttributeError):
        _ = KafkaConfig("b:1").rdkafka


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("kafka_python", "sasl_plain_password"),
        ("confluent", "sasl.oauthbearer.client.secret"),
        ("java", "sasl.jaas.config"),
    ],
)
def test_a_password_in_a_section_is_redacted_and_scrubbed_from_logs(section, key, caplog):
    config = KafkaConfig("b:1", **{section: {key: f"x password={SECRET};"}})
    for text in (repr(config), str(config), str(config.redacted())):
        assert SECRET not in text
    assert config.redacted()[section] == {key: REDACTED}
    assert config.secrets() == [f"x password={SECRET};"]
    guard_logs(config.secrets())  # what the client factories do
    caplog.set_level(logging.DEBUG, logger="ae_pipeline")
    logging.getLogger("ae_pipeline.kafka.test").debug("settings %s", config.section(section))
    assert SECRET not in caplog.text
    assert REDACTED in caplog.text


@pytest.fixture
def third_client(monkeypatch):
    """A third client: one module (here made on the fly) plus its registration."""
    module = types.ModuleType("fake_kafka_client")
    module.SECTION = "fake"
    module.PRODUCER_LIMIT = ("fake", "max.bytes", 500)
    module.settings = lambda config: {"servers": config.bootstrap_servers, **config.section("fake")}

    class Consumer:
        def __init__(self, config, **options):
            self.settings, self.options = module.settings(config), options

    module.Consumer = Consumer
    module.Producer = Consumer
    module.create_topics = lambda *args, **kwargs: None
    monkeypatch.setitem(sys.modules, module.__name__, module)
    clients.register_client(clients.ClientEntry("fake", module.__name__, "fake"))
    yield module
    clients.unregister_client("fake")


def test_a_third_client_is_a_module_plus_its_registration(third_client):
    config = KafkaConfig.from_dict({"bootstrap.servers": "b:1", "fake": {"max.bytes": 900}})
    assert config.fake == {"max.bytes": 900}
    assert check_client("fake") == "fake"
    consumer = create_consumer(config, client="fake", auto_offset_reset="latest")
    assert consumer.settings == {"servers": "b:1", "max.bytes": 900}
    assert consumer.options == {"auto_offset_reset": "latest"}
    assert producer_limit(config, "fake") == ("max.bytes", 900)
    assert "max.bytes" not in clients.settings(config, "confluent")
    with pytest.raises(ValueError, match="the sections are kafka_python, confluent, java, fake"):
        KafkaConfig("b:1", rdkafka={})


def test_registrations_refuse_clashes():
    with pytest.raises(ValueError, match="clashes"):
        clients.register_client(clients.ClientEntry("other", "m", "confluent"))
    with pytest.raises(ValueError, match="clashes"):
        clients.register_client(clients.ClientEntry("java", "m", "other"))
    with pytest.raises(ValueError, match="lower-case identifier"):
        clients.register_client(clients.ClientEntry("other", "m", "Bad-Name"))
    with pytest.raises(ValueError, match="unknown Kafka client 'java'; choose one of"):
        check_client("java")  # translation only: no consumer or producer here

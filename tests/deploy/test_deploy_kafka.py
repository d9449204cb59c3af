"""Kafka deployment files: the topic definitions and apply_topics.py against the real broker
(create, idempotent re-apply, partition increase, config change, refusal to shrink), over
SASL_PLAINTEXT with the password never shown, and the sample client settings."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import kit
import pytest
import yaml
from apply_topics import TopicFileError, load_topics, parse_topics
from deploy_kit import DEPLOY, REPO, SASL_PASSWORD, SASL_USER, all_invocations

from ae_pipeline.kafka import KafkaConfig
from ae_pipeline.kafka.confluent_client import settings as confluent_settings
from ae_pipeline.kafka.kafka_python_client import settings as kafka_python_settings

pytestmark = pytest.mark.kafka

TOPICS = DEPLOY / "kafka" / "topics.yaml"
SCRIPT = DEPLOY / "kafka" / "apply_topics.py"


def test_topics_file_defines_every_topic_the_jobs_use():
    topics = {t.name: t for t in load_topics(TOPICS)}
    used = set()
    for inv in all_invocations():
        for arg in inv.args:
            flag, _, value = arg.partition("=")
            if flag in ("--input_topic", "--output_topic", "--dead_letter_topic") and value:
                used.add(value)
    assert used, "no job names a topic"
    assert used <= set(topics), f"topics used but not defined: {used - set(topics)}"
    dlq = topics["ae-events-dlq"]
    assert int(dlq.config["retention.ms"]) > int(topics["ae-events"].config["retention.ms"])
    for t in topics.values():
        assert "retention.ms" in t.config and t.replication_factor == 3
        assert int(t.config["min.insync.replicas"]) < t.replication_factor


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"topics": []}, "non-empty list"),
        ({"topics": [{"name": "a b", "partitions": 1}]}, "invalid topic name"),
        ({"topics": [{"name": "a", "partitions": 0}]}, "partitions must be a positive"),
        ({"topics": [{"name": "a", "partitions": 1, "retention": 1}]}, "unknown keys"),
        ({"topics": [{"name": "a", "partitions": 1}] * 2}, "defined twice"),
        ({"topics": [{"name": "a", "partitions": 1, "config": {"x": {}}}]}, "scalar value"),
        ({"defaults": {"partitions": 3}, "topics": [{"name": "a", "partitions": 1}]}, "defaults"),
    ],
)
def test_bad_topic_files_are_refused_with_the_reason(doc, message):
    with pytest.raises(TopicFileError, match=message):
        parse_topics(doc)


def _renamed_file(tmp_path, tag: str, **changes) -> tuple:
    """topics.yaml with a unique suffix on every name (the session broker is shared);
    ``changes``: {topic: {field: value}} applied on top."""
    doc = yaml.safe_load(TOPICS.read_text())
    for t in doc["topics"]:
        base = t["name"]
        t["name"] = f"{base}-{tag}"
        for key, value in changes.get(base, {}).items():
            if key == "config":
                t["config"] = {**t.get("config", {}), **value}
            else:
                t[key] = value
    path = tmp_path / f"topics-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, {t["name"]: t for t in doc["topics"]}


def _apply(path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def _state(bootstrap: str, names) -> dict:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        parts = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(list(names))}
        out = {}
        for name in names:
            cfg = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all"
            )["topic"][name]
            out[name] = (parts[name], {k: v["value"] for k, v in cfg.items()})
        return out
    finally:
        admin.close()


def test_apply_topics_creates_updates_and_is_idempotent(bootstrap_servers, tmp_path):
    tag = uuid.uuid4().hex[:8]
    path, wanted = _renamed_file(tmp_path, tag)
    args = ("--bootstrap_servers", bootstrap_servers, "--replication_factor", "1")

    dry = _apply(path, *args, "--dry_run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would create") == len(wanted)

    first = _apply(path, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": create (") == len(wanted), first.stdout
    # A single-broker cluster: min.insync.replicas capped at the replication factor.
    assert "min.insync.replicas 2 capped at replication factor 1" in first.stdout
    state = _state(bootstrap_servers, wanted)
    for name, t in wanted.items():
        partitions, config = state[name]
        assert partitions == t["partitions"]
        assert config["retention.ms"] == t["config"]["retention.ms"]
        assert config["cleanup.policy"] == "delete"
        assert config["min.insync.replicas"] == "1"

    again = _apply(path, *args)
    assert again.returncode == 0 and again.stdout.count("up to date") == len(wanted), again.stdout

    grown, _ = _renamed_file(
        tmp_path, tag, **{"ae-events": {"partitions": 16, "config": {"retention.ms": "86400000"}}}
    )
    changed = _apply(grown, *args)
    assert changed.returncode == 0, changed.stderr
    events = f"ae-events-{tag}"
    assert f"{events}: partitions 12 -> 16; retention.ms 604800000 -> 86400000" in changed.stdout
    kit.wait_until(  # new partitions reach the metadata of other clients
        lambda: _state(bootstrap_servers, [events])[events][0] == 16,
        "the 16 partitions in the metadata",
        timeout_s=60,
    )

    shrunk, _ = _renamed_file(tmp_path, tag, **{"ae-events": {"partitions": 4}})
    refused = _apply(shrunk, *args)
    assert refused.returncode == 1
    assert "has 16 partitions, more than the 4 defined" in refused.stdout
    assert _state(bootstrap_servers, [events])[events][0] == 16


def test_apply_topics_refuses_an_unknown_topic_config(bootstrap_servers, tmp_path):
    path, _ = _renamed_file(
        tmp_path, uuid.uuid4().hex[:8], **{"ae-events": {"config": {"retention.msec": "1"}}}
    )
    proc = _apply(path, "--bootstrap_servers", bootstrap_servers, "--replication_factor", "1")
    assert proc.returncode == 1
    assert "apply topics" in proc.stderr


def _client_file(tmp_path, password: str):
    """The SASL sample, filled in for the test broker (SASL_PLAINTEXT, PLAIN)."""
    sample = json.loads((DEPLOY / "kafka" / "client-sasl.sample.json").read_text())
    sample.update(
        {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": SASL_USER,
            "sasl.password": password,
        }
    )
    sample.pop("ssl.cafile")
    sample["kafka_python"] = {**sample.get("kafka_python", {}), "bootstrap_timeout_ms": 5000}
    path = tmp_path / f"client-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(sample))
    return path


def test_apply_topics_over_sasl_never_shows_the_password(sasl_broker, tmp_path):
    path, wanted = _renamed_file(tmp_path, uuid.uuid4().hex[:8])
    client = _client_file(tmp_path, SASL_PASSWORD)
    args = ("--bootstrap_servers", sasl_broker.sasl_bootstrap, "--kafka_config", str(client))
    ok = _apply(path, *args, "--replication_factor", "1", "--log_level", "DEBUG")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert ok.stdout.count(": create (") == len(wanted)
    assert "DEBUG" in ok.stderr  # the client really logged at DEBUG...
    assert SASL_PASSWORD not in ok.stdout + ok.stderr  # ... and never the password

    wrong = "Wrong-deploy-pa55-?"
    bad = _apply(
        path,
        "--bootstrap_servers",
        sasl_broker.sasl_bootstrap,
        "--kafka_config",
        str(_client_file(tmp_path, wrong)),
        "--log_level",
        "DEBUG",
    )
    assert bad.returncode == 1
    assert "apply topics" in bad.stderr
    assert wrong not in bad.stdout + bad.stderr


def test_apply_topics_reports_a_broken_file_without_connecting(tmp_path):
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  - name: ok\n    partitions: -1\n")
    proc = _apply(path, "--bootstrap_servers", "127.0.0.1:1")
    assert proc.returncode == 2
    assert "partitions must be a positive integer" in proc.stderr


@pytest.mark.parametrize("name", ["client-sasl.sample.json", "client-ssl.sample.json"])
def test_sample_client_settings_are_valid_and_hold_no_secrets(name):
    settings = json.loads((DEPLOY / "kafka" / name).read_text())
    config = KafkaConfig.from_dict({**settings, "bootstrap.servers": "broker:9093"})
    assert config.security_protocol in ("SASL_SSL", "SSL")
    kafka_python_settings(config)
    confluent_settings(config)
    for secret in config.secrets():
        assert secret.startswith("<") and secret.endswith(">"), "samples hold placeholders only"
    assert all(s not in repr(config) for s in config.secrets())

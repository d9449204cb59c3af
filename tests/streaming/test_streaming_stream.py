"""pipelines/stream.py on Prism in streaming mode against the real broker: every record leaves
as a result or a dead letter, flags equal the offline scores, and a version published while the
job runs is picked up without a restart."""

from __future__ import annotations

import re
import uuid
from collections import Counter

import kit
import pytest

from ae_pipeline.kafka import committed_offsets, create_topics, end_offsets
from ae_pipeline.local.runners import runner_args
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.serving import ServingModel
from pipelines import stream

pytestmark = [pytest.mark.kafka, pytest.mark.prism]

TIMEOUT_S = 90


def _wait_for(what: str, condition, result) -> None:
    kit.wait_until(condition, what, timeout_s=TIMEOUT_S, alive=kit.pipeline_alive(result))


def test_stream_job_on_prism_flags_and_follows_new_versions(
    bootstrap_servers, tmp_path, trained, beam_options
):
    beam_options("prism", streaming=True)  # records the runner in the session summary
    root = str(tmp_path / "models")
    first = kit.publish(root, trained)
    tag = uuid.uuid4().hex[:8]
    inp, out, dlq = f"in-{tag}", f"out-{tag}", f"dlq-{tag}"
    config = {"bootstrap.servers": bootstrap_servers}
    create_topics(config, {inp: 2, out: 1, dlq: 1})
    before, _ = kit.records_with_poison(200, anomalies=5)
    kit.produce(bootstrap_servers, inp, before)
    group = f"g-{tag}"
    argv = [
        *runner_args("prism", streaming=True),
        *kit.stream_job_args(
            bootstrap_servers,
            inp,
            out,
            dlq,
            group,
            root,
            "--model_poll_interval_s=0.5",
            "--top_k=0",
        ),
    ]
    result = stream.main(argv, wait=False)
    try:
        _wait_for(
            "the records produced before the start",
            lambda: kit.total(bootstrap_servers, out, dlq) >= len(before),
            result,
        )
        second = kit.publish(root, trained)
        # Probe records (ids from 5000) until one is scored by the new version: no guess at
        # how long the job takes to pick it up.
        probe_rows = iter(kit.normal_rows(10_000, seed=4))
        probes: list[int] = []

        def second_serves() -> bool:
            probes.append(5000 + len(probes))
            record = kit.record(probes[-1], next(probe_rows))
            kit.produce(bootstrap_servers, inp, [record], start_key=probes[-1])
            return any(
                r.get("model_version") == second and r["key"] >= 5000
                for r in kit.read_all(bootstrap_servers, out, timeout_s=5)
            )

        kit.wait_until(
            second_serves,
            "the new version to serve",
            timeout_s=TIMEOUT_S,
            interval_s=0.5,
            alive=kit.pipeline_alive(result),
        )
        after = [kit.record(1000 + i, r) for i, r in enumerate(kit.normal_rows(50, seed=3))]
        kit.produce(bootstrap_servers, inp, after)
        _wait_for(
            "the records produced while running",
            lambda: (
                kit.total(bootstrap_servers, out, dlq) >= len(before) + len(probes) + len(after)
            ),
            result,
        )
        _wait_for(
            "the offsets to be committed",
            lambda: (
                committed_offsets({**config, "group.id": group}, inp) == end_offsets(config, inp)
            ),
            result,
        )
    finally:
        result.cancel()
    results, dead = kit.read_all(bootstrap_servers, out), kit.read_all(bootstrap_servers, dlq)
    coordinates = Counter((d["partition"], d["offset"]) for d in results + dead)
    ends = end_offsets(config, inp)
    assert set(coordinates) == {(tp.partition, o) for tp, n in ends.items() for o in range(n)}
    assert sorted(d["reason"] for d in dead) == sorted(kit.POISON)
    assert len(results) >= 250

    # Results of the records produced before equal the offline scores of the first version.
    model = ServingModel.load(ModelRegistry(root).path(first), device="cpu", top_k=None)
    offline, _ = model.score_records(before, "flag")
    by_key = {r["key"]: r for r in results if r["model_version"] == first and r["key"] < 1000}
    assert len(by_key) == 200
    for r in offline:
        got = by_key[r["key"]]
        assert got["score"] == pytest.approx(r["score"], rel=1e-4)
        # float32 sums differ across batch sizes (about 1e-6): compare flags away from the edge
        if got["score"] != pytest.approx(r["threshold"], rel=1e-4):
            assert got["is_anomaly"] == r["is_anomaly"]
    assert sum(r["is_anomaly"] for r in offline) >= 5
    # ... and the records produced after the new version was published were scored by it.
    versions = Counter(r["model_version"] for r in results if 1000 <= r["key"] < 5000)
    assert versions == {second: 50}, versions


# ----------------------------------------------------------- options, checked before the start

BASE = [
    "--bootstrap_servers=127.0.0.1:1",
    "--input_topic=i",
    "--output_topic=o",
    "--dead_letter_topic=d",
    "--model_root=/nonexistent",
]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top_k=-3"], "--top_k must be 0 or more"),
        (["--torch_threads=-2"], "--torch_threads must be 0 or more"),
        (["--poll_timeout_s=-1"], "--poll_timeout_s must be a number of seconds above 0"),
        (["--max_batch_size=-5"], "--max_batch_size must be 1 or more"),
        (["--max_batch=0"], "--max_batch_size must be 1 or more"),
        (["--max_bundle_seconds=0"], "--max_bundle_seconds must be"),
        (["--model_poll_interval_s=nan"], "--model_poll_interval_s must be"),
        (["--max_records_per_partition=0"], "--max_records_per_partition must be 1 or more"),
        (["--threshold=inf"], "--threshold must be a finite number"),
        (["--max_message_bytes=10"], "--max_message_bytes"),
        (
            ["--max_message_bytes=2000000", "--client=confluent"],
            "--max_message_bytes 2000000 does not fit the confluent producer's message.max.bytes",
        ),
        (["--passthrough=offset"], "--passthrough: .*offset"),
        (["--passthrough=f0,model_version"], "--passthrough: .*model_version"),
        (["--model_version_dir=/x"], "give exactly one of --model_root and --model_version_dir"),
    ],
)
def test_options_that_cannot_work_get_one_line_and_exit_2(capsys, extra, message):
    from ae_pipeline import cli

    assert cli.main(["stream", *BASE, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.match(rf"ae-pipeline stream: error: {message}", err), err


@pytest.mark.parametrize("missing", ["bootstrap_servers", "input_topic", "dead_letter_topic"])
def test_required_options_are_enforced(capsys, missing):
    from ae_pipeline import cli

    argv = [a for a in BASE if not a.startswith(f"--{missing}=")]
    assert cli.main(["stream", *argv]) == 2
    assert f"missing --{missing}" in capsys.readouterr().err


def test_consume_names_of_the_same_settings_are_accepted():
    from apache_beam.options.pipeline_options import PipelineOptions

    opts = PipelineOptions([*BASE, "--client=confluent", "--max_batch=7"]).view_as(
        stream.StreamOptions
    )
    assert (opts.kafka_client, opts.max_batch_size) == ("confluent", 7)
    opts = PipelineOptions([*BASE, "--kafka_client=confluent", "--max_batch_size=9"]).view_as(
        stream.StreamOptions
    )
    assert (opts.kafka_client, opts.max_batch_size) == ("confluent", 9)
    assert stream.check_options(opts) == ()

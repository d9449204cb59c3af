"""pipelines/stream.py on Prism in streaming mode against the real broker: every record leaves
as a result or a dead letter, flags equal the offline scores, and a version published while the
job runs is picked up without a restart."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
import streaming_kit as kit
from apache_beam.runners.runner import PipelineState

from ae_pipeline.kafka import committed_offsets, create_producer, create_topics, end_offsets
from ae_pipeline.local.runners import runner_args
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.serving import ServingModel
from pipelines import stream

pytestmark = [pytest.mark.kafka, pytest.mark.prism]

TIMEOUT_S = 90


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    with create_producer({"bootstrap.servers": bootstrap}) as producer:
        for v in values:
            producer.send(topic, v)
        producer.flush(30)


def _total(bootstrap: str, *topics: str) -> int:
    return sum(sum(end_offsets({"bootstrap.servers": bootstrap}, t).values()) for t in topics)


def _read_json(bootstrap: str, topic: str) -> list[dict]:
    from ae_pipeline.kafka import create_consumer

    ends = end_offsets({"bootstrap.servers": bootstrap}, topic)
    out: list = []
    with create_consumer({"bootstrap.servers": bootstrap}) as consumer:
        consumer.assign(dict.fromkeys(ends, 0))
        deadline = time.monotonic() + 30
        while len(out) < sum(ends.values()) and time.monotonic() < deadline:
            out.extend(consumer.poll(0.5, 5000))
    return [json.loads(r.value) for r in out]


def _wait_for(what: str, condition, result) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if PipelineState.is_terminal(result.state):
            raise AssertionError(f"pipeline ended ({result.state}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


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
    _produce(bootstrap_servers, inp, before)
    group = f"g-{tag}"
    argv = [
        *runner_args("prism", streaming=True),
        "--mode=flag",
        f"--bootstrap_servers={bootstrap_servers}",
        f"--input_topic={inp}",
        f"--output_topic={out}",
        f"--dead_letter_topic={dlq}",
        f"--group_id={group}",
        f"--model_root={root}",
        "--model_poll_interval_s=0.5",
        "--device=cpu",
        "--top_k=0",
    ]
    result = stream.main(argv, wait=False)
    try:
        _wait_for(
            "the records produced before the start",
            lambda: _total(bootstrap_servers, out, dlq) >= len(before),
            result,
        )
        second = kit.publish(root, trained)
        time.sleep(1.0)  # longer than --model_poll_interval_s
        after = [kit.record(1000 + i, r) for i, r in enumerate(kit.normal_rows(50, seed=3))]
        _produce(bootstrap_servers, inp, after)
        _wait_for(
            "the records produced while running",
            lambda: _total(bootstrap_servers, out, dlq) >= len(before) + len(after),
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
    results, dead = _read_json(bootstrap_servers, out), _read_json(bootstrap_servers, dlq)
    coordinates = Counter((d["partition"], d["offset"]) for d in results + dead)
    ends = end_offsets(config, inp)
    assert set(coordinates) == {(tp.partition, o) for tp, n in ends.items() for o in range(n)}
    assert sorted(d["reason"] for d in dead) == sorted(kit.POISON)
    assert len(results) >= 250

    # Results of the records produced before equal the offline scores of the first version.
    model = ServingModel.load(ModelRegistry(root).path(first), device="cpu", top_k=None)
    offline, _ = model.score_records(before, "flag")
    by_key = {r["key"]: r for r in results if r["model_version"] == first}
    assert len(by_key) == 200
    for r in offline:
        assert by_key[r["key"]]["is_anomaly"] == r["is_anomaly"]
        assert by_key[r["key"]]["score"] == pytest.approx(r["score"], rel=1e-4)
    assert sum(r["is_anomaly"] for r in offline) >= 5
    # ... and the records produced after the new version was published were scored by it.
    versions = Counter(r["model_version"] for r in results if r["key"] >= 1000)
    assert versions == {second: 50}, versions

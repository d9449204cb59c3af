"""pipelines/stream.py on Prism in streaming mode against the real broker: every record leaves
as a result or a dead letter, flags equal the offline scores, and a version published while the
job runs is picked up without a restart."""

from __future__ import annotations

import time
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
        time.sleep(1.0)  # longer than --model_poll_interval_s
        after = [kit.record(1000 + i, r) for i, r in enumerate(kit.normal_rows(50, seed=3))]
        kit.produce(bootstrap_servers, inp, after)
        _wait_for(
            "the records produced while running",
            lambda: kit.total(bootstrap_servers, out, dlq) >= len(before) + len(after),
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
    by_key = {r["key"]: r for r in results if r["model_version"] == first}
    assert len(by_key) == 200
    for r in offline:
        assert by_key[r["key"]]["is_anomaly"] == r["is_anomaly"]
        assert by_key[r["key"]]["score"] == pytest.approx(r["score"], rel=1e-4)
    assert sum(r["is_anomaly"] for r in offline) >= 5
    # ... and the records produced after the new version was published were scored by it.
    versions = Counter(r["model_version"] for r in results if r["key"] >= 1000)
    assert versions == {second: 50}, versions

"""The streaming job's Beam metrics reach Prometheus through Flink's Prometheus reporter, on the
local Flink session cluster (deploy/flink/local_cluster.py runs the reporter in each JVM)."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from apache_beam.runners.runner import PipelineState

from ae_pipeline.kafka import create_topics
from ae_pipeline.local.paths import launcher_jar


def _samples(text: str, metric: str) -> list[float]:
    """The values of every sample whose name ends with ``metric`` (Flink prefixes the scope:
    ``flink_taskmanager_job_task_operator_<step>_<namespace>_<name>``)."""
    pattern = re.compile(rf"^(\w*{metric})\{{[^}}]*\}} (\S+)$", re.M)
    return [float(v) for _, v in pattern.findall(text)]


@pytest.mark.kafka
@pytest.mark.flink
@pytest.mark.slow
def test_the_stream_jobs_counters_are_scraped_from_flinks_prometheus_reporter(
    flink_session_cluster, bootstrap_servers, tmp_path, beam_options
):
    import kit

    from pipelines import stream

    beam_options("flink", streaming=True)
    cluster = flink_session_cluster
    assert cluster.prometheus_ports["taskmanager-0"]
    root = str(tmp_path / "models")
    kit.publish(root, kit.train(epochs=4))
    tag = uuid.uuid4().hex[:8]
    inp, out, dlq = f"pm-in-{tag}", f"pm-out-{tag}", f"pm-dlq-{tag}"
    create_topics({"bootstrap.servers": bootstrap_servers}, {inp: 2, out: 1, dlq: 1})
    values, n_poison = kit.records_with_poison(150, anomalies=3)
    kit.produce(bootstrap_servers, inp, values)
    argv = [
        *cluster.beam_args(launcher_jar("flink"), parallelism=1),
        "--streaming",
        *kit.stream_job_args(bootstrap_servers, inp, out, dlq, f"pm-g-{tag}", root),
    ]
    result = stream.main(argv, wait=False)
    seen: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 240
        while True:
            text = cluster.prometheus("taskmanager-0")
            seen = {
                name: sum(_samples(text, f"ae_pipeline_scoring_{name}"))
                for name in ("records_in", "results", "dead_letters", "anomalies")
            }
            if seen["records_in"] >= len(values):
                break
            assert not PipelineState.is_terminal(result.state), f"job ended: {result.state}"
            assert time.monotonic() < deadline, (
                f"counters on the reporter: {seen}; logs:\n{cluster.log_tails()}"
            )
            time.sleep(2)
    finally:
        result.cancel()
        cluster.cancel_all()
    assert seen["records_in"] == len(values)
    assert seen["results"] == 150 and seen["dead_letters"] == n_poison
    assert seen["anomalies"] >= 3

"""ae-pipeline stream --drift on Prism against the real broker: shifted records make one drift
event on the drift topic, from the Beam side (MonitorScoreDrift in the job)."""

from __future__ import annotations

import json
import uuid

import kit
import numpy as np
import pytest

from ae_pipeline.kafka import create_topics
from ae_pipeline.local.runners import runner_args
from pipelines import stream

pytestmark = [pytest.mark.kafka, pytest.mark.prism]


def test_the_stream_job_sends_a_drift_event_for_shifted_records(
    bootstrap_servers, tmp_path, trained, beam_options
):
    beam_options("prism", streaming=True)
    root = str(tmp_path / "models")
    version = kit.publish(root, trained)
    tag = uuid.uuid4().hex[:8]
    inp, out, dlq, drift = f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"drift-{tag}"
    create_topics({"bootstrap.servers": bootstrap_servers}, {inp: 2, out: 1, dlq: 1, drift: 1})
    rows = kit.normal_rows(600, seed=5) * 1.3 + np.array([5, 1, 3, 1, 40, 0.2], np.float32)
    kit.produce(bootstrap_servers, inp, [kit.record(i, r) for i, r in enumerate(rows)])
    argv = [
        *runner_args("prism", streaming=True),
        *kit.stream_job_args(
            bootstrap_servers,
            inp,
            out,
            dlq,
            f"g-{tag}",
            root,
            "--bounded",
            "--drift",
            f"--drift_topic={drift}",
            # Sliding windows: whichever minute the records' timestamps fall in, some windows
            # hold all of them.
            "--drift_window_s=600",
            "--drift_period_s=60",
            "--drift_for_s=0",
            "--drift_min_records=200",
        ),
    ]
    stream.main(argv)
    events = [json.loads(r.value) for r in kit.read_records(bootstrap_servers, drift)]
    assert [e["state"] for e in events] == ["drift"], events
    (event,) = events
    assert event["model_version"] == version and "psi" in event["crossed"]
    assert event["window"]["records"] == 600 and event["figures"]["psi"] > 0.25
    assert len(kit.read_records(bootstrap_servers, out)) == 600

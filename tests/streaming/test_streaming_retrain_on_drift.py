"""The whole loop, locally, against the real broker: records from a shifted distribution -> a
drift event -> the drift listener trains over the newest Parquet partition (``ae-pipeline
train`` on the FnApiRunner) -> a new version published -> the consumer serving it, with the
drift figures back under the limit."""

from __future__ import annotations

import json
import sys
import threading
import uuid

import kit
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.drift import DriftLimits, DriftMonitor
from ae_pipeline.kafka import create_topics
from ae_pipeline.local.runners import runner_args
from ae_pipeline.ops.retrain import DriftListener
from ae_pipeline.registry import ModelRegistry

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SHIFT = np.array([5, 1, 3, 1, 40, 0.2], dtype=np.float32)


def _shifted(n: int, seed: int) -> np.ndarray:
    return kit.normal_rows(n, seed=seed) * 1.3 + SHIFT


def _partition(root, day: str, rows: np.ndarray) -> None:
    cols = {c: rows[:, j] for j, c in enumerate(kit.COLUMNS)}
    folder = root / f"dt={day}"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": np.arange(len(rows)), **cols}), folder / "part-0.parquet")


def _in_thread(target, errors: list) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_drift_retrains_on_the_newest_partition_and_the_new_version_serves(
    bootstrap_servers, tmp_path, trained
):
    root = str(tmp_path / "models")
    first = kit.publish(root, trained)
    data = tmp_path / "events"
    _partition(data, "2026-12-01", kit.normal_rows(2000, seed=1))
    _partition(data, "2026-12-02", _shifted(3000, seed=2))  # the newest: what drifted
    inp, out, dlq = kit.new_topics(bootstrap_servers, partitions=1)
    drift_topic = f"drift-{uuid.uuid4().hex[:8]}"
    create_topics({"bootstrap.servers": bootstrap_servers}, [drift_topic])  # as topics.yaml does
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": f"g-{uuid.uuid4().hex[:8]}"},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="flag",
        model_root=root,
        model_poll_interval_s=1.0,
        device="cpu",
        client=kit.fast_client(),
        max_batch=100,
        scoring_process=False,
        drift=DriftMonitor(DriftLimits(for_s=1.0, min_records=200), window=300, every_s=0.0),
        drift_topic=drift_topic,
    )
    command = [
        sys.executable,
        "-m",
        "ae_pipeline.cli",
        "train",
        "--input={newest_partition}",
        f"--model_root={root}",
        "--key_column=id",
        "--hidden_dims=16",
        "--latent_dim=2",
        "--epochs=15",
        "--progress=false",
        *runner_args("fnapi"),
    ]
    listener = DriftListener(
        {"bootstrap.servers": bootstrap_servers, "group.id": f"r-{uuid.uuid4().hex[:8]}"},
        drift_topic=drift_topic,
        command=command,
        data_root=str(data),
        cooldown_s=3600,
        run_timeout_s=600,
        client=kit.fast_client(),
    )
    errors: list = []
    threads = [_in_thread(consumer.run, errors), _in_thread(listener.run, errors)]
    registry = ModelRegistry(root)

    def alive() -> str | None:
        return f"failed: {errors[0]!r}" if errors else None

    try:
        kit.produce(
            bootstrap_servers, inp, [kit.record(i, r) for i, r in enumerate(_shifted(600, 3))]
        )
        kit.wait_until(lambda: listener.stats.runs, "a retraining run", timeout_s=120, alive=alive)
        new = kit.wait_until(
            lambda: (v := registry.latest()) != first and v,
            "a new version published",
            timeout_s=400,
            alive=alive,
        )
        kit.wait_until(
            lambda: consumer.stats.model_version == new, "the consumer serving it", alive=alive
        )
        # More records of the new normal: the window fills with scores against the new
        # version's calibration, and they no longer drift.
        more = [kit.record(10_000 + i, r) for i, r in enumerate(_shifted(600, 4))]
        kit.produce(bootstrap_servers, inp, more)
        kit.wait_until(
            lambda: (
                consumer.stats.records_in >= 1200
                and (consumer.monitor.drift.figures.get("n") or 0) >= 200
            ),
            "the new records scored",
            alive=alive,
        )
        figures = dict(consumer.monitor.drift.figures)
    finally:
        consumer.stop()
        listener.stop()
        for thread in threads:
            thread.join(timeout=120)
        consumer.close()
    assert not errors
    assert listener.stats.runs == 1 and listener.stats.succeeded == 1, listener.stats
    assert listener.stats.last_run["args"][4] == f"--input={data / 'dt=2026-12-02'}"
    events = [json.loads(r.value) for r in kit.read_records(bootstrap_servers, drift_topic)]
    assert events[0]["state"] == "drift" and events[0]["model_version"] == first
    assert consumer.monitor.drift.version == new and not consumer.monitor.drift.drifting
    assert figures["psi"] < 0.25, figures

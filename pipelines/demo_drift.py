"""Step 6 of ``make demo``: score drift, the drift event, retraining, and the swap.

The sensors are recalibrated (four of them read higher and with more gain): the plain consumer
(``ae-pipeline consume --drift``) scores the new readings against the version trained in step 2,
its drift window moves past the PSI limit, and a drift event goes to the drift topic. The drift
listener (``ae-pipeline retrain-on-drift``) trains on the newest daily partition (the
recalibrated readings) and publishes a new version; the consumer swaps to it without a restart
and the drift figures fall back under the limit. ``drift.png`` plots the PSI over time with the
event and the swap.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

PSI_LIMIT = 0.25


def recalibrated(rows: np.ndarray) -> np.ndarray:
    """The sensors after a recalibration: sensors 0-3 read 4 units higher, with 20% more gain."""
    out = rows.copy()
    out[:, :4] = out[:, :4] * 1.2 + 4.0
    return out


def write_partitions(root: Path, make_rows: Any, features: list[str]) -> Path:
    """Yesterday's partition (the old normal) and today's (recalibrated), as a daily layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    today = dt.date.today()
    for day, rows in (
        (today - dt.timedelta(days=1), make_rows(5_000, 7)),
        (today, recalibrated(make_rows(15_000, 8))),
    ):
        folder = root / f"dt={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        cols = {"id": np.arange(len(rows)), **{f: rows[:, j] for j, f in enumerate(features)}}
        pq.write_table(pa.table(cols), folder / "part-0.parquet")
    return root


def _records(rows: np.ndarray, features: list[str], start: int) -> list[bytes]:
    return [
        json.dumps(
            {"id": start + i, **{f: round(float(v), 4) for f, v in zip(features, row, strict=True)}}
        ).encode()
        for i, row in enumerate(rows)
    ]


class _Timeline:
    """Samples the consumer's drift figures every ``every_s`` seconds (for the plot)."""

    def __init__(self, consumer: Any, every_s: float = 0.25) -> None:
        self.consumer = consumer
        self.every_s = every_s
        self.points: list[tuple[float, float, str | None, bool]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        drift = self.consumer.monitor.drift
        while not self._stop.wait(self.every_s):
            psi = drift.figures.get("psi")
            if psi is not None:
                self.points.append((time.monotonic() - self.t0, psi, drift.version, drift.drifting))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def plot(path: Path, points: list, event_s: float | None, swap_s: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    versions = list(dict.fromkeys(p[2] for p in points))
    for n, version in enumerate(versions):
        xs = [p[0] for p in points if p[2] == version]
        ys = [p[1] for p in points if p[2] == version]
        ax.plot(
            xs,
            ys,
            ".-",
            ms=3,
            label=f"PSI against {'the first' if n == 0 else 'the retrained'} version",
        )
    ax.axhline(PSI_LIMIT, color="tab:red", ls="--", label=f"limit {PSI_LIMIT}")
    if event_s is not None:
        ax.axvline(event_s, color="tab:purple", ls=":", label="drift event -> retraining")
    if swap_s is not None:
        ax.axvline(swap_s, color="tab:green", ls=":", label="new version serving")
    ax.set_yscale("log")
    top = max((p[1] for p in points), default=1.0)
    ax.set_ylim(1e-3, max(2 * top, 1.0))
    ax.set_xlabel("seconds")
    ax.set_ylabel("population stability index")
    ax.set_title("ae-pipeline demo: score drift, retraining and the swap")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run(
    out: Path, bootstrap: str, make_rows: Any, features: list[str], train_args: list[str]
) -> dict:
    """Runs step 6 against the broker at ``bootstrap``; returns its report."""
    from ae_pipeline.consumer import ScoringConsumer
    from ae_pipeline.drift import DriftLimits, DriftMonitor
    from ae_pipeline.kafka import create_producer, create_topics
    from ae_pipeline.ops.retrain import DriftListener
    from ae_pipeline.registry import ModelRegistry

    try:  # the fast client when installed (make setup installs it): quieter on shutdown
        import confluent_kafka  # noqa: F401

        client = "confluent"
    except ImportError:
        client = "kafka-python"
    models = out / "models"
    registry = ModelRegistry(str(models))
    first = registry.latest()
    events_root = write_partitions(out / "events", make_rows, features)
    topics = ["sensors-live", "sensors-live-flags", "sensors-live-dead-letters", "sensors-drift"]
    create_topics({"bootstrap.servers": bootstrap}, topics)
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap, "group.id": "demo-live"},
        input_topic="sensors-live",
        output_topic="sensors-live-flags",
        dead_letter_topic="sensors-live-dead-letters",
        mode="flag",
        model_root=str(models),
        model_poll_interval_s=1.0,
        device="cpu",
        max_batch=200,
        client=client,
        scoring_process=False,
        progress_interval_s=0,
        drift=DriftMonitor(
            DriftLimits(psi=PSI_LIMIT, for_s=2.0, min_records=400), window=1000, every_s=0.25
        ),
        drift_topic="sensors-drift",
    )
    listener = DriftListener(
        {"bootstrap.servers": bootstrap, "group.id": "demo-retrain"},
        drift_topic="sensors-drift",
        command=[
            sys.executable,
            "-m",
            "ae_pipeline.cli",
            "train",
            "--input={newest_partition}",
            *train_args,
        ],
        data_root=str(events_root),
        cooldown_s=3600,
        client=client,
    )
    errors: list[BaseException] = []

    def guarded(target: Any) -> threading.Thread:
        def body() -> None:
            try:
                target()
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        return thread

    def send(rows: np.ndarray, start: int) -> None:
        with create_producer({"bootstrap.servers": bootstrap}, client) as producer:
            for value in _records(rows, features, start):
                producer.send("sensors-live", value)
            producer.flush(60)

    def wait(what: str, condition: Any, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if errors:
                raise RuntimeError(f"demo drift step: {errors[0]!r}") from errors[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo drift step: no {what} within {timeout_s:.0f}s")
            time.sleep(0.2)
        return time.monotonic() - timeline.t0

    threads = [guarded(consumer.run), guarded(listener.run)]
    timeline = _Timeline(consumer)
    rng = np.random.default_rng(5)
    event_s = swap_s = None
    try:
        print("      2,000 readings as before, then 3,000 after the sensors' recalibration")
        send(make_rows(2_000, 11), 0)
        wait("scores", lambda: consumer.stats.records_in >= 2_000, 120)
        send(recalibrated(make_rows(3_000, 12)), 2_000)
        event_s = wait("drift event", lambda: listener.stats.runs > 0, 180)
        print(f"      drift event after {event_s:.0f}s; retraining on the newest partition")
        new = None

        def swapped() -> bool:
            nonlocal new
            new = registry.latest()
            return new != first and consumer.stats.model_version == new

        swap_s = wait("new version serving", swapped, 600)
        print(f"      {new} serving after {swap_s:.0f}s; 3,000 more recalibrated readings")
        send(recalibrated(make_rows(3_000, int(rng.integers(100, 1000)))), 5_000)
        wait("records scored", lambda: consumer.stats.records_in >= 8_000, 180)
        time.sleep(1.0)
    finally:
        timeline.stop()
        consumer.stop()
        listener.stop()
        for thread in threads:
            thread.join(timeout=60)
        consumer.close()
    before = max((p[1] for p in timeline.points if p[2] == first), default=None)
    after = [p[1] for p in timeline.points if p[2] == new]
    plot(out / "drift.png", timeline.points, event_s, swap_s)
    return {
        "first_version": first,
        "retrained_version": new,
        "psi_peak_first_version": round(before, 3) if before is not None else None,
        "psi_last_retrained_version": round(after[-1], 3) if after else None,
        "drift_event_s": round(event_s, 1) if event_s is not None else None,
        "serving_retrained_s": round(swap_s, 1) if swap_s is not None else None,
        "retraining": listener.stats.last_run.get("outcome"),
        "plot": str(out / "drift.png"),
    }

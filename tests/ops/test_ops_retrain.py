"""The drift listener's pure parts: placeholders, the newest partition, the cooldown, outcomes
(the whole loop against a real broker is tests/streaming/test_streaming_retrain_on_drift.py)."""

from __future__ import annotations

import json
import sys

import pytest

from ae_pipeline.cli import main
from ae_pipeline.ops.retrain import DriftListener, check_command, fill, newest_partition

CONFIG = {"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}


def test_placeholders_are_filled_from_the_event(tmp_path):
    for name in ("dt=2026-12-01", "dt=2026-12-03", "dt=2026-12-02", "_SUCCESS", ".tmp"):
        (tmp_path / name).mkdir()
    event = {"state": "drift", "model_version": "v7", "time": 1796300000.0}
    args = fill(
        ["train", "--input={newest_partition}", "job-{event_time}", "{model_version}"],
        event,
        str(tmp_path),
    )
    assert args == ["train", f"--input={tmp_path / 'dt=2026-12-03'}", "job-20261203-121320", "v7"]
    assert newest_partition(str(tmp_path)).endswith("dt=2026-12-03")


def test_a_command_that_cannot_work_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="give the retraining command"):
        check_command([])
    with pytest.raises(ValueError, match="placeholder other than"):
        check_command(["train", "{newest_partiton}"])
    with pytest.raises(ValueError, match="give --data_root"):
        DriftListener(CONFIG, drift_topic="d", command=["x", "{newest_partition}"])
    with pytest.raises(FileNotFoundError, match="no data partition"):
        newest_partition(str(tmp_path))


def _listener(tmp_path, code: int, cooldown_s: float = 3600.0) -> DriftListener:
    script = f"import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); sys.exit({code})"
    command = [sys.executable, "-c", script, str(tmp_path / "runs.txt"), "{model_version}"]
    return DriftListener(CONFIG, drift_topic="d", command=command, cooldown_s=cooldown_s)


def _event(state: str, version: str = "v1") -> bytes:
    return json.dumps({"state": state, "model_version": version, "time": 0}).encode()


def test_one_run_per_cooldown_and_recoveries_and_junk_are_skipped(tmp_path):
    listener = _listener(tmp_path, 0)
    for value in (_event("drift"), _event("drift", "v1"), _event("recovered"), b"{junk"):
        listener._handle(value)
    assert (tmp_path / "runs.txt").read_text() == "v1\n"
    stats = listener.stats
    assert (stats.events, stats.runs, stats.succeeded, stats.skipped) == (4, 1, 1, 3)
    assert stats.last_run["status"] == 0 and stats.last_run["outcome"] == "succeeded"


@pytest.mark.parametrize(("code", "outcome"), [(3, "refused"), (1, "failed")])
def test_a_refused_or_failed_run_is_counted_and_the_listener_goes_on(tmp_path, code, outcome):
    listener = _listener(tmp_path, code, cooldown_s=0)
    listener._handle(_event("drift"))
    listener._handle(_event("drift", "v2"))
    assert getattr(listener.stats, outcome) == 2 and listener.stats.runs == 2
    assert (tmp_path / "runs.txt").read_text() == "v1\nv2\n"


def test_the_command_line_refuses_a_missing_command(capsys):
    code = main(["retrain-on-drift", "--bootstrap_servers=127.0.0.1:1", "--drift_topic=d"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ae-pipeline retrain-on-drift: error: give the retraining command (after --)"]


def test_the_airflow_sensors_function_accepts_drift_events_only():
    from ae_pipeline.kafka import KafkaRecord
    from ae_pipeline.ops.retrain import drift_event

    class Message:  # confluent-kafka's Message: value() is a method
        def __init__(self, value):
            self._value = value

        def value(self):
            return self._value

    assert drift_event(Message(_event("drift", "v3")))["model_version"] == "v3"
    assert drift_event(KafkaRecord("t", 0, 0, 0, None, _event("drift"), ()))["state"] == "drift"
    for value in (_event("recovered"), b"{junk", None, b"[1]"):
        assert drift_event(Message(value)) is None

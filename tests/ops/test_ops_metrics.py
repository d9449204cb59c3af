"""The operators' side of the consumer without a broker: metrics, probes, JSON logs."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest

from ae_pipeline.ops import ConsumerMonitor, JsonFormatter, OpsServer, ScoringMetrics
from ae_pipeline.ops.logs import use_log_format


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_metrics_count_batches_reasons_and_refusals_once():
    metrics = ScoringMetrics()
    metrics.batch(
        records=5, results=3, dead_reasons=["bad_json", "bad_json"], anomalies=2, seconds=0.01
    )
    metrics.batch(records=2, results=2, dead_reasons=[], anomalies=0, seconds=None)
    metrics.refusals({"checksum": 1})
    metrics.refusals({"checksum": 1, "calibration": 2})  # totals so far: each counted once
    metrics.version("v1", 1)
    metrics.version("v2", 2)
    text = generate_latest(metrics.registry).decode()
    assert "ae_pipeline_scoring_records_in_total 7.0" in text
    assert "ae_pipeline_scoring_results_total 5.0" in text
    assert 'ae_pipeline_scoring_dead_letters_total{reason="bad_json"} 2.0' in text
    assert "ae_pipeline_scoring_anomalies_total 2.0" in text
    assert 'ae_pipeline_scoring_refused_versions_total{reason="checksum"} 1.0' in text
    assert 'ae_pipeline_scoring_refused_versions_total{reason="calibration"} 2.0' in text
    assert 'ae_pipeline_scoring_model_info{version="v2"} 1.0' in text
    assert "ae_pipeline_scoring_batch_size_count 2.0" in text
    assert "ae_pipeline_scoring_score_batch_seconds_count 1.0" in text


def test_lag_of_partitions_no_longer_assigned_is_dropped():
    metrics = ScoringMetrics()
    metrics.consumer_lag({("in", 0): 5, ("in", 1): 0})
    metrics.consumer_lag({("in", 1): 3})
    text = generate_latest(metrics.registry).decode()
    assert 'ae_pipeline_kafka_consumer_lag{partition="1",topic="in"} 3.0' in text
    assert 'partition="0"' not in text


def test_the_server_answers_metrics_and_probes_and_stops():
    state = {"ready": False}
    metrics = ScoringMetrics()
    with OpsServer(
        metrics.registry,
        port=0,
        host="127.0.0.1",
        ready=lambda: (state["ready"], "ready" if state["ready"] else "no model yet"),
    ) as server:
        status, body = _get(server.port, "/metrics")
        assert status == 200 and b"ae_pipeline_scoring_records_in_total" in body
        assert _get(server.port, "/healthz")[0] == 200
        status, body = _get(server.port, "/readyz")
        assert status == 503 and json.loads(body) == {"ok": False, "reason": "no model yet"}
        state["ready"] = True
        assert _get(server.port, "/readyz")[0] == 200
        assert _get(server.port, "/nothing")[0] == 404
    with pytest.raises(OSError):
        _get(server.port, "/healthz")


def test_a_taken_port_is_named():
    with OpsServer(ScoringMetrics().registry, port=0, host="127.0.0.1") as server:
        taken = f"cannot serve metrics on 127.0.0.1:{server.port}"
        with pytest.raises(OSError, match=taken):
            OpsServer(ScoringMetrics().registry, port=server.port, host="127.0.0.1")


def test_readiness_needs_a_model_and_partitions_and_health_a_turning_loop():
    monitor = ConsumerMonitor(metrics_port=None, progress_interval_s=0, stall_s=0.0)
    assert monitor.ready() == (False, "no model version loaded yet")
    monitor.loaded("v1")
    assert monitor.ready()[0] is False
    monitor.assigned = True
    assert monitor.ready() == (True, "serving v1 on assigned partitions")
    monitor.stall_s = 3600.0
    assert monitor.health()[0] is True
    monitor.stall_s = 0.0
    monitor._beat -= 1.0
    assert monitor.health()[0] is False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"metrics_port": 70000}, "TCP port"), ({"progress_interval_s": -1}, "progress_interval_s")],
)
def test_monitor_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConsumerMonitor(**kwargs)


def test_json_log_lines_carry_fields_and_tracebacks():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        exc = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("once",), exc)
    record.fields = {"records": 3}
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "ERROR" and line["message"] == "failed once"
    assert line["fields"] == {"records": 3} and "RuntimeError: boom" in line["exception"]
    assert line["time"].endswith("+00:00")
    with pytest.raises(ValueError, match="text, json"):
        use_log_format("yaml")


def _value(metrics: ScoringMetrics, name: str, labels: dict | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_a_batch_costs_one_update_per_metric_and_the_drift_gauges_follow_each_judgement():
    """Batch-level counting (dead letters tallied by reason, the version and swaps only when
    they change, the drift gauges when the drift monitor judged) gives the same figures as
    counting each record and exporting after each batch."""
    from types import SimpleNamespace

    import numpy as np

    from ae_pipeline.calibration import calibrate
    from ae_pipeline.drift import DriftMonitor, DriftReference

    rng = np.random.default_rng(0)
    calibration = calibrate(rng.exponential(size=5000))
    now = [1000.0]
    drift = DriftMonitor(window=1000, every_s=1.0, clock=lambda: now[0])
    monitor = ConsumerMonitor(
        metrics_port=0,
        progress_interval_s=0,
        drift=drift,
        reference_of=lambda v: DriftReference(calibration, v),
    )
    metrics = monitor.metrics
    assert metrics is not None

    def batch(version, swaps, reasons, scale=1.0):
        scores = scale * rng.exponential(size=100)
        monitor.batch(
            SimpleNamespace(
                outputs=[b""] * 100,
                letters=[b""] * len(reasons),
                dead_reasons=reasons,
                anomalies=1,
                version=version,
                swaps=swaps,
                scores=scores,
                seconds=0.001,
                refusals={},
            )
        )

    batch("v1", 1, ["bad_json", "too_large", "bad_json"])
    judged = drift.figures
    assert _value(metrics, "ae_pipeline_drift_window_records") == judged["n"] == 100
    assert _value(metrics, "ae_pipeline_drift_psi") == judged["psi"]
    for _ in range(3):  # within every_s: no judgement, the gauges keep the last figures
        now[0] += 0.1
        batch("v1", 1, ["bad_json"], scale=5.0)
    assert drift.figures is judged and _value(metrics, "ae_pipeline_drift_window_records") == 100
    now[0] += 1.0
    batch("v1", 2, [], scale=5.0)
    assert drift.figures is not judged
    assert _value(metrics, "ae_pipeline_drift_window_records") == drift.figures["n"] == 500
    assert _value(metrics, "ae_pipeline_drift_psi") == drift.figures["psi"] > judged["psi"]
    assert _value(metrics, "ae_pipeline_drift_state") == 0
    total = "ae_pipeline_scoring_dead_letters_total"
    assert _value(metrics, total, {"reason": "bad_json"}) == 5
    assert _value(metrics, total, {"reason": "too_large"}) == 1
    assert _value(metrics, "ae_pipeline_scoring_records_in_total") == 500 + 6
    assert _value(metrics, "ae_pipeline_scoring_batch_size_count") == 5
    assert _value(metrics, "ae_pipeline_scoring_model_swaps") == 2
    now[0] += 1.5
    batch("v2", 2, [])  # a new version: its info, and the drift window starts over
    assert _value(metrics, "ae_pipeline_scoring_model_info", {"version": "v2"}) == 1
    assert monitor.version == drift.version == "v2"
    assert _value(metrics, "ae_pipeline_drift_window_records") == drift.figures["n"] == 100

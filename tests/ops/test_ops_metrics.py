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

"""MonitorScoreDrift on a real runner (FnApiRunner): windows of event time, patience, events,
gauges; and its element shapes."""

from __future__ import annotations

import json

import apache_beam as beam
import kit
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that

from ae_pipeline.beam.drift import NAMESPACE, MonitorScoreDrift, event_message, version_scores
from ae_pipeline.drift import DriftLimits
from ae_pipeline.kafka import KafkaRecord


def _results(version: str, threshold: float, seconds: int, per_s: int, scale: dict) -> list:
    """Timestamped result dicts: ``per_s`` a second for ``seconds`` s; the scores of second
    ``t`` are calibration-like errors times ``scale.get(t, 1)``."""
    rng = np.random.default_rng(3)
    out = []
    for t in range(seconds):
        for i in range(per_s):
            score = float(rng.exponential()) * scale.get(t, 1.0)
            result = {"key": i, "model_version": version, "score": score}
            result["is_anomaly"] = score > threshold
            out.append(beam.window.TimestampedValue(result, t + i / per_s))
    return out


@pytest.fixture(scope="module")
def trained():
    return kit.train(epochs=2)


@pytest.fixture
def exponential_version(tmp_path, trained):
    """A version whose calibration is of exponential(1) errors (the test's own scores)."""
    from ae_pipeline.calibration import calibrate

    trained = kit.Trained(
        trained.model,
        trained.config,
        trained.scaler,
        calibrate(np.random.default_rng(0).exponential(size=20000), "quantile", 0.99),
    )
    root = str(tmp_path / "models")
    return root, kit.publish(root, trained), trained.threshold["value"]


def test_drift_and_recovery_in_event_time_with_gauges(exponential_version):
    root, version, threshold = exponential_version
    shifted = {t: 4.0 for t in range(40, 80)}  # seconds 40..79 drift
    elements = _results(version, threshold, 120, 50, shifted)
    limits = DriftLimits(for_s=15.0, min_records=200)
    p = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([]))
    events = (
        p
        | beam.Create(elements)
        | MonitorScoreDrift(model_root=root, limits=limits, window_s=10, period_s=5)
    )

    def check(found):  # runs on the runner's side: everything it needs is in the closure
        assert [e["state"] for e in sorted(found, key=lambda e: e["time"])] == [
            "drift",
            "recovered",
        ], found
        drift, recovered = sorted(found, key=lambda e: e["time"])
        assert drift["model_version"] == version and "psi" in drift["crossed"]
        # The first window holding shifted scores starts at 35 s; 15 s of patience after it.
        assert drift["since"] == 35.0 and drift["time"] >= 50.0, drift
        assert drift["figures"]["psi"] > 0.25 and drift["window"]["records"] >= 200
        assert 80.0 <= recovered["time"] <= 95.0, recovered
        assert recovered["since"] == drift["since"]
        json.loads(event_message(drift)[1])  # the drift topic's value is JSON

    assert_that(events, check)
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    counters = {m.key.metric.name: m.committed for m in metrics["counters"]}
    assert counters == {"events_drift": 1, "events_recovered": 1}
    gauges = {m.key.metric.name: m.committed.value for m in metrics["gauges"]}
    assert {"psi_micro", "ks_micro", "anomaly_rate_ratio_micro", "window_records"} <= set(gauges)


def test_steady_scores_make_no_event(exponential_version):
    root, version, threshold = exponential_version
    elements = _results(version, threshold, 60, 50, {})
    p = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([]))
    events = (
        p
        | beam.Create(elements)
        | MonitorScoreDrift(
            model_root=root, limits=DriftLimits(for_s=0.0), window_s=10, period_s=None
        )
    )
    assert_that(events, lambda found: found == [] or pytest.fail(f"events: {found}"))
    p.run().wait_until_finish()


def test_every_element_shape_yields_its_scores():
    result = {"model_version": "v1", "score": 0.5, "is_anomaly": False}
    value = json.dumps(result).encode()
    shapes = [
        result,
        value,
        value.decode(),
        (b"k", value, []),
        ("topic", b"k", value, []),
        KafkaRecord("t", 0, 1, 0, b"k", value, ()),
        [result, [value]],
    ]
    found = [list(version_scores(s)) for s in shapes]
    assert found[:6] == [[("v1", 0.5)]] * 6 and found[6] == [("v1", 0.5)] * 2
    dead = json.dumps({"reason": "bad_json", "model_version": "v1"}).encode()
    assert list(version_scores(dead)) == [] and list(version_scores(b"{not json")) == []
    assert list(version_scores({"score": True, "model_version": "v1"})) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of model_root"),
        ({"model_root": "m", "window_s": 0}, "window_s must be seconds above 0"),
        ({"model_root": "m", "window_s": 10, "period_s": 20}, "must not exceed"),
        ({"model_root": "m", "drift_topic": "d"}, "needs kafka_config"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MonitorScoreDrift(**kwargs)

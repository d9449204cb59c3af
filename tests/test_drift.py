"""Score drift figures and the drift monitor's window, limits and events (pure logic)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ae_pipeline.calibration import calibrate
from ae_pipeline.drift import (
    DriftLimits,
    DriftMonitor,
    DriftReference,
    drift_figures,
    ks_pvalue,
)


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    errors = np.random.default_rng(0).exponential(size=20000)
    return DriftReference(calibrate(errors, "quantile", 0.99), "v1")


def test_scores_like_the_calibration_do_not_drift(reference):
    rng = np.random.default_rng(1)
    figures = [drift_figures(reference, rng.exponential(size=2000)) for _ in range(20)]
    assert max(f["psi"] for f in figures) < 0.05  # noise floor ~ 9 / n
    assert np.median([f["ks_pvalue"] for f in figures]) > 0.05
    assert max(f["anomaly_rate_ratio"] for f in figures) < 2.0
    assert reference.expected_anomaly_rate == pytest.approx(0.01, abs=0.003)


@pytest.mark.parametrize("scale", [1.5, 2.0, 4.0])
def test_larger_scores_drift_and_more_so_the_larger(reference, scale):
    rng = np.random.default_rng(2)
    moved = drift_figures(reference, scale * rng.exponential(size=2000))
    more = drift_figures(reference, 2 * scale * rng.exponential(size=2000))
    assert moved["psi"] > 0.1 and moved["ks_pvalue"] < 1e-6
    assert moved["anomaly_rate_ratio"] > 3
    assert more["psi"] > moved["psi"] and more["ks"] > moved["ks"]


def test_smaller_scores_drift_too(reference):
    # Data that reconstructs too well (a constant feed, a stuck sensor) also moved.
    figures = drift_figures(reference, 0.2 * np.random.default_rng(3).exponential(size=2000))
    assert figures["psi"] > 0.25 and figures["anomaly_rate"] < 0.01


def test_no_finite_score_gives_no_figure(reference):
    figures = drift_figures(reference, np.array([np.nan, np.inf]))
    assert figures["n"] == 0 and figures["psi"] is None and figures["ks"] is None


def test_the_ks_pvalue_falls_with_the_distance_and_the_sample():
    assert ks_pvalue(0.0, 100, 100) == 1.0
    assert ks_pvalue(0.05, 100, 10000) > ks_pvalue(0.1, 100, 10000) > ks_pvalue(0.2, 100, 10000)
    assert ks_pvalue(0.05, 100, 10000) > ks_pvalue(0.05, 5000, 10000)
    assert 0.0 <= ks_pvalue(0.9, 10000, 10000) < 1e-100


def test_a_version_without_calibration_is_refused_by_name():
    with pytest.raises(ValueError, match=r"calibration histogram.*'v9'"):
        DriftReference({"value": 1.0}, "v9")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"psi": -1}, "psi must be a number above 0"),
        ({"ks_pvalue": 1.5}, "ks_pvalue must be below 1"),
        ({"for_s": float("inf")}, "for_s"),
        ({"min_records": 0}, "min_records"),
    ],
)
def test_bad_limits_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DriftLimits(**kwargs)


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="whole number of scores"):
        DriftMonitor(window=0)
    with pytest.raises(ValueError, match="window_s"):
        DriftMonitor(window_s=-1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _monitor(reference, **kwargs):
    clock = Clock()
    limits = DriftLimits(for_s=kwargs.pop("for_s", 10.0), min_records=100)
    monitor = DriftMonitor(limits, clock=clock, every_s=0.0, **kwargs)
    monitor.set_reference(reference)
    return monitor, clock


def test_drift_is_declared_once_after_for_s_then_recovers(reference):
    rng = np.random.default_rng(4)
    monitor, clock = _monitor(reference, window=500)
    events = []
    for _ in range(5):  # normal data: nothing
        events += monitor.add(rng.exponential(size=100))
        clock.now += 1
    assert events == [] and monitor.figures["n"] == 500
    for _ in range(15):  # shifted for 15 s: one event, after 10 s over the limit
        events += monitor.add(4 * rng.exponential(size=100))
        clock.now += 1
    assert [e.state for e in events] == ["drift"]
    drift = events[0]
    assert "psi" in drift.crossed and drift.model_version == "v1"
    assert drift.time - drift.since >= 10 and drift.window["records"] == 500
    decoded = json.loads(drift.to_json())
    assert decoded["state"] == "drift" and decoded["figures"]["psi"] > 0.25
    for _ in range(8):  # back to normal: recovered once the window is normal again
        events += monitor.add(rng.exponential(size=100))
        clock.now += 1
    assert [e.state for e in events] == ["drift", "recovered"]
    assert events[1].since == drift.since


def test_a_short_excursion_is_not_drift(reference):
    rng = np.random.default_rng(5)
    monitor, clock = _monitor(reference, window=300, for_s=30.0)
    events = []
    for i in range(40):
        scale = 4.0 if 10 <= i < 20 else 1.0  # 10 s over the limit, not 30
        events += monitor.add(scale * rng.exponential(size=100))
        clock.now += 1
    assert events == []


def test_a_time_window_forgets_old_scores(reference):
    monitor, clock = _monitor(reference, window_s=5.0)
    for _ in range(10):
        monitor.add(np.ones(50))
        clock.now += 1
    monitor.judge()
    assert monitor.figures["n"] == 250  # the chunks added at 1005 .. 1009, judged at 1010


def test_a_new_version_starts_the_window_over(reference):
    rng = np.random.default_rng(6)
    monitor, _ = _monitor(reference, window=500, for_s=0.0)
    events = monitor.add(4 * rng.exponential(size=500))
    assert [e.state for e in events] == ["drift"] and monitor.drifting
    monitor.set_reference(reference)
    assert not monitor.drifting and monitor.add(rng.exponential(size=50)) == []
    assert monitor.figures["n"] == 50


def test_anomaly_rate_alone_needs_enough_anomalies(reference):
    limits = DriftLimits(psi=None, anomaly_rate_ratio=3.0, min_records=100, min_anomalies=5)
    few = {"n": 100, "psi": 0.0, "anomaly_rate": 0.04, "anomaly_rate_ratio": 4.0}
    many = {"n": 1000, "psi": 0.0, "anomaly_rate": 0.04, "anomaly_rate_ratio": 4.0}
    assert limits.crossed(few) == [] and limits.crossed(many) == ["anomaly_rate_ratio"]
    assert limits.crossed({**many, "n": 50}) == []  # too few records to judge


def test_a_burst_then_silence_still_makes_its_event_after_for_s(reference):
    # The consumer judges on idle turns of its loop too (judge() without new scores).
    monitor, clock = _monitor(reference, window=500, for_s=10.0)
    assert monitor.add(4 * np.random.default_rng(7).exponential(size=500)) == []
    clock.now += 5
    assert monitor.judge() == []
    clock.now += 6
    assert [e.state for e in monitor.judge()] == ["drift"]

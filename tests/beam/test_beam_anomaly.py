"""The autoencoder detector for Beam's ``AnomalyDetection`` (``ae_pipeline.beam.anomaly``).

Beam's ``apache_beam.ml.anomaly`` needs Beam >= 2.64 (the gate: ``ae_pipeline.beam.compat``). The
``AnomalyDetection`` runs happen natively in the main environment (Beam 2.77), on FnApiRunner, in
a child process (``anomaly_job.py``); the row handler runs on every Beam, and on Beam 2.62
(``.venv-beam-2.62``, where ``make test`` runs this module too) the detector says what is missing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that

from ae_pipeline.beam import anomaly
from ae_pipeline.beam.compat import HAS_ML_ANOMALY
from ae_pipeline.local.runners import runner_args
from ae_pipeline.serving import ServingModel

pytestmark = pytest.mark.both_beams

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@pytest.fixture(scope="module")
def job_results(tmp_path_factory) -> dict:
    """Runs ``anomaly_job.py`` (AnomalyDetection on this environment's Beam) once for the
    module."""
    if not HAS_ML_ANOMALY:
        pytest.skip(f"Beam {beam.__version__} has no apache_beam.ml.anomaly: runs on Beam 2.77")
    work = tmp_path_factory.mktemp("anomaly")
    proc = subprocess.run(
        [sys.executable, str(HERE / "anomaly_job.py"), str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((work / "results.json").read_text())


def _by_id(results: list[dict]) -> dict[int, dict]:
    return {r["id"]: r for r in results}


def test_runs_on_beams_own_anomaly_detection(job_results):
    assert job_results["beam_version"] == beam.__version__
    n_inputs = len(job_results["offline"])
    assert len(job_results["results"]["alone"]) == n_inputs
    assert len(job_results["results"]["ensemble"]) == n_inputs


def test_scores_equal_the_offline_scorer_and_flag_planted_anomalies(job_results):
    alone = _by_id(job_results["results"]["alone"])
    threshold = job_results["threshold"]
    planted = set(job_results["planted_ids"])
    bad = job_results["bad_id"]
    false_pos = 0
    normals = 0
    for key, offline in job_results["offline"].items():
        (pred,) = alone[int(key)]["predictions"]
        if int(key) == bad:
            continue
        assert pred["threshold"] == pytest.approx(threshold)
        assert pred["score"] == pytest.approx(offline, rel=1e-4, abs=1e-7)
        assert pred["label"] == int(offline > threshold)
        assert pred["info"] == f"model_version={job_results['version']}"
        if int(key) not in planted:
            normals += 1
            false_pos += pred["label"]
    recall = np.mean([alone[i]["predictions"][0]["label"] == 1 for i in planted])
    assert recall >= 0.9
    assert false_pos / normals <= 0.05


def test_a_record_the_model_cannot_score_gets_the_missing_label_and_the_reason(job_results):
    (pred,) = _by_id(job_results["results"]["alone"])[job_results["bad_id"]]["predictions"]
    missing = job_results["missing_label"]
    assert math.isnan(pred["score"]) and pred["label"] == missing != 0
    assert "unscored: non_numeric" in pred["info"] and "f3" in pred["info"]
    assert job_results["offline_reasons"][str(job_results["bad_id"])].startswith("non_numeric")


def test_inside_an_ensemble_an_unscored_row_is_missing_not_normal(job_results):
    """AnyVote leaves missing labels out of the vote: with ZScore beside it the row gets
    ZScore's verdict and our source prediction says "missing"; alone in an ensemble it is
    missing (a None label, before, made the aggregate None)."""
    bad, missing = job_results["bad_id"], job_results["missing_label"]
    (pred,) = _by_id(job_results["results"]["with_zscore"])[bad]["predictions"]
    sources = {s["model_id"]: s for s in pred["sources"]}
    assert sources["ae"]["label"] == missing and math.isnan(sources["ae"]["score"])
    zscore = sources["zscore"]["label"]
    assert pred["label"] == (missing if zscore in (None, missing) else zscore)
    (only,) = _by_id(job_results["results"]["ae_only"])[bad]["predictions"]
    assert only["label"] == missing
    # Every scorable row keeps the detector's own verdict inside the ensembles.
    alone = _by_id(job_results["results"]["alone"])
    for key, result in _by_id(job_results["results"]["ae_only"]).items():
        assert result["predictions"][0]["label"] == alone[key]["predictions"][0]["label"]


def test_ensembles_with_zscore_and_iqr(job_results):
    ensemble = _by_id(job_results["results"]["ensemble"])
    alone = _by_id(job_results["results"]["alone"])
    for key, result in ensemble.items():
        (pred,) = result["predictions"]
        sources = {s["model_id"]: s for s in pred["sources"]}
        assert set(sources) == {"ae", "zscore", "iqr"}
        assert sources["ae"]["label"] == alone[key]["predictions"][0]["label"]
        if sources["ae"]["label"] == 1:  # AnyVote: one outlier vote makes an outlier
            assert pred["label"] == 1
    # Beam's univariate detectors see the data too (past their warm-up they score).
    assert any(
        s["model_id"] == "zscore" and s["score"] is not None and not math.isnan(s["score"])
        for r in ensemble.values()
        for s in r["predictions"][0]["sources"]
    )


# ---------------------------------------------------------------- on every Beam (2.62 too)


def test_row_handler_under_run_inference_on_any_beam(version_dir):
    rng = np.random.default_rng(5)
    records = [
        {"id": i, **{f"f{j}": float(v) for j, v in enumerate(rng.normal(size=6))}}
        for i in range(50)
    ]
    records.append({"id": 50, "f0": 1.0})  # missing fields
    model = ServingModel.load(version_dir, device="cpu")
    expected, reasons = model.anomaly_scores(records)
    assert set(reasons) == {50} and reasons[50].startswith("missing_field")

    def check(results):
        got = {r.example.id: r for r in results}
        assert len(got) == len(records)
        for i, want in enumerate(expected):
            r = got[i]
            assert r.model_id == model.version
            if np.isnan(want):
                assert math.isnan(r.inference["score"]) and r.inference["reason"] == reasons[i]
            else:
                assert r.inference["score"] == pytest.approx(want, rel=1e-5)
                assert r.inference["reason"] is None

    handler = anomaly.AutoencoderRowModelHandler(version_dir, device="cpu", max_batch_size=16)
    with beam.Pipeline(argv=runner_args("fnapi")) as p:
        rows = p | beam.Create(records) | beam.Map(lambda d: beam.Row(**d))
        assert_that(rows | RunInference(handler), check)


@pytest.mark.skipif(HAS_ML_ANOMALY, reason="this Beam has apache_beam.ml.anomaly")
def test_detector_on_an_older_beam_says_what_is_missing(version_dir):
    with pytest.raises(RuntimeError, match=r"Beam >= 2\.64.*installed Beam is 2\.62"):
        anomaly.autoencoder_detector(version_dir)

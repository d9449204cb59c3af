"""Output modes as objects: the ``explain`` mode through every path (ServingModel, Beam,
RunInference, the consumer inline and with the scoring process, the CLI), and a mode of one's
own added as one class."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import apache_beam as beam
import kit
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from ae_pipeline.artifact import ArtifactError
from ae_pipeline.beam import ExplainScores, ScoreRecords
from ae_pipeline.beam.model_handler import AutoencoderModelHandler
from ae_pipeline.calibration import ScoreRanks
from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.hot_reload import open_model
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.scoring_process import ScoringProcess, mode_module
from ae_pipeline.serving import (
    ServingError,
    ServingModel,
    check_passthrough,
    get_mode,
    mode_names,
    register_mode,
)
from ae_pipeline.serving import modes as modes_module


def _values(n: int = 200, anomalies: int = 5) -> list[bytes]:
    values, _ = kit.records_with_poison(n, seed=3, anomalies=anomalies)
    return [v for v in values if v not in kit.POISON_VALUES]


# ---- the mode on its own ---------------------------------------------------------------------


def test_explain_gives_every_features_error_and_the_rank_against_calibration(version_dir, trained):
    model = ServingModel.load(version_dir, device="cpu", top_k=None)
    values = _values()
    explained, dead = model.score_records(values, "explain")
    flagged, _ = model.score_records(values, "flag")
    assert not dead and len(explained) == len(flagged) == len(values)
    ranks = ScoreRanks(trained.threshold["histogram"])
    for e, f in zip(explained, flagged, strict=True):
        assert set(e) == {"key", "model_version", "score", "rank", "feature_errors"}
        assert e["key"] == f["key"] and e["score"] == pytest.approx(f["score"], rel=1e-6)
        assert list(e["feature_errors"]) == kit.COLUMNS  # every feature, in column order
        # The score is the mean of the per-feature squared errors; flag's contributions (all
        # of them with top_k=None) are the same numbers, largest first.
        assert np.mean(list(e["feature_errors"].values())) == pytest.approx(e["score"], rel=1e-5)
        assert e["feature_errors"] == pytest.approx(f["contributions"], rel=1e-6)
        assert 0.0 <= e["rank"] <= 1.0
        assert e["rank"] == pytest.approx(float(ranks.rank(np.array([e["score"]]))[0]), abs=1e-9)
    by_score = sorted(explained, key=lambda r: r["score"])
    assert [r["rank"] for r in by_score] == sorted(r["rank"] for r in by_score)  # monotone
    # The 5 records moved off the manifold rank above the 99% threshold's share; typical
    # records rank around the middle.
    anomalies = [r for r in explained if r["key"] >= 195]  # keys are the records' ids
    assert len(anomalies) == 5 and min(r["rank"] for r in anomalies) > 0.99
    assert 0.2 < float(np.median([r["rank"] for r in explained])) < 0.8


def test_explain_refuses_a_version_without_a_calibration_histogram(tmp_path, trained):
    root = str(tmp_path / "models")
    bare = kit.Trained(trained.model, trained.config, trained.scaler, {"value": 0.5})
    version = kit.publish(root, bare)  # flags (it has a threshold), cannot explain
    path = ModelRegistry(root).path(version)
    with pytest.raises(ArtifactError, match="no calibration histogram") as err:
        open_model(version_dir=path, mode="explain", device="cpu")
    assert err.value.reason == "calibration"
    open_model(version_dir=path, mode="flag", device="cpu")  # flagging needs no histogram
    model = ServingModel.load(path, device="cpu")
    with pytest.raises(ServingError, match="no calibration histogram"):
        model.score_records(_values(3, 0), "explain")  # not the records' fault: raises


def test_modes_are_objects_looked_up_by_name_with_a_suggestion_for_typos():
    assert mode_names()[:4] == ("encode", "denoise", "flag", "explain")
    flag = get_mode("flag")
    assert get_mode(flag) is flag and flag.flags and flag.needs == {"threshold"}
    assert get_mode("explain").needs == {"calibration"} and not get_mode("explain").flags
    assert not get_mode("encode").needs and not get_mode("denoise").needs
    with pytest.raises(ServingError, match=r"did you mean 'explain'"):
        get_mode("explian")
    with pytest.raises(ServingError, match="would overwrite the result field"):
        check_passthrough(["rank"], "explain")
    check_passthrough(["rank"], "flag")  # only explain's results have a rank


# ---- a mode of one's own: one class, no edit anywhere else -------------------------------------

HERE = Path(__file__).resolve().parent


@pytest.fixture
def max_error(monkeypatch):
    """The ``max_error`` mode (``max_error_mode.py`` beside this file), registered by importing
    its module, as a user's mode is; unregistered afterwards. The scoring child process finds
    the module on ``PYTHONPATH``, as it would find a user's installed package."""
    monkeypatch.delitem(sys.modules, "max_error_mode", raising=False)
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    module = importlib.import_module("max_error_mode")
    try:
        yield module.MAX_ERROR
    finally:
        modes_module._REGISTRY.pop("max_error", None)
        sys.modules.pop("max_error_mode", None)


def test_a_mode_of_ones_own_serves_through_serving_beam_and_the_handler(
    beam_options, version_dir, max_error
):
    mode = max_error
    model = ServingModel.load(version_dir, device="cpu", top_k=None)
    values = _values(60, 0)
    mine, _ = model.score_records(values, mode)
    flagged, _ = model.score_records(values, "flag")
    for m, f in zip(mine, flagged, strict=True):
        worst, top = next(iter(f["contributions"].items()))  # largest first
        assert m["worst_feature"] == worst and m["max_error"] == pytest.approx(top, rel=1e-6)

    expected = sorted((r["key"], r["worst_feature"]) for r in mine)
    p = beam.Pipeline(options=beam_options("fnapi"))
    results, dead = (
        p
        | beam.Create(values, reshuffle=False)
        | ScoreRecords(mode, model_version_dir=version_dir, device="cpu", max_batch_size=16)
    )
    assert_that(results | beam.Map(lambda r: (r["key"], r["worst_feature"])), equal_to(expected))
    assert_that(dead, equal_to([]), label="no dead letters")
    p.run().wait_until_finish()

    # Registered (by importing its module), it is selectable by name (and listed); the name
    # cannot be taken twice; the scoring process is told the module to import.
    assert "max_error" in mode_names() and get_mode("max_error") == mode
    register_mode(mode)  # the same mode again: nothing changes
    with pytest.raises(ValueError, match="is taken"):
        register_mode(type("Other", (type(mode),), {})())
    assert mode_module("max_error") == mode_module(mode) == "max_error_mode"
    assert mode_module("flag") == mode_module("explain") == ""


@pytest.mark.kafka
@pytest.mark.parametrize("scoring_process", [False, True], ids=["inline", "scoring-process"])
def test_the_consumer_serves_a_mode_of_ones_own(
    bootstrap_servers, model_root, version_dir, max_error, scoring_process
):
    """The scoring child gets the mode's name and its module, imports the module (which
    registers the mode) and serves it; by name or as the object."""
    inp, out, dlq = kit.new_topics(bootstrap_servers)
    values = _values(80, 0)
    kit.produce(bootstrap_servers, inp, values)
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": f"g-{uuid.uuid4().hex[:8]}"},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="max_error" if scoring_process else max_error,
        model_root=model_root,
        device="cpu",
        max_batch=30,
        scoring_process=scoring_process,
    )
    stats = consumer.run(max_records=len(values), idle_timeout_s=20)
    assert stats.records_in == stats.results == len(values) and stats.dead_letters == 0
    found = [json.loads(r.value) for r in kit.read_records(bootstrap_servers, out)]
    offline, _ = ServingModel.load(version_dir, device="cpu").score_records(values, max_error)
    want = {r["key"]: r for r in offline}
    assert sorted(r["key"] for r in found) == sorted(want)
    for r in found:
        assert {"topic", "partition", "offset", "max_error", "worst_feature"} <= set(r)
        assert r["worst_feature"] == want[r["key"]]["worst_feature"]
        assert r["max_error"] == pytest.approx(want[r["key"]]["max_error"], rel=1e-4, abs=1e-7)


def test_the_scoring_process_refuses_a_mode_defined_in_main(version_dir):
    """The child cannot import the parent's ``__main__``: said at construction, not as a
    child that does not know the mode."""
    main_mode = type("MainMode", (get_mode("flag").__class__,), {"__module__": "__main__"})()
    with pytest.raises(ValueError, match="defined in __main__"):
        ScoringProcess({"version_dir": version_dir, "device": "cpu"}, mode=main_mode)


# ---- explain through Beam, RunInference, the consumer and the CLI ------------------------------


def test_explain_in_beam_and_run_inference_equals_the_offline_scores(beam_options, version_dir):
    model = ServingModel.load(version_dir, device="cpu")
    values = _values(120, 3)
    offline, _ = model.score_records(values, "explain")
    expected = {r["key"]: r for r in offline}

    def close_to_offline(found):
        assert sorted(r["key"] for r in found) == sorted(expected)
        for r in found:  # batches differ from the offline one: floats within tolerance
            want = expected[r["key"]]
            assert r["score"] == pytest.approx(want["score"], rel=1e-4, abs=1e-7)
            assert r["rank"] == pytest.approx(want["rank"], abs=1e-3)
            assert r["feature_errors"] == pytest.approx(want["feature_errors"], rel=1e-4, abs=1e-7)

    rows = np.stack([[json.loads(v)[c] for c in kit.COLUMNS] for v in values]).astype(np.float32)
    handler = AutoencoderModelHandler(version_dir, mode="explain", device="cpu")
    p = beam.Pipeline(options=beam_options("fnapi"))
    results, _dead = (
        p
        | "records" >> beam.Create(values, reshuffle=False)
        | ExplainScores(model_version_dir=version_dir, device="cpu", max_batch_size=32)
    )
    assert_that(results, close_to_offline, label="ExplainScores")
    inferred = (
        p
        | "blocks" >> beam.Create([rows[:50], rows[50:]], reshuffle=False)
        | RunInference(handler)
        | beam.Map(
            lambda pr: (sorted(pr.inference), pr.inference["feature_errors"].shape, pr.model_id)
        )
    )
    version = model.version
    assert_that(
        inferred,
        equal_to(
            [
                (["feature_errors", "rank", "score"], (50, 6), version),
                (["feature_errors", "rank", "score"], (70, 6), version),
            ]
        ),
        label="RunInference",
    )
    p.run().wait_until_finish()


def test_the_handler_refuses_a_version_that_cannot_serve_its_mode(tmp_path, trained):
    root = str(tmp_path / "models")
    bare = kit.Trained(trained.model, trained.config, trained.scaler, {"value": 0.5})
    path = ModelRegistry(root).path(kit.publish(root, bare))
    with pytest.raises(ArtifactError, match="no calibration histogram"):
        AutoencoderModelHandler(path, mode="explain", device="cpu").load_model()
    AutoencoderModelHandler(path, mode="flag", device="cpu").load_model()


@pytest.mark.kafka
@pytest.mark.parametrize("scoring_process", [False, True], ids=["inline", "scoring-process"])
def test_the_consumer_explains_records_from_kafka(
    bootstrap_servers, model_root, version_dir, scoring_process
):
    inp, out, dlq = kit.new_topics(bootstrap_servers)
    values = _values(150, 4)
    kit.produce(bootstrap_servers, inp, values)
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": f"g-{uuid.uuid4().hex[:8]}"},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="explain",
        model_root=model_root,
        device="cpu",
        max_batch=40,
        scoring_process=scoring_process,
    )
    stats = consumer.run(max_records=len(values), idle_timeout_s=20)
    assert stats.records_in == stats.results == len(values) and stats.anomalies == 0
    found = [json.loads(r.value) for r in kit.read_records(bootstrap_servers, out)]
    offline, _ = ServingModel.load(version_dir, device="cpu").score_records(values, "explain")
    want = {r["key"]: r for r in offline}
    assert sorted(r["key"] for r in found) == sorted(want)
    for r in found:
        assert {"topic", "partition", "offset", "rank", "feature_errors"} <= set(r)
        assert r["rank"] == pytest.approx(want[r["key"]]["rank"], abs=1e-3)


@pytest.mark.kafka
def test_consume_command_takes_explain_and_answers_a_misspelt_mode(bootstrap_servers, model_root):
    inp, out, dlq = kit.new_topics(bootstrap_servers)
    values = _values(30, 0)
    kit.produce(bootstrap_servers, inp, values)
    group = f"g-{uuid.uuid4().hex[:8]}"
    args = ("--max_records=30", "--idle_timeout_s=15")
    proc = kit.start_consumer(
        bootstrap_servers, model_root, inp, out, dlq, group, "--mode=explain", *args, max_batch=10
    )
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    found = [json.loads(r.value) for r in kit.read_records(bootstrap_servers, out)]
    assert len(found) == 30 and all("rank" in r and "feature_errors" in r for r in found)

    wrong = subprocess.run(
        [sys.executable, "-m", "pipelines.consume", "--mode=explian", "--help-not-reached"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=kit.REPO,
    )
    assert wrong.returncode == 2 and "explain" in wrong.stderr

"""ServingModel and ModelWatcher: the scoring shared by the Beam transforms and the consumer."""

from __future__ import annotations

import base64
import json
import pathlib
import threading
import time
from types import SimpleNamespace

import kit
import numpy as np
import pytest
import torch

from ae_pipeline.artifact import ArtifactError, save_artifact
from ae_pipeline.features import REASONS, FeatureSpec
from ae_pipeline.hot_reload import ModelWatcher
from ae_pipeline.models import ModelConfig, Scorer, build_model
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.serving import (
    NoModelError,
    ServingError,
    ServingModel,
    Source,
    as_input,
)


@pytest.fixture
def model(version_dir):
    return ServingModel.load(version_dir, device="cpu", top_k=None)


def test_load_reads_spec_scaler_threshold_and_version(model, version_dir, trained):
    assert model.spec == kit.SPEC
    assert model.version == pathlib.Path(version_dir).name
    assert model.threshold == pytest.approx(trained.threshold["value"])
    np.testing.assert_allclose(model.scaler.offset, trained.scaler.offset)
    # A marker path (what WatchFilePattern yields) loads the same version.
    assert ServingModel.load(f"{version_dir}/_PUBLISHED", device="cpu").version == model.version


def test_every_record_is_a_result_or_a_dead_letter_with_its_reason(model):
    values, _ = kit.records_with_poison(200)
    values.append({"id": -9, **{c: float("nan") for c in kit.COLUMNS}})  # a dict with NaN
    results, dead = model.score_records(values, "flag")
    assert len(results) == 200 and len(results) + len(dead) == len(values)
    assert [d["reason"] for d in dead] == [*kit.POISON, "non_finite"]
    assert all(d["reason"] in REASONS and d["detail"] for d in dead)
    assert all(d["model_version"] == model.version for d in dead)
    # The original bytes are kept, base64, and decode back to the poison.
    assert base64.b64decode(dead[0]["value_b64"]) == kit.POISON["bad_json"]
    assert dead[-1]["value"]["f0"] == "nan"
    json.dumps(results), json.dumps(dead)  # JSON-serialisable as they are
    assert [r["key"] for r in results] == list(range(200))


def test_wrong_width_dead_letter_from_a_vector_field_model(tmp_path):
    cfg = ModelConfig(4, hidden_dims=[], latent_dim=2)
    spec = FeatureSpec(vector_field="x", width=4, key_column="id")
    path = save_artifact(
        str(tmp_path / "v"),
        build_model(cfg, seed=0),
        cfg,
        threshold={"value": 1.0},
        extra={"feature_spec": spec.to_dict()},
    )
    model = ServingModel.load(path, device="cpu")
    results, dead = model.score_records(
        [b'{"id": 1, "x": [1, 2, 3, 4]}', b'{"id": 2, "x": [1, 2, 3]}', b'{"id": 3}'], "denoise"
    )
    assert [r["key"] for r in results] == [1]
    assert isinstance(results[0]["reconstruction"], list)  # no feature names: a list
    assert [d["reason"] for d in dead] == ["wrong_width", "missing_field"]


def test_kafka_coordinates_and_message_keys_pass_through(model):
    row = kit.normal_rows(1)[0]
    # No "id" field: the key comes from the Kafka message key.
    good = json.dumps(dict(zip(kit.COLUMNS, map(float, row), strict=True))).encode()
    kafka_record = SimpleNamespace(
        topic="in", partition=3, offset=41, key=b"k1", value=good, timestamp_ms=1234
    )
    poison = SimpleNamespace(topic="in", partition=3, offset=42, key=b"k2", value=b"oops")
    results, dead = model.score_records([kafka_record, poison, (b"k3", good)], "encode")
    assert results[0] == {
        "key": "k1",
        "model_version": model.version,
        "topic": "in",
        "partition": 3,
        "offset": 41,
        "timestamp_ms": 1234,
        "latent": results[0]["latent"],
    }
    assert len(results[0]["latent"]) == 2
    assert results[1]["key"] == "k3"
    assert dead[0]["reason"] == "bad_json"
    assert (dead[0]["topic"], dead[0]["partition"], dead[0]["offset"]) == ("in", 3, 42)
    assert dead[0]["key"] == "k2"
    assert as_input({"a": 1}) == ({"a": 1}, None)
    assert as_input((None, b"v")) == (b"v", Source(key=None))


def test_dicts_and_rows_score_like_json_and_fields_pass_through(model):
    import apache_beam as beam

    row = kit.normal_rows(1, seed=3)[0]
    as_dict = {"id": 5, "site": "a", **dict(zip(kit.COLUMNS, map(float, row), strict=True))}
    values = [kit.record(5, row), as_dict, beam.Row(**as_dict)]
    results, dead = model.score_records(values, "flag", passthrough=["site"])
    assert not dead
    # Same values; rows of one batch may differ in the last bits (BLAS blocking).
    assert results[0]["score"] == pytest.approx(results[1]["score"], rel=1e-5)
    assert results[1]["score"] == pytest.approx(results[2]["score"], rel=1e-5)
    assert results[1]["site"] == "a" and results[0]["site"] is None


def test_flags_equal_offline_scorer_errors_over_threshold(model, trained):
    x = kit.normal_rows(500, seed=11)
    x[-25:] += np.array([30, -5, 20, 10, 300, 1], dtype=np.float32)
    results, dead = model.score_records([kit.record(i, r) for i, r in enumerate(x)], "flag")
    assert not dead
    offline = Scorer(trained.model).errors(trained.scaler.transform(x))
    scores = np.array([r["score"] for r in results])
    np.testing.assert_allclose(scores, offline, rtol=1e-5, atol=1e-7)
    flags = np.array([r["is_anomaly"] for r in results])
    np.testing.assert_array_equal(flags, offline > trained.threshold["value"])
    assert flags[-25:].all() and flags[:-25].mean() < 0.05
    assert {r["threshold"] for r in results} == {trained.threshold["value"]}


def test_contributions_sum_to_error_times_width_and_are_sorted(model, version_dir):
    records = [kit.record(i, r) for i, r in enumerate(kit.normal_rows(50))]
    results, _ = model.score_records(records, "flag")
    for r in results:
        values = list(r["contributions"].values())
        assert sorted(r["contributions"]) == sorted(kit.COLUMNS)
        assert values == sorted(values, reverse=True)
        assert sum(values) == pytest.approx(r["score"] * len(kit.COLUMNS), rel=1e-4)
    # Scores of separate calls (other batch sizes: other BLAS blocking) agree to float32
    # precision, not to the last bit.
    top2 = ServingModel.load(version_dir, device="cpu", top_k=2)
    short, _ = top2.score_records(records[:1], "flag")
    full = list(results[0]["contributions"].items())
    got = list(short[0]["contributions"].items())
    assert [name for name, _ in got] == [name for name, _ in full[:2]]
    assert [v for _, v in got] == pytest.approx([v for _, v in full[:2]], rel=1e-4, abs=1e-7)
    none = ServingModel.load(version_dir, device="cpu", top_k=0)
    empty, _ = none.score_records(records, "flag")
    assert [r["contributions"] for r in empty] == [{}] * len(records)
    assert [r["score"] for r in empty] == pytest.approx([r["score"] for r in results], rel=1e-5)


def test_flag_results_have_the_same_fields_in_the_same_order_with_or_without_sources(model):
    """Bare records take a result comprehension of their own (no extras to merge): the same
    fields, in the same order, as records with Kafka coordinates less those."""
    records = [kit.record(i, r) for i, r in enumerate(kit.normal_rows(20))]
    bare, _ = model.score_records(records, "flag")
    sources = [Source("t", 0, i, None, 5) for i in range(len(records))]
    kafka, _ = model.score_records(records, "flag", sources=sources)
    fields = ["key", "model_version", "score", "threshold", "is_anomaly", "contributions"]
    assert [list(r) for r in bare] == [fields] * len(records)
    coordinates = ["topic", "partition", "offset", "timestamp_ms"]
    assert [list(r) for r in kafka] == [[*fields[:2], *coordinates, *fields[2:]]] * len(records)
    for b, k in zip(bare, kafka, strict=True):
        assert {f: k[f] for f in fields} == b


def test_denoise_returns_original_units(model, trained):
    x = kit.normal_rows(300, seed=5)
    results, _ = model.score_records([kit.record(i, r) for i, r in enumerate(x)], "denoise")
    recon = np.array([[r["reconstruction"][c] for c in kit.COLUMNS] for r in results])
    expected = trained.scaler.inverse(
        Scorer(trained.model).reconstruct(trained.scaler.transform(x))
    )
    np.testing.assert_allclose(recon, expected, rtol=1e-4, atol=1e-4)
    # In original units the reconstruction is close to the input (relative to each spread).
    rel = np.abs(recon - x).mean(axis=0) / x.std(axis=0)
    assert (rel < 0.3).all(), rel


def test_width_or_column_mismatch_is_refused_at_load(version_dir):
    with pytest.raises(ArtifactError, match="takes 6 features, the records have 5"):
        ServingModel.load(version_dir, device="cpu", spec=FeatureSpec(columns=kit.COLUMNS[:5]))
    with pytest.raises(ArtifactError, match="different order"):
        ServingModel.load(version_dir, device="cpu", spec=FeatureSpec(columns=kit.COLUMNS[::-1]))
    with pytest.raises(ArtifactError, match="records have 3"):
        ServingModel.load(version_dir, device="cpu", spec=FeatureSpec(vector_field="x", width=3))


def test_matrix_width_unknown_mode_and_missing_threshold_are_errors(model, tmp_path):
    with pytest.raises(ServingError, match="N x 6"):
        model.score_matrix(np.zeros((2, 5)), "encode")
    with pytest.raises(ServingError, match="mode"):
        model.score_records([], "explane")
    cfg = ModelConfig(2, hidden_dims=[], latent_dim=1)
    path = save_artifact(
        str(tmp_path / "v"), build_model(cfg, seed=0), cfg, feature_columns=["a", "b"]
    )
    uncalibrated = ServingModel.load(path, device="cpu")
    assert uncalibrated.score_records([b'{"a": 1, "b": 2}'], "encode")[0]
    with pytest.raises(ServingError, match="no calibrated threshold"):
        uncalibrated.score_records([b'{"a": 1, "b": 2}'], "flag")


def _publish_corrupt(root, trained) -> str:
    def write(d):
        kit.publish_files(d, trained)
        weights = pathlib.Path(d, "weights.safetensors")
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))

    # check=False: publishing refuses a corrupt version itself; this one plays a version
    # corrupted after it was published.
    return ModelRegistry(root).publish(write, check=False)


def test_watcher_swaps_to_new_versions_and_keeps_the_old_one_when_a_new_one_is_bad(
    tmp_path, trained, caplog
):
    root = str(tmp_path / "models")
    now = [0.0]
    watcher = ModelWatcher(root, interval_s=10, clock=lambda: now[0], device="cpu")
    with pytest.raises(NoModelError):
        watcher.current()
    first = kit.publish(root, trained)
    assert watcher.current().version == first  # no model yet: polls at once
    second = kit.publish(root, trained)
    assert watcher.current().version == first  # not polled again before interval_s
    now[0] = 10.0
    assert watcher.current().version == second and watcher.swaps == 2
    bad = _publish_corrupt(root, trained)
    now[0] = 20.0
    with caplog.at_level("ERROR", logger="ae_pipeline.hot_reload"):
        assert watcher.current().version == second
    assert "checksum mismatch" in watcher.failed[bad]
    assert bad in caplog.text and second in caplog.text
    now[0] = 30.0  # a bad version is not retried at every poll
    assert watcher.poll() is False and watcher.swaps == 2
    third = kit.publish(root, trained)
    now[0] = 40.0
    assert watcher.current().version == third
    results, _ = watcher.current().score_records([kit.record(0, kit.normal_rows(1)[0])], "flag")
    assert results[0]["model_version"] == third


def test_watcher_callers_wait_for_a_load_in_progress_instead_of_using_the_old_model(
    tmp_path, trained
):
    import threading

    root = str(tmp_path / "models")
    first = kit.publish(root, trained)
    loading = threading.Event()

    def slow_loader(path):
        if not path.endswith(first):
            loading.set()
            time.sleep(0.3)
        return SimpleNamespace(version=pathlib.Path(path).name)

    watcher = ModelWatcher(root, interval_s=0.05, loader=slow_loader)
    assert watcher.current().version == first
    second = kit.publish(root, trained)
    time.sleep(0.06)
    got = []
    a = threading.Thread(target=lambda: got.append(watcher.current().version))
    a.start()
    assert loading.wait(5)
    got.append(watcher.current().version)  # asked while the other thread is loading
    a.join()
    assert got == [second, second]


def test_torch_threads_are_set_in_every_thread_that_scores(version_dir, monkeypatch):
    # Part of torch.set_num_threads belongs to the calling thread (OpenMP, MKL), and Beam runs
    # bundles on a pool of threads: the model makes the call in each thread that scores.
    calls: list[tuple[int, int]] = []
    real = torch.set_num_threads
    monkeypatch.setattr(
        torch, "set_num_threads", lambda n: (calls.append((threading.get_ident(), n)), real(n))
    )
    before = torch.get_num_threads()
    try:
        model = ServingModel.load(version_dir, device="cpu", torch_threads=1)
        default = ServingModel.load(version_dir, device="cpu")
        loader = threading.get_ident()
        assert calls == [(loader, 1)]
        scorers = []

        def score() -> None:
            scorers.append(threading.get_ident())
            for _ in range(3):  # once per thread, not per batch
                model.score_matrix(np.zeros((4, model.input_dim), np.float32), "encode")
                model.anomaly_scores([b"{}"])
            default.score_matrix(np.zeros((4, model.input_dim), np.float32), "encode")

        threads = [threading.Thread(target=score) for _ in range(2)]
        for t in threads:
            t.start()
            t.join()
    finally:
        real(before)
    # the loader, then each scoring thread once; the model without torch_threads sets nothing
    assert calls == [(loader, 1), (scorers[0], 1), (scorers[1], 1)]

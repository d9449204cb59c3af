"""Beam batch training on real Parquet files, on FnApiRunner and Flink."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ae_pipeline.artifact import load_artifact
from ae_pipeline.features import Scaler
from ae_pipeline.local.runners import runner_args
from ae_pipeline.models.scoring import Scorer
from ae_pipeline.registry import ModelRegistry
from pipelines import train as train_job

D, RANK = 12, 3


def _data(rng, n, *, anomalies=0):
    """Rows near a 3-D subspace of a 12-D space; anomalies are off it."""
    basis = np.random.default_rng(42).normal(size=(RANK, D))
    x = rng.normal(size=(n, RANK)) @ basis + 0.05 * rng.normal(size=(n, D))
    planted = np.zeros(n, dtype=bool)
    if anomalies:
        idx = rng.choice(n, anomalies, replace=False)
        x[idx] += rng.normal(0, 3.0, size=(anomalies, D))
        planted[idx] = True
    return x, planted


def _write(directory, x, *, shards=3, extra=None, start_id=0):
    directory.mkdir(parents=True, exist_ok=True)
    for s, part in enumerate(np.array_split(np.arange(len(x)), shards)):
        cols = {f"f{i}": x[part, i] for i in range(D)}
        cols["id"] = part + start_id
        for name, values in (extra or {}).items():
            cols[name] = [values[i] for i in part]
        pq.write_table(pa.table(cols), directory / f"part-{s}.parquet", row_group_size=1500)
    return directory


def _args(tmp_path, data, runner="fnapi", **kw):
    opts = {
        "input": str(data),
        "model_root": str(tmp_path / "models"),
        "key_column": "id",
        "hidden_dims": "32",
        "latent_dim": "3",
        "epochs": "12",
        "batch_size": "128",
        "lr": "0.003",
        "progress": "false",
        "min_steps": "0",  # these tests train the epochs they ask for (see test_training_budget)
        "work_dir": str(tmp_path / f"work-{len(list(tmp_path.glob('work-*')))}"),
    }
    opts.update({k: str(v) for k, v in kw.items()})
    return [f"--{k}={v}" for k, v in opts.items()] + runner_args(runner)


def test_train_publish_and_flag_planted_anomalies(tmp_path):
    rng = np.random.default_rng(0)
    x, _ = _data(rng, 9000)
    data = _write(tmp_path / "history", x)
    result = train_job.run(_args(tmp_path, data, threshold_method="fpr", threshold_param=0.01))
    version = result["published"]
    registry = ModelRegistry(str(tmp_path / "models"))
    assert registry.versions() == [version]
    art = load_artifact(registry.path(version))
    assert art.feature_columns == [f"f{i}" for i in range(D)]
    assert art.threshold["method"] == "fpr" and art.threshold["n_calibration"] > 1000
    assert sum(art.threshold["histogram"]["counts"]) > 1000
    assert art.metrics["val_loss"] < 0.2, art.metrics["val_loss"]
    # The default score: normalized, its statistics fitted by the job and kept in the version
    fn = art.score_function
    assert fn.kind == "normalized" and fn.terms == ("reconstruction", "latent")
    assert fn.feature_scale.shape == (D,) and set(fn.medians) == set(fn.terms)
    # Fresh data with planted anomalies: the published threshold finds them.
    fresh, planted = _data(np.random.default_rng(7), 4000, anomalies=80)
    scores = art.scorer().scores(Scaler.from_dict(art.scaler).transform(fresh))
    flagged = scores > art.threshold["value"]
    recall = flagged[planted].mean()
    fpr = flagged[~planted].mean()
    assert recall > 0.9 and fpr < 0.05, (recall, fpr)
    report = tmp_path / "models" / version / "report"
    assert (report / "loss.png").stat().st_size > 1000
    assert (report / "scores.png").stat().st_size > 1000
    assert json.loads((report / "metrics.json").read_text())["threshold"]["value"] > 0


def test_bad_rows_are_rejected_and_counted(tmp_path):
    x, _ = _data(np.random.default_rng(1), 3000)
    x[5, 2] = np.nan
    x[17, 0] = np.inf
    data = _write(tmp_path / "history", x)
    # A null in one file as well.
    table = pq.read_table(data / "part-1.parquet")
    f3 = table.column("f3").to_pylist()
    f3[0] = None
    table = table.set_column(table.schema.get_field_index("f3"), "f3", pa.array(f3))
    pq.write_table(table, data / "part-1.parquet")
    result = train_job.run(_args(tmp_path, data, epochs=2))
    assert result["published"]
    assert result["metrics"]["rows_rejected"] == 3


def test_schema_problems_fail_before_running_and_name_the_column(tmp_path):
    x, _ = _data(np.random.default_rng(2), 300)
    data = _write(tmp_path / "h", x, shards=1, extra={"city": ["x"] * 300})
    # A SchemaError (the CLI reports it as a one-line usage error, also a ValueError).
    with pytest.raises(ValueError, match="'nope' is missing"):
        train_job.run(_args(tmp_path, data, feature_columns="f0,nope"))
    with pytest.raises(ValueError, match="'city' has type string"):
        train_job.run(_args(tmp_path, data, feature_columns="f0,city"))
    with pytest.raises((ValueError, FileNotFoundError), match="no Parquet files"):
        train_job.run(_args(tmp_path, tmp_path / "empty-dir"))


def test_refuses_to_publish_a_worse_model_and_says_why(tmp_path):
    x, _ = _data(np.random.default_rng(3), 6000)
    data = _write(tmp_path / "history", x)
    first = train_job.run(_args(tmp_path, data))
    worse = train_job.run(
        _args(tmp_path, data, epochs=1, lr=0.00001, max_val_loss_increase=0.1, seed=5)
    )
    assert worse["published"] is None
    assert "worse than current version" in worse["refused"]
    assert ModelRegistry(str(tmp_path / "models")).versions() == [first["published"]]
    # Warm start continues from the published weights and is allowed to publish.
    warm = train_job.run(
        [*_args(tmp_path, data, epochs=2, max_val_loss_increase=0.5), "--warm_start"]
    )
    assert warm["published"] and warm["metrics"]["warm_start"] is True


@pytest.mark.slow
def test_stacked_model_trains_layer_by_layer_as_beam_stages(tmp_path):
    x, _ = _data(np.random.default_rng(4), 6000)
    data = _write(tmp_path / "history", x)
    result = train_job.run(
        _args(tmp_path, data, architecture="stacked", hidden_dims="16,8", latent_dim=3, epochs=6)
    )
    layers = result["metrics"]["layers"]
    assert [layer["layer"] for layer in layers] == [0, 1, 2]
    for layer in layers:
        losses = layer["history"]["train_losses"]
        assert losses[-1] < losses[0], layer
    fine = result["metrics"]["history"]["train_losses"]
    assert fine[-1] <= fine[0]
    art = load_artifact(str(tmp_path / "models" / result["published"]))
    assert art.model_config.architecture == "stacked"


@pytest.mark.flink
@pytest.mark.slow
def test_training_job_on_flink(tmp_path, beam_options):
    beam_options("flink")  # record the runner in the session summary
    x, _ = _data(np.random.default_rng(5), 4000)
    data = _write(tmp_path / "history", x)
    result = train_job.run(_args(tmp_path, data, runner="flink", epochs=4))
    assert result["published"]
    assert load_artifact(str(tmp_path / "models" / result["published"])).threshold["value"] > 0


def test_encode_job_writes_codes_and_errors_matching_the_offline_scorer(tmp_path):
    from pipelines import encode as encode_job

    x, _ = _data(np.random.default_rng(6), 3000)
    x[10, 1] = np.nan
    data = _write(tmp_path / "history", x, shards=2)
    version = train_job.run(_args(tmp_path, data, epochs=3))["published"]
    out = tmp_path / "codes"
    result = encode_job.run(
        [
            f"--input={data}",
            f"--model_root={tmp_path / 'models'}",
            f"--output={out}",
            "--key_column=id",
            "--with_errors",
            *runner_args("fnapi"),
        ]
    )
    assert result == {"rows": 2999, "rejected": 1, "model": str(tmp_path / "models" / version)}
    table = pq.read_table(list(out.glob("part-*.parquet"))).sort_by("id")
    assert table.column_names == ["id", "z0", "z1", "z2", "reconstruction_error"]
    ids = table.column("id").to_numpy()
    assert 10 not in ids and len(ids) == 2999
    art = load_artifact(str(tmp_path / "models" / version))
    expected = Scorer(art.model).errors(Scaler.from_dict(art.scaler).transform(x[ids]))
    np.testing.assert_allclose(table.column("reconstruction_error").to_numpy(), expected, rtol=1e-5)
    assert '"reason": "non_finite"' in next(out.glob("rejected/*.jsonl")).read_text()


@pytest.mark.slow
def test_fashion_mnist_written_to_parquet_trains_a_useful_model(tmp_path):
    from ae_pipeline.datasets import load_fashion_mnist

    x, y = load_fashion_mnist("train", limit=4000)
    cols = {f"p{j}": x[:, j] for j in range(x.shape[1])}
    cols["id"] = np.arange(len(x))
    cols["label"] = y.astype(np.int64)
    data = tmp_path / "fmnist"
    data.mkdir()
    pq.write_table(pa.table(cols), data / "part-0.parquet", row_group_size=1000)
    result = train_job.run(
        _args(
            tmp_path,
            data,
            feature_columns=",".join(f"p{j}" for j in range(784)),
            hidden_dims="128",
            latent_dim=32,
            epochs=6,
            batch_size=128,
            lr=0.002,
            scaler="none",
            output_activation="sigmoid",
        )
    )
    art = load_artifact(str(tmp_path / "models" / result["published"]))
    assert art.input_dim == 784 and len(art.feature_columns) == 784
    test, _ = load_fashion_mnist("test", limit=1000)
    mse = Scorer(art.model).errors(test).mean()
    baseline = ((test - x.mean(axis=0)) ** 2).mean()  # predicting the mean image
    assert mse < 0.5 * baseline, (mse, baseline)

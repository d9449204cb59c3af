"""The training job adapts to small data, refuses versions that cannot serve, and says what it
did (the summary), on real Parquet files and FnApiRunner."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ae_pipeline.artifact import load_artifact, save_artifact
from ae_pipeline.beam.parquet import Block, validation_mask
from ae_pipeline.calibration import calibrate
from ae_pipeline.features import FeatureSpec
from ae_pipeline.local.runners import runner_args
from ae_pipeline.models import ConfigError, ModelConfig, build_model
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.training import TrainedModel, TrainJob, publish, summarize
from pipelines import train as train_job

D = 12


def _low_rank(n, seed=0):
    basis = np.random.default_rng(42).normal(size=(3, D))
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) @ basis + 0.05 * rng.normal(size=(n, D))


def _write(path, x, ids=None):
    path.mkdir(parents=True, exist_ok=True)
    cols = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    cols["id"] = np.arange(len(x)) if ids is None else np.asarray(ids)
    pq.write_table(pa.table(cols), path / "part-0.parquet")
    return path


def _args(tmp_path, data, **kw):
    opts = {
        "input": str(data),
        "model_root": str(tmp_path / "models"),
        "key_column": "id",
        "hidden_dims": "32",
        "latent_dim": "3",
        "progress": "false",
        # One torch thread: tiny batches on a loaded machine are much slower with more.
        "train_config_json": '{"num_threads": 1}',
        "work_dir": str(tmp_path / f"work-{len(list(tmp_path.glob('work-*')))}"),
    }
    opts.update({k: str(v) for k, v in kw.items()})
    return [f"--{k}={v}" for k, v in opts.items()] + runner_args("fnapi")


def test_small_data_trains_enough_steps_and_the_summary_says_so(tmp_path):
    data = _write(tmp_path / "data", _low_rank(250))
    result = train_job.run(_args(tmp_path, data))  # the defaults: epochs 20, batch 256
    assert result["published"]
    summary = result["summary"]
    rows = summary["rows"]
    assert rows["train"] + rows["validation"] == 250 and rows["rejected"] == 0
    (stage,) = summary["stages"]
    assert stage["name"] == "train"
    assert stage["batch_size"] == rows["train"] // 8  # at most 1/8 of the rows
    # Two thousand steps, unless early stopping ended the run.
    assert stage["steps"] >= 2000 or stage["stopped_early"], stage
    assert stage["steps"] > 20 * 10  # far more than the one step per epoch of batch 256
    assert f"{rows['train']} training rows" in stage["note"]
    # Before the budget this data ended at a validation loss of about 0.69 (20 steps); the
    # rank-3 structure is learnable well below that.
    assert summary["val_loss"] < 0.3, summary["val_loss"]
    t = summary["threshold"]
    assert t["method"] == "quantile" and t["param"] == 0.99
    assert t["target_fpr"] == pytest.approx(0.01)
    assert any("validation rows calibrate the threshold" in w for w in summary["warnings"])
    text = summarize(result)
    for words in ("published", "rows:", "steps", "best epoch", "budget:", "threshold:", "warning:"):
        assert words in text, text
    art = load_artifact(result["path"])
    assert art.meta["extra"]["summary"]["stages"][0]["steps"] == stage["steps"]


def _keys_in(split: str, n: int) -> list[int]:
    """The first ``n`` integer keys that the job's hash split sends to ``split``."""
    keys = np.arange(10_000)
    val = validation_mask(Block(np.zeros((len(keys), 1), np.float32), keys), 0.2)
    return keys[val if split == "validation" else ~val][:n].tolist()


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_one_row_partition_is_refused_not_published(tmp_path, split):
    data = _write(tmp_path / "data", _low_rank(1), ids=_keys_in(split, 1))
    result = train_job.run(_args(tmp_path, data, min_steps=0, max_val_loss_increase=0.1))
    assert result["published"] is None
    why = "no validation rows" if split == "train" else "no training rows"
    assert why in result["refused"], result["refused"]
    assert ModelRegistry(str(tmp_path / "models")).versions() == []
    assert summarize(result).startswith("refused to publish")
    assert train_job.main(_args(tmp_path, data, min_steps=0)) == 3


def test_rows_only_in_training_are_refused_naming_the_validation_fraction(tmp_path):
    data = _write(tmp_path / "data", _low_rank(30), ids=_keys_in("train", 30))
    result = train_job.run(_args(tmp_path, data, min_steps=0, epochs=2))
    assert result["published"] is None
    assert "--validation_fraction" in result["refused"]
    assert result["summary"]["rows"] == {"train": 30, "validation": 0, "rejected": 0}


def test_max_val_loss_increase_without_a_validation_loss_refuses(tmp_path):
    root = tmp_path / "models"
    cfg = ModelConfig(3, hidden_dims=[], latent_dim=2)
    model = build_model(cfg, seed=0)
    errors = np.linspace(0.1, 1.0, 200)
    registry = ModelRegistry(str(root))
    registry.publish(
        lambda d: save_artifact(
            d,
            model,
            cfg,
            feature_columns=["a", "b", "c"],
            threshold=calibrate(errors),
            metrics={"val_loss": 0.5},
        )
    )
    before = registry.versions()
    trained_dir = tmp_path / "trained"
    save_artifact(str(trained_dir), model, cfg)
    job = TrainJob(
        str(root), str(tmp_path / "work"), cfg.to_dict(), max_val_loss_increase=0.1, report=False
    )
    trained = TrainedModel(
        model_path=str(trained_dir),
        history={"train_losses": [1.0], "val_losses": [None]},
        rows_train=10,
        rows_validation=200,
    )
    spec = FeatureSpec(columns=["a", "b", "c"])
    result = publish(job, spec, trained, errors)  # no Beam: the last step on its own
    assert result["published"] is None
    assert "--max_val_loss_increase is set but this run has no validation loss" in result["refused"]
    assert registry.versions() == before


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"validation_fraction": 0.0}, "validation_fraction must be in (0, 1)"),
        (
            {"threshold_method": "fpr", "threshold_param": 1.5},
            "threshold_param 1.5 is out of range for 'fpr'",
        ),
        ({"max_val_loss_increase": -1.0}, "max_val_loss_increase must be a number >= 0"),
        ({"pretrain_epochs": 0}, "pretrain_epochs must be an integer >= 1"),
        ({"train_config": {"epochs": -3}}, "epochs must be an integer >= 1"),
        ({"model_config": {"latent_dim": 0}}, "latent_dim must be an integer >= 1"),
        (
            {"model_config": {"loss": "bce", "output_activation": "sigmoid"}},
            "use --scaler minmax",
        ),
    ],
)
def test_a_job_that_cannot_train_is_refused_when_built(kwargs, words):
    settings = {"model_root": "m", "temp_dir": "t", "model_config": {}, **kwargs}
    with pytest.raises(ConfigError) as err:
        TrainJob(**settings)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_threshold_param_defaults_per_method():
    for method, param in (("quantile", 0.99), ("fpr", 0.01), ("contamination", 0.01)):
        assert TrainJob("m", "t", {}, threshold_method=method).threshold_param == param


@pytest.mark.slow
def test_deep_stacked_model_pretrains_fine_tunes_and_publishes(tmp_path):
    """784-1000-500-250-30: greedy layer-wise pretraining then fine-tuning, as Beam stages,
    with separate pretraining and fine-tuning epochs."""
    rng = np.random.default_rng(3)
    x = rng.random((300, 784)).astype(np.float32) * (rng.random((1, 784)) > 0.5)
    data = _write(tmp_path / "data", x)
    result = train_job.run(
        _args(
            tmp_path,
            data,
            architecture="stacked",
            hidden_dims="1000,500,250",
            latent_dim=30,
            pretrain_epochs=2,
            finetune_epochs=3,
            min_steps=0,
            batch_size=64,
            scaler="minmax",
        )
    )
    assert result["published"], result.get("refused")
    stages = result["summary"]["stages"]
    assert [s["name"] for s in stages] == [
        "pretrain layer 0",
        "pretrain layer 1",
        "pretrain layer 2",
        "pretrain layer 3",
        "fine-tune",
    ]
    assert [s["epochs"] for s in stages] == [2, 2, 2, 2, 3]
    art = load_artifact(result["path"])
    assert art.model_config.stack_widths == [1000, 500, 250, 30] and art.input_dim == 784
    assert art.threshold["value"] > 0

"""``ae-pipeline train`` end to end on real Parquet files and the FnApiRunner: what a user sees
(one-line errors, a quiet successful run ending with its summary), ``--warm_start`` reusing the
newest version's architecture and scaler, and a deep stacked model trained from flags alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.train
from ae_pipeline.artifact import load_artifact
from ae_pipeline.beam.options import given_options, parse_options
from ae_pipeline.cli import main
from ae_pipeline.local.runners import runner_args
from ae_pipeline.registry import ModelRegistry

CLI = [sys.executable, "-m", "ae_pipeline.cli"]


def _table(path: Path, x: np.ndarray, prefix: str = "f", **extra) -> Path:
    cols = {f"{prefix}{i}": x[:, i] for i in range(x.shape[1])}
    cols.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture
def sensors(tmp_path) -> Path:
    """600 rows near a 3-D subspace of 10 features, with an id and a column to exclude."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)) @ rng.normal(size=(3, 10)) + 0.05 * rng.normal(size=(600, 10))
    return _table(tmp_path / "data" / "part-0.parquet", x, id=np.arange(600), ts=np.arange(600.0))


def _quick(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return [
        f"--input={data}",
        f"--model_root={tmp_path / 'models'}",
        "--key_column=id",
        "--epochs=2",
        "--min_steps=0",
        "--progress=false",
        *extra,
        *runner_args("fnapi"),
    ]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=300)


def test_console_run_is_quiet_and_ends_with_the_summary(tmp_path, sensors):
    done = _run_cli("train", *_quick(tmp_path, sensors, "--exclude_columns=ts"))
    assert done.returncode == 0, done.stderr
    # No Beam chatter, no traceback: only our own lines (and warnings, if any).
    for line in done.stderr.splitlines():
        assert not line.startswith("INFO apache_beam"), line
        assert "Missing pipeline option" not in line and "Traceback" not in line, line
    out = done.stdout.strip().splitlines()
    version = ModelRegistry(str(tmp_path / "models")).latest()
    assert out[0].startswith(f"published {version}"), done.stdout
    assert any("threshold" in line for line in out), done.stdout
    art = load_artifact(ModelRegistry(str(tmp_path / "models")).path(version))
    assert art.feature_columns == [f"f{i}" for i in range(10)]  # ts excluded, id the key
    # the default recipe: sized from the 10 columns, scored by the normalized score
    assert art.model_config.hidden_dims == [16] and art.model_config.latent_dim == 4
    assert art.score_function.kind == "normalized"


@pytest.mark.parametrize(
    ("flags", "hidden", "latent", "score"),
    [
        ((), [16], 4, "normalized"),
        (("--hidden_dims=auto", "--latent_dim=auto"), [16], 4, "normalized"),
        (("--hidden_dims=32,8", "--score=mse"), [32, 8], 4, "mse"),
        (("--latent_dim=2", "--score=reconstruction"), [16], 2, "reconstruction"),
    ],
)
def test_model_size_defaults_to_the_data_width_and_flags_win(
    tmp_path, sensors, flags, hidden, latent, score
):
    _, _, transform = pipelines.train.prepare(
        _quick(tmp_path, sensors, "--exclude_columns=ts", *flags)
    )
    assert transform.job.model_config["hidden_dims"] == hidden
    assert transform.job.model_config["latent_dim"] == latent
    assert transform.job.score == score


def test_a_bad_score_or_latent_dim_is_one_line(tmp_path, sensors):
    for flag, words in (("--score=zscore", "--score"), ("--latent_dim=big", "--latent_dim")):
        done = _run_cli("train", *_quick(tmp_path, sensors, flag))
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_console_typo_is_one_line_and_exit_2(tmp_path, sensors):
    done = _run_cli("train", *_quick(tmp_path, sensors, "--epohcs=3"))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "ae-pipeline train: error: unrecognized option --epohcs (did you mean --epochs?); "
        "see ae-pipeline train --help"
    )
    assert done.stdout == "" and not (tmp_path / "models").exists()


def test_warm_start_reuses_the_newest_architecture_and_scaler(tmp_path, sensors):
    first = _quick(
        tmp_path,
        sensors,
        "--hidden_dims=16,8",
        "--latent_dim=3",
        "--scaler=minmax",
        "--exclude_columns=ts",
    )
    assert main(["train", *first]) == 0
    registry = ModelRegistry(str(tmp_path / "models"))
    v1 = registry.latest()
    # Only --warm_start: no model flags repeated.
    assert main(["train", *_quick(tmp_path, sensors, "--warm_start")]) == 0
    v2 = registry.latest()
    assert v2 != v1
    a1, a2 = (load_artifact(registry.path(v)) for v in (v1, v2))
    assert a2.model_config == a1.model_config
    assert a2.model_config.hidden_dims == [16, 8] and a2.model_config.latent_dim == 3
    assert a2.scaler["kind"] == "minmax"
    assert a2.feature_columns == a1.feature_columns == [f"f{i}" for i in range(10)]
    assert a2.metrics["warm_start"] is True  # the weights were compatible and loaded
    # A model or data flag given explicitly wins over the newest version's.
    argv = _quick(tmp_path, sensors, "--warm_start", "--latent_dim=2", "--feature_columns=f0,f1")
    opts = parse_options(argv, pipelines.train.TrainOptions, "t")
    spec, job = pipelines.train.build_job(
        opts.view_as(pipelines.train.TrainOptions),
        given_options(argv, pipelines.train.TrainOptions),
    )
    assert job.model_config["latent_dim"] == 2 and job.model_config["hidden_dims"] == [16, 8]
    assert job.scaler == "minmax" and spec.columns == ["f0", "f1"]


def test_deep_stacked_784_1000_500_250_30_trains_and_publishes_from_flags(tmp_path):
    rng = np.random.default_rng(1)
    pixels = (rng.random((120, 784)) < 0.3).astype(np.float32)  # binary "images"
    data = _table(tmp_path / "digits" / "part-0.parquet", pixels, prefix="px")
    result_file = tmp_path / "result.json"
    argv = [
        "train",
        f"--input={data}",
        f"--model_root={tmp_path / 'models'}",
        "--architecture=stacked",
        "--hidden_dims=1000,500,250",
        "--latent_dim=30",
        "--pretrain_epochs=1",
        "--finetune_epochs=1",
        "--min_steps=0",
        "--scaler=none",
        "--loss=bce",
        "--output_activation=sigmoid",
        "--progress=false",
        f"--result_file={result_file}",
        *runner_args("fnapi"),
    ]
    assert main(argv) == 0
    result = json.loads(result_file.read_text())
    art = load_artifact(result["path"])
    assert art.model_config.architecture == "stacked"
    assert art.model_config.stack_widths == [1000, 500, 250, 30]
    assert art.model_config.input_dim == 784
    layers = result["metrics"]["layers"]
    assert [d["layer"] for d in layers] == [0, 1, 2, 3]  # greedy pretraining, layer by layer
    assert all(len(d["history"]["train_losses"]) == 1 for d in layers)  # --pretrain_epochs
    assert len(result["metrics"]["history"]["train_losses"]) == 1  # --finetune_epochs

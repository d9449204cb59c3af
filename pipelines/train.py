"""Batch training job: historical Parquet -> a calibrated, published autoencoder version.

Runs on any Beam runner (FnApiRunner, Prism, Flink, Dataflow)::

    python -m pipelines.train --input data/history/ --model_root models/ \\
        --hidden_dims 64,16 --latent_dim 8 --epochs 20 \\
        --runner apache_beam.runners.portability.fn_api_runner.FnApiRunner

Every model option is reachable: the common ones as flags, everything else through
``--model_config_json`` / ``--train_config_json`` (merged over the flags).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from ae_pipeline.beam.options import (
    ModelLocationOptions,
    ParquetInputOptions,
    add_switch,
    exit_with_help_if_asked,
    require,
)
from ae_pipeline.beam.training import TrainAutoencoder, TrainJob, summarize, to_json
from ae_pipeline.features import FeatureSpec


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers like '128,32', got {text!r}") from None


class TrainOptions(ModelLocationOptions, ParquetInputOptions, PipelineOptions):
    """Options of the training job (plus every Beam pipeline option)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("data")
        g.add_argument("--feature_columns", default="", help="comma list; default all numeric")
        g.add_argument("--label_column", default=None, help="integer labels (supervised)")
        g = parser.add_argument_group("model")
        g.add_argument("--architecture", default="mlp", choices=["mlp", "stacked", "vae", "conv"])
        g.add_argument("--hidden_dims", default="64", help="encoder widths, e.g. 128,64")
        g.add_argument("--latent_dim", type=int, default=8)
        g.add_argument("--activation", default="relu")
        g.add_argument("--output_activation", default="identity")
        g.add_argument("--loss", default="mse", choices=["mse", "bce"])
        g.add_argument("--weight_l1", type=float, default=0.0)
        g.add_argument("--weight_l2", type=float, default=0.0)
        g.add_argument("--sparsity", default=None, choices=["kl", "l1"])
        g.add_argument("--sparsity_rho", type=float, default=0.05)
        g.add_argument("--sparsity_beta", type=float, default=1.0)
        g.add_argument(
            "--corruption", default=None, choices=["gaussian", "masking", "salt_and_pepper"]
        )
        g.add_argument("--corruption_level", type=float, default=0.1, help="sigma or fraction")
        g.add_argument("--vae_beta", type=float, default=1.0)
        g.add_argument("--num_classes", type=int, default=None, help="supervised head")
        g.add_argument("--model_config_json", default="{}", help="any ModelConfig fields")
        g = parser.add_argument_group("training")
        g.add_argument("--epochs", type=int, default=20)
        g.add_argument("--batch_size", type=int, default=256)
        g.add_argument("--lr", type=float, default=1e-3)
        g.add_argument("--optimizer", default="adam", choices=["adam", "adamw"])
        g.add_argument("--patience", type=int, default=5, help="early stopping; 0 disables")
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--train_config_json", default="{}", help="any TrainConfig fields")
        add_switch(g, "--progress", default=True, help="print per-epoch training progress")
        g = parser.add_argument_group("calibration and publishing")
        g.add_argument("--scaler", default="standard", choices=["none", "standard", "minmax"])
        g.add_argument("--validation_fraction", type=float, default=0.2)
        g.add_argument(
            "--threshold_method", default="quantile", choices=["quantile", "fpr", "contamination"]
        )
        g.add_argument("--threshold_param", type=float, default=0.99)
        add_switch(g, "--warm_start", help="start from the newest version")
        g.add_argument(
            "--max_val_loss_increase",
            type=float,
            default=None,
            help="refuse to publish if val loss is worse than the current version's by more",
        )
        g.add_argument("--work_dir", default=None, help="scratch (default: a temp dir)")
        g.add_argument("--result_file", default=None, help="write the job result JSON here")


def build_job(opts: TrainOptions) -> tuple[FeatureSpec, TrainJob]:
    """Turn parsed options into a feature spec and a :class:`TrainJob`."""
    require(opts.input, "input", "the Parquet file, glob or directory to train on")
    require(opts.model_root, "model_root", "where to publish the model version")
    cols = [c.strip() for c in opts.feature_columns.split(",") if c.strip()]
    spec = FeatureSpec(columns=cols, key_column=opts.key_column, label_column=opts.label_column)
    model = {
        "architecture": opts.architecture,
        "hidden_dims": _ints(opts.hidden_dims),
        "latent_dim": opts.latent_dim,
        "activation": opts.activation,
        "output_activation": opts.output_activation,
        "loss": opts.loss,
        "weight_l1": opts.weight_l1,
        "weight_l2": opts.weight_l2,
        "beta": opts.vae_beta,
        "num_classes": opts.num_classes,
    }
    if opts.sparsity:
        model["sparsity"] = {
            "kind": opts.sparsity,
            "rho": opts.sparsity_rho,
            "beta": opts.sparsity_beta,
        }
        if opts.sparsity == "kl":
            model.setdefault("latent_activation", "sigmoid")
    if opts.corruption:
        key = "sigma" if opts.corruption == "gaussian" else "fraction"
        model["corruption"] = {"kind": opts.corruption, key: opts.corruption_level}
    model.update(json.loads(opts.model_config_json))
    train = {
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "lr": opts.lr,
        "optimizer": opts.optimizer,
        "patience": opts.patience or None,
        "seed": opts.seed,
        "device": opts.device,
        "progress": opts.progress,
    }
    train.update(json.loads(opts.train_config_json))
    job = TrainJob(
        model_root=opts.model_root,
        temp_dir=opts.work_dir or tempfile.mkdtemp(prefix="ae-train-"),
        model_config=model,
        train_config=train,
        scaler=opts.scaler,
        validation_fraction=opts.validation_fraction,
        threshold_method=opts.threshold_method,
        threshold_param=opts.threshold_param,
        warm_start=opts.warm_start,
        max_val_loss_increase=opts.max_val_loss_increase,
    )
    return spec, job


def _write_result(result: dict, path: str) -> None:
    with FileSystems.create(path) as f:
        f.write(to_json(result).encode())


def run(argv: list[str] | None = None) -> dict:
    """Run the training job; returns its result dict (published version or refusal)."""
    exit_with_help_if_asked(argv, TrainOptions, "ae-pipeline train", __doc__)
    options = PipelineOptions(argv)
    opts = options.view_as(TrainOptions)
    spec, job = build_job(opts)
    result_path = FileSystems.join(job.temp_dir, "result.json")
    with beam.Pipeline(options=options) as p:
        out = p | "TrainAutoencoder" >> TrainAutoencoder(
            opts.input, spec, job, block_rows=opts.block_rows
        )
        out | "WriteResult" >> beam.Map(_write_result, result_path)
    with FileSystems.open(result_path) as f:
        text = f.read().decode()
    result = json.loads(text)
    if opts.result_file:
        with open(opts.result_file, "w") as f:
            f.write(text)
    print(summarize(result))
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    result = run(argv)
    return 0 if result.get("published") else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Batch training job: historical Parquet -> a calibrated, published autoencoder version.

Runs on any Beam runner (FnApiRunner, Prism, Flink, Dataflow)::

    python -m pipelines.train --input data/history/ --model_root models/ \\
        --hidden_dims 64,16 --latent_dim 8 --epochs 20 \\
        --runner apache_beam.runners.portability.fn_api_runner.FnApiRunner

A deep stacked model (greedy layer-wise pretraining, then end-to-end fine-tuning)::

    ae-pipeline train --input digits/ --model_root models/ --architecture stacked \\
        --hidden_dims 1000,500,250 --latent_dim 30 --pretrain_epochs 10 --finetune_epochs 30

Every setting is checked before the pipeline is built; a mistake is one line on stderr and
exit status 2. Every model option is reachable: the common ones as flags, everything else
through ``--model_config_json`` / ``--train_config_json`` (merged over the flags).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from ae_pipeline.beam.options import (
    LabelOptions,
    LoggingOptions,
    ModelLocationOptions,
    ParquetInputOptions,
    UsageError,
    add_switch,
    configure_logging,
    given_options,
    parse_options,
    requested_log_level,
    require,
    run_command,
)
from ae_pipeline.beam.training import TrainAutoencoder
from ae_pipeline.calibration import DEFAULT_PARAMS, METHODS, check_threshold, describe_param
from ae_pipeline.features import FeatureSpec
from ae_pipeline.models.config import architecture_names
from ae_pipeline.training import (
    JOB_BUDGET_DEFAULTS,
    SCORES,
    TRAIN_DEFAULTS,
    TrainJob,
    summarize,
    to_json,
)

PROG = "ae-pipeline train"
log = logging.getLogger(__name__)

# Flags that describe the model (with --scaler): --warm_start takes them from the newest
# version unless they are given on the command line.
MODEL_FLAGS = (
    "architecture",
    "hidden_dims",
    "latent_dim",
    "activation",
    "output_activation",
    "loss",
    "weight_l1",
    "weight_l2",
    "sparsity",
    "sparsity_rho",
    "sparsity_beta",
    "corruption",
    "corruption_level",
    "vae_beta",
    "num_classes",
    "model_config_json",
)
# Flags that choose the features: --warm_start reuses the newest version's unless one is given.
DATA_FLAGS = ("feature_columns", "exclude_columns")


def _names(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def _ints(text: str, flag: str = "--hidden_dims") -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"{flag}: expected comma-separated integers like '128,32', got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise UsageError(f"{flag}: every width must be >= 1, got {text!r}")
    return values


def int_or_auto(text: str) -> int | None:
    """An integer, or None for ``auto`` (for argparse's ``type``)."""
    return None if text.strip().lower() == "auto" else int(text)


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{flag}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag}: expected a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value


class TrainOptions(
    LoggingOptions, ModelLocationOptions, ParquetInputOptions, LabelOptions, PipelineOptions
):
    """Options of the training job (plus every Beam pipeline option)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group(
            "data (with --warm_start: the newest version's columns unless given here)"
        )
        g.add_argument(
            "--feature_columns",
            default="",
            help="comma list of feature columns (default: every numeric column except the "
            "key, the label and --exclude_columns)",
        )
        g.add_argument(
            "--exclude_columns",
            default="",
            help="comma list of columns that are never features (ids, timestamps, ...)",
        )
        g = parser.add_argument_group(
            "model (with --warm_start: taken from the newest version unless given here)"
        )
        g.add_argument("--architecture", default="mlp", choices=architecture_names())
        g.add_argument(
            "--hidden_dims",
            default="auto",
            help="encoder widths, input side first (default auto: one layer, the power of two "
            "nearest half the features' number, 16 to 256)",
        )
        g.add_argument(
            "--latent_dim",
            type=int_or_auto,
            default=None,
            help="width of the code (default auto: ceil(sqrt(features)), 2 to 32)",
        )
        g.add_argument("--activation", default="relu")
        g.add_argument("--output_activation", default="identity", help="sigmoid for data in [0, 1]")
        g.add_argument(
            "--loss",
            default="mse",
            choices=["mse", "bce"],
            help="bce needs --scaler minmax (or none for data in [0, 1]) and "
            "--output_activation sigmoid",
        )
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
        g.add_argument(
            "--epochs",
            type=int,
            default=TRAIN_DEFAULTS["epochs"],
            help="maximum passes over the data",
        )
        g.add_argument(
            "--pretrain_epochs",
            type=int,
            default=None,
            help="stacked only: epochs of each layer's greedy pretraining (default: --epochs)",
        )
        g.add_argument(
            "--finetune_epochs",
            type=int,
            default=None,
            help="stacked only: epochs of the end-to-end fine-tuning (default: --epochs)",
        )
        g.add_argument(
            "--min_steps",
            type=int,
            default=None,
            help="train at least this many optimiser steps, raising the epochs on small data "
            f"(default: {JOB_BUDGET_DEFAULTS['min_steps']}; 0: exactly the epochs asked for)",
        )
        g.add_argument(
            "--batch_size",
            type=int,
            default=TRAIN_DEFAULTS["batch_size"],
            help="rows per optimiser step, at most "
            f"{JOB_BUDGET_DEFAULTS['max_batch_fraction']:g} of the training rows",
        )
        g.add_argument("--lr", type=float, default=TRAIN_DEFAULTS["lr"], help="learning rate")
        g.add_argument("--optimizer", default="adam", choices=["adam", "adamw"])
        g.add_argument(
            "--patience",
            type=int,
            default=TRAIN_DEFAULTS["patience"],
            help="early stopping; 0 disables",
        )
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--train_config_json", default="{}", help="any TrainConfig fields")
        add_switch(g, "--progress", default=True, help="print per-epoch training progress")
        g = parser.add_argument_group("calibration and publishing")
        g.add_argument(
            "--scaler",
            default="standard",
            choices=["none", "standard", "minmax"],
            help="feature scaling fitted on the training rows",
        )
        g.add_argument(
            "--score",
            default="normalized",
            choices=list(SCORES),
            help="the anomaly score: normalized (each feature's error over its validation "
            "error, plus the code's Mahalanobis distance; each term over its validation "
            "median), reconstruction (the first term only) or mse (mean squared error)",
        )
        g.add_argument(
            "--validation_fraction",
            type=float,
            default=0.2,
            help="share of rows (by key hash) held out for early stopping and calibration",
        )
        g.add_argument(
            "--threshold_method",
            default="quantile",
            choices=list(METHODS),
            help="quantile: the param-quantile of the validation errors; fpr: the share of "
            "normal data flagged; contamination: the expected share of anomalies",
        )
        defaults = ", ".join(f"{m} {p:g}" for m, p in DEFAULT_PARAMS.items())
        g.add_argument(
            "--threshold_param",
            type=float,
            default=None,
            help=f"the method's parameter (default by method: {defaults}; all flag about 1%% "
            "of normal data)",
        )
        add_switch(
            g,
            "--warm_start",
            help="start from the newest version's weights, reusing its architecture, scaler "
            "and feature columns; model and data flags given here override them",
        )
        g.add_argument(
            "--max_val_loss_increase",
            type=float,
            default=None,
            help="refuse to publish if val loss is worse than the current version's by more "
            "than this fraction (default: always publish)",
        )
        g.add_argument("--work_dir", default=None, help="scratch (default: a temp dir)")
        g.add_argument("--result_file", default=None, help="write the job result JSON here")


# ------------------------------------------------------------------------------------------
# Options -> a checked job (everything here runs before any pipeline is built)
# ------------------------------------------------------------------------------------------


def _check_ranges(opts: TrainOptions) -> None:
    """One-line refusals of flag values no run can use, naming the flag."""
    at_least_one = {
        "epochs": opts.epochs,
        "pretrain_epochs": opts.pretrain_epochs,
        "finetune_epochs": opts.finetune_epochs,
        "batch_size": opts.batch_size,
        "latent_dim": opts.latent_dim,
        "block_rows": opts.block_rows,
    }
    if opts.min_steps is not None and opts.min_steps < 0:
        raise UsageError(f"--min_steps must be >= 0 (0: no minimum), got {opts.min_steps}")
    for name, value in at_least_one.items():
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}")
    if opts.lr <= 0:
        raise UsageError(f"--lr must be > 0, got {opts.lr:g}")
    for name in ("patience", "weight_l1", "weight_l2", "sparsity_beta", "vae_beta"):
        if getattr(opts, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(opts, name):g}")
    if not 0.0 < opts.validation_fraction < 1.0:
        raise UsageError(
            f"--validation_fraction must be between 0 and 1 (exclusive), "
            f"got {opts.validation_fraction:g}"
        )
    if opts.max_val_loss_increase is not None and opts.max_val_loss_increase < 0:
        raise UsageError(
            f"--max_val_loss_increase must be >= 0, got {opts.max_val_loss_increase:g}"
        )
    if opts.num_classes is not None and opts.num_classes < 2:
        raise UsageError(f"--num_classes must be >= 2, got {opts.num_classes}")
    if opts.num_classes is not None and not opts.label_column:
        raise UsageError("--num_classes needs --label_column (the integer labels to learn)")


def _threshold(opts: TrainOptions) -> float:
    method = opts.threshold_method
    try:
        return check_threshold(method, opts.threshold_param)
    except ValueError:
        raise UsageError(
            f"--threshold_param {opts.threshold_param:g} is out of range for --threshold_method "
            f"{method}: it is {describe_param(method)}"
        ) from None


def _model_from_flags(opts: TrainOptions, given: set[str] | None) -> dict[str, Any]:
    """The model config dict the flags describe; with ``given``, only the flags in it."""

    def wanted(*names: str) -> bool:
        return given is None or any(n in given for n in names)

    model: dict[str, Any] = {}
    plain = {
        "architecture": "architecture",
        "latent_dim": "latent_dim",
        "activation": "activation",
        "output_activation": "output_activation",
        "loss": "loss",
        "weight_l1": "weight_l1",
        "weight_l2": "weight_l2",
        "vae_beta": "beta",
        "num_classes": "num_classes",
    }
    for flag, key in plain.items():
        if wanted(flag):
            model[key] = getattr(opts, flag)
    if wanted("hidden_dims") and opts.hidden_dims != "auto":
        model["hidden_dims"] = _ints(opts.hidden_dims)
    if model.get("latent_dim") is None:
        model.pop("latent_dim", None)  # auto: sized from the data's width
    if opts.sparsity and wanted("sparsity", "sparsity_rho", "sparsity_beta"):
        model["sparsity"] = {
            "kind": opts.sparsity,
            "rho": opts.sparsity_rho,
            "beta": opts.sparsity_beta,
        }
        if opts.sparsity == "kl":
            model.setdefault("latent_activation", "sigmoid")
    if opts.corruption and wanted("corruption", "corruption_level"):
        key = "sigma" if opts.corruption == "gaussian" else "fraction"
        model["corruption"] = {"kind": opts.corruption, key: opts.corruption_level}
    model.update(_json_object(opts.model_config_json, "--model_config_json"))
    return model


def newest_version_config(model_root: str) -> tuple[str, dict[str, Any]] | None:
    """``(version, config.json as a dict)`` of the newest published version, or None."""
    from ae_pipeline.artifact import CONFIG_FILE
    from ae_pipeline.registry import ModelRegistry

    registry = ModelRegistry(model_root)
    version = registry.latest()
    if version is None:
        return None
    path = FileSystems.join(registry.path(version), CONFIG_FILE)
    try:
        with FileSystems.open(path) as f:
            return version, json.loads(f.read())
    except (OSError, ValueError) as e:
        raise UsageError(f"--warm_start: cannot read {path}: {e}") from None


@dataclass(frozen=True)
class WarmStartBase:
    """What ``--warm_start`` reuses from the newest version unless the command line says
    otherwise: its model config (without ``input_dim``), scaler kind and feature columns."""

    version: str
    model_config: dict[str, Any]
    scaler: str
    feature_columns: list[str] | None


def warm_start_base(model_root: str) -> WarmStartBase | None:
    """The newest version's :class:`WarmStartBase`, or None when nothing is published yet."""
    found = newest_version_config(model_root)
    if found is None:
        return None
    version, meta = found
    model = {k: v for k, v in (meta.get("model_config") or {}).items() if k != "input_dim"}
    scaler = ((meta.get("extra") or {}).get("job") or {}).get("scaler") or (
        meta.get("scaler") or {}
    ).get("kind")
    return WarmStartBase(version, model, scaler or "standard", meta.get("feature_columns"))


def _log_warm_start(base: WarmStartBase, given: set[str]) -> None:
    overridden = sorted(f"--{f}" for f in given & {*MODEL_FLAGS, "scaler", *DATA_FLAGS})
    widths = [*base.model_config.get("hidden_dims", []), base.model_config.get("latent_dim")]
    log.info(
        "warm start from %s: its %s model %s, %s scaler and %d feature columns%s",
        base.version,
        base.model_config.get("architecture"),
        "-".join(str(w) for w in widths),
        base.scaler,
        len(base.feature_columns or []),
        f"; from the command line: {' '.join(overridden)}" if overridden else "",
    )


def _check_loss(model: dict[str, Any], scaler: str) -> None:
    if model.get("loss") != "bce":
        return
    fixes = []
    if scaler == "standard":
        fixes.append("--scaler minmax (or --scaler none for data already in [0, 1])")
    if model.get("output_activation", "identity") != "sigmoid":
        fixes.append("--output_activation sigmoid")
    if fixes:
        raise UsageError(
            f"--loss bce needs inputs in [0, 1] and a sigmoid output: add {' and '.join(fixes)}"
            f" (or use --loss mse)"
        )


def _train_config(opts: TrainOptions, architecture: str) -> dict[str, Any]:
    """The TrainConfig dict of the flags (and ``--train_config_json``)."""
    for flag in ("pretrain_epochs", "finetune_epochs"):
        if getattr(opts, flag) is not None and architecture != "stacked":
            raise UsageError(
                f"--{flag} is for --architecture stacked (this model is {architecture!r}); "
                "use --epochs"
            )
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
    if opts.min_steps is not None:
        train["min_steps"] = opts.min_steps or None
    train.update(_json_object(opts.train_config_json, "--train_config_json"))
    return train


def _feature_spec(opts: TrainOptions, columns: list[str] | None = None) -> FeatureSpec:
    """The feature spec: ``columns`` (a warm start's) or ``--feature_columns``, without
    ``--exclude_columns`` (checked against the data)."""
    from ae_pipeline.beam.parquet import read_schema, resolve_spec

    spec = FeatureSpec(
        columns=list(columns or _names(opts.feature_columns)),
        key_column=opts.key_column,
        label_column=opts.label_column,
    )
    exclude = _names(opts.exclude_columns)
    if not exclude:
        return spec
    files, resolved = resolve_spec(opts.input, spec)
    names = list(read_schema(files[0]).names)
    missing = [c for c in exclude if c not in names]
    if missing:
        raise UsageError(
            f"--exclude_columns: no column {', '.join(map(repr, missing))} in {files[0]} "
            f"(columns: {', '.join(names)})"
        )
    columns = [c for c in resolved.columns if c not in exclude]
    if not columns:
        raise UsageError("--exclude_columns leaves no feature column")
    return FeatureSpec(columns=columns, key_column=opts.key_column, label_column=opts.label_column)


def build_job(opts: TrainOptions, given: set[str] | None = None) -> tuple[FeatureSpec, TrainJob]:
    """Turn parsed options into a feature spec and a :class:`TrainJob`, checking every value.

    Args:
        opts: the parsed options.
        given: the flags set on the command line (:func:`given_options`); with
            ``--warm_start``, model flags not in it come from the newest version.

    Raises:
        UsageError: a flag value no run can use, naming the flag.
    """
    require(opts.input, "input", "the Parquet file, glob or directory to train on")
    require(opts.model_root, "model_root", "where to publish the model version")
    _check_ranges(opts)
    threshold_param = _threshold(opts)
    model, scaler, columns = _model_from_flags(opts, None), opts.scaler, None
    base = warm_start_base(opts.model_root) if opts.warm_start else None
    if base is not None:
        given = set(given or ())
        _log_warm_start(base, given)
        model = {**base.model_config, **_model_from_flags(opts, given)}
        scaler = opts.scaler if "scaler" in given else base.scaler
        if not given & set(DATA_FLAGS):
            columns = base.feature_columns
    elif opts.warm_start:
        log.info("warm start: no version under %s yet; training from the flags", opts.model_root)
    _check_loss(model, scaler)
    train = _train_config(opts, model.get("architecture", "mlp"))
    spec = _feature_spec(opts, columns)
    job = TrainJob(
        model_root=opts.model_root,
        temp_dir=opts.work_dir or tempfile.mkdtemp(prefix="ae-train-"),
        model_config=model,
        train_config=train,
        scaler=scaler,
        validation_fraction=opts.validation_fraction,
        threshold_method=opts.threshold_method,
        threshold_param=threshold_param,
        warm_start=opts.warm_start,
        max_val_loss_increase=opts.max_val_loss_increase,
        pretrain_epochs=opts.pretrain_epochs,
        finetune_epochs=opts.finetune_epochs,
        score=opts.score,
    )
    return spec, job


def prepare(argv: list[str] | None) -> tuple[PipelineOptions, TrainOptions, TrainAutoencoder]:
    """Parse and check everything, and build the training transform (the data's schema is
    read; no pipeline is built and nothing is trained).

    Raises:
        UsageError: an unknown option or a value that cannot work, in one line.
    """
    options = parse_options(argv, TrainOptions, PROG, __doc__)
    opts = options.view_as(TrainOptions)
    try:
        spec, job = build_job(opts, given_options(argv, TrainOptions))
        transform = TrainAutoencoder(opts.input, spec, job, block_rows=opts.block_rows)
    except UsageError:
        raise
    except (ValueError, OSError) as e:  # ConfigError, SchemaError, no files, unreadable input
        raise UsageError(str(e)) from e
    return options, opts, transform


def _write_result(result: dict, path: str) -> None:
    with FileSystems.create(path) as f:
        f.write(to_json(result).encode())


def run(argv: list[str] | None = None) -> dict:
    """Run the training job; returns its result dict (published version or refusal).

    Raises:
        UsageError: before any work, for a mistake on the command line.
    """
    options, opts, transform = prepare(argv)
    result_path = FileSystems.join(transform.job.temp_dir, "result.json")
    with beam.Pipeline(options=options) as p:
        out = p | "TrainAutoencoder" >> transform
        out[TrainAutoencoder.RESULT] | "WriteResult" >> beam.Map(_write_result, result_path)
    with FileSystems.open(result_path) as f:
        text = f.read().decode()
    result = json.loads(text)
    if opts.result_file:
        with open(opts.result_file, "w") as f:
            f.write(text)
    return result


def _main(argv: list[str]) -> int:
    configure_logging(requested_log_level(argv))
    result = run(argv)
    sys.stderr.flush()
    print(summarize(result), flush=True)
    return 0 if result.get("published") else 3


def main(argv: list[str] | None = None) -> int:
    """``ae-pipeline train``: 0 published, 2 a usage error (one line), 3 refused to publish."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

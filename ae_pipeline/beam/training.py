"""Beam batch training: Parquet blocks in, a calibrated, published model version out.

:class:`TrainAutoencoder` composes the stages (each a Beam step, so runners parallelise what can
be parallel and persist what crosses stages):

1. ``ReadFeatureBlocks``: row groups read in parallel, bad rows to ``rejected``.
2. ``Split``: a deterministic train/validation split by key hash; each block is written to a
   shard file (``.npz``, loaded with ``allow_pickle=False``) under the temp location, so training
   streams the data from disk epoch after epoch: the dataset is never one Python list and may be
   larger than the worker's memory.
3. ``FitScaler``: per-feature statistics combined in parallel, then a standard/min-max scaler.
4. ``Train``: one worker trains the model from the shard stream (early stopping on the
   validation shards). A stacked model is trained layer by layer as successive Beam stages:
   train layer k, encode every shard with it in parallel, train layer k+1 on the codes, then
   fine-tune end to end.
5. ``Calibrate``: validation shards scored in parallel with the same
   :class:`~ae_pipeline.models.scoring.Scorer` the streaming side uses; threshold and histogram.
6. ``Publish``: a new version under the model root, visible only once complete
   (:class:`~ae_pipeline.registry.ModelRegistry`), or a refusal that says why: no version that
   cannot serve is published (no validation rows to calibrate on, no training rows, a
   ``max_val_loss_increase`` guard that cannot be checked, a worse validation loss).

Training follows a budget that fits the data (:func:`ae_pipeline.models.budget.plan_budget`):
by default at least ``min_steps=2000`` optimiser steps and a batch size of at most 1/8 of the
training rows, so that small data is not trained with a handful of steps; big data trains the
epochs asked for. The job's result carries a ``summary`` (epochs and steps per stage, best
epoch, early stop, rows, threshold and the false-positive rate it targets, warnings) that
:func:`summarize` prints for people.
"""

from __future__ import annotations

import io
import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from ae_pipeline.beam.parquet import NAMESPACE, REJECTED, Block, ReadFeatureBlocks, validation_mask
from ae_pipeline.calibration import METHODS, calibrate
from ae_pipeline.features import SCALERS, ColumnStats, FeatureSpec, Scaler, fingerprint
from ae_pipeline.models.config import ConfigError

log = logging.getLogger(__name__)

#: Each threshold method's default parameter (quantile q; target false-positive rate;
#: expected contamination).
THRESHOLD_DEFAULTS = {"quantile": 0.99, "fpr": 0.01, "contamination": 0.01}
#: The training budget of a job unless its ``train_config`` sets these keys.
JOB_BUDGET_DEFAULTS = {"min_steps": 2000, "max_batch_fraction": 0.125}
#: Below this many validation rows the threshold's quantile is poorly estimated: warn.
SMALL_CALIBRATION_ROWS = 100


@dataclass
class TrainJob:
    """Everything the training stages need; JSON-friendly so it travels to workers cheaply.

    Attributes:
        model_root: where versions are published.
        temp_dir: scratch space for shards and intermediate models (any Beam filesystem).
        model_config: :class:`~ae_pipeline.models.ModelConfig` as a dict (input_dim is filled
            in from the data).
        train_config: :class:`~ae_pipeline.models.TrainConfig` as a dict.
        scaler: ``none``, ``standard`` or ``minmax``.
        validation_fraction: share of rows (by key hash) held out for validation/calibration.
        threshold_method / threshold_param: see :func:`ae_pipeline.calibration.calibrate`.
        warm_start: start from the newest published version's weights when compatible.
        max_val_loss_increase: refuse to publish when the new validation loss exceeds the
            current version's by more than this fraction, or when there is no validation loss
            to compare (None: always publish).
        finetune_config: training settings of the stacked model's fine-tuning (default: same).
        report: write loss curves, score histogram and metrics into the version.
        pretrain_epochs: epochs of each stacked layer's greedy pretraining (None: the train
            config's ``epochs``).
        finetune_epochs: epochs of the stacked model's end-to-end fine-tuning (None: the
            fine-tuning config's ``epochs``).

    ``threshold_param=None`` takes the method's default (:data:`THRESHOLD_DEFAULTS`). Unless
    ``train_config`` sets them, training uses :data:`JOB_BUDGET_DEFAULTS` (``"min_steps": None``
    turns the step budget off).

    Raises:
        ConfigError: when built with settings that cannot train (see :func:`validate_job`);
            nothing has been read yet.
    """

    model_root: str
    temp_dir: str
    model_config: dict[str, Any]
    train_config: dict[str, Any] = field(default_factory=dict)
    scaler: str = "standard"
    validation_fraction: float = 0.2
    threshold_method: str = "quantile"
    threshold_param: float | None = None
    warm_start: bool = False
    max_val_loss_increase: float | None = None
    finetune_config: dict[str, Any] | None = None
    report: bool = True
    pretrain_epochs: int | None = None
    finetune_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.threshold_param is None and self.threshold_method in THRESHOLD_DEFAULTS:
            self.threshold_param = THRESHOLD_DEFAULTS[self.threshold_method]
        validate_job(self)


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def validate_job(job: TrainJob) -> None:
    """Checks every setting of ``job`` that can be checked without the data.

    Raises:
        ConfigError: one line naming the setting and what to change.
    """
    from ae_pipeline.models import ModelConfig, TrainConfig

    if job.scaler not in SCALERS:
        raise ConfigError(f"scaler {job.scaler!r} is not one of {', '.join(SCALERS)}")
    if not (_number(job.validation_fraction) and 0.0 < job.validation_fraction < 1.0):
        raise ConfigError(
            f"validation_fraction must be in (0, 1), got {job.validation_fraction!r}: the "
            "validation rows calibrate the threshold (try 0.2)"
        )
    if job.threshold_method not in METHODS:
        raise ConfigError(
            f"threshold_method {job.threshold_method!r} is not one of {', '.join(METHODS)}"
        )
    if not (_number(job.threshold_param) and 0.0 < job.threshold_param < 1.0):
        raise ConfigError(
            f"threshold_param for {job.threshold_method!r} must be in (0, 1), got "
            f"{job.threshold_param!r} (default {THRESHOLD_DEFAULTS[job.threshold_method]})"
        )
    if job.max_val_loss_increase is not None and not (
        _number(job.max_val_loss_increase) and job.max_val_loss_increase >= 0
    ):
        raise ConfigError(
            f"max_val_loss_increase must be a number >= 0 (e.g. 0.1 for 10%), got "
            f"{job.max_val_loss_increase!r}"
        )
    for name in ("pretrain_epochs", "finetune_epochs"):
        value = getattr(job, name)
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1
        ):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    shape = job.model_config.get("input_shape")
    placeholder = job.model_config.get("input_dim") or (None if shape else 1)
    model = ModelConfig.from_dict({**job.model_config, "input_dim": placeholder})
    TrainConfig.from_dict(_train_dict(job))
    if job.finetune_config:
        TrainConfig.from_dict({**JOB_BUDGET_DEFAULTS, **job.finetune_config})
    if model.loss == "bce" and job.scaler == "standard":
        raise ConfigError(
            "loss 'bce' needs data in [0, 1], but scaler 'standard' centres it around 0: use "
            "--scaler minmax (or --loss mse)"
        )


def _train_dict(job: TrainJob, stage: str = "train") -> dict[str, Any]:
    """The TrainConfig dict of a stage (``train``, ``pretrain``, ``finetune``)."""
    base = job.train_config
    if stage == "finetune" and job.finetune_config:
        base = job.finetune_config
    out = {**JOB_BUDGET_DEFAULTS, **base}
    epochs = {"pretrain": job.pretrain_epochs, "finetune": job.finetune_epochs}.get(stage)
    if epochs is not None:
        out["epochs"] = epochs
    return out


# ------------------------------------------------------------------------------------------
# Shards: blocks on disk, streamed back for training
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    path: str
    rows: int


def write_shard(path: str, x: np.ndarray, y: np.ndarray | None = None) -> Shard:
    buf = io.BytesIO()
    arrays = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    if y is not None:
        arrays["y"] = np.asarray(y, dtype=np.int64)
    np.savez(buf, **arrays)
    with FileSystems.create(path) as f:
        f.write(buf.getvalue())
    return Shard(path, len(x))


def read_shard(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    with FileSystems.open(path) as f:
        data = np.load(io.BytesIO(f.read()), allow_pickle=False)
        return data["x"], (data["y"] if "y" in data.files else None)


def shard_stream(
    shards: list[Shard], scaler: Scaler | None, *, labels: bool = False, seed: int | None = 0
):
    """A callable returning one epoch's chunks (shards in a fresh random order each epoch)."""
    ordered = sorted(shards, key=lambda s: s.path)
    epoch = [0]

    def chunks():
        rng = np.random.default_rng(None if seed is None else seed + epoch[0])
        epoch[0] += 1
        for i in rng.permutation(len(ordered)):
            x, y = read_shard(ordered[i].path)
            if scaler is not None:
                x = scaler.transform(x)
            yield (x, y) if labels else x

    return chunks


class _SplitAndWrite(beam.DoFn):
    TRAIN, VAL = "train", "val"

    def __init__(self, temp_dir: str, fraction: float):
        self.temp_dir, self.fraction = temp_dir, fraction
        self.train_rows = Metrics.counter(NAMESPACE, "rows_train")
        self.val_rows = Metrics.counter(NAMESPACE, "rows_validation")

    def process(self, block: Block):
        val = validation_mask(block, self.fraction)
        for name, mask, counter in (
            (self.TRAIN, ~val, self.train_rows),
            (self.VAL, val, self.val_rows),
        ):
            part = block.take(mask)
            if len(part):
                counter.inc(len(part))
                path = FileSystems.join(self.temp_dir, name, f"{uuid.uuid4().hex}.npz")
                shard = write_shard(path, part.x, part.labels)
                yield shard if name == self.TRAIN else beam.pvalue.TaggedOutput(self.VAL, shard)


class ColumnStatsFn(beam.CombineFn):
    """Mergeable per-feature statistics of :class:`Block` elements."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, block: Block):
        stats = ColumnStats.of(block.x)
        return stats if acc is None else acc.merge(stats)

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is not None:
                out = a if out is None else out.merge(a)
        return out

    def extract_output(self, acc):
        return acc


# ------------------------------------------------------------------------------------------
# Training steps (plain functions; the DoFns below call them)
# ------------------------------------------------------------------------------------------


def _configs(job: TrainJob, input_dim: int, stage: str = "train"):
    from ae_pipeline.models import ModelConfig, TrainConfig

    model_cfg = ModelConfig.from_dict({**job.model_config, "input_dim": input_dim})
    train_cfg = TrainConfig.from_dict(_train_dict(job, stage))
    return model_cfg, train_cfg


def _history(history) -> dict:
    """A trainer History as JSON, with the per-epoch loss lists the report plots."""
    return {
        **history.to_dict(),
        "train_losses": history.train_losses,
        "val_losses": history.val_losses,
        "samples_per_s": history.samples_per_s,
    }


def _rows(shards: list[Shard]) -> int:
    return sum(s.rows for s in shards)


def _refusal(reason: str, train: list[Shard], val: list[Shard], **extra) -> dict:
    """What a training step returns instead of a model when it cannot train."""
    return {"refused": reason, "rows_train": _rows(train), "rows_validation": _rows(val), **extra}


def _cannot_train(job: TrainJob, model_cfg, train: list[Shard], stats) -> str | None:
    """Why the data cannot train this model (None: it can)."""
    if not train or stats is None or stats.count == 0:
        return "no training rows left after the validation split and rejections"
    if model_cfg.loss == "bce" and job.scaler == "none":
        low, high = float(np.min(stats.min)), float(np.max(stats.max))
        if low < 0 or high > 1:
            return (
                f"loss 'bce' needs data in [0, 1], but the features range over "
                f"[{low:.6g}, {high:.6g}]: use --scaler minmax (or --loss mse)"
            )
    return None


def _save_temp_model(temp_dir: str, name: str, model, model_cfg, **meta) -> str:
    from ae_pipeline.artifact import save_artifact

    path = FileSystems.join(temp_dir, "models", f"{name}-{uuid.uuid4().hex[:8]}")
    FileSystems.mkdirs(path)
    save_artifact(path, model, model_cfg, **meta)
    return path


def _warm_start_weights(job: TrainJob, model_cfg):
    """State dict of the newest version when it has the same architecture, else None."""
    if not job.warm_start:
        return None
    from ae_pipeline.artifact import load_artifact
    from ae_pipeline.registry import ModelRegistry

    registry = ModelRegistry(job.model_root)
    latest = registry.latest()
    if latest is None:
        log.info("warm start: no published version under %s; training from scratch", job.model_root)
        return None
    current = load_artifact(registry.path(latest))
    if current.model_config.to_dict() != model_cfg.to_dict():
        log.warning("warm start: %s has another architecture; training from scratch", latest)
        return None
    log.info("warm start from %s", latest)
    return current.model.state_dict()


def train_single(job: TrainJob, train: list[Shard], val: list[Shard], stats: ColumnStats) -> dict:
    """Train a (non-stacked) model from shard streams; returns the temp model path + history."""
    from ae_pipeline.models import Trainer, build_model
    from ae_pipeline.models.factory import load_weights

    if stats is None:
        return _refusal(
            "no training rows left after the validation split and rejections", train, val
        )
    model_cfg, train_cfg = _configs(job, len(stats.mean))
    reason = _cannot_train(job, model_cfg, train, stats)
    if reason:
        return _refusal(reason, train, val)
    scaler = Scaler.fit(job.scaler, stats)
    model = build_model(model_cfg, seed=train_cfg.seed)
    init = _warm_start_weights(job, model_cfg)
    if init is not None:
        load_weights(model, init)
    supervised = model_cfg.num_classes is not None
    history = Trainer(train_cfg).fit(
        model,
        shard_stream(train, scaler, labels=supervised, seed=train_cfg.seed),
        val=shard_stream(val, scaler, labels=supervised, seed=None) if val else None,
        n_rows=_rows(train),
    )
    path = _save_temp_model(job.temp_dir, "model", model, model_cfg)
    return {
        "model_path": path,
        "scaler": scaler.to_dict(),
        "history": _history(history),
        "warm_start": init is not None,
        "rows_train": _rows(train),
        "rows_validation": _rows(val),
    }


def train_stack_layer(
    job: TrainJob, index: int, shards: list[Shard], val: list[Shard], stats
) -> dict:
    """Greedy pretraining of stacked layer ``index`` on the previous layer's code shards."""
    from ae_pipeline.models import layerwise

    if stats is None:
        return _refusal(
            "no training rows left after the validation split and rejections",
            shards,
            val,
            layer=index,
        )
    model_cfg, train_cfg = _configs(job, len(stats.mean), "pretrain")
    reason = _cannot_train(job, model_cfg, shards, stats)
    if reason:
        return _refusal(reason, shards, val, layer=index)
    scaler = Scaler.fit(job.scaler, stats) if index == 0 else None
    layer, history = layerwise.train_layer(
        model_cfg,
        index,
        shard_stream(shards, scaler, seed=train_cfg.seed),
        train_cfg,
        val=shard_stream(val, scaler, seed=None) if val else None,
        n_rows=_rows(shards),
    )
    path = _save_temp_model(job.temp_dir, f"layer{index}", layer, layer.config)
    return {"model_path": path, "history": _history(history), "layer": index}


class _EncodeShard(beam.DoFn):
    """Encode one shard with a pretrained layer; write the codes as a new shard."""

    def __init__(self, temp_dir: str, index: int, first: bool):
        self.temp_dir, self.index, self.first = temp_dir, index, first

    def process(self, shard: Shard, layer: dict, stats):
        from ae_pipeline.artifact import load_artifact
        from ae_pipeline.models import layerwise

        if layer.get("refused"):
            return
        model = load_artifact(layer["model_path"]).model
        x, y = read_shard(shard.path)
        if self.first:
            x = Scaler.fit(layer["scaler_kind"], stats).transform(x)
        codes = layerwise.encode_with_layer(model, x)
        name = f"codes{self.index}/{uuid.uuid4().hex}.npz"
        yield write_shard(FileSystems.join(self.temp_dir, name), codes, y)


def finetune_stack(job: TrainJob, layers: list[dict], train, val, stats) -> dict:
    """Assemble the pretrained layers and fine-tune end to end (supervised with labels)."""
    from ae_pipeline.artifact import load_artifact
    from ae_pipeline.models import layerwise

    layers = sorted(layers, key=lambda d: d["layer"])
    refused = [d for d in layers if d.get("refused")]
    if refused or stats is None:
        reason = refused[0]["refused"] if refused else "no training rows"
        return _refusal(f"layer {refused[0]['layer'] if refused else 0}: {reason}", train, val)
    scaler = Scaler.fit(job.scaler, stats)
    model_cfg, train_cfg = _configs(job, len(stats.mean), "finetune")
    stack = layerwise.assemble_stack(
        model_cfg, [load_artifact(d["model_path"]).model for d in layers]
    )
    supervised = model_cfg.num_classes is not None
    history = layerwise.fine_tune(
        stack,
        shard_stream(train, scaler, labels=supervised, seed=train_cfg.seed),
        train_cfg,
        val=shard_stream(val, scaler, labels=supervised, seed=None) if val else None,
        supervised=supervised,
        n_rows=_rows(train),
    )
    path = _save_temp_model(job.temp_dir, "stack", stack, model_cfg)
    return {
        "model_path": path,
        "scaler": scaler.to_dict(),
        "history": _history(history),
        "layers": [{"layer": d["layer"], "history": d["history"]} for d in layers],
        "warm_start": False,
        "rows_train": _rows(train),
        "rows_validation": _rows(val),
    }


class _ScoreShard(beam.DoFn):
    """Reconstruction errors of one validation shard (the same Scorer as streaming)."""

    def process(self, shard: Shard, trained: dict):
        from ae_pipeline.artifact import load_artifact
        from ae_pipeline.models.scoring import Scorer

        if trained.get("refused"):
            return
        model = load_artifact(trained["model_path"]).model
        x, _ = read_shard(shard.path)
        x = Scaler.from_dict(trained["scaler"]).transform(x)
        yield Scorer(model).errors(x)


def _concat(arrays) -> np.ndarray:
    arrays = [a for a in arrays if len(a)]
    return np.concatenate(arrays) if arrays else np.empty(0, np.float32)


def target_fpr(method: str, param: float) -> float:
    """The share of normal (validation) records the threshold flags by construction."""
    return 1.0 - float(param) if method == "quantile" else float(param)


def _stage(name: str, history: dict) -> dict:
    """One stage of the summary from a history dict."""
    return {
        "name": name,
        "epochs": len(history.get("train_losses") or []),
        "epochs_planned": history.get("epochs_planned"),
        "steps": history.get("steps"),
        "batch_size": history.get("batch_size"),
        "best_epoch": history.get("best_epoch"),
        "stopped_early": bool(history.get("stopped_early")),
        "note": history.get("budget_note"),
    }


def _summary(trained: dict, metrics: dict, threshold: dict | None, warnings: list[str]) -> dict:
    """The ``summary`` of a job result (see :func:`summarize`)."""
    stages = [
        _stage(f"pretrain layer {d['layer']}", d["history"]) for d in trained.get("layers") or []
    ]
    if trained.get("history"):
        stages.append(_stage("fine-tune" if stages else "train", trained["history"]))
    return {
        "rows": {
            "train": trained.get("rows_train"),
            "validation": trained.get("rows_validation"),
            "rejected": metrics.get("rows_rejected"),
        },
        "stages": stages,
        "val_loss": metrics.get("val_loss"),
        "threshold": None
        if threshold is None
        else {
            "value": threshold["value"],
            "method": threshold["method"],
            "param": threshold["param"],
            "target_fpr": target_fpr(threshold["method"], threshold["param"]),
            "n_calibration": threshold.get("n_calibration"),
        },
        "warnings": warnings,
    }


def _refused(reason: str, summary: dict, metrics: dict, current: str | None = None) -> dict:
    log.warning(reason)
    return {
        "published": None,
        "refused": reason,
        "current": current,
        "metrics": metrics,
        "summary": {"published": None, "refused": reason, **summary},
    }


def _calibrate(job: TrainJob, errors: np.ndarray) -> tuple[dict | None, str | None]:
    """The threshold, or None and why not."""
    if not len(errors):
        return None, (
            "no validation rows to calibrate the threshold on (validation_fraction="
            f"{job.validation_fraction}); give more data or a larger --validation_fraction"
        )
    try:
        return calibrate(errors, job.threshold_method, job.threshold_param), None
    except ValueError as err:
        return None, f"cannot calibrate a threshold: {err}"


def _val_loss_guard(
    job: TrainJob, registry, val_loss: float | None
) -> tuple[str | None, str | None]:
    """``(reason to refuse or None, current version)`` of ``--max_val_loss_increase``."""
    from ae_pipeline.artifact import load_artifact

    current = registry.latest()
    if current is None or job.max_val_loss_increase is None:
        return None, current
    if val_loss is None:
        return (
            "refused to publish: --max_val_loss_increase is set but this run has no "
            "validation loss to compare with the current version's",
            current,
        )
    prev = load_artifact(registry.path(current)).metrics.get("val_loss")
    if prev is not None and val_loss > prev * (1.0 + job.max_val_loss_increase):
        return (
            f"refused to publish: validation loss {val_loss:.6g} is worse than current "
            f"version {current}'s {prev:.6g} by more than {job.max_val_loss_increase:.0%}",
            current,
        )
    return None, current


def publish(
    job: TrainJob, spec: FeatureSpec, trained: dict, errors: np.ndarray, counts: dict
) -> dict:
    """Calibrate, compare with the current version, and publish (or refuse, saying why).

    Guarantees: a version is published only with a finite calibrated threshold and a
    validation loss; otherwise the result has ``published: None`` and ``refused``, the reason.
    Every result carries ``summary`` (see :func:`summarize`).
    """
    from ae_pipeline.artifact import load_artifact, save_artifact
    from ae_pipeline.models import TrainConfig
    from ae_pipeline.registry import ModelRegistry

    history = trained.get("history") or {}
    val_losses = [v for v in history.get("val_losses", []) if v is not None]
    val_loss = float(min(val_losses)) if val_losses else None
    metrics = {
        "val_loss": val_loss,
        "val_error_mean": float(np.mean(errors)) if len(errors) else None,
        "train_loss": (history.get("train_losses") or [None])[-1],
        "epochs": len(history.get("train_losses", [])),
        "steps": history.get("steps"),
        "history": history,
        "layers": trained.get("layers"),
        "warm_start": trained.get("warm_start", False),
        **{k: v for k, v in counts.items() if k not in ("data", "rejected_examples")},
    }
    warnings: list[str] = []
    if trained.get("refused"):
        reason = f"refused to publish: {trained['refused']}"
        rejected = counts.get("rows_rejected") or 0
        if rejected:
            examples = "; ".join(counts.get("rejected_examples") or [])
            reason += f" ({rejected} rows were rejected{', e.g. ' + examples if examples else ''})"
        return _refused(reason, _summary(trained, metrics, None, warnings), metrics)
    threshold, why = _calibrate(job, errors)
    if threshold is None:
        reason = f"refused to publish: {why}"
        return _refused(reason, _summary(trained, metrics, None, warnings), metrics)
    if threshold["n_calibration"] < SMALL_CALIBRATION_ROWS:
        warnings.append(
            f"only {threshold['n_calibration']} validation rows calibrate the threshold: its "
            f"{threshold['method']} {threshold['param']:g} is poorly estimated (give more data "
            f"or a larger --validation_fraction)"
        )
        log.warning(warnings[-1])
    summary = _summary(trained, metrics, threshold, warnings)
    registry = ModelRegistry(job.model_root)
    reason, current = _val_loss_guard(job, registry, val_loss)
    if reason:
        return _refused(reason, summary, metrics, current)
    loaded = load_artifact(trained["model_path"])

    def write(directory: str) -> None:
        save_artifact(
            directory,
            loaded.model,
            loaded.model_config,
            feature_columns=list(spec.columns),
            scaler=trained["scaler"],
            threshold=threshold,
            metrics=metrics,
            train_config=TrainConfig.from_dict(_train_dict(job)),
            data_fingerprint=counts.get("data"),
            extra={
                "feature_spec": spec.to_dict(),
                "job": {
                    "scaler": job.scaler,
                    "validation_fraction": job.validation_fraction,
                },
                "summary": summary,
            },
        )
        if job.report:
            from ae_pipeline.report import write_training_report

            write_training_report(FileSystems.join(directory, "report"), metrics, threshold, errors)

    from ae_pipeline.registry import PublishRefused

    try:
        version = registry.publish(write, metadata={"val_loss": val_loss})
    except PublishRefused as err:  # the registry's own check that the version can serve
        return _refused(str(err), summary, metrics, current)
    log.info("published model version %s under %s", version, job.model_root)
    return {
        "published": version,
        "path": registry.path(version),
        "metrics": metrics,
        "threshold": threshold,
        "summary": {"published": version, "refused": None, **summary},
    }


# ------------------------------------------------------------------------------------------
# The composite transform
# ------------------------------------------------------------------------------------------


class TrainAutoencoder(beam.PTransform):
    """Parquet location -> a published model version (see the module docstring).

    Args:
        location: Parquet file, glob or directory.
        spec: feature/key/label columns (empty columns: all numeric).
        job: training settings.
        block_rows: rows per block read from Parquet.

    Output: a PCollection with one dict, ``{"published": version or None, "refused": reason?,
    "metrics": {...}, "threshold": {...}}``; ``self.rejected`` is the PCollection of rejected
    rows after expansion.
    """

    def __init__(self, location: str, spec: FeatureSpec, job: TrainJob, *, block_rows: int = 65536):
        super().__init__()
        self.read = ReadFeatureBlocks(location, spec, block_rows=block_rows)
        self.spec = self.read.resolved_spec
        self.job = job
        self.rejected = None
        from ae_pipeline.models import ModelConfig

        # Fail before the pipeline runs when the options do not make a valid model.
        ModelConfig.from_dict({**job.model_config, "input_dim": self.spec.dim})

    def expand(self, pbegin):
        from ae_pipeline.models import ModelConfig
        from ae_pipeline.models.stacked import n_layers

        job, spec = self.job, self.spec
        read = pbegin | "Read" >> self.read
        self.rejected = read[REJECTED]
        blocks = read["blocks"]
        split = blocks | "Split" >> beam.ParDo(
            _SplitAndWrite(job.temp_dir, job.validation_fraction)
        ).with_outputs(_SplitAndWrite.VAL, main=_SplitAndWrite.TRAIN)
        train, val = split[_SplitAndWrite.TRAIN], split[_SplitAndWrite.VAL]
        stats = beam.pvalue.AsSingleton(
            blocks
            | "TrainRowsOnly"
            >> beam.Map(lambda b, f: b.take(~validation_mask(b, f)), job.validation_fraction)
            | "FitScaler" >> beam.CombineGlobally(ColumnStatsFn())
        )

        def once(label: str):
            # Each single-worker step gets its own source so that the runner cannot fuse it
            # with a step whose output it waits for as a side input.
            return pbegin | f"Start{label}" >> beam.Create([None])

        def replay(label: str, shards):
            # Shards consumed by a step that also waits for a model trained on those same
            # shards: re-emit them from a fresh root once they are all written, so that the
            # runner cannot fuse the step into the stage that writes them (a cycle that shows
            # up as an empty side input).
            return (
                once(label)
                | f"{label}Shards" >> beam.FlatMap(lambda _, s: s, beam.pvalue.AsList(shards))
                | f"{label}Spread" >> beam.Reshuffle()
            )

        train_list, val_list = beam.pvalue.AsList(train), beam.pvalue.AsList(val)
        model_cfg = ModelConfig.from_dict({**job.model_config, "input_dim": spec.dim})
        if model_cfg.architecture == "stacked":
            codes, val_codes, layers = train, val, []
            for k in range(n_layers(model_cfg)):
                layer = once(f"Layer{k}") | f"TrainLayer{k}" >> beam.Map(
                    lambda _, s, v, st, k=k: {
                        **train_stack_layer(job, k, s, v, st),
                        "scaler_kind": job.scaler,
                    },
                    beam.pvalue.AsList(codes),
                    beam.pvalue.AsList(val_codes),
                    stats,
                )
                layers.append(layer)
                side = beam.pvalue.AsSingleton(layer)
                enc = _EncodeShard(job.temp_dir, k, first=k == 0)
                codes = replay(f"EncodeTrain{k}", codes) | f"EncodeTrain{k}" >> beam.ParDo(
                    enc, side, stats
                )
                val_codes = replay(f"EncodeVal{k}", val_codes) | f"EncodeVal{k}" >> beam.ParDo(
                    enc, side, stats
                )
            all_layers = layers | "Layers" >> beam.Flatten() | beam.combiners.ToList()
            trained = once("FineTune") | "FineTune" >> beam.Map(
                lambda _, ls, s, v, st: finetune_stack(job, ls, s, v, st),
                beam.pvalue.AsSingleton(all_layers),
                train_list,
                val_list,
                stats,
            )
        else:
            trained = once("Train") | "Train" >> beam.Map(
                lambda _, s, v, st: train_single(job, s, v, st), train_list, val_list, stats
            )
        errors = (
            replay("Calibrate", val)
            | "Calibrate" >> beam.ParDo(_ScoreShard(), beam.pvalue.AsSingleton(trained))
            | "AllErrors" >> beam.CombineGlobally(_ConcatFn())
        )
        rejected_count = self.rejected | "CountRejected" >> beam.combiners.Count.Globally()
        rejected_examples = (
            self.rejected
            | "SampleRejected" >> beam.combiners.Sample.FixedSizeGlobally(3)
            | "DescribeRejected"
            >> beam.Map(lambda rows: [f"{r['file']} row {r['row']}: {r['detail']}" for r in rows])
        )
        files = self.read.files
        data = {
            "location_files": len(files),
            "fingerprint": fingerprint([json.dumps(spec.to_dict(), sort_keys=True), *files]),
        }
        return trained | "Publish" >> beam.Map(
            lambda t, e, r, ex: publish(
                job, spec, t, e, {"rows_rejected": r, "rejected_examples": ex, "data": data}
            ),
            beam.pvalue.AsSingleton(errors),
            beam.pvalue.AsSingleton(rejected_count),
            beam.pvalue.AsSingleton(rejected_examples),
        )


class _ConcatFn(beam.CombineFn):
    def create_accumulator(self):
        return []

    def add_input(self, acc, arr):
        acc.append(np.asarray(arr, dtype=np.float32))
        return acc

    def merge_accumulators(self, accs):
        return [a for acc in accs for a in acc]

    def extract_output(self, acc):
        return _concat(acc)


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _stage_line(stage: dict) -> str:
    planned = stage.get("epochs_planned")
    epochs = f"{stage['epochs']}" + (f" of {planned}" if planned else "")
    stop = "early stop" if stage.get("stopped_early") else "no early stop"
    return (
        f"  {stage['name']}: {epochs} epochs, {_fmt(stage.get('steps'), ',')} steps, batch "
        f"{_fmt(stage.get('batch_size'), 'd')}; best epoch {_fmt(stage.get('best_epoch'), 'd')}; "
        f"{stop}"
    )


def summarize(result: dict) -> str:
    """A short block for people: the version (or the refusal and why), rows, per-stage epochs
    and steps, best epoch, early stop, the training budget, validation loss, the threshold and
    the false-positive rate it targets, and warnings."""
    summary = result.get("summary") or {}
    if result.get("published"):
        lines = [
            f"published {result['published']}"
            + (f" at {result['path']}" if result.get("path") else "")
        ]
    else:
        lines = [str(result.get("refused") or "not published")]
    rows = summary.get("rows") or {}
    if rows:
        lines.append(
            f"  rows: {_fmt(rows.get('train'), ',')} train, {_fmt(rows.get('validation'), ',')} "
            f"validation, {_fmt(rows.get('rejected'), ',')} rejected"
        )
    for stage in summary.get("stages") or []:
        lines.append(_stage_line(stage))
        if stage.get("note"):
            lines.append(f"    budget: {stage['note']}")
    if summary.get("val_loss") is not None:
        lines.append(f"  validation loss: {summary['val_loss']:.6g}")
    t = summary.get("threshold")
    if t:
        target = (
            f"flags {t['target_fpr']:.2%} of the records, the expected contamination"
            if t["method"] == "contamination"
            else f"flags {t['target_fpr']:.2%} of normal records"
        )
        lines.append(
            f"  threshold: {t['value']:.6g} ({t['method']} {t['param']:g}: {target}; "
            f"calibrated on {_fmt(t.get('n_calibration'), ',')} validation rows)"
        )
    lines += [f"  warning: {w}" for w in summary.get("warnings") or []]
    return "\n".join(lines)


def to_json(result: dict) -> str:
    return json.dumps(result, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))

"""A training job's settings (:class:`TrainJob`), checked before anything is read.

Example:
    >>> job = TrainJob("models/", "tmp/", {"hidden_dims": [8], "latent_dim": 2},
    ...                threshold_method="fpr")
    >>> job.threshold_param
    0.01
    >>> train_dict(job)["min_steps"]
    2000
    >>> try:
    ...     TrainJob("models/", "tmp/", {}, threshold_method="fpr", threshold_param=0.99)
    ... except ConfigError as err:
    ...     print(str(err).split(":")[0])
    threshold_param 0.99 is out of range for 'fpr'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ae_pipeline.calibration import DEFAULT_PARAMS, METHODS, check_threshold, describe_param
from ae_pipeline.features import SCALERS
from ae_pipeline.models.config import ConfigError

#: Each threshold method's default parameter (quantile q; target false-positive rate;
#: expected contamination): :data:`ae_pipeline.calibration.DEFAULT_PARAMS`.
THRESHOLD_DEFAULTS = DEFAULT_PARAMS
#: ``ae-pipeline train``'s training settings unless its flags say otherwise (the default recipe,
#: with :data:`JOB_BUDGET_DEFAULTS`, the model sized by :mod:`ae_pipeline.models.sizing` and the
#: ``normalized`` score; see the README's "Choosing settings").
TRAIN_DEFAULTS = {"epochs": 20, "batch_size": 256, "lr": 1e-3, "patience": 5}
#: The training budget of a job unless its ``train_config`` sets these keys.
JOB_BUDGET_DEFAULTS = {"min_steps": 2000, "max_batch_fraction": 0.125}
#: The anomaly scores a job can calibrate (``--score``): the terms of a ``normalized``
#: :class:`~ae_pipeline.models.score_function.ScoreFunction`, or None for the plain mean
#: squared error. ``normalized`` is the default (see the README's "Choosing settings").
SCORES: dict[str, tuple[str, ...] | None] = {
    "normalized": ("reconstruction", "latent"),
    "reconstruction": ("reconstruction",),
    "mse": None,
}
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
        score: the anomaly score the threshold is calibrated on, one of :data:`SCORES`.

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
    score: str = "normalized"

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
    if job.score not in SCORES:
        raise ConfigError(f"score {job.score!r} is not one of {', '.join(SCORES)}")
    if not (_number(job.validation_fraction) and 0.0 < job.validation_fraction < 1.0):
        raise ConfigError(
            f"validation_fraction must be in (0, 1), got {job.validation_fraction!r}: the "
            "validation rows calibrate the threshold (try 0.2)"
        )
    if job.threshold_method not in METHODS:
        raise ConfigError(
            f"threshold_method {job.threshold_method!r} is not one of {', '.join(METHODS)}"
        )
    if not _number(job.threshold_param):
        raise ConfigError(
            f"threshold_param for {job.threshold_method!r} must be a number, got "
            f"{job.threshold_param!r}: {describe_param(job.threshold_method)}"
        )
    try:
        check_threshold(job.threshold_method, job.threshold_param)
    except ValueError:
        raise ConfigError(
            f"threshold_param {job.threshold_param:g} is out of range for "
            f"{job.threshold_method!r}: {describe_param(job.threshold_method)}"
        ) from None
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
    TrainConfig.from_dict(train_dict(job))
    if job.finetune_config:
        TrainConfig.from_dict({**JOB_BUDGET_DEFAULTS, **job.finetune_config})
    if model.loss == "bce" and job.scaler == "standard":
        raise ConfigError(
            "loss 'bce' needs data in [0, 1], but scaler 'standard' centres it around 0: use "
            "--scaler minmax (or --loss mse)"
        )


def train_dict(job: TrainJob, stage: str = "train") -> dict[str, Any]:
    """The TrainConfig dict of a stage (``train``, ``pretrain``, ``finetune``)."""
    base = job.train_config
    if stage == "finetune" and job.finetune_config:
        base = job.finetune_config
    out = {**JOB_BUDGET_DEFAULTS, **base}
    epochs = {"pretrain": job.pretrain_epochs, "finetune": job.finetune_epochs}.get(stage)
    if epochs is not None:
        out["epochs"] = epochs
    return out

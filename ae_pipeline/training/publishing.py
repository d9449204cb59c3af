"""Calibration, the "no worse model" gate and artifact writing: a trained model becomes a
published version, or a refusal that says why. No Beam here: :class:`TrainAutoencoder
<ae_pipeline.beam.training.TrainAutoencoder>` calls :func:`publish` in its last step, and tests
call it without a runner.

Guarantees: no version that cannot serve is published (no validation rows to calibrate on, no
training rows, a ``max_val_loss_increase`` guard that cannot be checked, a worse validation
loss); the registry checks the written version once more before marking it.
"""

from __future__ import annotations

import logging

import numpy as np

from ae_pipeline.artifact import load_artifact, save_artifact
from ae_pipeline.calibration import calibrate
from ae_pipeline.features import FeatureSpec
from ae_pipeline.models import ScoreFunction, TrainConfig
from ae_pipeline.registry import ModelRegistry, PublishRefused
from ae_pipeline.training.job import SMALL_CALIBRATION_ROWS, TrainJob, train_dict
from ae_pipeline.training.records import DataCounts, TrainedModel

log = logging.getLogger(__name__)


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


def _summary(
    trained: TrainedModel, metrics: dict, threshold: dict | None, warnings: list[str]
) -> dict:
    """The ``summary`` of a job result (see :func:`~ae_pipeline.training.summary.summarize`)."""
    stages = [_stage(f"pretrain layer {d['layer']}", d["history"]) for d in trained.layers or []]
    if trained.history:
        stages.append(_stage("fine-tune" if stages else "train", trained.history))
    return {
        "rows": {
            "train": trained.rows_train,
            "validation": trained.rows_validation,
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


def finish_score_function(
    unfitted: ScoreFunction | None, values: np.ndarray
) -> tuple[np.ndarray, ScoreFunction | None]:
    """The calibration scores and the finished score function: ``values`` are the validation
    rows' reconstruction errors when ``unfitted`` is None (the ``mse`` score), else the raw
    values of its terms (``N x terms``), whose medians finish it."""
    values = np.asarray(values, dtype=np.float64)
    if unfitted is None:
        return values.reshape(-1), None
    values = values.reshape(-1, len(unfitted.terms))
    fn = unfitted.with_medians(*values.T)
    medians = np.array([fn.medians[t] for t in fn.terms])
    return (values / medians).sum(axis=1), fn


def calibrate_job(job: TrainJob, errors: np.ndarray) -> tuple[dict | None, str | None]:
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


def val_loss_guard(
    job: TrainJob, registry: ModelRegistry, val_loss: float | None
) -> tuple[str | None, str | None]:
    """The "no worse model" gate: ``(reason to refuse or None, current version)`` of
    ``max_val_loss_increase``."""
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
    job: TrainJob,
    spec: FeatureSpec,
    trained: TrainedModel,
    errors: np.ndarray,
    score_function: ScoreFunction | None = None,
    counts: DataCounts | None = None,
) -> dict:
    """Calibrate, compare with the current version, and publish (or refuse, saying why).

    Guarantees: a version is published only with a finite calibrated threshold and a
    validation loss; otherwise the result has ``published: None`` and ``refused``, the reason.
    Every result carries ``summary`` (see :func:`~ae_pipeline.training.summary.summarize`).

    Args:
        job: the job's settings.
        spec: the features the model reads (saved with the version).
        trained: the trained model (or the refusal of the training stage).
        errors: anomaly scores of the validation rows (they calibrate the threshold).
        score_function: how those scores were made (None: the mean squared error), saved
            with the version.
        counts: what the read rejected, and the data's fingerprint.
    """
    counts = counts if counts is not None else DataCounts()
    history = trained.history or {}
    val_losses = [v for v in history.get("val_losses", []) if v is not None]
    val_loss = float(min(val_losses)) if val_losses else None
    metrics = {
        "val_loss": val_loss,
        "val_error_mean": float(np.mean(errors)) if len(errors) else None,
        "train_loss": (history.get("train_losses") or [None])[-1],
        "epochs": len(history.get("train_losses", [])),
        "steps": history.get("steps"),
        "history": history,
        "layers": trained.layers,
        "warm_start": trained.warm_start,
        "rows_rejected": counts.rows_rejected,
    }
    warnings: list[str] = []
    if trained.refused:
        reason = f"refused to publish: {trained.refused}"
        rejected = counts.rows_rejected or 0
        if rejected:
            examples = "; ".join(counts.rejected_examples or [])
            reason += f" ({rejected} rows were rejected{', e.g. ' + examples if examples else ''})"
        return _refused(reason, _summary(trained, metrics, None, warnings), metrics)
    threshold, why = calibrate_job(job, errors)
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
    reason, current = val_loss_guard(job, registry, val_loss)
    if reason:
        return _refused(reason, summary, metrics, current)
    loaded = load_artifact(trained.model_path)

    def write(directory: str) -> None:
        save_artifact(
            directory,
            loaded.model,
            loaded.model_config,
            feature_columns=list(spec.columns),
            scaler=trained.scaler,
            threshold=threshold,
            metrics=metrics,
            train_config=TrainConfig.from_dict(train_dict(job)),
            data_fingerprint=counts.data,
            score_function=score_function,
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

            write_training_report(f"{directory.rstrip('/')}/report", metrics, threshold, errors)

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

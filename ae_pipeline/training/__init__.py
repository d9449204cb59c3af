"""Training without Beam: a job's settings, the typed records between its stages, and the last
step (calibration, the "no worse model" gate, artifact writing).

:mod:`ae_pipeline.beam.training` runs the stages as Beam steps and calls :func:`publish` at the
end; everything here is usable and tested without a runner.

* :class:`TrainJob`, :func:`validate_job` (:mod:`.job`): settings, checked before any read;
* :class:`TrainedModel`, :class:`TrainedLayer`, :class:`DataCounts` (:mod:`.records`);
* :func:`publish`, :func:`calibrate_job`, :func:`finish_score_function`,
  :func:`val_loss_guard` (:mod:`.publishing`);
* :func:`summarize`, :func:`to_json` (:mod:`.summary`).
"""

from ae_pipeline.training.job import (
    JOB_BUDGET_DEFAULTS,
    SCORES,
    SMALL_CALIBRATION_ROWS,
    THRESHOLD_DEFAULTS,
    TRAIN_DEFAULTS,
    TrainJob,
    train_dict,
    validate_job,
)
from ae_pipeline.training.publishing import (
    calibrate_job,
    finish_score_function,
    publish,
    target_fpr,
    val_loss_guard,
)
from ae_pipeline.training.records import DataCounts, TrainedLayer, TrainedModel
from ae_pipeline.training.summary import summarize, to_json

__all__ = [
    "JOB_BUDGET_DEFAULTS",
    "SCORES",
    "SMALL_CALIBRATION_ROWS",
    "THRESHOLD_DEFAULTS",
    "TRAIN_DEFAULTS",
    "DataCounts",
    "TrainJob",
    "TrainedLayer",
    "TrainedModel",
    "calibrate_job",
    "finish_score_function",
    "publish",
    "summarize",
    "target_fpr",
    "to_json",
    "train_dict",
    "val_loss_guard",
    "validate_job",
]

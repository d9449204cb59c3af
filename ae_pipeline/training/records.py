"""The typed records that pass between the training stages (picklable, so Beam side inputs
carry them): what a stage trained, or why it could not, and what the data held.

Example:
    >>> TrainedModel.refusal("no training rows", rows_train=0, rows_validation=3).refused
    'no training rows'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainedLayer:
    """One greedily pretrained layer of a stacked model.

    Attributes:
        layer: its index (0: next to the input).
        model_path: the one-layer autoencoder saved as a temporary artifact (None if refused).
        history: the trainer's history as JSON (losses per epoch, steps, budget note).
        scaler_kind: the job's scaler (layer 0 scales its input with it).
        refused: why the layer could not be trained (None: it was).
        rows_train / rows_validation: rows it saw.
    """

    layer: int
    model_path: str | None = None
    history: dict[str, Any] = field(default_factory=dict)
    scaler_kind: str = "standard"
    refused: str | None = None
    rows_train: int = 0
    rows_validation: int = 0


@dataclass(frozen=True)
class TrainedModel:
    """The trained model of a job, before calibration and publishing.

    Attributes:
        model_path: the model saved as a temporary artifact (None if refused).
        scaler: the fitted scaler as a dict (:meth:`ae_pipeline.features.Scaler.to_dict`).
        history: the trainer's history as JSON (of the fine-tuning, for a stacked model).
        layers: a stacked model's pretraining, ``[{"layer": k, "history": {...}}]``.
        warm_start: whether training started from the published version's weights.
        rows_train / rows_validation: rows it saw.
        refused: why the model could not be trained (None: it was).
    """

    model_path: str | None = None
    scaler: dict[str, Any] | None = None
    history: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] | None = None
    warm_start: bool = False
    rows_train: int = 0
    rows_validation: int = 0
    refused: str | None = None

    @classmethod
    def refusal(cls, reason: str, *, rows_train: int, rows_validation: int) -> TrainedModel:
        """What a training stage returns instead of a model when it cannot train."""
        return cls(refused=reason, rows_train=rows_train, rows_validation=rows_validation)


@dataclass(frozen=True)
class DataCounts:
    """What the read found besides the training rows.

    Attributes:
        rows_rejected: rows that could not be read as features (bad values, missing fields).
        rejected_examples: up to three of them, described for people.
        data: the input's fingerprint (``location_files``, ``fingerprint``), kept with the
            version.
    """

    rows_rejected: int = 0
    rejected_examples: list[str] = field(default_factory=list)
    data: dict[str, Any] | None = None

"""Beam transforms: Parquet training, scoring DoFns and Kafka I/O (the only layer that imports
apache_beam besides the artifact/registry file access).

The public API, importable from here (each name is loaded on first use, so that
``import ae_pipeline.beam.options`` stays light):

* :class:`ScoreKafkaTopic`: read a topic, score it, write results and dead letters (the
  streaming job in one transform);
* :class:`ScoreRecords` and its modes :class:`Encode`, :class:`Denoise`,
  :class:`FlagAnomalies`, :class:`ExplainScores`: score a PCollection of records (dicts, JSON,
  Kafka records); ``ScoreRecords(mode)`` takes any registered
  :class:`~ae_pipeline.serving.modes.OutputMode`;
* :class:`ReadKafkaRecords`, :class:`WriteKafkaRecords`: Kafka in and out, in Python;
* :class:`TrainAutoencoder` (with :class:`TrainJob`): train on Parquet and publish a version;
* :class:`MonitorScoreDrift`: score drift of scored results against the version's calibration
  (drift events, gauges, an optional drift topic);
* :class:`AutoencoderModelHandler`: for Beam's ``RunInference``;
* :func:`autoencoder_detector`: an ``OfflineDetector`` for Beam's ``AnomalyDetection``
  (Beam 2.64 and later).

Example:
    >>> from ae_pipeline.beam import FlagAnomalies, ReadKafkaRecords, ScoreKafkaTopic
    >>> FlagAnomalies.__module__
    'ae_pipeline.beam.transforms'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# First: imports Beam without its import-time noise (see ae_pipeline.beam.compat).
from ae_pipeline.beam import compat as _compat  # noqa: F401

_WHERE = {
    "ScoreKafkaTopic": "ae_pipeline.beam.kafka_scoring",
    "ScoreRecords": "ae_pipeline.beam.transforms",
    "Encode": "ae_pipeline.beam.transforms",
    "Denoise": "ae_pipeline.beam.transforms",
    "ExplainScores": "ae_pipeline.beam.transforms",
    "FlagAnomalies": "ae_pipeline.beam.transforms",
    "ReadKafkaRecords": "ae_pipeline.beam.kafka_read",
    "WriteKafkaRecords": "ae_pipeline.beam.kafka_write",
    "TrainAutoencoder": "ae_pipeline.beam.training",
    "TrainJob": "ae_pipeline.beam.training",
    "AutoencoderModelHandler": "ae_pipeline.beam.model_handler",
    "autoencoder_detector": "ae_pipeline.beam.anomaly",
    "MonitorScoreDrift": "ae_pipeline.beam.drift",
}

__all__ = [
    "AutoencoderModelHandler",
    "Denoise",
    "Encode",
    "ExplainScores",
    "FlagAnomalies",
    "MonitorScoreDrift",
    "ReadKafkaRecords",
    "ScoreKafkaTopic",
    "ScoreRecords",
    "TrainAutoencoder",
    "TrainJob",
    "WriteKafkaRecords",
    "autoencoder_detector",
]

if TYPE_CHECKING:
    from ae_pipeline.beam.anomaly import autoencoder_detector
    from ae_pipeline.beam.drift import MonitorScoreDrift
    from ae_pipeline.beam.kafka_read import ReadKafkaRecords
    from ae_pipeline.beam.kafka_scoring import ScoreKafkaTopic
    from ae_pipeline.beam.kafka_write import WriteKafkaRecords
    from ae_pipeline.beam.model_handler import AutoencoderModelHandler
    from ae_pipeline.beam.training import TrainAutoencoder, TrainJob
    from ae_pipeline.beam.transforms import (
        Denoise,
        Encode,
        ExplainScores,
        FlagAnomalies,
        ScoreRecords,
    )


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

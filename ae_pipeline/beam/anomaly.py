"""An autoencoder detector for Beam's own ``AnomalyDetection`` (``apache_beam.ml.anomaly``).

:func:`autoencoder_detector` returns a Beam ``OfflineDetector`` that scores ``beam.Row``
records with a published ae-pipeline model (reconstruction error, RunInference underneath, the
artifact loaded without pickle), thresholded at the model's calibrated threshold. It plugs into
``AnomalyDetection`` alone or inside an ``EnsembleAnomalyDetector`` beside Beam's ``ZScore``,
``IQR`` or ``RobustZScore``::

    from apache_beam.ml.anomaly.base import EnsembleAnomalyDetector
    from apache_beam.ml.anomaly.aggregations import AnyVote
    from apache_beam.ml.anomaly.detectors.zscore import ZScore
    from apache_beam.ml.anomaly.transforms import AnomalyDetection

    detector = EnsembleAnomalyDetector(
        [autoencoder_detector(version_dir), ZScore(features=["x0"])],
        aggregation_strategy=AnyVote(),
    )
    results = rows | AnomalyDetection(detector)

Each prediction's ``info`` names the model version that produced it. A record the model cannot
score (a missing field, a non-number, anything the scoring path isolates as ``internal``) gets
the score NaN, so Beam's threshold gives it the detector's ``missing_label`` (-2 by default;
``missing_label=`` sets it), never a normal label, and its ``info`` says why. In a
``LabelAggregation`` ensemble (``AnyVote``, ``MajorityVote``...) Beam leaves missing labels out
of the vote: the row's verdict is the other detectors' (``missing_label`` when none of them has
one), and the detector's own source prediction keeps the missing label.

``apache_beam.ml.anomaly`` arrived in Beam 2.64 (the gate is :mod:`ae_pipeline.beam.compat`):
the detector needs it in the environment that builds the pipeline. The test suite runs it on
Beam 2.77; on Beam 2.62 (also supported and tested) :func:`autoencoder_detector` raises an
error that says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult

from ae_pipeline.beam.compat import HAS_ML_ANOMALY, require_ml_anomaly
from ae_pipeline.beam.model_handler import AutoencoderModelHandler
from ae_pipeline.features import INTERNAL, internal_detail
from ae_pipeline.serving import ServingError, ServingModel

if HAS_ML_ANOMALY:  # Beam >= 2.64; the gate is ae_pipeline.beam.compat
    from apache_beam.ml.anomaly.base import AnomalyPrediction
    from apache_beam.ml.anomaly.detectors.offline import OfflineDetector
    from apache_beam.ml.anomaly.specifiable import specifiable
    from apache_beam.ml.anomaly.thresholds import FixedThreshold
    from apache_beam.ml.inference.base import _PostProcessingModelHandler

# Kept for callers of the old name: the gate itself is ae_pipeline.beam.compat.HAS_ML_ANOMALY.
HAVE_BEAM_ANOMALY = HAS_ML_ANOMALY


def _as_dict(row: Any) -> Any:
    """A ``beam.Row`` as a dict (other records as they are)."""
    return row._asdict() if hasattr(row, "_asdict") else row


def _width(row: Any) -> int:
    """Fields of a row (1 where it cannot even be read: such a row is dead-lettered later)."""
    try:
        return len(_as_dict(row))
    except Exception:
        return 1


class AutoencoderRowModelHandler(AutoencoderModelHandler):
    """RunInference handler scoring ``beam.Row`` (or dict) records one result each.

    Its ``PredictionResult.inference`` is ``{"score": float, "reason": str | None}``: the
    reconstruction error, or NaN and the reason the record could not be scored. No row fails
    the batch: should scoring the batch raise, the rows are scored one by one and a row that
    still fails gets NaN and the reason ``internal`` with the exception type; a model that
    cannot serve (``ServingError``) still fails it. Takes the
    arguments of :class:`~ae_pipeline.beam.model_handler.AutoencoderModelHandler` (``mode`` is
    always ``flag``); ``min_batch_size`` / ``max_batch_size`` count records here.
    """

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_batch_size", 1024)
        super().__init__(model_path, **{**kwargs, "mode": "flag"})

    def run_inference(
        self,
        batch: Sequence[Any],
        model: ServingModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        try:
            scores, reasons = _anomaly_scores(model, batch)
        except ServingError:
            raise  # the model cannot serve: not the rows' fault
        except Exception:  # one row broke the batch: score them one by one
            scores, reasons = [], {}
            for i, row in enumerate(batch):
                try:
                    (score,), why = _anomaly_scores(model, [row])
                except ServingError:
                    raise
                except Exception as err:
                    score, why = math.nan, {0: f"{INTERNAL}: {internal_detail(err)}"}
                scores.append(score)
                if 0 in why:
                    reasons[i] = why[0]
        return [
            PredictionResult(row, {"score": float(s), "reason": reasons.get(i)}, model.version)
            for i, (row, s) in enumerate(zip(batch, scores, strict=True))
        ]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return 8 * sum(map(_width, batch))


def _anomaly_scores(model: ServingModel, rows: Sequence[Any]) -> tuple[list[float], dict]:
    """:meth:`ServingModel.anomaly_scores` of ``rows`` (``beam.Row`` or dicts)."""
    scores, reasons = model.anomaly_scores([_as_dict(row) for row in rows])
    return scores.tolist(), reasons


def _to_anomaly_prediction(keyed: tuple[Any, PredictionResult]) -> tuple[Any, Any]:
    """``(key, PredictionResult)`` -> ``(key, AnomalyPrediction)``; the version or the reason
    goes to ``info``."""
    key, result = keyed
    score = result.inference["score"]
    reason = result.inference["reason"]
    if reason is not None or math.isnan(score):
        # NaN, not None: Beam's thresholds give NaN the detector's missing_label, None no label.
        return key, AnomalyPrediction(
            score=math.nan, info=f"model_version={result.model_id}; unscored: {reason}"
        )
    return key, AnomalyPrediction(score=score, info=f"model_version={result.model_id}")


if HAS_ML_ANOMALY:
    # The detector's spec names its model handler: make the wrappers specifiable, as Beam's own
    # PyOD adapter does (registering the same classes again is a no-op).
    specifiable(KeyedModelHandler, on_demand_init=False, just_in_time_init=False)
    specifiable(_PostProcessingModelHandler, on_demand_init=False, just_in_time_init=False)
    specifiable(AutoencoderRowModelHandler, on_demand_init=False, just_in_time_init=False)


def autoencoder_detector(
    model_path: str,
    *,
    threshold: float | None = None,
    device: str = "auto",
    torch_threads: int | None = None,
    max_batch_size: int = 1024,
    missing_label: int | None = None,
    **detector_kwargs: Any,
) -> Any:
    """A Beam ``OfflineDetector`` scoring records with the model at ``model_path``.

    Args:
        model_path: a published version directory (or its ``_PUBLISHED`` marker path).
        threshold: the score above which a record is an outlier; default: the model's
            calibrated threshold (a model without one is refused).
        device: ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``...
        torch_threads: torch's intra-op CPU threads in each worker thread that scores
            (None: torch's default).
        max_batch_size: most records per inference call.
        missing_label: the label of a record the model cannot score (default: Beam's
            ``DEFAULT_MISSING_LABEL``, -2).
        **detector_kwargs: passed to ``OfflineDetector`` (``model_id``, ``features``...).

    Raises:
        RuntimeError: the installed Beam has no ``apache_beam.ml.anomaly``.
        ArtifactError: the model cannot be loaded or verified.
        ValueError: no threshold was given and the model has none.
    """
    require_ml_anomaly("autoencoder_detector")
    handler = AutoencoderRowModelHandler(
        model_path, device=device, torch_threads=torch_threads, max_batch_size=max_batch_size
    )
    if threshold is None:
        model = ServingModel.load(handler.model_path, device="cpu")
        if model.threshold is None:
            raise ValueError(
                f"model {model.version} has no calibrated threshold; pass threshold=..."
            )
        threshold = model.threshold
    keyed = KeyedModelHandler(handler).with_postprocess_fn(_to_anomaly_prediction)
    detector_kwargs.setdefault("model_id", "ae-pipeline")
    labels = {} if missing_label is None else {"missing_label": missing_label}
    return OfflineDetector(
        keyed, threshold_criterion=FixedThreshold(float(threshold), **labels), **detector_kwargs
    )


__all__ = ["HAVE_BEAM_ANOMALY", "AutoencoderRowModelHandler", "autoencoder_detector"]

"""Runs Beam's ``AnomalyDetection`` with the ae-pipeline detector; executed by the tests with the
test environment's interpreter (Beam >= 2.64: ``apache_beam.ml.anomaly``).

Usage: python anomaly_job.py WORKDIR   -> writes WORKDIR/results.json

It trains and publishes a small model (6 features on a 2-D manifold), then runs on FnApiRunner:
(1) the autoencoder detector alone and (2) an ensemble of it with Beam's ZScore and IQR
(AnyVote), (3) an AnyVote ensemble of it with ZScore only and (4) an AnyVote ensemble of it
alone, over normal rows, planted anomalies and one row the model cannot score.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.ml.anomaly.aggregations import AnyVote
from apache_beam.ml.anomaly.base import DEFAULT_MISSING_LABEL, EnsembleAnomalyDetector
from apache_beam.ml.anomaly.detectors.iqr import IQR
from apache_beam.ml.anomaly.detectors.zscore import ZScore
from apache_beam.ml.anomaly.transforms import AnomalyDetection
from apache_beam.options.pipeline_options import PipelineOptions

from ae_pipeline.beam.anomaly import autoencoder_detector
from ae_pipeline.serving import ServingModel

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from anomaly_model import COLUMNS, publish, rows  # noqa: E402


def as_dict(result) -> dict:
    """An ``AnomalyResult`` as JSON-able data."""
    return {
        "id": result.example.id,
        "predictions": [
            {
                "model_id": p.model_id,
                "score": p.score,
                "label": p.label,
                "threshold": p.threshold,
                "info": p.info,
                "sources": [
                    {"model_id": s.model_id, "label": s.label, "score": s.score}
                    for s in (p.source_predictions or [])
                ],
            }
            for p in result.predictions
        ],
    }


def main(workdir: str) -> None:
    out = Path(workdir)
    version_dir = publish(str(out / "models"))
    normal = rows(400, 2)
    rng = np.random.default_rng(3)
    # Off the manifold: every feature moved by 2-4 of its standard deviations.
    shift = rng.choice([-1.0, 1.0], size=(20, 6)) * rng.uniform(2, 4, (20, 6))
    planted = rows(20, 4) + shift * normal.std(axis=0)
    records = [
        {"id": i, **dict(zip(COLUMNS, map(float, r), strict=True))}
        for i, r in enumerate(np.concatenate([normal, planted]))
    ]
    bad = {"id": 9999, **{c: 1.0 for c in COLUMNS}, "f3": "not a number"}
    inputs = [*records, bad]
    opts = PipelineOptions([], runner="apache_beam.runners.portability.fn_api_runner.FnApiRunner")

    def collect(name: str) -> beam.PTransform:
        return f"To{name}" >> beam.Map(
            lambda r: json.dumps(as_dict(r))
        ) | f"Write{name}" >> beam.io.WriteToText(str(out / name), shard_name_template="")

    with beam.Pipeline(options=opts) as p:
        as_rows = p | beam.Create(inputs) | beam.Map(lambda d: beam.Row(**d))
        _ = (
            as_rows
            | "Alone" >> AnomalyDetection(autoencoder_detector(version_dir, device="cpu"))
            | collect("alone")
        )
        ensemble = EnsembleAnomalyDetector(
            [
                autoencoder_detector(version_dir, device="cpu", model_id="ae"),
                ZScore(features=["f0"], model_id="zscore"),
                IQR(features=["f4"], model_id="iqr"),
            ],
            aggregation_strategy=AnyVote(include_source_predictions=True),
        )
        _ = as_rows | "Ensemble" >> AnomalyDetection(ensemble) | collect("ensemble")
        with_zscore = EnsembleAnomalyDetector(
            [
                autoencoder_detector(version_dir, device="cpu", model_id="ae"),
                ZScore(features=["f0"], model_id="zscore"),
            ],
            aggregation_strategy=AnyVote(include_source_predictions=True),
        )
        _ = as_rows | "WithZScore" >> AnomalyDetection(with_zscore) | collect("with_zscore")
        ae_only = EnsembleAnomalyDetector(
            [autoencoder_detector(version_dir, device="cpu", model_id="ae")],
            aggregation_strategy=AnyVote(include_source_predictions=True),
        )
        _ = as_rows | "AeOnly" >> AnomalyDetection(ae_only) | collect("ae_only")
    names = ("alone", "ensemble", "with_zscore", "ae_only")
    results = {
        name: [json.loads(line) for line in (out / name).read_text().splitlines()] for name in names
    }
    model = ServingModel.load(version_dir, device="cpu")
    offline, reasons = model.anomaly_scores(inputs)
    (out / "results.json").write_text(
        json.dumps(
            {
                "beam_version": beam.__version__,
                "version": model.version,
                "threshold": model.threshold,
                "planted_ids": list(range(len(normal), len(records))),
                "bad_id": bad["id"],
                "missing_label": DEFAULT_MISSING_LABEL,
                "offline": {
                    str(r["id"]): (None if np.isnan(s) else s)
                    for r, s in zip(inputs, offline.tolist(), strict=True)
                },
                "offline_reasons": {str(inputs[i]["id"]): r for i, r in reasons.items()},
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])

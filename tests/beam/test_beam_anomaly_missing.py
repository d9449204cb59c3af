"""The anomaly detector's row handler on the pinned Beam: a row that breaks its batch gets NaN
and the reason ``internal``; the other rows of the batch keep their scores."""

from __future__ import annotations

import math
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that

from ae_pipeline.beam import anomaly
from ae_pipeline.local.runners import runner_args
from ae_pipeline.serving import ServingModel

HERE = Path(__file__).resolve().parent


class BrokenRow:
    """A row whose fields cannot be read."""

    id = -1

    def _asdict(self):
        raise RuntimeError("unreadable row")


def test_a_row_that_breaks_its_batch_is_unscored_and_the_rest_scored(version_dir):
    rng = np.random.default_rng(8)
    records = [
        {"id": i, **{f"f{j}": float(v) for j, v in enumerate(rng.normal(size=6))}}
        for i in range(20)
    ]
    expected, _ = ServingModel.load(version_dir, device="cpu").anomaly_scores(records)

    def check(results):
        got = {r.example.id: r.inference for r in results}
        assert sorted(got) == [-1, *range(20)]
        assert math.isnan(got[-1]["score"])
        assert got[-1]["reason"] == "internal: RuntimeError: unreadable row"
        for i, want in enumerate(expected):
            assert got[i]["score"] == pytest.approx(want, rel=1e-5) and got[i]["reason"] is None

    handler = anomaly.AutoencoderRowModelHandler(version_dir, device="cpu", min_batch_size=21)
    with beam.Pipeline(argv=runner_args("fnapi")) as p:
        rows = p | beam.Create(records, reshuffle=False) | beam.Map(lambda d: beam.Row(**d))
        broken = p | "Broken" >> beam.Create([BrokenRow()])
        both = (rows, broken) | beam.Flatten()
        assert_that(both | RunInference(handler), check)

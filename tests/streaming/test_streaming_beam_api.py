"""The public Beam API: ``from ae_pipeline.beam import ...`` for every transform a Beam user
needs, loaded lazily; and :class:`ScoreKafkaTopic`, the read-score-write pipeline in one
transform, on the FnApiRunner against the real broker."""

from __future__ import annotations

import doctest
import subprocess
import sys
import uuid

import apache_beam as beam
import kit
import pytest

import ae_pipeline.beam
from ae_pipeline.beam import ScoreKafkaTopic
from ae_pipeline.kafka import committed_offsets, create_topics, end_offsets


def test_every_public_name_imports_from_the_package():
    assert ae_pipeline.beam.__all__ == sorted(ae_pipeline.beam.__all__)
    for name in ae_pipeline.beam.__all__:
        value = getattr(ae_pipeline.beam, name)
        assert value.__name__ == name, name
    namespace: dict = {}
    exec("from ae_pipeline.beam import *", namespace)
    assert set(ae_pipeline.beam.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'FlagAnomaly'"):
        ae_pipeline.beam.FlagAnomaly  # noqa: B018


def test_the_package_docstring_example_runs():
    assert doctest.testmod(ae_pipeline.beam).failed == 0


def test_importing_the_options_does_not_load_the_transforms():
    """The CLIs import ``ae_pipeline.beam.options`` first: the package's names load on use."""
    code = (
        "import sys, ae_pipeline.beam.options; "
        "print(sorted(m for m in sys.modules if m.startswith('ae_pipeline.beam.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "ae_pipeline.beam.transforms" not in out.stdout
    assert "ae_pipeline.beam.kafka_read" not in out.stdout


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"as_messages": False}, "ScoreKafkaTopic sets as_messages itself"),
        ({"output_topic": ""}, "output_topic must be a topic name"),
        ({"max_message_bytes": 10}, "max_message_bytes must be at least"),
        ({"mode": "flags"}, "mode"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_score_kafka_topic_refuses_bad_arguments_at_construction(version_dir, kwargs, says):
    args = {
        "output_topic": "out",
        "dead_letter_topic": "dlq",
        "kafka_config": {"bootstrap.servers": "127.0.0.1:9"},
        "model_version_dir": version_dir,
        **kwargs,
    }
    with pytest.raises(ValueError, match=says):
        ScoreKafkaTopic("in", **args)


@pytest.mark.kafka
@pytest.mark.parametrize("mode", ["flag", "explain"])
def test_score_kafka_topic_scores_a_topic_in_three_lines(
    bootstrap_servers, model_root, beam_options, mode
):
    tag = uuid.uuid4().hex[:8]
    inp, out, dlq, group = f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"g-{tag}"
    config = {"bootstrap.servers": bootstrap_servers}
    create_topics(config, {inp: 2, out: 1, dlq: 1})
    values, n_poison = kit.records_with_poison(120, anomalies=4)
    kit.produce(bootstrap_servers, inp, values)

    with beam.Pipeline(options=beam_options("fnapi")) as p:
        p | ScoreKafkaTopic(
            inp,
            output_topic=out,
            dead_letter_topic=dlq,
            kafka_config={**config, "group.id": group},
            mode=mode,
            model_root=model_root,
            device="cpu",
            read_options={"bounded": True},
        )

    results = kit.read_all(bootstrap_servers, out)
    letters = kit.read_all(bootstrap_servers, dlq)
    assert len(results) == 120 and len(letters) == n_poison
    assert sorted(r["key"] for r in results) == list(range(120))
    if mode == "flag":
        assert sum(r["is_anomaly"] for r in results) >= 4
    else:  # explain: every feature's error and the rank against the calibration histogram
        for r in results:
            assert {"score", "rank", "feature_errors"} <= set(r) and "is_anomaly" not in r
            assert list(r["feature_errors"]) == kit.COLUMNS and 0.0 <= r["rank"] <= 1.0
        assert sum(r["rank"] > 0.99 for r in results) >= 4  # the records moved off the manifold
    assert all(d["reason"] for d in letters)
    # The group's offsets cover the topic: a restart reads nothing again.
    assert committed_offsets({**config, "group.id": group}, inp) == end_offsets(config, inp)

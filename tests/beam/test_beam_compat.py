"""The Beam-version gates (``ae_pipeline.beam.compat``), on both sides: ``make test`` runs this
module with Beam 2.77 (``.venv``) and Beam 2.62 (``.venv-beam-2.62``)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import apache_beam
import pytest

from ae_pipeline.beam import compat

pytestmark = pytest.mark.both_beams


def test_the_gate_agrees_with_what_the_installed_beam_has():
    assert compat._version(apache_beam.__version__) == compat.BEAM_VERSION
    try:
        importlib.import_module("apache_beam.ml.anomaly.detectors.offline")
        importable = True
    except ImportError:
        importable = False
    assert compat.HAS_ML_ANOMALY is importable
    assert compat.HAS_ML_ANOMALY is (compat.BEAM_VERSION >= compat.ML_ANOMALY_SINCE)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("2.62.0", (2, 62, 0)),
        ("2.77.0", (2, 77, 0)),
        ("2.78.0.dev0", (2, 78, 0)),
        ("3.0", (3, 0, 0)),
    ],
)
def test_version_parsing(text, version):
    assert compat._version(text) == version


def test_ae_pipeline_supports_the_installed_beam():
    assert (2, 62, 0) <= compat.BEAM_VERSION < (3, 0, 0)


@pytest.mark.skipif(not compat.HAS_ML_ANOMALY, reason="Beam < 2.64: the other side is tested")
def test_new_beam_side_builds_beams_own_detector(version_dir):
    from apache_beam.ml.anomaly.detectors.offline import OfflineDetector

    from ae_pipeline.beam.anomaly import autoencoder_detector

    compat.require_ml_anomaly("anything")  # no error
    detector = autoencoder_detector(version_dir, device="cpu")
    assert isinstance(detector, OfflineDetector)


@pytest.mark.skipif(compat.HAS_ML_ANOMALY, reason="Beam >= 2.64: the other side is tested")
def test_old_beam_side_says_what_is_missing_and_what_to_use(version_dir):
    from ae_pipeline.beam.anomaly import autoencoder_detector

    with pytest.raises(RuntimeError) as err:
        autoencoder_detector(version_dir, device="cpu")
    message = str(err.value)
    assert "Beam >= 2.64" in message and f"installed Beam is {apache_beam.__version__}" in message
    assert "FlagAnomalies" in message


def test_a_flag_beam_defines_too_breaks_no_pipeline():
    """Beam 2.77 defines --bootstrap_servers (KafkaStreamsRunnerOptions), as our stream job's
    options do: with both imported, every pipeline run failed ("conflicting option string")."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from ae_pipeline.local.runners import runner_args
    from pipelines.stream import StreamOptions

    options = PipelineOptions(["--bootstrap_servers=broker:9093", *runner_args("fnapi")])
    assert options.get_all_options()["bootstrap_servers"] == "broker:9093"
    assert options.view_as(StreamOptions).bootstrap_servers == "broker:9093"
    assert PipelineOptions([]).view_as(StreamOptions).bootstrap_servers is None  # ours
    with apache_beam.Pipeline(options=options) as p:
        assert_that(
            p | apache_beam.Create([1, 2]) | apache_beam.Map(lambda x: x * 2), equal_to([2, 4])
        )


def test_add_pipeline_argument_keeps_beams_flag_in_beams_parser_and_ours_in_a_resolving_one():
    import argparse

    beams = argparse.ArgumentParser()
    beams.add_argument("--shared", default="beam")
    assert compat.add_pipeline_argument(beams, "--shared", default="ours") is None
    assert compat.add_pipeline_argument(beams, "--only_ours", default="x") is not None
    assert beams.parse_args([]).shared == "beam"
    resolving = argparse.ArgumentParser(conflict_handler="resolve")
    resolving.add_argument("--shared", default="beam")
    group = resolving.add_argument_group("ours")
    compat.add_pipeline_argument(group, "--shared", default="ours")
    assert resolving.parse_args([]).shared == "ours"


def test_importing_our_beam_layer_is_quiet_and_leaves_logging_unconfigured(tmp_path):
    """Beam 2.77's ``import apache_beam`` logs "apitools not found..." through the root logger
    when the optional GCP packages are absent (configuring it as a side effect); through
    ``ae_pipeline.beam`` that record is dropped, and only that one."""
    code = (
        "import logging, ae_pipeline.beam, apache_beam; "
        "print(len(logging.getLogger().handlers)); "
        "logging.getLogger('x').warning('still shown')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert "apitools" not in done.stderr
    assert done.stderr.strip() == "still shown"

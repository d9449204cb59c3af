"""What differs between the Apache Beam releases ae-pipeline runs on, decided in one place.

ae-pipeline installs into its user's Beam (``apache-beam>=2.62.0,<3``), so code that a Beam
release may lack asks this module, never ``apache_beam.__version__`` on its own. Each gate is
decided by what the installed Beam *has* (a module that imports), so a backport or a
pre-release gets the right answer; :data:`BEAM_VERSION` is for messages.

Gates:

``HAS_ML_ANOMALY``
    ``apache_beam.ml.anomaly`` (``AnomalyDetection``, ``OfflineDetector``, ``ZScore``...), new
    in Beam 2.64. Without it, :func:`ae_pipeline.beam.anomaly.autoencoder_detector` raises
    :func:`require_ml_anomaly`'s error; ``FlagAnomalies`` and the rest work on every Beam.

:func:`add_pipeline_argument`
    A flag of one of our ``PipelineOptions`` classes that the installed Beam defines too.
    Beam parses every options class of the process with one parser when a pipeline runs
    (``PipelineOptions.get_all_options``), so a flag defined twice fails every pipeline run in
    a process that imported both: Beam 2.77 defines ``--bootstrap_servers``
    (``KafkaStreamsRunnerOptions``), as ``pipelines.stream`` does.

The test suite runs on both sides of every gate: Beam 2.77.0 (``.venv``) and Beam 2.62.0
(``.venv-beam-2.62``), see the README's "Beam versions".
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from typing import Any

import apache_beam

__all__ = [
    "BEAM_VERSION",
    "HAS_ML_ANOMALY",
    "ML_ANOMALY_SINCE",
    "add_pipeline_argument",
    "require_ml_anomaly",
]


def _version(text: str) -> tuple[int, int, int]:
    """``"2.77.0"`` -> ``(2, 77, 0)``; ``"2.78.0.dev0"`` / ``"2.78.0rc1"`` -> ``(2, 78, 0)``."""
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return (*parts, 0, 0, 0)[:3]  # type: ignore[return-value]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


BEAM_VERSION: tuple[int, int, int] = _version(apache_beam.__version__)

ML_ANOMALY_SINCE = (2, 64, 0)
HAS_ML_ANOMALY: bool = _importable("apache_beam.ml.anomaly.detectors.offline")


def require_ml_anomaly(what: str) -> None:
    """Raises ``RuntimeError`` naming ``what`` when the installed Beam has no
    ``apache_beam.ml.anomaly``.

    Raises:
        RuntimeError: says which Beam is installed and what to use instead.
    """
    if not HAS_ML_ANOMALY:
        since = ".".join(map(str, ML_ANOMALY_SINCE[:2]))
        raise RuntimeError(
            f"{what} needs apache_beam.ml.anomaly (Beam >= {since}); the installed Beam is "
            f"{apache_beam.__version__}. Use ae_pipeline.beam.transforms.FlagAnomalies on this "
            "Beam, or build the pipeline with a newer apache-beam."
        )


def add_pipeline_argument(parser: Any, flag: str, **kwargs: Any) -> argparse.Action | None:
    """``parser.add_argument(flag, **kwargs)`` inside a ``PipelineOptions._add_argparse_args``,
    except where the installed Beam defines ``flag`` itself and ``parser`` is Beam's parser of
    every options class: there Beam's definition stays (the value given on the command line is
    the same; ``options.view_as(OurOptions)`` still parses with our definition and default).
    A parser built with ``conflict_handler="resolve"`` (our CLI's) takes our definition.

    ``parser`` may be an argument group (it shares its parser's flags).
    """
    if flag in parser._option_string_actions and parser.conflict_handler != "resolve":
        return None
    return parser.add_argument(flag, **kwargs)

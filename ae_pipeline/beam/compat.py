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

:func:`default_job_server_timeout_s`
    Beam's own default of ``--job_server_timeout``: 60 s up to some release, 300 s in Beam
    2.77. The portable runner also uses it as the deadline of a job's state and message
    streams, so ``ae_pipeline.beam.options.keep_watching_streaming_jobs`` raises it for
    streaming jobs whose user left it at the default (a fixed 60 missed 2.77's 300: streaming
    jobs on Prism died after five minutes).

:func:`add_pipeline_argument`
    A flag of one of our ``PipelineOptions`` classes that the installed Beam defines too.
    Beam parses every options class of the process with one parser when a pipeline runs
    (``PipelineOptions.get_all_options``), so a flag defined twice fails every pipeline run in
    a process that imported both: Beam 2.77 defines ``--bootstrap_servers``
    (``KafkaStreamsRunnerOptions``), as ``pipelines.stream`` does.

Importing this module imports Beam, quietly (:func:`_import_beam_quietly`); ``ae_pipeline.beam``
imports it first, so our commands start without Beam 2.77's import-time warning about the
optional GCP client (``apitools not found, and bigquery client libraries are not available...``,
logged through the root logger, which also configured the root logger as a side effect).

The test suite runs on both sides of every gate: Beam 2.77.0 (``.venv``) and Beam 2.62.0
(``.venv-beam-2.62``), see the README's "Beam versions".
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import re
import sys
from typing import Any

_BEAM_IMPORT_NOISE = "apitools not found, and bigquery client libraries are not available"


class _DropBeamImportNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _BEAM_IMPORT_NOISE not in record.getMessage()


class _AsIfUnconfigured(logging.Handler):
    """While no handler is configured: what logging does then (its last-resort handler), without
    ``logging.warning``'s side effect of configuring the root logger (``basicConfig``)."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.lastResort is not None:
            logging.lastResort.handle(record)


def _import_beam_quietly() -> None:
    """Imports ``apache_beam`` dropping exactly its import-time apitools warning (Beam 2.77
    logs it whenever the optional ``apache-beam[gcp]`` packages are absent; it says nothing
    about the run). Every other record goes where it would have gone."""
    if "apache_beam" in sys.modules:
        return
    root = logging.getLogger()
    drop = _DropBeamImportNoise()
    stand_in = None if root.handlers else _AsIfUnconfigured()
    root.addFilter(drop)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        import apache_beam  # noqa: F401
    finally:
        root.removeFilter(drop)
        if stand_in is not None:
            root.removeHandler(stand_in)


_import_beam_quietly()

import apache_beam  # noqa: E402

__all__ = [
    "BEAM_VERSION",
    "HAS_ML_ANOMALY",
    "ML_ANOMALY_SINCE",
    "add_pipeline_argument",
    "default_job_server_timeout_s",
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


@functools.cache
def default_job_server_timeout_s() -> int:
    """The installed Beam's default ``--job_server_timeout`` (seconds)."""
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

    return PipelineOptions([]).view_as(PortableOptions).job_server_timeout

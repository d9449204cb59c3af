"""Pipeline options for the Beam runners that run here without a cluster or a network.

=========  ==============================================================================
name       what runs
=========  ==============================================================================
fnapi      FnApiRunner, in-process, batch only (``--streaming`` is ignored by it).
prism      Prism (Beam's Go portable runner) built by ``make setup``; real streaming:
           windows fire while an unbounded source is still running.
flink      FlinkRunner on an embedded Flink 1.19 mini cluster (``--flink_master=[local]``),
           the job server from the Maven classpath ``make setup`` resolved; LOOPBACK
           SDK harness, so no Docker.
=========  ==============================================================================

Example:
    >>> from ae_pipeline.local.runners import runner_args
    >>> runner_args("fnapi")
    ['--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner']
"""

from __future__ import annotations

from ae_pipeline.local.paths import launcher_jar, prism_binary

RUNNERS = ("fnapi", "prism", "flink")

FNAPI_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def runner_args(name: str, *, streaming: bool = False, parallelism: int = 1) -> list[str]:
    """Command-line style Beam options selecting the named local runner.

    Args:
        name: one of :data:`RUNNERS`.
        streaming: add ``--streaming`` (refused for ``fnapi``, which would ignore it).
        parallelism: Flink parallelism.

    Raises:
        ValueError: for an unknown runner name, or streaming on fnapi.
        ae_pipeline.local.paths.LocalToolMissing: when the runner's binary or jars are missing.
    """
    if name == "fnapi":
        if streaming:
            raise ValueError(
                "FnApiRunner ignores --streaming (windows fire only when the source ends); "
                "use runner 'prism' or 'flink' for streaming"
            )
        return [f"--runner={FNAPI_RUNNER}"]
    if name == "prism":
        args = [
            "--runner=PrismRunner",
            f"--prism_location={prism_binary()}",
            "--environment_type=LOOPBACK",
        ]
    elif name == "flink":
        args = [
            "--runner=FlinkRunner",
            "--flink_master=[local]",
            f"--flink_job_server_jar={launcher_jar('flink')}",
            "--environment_type=LOOPBACK",
            f"--parallelism={parallelism}",
        ]
    else:
        raise ValueError(f"unknown runner {name!r}; choose one of {', '.join(RUNNERS)}")
    if not streaming:
        return args
    # Imported here: this module stays importable without loading Beam (the test session's
    # conftest imports it).
    from ae_pipeline.beam.options import STREAMING_JOB_SERVER_TIMEOUT_S

    return [*args, "--streaming", f"--job_server_timeout={STREAMING_JOB_SERVER_TIMEOUT_S}"]


def pipeline_options(name: str, *, streaming: bool = False, **extra: object):
    """:class:`apache_beam.options.pipeline_options.PipelineOptions` for the named runner.

    ``extra`` keyword options are passed through to PipelineOptions.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(runner_args(name, streaming=streaming), **extra)

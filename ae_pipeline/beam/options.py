"""Pipeline options shared by the jobs in ``pipelines/``.

Beam registers every :class:`PipelineOptions` subclass globally and parses all of them together,
so a flag may be defined by one class only, and no flag may be argparse-``required`` (another
job's run would demand it). The jobs' own option classes inherit these shared ones and check
what they need themselves, with a message naming the flag.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions

from ae_pipeline.local.runners import STREAMING_JOB_SERVER_TIMEOUT_S

TRUE_WORDS = frozenset({"true", "yes", "y", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "n", "off", "0"})


def parse_bool(text: str | bool) -> bool:
    """``true``/``false`` (any case; also yes/no, y/n, on/off, 1/0) as a bool.

    Raises:
        argparse.ArgumentTypeError: for any other word (argparse reports it with the flag).
    """
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(
        f"expected true or false (also yes/no, on/off, 1/0), got {text!r}"
    )


def parse_bool_or_auto(text: str | bool | None) -> bool | None:
    """:func:`parse_bool`, or None for ``auto`` (the program decides)."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        return parse_bool(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected true, false or auto (also yes/no, on/off, 1/0), got {text!r}"
        ) from None


def add_switch(
    parser: Any, flag: str, *, default: bool | None = False, help: str | None = None
) -> None:
    """Add an on/off option that takes ``--flag``, ``--flag=true`` and ``--flag=false``.

    Dataflow Flex Templates (and many launchers) pass every parameter as ``--name=value``, which
    an argparse ``store_true`` option refuses; this one takes both forms. ``parser`` is an
    ``argparse`` parser or argument group - a plain one (``pipelines/consume.py``) or the one
    Beam hands to ``PipelineOptions._add_argparse_args``. The parsed value is a ``bool``; with
    ``default=None`` the switch also takes ``--flag=auto`` (the default), parsed as None.
    """
    if not flag.startswith("--"):
        raise ValueError(f"a switch is a long option like --name, not {flag!r}")
    auto = default is None
    parser.add_argument(
        flag,
        nargs="?",
        const=True,
        default=default,
        type=parse_bool_or_auto if auto else parse_bool,
        metavar="true|false|auto" if auto else "true|false",
        help=f"{help or ''} (default {'auto' if auto else str(default).lower()}; "
        f"{flag} alone: true)".strip(),
    )


class ModelLocationOptions(PipelineOptions):
    """Where the model comes from (or goes to), and the device it runs on."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("model location")
        g.add_argument(
            "--model_root",
            default=None,
            help="registry root: training publishes here, scoring follows its newest version",
        )
        g.add_argument(
            "--model_version_dir", default=None, help="use exactly this model version directory"
        )
        g.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")


class ParquetInputOptions(PipelineOptions):
    """Historical Parquet input of the batch jobs."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("Parquet input")
        g.add_argument("--input", default=None, help="Parquet file, glob or directory")
        g.add_argument("--key_column", default=None, help="passed through; split by its hash")
        g.add_argument("--block_rows", type=int, default=65536, help="rows per Beam element")


def require(value, flag: str, what: str):
    """Return ``value`` or raise a ValueError telling the user which flag to set."""
    if value in (None, ""):
        raise ValueError(f"missing --{flag}: {what}")
    return value


def exit_with_help_if_asked(argv: list[str] | None, options_class: type, prog: str, doc: str):
    """Print the job's own options (not only Beam's) for ``-h``/``--help``, then exit 0.

    ``PipelineOptions(argv)`` would print an empty usage; this lists every flag of
    ``options_class`` and of the option classes it inherits, with their help text.
    """
    import argparse
    import sys

    if not argv or not {"-h", "--help"} & set(argv):
        return
    parser = argparse.ArgumentParser(
        prog=prog,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Plus any Beam pipeline option (--runner, --streaming, --temp_location, ...).",
    )
    for cls in reversed(options_class.mro()):
        if "_add_argparse_args" in cls.__dict__ and cls is not PipelineOptions:
            cls._add_argparse_args(parser)
    parser.print_help()
    sys.exit(0)


def read_json_config(path: str, flag: str = "--kafka_config") -> dict[str, Any]:
    """The JSON object in the file at ``path``, read through Beam's ``FileSystems``: a local
    path, ``gs://``, ``s3://``, ``hdfs://``, ... - any scheme whose Beam filesystem is installed.

    Meant for files of secrets (``--kafka_config``: SASL passwords, SSL keys): no error message
    or log line carries the file's content, only its path and what is wrong with it.

    Raises:
        ValueError: the path's scheme has no Beam filesystem here, the file cannot be read, or it
            is not a JSON object. The message names ``flag`` and the path.
    """
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        raise ValueError(
            f"{flag} {path}: no Beam filesystem for this path's scheme here (local paths, and "
            "gs:// with apache-beam[gcp], s3:// with apache-beam[aws], ... installed)"
        ) from None
    try:
        with FileSystems.open(path) as f:
            data = f.read()
    except Exception as e:  # BeamIOError, OSError, the filesystem's own errors
        # Raised before any content is read: the message has the path and the OS's reason.
        raise ValueError(f"{flag} {path}: cannot read it: {e}") from None
    try:
        config = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if hasattr(e, "lineno") else ""
        raise ValueError(f"{flag} {path}: not a JSON file{where}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{flag} {path}: expected a JSON object, got {type(config).__name__}")
    return config


_BEAM_DEFAULT_JOB_SERVER_TIMEOUT_S = 60


def keep_watching_streaming_jobs(options: PipelineOptions) -> None:
    """Raises ``--job_server_timeout`` for a ``--streaming`` job whose user left Beam's default.

    Beam's portable runner (2.62 and 2.70 alike) uses it (default 60 s) as the gRPC deadline of
    the job's state and message streams too, so ``wait_until_finish()`` on a job that runs
    longer fails after a minute with DEADLINE_EXCEEDED, and with LOOPBACK workers the job dies
    with its driver (Prism, the portable Flink runner). A streaming job runs until cancelled.
    """
    portable = options.view_as(PortableOptions)
    if (
        options.view_as(StandardOptions).streaming
        and portable.job_server_timeout == _BEAM_DEFAULT_JOB_SERVER_TIMEOUT_S
    ):
        portable.job_server_timeout = STREAMING_JOB_SERVER_TIMEOUT_S

"""Pipeline options shared by the jobs in ``pipelines/``.

Beam registers every :class:`PipelineOptions` subclass globally and parses all of them together,
so a flag may be defined by one class only, and no flag may be argparse-``required`` (another
job's run would demand it). The jobs' own option classes inherit these shared ones and check
what they need themselves, with a message naming the flag.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions


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

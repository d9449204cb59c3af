"""Pipeline options shared by the jobs in ``pipelines/``.

Beam registers every :class:`PipelineOptions` subclass globally and parses all of them together,
so a flag may be defined by one class only, and no flag may be argparse-``required`` (another
job's run would demand it). The jobs' own option classes inherit these shared ones and check
what they need themselves, with a message naming the flag.

Beam's own parsing drops an option it does not know (``--epohcs 2`` would train the default
epochs). :func:`parse_options` is the commands' front door instead: ``--help`` with every
default, and an unknown option, an abbreviation or an option of another command refused with
a :class:`UsageError` naming the closest valid one, while Beam's options (``--runner``,
``--temp_location``, ...) pass. :func:`run_command` turns a :class:`UsageError` into one line on
stderr and exit status 2 (``--log_level DEBUG`` adds the traceback); :func:`configure_logging`
keeps Beam's INFO chatter out of a successful run.

Size (over 500 lines): every job's option classes, which Beam registers and parses
together, and the one-line usage errors for them; splitting them would scatter one parser.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions

from ae_pipeline.beam.compat import default_job_server_timeout_s

# Beam's portable runner uses --job_server_timeout (default 60 s; 300 s in 2.77) as the deadline
# of the job's state and message streams: a streaming job watched longer than that dies with its
# driver. Streaming jobs get ten years (see keep_watching_streaming_jobs).
STREAMING_JOB_SERVER_TIMEOUT_S = 10 * 365 * 24 * 3600


class UsageError(ValueError):
    """A mistake the user can fix on the command line; the message is one line saying what is
    wrong and what to change. The commands print it as ``PROG: error: MESSAGE`` and exit 2."""


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


class LabelOptions(PipelineOptions):
    """A label column of the Parquet input (``train``: supervised fine-tuning; ``score``:
    evaluation). Defined once here: Beam parses every job's options together."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--label_column",
            default=None,
            help="integer labels (train: classes for supervised fine-tuning; score: 1 for an "
            "anomaly, 0 for normal, to evaluate); never a feature",
        )


class ScoringOptions(PipelineOptions):
    """How records are flagged, shared by ``stream`` and ``score`` (Beam parses every job's
    options together, so each flag is defined by one class only)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("flagging")
        g.add_argument(
            "--threshold",
            type=float,
            default=None,
            help="override the model's calibrated threshold (default: the model's)",
        )
        g.add_argument("--top_k", type=int, default=5, help="contributions per flag (0: all)")


class ParquetOutputOptions(PipelineOptions):
    """Where a batch job writes its Parquet output (``encode``, ``score``)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--output", default=None, help="output directory (required)")


def require(value, flag: str, what: str):
    """Return ``value`` or raise a :class:`UsageError` telling the user which flag to set."""
    if value in (None, ""):
        raise UsageError(f"missing --{flag}: {what}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Loggers that narrate a healthy run (type hints, runner stages, worker start-up): WARNING and
# above only, unless the user asks for DEBUG.
CHATTY_LOGGERS = ("apache_beam", "kafka", "urllib3", "fsspec", "matplotlib", "PIL")


class LoggingOptions(PipelineOptions):
    """``--log_level``: the root log level of a command (and when its tracebacks show)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--log_level",
            default="INFO",
            type=str.upper,
            choices=LOG_LEVELS,
            help="DEBUG also shows Beam's own INFO lines and the traceback of a usage error",
        )


class _QuietBeam(logging.Filter):
    """Drops Beam's records below WARNING, including those Beam logs through the root logger
    (``Missing pipeline option (runner)...``)."""

    _marker = f"{os.sep}apache_beam{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        # Beam's Cython-compiled modules log with a relative path: apache_beam/runners/....
        path = os.sep + (record.pathname or "")
        return record.levelno >= logging.WARNING or self._marker not in path


def configure_logging(level: str | int = "INFO", *, fmt: str | None = None) -> None:
    """Log to stderr at ``level``; Beam's and Kafka's chatty loggers at WARNING unless DEBUG.

    Guarantees that a successful run at INFO shows only this program's own progress lines
    (and any warning); DEBUG shows everything.
    """
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    logging.basicConfig(
        level=level, format=fmt or "%(levelname)s %(name)s: %(message)s", force=True
    )
    debug = level <= logging.DEBUG
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    if not debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietBeam())


def requested_log_level(argv: list[str] | None) -> str:
    """The ``--log_level`` that ``argv`` asks for (either spelling, any case); INFO when none
    or not a valid level (the option parser then names the mistake)."""
    argv = list(argv or [])
    level = "INFO"
    for i, arg in enumerate(argv):
        if arg.startswith("--log_level="):
            level = arg.split("=", 1)[1]
        elif arg == "--log_level" and i + 1 < len(argv):
            level = argv[i + 1]
    return level.upper() if level.upper() in LOG_LEVELS else "INFO"


def report_usage_error(prog: str, error: BaseException, argv: list[str] | None) -> int:
    """Print ``PROG: error: MESSAGE`` (one line) on stderr; the traceback too with
    ``--log_level DEBUG``. Returns the exit status 2."""
    if requested_log_level(argv) == "DEBUG":
        traceback.print_exception(error, file=sys.stderr)
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def run_command(prog: str, body: Callable[[list[str]], int], argv: list[str] | None) -> int:
    """Run a command's ``body(argv)``; a :class:`UsageError` becomes one line and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return body(argv)
    except UsageError as error:
        return report_usage_error(prog, error, argv)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and appends ``(default: ...)`` to each option whose
    help does not already state its default (None and empty defaults are not shown)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.option_strings
            and "default" not in text
            and action.default not in (None, "", argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


class _StrictParser(argparse.ArgumentParser):
    """A parser whose errors raise :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message):
        raise UsageError(message)


class StrictArgumentParser(_StrictParser):
    """``argparse`` for a command not built on PipelineOptions (``ae-pipeline demo``).

    Guarantees: ``--help`` shows every option's default; an unknown option or an abbreviation
    is refused naming the closest valid one, and any parse error raises :class:`UsageError`
    (one line) instead of printing usage and exiting.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        _show_defaults(self)
        return super().format_help()

    def parse_args(self, args=None, namespace=None):
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            own = {s for s in self._option_string_actions if s.startswith("--")}
            raise UsageError(_unknown_message(unknown, own, own, self.prog))
        return namespace


def help_parser(
    options_class: type, prog: str, doc: str | None, *, epilog: str | None = None
) -> argparse.ArgumentParser:
    """A parser of ``options_class``'s own flags (and those it inherits from our option
    classes), for ``--help``: every flag with its help and default."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=doc,
        formatter_class=HelpFormatter,
        epilog=epilog
        or "Plus any Beam pipeline option (--runner, --temp_location, --direct_num_workers, ...).",
    )
    for cls in _own_classes(options_class):
        cls._add_argparse_args(parser)
    _show_defaults(parser)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give options without help a ``(default: ...)`` line: argparse prints nothing after an
    option whose help is None, so :class:`HelpFormatter` would never see it."""
    for action in parser._actions:
        if action.help is None and action.default not in (None, "", argparse.SUPPRESS):
            action.help = "(default: %(default)s)"


def _own_classes(options_class: type) -> list[type]:
    return [
        cls
        for cls in reversed(options_class.mro())
        if "_add_argparse_args" in cls.__dict__ and cls is not PipelineOptions
    ]


def _is_ours(cls: type) -> bool:
    module = cls.__module__ or ""
    return module == "__main__" or module.split(".")[0] in ("ae_pipeline", "pipelines")


def _accepting_parser(options_class: type, prog: str) -> tuple[argparse.ArgumentParser, set[str]]:
    """A parser of Beam's (and third-party plugins') options plus ``options_class``'s own, and
    the set of ``options_class``'s own flags. Options of our other commands are left out."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    class Parser(_StrictParser, _BeamArgumentParser):
        pass

    # "resolve": where a Beam class defines one of our flags (Beam 2.77's
    # KafkaStreamsRunnerOptions has --bootstrap_servers), our definition replaces it here, as
    # Beam's own parsing lets both classes read the one value.
    parser = Parser(prog=prog, allow_abbrev=False, add_help=False, conflict_handler="resolve")
    own = _own_classes(options_class)
    others: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():  # the same classes Beam parses
        if not _is_ours(cls):
            others[str(cls)] = cls
    for cls in others.values():
        cls._add_argparse_args(parser)
    before = set(parser._option_string_actions)
    for cls in own:
        cls._add_argparse_args(parser)
    return parser, set(parser._option_string_actions) - before


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _unknown_message(unknown: list[str], own: set[str], known: set[str], prog: str) -> str:
    flags = [
        a.split("=", 1)[0] for a in unknown if a.startswith("-") and not _NEGATIVE_NUMBER.match(a)
    ]
    if not flags:
        return (
            f"unexpected argument {unknown[0]!r} (options are written --name=value); "
            f"see {prog} --help"
        )
    parts = []
    for flag in dict.fromkeys(flags):
        close = difflib.get_close_matches(flag, sorted(own), n=1, cutoff=0.6) or (
            difflib.get_close_matches(flag, sorted(known), n=1, cutoff=0.75)
        )
        parts.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
    noun = "option" if len(parts) == 1 else "options"
    return f"unrecognized {noun} {', '.join(parts)}; see {prog} --help"


# Options of the Java side of Beam's Flink runner (FlinkPipelineOptions at Beam 2.62, in
# Python's spelling): Beam passes flags that Python does not define on to the Java job server,
# so a job that may run on Flink accepts these too. tests/test_cli_options.py checks the list
# against the getters of FlinkPipelineOptions in the Flink runner jar.
FLINK_JAVA_FLAGS = frozenset(
    "--" + name
    for name in (
        "allow_non_restored_state",
        "attached_mode",
        "auto_watermark_interval",
        "checkpoint_timeout_millis",
        "checkpointing_interval",
        "checkpointing_mode",
        "disable_metrics",
        "enable_stable_input_drain",
        "execution_mode_for_batch",
        "execution_retry_delay",
        "fail_on_checkpointing_errors",
        "faster_copy",
        "file_input_split_max_size_m_b",
        "finish_bundle_before_checkpointing",
        "flink_conf_dir",
        "force_unaligned_checkpoint_enabled",
        "job_check_interval_in_secs",
        "latency_tracking_interval",
        "max_bundle_size",
        "max_bundle_time_mills",
        "min_pause_between_checkpoints",
        "num_concurrent_checkpoints",
        "number_of_execution_retries",
        "object_reuse",
        "operator_chaining",
        "re_iterable_group_by_key_result",
        "report_checkpoint_duration",
        "retain_externalized_checkpoints_on_cancellation",
        "savepoint_path",
        "shutdown_sources_after_idle_ms",
        "state_backend",
        "state_backend_factory",
        "state_backend_storage_path",
        "unaligned_checkpoint_enabled",
        "use_data_stream_for_batch",
    )
)


def _without_flags(argv: list[str], flags: frozenset[str]) -> list[str]:
    """``argv`` less the given flags (``--f=v``, ``--f v`` or a bare switch ``--f``)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.split("=", 1)[0] in flags:
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            skip = "=" not in arg and not following.startswith("--")
            continue
        out.append(arg)
    return out


def parse_options(
    argv: list[str] | None,
    options_class: type,
    prog: str,
    doc: str | None = None,
    *,
    java_flags: frozenset[str] = frozenset(),
) -> PipelineOptions:
    """The command's options from ``argv``, checked before any work starts.

    ``-h``/``--help`` prints ``options_class``'s flags with their defaults and exits 0. Beam's
    own options (``--runner``, ``--temp_location``, ...) and those of installed Beam plugins
    pass; any other option, an abbreviation, or an option of another ``ae-pipeline`` command is
    refused, naming it and the closest valid one.

    ``java_flags``: options defined only on the Java side of a runner (e.g.
    :data:`FLINK_JAVA_FLAGS`), accepted and passed on as Beam does.

    Raises:
        UsageError: an unknown option, a stray argument, or a value argparse cannot take (one
            line, naming the option).
    """
    argv = list(argv or [])
    if {"-h", "--help"} & set(argv):
        help_parser(options_class, prog, doc).print_help()
        sys.exit(0)
    parser, own = _accepting_parser(options_class, prog)
    _, unknown = parser.parse_known_args(_without_flags(argv, java_flags))
    if unknown:
        known = {s for s in parser._option_string_actions if s.startswith("--")} | java_flags
        raise UsageError(_unknown_message(unknown, own, known, prog))
    return PipelineOptions(argv)


def given_options(argv: list[str] | None, options_class: type) -> set[str]:
    """The destinations (``epochs``, ``hidden_dims``, ...) of ``options_class``'s own flags that
    ``argv`` sets explicitly, whatever the value (a default repeated on the command line
    counts as given)."""
    parser = _StrictParser(allow_abbrev=False, add_help=False)
    for cls in _own_classes(options_class):
        cls._add_argparse_args(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(list(argv or []))
    return set(vars(namespace))


def exit_with_help_if_asked(argv: list[str] | None, options_class: type, prog: str, doc: str):
    """Print the job's own options (not only Beam's) for ``-h``/``--help``, then exit 0.

    ``PipelineOptions(argv)`` would print an empty usage; this lists every flag of
    ``options_class`` and of the option classes it inherits, with their help text and default.
    (:func:`parse_options` does this and refuses unknown options too.)
    """
    if not argv or not {"-h", "--help"} & set(argv):
        return
    help_parser(options_class, prog, doc).print_help()
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


def keep_watching_streaming_jobs(options: PipelineOptions) -> None:
    """Raises ``--job_server_timeout`` for a ``--streaming`` job whose user left Beam's default.

    Beam's portable runner (2.62 to 2.77 alike) uses it (default 60 s, 300 s in Beam 2.77: see
    ``ae_pipeline.beam.compat.default_job_server_timeout_s``) as the gRPC deadline of
    the job's state and message streams too, so ``wait_until_finish()`` on a job that runs
    longer fails after a minute with DEADLINE_EXCEEDED, and with LOOPBACK workers the job dies
    with its driver (Prism, the portable Flink runner). A streaming job runs until cancelled.
    """
    portable = options.view_as(PortableOptions)
    if (
        options.view_as(StandardOptions).streaming
        and portable.job_server_timeout == default_job_server_timeout_s()
    ):
        portable.job_server_timeout = STREAMING_JOB_SERVER_TIMEOUT_S

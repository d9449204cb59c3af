"""The ``ae-pipeline`` command line: one entry point for the runnable jobs in ``pipelines/``.

    ae-pipeline train   --input data/ --model_root models/ [Beam options]
    ae-pipeline encode  --input data/ --model_root models/ --output codes/
    ae-pipeline score   --input data/ --model_root models/ --output flags/ [--label_column y]
    ae-pipeline stream  --mode flag --bootstrap_servers ... [Beam options]
    ae-pipeline consume --mode flag --bootstrap_servers ...
    ae-pipeline retrain-on-drift --drift_topic ae-drift ... -- ae-pipeline train ...
    ae-pipeline demo

``ae-pipeline COMMAND --help`` lists a command's options (with their defaults). A mistake on
the command line (an unknown option, a value out of range) is one line on stderr,
``ae-pipeline COMMAND: error: ...``, and exit status 2, before any work starts; ``--log_level
DEBUG`` adds its traceback.
"""

from __future__ import annotations

import difflib
import importlib
import sys

COMMANDS = {
    "train": ("pipelines.train", "batch-train on Parquet and publish a model version"),
    "encode": ("pipelines.encode", "write latent codes (and errors) of a Parquet dataset"),
    "score": (
        "pipelines.score",
        "flag a Parquet dataset: score, threshold, is_anomaly, contributions "
        "(and evaluate with --label_column)",
    ),
    "stream": (
        "pipelines.stream",
        "streaming Beam job: score Kafka records in any output mode (flag, explain, encode, ...)",
    ),
    "consume": ("pipelines.consume", "the same scoring as a plain Kafka consumer group"),
    "retrain-on-drift": (
        "pipelines.retrain_on_drift",
        "start a retraining run for each drift event of the drift topic",
    ),
    "demo": ("pipelines.demo", "the whole loop on local defaults"),
}


def usage() -> str:
    lines = ["usage: ae-pipeline COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "ae-pipeline COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from ae_pipeline import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" ({', '.join(COMMANDS)})"
        print(
            f"ae-pipeline: error: unknown command {command!r}{hint}; see ae-pipeline --help",
            file=sys.stderr,
        )
        return 2
    from ae_pipeline.beam.options import UsageError, report_usage_error

    module = importlib.import_module(COMMANDS[command][0])
    try:
        status = module.main(rest)
    except UsageError as error:  # a command whose main() does not report it itself
        return report_usage_error(f"ae-pipeline {command}", error, rest)
    return status if isinstance(status, int) else 0  # stream returns its PipelineResult


if __name__ == "__main__":
    sys.exit(main())

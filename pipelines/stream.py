"""Streaming Beam job: Kafka records in, encoded / denoised / flagged records out.

    python -m pipelines.stream --mode flag \\
        --bootstrap_servers 127.0.0.1:9092 --input_topic events \\
        --output_topic scores --dead_letter_topic events-dlq \\
        --model_root models/ --model_poll_interval_s 30 \\
        --runner PrismRunner --streaming [--prism_location ...]

Runs :class:`ae_pipeline.beam.ScoreKafkaTopic`: reads the input topic with
:class:`ae_pipeline.beam.kafka_read.ReadKafkaRecords` (a splittable DoFn over partitions; one
list of records per poll), scores each poll's list with
:class:`ae_pipeline.beam.transforms.ScoreRecords` (the same scoring as the plain consumer),
and writes results and dead letters with :class:`~ae_pipeline.beam.kafka_write.WriteKafkaRecords`
as the messages of :func:`ae_pipeline.serving.to_messages`. With ``--model_root`` it follows the
newest published version without a restart. The consumer group's offsets are committed by the
read's bundle finalizer, once the runner has made the bundle's outputs durable.

``--bounded`` / ``--max_seconds`` / ``--max_records_per_partition`` make the read bounded, for
batch-style runs.

Whatever bytes a record holds, the worst it earns is a dead letter, and no output message is
over ``--max_message_bytes``; the rest of its batch is written and committed. A failure that is
not a record's fault (no model can be loaded, the broker is down, a topic is missing, writing is
not authorised) fails the bundle: nothing of it is committed. Options are checked before the
pipeline is built: a mistake is one line naming the option, and exit code 2.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from ae_pipeline.beam.compat import add_pipeline_argument
from ae_pipeline.beam.drift import MonitorScoreDrift
from ae_pipeline.beam.kafka_scoring import ScoreKafkaTopic
from ae_pipeline.beam.options import (
    FLINK_JAVA_FLAGS,
    ModelLocationOptions,
    ScoringOptions,
    UsageError,
    add_switch,
    keep_watching_streaming_jobs,
    parse_options,
    read_json_config,
    run_command,
)
from ae_pipeline.kafka import CLIENTS, DEFAULT_CLIENT, KafkaConfig
from ae_pipeline.kafka.client import producer_limit
from ae_pipeline.serving import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MESSAGE_KEY,
    MESSAGE_KEYS,
    ServingError,
    check_max_message_bytes,
    check_passthrough,
    describe_modes,
    get_mode,
    mode_names,
)
from pipelines.drift_options import add_drift_options, drift_limits

PROG = "ae-pipeline stream"


class StreamOptions(ScoringOptions, ModelLocationOptions, PipelineOptions):
    """Options of the streaming scoring job (plus every Beam pipeline option); ``--top_k`` and
    ``--threshold`` come from :class:`ScoringOptions` (shared with ``ae-pipeline score``)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        g = parser.add_argument_group("scoring")
        g.add_argument(
            "--mode",
            default="flag",
            choices=mode_names(),
            help=describe_modes(),
        )
        g.add_argument(
            "--model_poll_interval_s",
            type=float,
            default=30.0,
            help="seconds between checks for a newer version (with --model_root)",
        )
        g.add_argument(
            "--passthrough",
            default="",
            help="comma list of record fields to copy into each result (not one of the "
            "result's own fields: key, model_version, topic, partition, offset, ...)",
        )
        g.add_argument(
            "--torch_threads",
            type=int,
            default=0,
            help="torch intra-op CPU threads per worker process (0: torch's default, one per "
            "core; 1-2 usually score small batches faster on busy workers)",
        )
        g = parser.add_argument_group("Kafka")
        # Not argparse-required: PipelineOptions subclasses register globally, and a required
        # option would break every other pipeline built in the same process.
        # Beam 2.77 defines --bootstrap_servers too (see ae_pipeline.beam.compat).
        add_pipeline_argument(
            g, "--bootstrap_servers", default=None, help="host:port[,...] (required)"
        )
        g.add_argument("--input_topic", default=None, help="records to score (required)")
        g.add_argument("--output_topic", default=None, help="where results go (required)")
        g.add_argument(
            "--dead_letter_topic", default=None, help="where rejected records go (required)"
        )
        g.add_argument(
            "--group_id",
            default="ae-pipeline-stream",
            help="consumer group whose offsets the read commits (and starts from)",
        )
        g.add_argument(
            "--start",
            default="committed",
            choices=["committed", "earliest", "latest"],
            help="where to start reading (committed: the group's offsets, else earliest)",
        )
        g.add_argument(
            "--kafka_client",
            "--client",
            dest="kafka_client",
            default=DEFAULT_CLIENT,
            choices=CLIENTS,
            help="Kafka client library (--client: the same, as ae-pipeline consume names it)",
        )
        g.add_argument(
            "--kafka_config",
            default=None,
            help="JSON file of extra KafkaConfig settings (security; never logged): a local "
            "path or any Beam filesystem path (gs://, s3://, ...)",
        )
        g.add_argument(
            "--max_batch_size",
            "--max_batch",
            dest="max_batch_size",
            type=int,
            default=500,
            help="records per poll (--max_batch: the same, as ae-pipeline consume names it)",
        )
        g.add_argument(
            "--poll_timeout_s",
            type=float,
            default=0.5,
            help="seconds one poll of a partition waits for records (more than 0)",
        )
        g.add_argument(
            "--max_message_bytes",
            type=int,
            default=DEFAULT_MAX_MESSAGE_BYTES,
            help="most bytes of one output message (key + value + headers): a dead letter's "
            "original value is cut to fit (its length and SHA-256 kept), a larger result "
            "becomes a 'too_large' dead letter; keep it under the producer's "
            "message.max.bytes / max.request.size and the output topics' max.message.bytes "
            "(default %(default)s fits Kafka's 1 MB defaults)",
        )
        g.add_argument(
            "--message_key",
            default=DEFAULT_MESSAGE_KEY,
            choices=MESSAGE_KEYS,
            help="a result's message key: the input message's key (input: results and dead "
            "letters join, and are partitioned, like the input) or the record's key field "
            "(record)",
        )
        g.add_argument(
            "--max_bundle_seconds",
            type=float,
            default=1.0,
            help="a partition's read checkpoints (and commits) at least this often",
        )
        g = parser.add_argument_group("bounded runs")
        add_switch(g, "--bounded", help="stop at the end offsets seen at start")
        g.add_argument("--max_seconds", type=float, default=None, help="stop after this long")
        g.add_argument(
            "--max_records_per_partition", type=int, default=None, help="stop after N offsets"
        )
        add_drift_options(parser, streaming=True)


def _kafka_config(opts: StreamOptions) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if opts.kafka_config:
        config.update(read_json_config(opts.kafka_config))
    config.update({"bootstrap.servers": opts.bootstrap_servers, "group.id": opts.group_id})
    return config


_REQUIRED = {
    "bootstrap_servers": "the Kafka brokers, host:port[,...]",
    "input_topic": "the topic of the records to score",
    "output_topic": "the topic results go to",
    "dead_letter_topic": "the topic rejected records go to",
    "group_id": "the consumer group whose offsets the job commits",
}


def check_options(opts: StreamOptions) -> tuple[str, ...]:
    """Checks the job's options before anything starts; returns the passthrough fields.

    Raises:
        UsageError: one line naming the option that cannot work and what to give instead.
    """
    for name, what in _REQUIRED.items():
        if not getattr(opts, name):
            raise UsageError(f"missing --{name}: {what}")
    if (opts.model_root is None) == (opts.model_version_dir is None):
        raise UsageError("give exactly one of --model_root and --model_version_dir")
    at_least = {
        "top_k": (opts.top_k, 0, "0: all contributions"),
        "torch_threads": (opts.torch_threads, 0, "0: torch's default"),
        "max_batch_size": (opts.max_batch_size, 1, "records per poll"),
        "max_records_per_partition": (opts.max_records_per_partition, 1, "or leave it out"),
    }
    for name, (value, low, hint) in at_least.items():
        if value is not None and value < low:
            raise UsageError(f"--{name} must be {low} or more ({hint}), got {value}")
    positive = {
        "poll_timeout_s": opts.poll_timeout_s,
        "max_bundle_seconds": opts.max_bundle_seconds,
        "model_poll_interval_s": opts.model_poll_interval_s,
        "max_seconds": opts.max_seconds,
    }
    for name, value in positive.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name} must be a number of seconds above 0, got {value}")
    if opts.threshold is not None and not math.isfinite(opts.threshold):
        raise UsageError(f"--threshold must be a finite number, got {opts.threshold}")
    _check_drift(opts)
    try:
        check_max_message_bytes(opts.max_message_bytes)
        return check_passthrough([f for f in opts.passthrough.split(",") if f], opts.mode)
    except ServingError as err:
        flag = "--max_message_bytes" if "max_message_bytes" in str(err) else "--passthrough"
        raise UsageError(f"{flag}: {err}") from None


def _check_drift(opts: StreamOptions) -> None:
    """Refuses drift options that cannot work (one line)."""
    try:
        limits = drift_limits(opts)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if limits is None:
        return
    if "score" not in get_mode(opts.mode).fields:
        raise UsageError(
            f"--drift is measured on scores; --mode {opts.mode} has none (flag, explain)"
        )
    for name in ("drift_window_s", "drift_period_s"):
        value = getattr(opts, name)
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name} must be a number of seconds above 0, got {value}")
    if opts.drift_period_s > opts.drift_window_s:
        raise UsageError("--drift_period_s must not exceed --drift_window_s")


def _check_producer_limit(config: KafkaConfig, client: str, max_message_bytes: int) -> None:
    """Refuses a ``--max_message_bytes`` the producer itself would refuse (a message must also
    fit in its request, with room for the record batch's own bytes)."""
    declared = producer_limit(config, client)
    if declared is None:
        return
    name, limit = declared
    if max_message_bytes > limit - 1024:
        section = client.replace("-", "_")
        raise UsageError(
            f"--max_message_bytes {max_message_bytes} does not fit the {client} producer's "
            f"{name} of {limit}: lower it, or raise {name} in the {section!r} section of "
            "--kafka_config (and the output topics' max.message.bytes)"
        )


def _checked_kafka_config(opts: StreamOptions) -> dict[str, Any]:
    """The job's Kafka config (``--kafka_config`` read), checked against the message limit.

    Raises:
        UsageError: the config file cannot be read or holds unknown settings, or the producer
            would refuse messages of ``--max_message_bytes``.
    """
    try:
        config = _kafka_config(opts)
        kafka = KafkaConfig.from_dict(config)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _check_producer_limit(kafka, opts.kafka_client, opts.max_message_bytes)
    return config


def build(pipeline: beam.Pipeline, opts: StreamOptions) -> Any:
    """Adds the read -> score -> write steps to ``pipeline``; returns the scoring outputs
    (``.results`` / ``.dead_letters``, PCollections of lists of Kafka messages).

    Raises:
        UsageError: an option that cannot work (see :func:`check_options`), or a
            ``--kafka_config`` that cannot be read.
    """
    passthrough = check_options(opts)
    config = _checked_kafka_config(opts)
    scored = pipeline | "ScoreKafkaTopic" >> ScoreKafkaTopic(
        opts.input_topic,
        output_topic=opts.output_topic,
        dead_letter_topic=opts.dead_letter_topic,
        kafka_config=config,
        mode=opts.mode,
        model_root=opts.model_root,
        model_version_dir=opts.model_version_dir,
        client=opts.kafka_client,
        max_message_bytes=opts.max_message_bytes,
        read_options={
            "start": opts.start,
            "bounded": opts.bounded,
            "max_seconds": opts.max_seconds,
            "max_records_per_partition": opts.max_records_per_partition,
            "max_batch_size": opts.max_batch_size,
            "poll_timeout_s": opts.poll_timeout_s,
            "max_bundle_seconds": opts.max_bundle_seconds,
        },
        poll_interval_s=opts.model_poll_interval_s,
        device=opts.device,
        threshold=opts.threshold,
        top_k=opts.top_k or None,
        passthrough=passthrough,
        torch_threads=opts.torch_threads or None,
        message_key=opts.message_key,
    )
    limits = drift_limits(opts)
    if limits is not None:
        _ = scored.results | "MonitorScoreDrift" >> MonitorScoreDrift(
            model_root=opts.model_root,
            model_version_dir=opts.model_version_dir,
            limits=limits,
            window_s=opts.drift_window_s,
            period_s=opts.drift_period_s,
            drift_topic=opts.drift_topic,
            kafka_config=config,
            client=opts.kafka_client,
        )
    return scored


def main(
    argv: list[str] | None = None, *, wait: bool = True, log_level: int = logging.INFO
) -> PipelineResult:
    """Builds and runs the job.

    Args:
        argv: command-line arguments (job options and Beam pipeline options).
        wait: block until the pipeline ends (a streaming job runs until cancelled).
        log_level: root log level (the runner's own chatter included).

    Returns:
        The ``PipelineResult``.

    Raises:
        UsageError: before anything starts, for an option that cannot work (``ae-pipeline
            stream`` prints it as one line and exits 2).
    """
    options = parse_options(argv, StreamOptions, PROG, __doc__, java_flags=FLINK_JAVA_FLAGS)
    keep_watching_streaming_jobs(options)
    opts = options.view_as(StreamOptions)
    check_options(opts)
    _checked_kafka_config(opts)
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, opts)
    result = pipeline.run()
    if wait:
        result.wait_until_finish()
    return result


def _run(argv: list[str]) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(PROG, _run, sys.argv[1:]))

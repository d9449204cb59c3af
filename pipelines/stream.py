"""Streaming Beam job: Kafka records in, encoded / denoised / flagged records out.

    python -m pipelines.stream --mode flag \\
        --bootstrap_servers 127.0.0.1:9092 --input_topic events \\
        --output_topic scores --dead_letter_topic events-dlq \\
        --model_root models/ --model_poll_interval_s 30 \\
        --runner PrismRunner --streaming [--prism_location ...]

Reads the input topic with :class:`ae_pipeline.beam.kafka_io.ReadKafkaRecords` (a splittable
DoFn over partitions; one list of records per poll), scores each poll's list with
:class:`ae_pipeline.beam.transforms.ScoreRecords` (the same scoring as the plain consumer),
and writes results and dead letters with :class:`~ae_pipeline.beam.kafka_io.WriteKafkaRecords`
as the messages of :func:`ae_pipeline.serving.to_messages`. With ``--model_root`` it follows the
newest published version without a restart. The consumer group's offsets are committed by the
read's bundle finalizer, once the runner has made the bundle's outputs durable.

``--bounded`` / ``--max_seconds`` / ``--max_records_per_partition`` make the read bounded, for
batch-style runs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from ae_pipeline.beam.kafka_io import ReadKafkaRecords, WriteKafkaRecords
from ae_pipeline.beam.options import (
    ModelLocationOptions,
    add_switch,
    exit_with_help_if_asked,
    keep_watching_streaming_jobs,
    read_json_config,
)
from ae_pipeline.beam.transforms import ScoreRecords
from ae_pipeline.kafka import CLIENTS, DEFAULT_CLIENT
from ae_pipeline.serving import MODES, to_messages


class StreamOptions(ModelLocationOptions, PipelineOptions):
    """Options of the streaming scoring job (plus every Beam pipeline option)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        g = parser.add_argument_group("scoring")
        g.add_argument(
            "--mode",
            default="flag",
            choices=MODES,
            help="encode: latent vectors; denoise: reconstructions in original units; "
            "flag: score, threshold, is_anomaly, per-feature contributions",
        )
        g.add_argument(
            "--model_poll_interval_s",
            type=float,
            default=30.0,
            help="seconds between checks for a newer version (with --model_root)",
        )
        g.add_argument("--top_k", type=int, default=5, help="contributions per flag (0: all)")
        g.add_argument("--passthrough", default="", help="comma list of record fields to copy")
        g.add_argument("--threshold", type=float, default=None, help="override the threshold")
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
        g.add_argument("--bootstrap_servers", default=None, help="host:port[,...] (required)")
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
        g.add_argument("--kafka_client", default=DEFAULT_CLIENT, choices=CLIENTS)
        g.add_argument(
            "--kafka_config",
            default=None,
            help="JSON file of extra KafkaConfig settings (security; never logged): a local "
            "path or any Beam filesystem path (gs://, s3://, ...)",
        )
        g.add_argument("--max_batch_size", type=int, default=500, help="records per poll")
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


def _kafka_config(opts: StreamOptions) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if opts.kafka_config:
        config.update(read_json_config(opts.kafka_config))
    config.update({"bootstrap.servers": opts.bootstrap_servers, "group.id": opts.group_id})
    return config


def _messages(outputs: list[dict]) -> list[tuple]:
    return to_messages(outputs)


def build(pipeline: beam.Pipeline, opts: StreamOptions) -> Any:
    """Adds the read -> score -> write steps to ``pipeline``; returns the scoring outputs
    (``.results`` / ``.dead_letters``, PCollections of lists of dicts)."""
    missing = [
        f"--{name}"
        for name in ("bootstrap_servers", "input_topic", "output_topic", "dead_letter_topic")
        if not getattr(opts, name)
    ]
    if missing:
        raise ValueError(f"missing required options: {' '.join(missing)}")
    if (opts.model_root is None) == (opts.model_version_dir is None):
        raise ValueError("give exactly one of --model_root and --model_version_dir")
    config = _kafka_config(opts)
    client = opts.kafka_client
    records = pipeline | "Read" >> ReadKafkaRecords(
        opts.input_topic,
        config,
        client=client,
        start=opts.start,
        bounded=opts.bounded,
        max_seconds=opts.max_seconds,
        max_records_per_partition=opts.max_records_per_partition,
        max_batch_size=opts.max_batch_size,
        max_bundle_seconds=opts.max_bundle_seconds,
    )
    scored = records | "Score" >> ScoreRecords(
        opts.mode,
        model_root=opts.model_root,
        model_version_dir=opts.model_version_dir,
        poll_interval_s=opts.model_poll_interval_s,
        device=opts.device,
        threshold=opts.threshold,
        top_k=opts.top_k or None,
        passthrough=[f for f in opts.passthrough.split(",") if f],
        torch_threads=opts.torch_threads or None,
        prebatched=True,
        emit_batches=True,
    )
    for name, pcoll, topic in (
        ("Results", scored.results, opts.output_topic),
        ("DeadLetters", scored.dead_letters, opts.dead_letter_topic),
    ):
        _ = (
            pcoll
            | f"{name}AsMessages" >> beam.Map(_messages)
            | f"Write{name}" >> WriteKafkaRecords(topic, config, client=client)
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
    """
    exit_with_help_if_asked(argv, StreamOptions, "ae-pipeline stream", __doc__)
    options = PipelineOptions(argv)
    keep_watching_streaming_jobs(options)
    opts = options.view_as(StreamOptions)
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


if __name__ == "__main__":
    main(sys.argv[1:])

"""Plain Kafka consumer-group scoring: the streaming job's scoring without a Beam runner.

    python -m pipelines.consume --bootstrap_servers 127.0.0.1:9092 --group_id scorers \\
        --input_topic events --output_topic scores --dead_letter_topic events-dlq \\
        --mode flag --model_root models/ [--client confluent]

Run several with the same ``--group_id`` to scale out. SIGTERM finishes the batch in hand,
commits it and exits 0. Offsets are committed only after the batch's outputs are acknowledged
(at-least-once), or with ``--processing_guarantee exactly_once`` outputs and offsets are
committed in one Kafka transaction per batch. Security settings (SASL/SSL) come from a JSON
file given with ``--kafka_config`` (its secrets are never logged).

Whatever bytes a record holds, the worst it earns is a dead letter; no output message is over
``--max_message_bytes``. A broker that cannot be reached, a missing topic or a refused
authorisation stops the consumer without committing (exit code 1); an option that cannot work is
refused before anything starts (one line, exit code 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ae_pipeline.beam.options import add_switch
from ae_pipeline.consumer import (
    AT_LEAST_ONCE,
    DEFAULT_COMMIT_INTERVAL_S,
    DEFAULT_TRANSACTION_TIMEOUT_S,
    PROCESSING_GUARANTEES,
    ScoringConsumer,
    check_run_args,
)
from ae_pipeline.drift import DriftMonitor
from ae_pipeline.kafka import CLIENTS, DEFAULT_CLIENT, DeliveryError, KafkaClientError
from ae_pipeline.ops.logs import LOG_FORMATS
from ae_pipeline.ops.monitor import DEFAULT_PROGRESS_INTERVAL_S
from ae_pipeline.scoring_process import ScoringProcessError
from ae_pipeline.serving import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MESSAGE_KEY,
    MESSAGE_KEYS,
    describe_modes,
    mode_names,
)
from pipelines.drift_options import add_drift_options, drift_limits
from pipelines.plain_cli import configure_logging, kafka_config

_log = logging.getLogger("pipelines.consume")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of the consumer."""
    parser = argparse.ArgumentParser(prog="ae-pipeline consume", description=__doc__.split("\n")[0])
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument("--bootstrap_servers", required=True, help="host:port[,host:port]")
    kafka.add_argument("--group_id", required=True, help="consumer group (commits offsets)")
    kafka.add_argument("--input_topic", required=True, help="records to score")
    kafka.add_argument("--output_topic", required=True, help="where results go")
    kafka.add_argument("--dead_letter_topic", required=True, help="where rejected records go")
    kafka.add_argument(
        "--client",
        "--kafka_client",  # the name ae-pipeline stream uses
        dest="client",
        default=DEFAULT_CLIENT,
        choices=CLIENTS,
        help="Kafka client (alias: --kafka_client)",
    )
    kafka.add_argument(
        "--kafka_config",
        default=None,
        help="JSON file of extra KafkaConfig settings (security): a local path or any Beam "
        "filesystem path (gs://, s3://, ...)",
    )
    kafka.add_argument(
        "--max_batch",
        "--max_batch_size",  # the name ae-pipeline stream uses
        dest="max_batch",
        type=int,
        default=500,
        help="records per poll/commit (alias: --max_batch_size)",
    )
    kafka.add_argument(
        "--poll_timeout_s", type=float, default=0.5, help="seconds one poll waits (more than 0)"
    )
    kafka.add_argument(
        "--max_message_bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="most bytes of one output message (key + value + headers): a dead letter's "
        "original value is cut to fit, a larger result becomes a 'too_large' dead letter; keep "
        "it under the producer's message.max.bytes / max.request.size and the output topics' "
        "max.message.bytes (default %(default)s fits Kafka's 1 MB defaults)",
    )
    kafka.add_argument(
        "--message_key",
        default=DEFAULT_MESSAGE_KEY,
        choices=MESSAGE_KEYS,
        help="a result's message key: the input message's key (input: results and dead letters "
        "join and are partitioned like the input) or the record's key field (record)",
    )
    kafka.add_argument(
        "--processing_guarantee",
        default=AT_LEAST_ONCE,
        choices=PROCESSING_GUARANTEES,
        help="at_least_once: outputs, then offsets (a crash replays what was written past the "
        "last commit); exactly_once: each batch's outputs and offsets in one Kafka "
        "transaction (readers set isolation.level=read_committed; see the README)",
    )
    kafka.add_argument(
        "--transactional_id",
        default=None,
        help="exactly_once: a stable transactional id for this instance (e.g. the pod name), "
        "so that a restart aborts the dead process's open transaction at once; never shared "
        "by two live processes (default: a fresh id per process)",
    )
    kafka.add_argument(
        "--transaction_timeout_s",
        type=float,
        default=DEFAULT_TRANSACTION_TIMEOUT_S,
        help="exactly_once: the broker aborts a transaction open this long (what a crashed "
        "process holds up its partitions' read_committed readers)",
    )
    kafka.add_argument(
        "--commit_interval_s",
        type=float,
        default=DEFAULT_COMMIT_INTERVAL_S,
        help="exactly_once: a transaction takes the batches of this many seconds, then "
        "commits (as Kafka Streams' commit.interval.ms; 0: one per batch). Longer: more "
        "records/s, later visibility to read_committed readers",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--mode", default="flag", choices=mode_names(), help=describe_modes())
    where = model.add_mutually_exclusive_group(required=True)
    where.add_argument("--model_root", help="follow the newest version published here")
    where.add_argument("--model_version_dir", help="score with this one version")
    model.add_argument(
        "--model_poll_interval_s", type=float, default=30.0, help="registry checks (hot reload)"
    )
    model.add_argument("--wait_for_model_s", type=float, default=0.0)
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    model.add_argument(
        "--torch_threads",
        type=int,
        default=0,
        help="torch intra-op CPU threads (0: torch's default, one per core)",
    )
    add_switch(
        model,
        "--scoring_process",
        default=None,
        help="score in a child process, so that scoring overlaps the Kafka I/O on another core "
        "(auto: where this process may use 2 CPUs or more)",
    )
    model.add_argument("--top_k", type=int, default=5, help="contributions per flag (0: all)")
    model.add_argument("--passthrough", default="", help="comma list of fields to copy")
    run = parser.add_argument_group("run")
    run.add_argument("--max_records", type=int, default=None, help="stop after about N records")
    run.add_argument(
        "--idle_timeout_s",
        type=float,
        default=None,
        help="stop after this long without records, counted once partitions are assigned",
    )
    run.add_argument("--log_level", default="INFO")
    ops = parser.add_argument_group("operating (metrics, probes, logs)")
    ops.add_argument(
        "--metrics_port",
        type=int,
        default=None,
        help="serve Prometheus /metrics and the /healthz and /readyz probes on this port "
        "(0: any free port, logged; default: off)",
    )
    ops.add_argument("--metrics_host", default="0.0.0.0", help="address of the metrics server")
    ops.add_argument(
        "--progress_interval_s",
        type=float,
        default=DEFAULT_PROGRESS_INTERVAL_S,
        help="a progress line (records/s, lag, anomalies, version) this often; 0: none",
    )
    ops.add_argument(
        "--log_format", default="text", choices=LOG_FORMATS, help="json: one JSON object per line"
    )
    add_drift_options(parser, streaming=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the consumer until SIGTERM (or ``--max_records`` / ``--idle_timeout_s``).

    Returns:
        0 when stopped as asked; 2 for options that cannot work (one line on stderr, before
        anything starts); 1 when the broker, a topic or the scoring process fails (nothing
        uncommitted is committed).
    """
    args = build_parser().parse_args(argv)
    if args.top_k < 0 or args.torch_threads < 0:
        name = "--top_k" if args.top_k < 0 else "--torch_threads"
        return _refuse(f"{name} must be 0 or more (0: all / torch's default)")
    configure_logging(args.log_level, args.log_format)
    try:
        config = kafka_config(args)
        check_run_args(args.max_records, args.idle_timeout_s)
        consumer = _consumer(args, config)
    except ValueError as err:  # also ServingError, KafkaConfig's errors
        return _refuse(str(err))
    consumer.install_signal_handlers()
    try:
        stats = consumer.run(max_records=args.max_records, idle_timeout_s=args.idle_timeout_s)
    except (KafkaClientError, DeliveryError, ScoringProcessError) as err:
        _log.error(
            "stopped (%s); what was not committed will be read again by the group: %s",
            type(err).__name__,
            err,
            exc_info=_log.isEnabledFor(logging.DEBUG),  # the traceback with --log_level DEBUG
        )
        return 1
    finally:
        consumer.close()
    print(json.dumps(stats.to_dict()), flush=True)
    return 0


def _refuse(message: str) -> int:
    """A user's mistake: one line on stderr, exit code 2."""
    print(f"ae-pipeline consume: error: {message}", file=sys.stderr, flush=True)
    return 2


def _consumer(args: argparse.Namespace, config: dict) -> ScoringConsumer:
    """The consumer the options describe (raises ValueError for options that cannot work)."""
    return ScoringConsumer(
        config,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        dead_letter_topic=args.dead_letter_topic,
        mode=args.mode,
        model_root=args.model_root,
        model_version_dir=args.model_version_dir,
        model_poll_interval_s=args.model_poll_interval_s,
        device=args.device,
        torch_threads=args.torch_threads or None,
        client=args.client,
        max_batch=args.max_batch,
        poll_timeout_s=args.poll_timeout_s,
        top_k=args.top_k or None,
        passthrough=tuple(f for f in args.passthrough.split(",") if f),
        max_message_bytes=args.max_message_bytes,
        message_key=args.message_key,
        wait_for_model_s=args.wait_for_model_s,
        scoring_process=args.scoring_process,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        progress_interval_s=args.progress_interval_s,
        drift=_drift(args),
        drift_topic=args.drift_topic,
        processing_guarantee=args.processing_guarantee,
        transactional_id=args.transactional_id,
        transaction_timeout_s=args.transaction_timeout_s,
        commit_interval_s=args.commit_interval_s,
    )


def _drift(args: argparse.Namespace) -> DriftMonitor | None:
    """The drift monitor the options ask for (None without ``--drift``)."""
    limits = drift_limits(args)
    if limits is None:
        if args.drift_window_s is not None:
            raise ValueError("--drift_window_s needs --drift")
        return None
    return DriftMonitor(limits, window=args.drift_window, window_s=args.drift_window_s)


if __name__ == "__main__":
    sys.exit(main())

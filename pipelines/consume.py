"""Plain Kafka consumer-group scoring: the streaming job's scoring without a Beam runner.

    python -m pipelines.consume --bootstrap_servers 127.0.0.1:9092 --group_id scorers \\
        --input_topic events --output_topic scores --dead_letter_topic events-dlq \\
        --mode flag --model_root models/ [--client confluent]

Run several with the same ``--group_id`` to scale out. SIGTERM finishes the batch in hand,
commits it and exits 0. Offsets are committed only after the batch's outputs are acknowledged
(at-least-once). Security settings (SASL/SSL) come from a JSON file given with
``--kafka_config`` (its secrets are never logged).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ae_pipeline.beam.options import add_switch
from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.kafka import CLIENTS, DEFAULT_CLIENT
from ae_pipeline.serving import MODES


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of the consumer."""
    parser = argparse.ArgumentParser(prog="ae-pipeline consume", description=__doc__.split("\n")[0])
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument("--bootstrap_servers", required=True, help="host:port[,host:port]")
    kafka.add_argument("--group_id", required=True, help="consumer group (commits offsets)")
    kafka.add_argument("--input_topic", required=True, help="records to score")
    kafka.add_argument("--output_topic", required=True, help="where results go")
    kafka.add_argument("--dead_letter_topic", required=True, help="where rejected records go")
    kafka.add_argument("--client", default=DEFAULT_CLIENT, choices=CLIENTS, help="Kafka client")
    kafka.add_argument(
        "--kafka_config",
        default=None,
        help="JSON file of extra KafkaConfig settings (security): a local path or any Beam "
        "filesystem path (gs://, s3://, ...)",
    )
    kafka.add_argument("--max_batch", type=int, default=500, help="records per poll/commit")
    kafka.add_argument("--poll_timeout_s", type=float, default=0.5)
    model = parser.add_argument_group("model")
    model.add_argument("--mode", default="flag", choices=MODES)
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
    run.add_argument("--idle_timeout_s", type=float, default=None, help="stop when idle this long")
    run.add_argument("--log_level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the consumer until SIGTERM (or ``--max_records`` / ``--idle_timeout_s``).

    Returns:
        0 (a failed delivery raises, so the process exits non-zero without committing).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config: dict = {}
    if args.kafka_config:
        from ae_pipeline.beam.options import read_json_config  # local, gs://, s3://, ...

        config.update(read_json_config(args.kafka_config))
    config.update({"bootstrap.servers": args.bootstrap_servers, "group.id": args.group_id})
    consumer = ScoringConsumer(
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
        wait_for_model_s=args.wait_for_model_s,
        scoring_process=args.scoring_process,
    )
    consumer.install_signal_handlers()
    try:
        stats = consumer.run(max_records=args.max_records, idle_timeout_s=args.idle_timeout_s)
    finally:
        consumer.close()
    print(json.dumps(stats.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The drift listener: start a retraining run for each drift event on the drift topic.

    ae-pipeline retrain-on-drift --bootstrap_servers 127.0.0.1:9092 --drift_topic ae-drift \\
        --group_id ae-retrainer --data_root data/events --cooldown_s 3600 -- \\
        ae-pipeline train --input {newest_partition} --model_root models/ --key_column id

Everything after ``--`` is the retraining command (run without a shell); ``{model_version}``,
``{newest_partition}`` (the newest entry of ``--data_root``) and ``{event_time}`` are filled from
the event. On Kubernetes the command starts a Job from the retraining CronJob
(``deploy/schedule/drift-listener.yaml``). SIGTERM stops it between events.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import asdict

from ae_pipeline.kafka import CLIENTS, DEFAULT_CLIENT, KafkaClientError
from ae_pipeline.ops.logs import LOG_FORMATS
from ae_pipeline.ops.retrain import DriftListener
from pipelines.plain_cli import configure_logging, kafka_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ae-pipeline retrain-on-drift",
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
    )
    parser.add_argument("--bootstrap_servers", required=True, help="host:port[,host:port]")
    parser.add_argument("--drift_topic", required=True, help="where the drift events are")
    parser.add_argument("--group_id", default="ae-pipeline-retrain-on-drift")
    parser.add_argument("--client", default=DEFAULT_CLIENT, choices=CLIENTS)
    parser.add_argument(
        "--kafka_config", default=None, help="JSON file of extra KafkaConfig settings (security)"
    )
    parser.add_argument(
        "--data_root", default=None, help="dated data partitions ({newest_partition})"
    )
    parser.add_argument(
        "--cooldown_s",
        type=float,
        default=3600.0,
        help="no retraining within this long of the previous one (default %(default)s)",
    )
    parser.add_argument(
        "--run_timeout_s", type=float, default=6 * 3600.0, help="kill a run taking longer"
    )
    parser.add_argument("--max_events", type=int, default=None, help="stop after N events")
    parser.add_argument(
        "--idle_timeout_s", type=float, default=None, help="stop after this long without events"
    )
    parser.add_argument("--log_level", default="INFO")
    parser.add_argument("--log_format", default="text", choices=LOG_FORMATS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, command = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    args = build_parser().parse_args(own)
    configure_logging(args.log_level, args.log_format)
    try:
        config = kafka_config(args)
        listener = DriftListener(
            config,
            drift_topic=args.drift_topic,
            command=command,
            data_root=args.data_root,
            cooldown_s=args.cooldown_s,
            run_timeout_s=args.run_timeout_s,
            client=args.client,
        )
    except ValueError as err:
        print(f"ae-pipeline retrain-on-drift: error: {err}", file=sys.stderr, flush=True)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: listener.stop())
    try:
        stats = listener.run(max_events=args.max_events, idle_timeout_s=args.idle_timeout_s)
    except KafkaClientError as err:
        logging.getLogger("pipelines.retrain_on_drift").error("stopped: %s", err)
        return 1
    print(json.dumps(asdict(stats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the plain (non-Beam) commands, ``consume`` and ``retrain-on-drift``, set up alike."""

from __future__ import annotations

import logging
from typing import Any

from ae_pipeline.ops.logs import use_log_format


def configure_logging(level: str, log_format: str) -> None:
    """Timestamped lines on stderr at ``level`` (``--log_format json``: JSON lines); kafka-python's
    chatter at WARNING."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    use_log_format(log_format)
    logging.getLogger("kafka").setLevel(logging.WARNING)


def kafka_config(args: Any) -> dict[str, Any]:
    """``--kafka_config`` (a local path or any Beam filesystem path) with ``--bootstrap_servers``
    and ``--group_id`` on top.

    Raises:
        ValueError: the file cannot be read or holds unknown settings.
    """
    config: dict[str, Any] = {}
    if args.kafka_config:
        from ae_pipeline.beam.options import read_json_config  # local, gs://, s3://, ...

        config.update(read_json_config(args.kafka_config))
    config.update({"bootstrap.servers": args.bootstrap_servers, "group.id": args.group_id})
    return config

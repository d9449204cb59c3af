"""Apply the topic definitions of ``deploy/kafka/topics.yaml`` to a Kafka cluster.

    python deploy/kafka/apply_topics.py --bootstrap_servers broker:9092 \\
        [--kafka_config client.json] [--replication_factor 1] [--dry_run] topics.yaml

Idempotent: creates missing topics; adds partitions to a topic that has fewer than defined
(partitions are never removed: a topic with more is reported and left alone); sets the topic
configs the file names (incrementally: configs the file does not name are left as they are).
Prints one line per topic saying what it did. ``--kafka_config`` is the same JSON file of
client settings the jobs take (SASL/SSL, see ``client-*.sample.json``); secrets in it never
reach the output, the logs or error messages.

Exit status: 0 when the cluster matches the file (or would, with ``--dry_run``), 1 when a topic
could not be brought in line (e.g. more partitions than defined), 2 for a bad file.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ae_pipeline.kafka import KafkaClientError, KafkaConfig
from ae_pipeline.kafka.client import scrubbed_errors
from ae_pipeline.kafka.redaction import guard_logs

_LOG = logging.getLogger("ae_pipeline.deploy.topics")

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
TOPIC_KEYS = {"name", "description", "partitions", "replication_factor", "config"}
DEFAULT_KEYS = {"replication_factor", "config"}


class TopicFileError(ValueError):
    """The topics file is not valid; the message names the entry and the problem."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the file defines it (defaults applied)."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""


def _config(where: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TopicFileError(f"{where}: config must be a mapping of Kafka topic configs")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or isinstance(val, (dict, list)) or val is None:
            raise TopicFileError(f"{where}: config {key!r} must map to a scalar value")
        out[key] = str(val).lower() if isinstance(val, bool) else str(val)
    return out


def _positive_int(where: str, what: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TopicFileError(f"{where}: {what} must be a positive integer, not {value!r}")
    return value


def parse_topics(doc: Any) -> list[TopicSpec]:
    """Validate a loaded topics document and return its topics with defaults applied.

    Raises:
        TopicFileError: naming the topic and the problem.
    """
    if not isinstance(doc, dict) or set(doc) - {"defaults", "topics"}:
        raise TopicFileError("the file must be a mapping with 'topics' (and 'defaults')")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - DEFAULT_KEYS:
        raise TopicFileError(f"defaults: only {sorted(DEFAULT_KEYS)} are allowed")
    default_rf = _positive_int(
        "defaults", "replication_factor", defaults.get("replication_factor", 1)
    )
    default_config = _config("defaults", defaults.get("config"))
    topics = doc.get("topics")
    if not isinstance(topics, list) or not topics:
        raise TopicFileError("'topics' must be a non-empty list")
    out, seen = [], set()
    for i, entry in enumerate(topics):
        where = f"topics[{i}]"
        if not isinstance(entry, dict):
            raise TopicFileError(f"{where}: must be a mapping")
        unknown = set(entry) - TOPIC_KEYS
        if unknown:
            raise TopicFileError(f"{where}: unknown keys {sorted(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not TOPIC_NAME.match(name) or name in (".", ".."):
            raise TopicFileError(f"{where}: invalid topic name {name!r}")
        where = f"topic {name!r}"
        if name in seen:
            raise TopicFileError(f"{where}: defined twice")
        seen.add(name)
        out.append(
            TopicSpec(
                name=name,
                partitions=_positive_int(where, "partitions", entry.get("partitions")),
                replication_factor=_positive_int(
                    where, "replication_factor", entry.get("replication_factor", default_rf)
                ),
                config={**default_config, **_config(where, entry.get("config"))},
                description=str(entry.get("description", "")),
            )
        )
    return out


def load_topics(path: str | Path) -> list[TopicSpec]:
    """Read and validate a topics YAML file."""
    with open(path) as f:
        return parse_topics(yaml.safe_load(f))


def _fit_min_isr(t: TopicSpec, rf: int, report: list[str]) -> TopicSpec:
    """Cap ``min.insync.replicas`` at the replication factor (a single-broker cluster applied
    with ``--replication_factor 1`` would otherwise refuse every ``acks=all`` write)."""
    isr = t.config.get("min.insync.replicas")
    if isr is not None and isr.isdigit() and int(isr) > rf:
        report.append(f"{t.name}: min.insync.replicas {isr} capped at replication factor {rf}")
        return replace(t, config={**t.config, "min.insync.replicas": str(rf)})
    return t


def apply_topics(
    config: KafkaConfig | dict,
    topics: list[TopicSpec],
    *,
    replication_factor: int | None = None,
    dry_run: bool = False,
    timeout_s: float = 30.0,
) -> tuple[list[str], bool]:
    """Bring the cluster's topics in line with ``topics``.

    Args:
        config: client settings (security included).
        topics: the definitions (:func:`load_topics`).
        replication_factor: overrides every topic's (e.g. 1 for a single-broker cluster).
        dry_run: only report what would change.
        timeout_s: per admin request.

    Returns:
        ``(report lines, ok)``; ``ok`` is False when a topic could not be brought in line.

    Raises:
        KafkaClientError: when the cluster cannot be reached or refuses a change (secrets
            scrubbed from the message).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

    from ae_pipeline.kafka.kafka_python_client import client_kwargs

    config = KafkaConfig.from_dict(config).with_group(None)
    guard_logs(config.secrets())
    report: list[str] = []
    ok = True
    prefix = "would " if dry_run else ""
    timeout_ms = int(timeout_s * 1000)
    with scrubbed_errors(config, "apply topics"):
        admin = KafkaAdminClient(**client_kwargs(config, KafkaAdminClient))
        try:
            existing = set(admin.list_topics())
            described = {}
            present = [t.name for t in topics if t.name in existing]
            if present:
                described = {d["name"]: d for d in admin.describe_topics(present)}
            for t in topics:
                rf = replication_factor or t.replication_factor
                t = _fit_min_isr(t, rf, report)
                if t.name not in existing:
                    if not dry_run:
                        # Returns once the broker's metadata shows the topic (usable).
                        admin.create_topics(
                            [NewTopic(t.name, t.partitions, rf, topic_configs=dict(t.config))],
                            timeout_ms=timeout_ms,
                            wait_for_metadata=True,
                        )
                    settings = ", ".join(f"{k}={v}" for k, v in sorted(t.config.items()))
                    report.append(
                        f"{t.name}: {prefix}create ({t.partitions} partitions, replication {rf}"
                        + (f", {settings})" if settings else ")")
                    )
                    continue
                changes = []
                have = len(described[t.name]["partitions"])
                if have < t.partitions:
                    if not dry_run:
                        admin.create_partitions(
                            {t.name: NewPartitions(t.partitions)}, timeout_ms=timeout_ms
                        )
                        admin.wait_for_topics([t.name], timeout_ms=timeout_ms)
                    changes.append(f"partitions {have} -> {t.partitions}")
                elif have > t.partitions:
                    ok = False
                    changes.append(
                        f"has {have} partitions, more than the {t.partitions} defined "
                        "(Kafka cannot remove partitions): left alone"
                    )
                if t.config:
                    resource = ConfigResource(
                        ConfigResourceType.TOPIC, t.name, dict.fromkeys(t.config)
                    )
                    current = admin.describe_configs([resource], config_filter="all")
                    values = current["topic"][t.name]
                    differ = {
                        k: v for k, v in t.config.items() if values.get(k, {}).get("value") != v
                    }
                    if differ:
                        if not dry_run:
                            result = admin.alter_configs(
                                [ConfigResource(ConfigResourceType.TOPIC, t.name, differ)]
                            )
                            status = result["topic"][t.name]
                            if status != "OK":
                                raise KafkaClientError(f"{t.name}: config change refused: {status}")
                        changes += [
                            f"{k} {values.get(k, {}).get('value')} -> {v}"
                            for k, v in sorted(differ.items())
                        ]
                if changes:
                    report.append(f"{t.name}: {prefix}" + "; ".join(changes))
                else:
                    report.append(f"{t.name}: up to date")
        finally:
            admin.close()
    return report, ok


def _client_config(args: argparse.Namespace) -> KafkaConfig:
    settings: dict[str, Any] = {}
    if args.kafka_config:
        with open(args.kafka_config) as f:
            settings.update(json.load(f))
    if args.bootstrap_servers:
        settings["bootstrap.servers"] = args.bootstrap_servers
    if not settings.get("bootstrap.servers") and not settings.get("bootstrap_servers"):
        raise SystemExit(
            "apply_topics: give --bootstrap_servers (or bootstrap.servers in the file)"
        )
    return KafkaConfig.from_dict(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topics_file", help="topic definitions (deploy/kafka/topics.yaml)")
    parser.add_argument("--bootstrap_servers", default=None, help="host:port[,...]")
    parser.add_argument(
        "--kafka_config", default=None, help="JSON file of client settings (SASL/SSL)"
    )
    parser.add_argument(
        "--replication_factor", type=int, default=None, help="override every topic's"
    )
    parser.add_argument("--dry_run", action="store_true", help="only report what would change")
    parser.add_argument("--timeout_s", type=float, default=30.0)
    parser.add_argument("--log_level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        topics = load_topics(args.topics_file)
    except (OSError, yaml.YAMLError, TopicFileError) as e:
        print(f"apply_topics: {args.topics_file}: {e}", file=sys.stderr)
        return 2
    config = _client_config(args)
    try:
        report, ok = apply_topics(
            config,
            topics,
            replication_factor=args.replication_factor,
            dry_run=args.dry_run,
            timeout_s=args.timeout_s,
        )
    except KafkaClientError as e:
        print(f"apply_topics: {e}", file=sys.stderr)
        return 1
    for line in report:
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Retraining on drift: a small listener that starts a retraining run for each drift event.

The consumers (``ae-pipeline consume --drift --drift_topic ...``) and the streaming job
(:class:`~ae_pipeline.beam.drift.MonitorScoreDrift`) send drift events to a topic.
:class:`DriftListener` reads that topic as a consumer-group member and, for each ``drift``
event, runs a command: ``ae-pipeline train`` itself, or on Kubernetes ``kubectl create job
--from=cronjob/...`` (``deploy/schedule/drift-listener.yaml``). Placeholders in the command's
arguments are filled from the event:

* ``{model_version}``: the version whose scores drifted;
* ``{newest_partition}``: the newest entry (by name) of ``data_root``, e.g. ``dt=2026-12-03``
  of a dated Parquet layout, as a path;
* ``{event_time}``: the event's time as ``YYYYmmdd-HHMMSS`` (UTC; valid in Kubernetes Job names).

One run at a time, and none within ``cooldown_s`` of the previous one (one drift declared by
many consumers, or a drift that outlasts a retraining, starts one run). The event's offset is
committed after its run finished (a listener killed mid-run re-runs it on restart). A command
that exits 3 (``ae-pipeline train``: the new model was refused by its gates) is logged as
refused; any other non-zero status as failed; the listener goes on either way.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ae_pipeline.kafka import (
    DEFAULT_CLIENT,
    KafkaConfig,
    close_quietly,
    create_consumer,
    next_offsets,
)

_log = logging.getLogger(__name__)

REFUSED_EXIT_CODE = 3
PLACEHOLDERS = ("model_version", "newest_partition", "event_time")


@dataclass
class ListenerStats:
    """What a :class:`DriftListener` did: events read, runs started by outcome, events skipped
    (``recovered`` events, malformed ones, and drift within the cooldown)."""

    events: int = 0
    runs: int = 0
    succeeded: int = 0
    refused: int = 0
    failed: int = 0
    skipped: int = 0
    last_run: dict[str, Any] = field(default_factory=dict)


def drift_event(message: Any) -> dict[str, Any] | None:
    """The drift event a Kafka message holds when it is a ``drift`` one, else None.

    The ``apply_function`` of the Airflow DAG's ``AwaitMessageSensor``
    (``deploy/schedule/airflow_retrain_dag.py``): the sensor completes on the first message
    for which it returns something. ``message`` is a confluent-kafka ``Message`` (``value()``)
    or any object with a ``value`` attribute (a :class:`~ae_pipeline.kafka.KafkaRecord`).
    """
    value = message.value() if callable(getattr(message, "value", None)) else message.value
    try:
        event = json.loads(value or b"")
    except (ValueError, TypeError):
        return None
    return event if isinstance(event, dict) and event.get("state") == "drift" else None


def newest_partition(data_root: str) -> str:
    """The newest entry of ``data_root`` by name (hidden and ``_``-prefixed entries left out).

    Raises:
        FileNotFoundError: ``data_root`` is missing or has no entry.
    """
    names = sorted(n for n in os.listdir(data_root) if not n.startswith((".", "_")))
    if not names:
        raise FileNotFoundError(f"{data_root} has no data partition to retrain on")
    return os.path.join(data_root, names[-1])


def fill(command: Sequence[str], event: Mapping[str, Any], data_root: str | None) -> list[str]:
    """``command`` with the placeholders filled from ``event`` (see the module docstring).

    Raises:
        ValueError: a placeholder that cannot be filled (``{newest_partition}`` without
            ``data_root``), or an unknown one.
    """
    values: dict[str, str] = {
        "model_version": str(event.get("model_version") or ""),
        "event_time": time.strftime("%Y%m%d-%H%M%S", time.gmtime(float(event.get("time") or 0))),
    }
    if any("{newest_partition}" in arg for arg in command):
        if data_root is None:
            raise ValueError("the command uses {newest_partition}: give data_root")
        values["newest_partition"] = newest_partition(data_root)
    try:
        return [arg.format(**values) for arg in command]
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"the retraining command has a placeholder other than {', '.join(PLACEHOLDERS)}: {err}"
        ) from None


def check_command(command: Sequence[str]) -> list[str]:
    """Refuses an empty command or an unknown placeholder before anything starts."""
    command = list(command)
    if not command:
        raise ValueError("give the retraining command (after --)")
    probe = dict.fromkeys(PLACEHOLDERS, "x")
    try:
        for arg in command:
            arg.format(**probe)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"the retraining command has a placeholder other than {', '.join(PLACEHOLDERS)}: {err}"
        ) from None
    return command


class DriftListener:
    """Runs ``command`` for each drift event of ``drift_topic`` (see the module docstring).

    Args:
        config: Kafka settings with a group id (a :class:`~ae_pipeline.kafka.KafkaConfig` or
            dict).
        drift_topic: where the drift events are.
        command: the retraining command, as arguments (no shell), with placeholders.
        data_root: the directory of dated data partitions (for ``{newest_partition}``).
        cooldown_s: no run within this long of the previous one.
        run_timeout_s: a run taking longer is killed (and counts as failed).
        client: the Kafka client.
    """

    def __init__(
        self,
        config: KafkaConfig | Mapping[str, Any],
        *,
        drift_topic: str,
        command: Sequence[str],
        data_root: str | None = None,
        cooldown_s: float = 3600.0,
        run_timeout_s: float = 6 * 3600.0,
        client: str = DEFAULT_CLIENT,
    ) -> None:
        self.config = KafkaConfig.from_dict(config)
        if self.config.group_id is None:
            raise ValueError("the drift listener needs a group id (group.id) to commit its place")
        for name, value in (("cooldown_s", cooldown_s), ("run_timeout_s", run_timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be 0 or more seconds, got {value!r}")
        self.command = check_command(command)
        if any("{newest_partition}" in a for a in self.command) and data_root is None:
            raise ValueError("the command uses {newest_partition}: give --data_root")
        self.drift_topic = drift_topic
        self.data_root = data_root
        self.cooldown_s = cooldown_s
        self.run_timeout_s = run_timeout_s
        self.client = client
        self.stats = ListenerStats()
        self._last_run = float("-inf")
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(
        self, *, max_events: int | None = None, idle_timeout_s: float | None = None
    ) -> ListenerStats:
        """Reads and acts on events until stopped (or ``max_events`` / ``idle_timeout_s``)."""
        consumer = create_consumer(self.config, self.client, max_poll_records=10)
        try:
            consumer.subscribe([self.drift_topic])
            idle_since = time.monotonic()
            while not self._stop.is_set():
                records = consumer.poll(0.5, 10)
                if not records:
                    if (
                        idle_timeout_s is not None
                        and time.monotonic() - idle_since >= idle_timeout_s
                    ):
                        break
                    continue
                idle_since = time.monotonic()
                for record in records:
                    self._handle(record.value)
                    consumer.commit(next_offsets([record]))
                    if max_events is not None and self.stats.events >= max_events:
                        return self.stats
        finally:
            close_quietly(consumer, "drift listener consumer")
        return self.stats

    def _handle(self, value: bytes | None) -> None:
        self.stats.events += 1
        try:
            event = json.loads(value or b"")
            state = event["state"]
        except (ValueError, TypeError, KeyError):
            _log.warning("not a drift event (skipped): %r", (value or b"")[:200])
            self.stats.skipped += 1
            return
        if state != "drift":
            _log.info("drift %s for version %s", state, event.get("model_version"))
            self.stats.skipped += 1
            return
        since = time.monotonic() - self._last_run
        if since < self.cooldown_s:
            _log.info(
                "drift for version %s: no retraining, the last run was %.0fs ago (cooldown %.0fs)",
                event.get("model_version"),
                since,
                self.cooldown_s,
            )
            self.stats.skipped += 1
            return
        self._retrain(event)

    def _retrain(self, event: Mapping[str, Any]) -> None:
        try:
            args = fill(self.command, event, self.data_root)
        except (ValueError, OSError) as err:
            _log.error(
                "drift for version %s: cannot start retraining: %s", event.get("model_version"), err
            )
            self.stats.failed += 1
            return
        _log.info(
            "drift for version %s (%s): retraining: %s",
            event.get("model_version"),
            ", ".join(event.get("crossed") or ()),
            " ".join(args),
        )
        self._last_run = time.monotonic()
        self.stats.runs += 1
        start = time.monotonic()
        try:
            status = subprocess.run(args, timeout=self.run_timeout_s, check=False).returncode
        except (OSError, subprocess.TimeoutExpired) as err:
            status = None
            _log.error("retraining failed to run: %s", err)
        seconds = time.monotonic() - start
        outcome = (
            "succeeded" if status == 0 else "refused" if status == REFUSED_EXIT_CODE else "failed"
        )
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        self.stats.last_run = {
            "args": args,
            "status": status,
            "outcome": outcome,
            "seconds": round(seconds, 1),
        }
        log = _log.info if outcome != "failed" else _log.error
        log("retraining %s (exit status %s) in %.0fs", outcome, status, seconds)


__all__ = [
    "PLACEHOLDERS",
    "REFUSED_EXIT_CODE",
    "DriftListener",
    "ListenerStats",
    "check_command",
    "drift_event",
    "fill",
    "newest_partition",
]

"""The streaming job in one transform: read a Kafka topic, score it, write results and dead letters.

:class:`ScoreKafkaTopic` is what ``ae-pipeline stream`` runs, for a Beam user's own pipeline::

    import apache_beam as beam
    from ae_pipeline.beam import ScoreKafkaTopic

    with beam.Pipeline(options=options) as p:
        p | ScoreKafkaTopic("events", output_topic="scores", dead_letter_topic="events-dlq",
                            kafka_config={"bootstrap.servers": "broker:9092",
                                          "group.id": "scorers"},
                            mode="flag", model_root="gs://bucket/models")

It reads with :class:`~ae_pipeline.beam.kafka_read.ReadKafkaRecords` (one list of records per
poll), scores each list with :class:`~ae_pipeline.beam.transforms.ScoreRecords` as Kafka
messages, and writes them with :class:`~ae_pipeline.beam.kafka_write.WriteKafkaRecords`. A message
the write refuses as too large (none that scoring made: it bounds them) becomes a ``too_large``
dead letter, its value cut to fit. It returns the scoring outputs (``.results`` and
``.dead_letters``: PCollections of lists of messages), for a pipeline that also wants them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

import apache_beam as beam

from ae_pipeline.beam.kafka_read import ReadKafkaRecords
from ae_pipeline.beam.kafka_write import WriteKafkaRecords, message_size
from ae_pipeline.beam.transforms import ScoreRecords
from ae_pipeline.features import TOO_LARGE
from ae_pipeline.kafka import DEFAULT_CLIENT, KafkaConfig
from ae_pipeline.serving import (
    DEFAULT_MAX_MESSAGE_BYTES,
    OutputMode,
    check_max_message_bytes,
    to_messages,
)

# ScoreRecords arguments that ScoreKafkaTopic sets itself.
_FIXED = frozenset({"mode", "emit_batches", "as_messages", "max_message_bytes", "prebatched"})


class ScoreKafkaTopic(beam.PTransform):
    """Reads ``input_topic``, scores it in ``mode``, writes results to ``output_topic`` and
    dead letters to ``dead_letter_topic``; see the module docstring.

    Args:
        input_topic: the topic to score.
        output_topic: where results go.
        dead_letter_topic: where rejected records (and refused messages) go.
        kafka_config: a :class:`~ae_pipeline.kafka.KafkaConfig` or config dict (with a
            ``group.id``, the read commits the group's offsets once a bundle's outputs are
            durable: at least once).
        mode: any registered output mode, by name or as an
            :class:`~ae_pipeline.serving.modes.OutputMode` (the built-in ones: ``"encode"``,
            ``"denoise"``, ``"flag"``, ``"explain"``; every name:
            :func:`~ae_pipeline.serving.mode_names`).
        model_root: follow the newest version published under this root (hot reload).
        model_version_dir: or score with this one version.
        client: the Kafka client of the read and the writes (``"kafka-python"``,
            ``"confluent"``).
        max_message_bytes: the most bytes of one output message (see
            :class:`~ae_pipeline.beam.transforms.ScoreRecords`).
        read_options: more arguments of
            :class:`~ae_pipeline.beam.kafka_read.ReadKafkaRecords` (``start``, ``bounded``,
            ``max_seconds``, ``max_batch_size``, ...).
        **score_options: more arguments of
            :class:`~ae_pipeline.beam.transforms.ScoreRecords` (``device``, ``threshold``,
            ``top_k``, ``passthrough``, ``poll_interval_s``, ``message_key``, ...).

    Raises:
        ValueError: an argument out of range, one this transform sets itself, or one
            ``ScoreRecords`` / ``ReadKafkaRecords`` refuses (at construction, before any
            pipeline runs).
    """

    def __init__(
        self,
        input_topic: str,
        *,
        output_topic: str,
        dead_letter_topic: str,
        kafka_config: KafkaConfig | Mapping[str, Any],
        mode: str | OutputMode = "flag",
        model_root: str | None = None,
        model_version_dir: str | None = None,
        client: str = DEFAULT_CLIENT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        read_options: Mapping[str, Any] | None = None,
        **score_options: Any,
    ) -> None:
        super().__init__()
        fixed = sorted(_FIXED & set(score_options))
        if fixed:
            raise ValueError(f"ScoreKafkaTopic sets {', '.join(fixed)} itself")
        for name, topic in (
            ("input_topic", input_topic),
            ("output_topic", output_topic),
            ("dead_letter_topic", dead_letter_topic),
        ):
            if not isinstance(topic, str) or not topic:
                raise ValueError(f"{name} must be a topic name, got {topic!r}")
        self.max_message_bytes = check_max_message_bytes(max_message_bytes)
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.config = kafka_config
        self.client = client
        self.read = ReadKafkaRecords(
            input_topic, kafka_config, client=client, **dict(read_options or {})
        )
        self.score = ScoreRecords(
            mode,
            model_root=model_root,
            model_version_dir=model_version_dir,
            emit_batches=True,
            as_messages=True,
            max_message_bytes=self.max_message_bytes,
            **score_options,
        )

    def _write(self, topic: str) -> WriteKafkaRecords:
        return WriteKafkaRecords(
            topic, self.config, client=self.client, max_message_bytes=self.max_message_bytes
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> Any:
        scored = pbegin | "Read" >> self.read | "Score" >> self.score
        refused = [
            pcoll | f"Write{name}" >> self._write(topic)
            for name, pcoll, topic in (
                ("Results", scored.results, self.output_topic),
                ("DeadLetters", scored.dead_letters, self.dead_letter_topic),
            )
        ]
        # Messages over the limit (none when scoring made them: it bounds them already) are
        # dead-lettered, cut to fit, rather than refused by the broker with their whole bundle.
        _ = (
            refused
            | "Refused" >> beam.Flatten()
            | "RefusedAsDeadLetters" >> beam.Map(refused_as_dead_letter, self.max_message_bytes)
            | "WriteRefused" >> self._write(self.dead_letter_topic)
        )
        return scored


def refused_as_dead_letter(message: tuple, max_message_bytes: int) -> tuple:
    """A ``too_large`` dead-letter message for a message the write refused as over
    ``max_message_bytes``: its original value cut to fit, with its length and SHA-256."""
    topic, key, value, headers = message
    version = dict(headers).get("model_version") or b""
    raw = value or b""
    letter = {
        "reason": TOO_LARGE,
        "detail": f"a message of {message_size(message)} bytes for {topic} is over "
        f"--max_message_bytes {max_message_bytes}",
        "model_version": version.decode("utf-8", "replace"),
        "key": None if key is None else key.decode("utf-8", "backslashreplace"),
        "value_b64": base64.b64encode(raw).decode(),
        "value_length": len(raw),
        "value_sha256": hashlib.sha256(raw).hexdigest(),
        "value_truncated": False,
    }
    (dead,) = to_messages([letter], keys=[key], max_message_bytes=max_message_bytes)
    return dead

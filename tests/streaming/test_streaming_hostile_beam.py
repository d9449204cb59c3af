"""The hostile corpus (``kit.hostile``) through the Prism stream job against the real broker:
whatever bytes a record holds, the worst it earns is a dead letter; every record leaves as one
result or one dead letter, no output message is over the limit, and the consumer group's
committed offsets reach the log end (nothing stalls on a poison pill)."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import kit
import pytest
from kit.hostile import PASSTHROUGH, RESULT, TOPIC_MAX_MESSAGE_BYTES, hostile_records

from ae_pipeline.kafka import committed_offsets, create_producer, create_topics, end_offsets
from ae_pipeline.local.runners import runner_args
from ae_pipeline.serving import DEFAULT_MAX_MESSAGE_BYTES
from pipelines import stream

pytestmark = [pytest.mark.kafka, pytest.mark.prism]

# Producing the corpus' ~1.1 MB records needs client limits above Kafka's 1 MB defaults.
BIG_CLIENT = {
    "confluent": {"message.max.bytes": TOPIC_MAX_MESSAGE_BYTES},
    "kafka_python": {"max_request_size": TOPIC_MAX_MESSAGE_BYTES},
}


def _input_topic(bootstrap: str, name: str) -> None:
    """One partition (offset = position in the corpus) taking records up to the corpus' size."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        config = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
        admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
    finally:
        admin.close()


def _size(record) -> int:
    return (
        len(record.key or b"")
        + len(record.value or b"")
        + sum(len(n) + len(v or b"") for n, v in record.headers)
    )


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_hostile_records_through_the_prism_stream_job(
    bootstrap_servers, tmp_path, trained, beam_options, client
):
    beam_options("prism")  # records the runner in the session summary
    root = str(tmp_path / "models")
    kit.publish(root, trained)
    corpus = list(hostile_records())
    tag = uuid.uuid4().hex[:8]
    inp, out, dlq, group = f"hin-{tag}", f"hout-{tag}", f"hdlq-{tag}", f"hg-{tag}"
    config = {"bootstrap.servers": bootstrap_servers}
    _input_topic(bootstrap_servers, inp)
    create_topics(config, {out: 1, dlq: 1})  # Kafka's default message size limit
    with create_producer({**config, **BIG_CLIENT}, kit.fast_client()) as producer:
        for h in corpus:
            producer.send(inp, h.value, key=h.key)
        producer.flush(60)
    assert sum(end_offsets(config, inp).values()) == len(corpus)

    stream.main(
        [
            *runner_args("prism"),
            *kit.stream_job_args(bootstrap_servers, inp, out, dlq, group, root),
            f"--kafka_client={client}",
            f"--passthrough={','.join(PASSTHROUGH)}",
            "--bounded",
            "--max_batch_size=16",
        ]
    )

    results, dead = (
        kit.read_records(bootstrap_servers, out),
        kit.read_records(bootstrap_servers, dlq),
    )
    assert len(results) + len(dead) == len(corpus)
    outcome: dict[int, str] = {}
    for r in results:
        body = json.loads(r.value)
        outcome[body["offset"]] = RESULT
        assert r.key == corpus[body["offset"]].key  # keyed like the input
    for d in dead:
        letter = json.loads(d.value)
        offset = letter["offset"]
        outcome[offset] = letter["reason"]
        assert dict(d.headers)["reason"].decode() == letter["reason"]
        original = corpus[offset]
        assert d.key == original.key
        if original.value is not None:
            assert letter["value_length"] == len(original.value)
            assert letter["value_sha256"] == hashlib.sha256(original.value).hexdigest()
            assert original.value.startswith(base64.b64decode(letter["value_b64"]))
    assert sorted(outcome) == list(range(len(corpus)))  # each record once
    wrong = {h.name: outcome[i] for i, h in enumerate(corpus) if outcome[i] not in h.expect}
    assert not wrong
    assert max(map(_size, results + dead)) <= DEFAULT_MAX_MESSAGE_BYTES
    group_config = {**config, "group.id": group}
    kit.wait_until(
        lambda: committed_offsets(group_config, inp) == end_offsets(config, inp),
        "the group's offsets at the log end",
        timeout_s=30,
    )

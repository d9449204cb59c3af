"""Hostile records through the plain consumer against the real broker: whatever bytes a record
holds, the worst it earns is a dead letter, and the batch it came in is written and committed.

The corpus (``tests/kit/hostile.py``: nesting beyond the parsers' limits, lone surrogates,
invalid UTF-8, odd numbers, tombstones, ~1 MB records...) is produced to an input topic that
takes 2 MB records; the output and dead-letter topics keep Kafka's default limit (~1 MB). Both
clients, scoring inline and in the scoring process: records in = results + dead letters, each
record's outcome is one its kind allows, no output is over ``max_message_bytes``, results and
dead letters carry the input message key, and the group's committed offsets reach the log end.

Half the runs produce the corpus with Kafka's own tools: ``kafka-console-producer`` writes every
record it can (UTF-8 lines), and Kafka's Java producer (``kafka-clients``, a single-file Java
program) the rest (binary bytes, line breaks, tombstones, no key); the other half with
kafka-python.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import kit
import pytest
import reliability_kit as rel
from kit.hostile import (
    PASSTHROUGH,
    RESULT,
    console_safe,
    create_corpus_topics,
    hostile_records,
    produce_corpus,
    produce_corpus_with_java,
    produce_with_console_producer,
)

from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.kafka import committed_offsets, end_offsets
from ae_pipeline.serving import DEFAULT_MAX_MESSAGE_BYTES

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize(
    ("client", "scoring_process", "java", "guarantee"),
    [
        ("kafka-python", False, True, "at_least_once"),
        ("kafka-python", True, False, "at_least_once"),
        ("confluent", False, False, "at_least_once"),
        ("confluent", True, True, "at_least_once"),
        ("kafka-python", False, False, "exactly_once"),
        ("confluent", True, False, "exactly_once"),
    ],
    ids=[
        "kafka-python-kafka-tools-producer",
        "kafka-python-scoring-process",
        "confluent",
        "confluent-scoring-process-kafka-tools-producer",
        "kafka-python-exactly-once",
        "confluent-scoring-process-exactly-once",
    ],
)
def test_hostile_records_earn_at_worst_a_dead_letter_and_are_committed(
    broker, model_root, tmp_path, client, scoring_process, java, guarantee
):
    """With ``exactly_once`` too: a poison record earns its dead letter inside the batch's
    transaction, which commits (it never aborts for a record's sake)."""
    if client == "confluent":
        pytest.importorskip("confluent_kafka")
    bootstrap = broker.bootstrap_servers
    root, version = model_root
    corpus = list(hostile_records())
    inp, out, dlq = create_corpus_topics(bootstrap)
    if java:
        text = [h for h in corpus if console_safe(h)]
        rest = [h for h in corpus if not console_safe(h)]
        assert len(text) > 40 and rest
        produce_with_console_producer(bootstrap, inp, text)
        assert produce_corpus_with_java(bootstrap, inp, rest, tmp_path) == f"produced {len(rest)}"
    else:
        produce_corpus(bootstrap, inp, corpus)
    # Which input record sits at which (partition, offset): read back, matched by key and value.
    by_content = {(h.key, h.value): h for h in corpus}
    at = {
        (r.partition, r.offset): by_content[(r.key, r.value)]
        for r in kit.read_records(bootstrap, inp)
    }
    assert len(at) == len(corpus)

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap, "group.id": group},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="flag",
        model_root=root,
        device="cpu",
        client=client,
        max_batch=16,
        passthrough=PASSTHROUGH,
        scoring_process=scoring_process,
        processing_guarantee=guarantee,
    )
    with consumer:
        stats = consumer.run(max_records=len(corpus), idle_timeout_s=30)
    assert stats.records_in == len(corpus) == stats.results + stats.dead_letters
    assert stats.aborted_transactions == 0
    assert stats.model_version == version

    committed_only = guarantee == "exactly_once"
    isolation = "read_committed" if committed_only else None
    results = kit.read_records(bootstrap, out, isolation_level=isolation)
    letters = kit.read_records(bootstrap, dlq, isolation_level=isolation)
    outcome: dict[tuple[int, int], str] = {}
    for message in results + letters:
        body = json.loads(message.value)
        where = (body["partition"], body["offset"])
        assert where not in outcome, f"two outputs for {at[where].name}"
        outcome[where] = body.get("reason", RESULT)
        original = at[where]
        # Results and dead letters carry the input message key, as it was.
        assert message.key == original.key, original.name
        size = len(message.key or b"") + len(message.value)
        size += sum(len(n) + len(v or b"") for n, v in message.headers)
        assert size <= DEFAULT_MAX_MESSAGE_BYTES, original.name
        if "reason" in body and original.value is not None:
            assert body["value_length"] == len(original.value)
            assert body["value_sha256"] == hashlib.sha256(original.value).hexdigest()
            assert original.value.startswith(base64.b64decode(body["value_b64"]))
    assert len(outcome) == len(corpus) == len(results) + len(letters)
    wrong = {h.name: outcome[w] for w, h in at.items() if outcome[w] not in h.expect}
    assert not wrong
    assert {"bad_json", "too_large", "missing_field", "not_object"} <= set(outcome.values())

    config = {"bootstrap.servers": bootstrap}
    ends = end_offsets(config, inp)
    assert committed_offsets({**config, "group.id": group}, inp) == ends
    how = "scoring process" if scoring_process else "inline"
    how += ", exactly once" if committed_only else ""
    target = f"consumer ({client}, {how}; {'Kafka tools' if java else 'kafka-python'} producer)"
    t = rel.Tally(len(corpus), len(outcome), len(outcome), 0, 0, results=len(results))
    t.dead_letters = len(letters)
    rel.report_fault(f"{len(corpus)} hostile records", target, t)

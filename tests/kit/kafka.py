"""Kafka plumbing of the tests: fresh topics, producing, reading back, totals, waiting."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from ae_pipeline.kafka import (
    KafkaConfig,
    KafkaRecord,
    committed_offsets,
    create_consumer,
    create_producer,
    create_topics,
    end_offsets,
)


def fast_client() -> str:
    """confluent-kafka when installed (reading back outputs is 5x faster), else kafka-python."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "confluent"


def new_topics(
    bootstrap: str, partitions: int = 2, config: dict | None = None, *, prefix: str = ""
) -> tuple[str, str, str]:
    """Fresh ``(input, output, dead letter)`` topics, created (outputs with one partition)."""
    tag = uuid.uuid4().hex[:8]
    names = (f"{prefix}in-{tag}", f"{prefix}out-{tag}", f"{prefix}dlq-{tag}")
    create_topics(
        {"bootstrap.servers": bootstrap, **(config or {})},
        {names[0]: partitions, names[1]: 1, names[2]: 1},
    )
    return names


def produce(
    bootstrap: str, topic: str, values: list[bytes], *, start_key: int = 0
) -> set[tuple[int, int]]:
    """Produces ``values`` (keys ``k<start_key + i>``); returns their ``(partition, offset)``
    (exact while nobody else produces to ``topic``)."""
    config = {"bootstrap.servers": bootstrap}
    before = end_offsets(config, topic)
    with create_producer(config, fast_client()) as producer:
        for i, v in enumerate(values):
            producer.send(topic, v, key=f"k{start_key + i}".encode())
        producer.flush(60)
    after = end_offsets(config, topic)
    return {(tp.partition, o) for tp, n in after.items() for o in range(before.get(tp, 0), n)}


def total(bootstrap: str, *topics: str) -> int:
    """Records in ``topics`` (the sum of their end offsets)."""
    config = {"bootstrap.servers": bootstrap}
    return sum(sum(end_offsets(config, t).values()) for t in topics)


def committed_total(bootstrap: str, topic: str, group: str) -> int:
    got = committed_offsets({"bootstrap.servers": bootstrap, "group.id": group}, topic)
    return sum(v or 0 for v in got.values())


def read_records(
    bootstrap: str, topic: str, timeout_s: float = 60.0, *, isolation_level: str | None = None
) -> list[KafkaRecord]:
    """Every record of ``topic`` up to its end offsets now.

    ``isolation_level`` (for topics written in transactions): ``"read_committed"`` returns what
    a reader with that setting sees (records of aborted transactions left out), once no
    transaction is open on ``topic`` (raises AssertionError if one stays open past
    ``timeout_s``); ``"read_uncommitted"`` returns every record, aborted ones included. Either
    way the read ends when every position has reached the end offset (kafka-python: its
    position moves past transaction markers). None: the fastest reader, for topics written
    without transactions (no markers: it stops at the count of records).
    """
    config = KafkaConfig(bootstrap)
    ends = end_offsets(config, topic)
    out: list[KafkaRecord] = []
    deadline = time.monotonic() + timeout_s
    if isolation_level is None:
        with create_consumer(config, fast_client()) as consumer:
            consumer.assign(dict.fromkeys(ends, 0))
            while len(out) < sum(ends.values()) and time.monotonic() < deadline:
                out.extend(consumer.poll(0.5, 10000))
        return out
    with create_consumer(config, "kafka-python", isolation_level=isolation_level) as consumer:
        consumer.assign(dict.fromkeys(ends, 0))
        while True:
            out.extend(consumer.poll(0.5, 10000))
            behind = {tp: n for tp, n in ends.items() if consumer.position(tp) < n}
            if not behind:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"a {isolation_level} reader of {topic} stayed below the end offsets "
                    f"{behind} for {timeout_s:.0f}s (a transaction left open?)"
                )


def read_all(
    bootstrap: str, topic: str, timeout_s: float = 60.0, *, isolation_level: str | None = None
) -> list[dict]:
    """Every record of ``topic`` up to its end offsets now, JSON-decoded (``isolation_level``:
    see :func:`read_records`)."""
    return [
        json.loads(r.value)
        for r in read_records(bootstrap, topic, timeout_s, isolation_level=isolation_level)
    ]


def wait_until(
    condition: Callable[[], Any],
    what: str,
    *,
    timeout_s: float = 120.0,
    interval_s: float = 0.25,
    alive: Callable[[], str | None] | None = None,
) -> Any:
    """Polls ``condition`` until truthy (returned); ``alive()`` returning a message fails fast."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if alive is not None:
            problem = alive()
            if problem:
                raise AssertionError(f"gave up waiting for {what}: {problem}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def copy_with_beam(options: Any, config: Any, source: str, copy: str, n: int = 10) -> tuple:
    """Produces ``n`` records to ``source`` (2 partitions), runs a bounded Beam pipeline that
    reads them with ``ReadKafkaRecords`` (confluent) and writes them to ``copy`` with
    ``WriteKafkaRecords`` (kafka-python), checks what it read, and reads ``copy`` back.

    Returns:
        ``(read, pipeline, copied)``: the read transform and the pipeline (to look for
        secrets in), and the values found in ``copy``, sorted.
    """
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from ae_pipeline.beam import ReadKafkaRecords, WriteKafkaRecords
    from ae_pipeline.kafka import TopicPartition

    create_topics(config, {source: 2, copy: 1})
    values = [b"%d" % i for i in range(n)]
    with create_producer(config) as producer:
        for i, value in enumerate(values):
            producer.send(source, value, partition=i % 2)
        producer.flush(30)
    read = ReadKafkaRecords(source, config, bounded=True, client="confluent")
    with beam.Pipeline(options=options) as pipeline:
        batches = pipeline | read
        _ = batches | WriteKafkaRecords(copy, config)
        assert_that(batches | beam.FlatMap(lambda b: [r.value for r in b]), equal_to(values))
    with create_consumer(KafkaConfig.from_dict(config).with_group(None)) as consumer:
        consumer.assign({TopicPartition(copy, 0): 0})
        # A poll returns what has arrived when the first record does: poll until all are in.
        got: list = []
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            got.extend(consumer.poll(1, 10 * n))
        copied = sorted(r.value for r in got)
    return read, pipeline, copied


def round_trip(config: Any, client: str, topic: str) -> list[tuple]:
    """Creates ``topic``, produces one record to it and reads it back with ``client``;
    returns the ``(key, value)`` pairs read."""
    from ae_pipeline.kafka import TopicPartition

    create_topics(config, {topic: 1})
    with create_producer(config, client) as producer:
        producer.send(topic, b"v", key=b"k")
        assert producer.flush(30) == 1
    with create_consumer(config, client) as consumer:
        consumer.assign({TopicPartition(topic, 0): 0})
        return [(r.key, r.value) for r in consumer.poll(10, 10)]

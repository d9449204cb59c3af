"""Part (b) of the streaming benchmark: the plain consumer's records/s against its I/O and
compute limits, and the transactional consumer (see ``benchmarks.bench_streaming``)."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import numpy as np

from benchmarks.streaming.common import BATCH, COLUMNS, encode_records, normal_rows


class _FirstPoll:
    """A consumer client wrapper that notes when the first non-empty poll returned."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.first: float | None = None

    def poll(self, timeout_s: float, max_records: int) -> list:
        records = self._inner.poll(timeout_s, max_records)
        if records and self.first is None:
            self.first = time.perf_counter()
        return records

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def produce_all(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from ae_pipeline.kafka import create_producer

    producer = create_producer({"bootstrap.servers": bootstrap}, "confluent")
    for i in range(0, len(values), 10_000):
        for v in values[i : i + 10_000]:
            producer.send(topic, v)
        producer.flush(120)
    producer.close()


def consumer_run(
    bootstrap: str,
    client: str,
    topic: str,
    n: int,
    version_dir: str,
    scoring_process: bool | None = None,
    torch_threads: int | None = None,
    processing_guarantee: str = "at_least_once",
    on_consumer: Any = None,
    **options: Any,
) -> dict:
    """One run of the consumer over ``n`` records of ``topic`` (a fresh group); ``options`` go
    to :class:`~ae_pipeline.consumer.ScoringConsumer` (e.g. ``metrics_port``, ``drift``), which
    is handed to ``on_consumer`` before it runs."""
    from ae_pipeline.consumer import EXACTLY_ONCE, ScoringConsumer
    from ae_pipeline.kafka import create_consumer, create_producer

    config = {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}"}
    exactly_once = processing_guarantee == EXACTLY_ONCE
    consumer = _FirstPoll(
        create_consumer(
            config,
            client,
            max_poll_records=BATCH,
            **({"isolation_level": "read_committed"} if exactly_once else {}),
        )
    )
    # The transactional producer is the consumer's own (it initialises it).
    producer = None if exactly_once else create_producer(config, client)
    sc = ScoringConsumer(
        config,
        input_topic=topic,
        output_topic=f"{topic}-out",
        dead_letter_topic=f"{topic}-dlq",
        model_version_dir=version_dir,
        device="cpu",
        client=client,
        max_batch=BATCH,
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,
        scoring_process=scoring_process,
        torch_threads=torch_threads,
        processing_guarantee=processing_guarantee,
        **options,
    )
    if on_consumer is not None:
        on_consumer(sc)
    try:
        stats = sc.run(max_records=n, idle_timeout_s=30)  # the clock starts at the first poll
        end = time.perf_counter()
    finally:
        sc.close()
        consumer.close()
        if producer is not None:
            producer.close()
    assert consumer.first is not None
    return {
        "records": stats.records_in,
        "results": stats.results,
        "seconds": end - consumer.first,
        "records_per_s": stats.records_in / (end - consumer.first),
    }


def io_run(bootstrap: str, client: str, topic: str, n: int) -> dict:
    """The I/O limit: poll -> produce each value (``send_many``, as the consumer) -> flush ->
    commit (asynchronously, a last synchronous one at the end, like the consumer), no
    scoring."""
    from ae_pipeline.kafka import create_consumer, create_producer, next_offsets

    config = {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}"}
    consumer = create_consumer(config, client, max_poll_records=BATCH)
    producer = create_producer(config, client)
    consumer.subscribe([topic])
    got = 0
    first = None
    written: dict = {}
    idle_since = time.perf_counter()
    try:
        while got < n:
            records = consumer.poll(0.5, BATCH)
            if not records:
                if time.perf_counter() - idle_since > 30:
                    break
                continue
            idle_since = time.perf_counter()
            first = first or time.perf_counter()
            producer.send_many(f"{topic}-io", [(r.key, r.value, ()) for r in records])
            producer.flush(60)
            offsets = next_offsets(records)
            consumer.commit(offsets, asynchronous=client == "confluent")  # as the consumer
            written.update(offsets)
            got += len(records)
        consumer.commit(written)
        end = time.perf_counter()
    finally:
        consumer.close()
        producer.close()
    assert first is not None
    return {"records": got, "seconds": end - first, "records_per_s": got / (end - first)}


def compute_run(values: list[bytes], model: Any, scaler: Any) -> dict:
    """The compute limit: orjson decode + batched torch scoring, no Kafka."""
    import orjson

    from ae_pipeline.models import Scorer

    scorer = Scorer(model)
    t0 = time.perf_counter()
    for i in range(0, len(values), BATCH):
        recs = [orjson.loads(v) for v in values[i : i + BATCH]]
        x = np.array([[r[c] for c in COLUMNS] for r in recs], dtype=np.float32)
        scorer.errors(scaler.transform(x))
    wall = time.perf_counter() - t0
    return {"records": len(values), "seconds": wall, "records_per_s": len(values) / wall}


def serving_run(values: list[bytes], version_dir: str) -> dict:
    """Diagnostic: the consumer's own scoring path without Kafka (``score_records`` in flag
    mode, then ``to_messages`` of the outputs), per batch of ``BATCH``."""
    from ae_pipeline.serving import ServingModel, to_messages

    model = ServingModel.load(version_dir, device="cpu")
    t0 = time.perf_counter()
    for i in range(0, len(values), BATCH):
        results, _dead = model.score_records(values[i : i + BATCH], "flag")
        to_messages(results)
    wall = time.perf_counter() - t0
    return {"records": len(values), "seconds": wall, "records_per_s": len(values) / wall}


def bench_consumer(
    bootstrap: str, n: int, repeats: int, version_dir: str, model: Any, scaler: Any
) -> dict:
    import torch

    from ae_pipeline.kafka import create_topics
    from ae_pipeline.scoring_process import default_scoring_process, usable_cpus

    values = encode_records(normal_rows(n, 11))
    topic = f"tput-{uuid.uuid4().hex[:6]}"
    create_topics({"bootstrap.servers": bootstrap}, [topic, f"{topic}-out", f"{topic}-dlq"])
    create_topics({"bootstrap.servers": bootstrap}, [f"{topic}-io"])
    produce_all(bootstrap, topic, values)
    # "consumer" is the default configuration; with confluent, also the other scoring mode
    # (kafka-python's own I/O is the bottleneck there).
    default_process = default_scoring_process()
    other = "consumer_inline" if default_process else "consumer_process"
    scoring = {
        "consumer": None,
        "consumer_inline": False,
        "consumer_process": True,
        "consumer_exactly_once": None,
    }
    out: dict[str, Any] = {
        "records": n,
        "batch": BATCH,
        "default_scoring": "process" if default_process else "inline",
        "usable_cpus": usable_cpus(),
    }
    compute: list[dict] = []
    for client in ("kafka-python", "confluent"):
        kinds = ["consumer", "io", "compute"]
        if client == "confluent":
            kinds.insert(1, other)
            kinds.insert(2, "consumer_exactly_once")  # transactions, default scoring
        runs: dict[str, list[dict]] = {k: [] for k in kinds if k != "compute"}
        for r in range(repeats):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                if kind in scoring:
                    m = consumer_run(
                        bootstrap,
                        client,
                        topic,
                        n,
                        version_dir,
                        scoring_process=scoring[kind],
                        torch_threads=torch.get_num_threads(),
                        processing_guarantee="exactly_once"
                        if kind == "consumer_exactly_once"
                        else "at_least_once",
                    )
                elif kind == "io":
                    m = io_run(bootstrap, client, topic, n)
                else:
                    m = compute_run(values, model, scaler)
                    compute.append(m)
                if kind != "compute":
                    runs[kind].append(m)
                print(
                    f"  (b) {client:12s} {kind:16s} rep {r + 1}: {m['records_per_s']:9,.0f} "
                    f"rec/s ({m['records']} records in {m['seconds']:.2f}s)",
                    flush=True,
                )
        out[client] = {
            f"{kind}_records_per_s": statistics.median(m["records_per_s"] for m in runs[kind])
            for kind in runs
            if kind != "io"
        }
        out[client]["io_limit_records_per_s"] = statistics.median(
            m["records_per_s"] for m in runs["io"]
        )
        out[client]["runs"] = runs
    compute_rate = statistics.median(m["records_per_s"] for m in compute)
    out["compute_limit_records_per_s"] = compute_rate
    serving = [serving_run(values, version_dir) for _ in range(repeats)]
    out["serving_path_records_per_s"] = statistics.median(m["records_per_s"] for m in serving)
    print(
        f"  (b) diagnostic: score_records(flag) + to_message without Kafka: "
        f"{out['serving_path_records_per_s']:,.0f} rec/s",
        flush=True,
    )
    out["compute_runs"] = compute
    for client in ("kafka-python", "confluent"):
        c = out[client]
        c["ratio_consumer_over_io"] = c["consumer_records_per_s"] / c["io_limit_records_per_s"]
        c["ratio_consumer_over_compute"] = c["consumer_records_per_s"] / compute_rate
        c["ratio_consumer_over_min_limit"] = c["consumer_records_per_s"] / min(
            compute_rate, c["io_limit_records_per_s"]
        )
        if other in c["runs"]:
            # Both modes under their own names, whichever one is the default here.
            mode_runs = {
                "process": c["runs"]["consumer" if default_process else other],
                "inline": c["runs"][other if default_process else "consumer"],
            }
            for mode, mruns in mode_runs.items():
                rate = statistics.median(m["records_per_s"] for m in mruns)
                c[f"consumer_{mode}_records_per_s"] = rate
                c[f"ratio_consumer_{mode}_over_min_limit"] = rate / min(
                    compute_rate, c["io_limit_records_per_s"]
                )
            pairs = zip(mode_runs["process"], mode_runs["inline"], strict=True)
            c["ratio_consumer_process_over_inline"] = statistics.median(
                p["records_per_s"] / i["records_per_s"] for p, i in pairs
            )
        if "consumer_exactly_once" in c["runs"]:
            # Run for run against the at-least-once consumer (default scoring both).
            pairs = zip(c["runs"]["consumer_exactly_once"], c["runs"]["consumer"], strict=True)
            c["ratio_exactly_once_over_at_least_once"] = statistics.median(
                e["records_per_s"] / a["records_per_s"] for e, a in pairs
            )
    return out

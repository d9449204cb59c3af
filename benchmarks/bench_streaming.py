"""Streaming scoring: Beam throughput, plain-consumer throughput, latency and memory.

All figures come from one run, on one local Kafka broker (``ae_pipeline.local.kafka_broker``),
with one small model (24 features, 24-16-4-16-24) trained and published at start. Repeated
measurements alternate their order and the medians are reported.

(a) Beam flagging throughput: records/s of ``FlagAnomalies`` (JSON records in, one result per
    record out) on the FnApiRunner and on Prism (batch mode), against Beam's own
    ``AnomalyDetection(ZScore)`` in the same runner on the same records (goal >= 10x). Beam's
    ``apache_beam.ml.anomaly`` needs Beam >= 2.64 and the project pins 2.62 (README), so part
    (a) runs in the Beam 2.70 side environment (``.venv-beam-anomaly``, with Prism v2.70),
    every variant alike. Variants, all reading the same JSON-lines files (``FlatMap`` over file
    names, so the source costs the same) and ending in the same counting sink:
    ``beam_zscore`` (the baseline: ``json.loads`` -> ``beam.Row`` -> ``AnomalyDetection(ZScore(
    features=["f0"]))``; univariate, so it does less work than a 24-feature model),
    ``ae`` (``FlagAnomalies`` on one record per element), ``ae_batched`` (the
    same lines as lists of 500, one element per list as ``ReadKafkaRecords`` emits them, with
    ``FlagAnomalies(prebatched=True, emit_batches=True)``: the configuration of
    ``pipelines/stream.py``), ``ae_in_anomaly_detection`` (our detector,
    ``ae_pipeline.beam.anomaly.autoencoder_detector``, inside Beam's ``AnomalyDetection``) and
    ``naive_zscore`` (a per-element ``beam.Map`` with ``json`` and a running mean / std per
    feature, flagging ``max |z| > 3``; the previous baseline). A warm-up run of each (one
    file) precedes the measurements. Every variant runs at 50,000 records (5 repeats), and
    ``beam_zscore``, ``ae`` and ``ae_batched`` at 200,000 too (3 repeats, interleaved with the
    50,000-record runs; the same first 50,000 records). Reported, per runner:

    * end to end at 200,000 records (records / wall of ``pipeline.run()`` to finish; median
      of the per-repeat ratios over the baseline): the headline (``HEADLINE``, named in the
      results as ``beam_headline``; the goals ``beam_<runner>_<variant>_ge_10x_<measure>``).
      At 50,000 records our runs last 0.4-1 s, so a run's fixed costs (pipeline translation,
      runner and SDK harness start-up and shut-down, model load) and the machine's noise
      weigh more; at 200,000 they last seconds;
    * marginal, 50,000 -> 200,000 records: (150,000 records) / (median wall at 200,000 -
      median wall at 50,000), fixed costs cancelling out for the baseline and ours alike (a
      check on the headline; noisier, being a difference of two medians);
    * end to end at 50,000 records (all variants): the figure reported before the large size
      was added, kept (``ratio_..._end_to_end_50k``) so the two can be compared;
    * "active" at 50,000 (records / time from the first output to the last, noted by the sink:
      leaves out the runner's start-up and the model load; the baseline's first stage runs
      before any output, so this favours it).
(b) Plain consumer (``ScoringConsumer``) records/s with each client against the I/O limit (a
    bare poll -> produce -> flush -> commit loop with the same client, batch size and commit
    mode - asynchronous commits with confluent, a synchronous one at the end - no scoring) and
    the compute limit (``orjson`` decode + batched ``Scorer.errors`` of the same records, no Kafka).
    Timed from the first non-empty poll to the last batch committed.
    Goal: confluent consumer >= 0.7x the smaller limit. ``consumer`` is the consumer as
    configured by default (``scoring_process=None``: scoring in a child process where 2 CPUs
    are usable, else inline; ``default_scoring`` names which). With confluent, also the other
    way (``consumer_inline`` or ``consumer_process``), and scoring process / inline run for run,
    and the transactional consumer (``consumer_exactly_once``: ``--processing_guarantee
    exactly_once``, default scoring) against the at-least-once one, run for run (goal >= 0.8x).
(c) Latency, produce to result, at a steady 2,000 records/s: a paced producer stamps the send
    time into each record (``ts``, passed through to the result); a reader of the output topic
    computes receive time - ``ts``. For ``pipelines.consume`` (confluent; goal p99 < 1 s) and
    for ``pipelines.stream`` on Prism streaming (goal p99 < 3 s), and for the transactional
    consumer (``--processing_guarantee exactly_once``; one fifth of the time, at least 30 s;
    the reader is read_committed, so this is the latency to what such a reader sees; goal
    p99 < 1 s). The first seconds after the
    first result are warm-up and left out.
(d) RSS of the consumer process over the latency run (5 minutes; 30 s with ``--quick``),
    sampled every second; the slope of a least-squares line (MiB per minute) over the samples
    from the first result + warm-up (or after the first 20%, whichever is later).

Torch runs with one intra-op thread (``--torch_threads``, also passed to the scorer processes
as ``OMP_NUM_THREADS``): with torch's default on a shared 2-core machine, small-batch forward
passes stall on descheduled worker threads.

Usage::

    python -m benchmarks.bench_streaming            # ~15 minutes
    python -m benchmarks.bench_streaming --quick    # ~3 minutes

Writes ``benchmarks/results/streaming.json`` (``streaming_quick.json`` with ``--quick`` or
``--skip``, which the report leaves out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "streaming.json"
D = 24
COLUMNS = [f"f{j}" for j in range(D)]
BATCH = 500
RATE = 2000


# ---------------------------------------------------------------------------- data and model


def normal_rows(n: int, seed: int) -> np.ndarray:
    """``n`` rows of ``D`` features near a 4-D manifold, in original units."""
    mix = np.random.default_rng(1).normal(size=(4, D))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) @ mix + 0.1 * rng.normal(size=(n, D))
    return (x * 3.0 + 10.0).astype(np.float32)


def encode_records(rows: np.ndarray, start: int = 0) -> list[bytes]:
    import orjson

    out = []
    for i, row in enumerate(rows.tolist()):
        rec = {"id": start + i, **dict(zip(COLUMNS, row, strict=True))}
        out.append(orjson.dumps(rec))
    return out


def publish_model(root: Path) -> tuple[str, Any, Any]:
    """Trains a small model on synthetic rows and publishes it; returns (version dir,
    model, scaler)."""
    from ae_pipeline.artifact import save_artifact
    from ae_pipeline.features import ColumnStats, FeatureSpec, Scaler
    from ae_pipeline.models import ModelConfig, Scorer, TrainConfig, Trainer, build_model
    from ae_pipeline.registry import ModelRegistry

    x = normal_rows(20_000, 0)
    scaler = Scaler.fit("standard", ColumnStats.of(x))
    cfg = ModelConfig(D, hidden_dims=[16], latent_dim=4)
    model = build_model(cfg, seed=0)
    tcfg = TrainConfig(epochs=3, batch_size=256, lr=3e-3, progress=False, device="cpu", seed=0)
    Trainer(tcfg).fit(model, scaler.transform(x))
    calib = normal_rows(5000, 7)
    errors = Scorer(model).errors(scaler.transform(calib))
    threshold = {
        "value": float(np.quantile(errors, 0.99)),
        "method": "quantile",
        "param": 0.99,
        "n_calibration": len(calib),
        "histogram": {"edges": [], "counts": []},
    }
    spec = FeatureSpec(columns=COLUMNS, key_column="id")
    registry = ModelRegistry(str(root))
    version = registry.publish(
        lambda d: save_artifact(
            d,
            model,
            cfg,
            feature_columns=COLUMNS,
            scaler=scaler.to_dict(),
            threshold=threshold,
            extra={"feature_spec": spec.to_dict()},
        )
    )
    return str(root / version), model, scaler


# ---------------------------------------------------------------------------- (a) Beam

BASELINE = "beam_zscore"
BEAM_KINDS = ("beam_zscore", "ae", "ae_batched", "ae_in_anomaly_detection", "naive_zscore")
# The variants also measured at the large size (the goal's: the baseline and ours).
LARGE_KINDS = ("beam_zscore", "ae", "ae_batched")
# Which measurement the part (a) goals are judged on (see the module docstring).
HEADLINE = "end_to_end_large"
SIDE_PYTHON = ROOT / ".venv-beam-anomaly" / "bin" / "python"


class NaiveZScore:
    """The baseline: per element, ``json.loads`` and a running mean / std per feature."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = [0.0] * D
        self.m2 = [0.0] * D

    def __call__(self, value: bytes) -> dict:
        rec = json.loads(value)
        self.n += 1
        n = self.n
        zmax = 0.0
        for j, c in enumerate(COLUMNS):
            v = float(rec[c])
            delta = v - self.mean[j]
            self.mean[j] += delta / n
            self.m2[j] += delta * (v - self.mean[j])
            if n > 1:
                std = math.sqrt(self.m2[j] / (n - 1))
                if std > 0:
                    zmax = max(zmax, abs(v - self.mean[j]) / std)
        return {"id": rec["id"], "score": zmax, "is_anomaly": zmax > 3.0}


def _read_lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines()


def _read_chunks(path: str) -> list[list[bytes]]:
    """The same lines in lists of ``BATCH`` (what ``ReadKafkaRecords`` emits: one per poll)."""
    lines = _read_lines(path)
    return [lines[i : i + BATCH] for i in range(0, len(lines), BATCH)]


# First and last output time per run, noted by the counting sink. FnApiRunner and Prism with
# LOOPBACK run the SDK workers in this process, so the sink can write here.
_SEEN: dict[str, list[float]] = {}


class _Count:
    def __init__(self, run_id: str) -> None:
        from apache_beam.metrics import Metrics

        self.counter = Metrics.counter("bench", "out")
        self.run_id = run_id

    def __call__(self, element: Any) -> None:
        self.counter.inc(len(element) if isinstance(element, list) else 1)
        t = time.perf_counter()
        seen = _SEEN.setdefault(self.run_id, [t, t])
        seen[1] = t


def _to_row(value: bytes) -> Any:
    import apache_beam as beam

    return beam.Row(**json.loads(value))


def beam_run(kind: str, runner: str, files: list[str], version_dir: str) -> dict:
    """One pipeline run; returns wall seconds and the counted outputs."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from ae_pipeline.beam.transforms import FlagAnomalies
    from ae_pipeline.local.runners import runner_args

    pipeline = beam.Pipeline(options=PipelineOptions(runner_args(runner)))
    names = pipeline | "Files" >> beam.Create(files, reshuffle=False)
    if kind == "ae_batched":
        records = names | "Chunks" >> beam.FlatMap(_read_chunks)
        flag = FlagAnomalies(
            model_version_dir=version_dir, device="cpu", prebatched=True, emit_batches=True
        )
        results = (records | "Flag" >> flag).results
    else:
        records = names | "Lines" >> beam.FlatMap(_read_lines)
    if kind == "ae":
        out = records | "Flag" >> FlagAnomalies(model_version_dir=version_dir, device="cpu")
        results = out.results
    elif kind == "naive_zscore":
        results = records | "ZScore" >> beam.Map(NaiveZScore())
    elif kind in ("beam_zscore", "ae_in_anomaly_detection"):
        from apache_beam.ml.anomaly.detectors.zscore import ZScore
        from apache_beam.ml.anomaly.transforms import AnomalyDetection

        from ae_pipeline.beam.anomaly import autoencoder_detector

        detector = (
            ZScore(features=["f0"])
            if kind == "beam_zscore"
            else autoencoder_detector(version_dir, device="cpu")
        )
        rows = records | "Rows" >> beam.Map(_to_row)
        results = rows | "Detect" >> AnomalyDetection(detector)
    run_id = uuid.uuid4().hex
    _ = results | "Count" >> beam.Map(_Count(run_id))
    t0 = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - t0
    counted = None
    try:
        res = result.metrics().query(MetricsFilter().with_name("out"))
        counted = sum(c.committed or c.attempted or 0 for c in res["counters"])
    except Exception:  # metrics are best effort on some runners
        pass
    seen = _SEEN.pop(run_id, None)
    active = seen[1] - seen[0] if seen else None
    return {"wall_s": wall, "outputs": counted, "first_to_last_output_s": active}


def marginal_rate(n_small: int, wall_small: float, n_large: int, wall_large: float) -> float:
    """Records/s of the records a larger run adds: ``(n_large - n_small) / (wall_large -
    wall_small)``. The fixed cost of a run (translation, runner and SDK start-up, model load)
    is the same at both sizes and cancels out; NaN when the larger run was not slower."""
    extra_s = wall_large - wall_small
    if n_large <= n_small or not extra_s > 0:
        return float("nan")
    return (n_large - n_small) / extra_s


def _summary(runs: dict[str, list[dict]], kinds: tuple[str, ...]) -> dict[str, Any]:
    """Medians of the rates and of the per-repeat ratios over the baseline."""

    def ratio(kind: str, key: str) -> float:
        return statistics.median(
            a[key] / z[key] if a[key] and z[key] else float("nan")
            for a, z in zip(runs[kind], runs[BASELINE], strict=True)
        )

    res: dict[str, Any] = {}
    for kind in kinds:
        res[f"{kind}_wall_s"] = statistics.median(m["wall_s"] for m in runs[kind])
        res[f"{kind}_records_per_s"] = statistics.median(m["records_per_s"] for m in runs[kind])
        res[f"{kind}_active_records_per_s"] = statistics.median(
            m["active_records_per_s"] or float("nan") for m in runs[kind]
        )
    for kind in kinds:
        res[f"ratio_{kind}_end_to_end"] = ratio(kind, "records_per_s")
        res[f"ratio_{kind}_active"] = ratio(kind, "active_records_per_s")
    return res


def bench_beam(
    runners: list[str],
    n: int,
    repeats: int,
    version_dir: str,
    tmp: Path,
    large_n: int | None = None,
    large_repeats: int = 3,
) -> dict:
    """Part (a): every variant at ``n`` records (``repeats`` times), and the headline variants
    (:data:`LARGE_KINDS`) at ``large_n`` too (``large_repeats`` times), interleaved; the
    ``n``-record files are the first of the ``large_n`` ones (same records, same seeds)."""
    per_file = 5000
    n_files = max(1, n // per_file)
    n_large_files = max(n_files, (large_n or 0) // per_file)
    files = []
    data = tmp / "beam-data"
    data.mkdir()
    for k in range(n_large_files):
        path = data / f"part-{k}.jsonl"
        path.write_bytes(b"\n".join(encode_records(normal_rows(per_file, 100 + k), k * per_file)))
        files.append(str(path))
    small_files = files[:n_files]
    n = len(small_files) * per_file
    large_n = len(files) * per_file if n_large_files > n_files else None
    out: dict[str, Any] = {"records": n, "large_records": large_n, "headline": HEADLINE}
    kinds = BEAM_KINDS
    large_kinds = LARGE_KINDS if large_n else ()
    for runner in runners:
        for kind in kinds:  # warm-up (imports, model load, runner binary), not counted
            beam_run(kind, runner, files[:1], version_dir)
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        large_runs: dict[str, list[dict]] = {k: [] for k in large_kinds}
        for r in range(max(repeats, large_repeats if large_n else 0)):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                sizes = [(runs, small_files)] if r < repeats else []
                if kind in large_kinds and r < large_repeats:
                    sizes.append((large_runs, files))
                for into, which in sizes if r % 2 == 0 else sizes[::-1]:
                    records = len(which) * per_file
                    big = beam_run(kind, runner, which, version_dir)
                    active = big["first_to_last_output_s"]
                    m = {
                        "wall_s": big["wall_s"],
                        "first_to_last_output_s": active,
                        "outputs": big["outputs"],
                        "records_per_s": records / big["wall_s"],
                        "active_records_per_s": records / active if active else None,
                    }
                    into[kind].append(m)
                    print(
                        f"  (a) {runner:6s} {kind:10s} {records:7,d} rep {r + 1}: "
                        f"{m['records_per_s']:9,.0f} rec/s end to end ({big['wall_s']:.2f}s), "
                        f"first to last output {active or float('nan'):.2f}s, "
                        f"outputs {big['outputs']}",
                        flush=True,
                    )
        # At ``n`` records (the figures reported before the large size was added): a run
        # lasts ~0.5 s for our variants, a third of it fixed start-up cost.
        res: dict[str, Any] = {"baseline": BASELINE, **_summary(runs, kinds), "runs": runs}
        if large_n:
            large = _summary(large_runs, large_kinds)
            marginal: dict[str, Any] = {}
            for kind in large_kinds:
                marginal[f"{kind}_records_per_s"] = marginal_rate(
                    n, res[f"{kind}_wall_s"], large_n, large[f"{kind}_wall_s"]
                )
            for kind in large_kinds:
                marginal[f"ratio_{kind}"] = (
                    marginal[f"{kind}_records_per_s"] / marginal[f"{BASELINE}_records_per_s"]
                )
            res["large"] = {"records": large_n, **large, "runs": large_runs}
            res["marginal"] = {"records": [n, large_n], **marginal}
        out[runner] = res
    return out


# ---------------------------------------------------------------------------- (b) consumer


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
) -> dict:
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
    )
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


# ---------------------------------------------------------------------------- (c, d) latency


def _rss_mib(pid: int) -> float | None:
    total = 0.0
    found = False
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
                        found = True
        except OSError:
            pass
    return total if found else None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


class _Reader(threading.Thread):
    """Reads the output topic; notes (send ts, receive time) of each result."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        import confluent_kafka as ck

        self._consumer = ck.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.subscribe([topic])
        self.samples: list[tuple[float, float]] = []
        self.first: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        import orjson

        while not self.stop.is_set():
            # consume() with a timeout waits for the whole batch: drain what is buffered, and
            # when nothing is, wait for one message only (it adds no latency of its own).
            msgs = self._consumer.consume(1000, 0)
            if not msgs:
                first = self._consumer.poll(0.05)
                msgs = [first] if first is not None else []
            now = time.time()
            for m in msgs:
                if m.error() or m.value() is None:
                    continue
                ts = orjson.loads(m.value()).get("ts")
                if ts is not None:
                    self.samples.append((ts, now))
            if msgs and self.first is None:
                self.first = now
        self._consumer.close()


def paced_latency(
    bootstrap: str,
    cmd: list[str],
    topics: tuple[str, str, str],
    seconds: float,
    warmup_s: float,
    start_timeout_s: float,
    log: Path,
) -> dict:
    """Starts ``cmd`` (the scorer), produces ``RATE`` records/s stamped with ``ts`` into the
    input topic until ``seconds`` after the first result, samples the scorer's RSS; returns
    latency percentiles and the RSS series."""
    import confluent_kafka as ck

    from ae_pipeline.kafka import create_topics

    in_topic, out_topic, dlq = topics
    create_topics({"bootstrap.servers": bootstrap}, [in_topic, out_topic, dlq])
    reader = _Reader(bootstrap, out_topic)
    reader.start()
    rows = normal_rows(5000, 21)
    bodies = [
        b"," + json.dumps(dict(zip(COLUMNS, r, strict=True))).encode()[1:] for r in rows.tolist()
    ]
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all"})
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
    rss: list[tuple[float, float]] = []
    sent = 0
    t_start = time.time()
    next_rss = t_start
    tick = 0.01
    per_tick = int(RATE * tick)
    end: float | None = None
    try:
        next_send = time.time()
        while True:
            now = time.time()
            if proc.poll() is not None:
                tail = log.read_bytes()[-3000:].decode(errors="replace")
                raise RuntimeError(f"scorer exited with {proc.returncode}; log tail:\n{tail}")
            if reader.first is None and now - t_start > start_timeout_s:
                raise RuntimeError(f"no result within {start_timeout_s}s; see {log}")
            if end is None and reader.first is not None:
                end = reader.first + warmup_s + seconds
            if end is not None and now >= end:
                break
            if now >= next_send:
                for _ in range(per_tick):
                    body = bodies[sent % len(bodies)]
                    value = b'{"id":%d,"ts":%.6f' % (sent, time.time()) + body
                    producer.produce(in_topic, value)
                    sent += 1
                producer.poll(0)
                next_send += tick
            if now >= next_rss:
                m = _rss_mib(proc.pid)
                if m is not None:
                    rss.append((now - t_start, m))
                next_rss += 1.0
            time.sleep(max(0.0, min(next_send, next_rss) - time.time()))
        producer.flush(30)
        time.sleep(2.0)  # let the last results arrive
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.stop.set()
        reader.join(10)
    assert reader.first is not None and end is not None
    window = (reader.first + warmup_s, end - 0.5)
    lat = np.array([r - s for s, r in reader.samples if window[0] <= s <= window[1]])
    sent_in_window = sum(1 for s, _ in reader.samples if window[0] <= s <= window[1])
    out: dict[str, Any] = {
        "rate_records_per_s": RATE,
        "sent": sent,
        "results_received": len(reader.samples),
        "measured_results": int(lat.size),
        "measured_window_s": window[1] - window[0],
        "startup_to_first_result_s": reader.first - t_start,
        "measure_from_s": reader.first + warmup_s - t_start,
    }
    if lat.size:
        out.update(
            {
                "p50_s": float(np.percentile(lat, 50)),
                "p99_s": float(np.percentile(lat, 99)),
                "max_s": float(lat.max()),
                "achieved_records_per_s": sent_in_window / (window[1] - window[0]),
            }
        )
    out["rss"] = rss
    return out


def rss_slope(series: list[tuple[float, float]], start_s: float) -> dict:
    """Least-squares slope of RSS over the samples from ``start_s`` (first result + warm-up)
    or after the first 20% of the run, whichever is later."""
    if len(series) < 5:
        return {"samples": len(series)}
    t = np.array([s for s, _ in series])
    m = np.array([v for _, v in series])
    keep = t >= max(start_s, t[0] + 0.2 * (t[-1] - t[0]))
    if keep.sum() < 3:
        return {"samples": len(series)}
    slope = float(np.polyfit(t[keep], m[keep], 1)[0]) * 60.0
    return {
        "samples": len(series),
        "span_s": float(t[-1] - t[0]),
        "fit_from_s": float(t[keep][0] - t[0]),
        "first_mib": float(m[0]),
        "at_fit_start_mib": float(m[keep][0]),
        "last_mib": float(m[-1]),
        "max_mib": float(m.max()),
        "slope_mib_per_min": slope,
    }


def bench_latency(bootstrap: str, version_dir: str, seconds: float, prism_s: float, tmp: Path):
    from ae_pipeline.local.runners import runner_args

    py = sys.executable
    tag = uuid.uuid4().hex[:6]
    topics = (f"lat-{tag}", f"lat-{tag}-out", f"lat-{tag}-dlq")
    consume = [
        py, "-m", "pipelines.consume",
        "--bootstrap_servers", bootstrap, "--group_id", f"lat-{tag}",
        "--input_topic", topics[0], "--output_topic", topics[1], "--dead_letter_topic", topics[2],
        "--mode", "flag", "--model_version_dir", version_dir, "--client", "confluent",
        "--device", "cpu", "--passthrough", "ts", "--log_level", "WARNING",
    ]  # fmt: skip
    print(f"  (c,d) consumer at {RATE}/s for {seconds:.0f}s ...", flush=True)
    cons = paced_latency(bootstrap, consume, topics, seconds, 3.0, 120, tmp / "consume.log")
    cons["rss_fit"] = rss_slope(cons["rss"], cons["measure_from_s"])
    # The transactional consumer, same rate: latency to what a read_committed reader sees (the
    # reader is librdkafka's, read_committed by default).
    eos_s = max(30.0, seconds / 5)
    etopics = (f"le-{tag}", f"le-{tag}-out", f"le-{tag}-dlq")
    eos_cmd = [
        *consume[: consume.index("--group_id")],
        "--group_id", f"le-{tag}",
        "--input_topic", etopics[0], "--output_topic", etopics[1],
        "--dead_letter_topic", etopics[2],
        *consume[consume.index("--mode"):],
        "--processing_guarantee", "exactly_once",
    ]  # fmt: skip
    print(f"  (c) consumer, exactly once, at {RATE}/s for {eos_s:.0f}s ...", flush=True)
    eos = paced_latency(bootstrap, eos_cmd, etopics, eos_s, 3.0, 120, tmp / "consume_eos.log")
    ptopics = (f"pl-{tag}", f"pl-{tag}-out", f"pl-{tag}-dlq")
    stream = [
        py, "-m", "pipelines.stream",
        "--bootstrap_servers", bootstrap, "--group_id", f"pl-{tag}", "--start", "earliest",
        "--input_topic", ptopics[0], "--output_topic", ptopics[1],
        "--dead_letter_topic", ptopics[2],
        "--mode", "flag", "--model_version_dir", version_dir, "--kafka_client", "confluent",
        "--device", "cpu", "--passthrough", "ts",
        *runner_args("prism", streaming=True),
    ]  # fmt: skip
    print(f"  (c) pipelines.stream on Prism at {RATE}/s for {prism_s:.0f}s ...", flush=True)
    try:
        prism = paced_latency(bootstrap, stream, ptopics, prism_s, 10.0, 180, tmp / "stream.log")
        prism["rss_fit"] = rss_slope(prism["rss"], prism["measure_from_s"])
    except Exception as err:
        log = (tmp / "stream.log").read_text(errors="replace")[-3000:]
        print(f"  Prism latency run failed: {err}\n{log}", flush=True)
        prism = {"error": str(err), "log_tail": log}
    return cons, eos, prism


# ---------------------------------------------------------------------------- main


def run_part_a(
    version_dir: str,
    n: int,
    repeats: int,
    torch_threads: int,
    large_n: int = 0,
    large_repeats: int = 3,
) -> dict:
    """Part (a) in the Beam 2.70 side environment (``AnomalyDetection`` needs Beam >= 2.64)."""
    if not SIDE_PYTHON.exists():
        raise SystemExit(f"{SIDE_PYTHON} is missing: run `make bench-deps`")
    with tempfile.TemporaryDirectory() as tmpdir:
        out = Path(tmpdir) / "beam.json"
        cmd = [
            str(SIDE_PYTHON), "-m", "benchmarks.bench_streaming", "--part_a_only", str(out),
            "--version_dir", version_dir, "--beam_n", str(n), "--beam_repeats", str(repeats),
            "--beam_large_n", str(large_n), "--beam_large_repeats", str(large_repeats),
            "--torch_threads", str(torch_threads),
        ]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True)
        return json.loads(out.read_text())


def _size(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def part_a_ratios(beam: dict) -> tuple[dict[str, float], dict[str, bool], str | None]:
    """The ratios over the baseline of part (a)'s results, each named by what it measures
    (``end_to_end_50k``: wall of ``pipeline.run()`` at 50,000 records, the figure reported
    before the large size was added; ``end_to_end_200k``; ``marginal_50k_200k``: records/s of
    the records the large run adds, see :func:`marginal_rate`), the >= 10x goals of the
    headline measurement (:data:`HEADLINE`) and of the 50,000-record one, and a line saying
    which measurement is the headline."""
    ratios: dict[str, float] = {}
    goals: dict[str, bool] = {}
    if not beam:
        return ratios, goals, None
    small = f"end_to_end_{_size(beam['records'])}"
    large_n = beam.get("large_records")
    large = f"end_to_end_{_size(large_n)}" if large_n else None
    marginal = f"marginal_{_size(beam['records'])}_{_size(large_n)}" if large_n else None
    headline = large if HEADLINE == "end_to_end_large" and large else small
    if HEADLINE == "marginal" and marginal:
        headline = marginal
    for runner in ("fnapi", "prism"):
        b = beam.get(runner)
        if not b:
            continue
        by_label: dict[str, dict[str, float]] = {small: {}}
        for kind in BEAM_KINDS[1:]:
            by_label[small][kind] = b[f"ratio_{kind}_end_to_end"]
        if large and marginal and "large" in b:
            by_label[large] = {k: b["large"][f"ratio_{k}_end_to_end"] for k in LARGE_KINDS[1:]}
            by_label[marginal] = {k: b["marginal"][f"ratio_{k}"] for k in LARGE_KINDS[1:]}
        for label, per_kind in by_label.items():
            for kind, value in per_kind.items():
                ratios[f"ratio_beam_{runner}_{kind}_over_beam_zscore_{label}"] = value
        ratios[f"ratio_beam_{runner}_ae_over_beam_zscore_active_{_size(beam['records'])}"] = b[
            "ratio_ae_active"
        ]
        for label in dict.fromkeys((headline, small)):
            for kind in ("ae", "ae_batched"):
                if kind in by_label.get(label, {}):
                    goals[f"beam_{runner}_{kind}_ge_10x_{label}"] = by_label[label][kind] >= 10
    line = (
        f"{headline}: "
        + {
            small: f"wall of pipeline.run() to finish at {beam['records']:,} records",
            large: f"wall of pipeline.run() to finish at {large_n or 0:,} records",
            marginal: f"(records added) / (wall added) from {beam['records']:,} to "
            f"{large_n or 0:,} records (fixed start-up costs cancel out)",
        }[headline]
        + (
            "; ratio of the rates from the median walls at each size"
            if headline == marginal
            else "; median of the per-repeat ratios"
        )
    )
    return ratios, goals, line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part_a_only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--version_dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--beam_n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--beam_repeats", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--beam_large_n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--beam_large_repeats", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c")
    ap.add_argument(
        "--torch_threads",
        type=int,
        default=1,
        help="torch intra-op threads here and in the scorer processes (0: torch's default)",
    )
    args = ap.parse_args(argv)
    if args.torch_threads > 0:
        # On a shared 2-core machine torch's default (one spinning thread per core) makes each
        # small-batch forward pass wait for a descheduled worker: seconds per pipeline run.
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
        import torch

        torch.set_num_threads(args.torch_threads)
    skip = set(filter(None, args.skip.split(",")))
    logging.basicConfig(level=logging.WARNING)
    if args.part_a_only:  # the side-environment half of part (a)
        import apache_beam

        # Through the importable module, not __main__: Beam 2.70 pickles __main__'s classes by
        # value, and the counting sink must write this module's _SEEN.
        from benchmarks import bench_streaming as module

        with tempfile.TemporaryDirectory() as tmpdir:
            beam = module.bench_beam(
                ["fnapi", "prism"],
                args.beam_n,
                args.beam_repeats,
                args.version_dir,
                Path(tmpdir),
                large_n=args.beam_large_n or None,
                large_repeats=args.beam_large_repeats,
            )
        beam["beam_version"] = apache_beam.__version__
        Path(args.part_a_only).write_text(json.dumps(beam))
        return 0
    logging.getLogger("kafka").setLevel(logging.ERROR)
    q = args.quick
    beam_n, beam_repeats = (20_000, 2) if q else (50_000, 5)
    beam_large_n, beam_large_repeats = (60_000, 2) if q else (200_000, 3)
    cons_n, cons_repeats = (20_000, 1) if q else (50_000, 3)
    lat_s, prism_s = (30.0, 20.0) if q else (300.0, 60.0)

    from ae_pipeline.local.kafka_broker import KafkaBroker

    result: dict[str, Any] = {
        "benchmark": "streaming",
        "quick": q,
        "features": D,
        "model": f"{D}-16-4-16-{D}",
        "torch_threads": args.torch_threads or "default",
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()),
        },
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        version_dir, model, scaler = publish_model(tmp / "models")
        print(f"model published: {version_dir}", flush=True)
        if "a" not in skip:
            beam = run_part_a(
                version_dir,
                beam_n,
                beam_repeats,
                args.torch_threads,
                beam_large_n,
                beam_large_repeats,
            )
            # What part (a)'s goals are judged on, and the goals, ahead of the figures (the
            # report's table shows a result's first rows only).
            _, beam_goals, result["beam_headline"] = part_a_ratios(beam)
            result["beam_goals"] = beam_goals
            result["beam"] = beam
        with KafkaBroker() as broker:
            bootstrap = broker.bootstrap_servers
            print(f"broker at {bootstrap}", flush=True)
            if "b" not in skip:
                result["consumer_throughput"] = bench_consumer(
                    bootstrap, cons_n, cons_repeats, version_dir, model, scaler
                )
            if "c" not in skip:
                cons, eos, prism = bench_latency(bootstrap, version_dir, lat_s, prism_s, tmp)
                result["latency_consumer"] = cons
                result["latency_consumer_exactly_once"] = eos
                result["latency_prism"] = prism
    result["seconds"] = time.perf_counter() - t0

    # headline ratios and goals
    goals: dict[str, Any] = {}
    beam_ratios, beam_goals, _ = part_a_ratios(result.get("beam", {}))
    result.update(beam_ratios)
    goals.update(beam_goals)
    ct = result.get("consumer_throughput")
    if ct:
        for client, key in (("confluent", "confluent"), ("kafka-python", "kafka_python")):
            result[f"ratio_consumer_{key}_over_min_limit"] = ct[client][
                "ratio_consumer_over_min_limit"
            ]
        goals["consumer_confluent_ge_0.7x_min_limit"] = (
            ct["confluent"]["ratio_consumer_over_min_limit"] >= 0.7
        )
        result["consumer_default_scoring"] = ct["default_scoring"]
        for mode in ("process", "inline"):
            ratio = ct["confluent"].get(f"ratio_consumer_{mode}_over_min_limit")
            if ratio is not None:
                result[f"ratio_consumer_confluent_scoring_{mode}_over_min_limit"] = ratio
    lc = result.get("latency_consumer")
    if lc and "p99_s" in lc:
        goals["consumer_p99_lt_1s"] = lc["p99_s"] < 1.0
        result["rss_slope_mib_per_min"] = lc["rss_fit"].get("slope_mib_per_min")
    le = result.get("latency_consumer_exactly_once")
    if le and "p99_s" in le:
        goals["consumer_exactly_once_p99_lt_1s"] = le["p99_s"] < 1.0
    if ct and "ratio_exactly_once_over_at_least_once" in ct["confluent"]:
        ratio = ct["confluent"]["ratio_exactly_once_over_at_least_once"]
        result["ratio_consumer_confluent_exactly_once_over_at_least_once"] = ratio
        goals["consumer_confluent_exactly_once_ge_0.8x_at_least_once"] = ratio >= 0.8
    lp = result.get("latency_prism")
    if lp and "p99_s" in lp:
        goals["prism_p99_lt_3s"] = lp["p99_s"] < 3.0
    result["goals"] = goals
    result["ratio_goals"] = (
        "beam ae and ae_batched / AnomalyDetection(ZScore) >= 10 (records/s; the headline: "
        "beam_headline); consumer (confluent) / min(io, compute) >= 0.7"
    )
    # A smoke run (--quick) or a partial one (--skip) must not replace the full figures.
    out = RESULTS.with_name("streaming_quick.json") if q or skip else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"written to {out} ({result['seconds']:.0f}s)")
    return 0


def print_table(r: dict) -> None:
    print("\n" + "=" * 78)
    if "beam" in r:
        print(f"(a) Beam flagging, {r['beam']['records']:,} JSON records x {D} features")
        print(
            "    records/s end to end (active: first to last output); ratios over Beam's "
            f"AnomalyDetection(ZScore); Beam {r['beam'].get('beam_version')}"
        )
        print(f"    {'runner':7s} {'variant':23s} {'rec/s':>9s} {'ratio':>6s} "
              f"{'active':>9s} {'ratio':>6s}")  # fmt: skip
        for runner in ("fnapi", "prism"):
            b = r["beam"].get(runner)
            if not b:
                continue
            for kind in BEAM_KINDS:
                print(
                    f"    {runner:7s} {kind[:23]:23s} {b[f'{kind}_records_per_s']:9,.0f} "
                    f"{b[f'ratio_{kind}_end_to_end']:6.2f} "
                    f"{b[f'{kind}_active_records_per_s']:9,.0f} {b[f'ratio_{kind}_active']:6.2f}"
                )
            if "large" in b:
                large, marginal = b["large"], b["marginal"]
                print(
                    f"    {runner:7s} at {large['records']:,} records: rec/s end to end (ratio); "
                    f"marginal rec/s {r['beam']['records']:,} -> {large['records']:,} (ratio)"
                )
                for kind in LARGE_KINDS:
                    print(
                        f"    {runner:7s} {kind[:23]:23s} {large[f'{kind}_records_per_s']:9,.0f} "
                        f"{large[f'ratio_{kind}_end_to_end']:6.2f} "
                        f"{marginal[f'{kind}_records_per_s']:9,.0f} "
                        f"{marginal.get(f'ratio_{kind}', float('nan')):6.2f}"
                    )
        if r.get("beam_headline"):
            print(f"    headline: {r['beam_headline']}")
    ct = r.get("consumer_throughput")
    if ct:
        print(f"(b) plain consumer, {ct['records']:,} records; compute limit "
              f"{ct['compute_limit_records_per_s']:,.0f} rec/s; scoring path without Kafka "
              f"{ct['serving_path_records_per_s']:,.0f} rec/s")  # fmt: skip
        for client in ("kafka-python", "confluent"):
            c = ct[client]
            print(
                f"    {client:12s} consumer {c['consumer_records_per_s']:9,.0f}  io limit "
                f"{c['io_limit_records_per_s']:9,.0f}  consumer/min(limits) "
                f"{c['ratio_consumer_over_min_limit']:.2f}"
            )
            if "ratio_consumer_process_over_inline" in c:
                for mode in ("process", "inline"):
                    print(
                        f"    {'':12s} scoring {mode:7s} "
                        f"{c[f'consumer_{mode}_records_per_s']:9,.0f}"
                        f"  /min(limits) {c[f'ratio_consumer_{mode}_over_min_limit']:.2f}"
                    )
                print(
                    f"    {'':12s} process / inline, run for run "
                    f"{c['ratio_consumer_process_over_inline']:.2f} (default here: "
                    f"{ct['default_scoring']})"
                )
            if "ratio_exactly_once_over_at_least_once" in c:
                print(
                    f"    {'':12s} exactly once "
                    f"{c['consumer_exactly_once_records_per_s']:9,.0f}  / at least once, run "
                    f"for run {c['ratio_exactly_once_over_at_least_once']:.2f} (goal >= 0.8)"
                )
    for name in ("latency_consumer", "latency_consumer_exactly_once", "latency_prism"):
        lat = r.get(name)
        if lat and "p99_s" in lat:
            print(
                f"(c) {name:29s} p50 {lat['p50_s'] * 1000:7.1f} ms  p99 {lat['p99_s'] * 1000:7.1f}"
                f" ms  max {lat['max_s'] * 1000:7.1f} ms  ({lat['measured_results']} results, "
                f"{lat['achieved_records_per_s']:.0f} rec/s sent)"
            )
        elif lat:
            print(f"(c) {name}: {lat.get('error', 'no results')}")
    lc = r.get("latency_consumer")
    if lc and "rss_fit" in lc:
        f = lc["rss_fit"]
        if "slope_mib_per_min" in f:
            print(
                f"(d) consumer RSS {f['first_mib']:.0f} -> {f['last_mib']:.0f} MiB over "
                f"{f['span_s']:.0f}s; slope from warm-up: {f['slope_mib_per_min']:+.2f} "
                "MiB/min"
            )
    print(f"goals: {r.get('goals')}")


if __name__ == "__main__":
    sys.exit(main())

"""The whole loop on embedded defaults (``make demo``).

1. Historical data: 40,000 rows of 16 correlated "sensor" readings, written as Parquet shards.
2. The Beam batch training job (FnApiRunner) trains an autoencoder, calibrates its threshold
   and publishes a model version.
3. A real local Kafka broker starts; 5,000 fresh records are produced to it, 2% of them with
   planted anomalies and a few poison records (bad JSON, missing field, string, NaN).
4. The scoring job reads the topic, flags records, writes results and dead letters to topics.
5. Drift: the sensors are recalibrated; the plain consumer's drift monitor sends a drift
   event, the drift listener retrains on the newest daily partition, the consumer swaps to the
   new version and the drift figures fall back under the limit (``pipelines/demo_drift.py``;
   ``out/demo/drift.png``).
6. A short report: counts, precision and recall against the planted anomalies, throughput,
   the drift step, and a plot (``out/demo/report.png``).

Everything is written under ``out/demo/`` (``--out`` to change it).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

FEATURES = [f"sensor_{i:02d}" for i in range(16)]


def make_history(path: Path, rows: int, seed: int = 0) -> None:
    """Correlated sensor data: 4 hidden factors drive 16 readings, plus noise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    mixing = np.random.default_rng(1234).normal(size=(4, len(FEATURES)))
    rng = np.random.default_rng(seed)
    for shard, ids in enumerate(np.array_split(np.arange(rows), 4)):
        x = normal_rows(rng, len(ids), mixing)
        cols = {"id": ids}
        cols.update({name: x[:, j] for j, name in enumerate(FEATURES)})
        pq.write_table(pa.table(cols), path / f"part-{shard}.parquet", row_group_size=5000)


def normal_rows(rng, n: int, mixing: np.ndarray) -> np.ndarray:
    factors = rng.normal(size=(n, mixing.shape[0]))
    return 20.0 + 3.0 * (factors @ mixing) + 0.3 * rng.normal(size=(n, mixing.shape[1]))


def fresh_records(n: int, anomaly_rate: float, seed: int = 99) -> tuple[list[bytes], set[int]]:
    """JSON records with planted anomalies (ids returned) and a few poison records."""
    mixing = np.random.default_rng(1234).normal(size=(4, len(FEATURES)))
    rng = np.random.default_rng(seed)
    x = normal_rows(rng, n, mixing)
    planted = set(rng.choice(n, int(n * anomaly_rate), replace=False).tolist())
    for i in planted:  # break the correlation structure in a few sensors
        cols = rng.choice(len(FEATURES), 3, replace=False)
        x[i, cols] += rng.choice([-1, 1], 3) * rng.uniform(6, 12, 3)
    records = [
        json.dumps(
            {"id": i, **{f: round(float(v), 4) for f, v in zip(FEATURES, x[i], strict=True)}}
        ).encode()
        for i in range(n)
    ]
    poison = [
        b"{not json",
        json.dumps({"id": -1, "sensor_00": 1.0}).encode(),
        json.dumps({"id": -2, **dict.fromkeys(FEATURES, "high")}).encode(),
        b'{"id": -3, "sensor_00": NaN}',
        b"[1, 2, 3]",
    ]
    for k, p in enumerate(poison):
        records.insert(1 + k * (n // len(poison)), p)
    return records, planted


def produce(bootstrap: str, topic: str, records: list[bytes]) -> float:
    from kafka import KafkaProducer

    t0 = time.perf_counter()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for r in records:
        producer.send(topic, r)
    producer.flush()
    producer.close()
    return time.perf_counter() - t0


def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 60) -> list[dict]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
        enable_auto_commit=False,
    )
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        out.extend(json.loads(m.value) for m in consumer)
    consumer.close()
    return out


def plot(path: Path, results: list[dict], planted: set[int], threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.array([r["score"] for r in results])
    is_planted = np.array([r.get("key", r.get("id")) in planted for r in results])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    bins = np.logspace(np.log10(max(scores.min(), 1e-4)), np.log10(scores.max()), 60)
    ax.hist(scores[~is_planted], bins=bins, alpha=0.7, label="normal records")
    ax.hist(scores[is_planted], bins=bins, alpha=0.8, label="planted anomalies")
    ax.axvline(threshold, color="tab:red", label=f"threshold {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("reconstruction error")
    ax.set_ylabel("records")
    ax.set_title("ae-pipeline demo: scores of the streamed records")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


PROG = "ae-pipeline demo"


def parse_args(argv: list[str] | None):
    """The demo's options; a mistake raises :class:`~ae_pipeline.beam.options.UsageError`."""
    from ae_pipeline.beam.options import LOG_LEVELS, StrictArgumentParser, UsageError

    parser = StrictArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--out", default="out/demo", help="where everything is written")
    parser.add_argument(
        "--history_rows", type=int, default=40_000, help="rows of historical data to train on"
    )
    parser.add_argument("--records", type=int, default=5_000, help="records streamed to Kafka")
    parser.add_argument("--epochs", type=int, default=25, help="training epochs (at most)")
    parser.add_argument(
        "--log_level",
        default="WARNING",
        type=str.upper,
        choices=LOG_LEVELS,
        help="INFO adds the jobs' own progress lines, DEBUG Beam's and Kafka's too",
    )
    args = parser.parse_args(argv)
    for name, low in (("history_rows", 1000), ("records", 100), ("epochs", 1)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """``ae-pipeline demo``: 0 when every record came back scored or dead-lettered."""
    from ae_pipeline.beam.options import run_command

    return run_command(PROG, _run, argv)


def _run(argv: list[str]) -> int:
    from ae_pipeline.beam.options import configure_logging

    args = parse_args(argv)
    configure_logging(args.log_level)

    from ae_pipeline.kafka import create_topics
    from ae_pipeline.local.kafka_broker import KafkaBroker
    from ae_pipeline.local.runners import runner_args
    from ae_pipeline.registry import ModelRegistry
    from pipelines import demo_drift
    from pipelines import stream as stream_job
    from pipelines import train as train_job

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print(f"[1/6] writing {args.history_rows:,} historical rows to {out / 'history'}")
    make_history(out / "history", args.history_rows)

    print("[2/6] training on FnApiRunner (Beam batch job)")
    t0 = time.perf_counter()
    model_args = [
        f"--model_root={out / 'models'}",
        "--key_column=id",
        "--hidden_dims=32,16",
        "--latent_dim=4",
        f"--epochs={args.epochs}",
        "--patience=5",
        "--threshold_method=fpr",
        "--threshold_param=0.005",
        "--progress=false",
        f"--log_level={args.log_level}",
        *runner_args("fnapi"),
    ]
    result = train_job.run(
        [
            f"--input={out / 'history'}",
            f"--work_dir={out / 'work'}",
            *model_args,
        ]
    )
    version = result["published"]
    threshold = result["threshold"]["value"]
    print(
        f"      published {version} in {time.perf_counter() - t0:.1f}s, "
        f"val_loss {result['metrics']['val_loss']:.4f}, threshold {threshold:.4g}; "
        f"report in {out / 'models' / version / 'report'}"
    )

    print("[3/6] starting a local Kafka broker and producing records")
    with KafkaBroker() as broker:
        bootstrap = broker.bootstrap_servers
        records, planted = fresh_records(args.records, 0.02)
        # Created up front, not on first use: no client errors about missing topic metadata.
        topics = ["sensors", "sensors-flags", "sensors-dead-letters"]
        create_topics({"bootstrap.servers": bootstrap}, topics)
        secs = produce(bootstrap, "sensors", records)
        print(
            f"      {len(records):,} records ({len(planted)} planted anomalies, 5 poison) "
            f"to {bootstrap}/sensors in {secs:.1f}s"
        )

        print("[4/6] flagging the records: the streaming flag job on Prism (bounded read)")
        t0 = time.perf_counter()
        stream_job.main(
            [
                "--mode=flag",
                f"--bootstrap_servers={bootstrap}",
                "--input_topic=sensors",
                "--output_topic=sensors-flags",
                "--dead_letter_topic=sensors-dead-letters",
                "--group_id=demo-flagger",
                f"--model_root={out / 'models'}",
                "--bounded",
                *runner_args("prism"),
            ],
            log_level=logging.getLevelName(args.log_level),
        )
        configure_logging(args.log_level)  # the job may have set its own
        elapsed = time.perf_counter() - t0
        results = read_topic(bootstrap, "sensors-flags", len(records) - 5)
        dead = read_topic(bootstrap, "sensors-dead-letters", 5)

        print(
            "[5/6] drift: the sensors are recalibrated; ae-pipeline consume --drift and the "
            "drift listener"
        )
        mixing = np.random.default_rng(1234).normal(size=(4, len(FEATURES)))

        def make_rows(n: int, seed: int) -> np.ndarray:
            return normal_rows(np.random.default_rng(seed), n, mixing)

        retrain_args = [f"--work_dir={out / 'work-retrain'}", *model_args]
        drift = demo_drift.run(out, bootstrap, make_rows, FEATURES, retrain_args)

    print("[6/6] report")
    keys = [r.get("key", r.get("id")) for r in results]
    flagged = {k for k, r in zip(keys, results, strict=True) if r["is_anomaly"]}
    tp = len(flagged & planted)
    precision = tp / max(len(flagged), 1)
    recall = tp / max(len(planted), 1)
    versions = {r.get("model_version") for r in results}
    report = {
        "records_in": len(records),
        "results": len(results),
        "dead_letters": len(dead),
        "dead_letter_reasons": sorted({d.get("reason") for d in dead}),
        "flagged": len(flagged),
        "planted": len(planted),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "records_per_s": round(len(records) / elapsed, 1),
        "scored_by": "pipelines.stream on PrismRunner",
        "model_versions": sorted(v for v in versions if v),
    }
    report["drift"] = drift
    plot(out / "report.png", results, planted, threshold)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    width = max(len(k) for k in report)
    for k, v in report.items():
        if k != "drift":
            print(f"      {k:<{width}}  {v}")
    for k, v in drift.items():
        print(f"      drift: {k:<{width - 7}}  {v}")
    versions = ModelRegistry(str(out / "models")).versions()
    print(f"      plot: {out / 'report.png'}; published versions: {versions}")
    ok = report["results"] + report["dead_letters"] == report["records_in"]
    if drift["retrained_version"] in (None, drift["first_version"]):
        print("demo: the drift step did not retrain", file=sys.stderr)
        ok = False
    if not ok:
        print("demo: records were lost!", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

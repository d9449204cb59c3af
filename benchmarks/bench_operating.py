"""What operating the consumer costs: records/s with metrics, probes and drift on, against off.

The same consumer (confluent-kafka, default scoring, the streaming benchmark's 32-feature model
and records) reads the same topic with a fresh group, in pairs of runs in alternating order:

* ``plain``: no metrics server, no drift, no progress lines;
* ``operating``: ``metrics_port`` (Prometheus ``/metrics`` scraped every second by a thread of
  this process, as a busy Prometheus would), drift monitoring (a 2,000-score window judged
  every second against the version's calibration) and a progress line every second.

The figure is the median over pairs of ``operating / plain`` records/s (goal: at least 0.95,
issue "Operating it"). One local broker (``ae_pipeline.local.kafka_broker``); 2 cores here,
shared, so quote the median. Each run also records the CPU seconds this (the consumer's)
process spent per 100,000 records (``getrusage``: all its threads, the scraper's included;
not the scoring child's), which the other load on the machine moves far less than records/s.

    python -m benchmarks.bench_operating              # 300,000 records x 5 pairs, ~3 minutes
    python -m benchmarks.bench_operating --pairs 9    # more pairs where the load swings
    python -m benchmarks.bench_operating --quick      # 20,000 x 2

Writes ``benchmarks/results/operating.json`` (``operating_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from benchmarks.streaming.common import BATCH, encode_records, normal_rows, publish_model
from benchmarks.streaming.consumer import consumer_run, produce_all

RESULTS = Path(__file__).resolve().parent / "results" / "operating.json"
GOAL = 0.95


class _Scraper:
    """GETs ``/metrics`` every ``interval_s`` once the consumer's server is up."""

    def __init__(self, holder: dict, interval_s: float = 1.0) -> None:
        self.holder = holder
        self.interval_s = interval_s
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            consumer = self.holder.get("consumer")
            port = consumer.monitor.port if consumer is not None else None
            if port:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                        r.read()
                except OSError:  # the run ended and its server closed between two scrapes
                    continue
                self.scrapes += 1

    def __enter__(self) -> _Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_s() -> float:
    """CPU seconds of this process so far (user and system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(kind: str, bootstrap: str, topic: str, n: int, version_dir: str) -> dict:
    cpu0 = _cpu_s()
    m = _consume(kind, bootstrap, topic, n, version_dir)
    m["parent_cpu_s"] = _cpu_s() - cpu0
    m["parent_cpu_s_per_100k"] = m["parent_cpu_s"] / max(m["records"], 1) * 100_000
    return m


def _consume(kind: str, bootstrap: str, topic: str, n: int, version_dir: str) -> dict:
    from ae_pipeline.drift import DriftMonitor

    if kind == "plain":
        return consumer_run(bootstrap, "confluent", topic, n, version_dir, progress_interval_s=0)
    holder: dict[str, Any] = {}
    with _Scraper(holder) as scraper:
        m = consumer_run(
            bootstrap,
            "confluent",
            topic,
            n,
            version_dir,
            on_consumer=lambda sc: holder.update(consumer=sc),
            metrics_port=0,
            metrics_host="127.0.0.1",
            progress_interval_s=1.0,
            drift=DriftMonitor(window=2000, every_s=1.0),
        )
    m["scrapes"] = scraper.scrapes
    m["drift_figures"] = holder["consumer"].monitor.drift.figures
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--records", type=int, default=None, help="records per run (default 300,000)")
    ap.add_argument("--pairs", type=int, default=None, help="pairs of runs (default 5)")
    args = ap.parse_args(argv)
    n, pairs = (20_000, 2) if args.quick else (300_000, 5)
    n = args.records or n
    pairs = args.pairs or pairs
    logging.basicConfig(level=logging.WARNING)
    from ae_pipeline.kafka import create_topics
    from ae_pipeline.local.kafka_broker import KafkaBroker

    runs: dict[str, list[dict]] = {"plain": [], "operating": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpdir, KafkaBroker() as broker:
        bootstrap = broker.bootstrap_servers
        version_dir, _, _ = publish_model(Path(tmpdir) / "models")
        topic = f"ops-{uuid.uuid4().hex[:6]}"
        create_topics({"bootstrap.servers": bootstrap}, [topic, f"{topic}-out", f"{topic}-dlq"])
        produce_all(bootstrap, topic, encode_records(normal_rows(n, 11)))
        for r in range(pairs):
            for kind in ("plain", "operating") if r % 2 == 0 else ("operating", "plain"):
                m = _run(kind, bootstrap, topic, n, version_dir)
                runs[kind].append(m)
                print(
                    f"  {kind:9s} pair {r + 1}: {m['records_per_s']:9,.0f} rec/s "
                    f"({m['records']} records in {m['seconds']:.2f}s; "
                    f"{m['parent_cpu_s_per_100k']:.3f} CPU s per 100k records)",
                    flush=True,
                )
    ratios = [
        o["records_per_s"] / p["records_per_s"]
        for o, p in zip(runs["operating"], runs["plain"], strict=True)
    ]
    rate = {kind: statistics.median(m["records_per_s"] for m in ms) for kind, ms in runs.items()}
    cpu = {
        kind: statistics.median(m["parent_cpu_s_per_100k"] for m in ms) for kind, ms in runs.items()
    }
    result = {
        "benchmark": "operating",
        "ratio_operating_over_plain": statistics.median(ratios),
        "goal_ratio_at_least": GOAL,
        "goal_met": statistics.median(ratios) >= GOAL,
        "plain_records_per_s": rate["plain"],
        "operating_records_per_s": rate["operating"],
        "ratio_of_median_rates": rate["operating"] / rate["plain"],
        "pair_ratios": ratios,
        "parent_cpu_s_per_100k_records": cpu,
        "parent_cpu_ratio_operating_over_plain": cpu["operating"] / cpu["plain"],
        "pairs": pairs,
        "records": n,
        "batch": BATCH,
        "client": "confluent",
        "quick": args.quick,
        "runs": runs,
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "seconds": time.perf_counter() - t0,
    }
    out = RESULTS.with_name("operating_quick.json") if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(
        f"operating / plain: {result['ratio_operating_over_plain']:.3f} (median of {pairs} pairs; "
        f"goal >= {GOAL}); plain {result['plain_records_per_s']:,.0f} rec/s, operating "
        f"{result['operating_records_per_s']:,.0f} rec/s; consumer CPU s per 100k records: "
        f"plain {cpu['plain']:.3f}, operating {cpu['operating']:.3f} -> {out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

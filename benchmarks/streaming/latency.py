"""Parts (c) and (d) of the streaming benchmark: latency at a steady rate, and the consumer's
memory over that run (see ``benchmarks.bench_streaming``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.streaming.common import COLUMNS, RATE, ROOT, normal_rows


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

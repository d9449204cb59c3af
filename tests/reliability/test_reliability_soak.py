"""Soak: the plain consumer process (``python -m pipelines.consume``) at 80% of its measured
maximum throughput for 10 minutes (``AE_SOAK_SECONDS`` to change it), sampling its RSS and the
group's lag every few seconds; reports both slopes (least squares) and checks that neither
grows and that every record was scored exactly once.

Runs only when selected: ``make soak`` (``pytest -m soak``) or ``AE_SOAK=1``. A quick variant:
``AE_SOAK=1 AE_SOAK_SECONDS=60 pytest tests/reliability -k soak``. ``AE_SOAK_CLIENT=confluent``
soaks the confluent-kafka client instead of kafka-python.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import kit
import pytest
import reliability_kit as rel

pytestmark = [pytest.mark.soak, pytest.mark.kafka]

LOAD = 0.8
BATCH = 500


def _measure_max_rate(progress: rel.Progress, preloaded: int, alive) -> float:
    """Records/s committed while the consumer drains a backlog (between 10% and 90%)."""
    t1 = c1 = None
    while True:
        committed, now = progress.committed(), time.monotonic()
        if t1 is None and committed >= 0.1 * preloaded:
            t1, c1 = now, committed
        if committed >= 0.9 * preloaded:
            assert t1 is not None and now > t1
            return (committed - c1) / (now - t1)
        problem = alive()
        assert problem is None, problem
        time.sleep(0.2)


def test_soak_plain_consumer_at_80_percent_of_max_throughput(broker, model_root):
    seconds = rel.env_seconds("AE_SOAK_SECONDS", 600.0)
    sample_s = 5.0 if seconds >= 120 else 2.0
    client = os.environ.get("AE_SOAK_CLIENT", "kafka-python")
    root, version = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap, partitions=2)
    group = f"soak-{uuid.uuid4().hex[:8]}"
    pool = kit.stream_values(0, 20_000)
    preload = 40_000 if client == "kafka-python" else 150_000
    kit.produce(bootstrap, inp, [pool[i % len(pool)] for i in range(preload)])

    proc = kit.start_consumer(bootstrap, root, inp, out, dlq, group, max_batch=BATCH, client=client)
    alive = kit.process_alive(proc)

    progress = rel.Progress(bootstrap, inp, out, dlq, group)
    feeder = None
    try:
        max_rate = _measure_max_rate(progress, preload, alive)
        kit.wait_until(lambda: progress.lag() == 0, "the backlog drained", alive=alive)
        target = LOAD * max_rate
        feeder = rel.Feeder(bootstrap, inp, target, start=preload, client="confluent", pool=pool)
        load_before = os.getloadavg()
        t0 = time.monotonic()
        feeder.start()
        samples: list[tuple[float, int, int]] = []
        while (now := time.monotonic()) - t0 < seconds:
            problem = alive()
            assert problem is None, problem
            assert feeder.error is None, feeder.error
            samples.append((now - t0, rel.rss_kib(proc.pid), progress.lag()))
            time.sleep(max(0.0, sample_s - (time.monotonic() - now)))
        sent = feeder.finish()
        elapsed = time.monotonic() - t0
        kit.wait_until(lambda: progress.lag() == 0, "the lag to drain", alive=alive)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr.decode()[-3000:]
        stats = kit.last_stats(stdout)
        written = progress.written()
    finally:
        if feeder is not None and feeder.is_alive():
            feeder.finish()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        progress.close()

    # Slopes after a warm-up (the first tenth, at most a minute).
    warm = min(60.0, seconds / 10)
    steady = [s for s in samples if s[0] >= warm]
    minutes = [s[0] / 60 for s in steady]
    rss_slope = rel.slope(minutes, [s[1] for s in steady])
    lag_slope = rel.slope(minutes, [s[2] for s in steady])
    lags = [s[2] for s in steady]
    rel.SOAK.update(
        {
            "seconds": round(elapsed, 1),
            "client": client,
            "max_batch": BATCH,
            "max_rate": round(max_rate, 1),
            "target_rate": round(target, 1),
            "achieved_rate": round((sent - preload) / elapsed, 1),
            "records": sent,
            "rss_slope_kib_per_min": round(rss_slope, 2),
            "rss_kib_first_last": [steady[0][1], steady[-1][1]],
            "lag_slope_records_per_min": round(lag_slope, 2),
            "lag_mean": round(sum(lags) / len(lags), 1),
            "lag_max": max(lags),
            "sample_every_s": sample_s,
            "warmup_s": warm,
            "samples": [[round(t, 1), rss, lag] for t, rss, lag in samples],
            "load_average_before_after": [list(load_before), list(os.getloadavg())],
            "model_version": version,
        }
    )
    rel.report_fault(
        f"soak {elapsed / 60:.1f} min at 80% of max rate",
        f"plain consumer ({client})",
        records_in=sent,
        records_out=stats["records_in"],
        duplicated=written - stats["records_in"],
        lost=sent - stats["records_in"],
    )
    # Every record scored exactly once (no crash: no replay), each a result or a dead letter.
    assert stats["records_in"] == sent == stats["results"] + stats["dead_letters"] == written
    # Neither grows: over the steady part, the fitted growth is under 10 s of traffic for the
    # lag and 32 MiB for the RSS.
    steady_minutes = minutes[-1] - minutes[0]
    assert lag_slope * steady_minutes < 10 * target, rel.SOAK
    assert rss_slope * steady_minutes < 32 * 1024, rel.SOAK

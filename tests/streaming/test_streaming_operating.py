"""Operating the plain consumer against the real broker: /metrics scraped during a run, the
probes, the progress lines, and score drift reaching the drift topic."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections import Counter

import kit
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.drift import DriftLimits, DriftMonitor

pytestmark = pytest.mark.kafka


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _samples(port: int) -> dict[tuple[str, tuple], float]:
    """``(name, sorted labels) -> value`` of every sample on ``/metrics``."""
    status, body = _get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


class Running:
    """A consumer's run() in a thread (stopped and joined on exit)."""

    def __init__(self, consumer: ScoringConsumer) -> None:
        self.consumer = consumer
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as err:  # reported by alive()
            self.error = err

    def alive(self) -> str | None:
        if self.error is not None:
            return f"the consumer failed: {self.error!r}"
        return None if self.thread.is_alive() else "the consumer stopped"

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.stop()
        self.thread.join(timeout=60)
        self.consumer.close()
        assert not self.thread.is_alive()


@pytest.mark.parametrize(
    ("client", "scoring_process"),
    [("kafka-python", False), ("confluent", True)],
    ids=["kafka-python-inline", "confluent-scoring-process"],
)
def test_metrics_scraped_during_a_run_count_what_was_produced(
    bootstrap_servers, tmp_path, trained, client, scoring_process, caplog
):
    if client == "confluent":
        pytest.importorskip("confluent_kafka")
    root = str(tmp_path / "models")
    version = kit.publish(root, trained)
    inp, out, dlq = kit.new_topics(bootstrap_servers, partitions=2)
    values, n_poison = kit.records_with_poison(300, anomalies=6)
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": f"g-{uuid.uuid4().hex[:8]}"},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="flag",
        model_root=root,
        device="cpu",
        client=client,
        max_batch=64,
        scoring_process=scoring_process,
        metrics_port=0,
        metrics_host="127.0.0.1",
        progress_interval_s=0.5,
    )
    consumer.monitor.lag_interval_s = 0.5
    caplog.set_level("INFO", logger="ae_pipeline.consumer")
    with Running(consumer) as running:
        port = kit.wait_until(
            lambda: consumer.monitor.port, "the metrics server", alive=running.alive
        )
        kit.wait_until(lambda: _get(port, "/readyz")[0] == 200, "readiness", alive=running.alive)
        assert _get(port, "/healthz")[0] == 200
        kit.produce(bootstrap_servers, inp, values)
        kit.wait_until(
            lambda: _samples(port).get(("ae_pipeline_scoring_records_in_total", ())) == len(values),
            "every record counted on /metrics",
            alive=running.alive,
        )
        # Committed at the next idle poll: then every partition's lag is 0.
        lag = kit.wait_until(
            lambda: (
                (
                    lags := {
                        k[1]: v
                        for k, v in _samples(port).items()
                        if k[0] == "ae_pipeline_kafka_consumer_lag"
                    }
                )
                and len(lags) == 2
                and not any(lags.values())
                and lags
            ),
            "a lag of 0 on both partitions",
            alive=running.alive,
        )
        samples = _samples(port)
        stats = consumer.stats
    assert {dict(k)["partition"] for k in lag} == {"0", "1"}
    results = kit.read_records(bootstrap_servers, out)
    dead = kit.read_records(bootstrap_servers, dlq)
    assert samples[("ae_pipeline_scoring_results_total", ())] == len(results) == 300
    by_reason = {
        dict(k[1])["reason"]: v
        for k, v in samples.items()
        if k[0] == "ae_pipeline_scoring_dead_letters_total"
    }
    reasons = Counter(json.loads(d.value)["reason"] for d in dead)
    assert by_reason == dict(reasons) and sum(by_reason.values()) == n_poison
    flagged = sum(json.loads(r.value)["is_anomaly"] for r in results)
    assert samples[("ae_pipeline_scoring_anomalies_total", ())] == flagged == stats.anomalies >= 6
    assert samples[("ae_pipeline_scoring_model_info", (("version", version),))] == 1.0
    assert samples[("ae_pipeline_scoring_batch_size_sum", ())] == len(values)
    assert samples[("ae_pipeline_scoring_score_batch_seconds_count", ())] >= len(values) / 64
    progress = [r for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert progress and progress[-1].fields["records"] == len(values)
    with pytest.raises(OSError):  # closed with the consumer
        _get(port, "/metrics")


def test_shifted_records_make_a_drift_event_and_normal_ones_a_recovery(
    bootstrap_servers, tmp_path, trained
):
    root = str(tmp_path / "models")
    version = kit.publish(root, trained)
    inp, out, dlq = kit.new_topics(bootstrap_servers, partitions=1)  # one order of scores
    drift_topic = f"drift-{uuid.uuid4().hex[:8]}"
    rows = kit.normal_rows(3000, seed=11)
    rows[800:2000] = rows[800:2000] * 1.3 + np.array([5, 1, 3, 1, 40, 0.2], dtype=np.float32)
    values = [kit.record(i, r) for i, r in enumerate(rows)]
    monitor = DriftMonitor(DriftLimits(for_s=0.0, min_records=200), window=400, every_s=0.0)
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": f"g-{uuid.uuid4().hex[:8]}"},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="flag",
        model_root=root,
        device="cpu",
        client=kit.fast_client(),
        max_batch=100,
        scoring_process=False,
        metrics_port=0,
        metrics_host="127.0.0.1",
        drift=monitor,
        drift_topic=drift_topic,
    )
    kit.produce(bootstrap_servers, inp, values)
    with consumer:
        stats = consumer.run(max_records=len(values), idle_timeout_s=30)
        samples = _samples(consumer.monitor.port)
    assert stats.records_in == len(values)
    events = [json.loads(r.value) for r in kit.read_records(bootstrap_servers, drift_topic)]
    assert [e["state"] for e in events] == ["drift", "recovered"]
    drift, recovered = events
    assert drift["model_version"] == version and "psi" in drift["crossed"]
    assert drift["figures"]["psi"] > 0.25 and drift["window"]["records"] >= 200
    assert recovered["figures"]["psi"] < 0.25 and recovered["since"] == drift["since"]
    assert samples[("ae_pipeline_drift_events_total", (("state", "drift"),))] == 1.0
    assert samples[("ae_pipeline_drift_state", ())] == 0.0
    assert samples[("ae_pipeline_drift_psi", ())] < 0.25  # the last window: normal again


def test_drift_needs_a_mode_with_scores(bootstrap_servers, model_root):
    with pytest.raises(ValueError, match="mode 'encode' has none"):
        ScoringConsumer(
            {"bootstrap.servers": bootstrap_servers, "group.id": "g"},
            input_topic="a",
            output_topic="b",
            dead_letter_topic="c",
            mode="encode",
            model_root=model_root,
            drift=DriftMonitor(),
        )

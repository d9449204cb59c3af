"""Helpers of the reliability suite: a small model, records, Kafka plumbing, the fault table.

The model helpers are a minimal copy of ``tests/streaming/streaming_kit.py`` (``tests/`` is not a
package, so that module cannot be imported from here without path tricks); keep the two in step.

Every fault test ends with :func:`report_fault`, which adds a row (records in / out /
duplicated / lost) to :data:`FAULTS`; ``conftest.py`` prints the table at the end of the session
and writes it to ``benchmarks/results/reliability.json``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ae_pipeline.artifact import save_artifact
from ae_pipeline.calibration import calibrate
from ae_pipeline.features import ColumnStats, FeatureSpec, Scaler
from ae_pipeline.kafka import (
    KafkaConfig,
    committed_offsets,
    create_consumer,
    create_producer,
    create_topics,
    end_offsets,
)
from ae_pipeline.models import ModelConfig, Scorer, TrainConfig, fit
from ae_pipeline.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]
RESULTS_PATH = REPO / "benchmarks" / "results" / "reliability.json"

# ---------------------------------------------------------------------------- model

COLUMNS = [f"f{j}" for j in range(6)]
SPEC = FeatureSpec(columns=COLUMNS, key_column="id")


def normal_rows(n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows of 6 features on a 2-D manifold, in original units."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    mix = np.array([[1.0, 0.5, -0.3, 2.0, 0.0, 1.0], [0.0, 1.0, 0.8, -1.0, 1.5, 0.5]])
    x = z @ mix + 0.05 * rng.normal(size=(n, 6))
    return (x * [10, 1, 5, 2, 100, 0.1] + [50, -3, 0, 7, 1000, 2]).astype(np.float32)


@dataclass
class Trained:
    model: object
    config: ModelConfig
    scaler: Scaler
    threshold: dict


def train(seed: int = 0, epochs: int = 6) -> Trained:
    """A small undercomplete autoencoder on :func:`normal_rows` (a second or two)."""
    x = normal_rows(2000, seed)
    scaler = Scaler.fit("standard", ColumnStats.of(x))
    cfg = ModelConfig(6, hidden_dims=[16], latent_dim=2)
    tcfg = TrainConfig(
        epochs=epochs, batch_size=64, lr=3e-3, progress=False, device="cpu", seed=seed
    )
    model, _ = fit(cfg, scaler.transform(x), tcfg)
    errors = Scorer(model).errors(scaler.transform(normal_rows(1000, seed + 100)))
    return Trained(model, cfg, scaler, calibrate(errors, "quantile", 0.99))


def publish_files(d: str, trained: Trained, *, spec: FeatureSpec = SPEC) -> None:
    """Saves ``trained`` into ``d`` with the conventions of the batch training job."""
    save_artifact(
        d,
        trained.model,
        trained.config,
        feature_columns=COLUMNS,
        scaler=trained.scaler.to_dict(),
        threshold=trained.threshold,
        metrics={"test": True},
        extra={"feature_spec": spec.to_dict()},
    )


def publish(root: str, trained: Trained, *, spec: FeatureSpec = SPEC) -> str:
    """Publishes ``trained`` under ``root``; returns the version name."""
    return ModelRegistry(root).publish(lambda d: publish_files(d, trained, spec=spec))


def record(i: int, row: np.ndarray) -> bytes:
    return json.dumps({"id": i, **dict(zip(COLUMNS, map(float, row), strict=True))}).encode()


# One poison record per reason.
POISON = {
    "bad_json": b"{not json",
    "not_object": b"[1, 2, 3]",
    "missing_field": json.dumps({"id": -1, "f0": 1.0}).encode(),
    "non_numeric": json.dumps(
        {"id": -2, **{c: "x" if c == "f3" else 1.0 for c in COLUMNS}}
    ).encode(),
    "non_finite": b'{"id": -3, "f0": NaN, "f1": 1, "f2": 1, "f3": 1, "f4": 1, "f5": 1}',
}
POISON_VALUES = list(POISON.values())


def stream_values(start: int, n: int, *, poison_every: int = 50) -> list[bytes]:
    """Records ``start .. start+n-1``: good ones with a poison record every ``poison_every``."""
    rows = normal_rows(n, seed=start)
    out = []
    for j in range(n):
        i = start + j
        if poison_every and i % poison_every == poison_every - 1:
            out.append(POISON_VALUES[(i // poison_every) % len(POISON_VALUES)])
        else:
            out.append(record(i, rows[j]))
    return out


# ---------------------------------------------------------------------------- kafka

# The suite's broker (conftest.py) has a SASL_PLAINTEXT listener with this user.
SASL_USER = "alice"
SASL_PASSWORD = "s3cr3t-Rel1ab1l1ty-%&!"


def fast_client() -> str:
    """confluent-kafka when installed (reading back outputs is 5x faster), else kafka-python."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "confluent"


def new_topics(bootstrap: str, partitions: int = 2, config: dict | None = None) -> tuple:
    """Fresh ``(input, output, dead letter)`` topic names, created."""
    tag = uuid.uuid4().hex[:8]
    names = (f"rel-in-{tag}", f"rel-out-{tag}", f"rel-dlq-{tag}")
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
    config = {"bootstrap.servers": bootstrap}
    return sum(sum(end_offsets(config, t).values()) for t in topics)


def committed_total(bootstrap: str, topic: str, group: str) -> int:
    got = committed_offsets({"bootstrap.servers": bootstrap, "group.id": group}, topic)
    return sum(v or 0 for v in got.values())


def read_all(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[dict]:
    """Every record of ``topic`` up to its end offsets now, JSON-decoded."""
    config = KafkaConfig(bootstrap)
    ends = end_offsets(config, topic)
    out: list = []
    with create_consumer(config, fast_client()) as consumer:
        consumer.assign(dict.fromkeys(ends, 0))
        deadline = time.monotonic() + timeout_s
        while len(out) < sum(ends.values()) and time.monotonic() < deadline:
            out.extend(consumer.poll(0.5, 10000))
    return [json.loads(r.value) for r in out]


@dataclass
class Tally:
    """What happened to the records of an input topic, judged from the outputs."""

    records_in: int
    records_out: int  # input records with at least one output (result or dead letter)
    outputs: int  # output messages (results + dead letters)
    duplicated: int  # outputs beyond the first of a record
    lost: int  # input records with no output (and, given the group, below its commits)
    pending: int = 0  # no output yet, at or past the committed offset: a restart reads them
    results: int = 0
    dead_letters: int = 0
    versions: Counter = field(default_factory=Counter)
    missing: list = field(default_factory=list)

    def row(self) -> dict[str, int]:
        return {
            "records_in": self.records_in,
            "records_out": self.records_out,
            "duplicated": self.duplicated,
            "lost": self.lost,
            "pending": self.pending,
        }


def tally(
    bootstrap: str,
    inp: str,
    out: str,
    dlq: str,
    only: set[tuple[int, int]] | None = None,
    group: str | None = None,
) -> Tally:
    """Matches outputs to input records by their (partition, offset); ``only``: judge just
    these input records. With ``group``, a record without output is *lost* only if the group
    committed past it, else *pending* (at-least-once: a restarted reader would score it)."""
    ends = end_offsets({"bootstrap.servers": bootstrap}, inp)
    produced = {(tp.partition, o) for tp, n in ends.items() for o in range(n)}
    expected = produced if only is None else only
    everything = read_all(bootstrap, out) + read_all(bootstrap, dlq)
    assert {(d["partition"], d["offset"]) for d in everything} <= produced, "phantom outputs"
    chosen = [d for d in everything if (d["partition"], d["offset"]) in expected]
    results = [d for d in chosen if "reason" not in d]
    dead = [d for d in chosen if "reason" in d]
    seen = Counter((d["partition"], d["offset"]) for d in chosen)
    covered = set(seen)
    missing = expected - covered
    pending: set = set()
    if group is not None:
        got = committed_offsets({"bootstrap.servers": bootstrap, "group.id": group}, inp)
        committed = {tp.partition: offset or 0 for tp, offset in got.items()}
        pending = {(p, o) for p, o in missing if o >= committed.get(p, 0)}
    return Tally(
        records_in=len(expected),
        records_out=len(covered),
        outputs=sum(seen.values()),
        duplicated=sum(seen.values()) - len(seen),
        lost=len(missing - pending),
        pending=len(pending),
        results=len(results),
        dead_letters=len(dead),
        versions=Counter(r["model_version"] for r in results),
        missing=sorted(missing - pending)[:10],
    )


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


class Feeder(threading.Thread):
    """Produces :func:`stream_values` at about ``rate`` records/s until :meth:`finish`; its
    producer (idempotent, retrying) rides through broker restarts. With ``pool``, cycles
    through those values instead (cheap, for high rates)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        rate: float = 300.0,
        start: int = 0,
        *,
        client: str = "kafka-python",
        pool: list[bytes] | None = None,
    ):
        super().__init__(daemon=True, name=f"feeder-{topic}")
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.start_at = self.sent = start
        self.client, self.pool = client, pool
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def _values(self, n: int) -> list[bytes]:
        if self.pool is None:
            return stream_values(self.sent, n)
        return [self.pool[(self.sent + j) % len(self.pool)] for j in range(n)]

    def run(self) -> None:
        try:
            config = {"bootstrap.servers": self.bootstrap}
            with create_producer(config, self.client) as producer:
                t0 = time.monotonic()
                chunk = max(1, int(self.rate / 50))  # 50 sends of a chunk per second
                while not self._stop_event.is_set():
                    for v in self._values(chunk):
                        producer.send(self.topic, v, key=b"k%d" % self.sent)
                        self.sent += 1
                    if self.pool is not None and self.sent % (chunk * 50) < chunk:
                        producer.flush(60)  # bounded queue; failures surface here
                    ahead = ((self.sent - self.start_at) / self.rate) - (time.monotonic() - t0)
                    if ahead > 0:
                        self._stop_event.wait(ahead)
                producer.flush(180)
        except BaseException as err:  # reported by finish()
            self.error = err

    def finish(self, timeout_s: float = 200.0) -> int:
        self._stop_event.set()
        self.join(timeout_s)
        assert not self.is_alive(), "the feeder's final flush did not return"
        if self.error is not None:
            raise self.error
        return self.sent


class ConsumerThread(threading.Thread):
    """:meth:`ae_pipeline.consumer.ScoringConsumer.run` in a thread; an exception is kept."""

    def __init__(self, consumer: Any):
        super().__init__(daemon=True, name="scoring-consumer")
        self.consumer = consumer
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as err:
            self.error = err

    def problem(self) -> str | None:
        if self.error is not None:
            return f"the consumer raised {type(self.error).__name__}: {self.error}"
        if not self.is_alive():
            return f"the consumer stopped ({self.consumer.stats.stopped_by})"
        return None

    def finish(self) -> None:
        self.consumer.stop()
        self.join(120)
        assert not self.is_alive(), "the consumer did not stop"


class Progress:
    """Outputs written, offsets committed and end offsets, read with one long-lived client
    (milliseconds per look: a kill can land between a batch's outputs and its commit)."""

    def __init__(self, bootstrap: str, inp: str, out: str, dlq: str, group: str):
        from ae_pipeline.kafka import TopicPartition

        config = {"bootstrap.servers": bootstrap, "group.id": group}
        self.consumer = create_consumer(config, fast_client())
        self.inputs = [TopicPartition(inp, p) for p in self.consumer.partitions(inp)]
        self.outputs = [TopicPartition(t, 0) for t in (out, dlq)]

    def committed(self) -> int:
        return sum(v or 0 for v in self.consumer.committed(self.inputs).values())

    def produced(self) -> int:
        return sum(self.consumer.end_offsets(self.inputs).values())

    def written(self) -> int:
        return sum(self.consumer.end_offsets(self.outputs).values())

    def lag(self) -> int:
        committed = self.committed()
        return self.produced() - committed

    def outputs_ahead_of_commits(self) -> bool:
        committed = self.committed()
        return self.written() > committed

    def close(self) -> None:
        self.consumer.close()


# ---------------------------------------------------------------------------- results

FAULTS: list[dict[str, Any]] = []
FUZZ: Counter = Counter()
SOAK: dict[str, Any] = {}


def report_fault(fault: str, target: str, t: Tally | None = None, **extra: Any) -> dict:
    """Adds one row to the fault table (``t`` gives records in/out/duplicated/lost)."""
    row = {"fault": fault, "target": target, **(t.row() if t else {}), "outcome": "ok", **extra}
    row["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    FAULTS.append(row)
    return row


def rss_kib(pid: int) -> int:
    """Resident set size of a process (KiB), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 for fewer than 2 points)."""
    if len(xs) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default

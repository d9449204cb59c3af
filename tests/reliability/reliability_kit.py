"""Helpers of the reliability suite only: the feeder, the consumer thread, progress probes,
the tally of records in / out / duplicated / lost, and the fault table. The model, records and
Kafka plumbing shared with the other suites are in ``tests/kit`` (``import kit``).

Every fault test ends with :func:`report_fault`, which adds a row (records in / out /
duplicated / lost) to :data:`FAULTS`; ``conftest.py`` prints the table at the end of the session
and writes it to ``benchmarks/results/reliability.json``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import kit
import numpy as np

from ae_pipeline.kafka import committed_offsets, create_consumer, create_producer, end_offsets

RESULTS_PATH = kit.REPO / "benchmarks" / "results" / "reliability.json"

# ---------------------------------------------------------------------------- kafka

# The suite's broker (conftest.py) has a SASL_PLAINTEXT listener with this user.
SASL_USER = "alice"
SASL_PASSWORD = "s3cr3t-Rel1ab1l1ty-%&!"


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
    *,
    isolation_level: str | None = None,
) -> Tally:
    """Matches outputs to input records by their (partition, offset); ``only``: judge just
    these input records. With ``group``, a record without output is *lost* only if the group
    committed past it, else *pending* (at-least-once: a restarted reader would score it).
    ``isolation_level="read_committed"``: count the outputs such a reader sees (exactly once);
    ``"read_uncommitted"``: count every output in the log, aborted ones included."""
    ends = end_offsets({"bootstrap.servers": bootstrap}, inp)
    produced = {(tp.partition, o) for tp, n in ends.items() for o in range(n)}
    expected = produced if only is None else only
    everything = kit.read_all(bootstrap, out, isolation_level=isolation_level) + kit.read_all(
        bootstrap, dlq, isolation_level=isolation_level
    )
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
            return kit.stream_values(self.sent, n)
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
        finally:
            self.consumer.close()  # its scoring process, if any

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
        self.bootstrap = bootstrap
        # read_uncommitted: end offsets are the high watermarks (librdkafka's default,
        # read_committed, would give the last stable offsets).
        self.consumer = create_consumer(
            config, kit.fast_client(), isolation_level="read_uncommitted"
        )
        self._committed_reader: Any = None
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

    def open_transaction(self) -> bool:
        """Whether a transaction is open on an output topic: its last stable offset (the end
        a ``read_committed`` reader sees) is below its high watermark."""
        if self._committed_reader is None:
            self._committed_reader = create_consumer(
                {"bootstrap.servers": self.bootstrap},
                "kafka-python",
                isolation_level="read_committed",
            )
        stable = self._committed_reader.end_offsets(self.outputs)
        return any(stable[tp] < n for tp, n in self.consumer.end_offsets(self.outputs).items())

    def close(self) -> None:
        self.consumer.close()
        if self._committed_reader is not None:
            self._committed_reader.close()


# ---------------------------------------------------------------------------- crashes


def committed_by_partition(bootstrap, inp, group) -> dict[int, int]:
    got = committed_offsets({"bootstrap.servers": bootstrap, "group.id": group}, inp)
    return {tp.partition: offset or 0 for tp, offset in got.items()}


def output_positions(bootstrap, out, dlq, isolation_level=None) -> list[tuple[int, int]]:
    """The input (partition, offset) of every output (``isolation_level``: see
    :func:`kit.read_records`)."""
    return [
        (d["partition"], d["offset"])
        for topic in (out, dlq)
        for d in kit.read_all(bootstrap, topic, isolation_level=isolation_level)
    ]


def settled(bootstrap, inp, out, dlq, group, isolation_level=None) -> tuple[dict[int, int], list]:
    """Committed offsets and outputs once two reads agree (a request the killed process had
    in flight may still land just after the kill)."""
    last = None
    for _ in range(20):
        now = (committed_by_partition(bootstrap, inp, group), kit.total(bootstrap, out, dlq))
        if now == last:
            break
        last = now
    return last[0], output_positions(bootstrap, out, dlq, isolation_level)


def freeze_mid_batch(
    proc: subprocess.Popen, progress: Progress, within_s: float = 60, *, transactional=False
) -> bool:
    """Freezes (SIGSTOP) the consumer while a batch is written and not yet committed, as far
    as it can tell: it stops the process when it sees outputs ahead of the commits (with
    ``transactional``: a transaction open on an output topic), looks again once the broker has
    taken what the process had sent (two looks agree), and returns True if they still are;
    otherwise lets it go on (SIGCONT) and watches again. False after ``within_s`` (the process
    is left stopped)."""
    caught = progress.open_transaction if transactional else progress.outputs_ahead_of_commits
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not caught():
            continue
        proc.send_signal(signal.SIGSTOP)
        # Requests the process sent before it stopped (a transaction's commit, an offset
        # commit) still complete on the broker: let them, then look.
        time.sleep(0.3)
        last = None
        for _ in range(20):
            now = (progress.committed(), progress.written())
            if now == last:
                break
            last = now
        if caught():
            return True
        proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGSTOP)
    return False


def kill_mid_batch(
    proc: subprocess.Popen, progress: Progress, within_s: float = 60, *, transactional=False
) -> None:
    """Kills (SIGKILL) the consumer while a batch is written and not yet committed
    (:func:`freeze_mid_batch`), or after ``within_s`` anyway (the caller checks what the
    kill caught)."""
    try:
        freeze_mid_batch(proc, progress, within_s, transactional=transactional)
    finally:
        proc.kill()  # a stopped process dies of SIGKILL too
        proc.communicate(timeout=30)


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

"""The consumer's scorers: the child scoring process gives the same messages as inline scoring,
hot-reloads, refuses bad models with the child's reason, and fails loudly when the child dies;
the consumer uses the child process by default where two CPUs are usable."""

from __future__ import annotations

import logging
import os
import signal
import time

import kit
import pytest

from ae_pipeline import scoring_process
from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.kafka import KafkaRecord
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.scoring_process import (
    InlineScorer,
    ScoringProcess,
    ScoringProcessError,
    default_scoring_process,
    usable_cpus,
)
from ae_pipeline.serving import NoModelError


def _records(values: list[bytes], start: int = 0) -> list[KafkaRecord]:
    return [
        KafkaRecord("events", i % 2, start + i, 1_700_000_000_000 + i, f"k{i}".encode(), v)
        for i, v in enumerate(values)
    ]


@pytest.fixture
def child(request):
    made: list[ScoringProcess] = []

    def make(model_args: dict, **kwargs) -> ScoringProcess:
        scorer = ScoringProcess({"device": "cpu", **model_args}, **kwargs)
        made.append(scorer)
        return scorer

    yield make
    for scorer in made:
        scorer.close()


@pytest.mark.parametrize("mode", ["flag", "encode", "denoise"])
def test_child_process_outputs_equal_inline_outputs(child, version_dir, mode):
    values, n_poison = kit.records_with_poison(120, anomalies=3)
    values = [*values, None]  # a tombstone is a dead letter too
    args = {"version_dir": version_dir}
    inline = InlineScorer({**args, "device": "cpu"}, mode=mode, passthrough=("id",))
    remote = child(args, mode=mode, passthrough=("id",))
    assert remote.open() == inline.open()
    halves = [_records(values[:60]), _records(values[60:], start=60)]
    for batch in halves:  # two batches in the child at once: replies come back in order
        remote.submit(batch)
    letters = 0
    for batch in halves:
        inline.submit(batch)
        want, got = inline.collect(), remote.collect()
        assert got.outputs == want.outputs  # keys, JSON values and headers, in order
        assert got.letters == want.letters
        assert got.dead_reasons == want.dead_reasons
        assert (got.anomalies, got.version, got.swaps) == (want.anomalies, want.version, 1)
        letters += len(got.letters)
    assert letters == n_poison + 1
    assert remote.pending == 0


def test_child_process_hot_reloads_and_waits_for_a_first_version(child, tmp_path, trained):
    root = str(tmp_path / "models")
    remote = child({"root": root, "interval_s": 0}, mode="flag")
    with pytest.raises(NoModelError, match="no loadable model version"):
        remote.open()
    first = kit.publish(root, trained)
    assert remote.open() == first
    values, _ = kit.records_with_poison(20)
    remote.submit(_records(values))
    assert remote.collect().version == first
    second = kit.publish(root, trained)
    remote.submit(_records(values))
    batch = remote.collect()
    assert (batch.version, batch.swaps) == (second, 2)
    assert {dict(h)["model_version"] for _, _, h in batch.outputs} == {second.encode()}


def test_child_process_logs_through_the_parents_loggers(child, tmp_path, trained, caplog):
    caplog.set_level(logging.INFO, logger="ae_pipeline.hot_reload")
    root = str(tmp_path / "models")
    first = kit.publish(root, trained)
    remote = child({"root": root, "interval_s": 0}, mode="flag")
    assert remote.open() == first

    def corrupt(d):
        kit.publish_files(d, trained)
        with open(f"{d}/config.json", "a") as f:
            f.write(" ")

    bad = ModelRegistry(root).publish(corrupt, check=False)  # corrupted after publishing
    values, _ = kit.records_with_poison(10)
    remote.submit(_records(values))
    assert remote.collect().version == first  # the bad version is refused
    refusals = [r for r in caplog.records if bad in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    record = refusals[0]
    assert (record.name, record.levelno) == ("ae_pipeline.hot_reload", logging.ERROR)
    assert "refused" in record.getMessage() and f"still serving {first}" in record.getMessage()
    assert record.scoring_process_pid == remote.pid


def test_child_process_refuses_a_corrupt_model_with_the_reason(child, version_dir):
    weights = os.path.join(version_dir, "weights.safetensors")
    with open(weights, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 16)
    remote = child({"version_dir": version_dir}, mode="flag")
    with pytest.raises(ScoringProcessError, match=r"ArtifactError.*weights.safetensors"):
        remote.open()


def test_a_killed_child_process_fails_the_batch_loudly(child, version_dir):
    remote = child({"version_dir": version_dir}, mode="flag")
    remote.open()
    os.kill(remote.pid, signal.SIGKILL)
    values, _ = kit.records_with_poison(10)
    with pytest.raises(ScoringProcessError, match="exit code -9"):
        remote.submit(_records(values))
        remote.collect()


def test_child_process_ignores_sigterm_and_stops_when_the_pipe_closes(child, version_dir):
    remote = child({"version_dir": version_dir}, mode="flag")
    remote.open()
    pid = remote.pid
    os.kill(pid, signal.SIGTERM)  # the parent decides when to stop (after draining)
    values, _ = kit.records_with_poison(10)
    remote.submit(_records(values))
    assert len(remote.collect().outputs) == 10
    process = remote._process
    remote.close()
    assert process.returncode == 0


def test_frames_larger_than_the_pipe_do_not_deadlock(child, version_dir):
    """Two batches of ~1.5 MB each in flight: the child keeps reading while it writes."""
    remote = child({"version_dir": version_dir}, mode="flag", passthrough=("pad",))
    remote.open()
    pad = "x" * 300
    values, _ = kit.records_with_poison(5000)
    padded = [v[:-1] + f', "pad": "{pad}"}}'.encode() if v.endswith(b"}") else v for v in values]
    batches = [_records(padded), _records(padded, start=len(padded))]
    started = time.monotonic()
    for batch in batches:
        remote.submit(batch)
    for _ in batches:
        assert len(remote.collect().outputs) == 5000
    assert time.monotonic() - started < 60


# --- where the consumer scores by default ---


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({}, None),  # no cgroup files: the affinity alone
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2 without a quota
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: --cpus=1.5
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage\n"}, None),  # unreadable: ignored
    ],
)
def test_usable_cpus_is_the_affinity_capped_by_a_cgroup_quota(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if quota is None else min(affinity, quota)
    assert usable_cpus(str(tmp_path)) == expected


@pytest.mark.parametrize(("cpus", "expected"), [(1, False), (1.5, False), (2, True), (16, True)])
def test_consumer_scores_in_a_child_process_by_default_where_two_cpus_are_usable(
    monkeypatch, cpus, expected
):
    monkeypatch.setattr(scoring_process, "usable_cpus", lambda: cpus)
    assert default_scoring_process() is expected

    assert _consumer().scoring_process is expected
    assert _consumer(scoring_process=True).scoring_process is True
    assert _consumer(scoring_process=False).scoring_process is False


def _consumer(**kwargs) -> ScoringConsumer:
    """A consumer that is never run (no broker, no model needed)."""
    config = {"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}
    return ScoringConsumer(
        config, input_topic="i", output_topic="o", dead_letter_topic="d",
        model_version_dir="/nowhere", **kwargs,
    )  # fmt: skip


def test_consumer_as_a_context_manager_closes_its_scorer():
    closed = []

    class Scorer:
        def close(self) -> None:
            closed.append(True)

    consumer = _consumer(scoring_process=True)
    with consumer as entered:
        assert entered is consumer
        consumer._scorer = Scorer()  # what run() leaves open between runs
    assert closed == [True] and consumer._scorer is None

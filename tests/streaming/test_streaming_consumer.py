"""The plain Kafka consumer against the real broker: accounting, hot reload, SIGTERM, kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import uuid
from collections import Counter

import kit
import pytest

from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.kafka import (
    KafkaClientError,
    committed_offsets,
    end_offsets,
)

pytestmark = pytest.mark.kafka


def _written(bootstrap: str, out: str, dlq: str) -> list:
    """The records of the output and dead-letter topics."""
    return kit.read_records(bootstrap, out) + kit.read_records(bootstrap, dlq)


def _coordinates(records) -> list[tuple[int, int]]:
    decoded = [json.loads(r.value) for r in records]
    return [(d["partition"], d["offset"]) for d in decoded]


@pytest.mark.parametrize(
    ("client", "scoring_process"),
    [("kafka-python", False), ("confluent", False), ("confluent", True)],
    ids=["kafka-python", "confluent", "confluent-scoring-process"],
)
def test_consumer_accounts_for_every_record_and_hot_reloads(
    bootstrap_servers, tmp_path, trained, client, scoring_process
):
    if client == "confluent":
        pytest.importorskip("confluent_kafka")
    root = str(tmp_path / "models")
    first = kit.publish(root, trained)
    inp, out, dlq = kit.new_topics(bootstrap_servers)
    values, n_poison = kit.records_with_poison(300, anomalies=6)
    kit.produce(bootstrap_servers, inp, values)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": group},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="flag",
        model_root=root,
        model_poll_interval_s=0,
        device="cpu",
        client=client,
        max_batch=64,
        scoring_process=scoring_process,
    )
    stats = consumer.run(max_records=len(values), idle_timeout_s=20)
    assert stats.records_in == len(values) == stats.results + stats.dead_letters
    assert stats.dead_letters_by_reason == Counter(list(kit.POISON))
    assert stats.model_version == first and stats.anomalies >= 6
    results = kit.read_records(bootstrap_servers, out)
    dead = kit.read_records(bootstrap_servers, dlq)
    assert len(results) == 300 and len(dead) == n_poison
    ends = end_offsets({"bootstrap.servers": bootstrap_servers}, inp)
    expected = sorted((tp.partition, o) for tp, n in ends.items() for o in range(n))
    assert sorted(_coordinates(results) + _coordinates(dead)) == expected
    assert {json.loads(r.value)["model_version"] for r in results} == {first}
    assert dict(results[0].headers)["model_version"] == first.encode()
    assert {dict(d.headers)["reason"].decode() for d in dead} == set(kit.POISON)
    letter = json.loads(dead[0].value)
    assert letter["reason"] in kit.POISON and "value_b64" in letter and "offset" in letter
    committed = committed_offsets({"bootstrap.servers": bootstrap_servers, "group.id": group}, inp)
    assert committed == end_offsets({"bootstrap.servers": bootstrap_servers}, inp)

    # A new version published while the consumer lives is picked up without a restart; a
    # corrupt one after it is refused and the good one keeps serving.
    second = kit.publish(root, trained)
    kit.produce(bootstrap_servers, inp, values[:50])
    consumer.run(max_records=len(values) + 50, idle_timeout_s=20)
    consumer.close()
    assert consumer.stats.model_version == second
    results = kit.read_records(bootstrap_servers, out)
    assert Counter(json.loads(r.value)["model_version"] for r in results)[second] == 50 - sum(
        1 for v in values[:50] if v in kit.POISON.values()
    )


def _published_model_and_topics(bootstrap, tmp_path, trained) -> tuple[str, ...]:
    """A model root with one published version, fresh in/out/dead-letter topics and a fresh
    group id: ``(root, inp, out, dlq, group)``."""
    root = str(tmp_path / "models")
    kit.publish(root, trained)
    inp, out, dlq = kit.new_topics(bootstrap)
    return root, inp, out, dlq, f"g-{uuid.uuid4().hex[:8]}"


def _start(bootstrap, root, inp, out, dlq, group, *extra) -> subprocess.Popen:
    return kit.start_consumer(bootstrap, root, inp, out, dlq, group, *extra, max_batch=25)


def _wait_for_outputs(bootstrap, topics, more_than: int, proc, timeout=60.0) -> int:
    return kit.wait_until(
        lambda: (n := kit.total(bootstrap, *topics)) > more_than and n,
        f"outputs beyond {more_than}",
        timeout_s=timeout,
        interval_s=0.05,
        alive=kit.process_alive(proc),
    )


def test_consumer_process_sigterm_then_kill_9_then_restart_loses_nothing(
    bootstrap_servers, tmp_path, trained
):
    root, inp, out, dlq, group = _published_model_and_topics(bootstrap_servers, tmp_path, trained)
    config = {"bootstrap.servers": bootstrap_servers}
    values, _ = kit.records_with_poison(1500)
    thirds = [values[i::3] for i in range(3)]

    # 1. SIGTERM: the batch in hand is finished and committed; exit 0; no duplicates. Scoring
    # inline here (steps 2 and 3 take the default: a scoring process where 2 CPUs are usable).
    kit.produce(bootstrap_servers, inp, thirds[0])
    proc = _start(bootstrap_servers, root, inp, out, dlq, group, "--scoring_process=false")
    _wait_for_outputs(bootstrap_servers, [out, dlq], 0, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    stats = kit.last_stats(stdout)
    assert stats["stopped_by"] == "signal"
    written = _written(bootstrap_servers, out, dlq)
    committed = committed_offsets({**config, "group.id": group}, inp)
    assert len(written) == stats["records_in"] == sum(v or 0 for v in committed.values())
    assert len(set(_coordinates(written))) == len(written)

    # 2. kill -9 in the middle of the stream: nothing committed past what was written. A
    # short session timeout lets the group evict the killed member sooner.
    fast = tmp_path / "kafka.json"
    fast.write_text(json.dumps({"kafka_python": {"session_timeout_ms": 6000}}))
    kit.produce(bootstrap_servers, inp, thirds[1])
    proc = _start(bootstrap_servers, root, inp, out, dlq, group, f"--kafka_config={fast}")
    _wait_for_outputs(bootstrap_servers, [out, dlq], len(written), proc)
    proc.kill()
    proc.communicate(timeout=30)
    committed = committed_offsets({**config, "group.id": group}, inp)
    covered = set(_coordinates(_written(bootstrap_servers, out, dlq)))
    assert all((tp.partition, o) in covered for tp, n in committed.items() for o in range(n or 0))

    # 3. Restart: it resumes from the committed offsets and drains the topic (its partitions
    # are assigned once the group has evicted the killed member: up to its session timeout).
    kit.produce(bootstrap_servers, inp, thirds[2])
    proc = _start(bootstrap_servers, root, inp, out, dlq, group, "--idle_timeout_s=10")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    written = _written(bootstrap_servers, out, dlq)
    coordinates = Counter(_coordinates(written))
    ends = end_offsets(config, inp)
    expected = {(tp.partition, o) for tp, n in ends.items() for o in range(n)}
    assert set(coordinates) == expected, "every input record has a result or a dead letter"
    duplicates = sum(coordinates.values()) - len(expected)
    print(f"kill -9 replayed {duplicates} duplicate outputs of {len(expected)} records")
    assert duplicates <= 25 * 2  # at most the batches in flight when killed
    assert committed_offsets({**config, "group.id": group}, inp) == ends


def _scorer_children(pid: int) -> list[int]:
    """Child processes of ``pid`` that run the scoring process module."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == pid and b"ae_pipeline.scoring_process" in cmdline:
            found.append(int(entry))
    return found


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except OSError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the child through /proc")
def test_consumer_process_with_scoring_process_drains_on_sigterm_and_leaves_no_orphan(
    bootstrap_servers, tmp_path, trained
):
    root, inp, out, dlq, group = _published_model_and_topics(bootstrap_servers, tmp_path, trained)
    values, _ = kit.records_with_poison(1000)
    kit.produce(bootstrap_servers, inp, values)

    # SIGTERM (to the whole process group, as a terminal's Ctrl-C or a service manager does):
    # the child ignores it, the parent drains the batches in the child, commits, exits 0.
    proc = _start(bootstrap_servers, root, inp, out, dlq, group, "--scoring_process")
    _wait_for_outputs(bootstrap_servers, [out, dlq], 0, proc)
    children = _scorer_children(proc.pid)
    assert len(children) == 1
    os.kill(children[0], signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    stats = kit.last_stats(stdout)
    written = _written(bootstrap_servers, out, dlq)
    committed = committed_offsets({"bootstrap.servers": bootstrap_servers, "group.id": group}, inp)
    assert len(written) == stats["records_in"] == sum(v or 0 for v in committed.values())
    assert kit.wait_until(lambda: _gone(children[0]), "the scoring process to exit", timeout_s=10)

    # kill -9 of the parent: the child sees its pipe close and exits (no orphan left behind).
    proc = _start(bootstrap_servers, root, inp, out, dlq, group, "--scoring_process")
    kit.wait_until(
        lambda: _scorer_children(proc.pid), "the scoring process", timeout_s=60, interval_s=0.1
    )
    child = _scorer_children(proc.pid)[0]
    proc.kill()
    proc.communicate(timeout=30)
    assert kit.wait_until(lambda: _gone(child), "the orphaned scorer to exit", timeout_s=20)


def _idle_consumer(bootstrap, root, inp, out, dlq, group, config=(), **kwargs) -> ScoringConsumer:
    return ScoringConsumer(
        {"bootstrap.servers": bootstrap, "group.id": group, **dict(config)},
        input_topic=inp, output_topic=out, dead_letter_topic=dlq, mode="flag",
        model_root=root, device="cpu", **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("scoring_process", [False, True], ids=["inline", "scoring-process"])
def test_a_quiet_topic_still_hot_reloads(bootstrap_servers, tmp_path, trained, scoring_process):
    root, inp, out, dlq, group = _published_model_and_topics(bootstrap_servers, tmp_path, trained)
    consumer = _idle_consumer(
        bootstrap_servers, root, inp, out, dlq, group,
        model_poll_interval_s=0, poll_timeout_s=0.1, scoring_process=scoring_process,
    )  # fmt: skip
    done = []
    thread = threading.Thread(target=lambda: done.append(consumer.run()), daemon=True)
    thread.start()
    try:
        first = kit.wait_until(
            lambda: consumer.stats.model_version, "the first model", timeout_s=60
        )
        second = kit.publish(root, trained)
        assert second != first
        kit.wait_until(
            lambda: consumer.stats.model_version == second, "the swap while idle", timeout_s=30
        )
    finally:
        consumer.stop()
        thread.join(30)
        consumer.close()
    assert done and done[0].records_in == 0 and done[0].model_swaps == 2


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_an_unreachable_broker_stops_the_run_without_committing(tmp_path, trained, client):
    """Not the records' fault: the run raises (the command exits 1) instead of ending "idle"
    with nothing done; idle time counts only once partitions are assigned (never, here)."""
    if client == "confluent":
        pytest.importorskip("confluent_kafka")
    root = str(tmp_path / "models")
    kit.publish(root, trained)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{s.getsockname()[1]}"
    consumer = _idle_consumer(
        nobody, root, "in", "out", "dlq", "g", {"unreachable_timeout_s": 3},
        client=client, assignment_timeout_s=1, scoring_process=False,
    )  # fmt: skip
    unreachable = r"127\.0\.0\.1|unreachable|transport|timed out"
    with consumer, pytest.raises(KafkaClientError, match=unreachable):
        consumer.run(idle_timeout_s=0)
    assert consumer.stats.batches == 0 and consumer.stats.stopped_by is None


def test_consume_command_exits_1_when_the_broker_cannot_be_reached(tmp_path, trained):
    root = str(tmp_path / "models")
    kit.publish(root, trained)
    settings = tmp_path / "kafka.json"
    settings.write_text(json.dumps({"unreachable_timeout_s": 3}))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{s.getsockname()[1]}"
    proc = kit.start_consumer(
        nobody, root, "in", "out", "dlq", "g", "--idle_timeout_s=0",
        max_batch=25, kafka_config=settings,
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr.decode()[-3000:]
    assert b"what was not committed will be read again" in stderr and b"Traceback" not in stderr
    assert not stdout.strip()  # no stats line: the run did not end as asked

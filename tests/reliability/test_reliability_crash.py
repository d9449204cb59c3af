"""kill -9 of the consumer process mid-batch, then a restart: it resumes from the committed
offsets, nothing is lost, and the duplicates are exactly the outputs the killed process had
written past its last commit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid

import kit
import pytest
import reliability_kit as rel

from ae_pipeline.kafka import committed_offsets, end_offsets

pytestmark = pytest.mark.kafka

BATCH = 200


def _start(bootstrap, root, inp, out, dlq, group, config_path, *extra) -> subprocess.Popen:
    return kit.start_consumer(
        bootstrap, root, inp, out, dlq, group, *extra, max_batch=BATCH, kafka_config=config_path
    )


def test_kill_9_mid_batch_then_restart_resumes_from_committed_offsets(broker, model_root, tmp_path):
    root, _ = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    # A short session timeout: the group evicts the killed member soon, so that the restarted
    # one gets its partitions within seconds.
    config_path = tmp_path / "kafka.json"
    config_path.write_text(json.dumps({"kafka_python": {"session_timeout_ms": 6000}}))
    progress = rel.Progress(bootstrap, inp, out, dlq, group)
    kills: list[dict] = []
    expected_duplicates = produced = 0
    try:
        for _attempt in range(3):
            kit.produce(bootstrap, inp, kit.stream_values(produced, 4000), start_key=produced)
            produced += 4000
            already = kit.total(bootstrap, out, dlq)
            proc = _start(bootstrap, root, inp, out, dlq, group, config_path)

            kit.wait_until(
                lambda a=already: kit.total(bootstrap, out, dlq) >= a + 2 * BATCH,
                "the consumer to score a few batches",
                alive=kit.process_alive(proc),
            )
            # Kill while the outputs are ahead of the commits: a batch written, not committed.
            rel.kill_mid_batch(proc, progress)
            committed, outputs = rel.settled(bootstrap, inp, out, dlq, group)
            past_commit = sum(1 for p, o in outputs if o >= committed.get(p, 0))
            expected_duplicates += past_commit
            kills.append(
                {"outputs": len(outputs), "committed": committed, "past_commit": past_commit}
            )
            if past_commit:
                break  # killed mid-batch: enough
    finally:
        progress.close()
    assert kills[-1]["past_commit"] > 0, f"never caught mid-batch: {kills}"

    # Restart: it resumes from the committed offsets and drains the topic.
    before = {topic: kit.total(bootstrap, topic) for topic in (out, dlq)}
    committed = kills[-1]["committed"]
    proc = _start(bootstrap, root, inp, out, dlq, group, config_path, "--idle_timeout_s=8")
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    stats = kit.last_stats(stdout)

    t = rel.tally(bootstrap, inp, out, dlq, group=group)
    rel.report_fault(
        "consumer kill -9 mid-batch + restart",
        "plain consumer (process)",
        t,
        kills=len(kills),
        written_past_commit_at_kill=expected_duplicates,
        produced=produced,
        restarted_records_in=stats["records_in"],
    )
    assert t.records_in == produced
    assert t.lost == 0, f"lost {t.lost} records, e.g. {t.missing}"
    # Replays come only from the killed batches: the duplicates are exactly the outputs that
    # had been written past the last commit.
    assert t.duplicated == expected_duplicates, (t.duplicated, kills)
    # The restarted process began each partition exactly at its committed offset (topics of
    # one partition: read_all returns the outputs in the order they were written).
    restarted = [
        (d["partition"], d["offset"])
        for topic in (out, dlq)
        for d in kit.read_all(bootstrap, topic)[before[topic] :]
    ]
    first: dict[int, int] = {}
    for p, o in restarted:
        first[p] = min(first.get(p, o), o)
    ends = end_offsets({"bootstrap.servers": bootstrap}, inp)
    assert first == {
        tp.partition: committed[tp.partition]
        for tp, n in ends.items()
        if committed[tp.partition] < n
    }
    assert stats["records_in"] == sum(n - committed[tp.partition] for tp, n in ends.items())
    assert committed_offsets({"bootstrap.servers": bootstrap, "group.id": group}, inp) == ends


@pytest.mark.soak  # extended run (make soak): two Prism job starts take a minute here
@pytest.mark.prism
def test_kill_9_of_the_prism_job_then_restart_resumes_from_committed_offsets(
    broker, model_root, beam_options
):
    from ae_pipeline.local.runners import runner_args

    beam_options("prism", streaming=True)  # counted in the session's runner summary
    root, _ = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    values = kit.stream_values(0, 6000)
    kit.produce(bootstrap, inp, values)
    cmd = [
        sys.executable,
        "-m",
        "pipelines.stream",
        *runner_args("prism", streaming=True),
        *kit.stream_job_args(bootstrap, inp, out, dlq, group, root, "--max_batch_size=100"),
    ]

    def start() -> subprocess.Popen:
        # Its own process group: kill -9 takes the Prism binary and the SDK harness with it.
        return subprocess.Popen(
            cmd,
            cwd=kit.REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> bytes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        return proc.communicate(timeout=60)[1]

    proc = start()
    try:
        kit.wait_until(
            lambda: kit.total(bootstrap, out, dlq) >= 1000,
            "the job's first outputs",
            timeout_s=180,
            alive=lambda: None if proc.poll() is None else "the job exited",
        )
    finally:
        kill(proc)
    committed, outputs = rel.settled(bootstrap, inp, out, dlq, group)
    past_commit = sum(1 for p, o in outputs if o >= committed.get(p, 0))

    proc = start()
    try:
        kit.wait_until(
            lambda: kit.committed_total(bootstrap, inp, group) == len(values),
            "the restarted job to score and commit the rest",
            timeout_s=240,
            alive=lambda: None if proc.poll() is None else "the job exited",
        )
    finally:
        kill(proc)
    t = rel.tally(bootstrap, inp, out, dlq, group=group)
    rel.report_fault(
        "job kill -9 mid-stream + restart",
        "Prism stream job (process)",
        t,
        outputs_at_kill=len(outputs),
        written_past_commit_at_kill=past_commit,
    )
    assert t.records_in == len(values) and t.lost == 0 and t.pending == 0
    assert t.duplicated == past_commit

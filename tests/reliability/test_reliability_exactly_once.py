"""Exactly once (``--processing_guarantee exactly_once``) against the real broker: each batch's
results, dead letters and offsets are one Kafka transaction, so a ``read_committed`` reader of
the outputs sees every input record exactly once whatever happens to the consumer:

* ``kill -9`` while a transaction is open, then a restart (both clients);
* a broker restart mid-stream (both clients);
* two consumers in one group, one killed mid-transaction: the other takes its partitions over;
* a zombie: a consumer frozen mid-transaction until the group has replaced it, then let go;
* SIGTERM: the open transaction is finished and committed, not left to time out.

Each test counts with a ``read_committed`` reader (``rel.tally(..., isolation_level=...)``): 0
lost and 0 duplicated, with the rows in the reliability table beside the at-least-once ones.
The transactions are short here (``--transaction_timeout_s=10``, the default): the transaction
of a killed process is aborted by the broker within 10 s.
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import kit
import pytest
import reliability_kit as rel

from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.kafka import committed_offsets, end_offsets

pytestmark = pytest.mark.kafka

BATCH = 200
EXACTLY_ONCE = ("--processing_guarantee=exactly_once",)
CLIENTS = ["kafka-python", "confluent"]


@pytest.fixture
def kafka_config(tmp_path):
    """Short session timeouts: the group evicts a killed or frozen member within seconds."""
    path = tmp_path / "kafka.json"
    path.write_text(
        json.dumps(
            {
                "kafka_python": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
                "confluent": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
            }
        )
    )
    return path


def _start(bootstrap, root, topics, group, config, client, *extra):
    inp, out, dlq = topics
    return kit.start_consumer(
        bootstrap,
        root,
        inp,
        out,
        dlq,
        group,
        *EXACTLY_ONCE,
        *extra,
        max_batch=BATCH,
        client=client,
        kafka_config=config,
    )


def _in_process(bootstrap, root, topics, group, client, **options) -> ScoringConsumer:
    """An exactly-once consumer in this process (flag mode, CPU) on ``topics``."""
    inp, out, dlq = topics
    return ScoringConsumer(
        {"bootstrap.servers": bootstrap, "group.id": group},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="flag",
        model_root=root,
        device="cpu",
        client=client,
        processing_guarantee="exactly_once",
        **options,
    )


def _finish(proc, timeout_s: float = 60) -> dict:
    """Stops a consumer (SIGTERM: it commits the transaction in hand) and returns its stats."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    return kit.last_stats(stdout)


def _committed_everything(bootstrap, inp, group) -> bool:
    config = {"bootstrap.servers": bootstrap}
    return committed_offsets({**config, "group.id": group}, inp) == end_offsets(config, inp)


def _wait_committed_everything(bootstrap, inp, group, *procs) -> None:
    kit.wait_until(
        lambda: _committed_everything(bootstrap, inp, group),
        "every record scored and committed",
        timeout_s=180,
        alive=lambda: next(filter(None, (kit.process_alive(p)() for p in procs)), None),
    )


def _written_past_commit(bootstrap, inp, out, dlq, group) -> int:
    """Outputs in the log (read_uncommitted) for input records past the group's commits: what
    a killed at-least-once consumer would leave as duplicates."""
    committed, outputs = rel.settled(bootstrap, inp, out, dlq, group, "read_uncommitted")
    return sum(1 for p, o in outputs if o >= committed.get(p, 0))


def _judge(bootstrap, topics, group, fault: str, client: str, produced: int, **extra):
    """Counts the outputs with a ``read_committed`` reader, adds the row to the fault table,
    and asserts exactly once; returns the tally."""
    inp, out, dlq = topics
    t = rel.tally(bootstrap, inp, out, dlq, group=group, isolation_level="read_committed")
    rel.report_fault(fault, f"plain consumer, exactly once ({client})", t, **extra)
    _exactly_once(t, produced)
    return t


def _exactly_once(t: rel.Tally, produced: int) -> None:
    assert t.records_in == produced
    assert t.lost == 0, f"lost {t.lost} records, e.g. {t.missing}"
    assert t.duplicated == 0, f"{t.duplicated} duplicated outputs"
    assert t.records_out == produced


@pytest.mark.parametrize("client", CLIENTS)
def test_kill_9_mid_transaction_then_restart(broker, model_root, kafka_config, client):
    if client == "confluent":
        pytest.importorskip("confluent_kafka")
    root, version = model_root
    bootstrap = broker.bootstrap_servers
    topics = inp, out, dlq = kit.new_topics(bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    # Records keep arriving (a backlog would be done in a few transactions, before the kill
    # could catch one open).
    feeder = rel.Feeder(bootstrap, inp, rate=1000.0)
    feeder.start()
    progress = rel.Progress(bootstrap, inp, out, dlq, group)
    try:
        proc = _start(bootstrap, root, topics, group, kafka_config, client)
        kit.wait_until(
            lambda: kit.committed_total(bootstrap, inp, group) >= 2 * BATCH,
            "the consumer to commit a few transactions",
            alive=kit.process_alive(proc),
        )
        rel.kill_mid_batch(proc, progress, transactional=True)
    finally:
        produced = feeder.finish()
        progress.close()
    written_uncommitted = _written_past_commit(bootstrap, inp, out, dlq, group)
    assert written_uncommitted > 0, "the kill did not catch a transaction open"

    proc = _start(bootstrap, root, topics, group, kafka_config, client)
    _wait_committed_everything(bootstrap, inp, group, proc)
    stats = _finish(proc)
    t = rel.tally(bootstrap, inp, out, dlq, group=group, isolation_level="read_committed")
    seen_uncommitted = rel.tally(
        bootstrap, inp, out, dlq, group=group, isolation_level="read_uncommitted"
    )
    rel.report_fault(
        "consumer kill -9 mid-transaction + restart",
        f"plain consumer, exactly once ({client})",
        t,
        written_in_the_open_transaction=written_uncommitted,
        duplicated_read_uncommitted=seen_uncommitted.duplicated,
        restarted_records_in=stats["records_in"],
    )
    _exactly_once(t, produced)
    assert t.versions == {version: t.results}
    # The aborted transaction's outputs are in the log, invisible to read_committed readers.
    assert seen_uncommitted.duplicated > 0


@pytest.mark.parametrize("client", CLIENTS)
def test_broker_restart_mid_stream(broker, model_root, client):
    if client == "confluent":
        pytest.importorskip("confluent_kafka")
    root, _ = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = _in_process(bootstrap, root, (inp, out, dlq), group, client, max_batch=100)
    thread = rel.ConsumerThread(consumer)
    thread.start()
    feeder = rel.Feeder(bootstrap, inp, rate=250.0)
    feeder.start()
    figures: dict = {}
    try:
        kit.wait_until(
            lambda: kit.committed_total(bootstrap, inp, group) >= 300,
            "first committed transactions",
            alive=thread.problem,
        )
        t0 = time.monotonic()
        broker.stop(remove_data=False)
        broker.start()
        figures["broker_down_s"] = round(time.monotonic() - t0, 1)
        resumed_at = feeder.sent
        kit.wait_until(lambda: feeder.sent >= resumed_at + 300, "more records fed")
        figures["sent"] = feeder.finish()
        kit.wait_until(
            lambda: kit.committed_total(bootstrap, inp, group) == figures["sent"],
            "every record scored and committed",
            timeout_s=180,
            alive=thread.problem,
        )
    finally:
        if feeder.is_alive():
            feeder.finish()
        thread.finish()
    if thread.error is not None:
        raise thread.error
    _judge(
        bootstrap,
        (inp, out, dlq),
        group,
        "broker restart (stop + start)",
        client,
        figures["sent"],
        aborted_transactions=consumer.stats.aborted_transactions,
        producer_restarts=consumer.stats.producer_restarts,
        **figures,
    )


def test_two_consumers_one_killed_mid_transaction(broker, model_root, kafka_config):
    """A rebalance: the survivor takes over the killed member's partitions once the broker has
    aborted its open transaction, and reads them from the committed offsets."""
    root, _ = model_root
    bootstrap = broker.bootstrap_servers
    topics = inp, out, dlq = kit.new_topics(bootstrap, partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produced = 6000
    kit.produce(bootstrap, inp, kit.stream_values(0, produced))
    client = "kafka-python"
    survivor = _start(bootstrap, root, topics, group, kafka_config, client)
    victim = _start(bootstrap, root, topics, group, kafka_config, client)
    progress = rel.Progress(bootstrap, inp, out, dlq, group)
    try:
        kit.wait_until(
            lambda: kit.committed_total(bootstrap, inp, group) >= 4 * BATCH,
            "both consumers to commit",
            alive=kit.process_alive(victim, "the second consumer"),
        )
        rel.kill_mid_batch(victim, progress, transactional=True)
        _wait_committed_everything(bootstrap, inp, group, survivor)
    finally:
        progress.close()
    stats = _finish(survivor)
    _judge(
        bootstrap,
        topics,
        group,
        "one of two consumers kill -9 mid-transaction (rebalance)",
        client,
        produced,
        survivor_records_in=stats["records_in"],
        survivor_aborted_transactions=stats["aborted_transactions"],
    )


def test_zombie_is_fenced(broker, model_root, kafka_config):
    """A consumer frozen mid-transaction (a long GC pause, a stalled VM) past its session: the
    group replaces it and the replacement scores everything; when the zombie wakes up, its
    transaction cannot commit (fenced by the group generation, or aborted by the broker's
    transaction timeout) and nothing it wrote is seen twice."""
    root, version = model_root
    bootstrap = broker.bootstrap_servers
    topics = inp, out, dlq = kit.new_topics(bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produced = 4000
    kit.produce(bootstrap, inp, kit.stream_values(0, produced))
    client = "kafka-python"
    zombie = _start(bootstrap, root, topics, group, kafka_config, client)
    progress = rel.Progress(bootstrap, inp, out, dlq, group)
    try:
        kit.wait_until(
            lambda: kit.committed_total(bootstrap, inp, group) >= 2 * BATCH,
            "the first consumer to commit a few transactions",
            alive=kit.process_alive(zombie),
        )
        frozen = rel.freeze_mid_batch(zombie, progress, transactional=True)
        assert frozen, "never caught a transaction open"
        # The replacement joins once the frozen member's session has expired.
        replacement = _start(bootstrap, root, topics, group, kafka_config, client)
        _wait_committed_everything(bootstrap, inp, group, replacement)
        zombie.send_signal(signal.SIGCONT)  # the zombie wakes up with its transaction open
        # It finds its transaction fenced or aborted, rejoins the group and reads again from
        # the committed offsets (nothing left): wait until it has tried, then stop both.
        kit.wait_until(
            lambda: (
                _committed_everything(bootstrap, inp, group) and not progress.open_transaction()
            ),
            "the zombie's transaction to be settled",
            timeout_s=60,
        )
        time.sleep(8)  # the zombie rejoins; a commit it could wrongly make would land here
        zombie_stats = _finish(zombie)
        replacement_stats = _finish(replacement)
    finally:
        progress.close()
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
            zombie.kill()
    t = _judge(
        bootstrap,
        topics,
        group,
        "zombie: consumer frozen mid-transaction, replaced, then resumed",
        client,
        produced,
        zombie_aborted_transactions=zombie_stats["aborted_transactions"],
        replacement_records_in=replacement_stats["records_in"],
    )
    assert zombie_stats["aborted_transactions"] >= 1
    assert t.versions == {version: t.results}


def test_sigterm_commits_the_open_transaction(broker, model_root, kafka_config):
    root, _ = model_root
    bootstrap = broker.bootstrap_servers
    topics = inp, out, dlq = kit.new_topics(bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    feeder = rel.Feeder(bootstrap, inp, rate=400.0)
    feeder.start()
    proc = _start(bootstrap, root, topics, group, kafka_config, "confluent")
    try:
        kit.wait_until(
            lambda: kit.committed_total(bootstrap, inp, group) >= 500,
            "the consumer to commit a few transactions",
            alive=kit.process_alive(proc),
        )
        proc.send_signal(signal.SIGTERM)
        stats = _finish(proc, timeout_s=60)
    finally:
        sent = feeder.finish()
        if proc.poll() is None:
            proc.kill()
    assert stats["stopped_by"] == "signal"
    # Committed, not left open for the broker to abort after the transaction timeout (10 s):
    # a read_committed reader reaches the end of the outputs at once.
    kit.read_records(bootstrap, out, timeout_s=5, isolation_level="read_committed")
    t = rel.tally(bootstrap, inp, out, dlq, group=group, isolation_level="read_committed")
    assert t.records_in == sent and t.lost == 0 and t.duplicated == 0
    assert t.records_out == stats["records_in"] == kit.committed_total(bootstrap, inp, group)
    rel.report_fault("SIGTERM mid-stream", "plain consumer, exactly once (confluent)", t)


@pytest.mark.parametrize("commit_interval_s", [0.0, 2.0])
def test_a_transaction_takes_the_batches_of_its_commit_interval(
    broker, model_root, commit_interval_s
):
    """``commit_interval_s=0``: one transaction per batch; longer: several batches in one
    transaction (what makes exactly once fast), still every record once."""
    pytest.importorskip("confluent_kafka")
    root, _ = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produced = 1200
    values = [kit.record(i, r) for i, r in enumerate(kit.normal_rows(produced, seed=3))]
    kit.produce(bootstrap, inp, values)
    consumer = _in_process(
        bootstrap,
        root,
        (inp, out, dlq),
        group,
        "confluent",
        max_batch=50,
        scoring_process=False,
        commit_interval_s=commit_interval_s,
    )
    with consumer:
        stats = consumer.run(idle_timeout_s=3)
    assert stats.records_in == produced and stats.aborted_transactions == 0
    assert stats.batches >= produced // 50
    if commit_interval_s == 0:
        assert stats.transactions == stats.batches
    else:
        assert stats.transactions < stats.batches / 2, stats
    t = rel.tally(bootstrap, inp, out, dlq, group=group, isolation_level="read_committed")
    _exactly_once(t, produced)
    assert kit.committed_total(bootstrap, inp, group) == produced

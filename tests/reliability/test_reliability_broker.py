"""Broker restart mid-stream: the Kafka process is stopped and started again (same port, same
data) while records keep arriving and the plain consumer, or the Prism streaming job, is
scoring them. Nothing may be lost; duplicates are counted and reported."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import uuid

import kit
import pytest
import reliability_kit as rel

from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.local.runners import runner_args

pytestmark = pytest.mark.kafka

RATE = 250.0  # records/s produced during the test
SETTLE_S = 180.0  # time allowed to catch up after the restart


def _restart_mid_stream(
    broker, inp, out, dlq, alive, figures: dict, *, kill: bool, outage_s: float = 0
) -> None:
    """Feeds ``inp`` at RATE; once outputs flow, stops (SIGTERM, or SIGKILL with ``kill``)
    the broker, leaves it down ``outage_s`` more seconds, starts it on the same port and data,
    feeds on, then stops the feed. Fills ``figures`` as it goes (also when it fails)."""
    bootstrap = broker.bootstrap_servers
    feeder = rel.Feeder(bootstrap, inp, rate=RATE)
    feeder.start()
    try:
        kit.wait_until(lambda: kit.total(bootstrap, out, dlq) >= 200, "first outputs", alive=alive)
        figures["outputs_before_restart"] = kit.total(bootstrap, out, dlq)
        figures["produced_before_restart"] = feeder.sent
        t0 = time.monotonic()
        if kill:
            broker.kill()
        else:
            broker.stop(remove_data=False)
        deadline = time.monotonic() + outage_s
        while time.monotonic() < deadline and not alive():
            time.sleep(0.2)
        broker.start()
        up = time.monotonic()
        figures["broker_down_s"] = round(up - t0, 1)
        resumed_at = feeder.sent
        kit.wait_until(
            lambda: kit.total(bootstrap, out, dlq) > figures["outputs_before_restart"] + 200,
            "outputs after the restart",
            timeout_s=SETTLE_S,
            alive=alive,
        )
        figures["outputs_flowing_again_after_s"] = round(time.monotonic() - up, 1)
        kit.wait_until(lambda: feeder.sent >= resumed_at + 300, "more records fed", alive=alive)
    finally:
        figures["sent"] = feeder.finish()


@pytest.mark.parametrize(
    "kill",
    [False, pytest.param(True, marks=pytest.mark.soak)],  # kill -9: extended run (make soak)
    ids=["restart", "kill-9"],
)
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_broker_restart_plain_consumer_loses_nothing(broker, model_root, kill, client):
    root, version = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap, "group.id": group},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="flag",
        model_root=root,
        device="cpu",
        max_batch=100,
        client=client,
    )
    thread = rel.ConsumerThread(consumer)
    thread.start()
    figures: dict = {}
    try:
        _restart_mid_stream(broker, inp, out, dlq, thread.problem, figures, kill=kill)
        kit.wait_until(
            lambda: kit.committed_total(bootstrap, inp, group) == figures["sent"],
            "every record scored and committed",
            timeout_s=SETTLE_S,
            alive=thread.problem,
        )
    finally:
        thread.finish()
    if thread.error is not None:
        raise thread.error
    t = rel.tally(bootstrap, inp, out, dlq, group=group)
    stats = consumer.stats
    rel.report_fault(
        "broker kill -9 + start" if kill else "broker restart (stop + start)",
        f"plain consumer ({client})",
        t,
        commit_failures=stats.commit_failures,
        **figures,
    )
    assert t.records_in == figures["sent"]
    assert t.lost == 0, f"lost {t.lost} records, e.g. {t.missing}"
    assert 0 < figures["outputs_before_restart"] < figures["sent"]  # it was mid-stream
    assert t.versions == {version: t.results}
    # Duplicates only come from batches whose commit failed (replayed), at most max_batch each.
    assert t.duplicated <= 100 * stats.commit_failures


@pytest.mark.prism
# A Kafka client error in the read (the broker is down) used to fail the bundle and with it the
# Prism job (7 of 8 runs); the read now defers and retries, commits retry in the background.
def test_broker_outage_prism_stream_job_loses_nothing(broker, model_root, beam_options):
    from pipelines import stream

    beam_options("prism", streaming=True)  # counted in the session's runner summary
    root, version = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    argv = [
        *runner_args("prism", streaming=True),
        *kit.stream_job_args(bootstrap, inp, out, dlq, group, root, "--max_batch_size=200"),
    ]
    handlers = logging.getLogger().handlers[:]
    result = stream.main(argv, wait=False)
    # main() points the root logger at this test's captured stderr (basicConfig(force=True));
    # put the session's handlers back so later log records do not hit a closed stream.
    logging.getLogger().handlers[:] = handlers

    alive = kit.pipeline_alive(result)
    figures: dict = {}
    outcome = "ok"
    try:
        # Down long enough that every partition's read polls the dead broker.
        _restart_mid_stream(broker, inp, out, dlq, alive, figures, kill=False, outage_s=15)
        kit.wait_until(
            lambda: kit.committed_total(bootstrap, inp, group) == figures["sent"],
            "every record scored and its offset committed",
            # A healthy job keeps up with RATE (the backlog is seconds), on a loaded machine too.
            timeout_s=SETTLE_S,
            alive=alive,
        )
    except AssertionError as err:
        outcome = str(err)
    finally:
        result.cancel()
        with contextlib.suppress(Exception):
            result.wait_until_finish(duration=30_000)
    t = rel.tally(bootstrap, inp, out, dlq, group=group)
    rel.report_fault(
        "broker outage 15 s (stop, start)", "Prism stream job", t, outcome=outcome, **figures
    )
    # At least once even when the job dies: nothing it committed lacks an output.
    assert t.lost == 0, f"lost {t.lost} records, e.g. {t.missing}"
    assert outcome == "ok", outcome
    assert t.records_in == figures["sent"] and t.pending == 0
    assert 0 < figures["outputs_before_restart"] < figures["sent"]
    assert t.versions == {version: t.results}


class _FirstWarning(logging.Handler):
    """Sets ``seen`` at the first WARNING (or worse) of ``logger`` that contains ``text``."""

    def __init__(self, logger: str, text: str):
        super().__init__(logging.WARNING)
        self.text, self.seen = text, threading.Event()
        self._logger = logging.getLogger(logger)
        self._logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    def remove(self) -> None:
        self._logger.removeHandler(self)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_beam_write_rides_out_a_broker_outage(broker, beam_options, client):
    """WriteKafkaRecords whose bundle starts while the broker is down: its flush fails (or
    the kafka-python producer cannot bootstrap), the bundle is flushed (or sent) again until
    the broker is back, and the pipeline ends with every record written once."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    from ae_pipeline.beam.kafka_write import WriteKafkaRecords

    bootstrap = broker.bootstrap_servers
    topic = kit.new_topics(bootstrap, partitions=1)[0]
    values = [b"%d" % i for i in range(500)]
    config = {"bootstrap.servers": bootstrap, "kafka_python": {"bootstrap_timeout_ms": 3000}}
    broker.stop(remove_data=False)
    outcome: dict = {}

    def run() -> None:
        try:
            p = beam.Pipeline(options=beam_options("fnapi"))
            _ = (
                p
                | beam.Create([(None, v) for v in values])
                | WriteKafkaRecords(topic, config, client=client, flush_timeout_s=3)
            )
            result = p.run()
            outcome["state"] = result.wait_until_finish()
            retries = result.metrics().query(MetricsFilter().with_name("write_retries"))
            outcome["write_retries"] = sum(c.committed for c in retries["counters"])
        except BaseException as err:  # reported below
            outcome["error"] = err

    # The broker comes back once the write has met the outage (its first failed attempt is
    # logged as a warning before the retry), however long the pipeline took to get there.
    failed = _FirstWarning("ae_pipeline.beam.kafka_write", "failed")
    writer = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    writer.start()
    try:
        kit.wait_until(
            failed.seen.is_set,
            "the write's first failed attempt",
            timeout_s=180,
            alive=lambda: None if writer.is_alive() else f"the pipeline ended: {outcome}",
        )
    finally:
        failed.remove()
    down_s = round(time.monotonic() - t0, 1)
    broker.start()
    writer.join(240)
    assert not writer.is_alive(), "the pipeline did not end after the broker came back"
    written = [r.value for r in kit.read_records(bootstrap, topic)]
    seen = collections.Counter(written)
    lost = set(values) - set(seen)
    rel.report_fault(
        "broker down while writing (stop until a write fails, start)",
        f"WriteKafkaRecords ({client}, FnApiRunner)",
        records_in=len(values),
        records_out=len(seen),
        duplicated=len(written) - len(seen),
        lost=len(lost),
        outcome="ok" if "error" not in outcome else repr(outcome["error"])[:200],
        seconds=round(time.monotonic() - t0, 1),
        broker_down_s=down_s,
        write_retries=outcome.get("write_retries"),
    )
    assert "error" not in outcome, outcome
    assert outcome["state"] == "DONE"
    assert outcome["write_retries"] >= 1  # the outage was met, and ridden out
    assert not lost and set(seen) == set(values)
    # Records that were never acknowledged stay with their producer, which is flushed again
    # rather than replaced (a new one would send them a second time).
    assert len(written) == len(values), f"{len(written) - len(values)} duplicates"

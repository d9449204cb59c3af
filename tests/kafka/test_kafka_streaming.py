"""An unbounded ReadKafkaRecords in streaming mode on Prism and Flink: records produced while
the pipeline runs are read, windows on record timestamps close, offsets are committed."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms import window

from ae_pipeline.beam.kafka_read import ReadKafkaRecords
from ae_pipeline.kafka import committed_offsets, end_offsets

# make test runs this module in both environments: on Prism 2.62 (.venv-beam-2.62) it must pass.
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.both_beams,
    pytest.mark.usefixtures("quiet_abandoned_clients"),
]

# Prism 2.77 took this step's watermark from the last finished bundle alone; with a partition
# per concurrent bundle, records of the slower partitions came in late and were dropped from
# their windows (kafka-python 2 of 4 runs, confluent 1 of 4). The read now shares one watermark
# among its partitions on Prism (ReadKafkaRecords(shared_watermark=...)).

PARTITIONS = 3
BEFORE, WHILE = 30, 30
TIMEOUT_S = 60


class _AppendLine(beam.DoFn):
    """Side effect for a streaming test: append ``str(element)`` to a file."""

    def __init__(self, path: str):
        self._path = path

    def process(self, element):
        with open(self._path, "a") as f:
            f.write(f"{element}\n")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(what: str, condition, result) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        state = result.state
        if PipelineState.is_terminal(state):
            raise AssertionError(f"pipeline ended ({state}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.parametrize(
    "runner, client",
    [
        pytest.param("prism", "kafka-python", marks=pytest.mark.prism),
        pytest.param("prism", "confluent", marks=pytest.mark.prism),
        pytest.param("flink", "confluent", marks=[pytest.mark.flink, pytest.mark.slow]),
    ],
)
def test_unbounded_read_sees_records_produced_while_it_runs(
    runner, client, tmp_path, kafka_config, new_topic, produce, beam_options
):
    topic = new_topic(PARTITIONS)
    expected = produce(topic, BEFORE, PARTITIONS)
    records_file, windows_file = tmp_path / "records.txt", tmp_path / "windows.txt"

    # Flink runs bundle finalizers (the offset commits) only when a checkpoint completes, and
    # needs --finish_bundle_before_checkpointing for the read's outputs to leave at checkpoints
    # (see the module notes in ae_pipeline/beam/kafka_read.py).
    commit = True
    extra = (
        {"checkpointing_interval": 1000, "finish_bundle_before_checkpointing": True}
        if runner == "flink"
        else {}
    )
    p = beam.Pipeline(options=beam_options(runner, streaming=True, **extra))
    records = p | ReadKafkaRecords(
        topic, kafka_config, client=client, batch=False, commit_offsets=commit
    )
    _ = (
        records
        | "Triple" >> beam.Map(lambda r: (r.topic, r.partition, r.offset))
        | "LogRecord" >> beam.ParDo(_AppendLine(str(records_file)))
    )
    _ = (
        records
        | beam.WindowInto(window.FixedWindows(1))
        | beam.combiners.Count.Globally().without_defaults()
        | "LogWindow" >> beam.ParDo(_AppendLine(str(windows_file)))
    )
    result = p.run()
    try:
        _wait_for(
            "the records produced before the start",
            lambda: len(_lines(records_file)) >= BEFORE,
            result,
        )
        expected += produce(topic, WHILE, PARTITIONS, start=BEFORE)
        _wait_for(
            "the records produced while running",
            lambda: len(_lines(records_file)) >= BEFORE + WHILE,
            result,
        )
        # Windows on record timestamps fire while the read runs: the partitions' watermarks
        # follow the records, then move on to "now" when the partitions go idle.
        _wait_for(
            "every record to be counted in a closed window",
            lambda: sum(map(int, _lines(windows_file))) >= BEFORE + WHILE,
            result,
        )
        if commit:
            _wait_for(
                "the offsets to be committed",
                lambda: committed_offsets(kafka_config, topic) == end_offsets(kafka_config, topic),
                result,
            )
    finally:
        result.cancel()
    got = sorted(ast.literal_eval(line) for line in _lines(records_file))
    assert got == sorted(expected)  # every record once (no failures, so no redelivery)
    assert sum(map(int, _lines(windows_file))) == BEFORE + WHILE

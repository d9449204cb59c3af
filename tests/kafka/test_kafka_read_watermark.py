"""The read's watermark on Prism without a broker: the partitions of one read share the least
of their watermarks (Prism 2.77 takes a step's watermark from the last finished bundle alone;
``tests/kafka/test_kafka_streaming.py`` runs it on Prism against the real broker)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.timestamp import Timestamp

from ae_pipeline.beam.kafka_partitions import PartitionToRead, _SharedWatermarks
from ae_pipeline.beam.kafka_read import ReadKafkaRecords


def test_partitions_share_the_least_watermark_once_each_has_one():
    shared = _SharedWatermarks()
    parts = [PartitionToRead("t", p, 0, partitions=3) for p in range(3)]
    est = [ManualWatermarkEstimator(None) for _ in parts]

    shared.advance("read", parts[0], est[0], Timestamp(100))
    shared.advance("read", parts[2], est[2], Timestamp(50))
    # Partition 1 has no watermark yet: nobody may pass it (its records could be older).
    assert [e.current_watermark() for e in est] == [None, None, None]

    shared.advance("read", parts[1], est[1], Timestamp(70))
    assert est[1].current_watermark() == Timestamp(50)  # the least, not its own 70
    shared.advance("read", parts[0], est[0], Timestamp(120))
    assert est[0].current_watermark() == Timestamp(50)
    shared.advance("read", parts[2], est[2], Timestamp(90))  # now partition 1's 70 is least
    assert est[2].current_watermark() == Timestamp(70)
    # A partition's own watermark never goes back, and the estimate never decreases.
    shared.advance("read", parts[2], est[2], Timestamp(60))
    assert est[2].current_watermark() == Timestamp(70)
    # Another read (another id) is counted apart.
    other = ManualWatermarkEstimator(None)
    shared.advance("other", PartitionToRead("t", 0, 0, partitions=1), other, Timestamp(5))
    assert other.current_watermark() == Timestamp(5)


def _read_fn(runner: str, **kwargs):
    options = PipelineOptions([f"--runner={runner}", "--streaming"])
    p = beam.Pipeline(options=options)
    out = p | ReadKafkaRecords("t", {"bootstrap.servers": "127.0.0.1:9"}, **kwargs)
    return out.producer.transform.fn


@pytest.mark.parametrize(
    "runner, kwargs, shared",
    [
        ("PrismRunner", {}, True),
        ("PrismRunner", {"bounded": True}, False),  # a bounded read's windows close at its end
        ("PrismRunner", {"shared_watermark": False}, False),
        ("FlinkRunner", {}, False),  # partitions on several workers: the runner takes the least
        ("FlinkRunner", {"shared_watermark": True}, True),
    ],
)
def test_the_watermark_is_shared_on_prism_by_default(runner, kwargs, shared):
    fn = _read_fn(runner, **kwargs)
    assert (fn._shared_watermark_id is not None) is shared
    if shared:  # each application of the transform is its own read
        assert _read_fn(runner, **kwargs)._shared_watermark_id != fn._shared_watermark_id

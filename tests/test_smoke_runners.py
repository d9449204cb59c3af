"""Smoke tests proving each Beam runner really runs here: FnApiRunner (with a Parquet round
trip), Prism in streaming mode, and Flink."""

from __future__ import annotations

import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp


def test_parquet_round_trip_on_fnapi(tmp_path, beam_options):
    table = pa.table({"key": [f"r{i}" for i in range(100)], "x": [float(i) for i in range(100)]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    pq.write_table(table.slice(0, 10), tmp_path / "part-1.parquet")
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        rows = p | beam.io.ReadFromParquet(str(tmp_path / "*.parquet"))
        total = rows | beam.Map(lambda r: r["x"]) | beam.CombineGlobally(sum)
        assert_that(total, equal_to([sum(range(100)) + sum(range(10))]))


@pytest.mark.flink
def test_pipeline_on_flink(beam_options):
    with beam.Pipeline(options=beam_options("flink")) as p:
        counts = p | beam.Create(["a", "b", "a", "c", "a"]) | beam.combiners.Count.PerElement()
        assert_that(counts, equal_to([("a", 3), ("b", 1), ("c", 1)]))


class _TickProvider(RestrictionProvider):
    def initial_restriction(self, n):
        return OffsetRange(0, n)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element, restriction):
        return restriction.size()


class _Ticker(beam.DoFn):
    """An unbounded splittable source: one tick every ``interval`` seconds, logging when."""

    def __init__(self, interval: float, log: str):
        self.interval, self.log = interval, log

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        n,
        tracker=beam.DoFn.RestrictionParam(_TickProvider()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        position = tracker.current_restriction().start
        if not tracker.try_claim(position):
            return
        time.sleep(self.interval)
        now = Timestamp.now()
        watermark.set_watermark(now)
        with open(self.log, "a") as f:
            f.write(f"tick {time.time()}\n")
        yield window.TimestampedValue(position, now)
        tracker.defer_remainder(Duration.of(0))


@pytest.mark.prism
def test_prism_streaming_fires_windows_before_the_source_ends(tmp_path, beam_options):
    log = str(tmp_path / "events.log")
    open(log, "w").close()

    def record(count):
        with open(log, "a") as f:
            f.write(f"window {time.time()} {count}\n")

    ticks = 32
    with beam.Pipeline(options=beam_options("prism", streaming=True)) as p:
        (
            p
            | beam.Impulse()
            | beam.Map(lambda _: ticks)
            | beam.ParDo(_Ticker(0.25, log))
            | beam.WindowInto(window.FixedWindows(2))
            | beam.combiners.Count.Globally().without_defaults()
            | beam.Map(record)
        )
    with open(log) as f:
        events = [line.split() for line in f]
    tick_times = [float(e[1]) for e in events if e[0] == "tick"]
    windows = [(float(e[1]), int(e[2])) for e in events if e[0] == "window"]
    assert len(tick_times) == ticks
    assert sum(c for _, c in windows) == ticks
    assert len(windows) >= 2
    # Real streaming: the first window's result exists while the source is still producing.
    assert windows[0][0] < tick_times[-1] - 1.0, (windows, tick_times[-1])

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
    """An unbounded splittable source: one tick every ``interval`` seconds, logged. It ends
    ``after`` ticks past the first window result in the log (or at the end of its restriction,
    when no window fires while it runs), so the test waits for an event, not for a time."""

    def __init__(self, interval: float, log: str, after: int = 3):
        self.interval, self.log, self.after = interval, log, after

    def _ticks_since_first_window(self) -> int | None:
        with open(self.log) as f:
            kinds = [line.split()[0] for line in f]
        if "window" not in kinds:
            return None
        return kinds[kinds.index("window") :].count("tick")

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        n,
        tracker=beam.DoFn.RestrictionParam(_TickProvider()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        restriction = tracker.current_restriction()
        since = self._ticks_since_first_window()
        if since is not None and since >= self.after:
            tracker.try_claim(restriction.stop)  # claims nothing: the source ends here
            return
        if not tracker.try_claim(restriction.start):
            return
        time.sleep(self.interval)
        now = Timestamp.now()
        watermark.set_watermark(now)
        with open(self.log, "a") as f:
            f.write(f"tick {time.time()}\n")
        yield window.TimestampedValue(restriction.start, now)
        tracker.defer_remainder(Duration.of(0))


@pytest.mark.prism
def test_prism_streaming_fires_windows_before_the_source_ends(tmp_path, beam_options):
    log = str(tmp_path / "events.log")
    open(log, "w").close()

    def record(count):
        with open(log, "a") as f:
            f.write(f"window {time.time()} {count}\n")

    # At most 2 minutes of ticks: the source ends 3 ticks after the first window result
    # (seconds after the start when windows fire while it runs).
    max_ticks = 480
    with beam.Pipeline(options=beam_options("prism", streaming=True)) as p:
        (
            p
            | beam.Impulse()
            | beam.Map(lambda _: max_ticks)
            | beam.ParDo(_Ticker(0.25, log))
            | beam.WindowInto(window.FixedWindows(2))
            | beam.combiners.Count.Globally().without_defaults()
            | beam.Map(record)
        )
    with open(log) as f:
        events = [line.split() for line in f]
    kinds = [e[0] for e in events]
    ticks = kinds.count("tick")
    windows = [int(e[2]) for e in events if e[0] == "window"]
    assert sum(windows) == ticks  # every tick counted once, in some window
    assert len(windows) >= 2
    # Real streaming: a window's result was written while the source was still producing
    # (the log is appended in the order things happened), and the source ended because of it.
    last_tick = len(kinds) - 1 - kinds[::-1].index("tick")
    assert kinds.index("window") < last_tick, kinds
    assert ticks < max_ticks, "no window fired while the source ran"

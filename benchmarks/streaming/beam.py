"""Part (a) of the streaming benchmark: Beam flagging throughput against Beam's own
``AnomalyDetection(ZScore)`` (see ``benchmarks.bench_streaming``)."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.beam_env import anomaly_beam_python
from benchmarks.streaming.common import BATCH, COLUMNS, ROOT, D, encode_records, normal_rows

BASELINE = "beam_zscore"
BEAM_KINDS = ("beam_zscore", "ae", "ae_batched", "ae_in_anomaly_detection", "naive_zscore")
# The variants also measured at the large size (the goal's: the baseline and ours).
LARGE_KINDS = ("beam_zscore", "ae", "ae_batched")
# Which measurement the part (a) goals are judged on (see the module docstring).
HEADLINE = "end_to_end_large"


class NaiveZScore:
    """The baseline: per element, ``json.loads`` and a running mean / std per feature."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = [0.0] * D
        self.m2 = [0.0] * D

    def __call__(self, value: bytes) -> dict:
        rec = json.loads(value)
        self.n += 1
        n = self.n
        zmax = 0.0
        for j, c in enumerate(COLUMNS):
            v = float(rec[c])
            delta = v - self.mean[j]
            self.mean[j] += delta / n
            self.m2[j] += delta * (v - self.mean[j])
            if n > 1:
                std = math.sqrt(self.m2[j] / (n - 1))
                if std > 0:
                    zmax = max(zmax, abs(v - self.mean[j]) / std)
        return {"id": rec["id"], "score": zmax, "is_anomaly": zmax > 3.0}


def _read_lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines()


def _read_chunks(path: str) -> list[list[bytes]]:
    """The same lines in lists of ``BATCH`` (what ``ReadKafkaRecords`` emits: one per poll)."""
    lines = _read_lines(path)
    return [lines[i : i + BATCH] for i in range(0, len(lines), BATCH)]


# First and last output time per run, noted by the counting sink. FnApiRunner and Prism with
# LOOPBACK run the SDK workers in this process, so the sink can write here.
_SEEN: dict[str, list[float]] = {}


class _Count:
    def __init__(self, run_id: str) -> None:
        from apache_beam.metrics import Metrics

        self.counter = Metrics.counter("bench", "out")
        self.run_id = run_id

    def __call__(self, element: Any) -> None:
        self.counter.inc(len(element) if isinstance(element, list) else 1)
        t = time.perf_counter()
        seen = _SEEN.setdefault(self.run_id, [t, t])
        seen[1] = t


def _to_row(value: bytes) -> Any:
    import apache_beam as beam

    return beam.Row(**json.loads(value))


def beam_run(kind: str, runner: str, files: list[str], version_dir: str) -> dict:
    """One pipeline run; returns wall seconds and the counted outputs."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from ae_pipeline.beam.transforms import FlagAnomalies
    from ae_pipeline.local.runners import runner_args

    pipeline = beam.Pipeline(options=PipelineOptions(runner_args(runner)))
    names = pipeline | "Files" >> beam.Create(files, reshuffle=False)
    if kind == "ae_batched":
        records = names | "Chunks" >> beam.FlatMap(_read_chunks)
        flag = FlagAnomalies(
            model_version_dir=version_dir, device="cpu", prebatched=True, emit_batches=True
        )
        results = (records | "Flag" >> flag).results
    else:
        records = names | "Lines" >> beam.FlatMap(_read_lines)
    if kind == "ae":
        out = records | "Flag" >> FlagAnomalies(model_version_dir=version_dir, device="cpu")
        results = out.results
    elif kind == "naive_zscore":
        results = records | "ZScore" >> beam.Map(NaiveZScore())
    elif kind in ("beam_zscore", "ae_in_anomaly_detection"):
        from apache_beam.ml.anomaly.detectors.zscore import ZScore
        from apache_beam.ml.anomaly.transforms import AnomalyDetection

        from ae_pipeline.beam.anomaly import autoencoder_detector

        detector = (
            ZScore(features=["f0"])
            if kind == "beam_zscore"
            else autoencoder_detector(version_dir, device="cpu")
        )
        rows = records | "Rows" >> beam.Map(_to_row)
        results = rows | "Detect" >> AnomalyDetection(detector)
    run_id = uuid.uuid4().hex
    _ = results | "Count" >> beam.Map(_Count(run_id))
    t0 = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - t0
    counted = None
    try:
        res = result.metrics().query(MetricsFilter().with_name("out"))
        counted = sum(c.committed or c.attempted or 0 for c in res["counters"])
    except Exception:  # metrics are best effort on some runners
        pass
    seen = _SEEN.pop(run_id, None)
    active = seen[1] - seen[0] if seen else None
    return {"wall_s": wall, "outputs": counted, "first_to_last_output_s": active}


def marginal_rate(n_small: int, wall_small: float, n_large: int, wall_large: float) -> float:
    """Records/s of the records a larger run adds: ``(n_large - n_small) / (wall_large -
    wall_small)``. The fixed cost of a run (translation, runner and SDK start-up, model load)
    is the same at both sizes and cancels out; NaN when the larger run was not slower."""
    extra_s = wall_large - wall_small
    if n_large <= n_small or not extra_s > 0:
        return float("nan")
    return (n_large - n_small) / extra_s


def _summary(runs: dict[str, list[dict]], kinds: tuple[str, ...]) -> dict[str, Any]:
    """Medians of the rates and of the per-repeat ratios over the baseline."""

    def ratio(kind: str, key: str) -> float:
        return statistics.median(
            a[key] / z[key] if a[key] and z[key] else float("nan")
            for a, z in zip(runs[kind], runs[BASELINE], strict=True)
        )

    res: dict[str, Any] = {}
    for kind in kinds:
        res[f"{kind}_wall_s"] = statistics.median(m["wall_s"] for m in runs[kind])
        res[f"{kind}_records_per_s"] = statistics.median(m["records_per_s"] for m in runs[kind])
        res[f"{kind}_active_records_per_s"] = statistics.median(
            m["active_records_per_s"] or float("nan") for m in runs[kind]
        )
    for kind in kinds:
        res[f"ratio_{kind}_end_to_end"] = ratio(kind, "records_per_s")
        res[f"ratio_{kind}_active"] = ratio(kind, "active_records_per_s")
    return res


def bench_beam(
    runners: list[str],
    n: int,
    repeats: int,
    version_dir: str,
    tmp: Path,
    large_n: int | None = None,
    large_repeats: int = 3,
) -> dict:
    """Part (a): every variant at ``n`` records (``repeats`` times), and the headline variants
    (:data:`LARGE_KINDS`) at ``large_n`` too (``large_repeats`` times), interleaved; the
    ``n``-record files are the first of the ``large_n`` ones (same records, same seeds)."""
    per_file = 5000
    n_files = max(1, n // per_file)
    n_large_files = max(n_files, (large_n or 0) // per_file)
    files = []
    data = tmp / "beam-data"
    data.mkdir()
    for k in range(n_large_files):
        path = data / f"part-{k}.jsonl"
        path.write_bytes(b"\n".join(encode_records(normal_rows(per_file, 100 + k), k * per_file)))
        files.append(str(path))
    small_files = files[:n_files]
    n = len(small_files) * per_file
    large_n = len(files) * per_file if n_large_files > n_files else None
    out: dict[str, Any] = {"records": n, "large_records": large_n, "headline": HEADLINE}
    kinds = BEAM_KINDS
    large_kinds = LARGE_KINDS if large_n else ()
    for runner in runners:
        for kind in kinds:  # warm-up (imports, model load, runner binary), not counted
            beam_run(kind, runner, files[:1], version_dir)
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        large_runs: dict[str, list[dict]] = {k: [] for k in large_kinds}
        for r in range(max(repeats, large_repeats if large_n else 0)):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                sizes = [(runs, small_files)] if r < repeats else []
                if kind in large_kinds and r < large_repeats:
                    sizes.append((large_runs, files))
                for into, which in sizes if r % 2 == 0 else sizes[::-1]:
                    records = len(which) * per_file
                    big = beam_run(kind, runner, which, version_dir)
                    active = big["first_to_last_output_s"]
                    m = {
                        "wall_s": big["wall_s"],
                        "first_to_last_output_s": active,
                        "outputs": big["outputs"],
                        "records_per_s": records / big["wall_s"],
                        "active_records_per_s": records / active if active else None,
                    }
                    into[kind].append(m)
                    print(
                        f"  (a) {runner:6s} {kind:10s} {records:7,d} rep {r + 1}: "
                        f"{m['records_per_s']:9,.0f} rec/s end to end ({big['wall_s']:.2f}s), "
                        f"first to last output {active or float('nan'):.2f}s, "
                        f"outputs {big['outputs']}",
                        flush=True,
                    )
        # At ``n`` records (the figures reported before the large size was added): a run
        # lasts ~0.5 s for our variants, a third of it fixed start-up cost.
        res: dict[str, Any] = {"baseline": BASELINE, **_summary(runs, kinds), "runs": runs}
        if large_n:
            large = _summary(large_runs, large_kinds)
            marginal: dict[str, Any] = {}
            for kind in large_kinds:
                marginal[f"{kind}_records_per_s"] = marginal_rate(
                    n, res[f"{kind}_wall_s"], large_n, large[f"{kind}_wall_s"]
                )
            for kind in large_kinds:
                marginal[f"ratio_{kind}"] = (
                    marginal[f"{kind}_records_per_s"] / marginal[f"{BASELINE}_records_per_s"]
                )
            res["large"] = {"records": large_n, **large, "runs": large_runs}
            res["marginal"] = {"records": [n, large_n], **marginal}
        out[runner] = res
    return out


def run_part_a(
    version_dir: str,
    n: int,
    repeats: int,
    torch_threads: int,
    large_n: int = 0,
    large_repeats: int = 3,
) -> dict:
    """Part (a) in a child process whose Beam has ``AnomalyDetection`` (Beam >= 2.64: this
    environment's 2.77, else the Beam 2.70 side environment)."""
    try:
        python = anomaly_beam_python()
    except FileNotFoundError as err:
        raise SystemExit(f"{err}: run `make bench-deps`") from None
    with tempfile.TemporaryDirectory() as tmpdir:
        out = Path(tmpdir) / "beam.json"
        cmd = [
            python, "-m", "benchmarks.bench_streaming", "--part_a_only", str(out),
            "--version_dir", version_dir, "--beam_n", str(n), "--beam_repeats", str(repeats),
            "--beam_large_n", str(large_n), "--beam_large_repeats", str(large_repeats),
            "--torch_threads", str(torch_threads),
        ]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True)
        return json.loads(out.read_text())


def _size(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def part_a_ratios(beam: dict) -> tuple[dict[str, float], dict[str, bool], str | None]:
    """The ratios over the baseline of part (a)'s results, each named by what it measures
    (``end_to_end_50k``: wall of ``pipeline.run()`` at 50,000 records, the figure reported
    before the large size was added; ``end_to_end_200k``; ``marginal_50k_200k``: records/s of
    the records the large run adds, see :func:`marginal_rate`), the >= 10x goals of the
    headline measurement (:data:`HEADLINE`) and of the 50,000-record one, and a line saying
    which measurement is the headline."""
    ratios: dict[str, float] = {}
    goals: dict[str, bool] = {}
    if not beam:
        return ratios, goals, None
    small = f"end_to_end_{_size(beam['records'])}"
    large_n = beam.get("large_records")
    large = f"end_to_end_{_size(large_n)}" if large_n else None
    marginal = f"marginal_{_size(beam['records'])}_{_size(large_n)}" if large_n else None
    headline = large if HEADLINE == "end_to_end_large" and large else small
    if HEADLINE == "marginal" and marginal:
        headline = marginal
    for runner in ("fnapi", "prism"):
        b = beam.get(runner)
        if not b:
            continue
        by_label: dict[str, dict[str, float]] = {small: {}}
        for kind in BEAM_KINDS[1:]:
            by_label[small][kind] = b[f"ratio_{kind}_end_to_end"]
        if large and marginal and "large" in b:
            by_label[large] = {k: b["large"][f"ratio_{k}_end_to_end"] for k in LARGE_KINDS[1:]}
            by_label[marginal] = {k: b["marginal"][f"ratio_{k}"] for k in LARGE_KINDS[1:]}
        for label, per_kind in by_label.items():
            for kind, value in per_kind.items():
                ratios[f"ratio_beam_{runner}_{kind}_over_beam_zscore_{label}"] = value
        ratios[f"ratio_beam_{runner}_ae_over_beam_zscore_active_{_size(beam['records'])}"] = b[
            "ratio_ae_active"
        ]
        for label in dict.fromkeys((headline, small)):
            for kind in ("ae", "ae_batched"):
                if kind in by_label.get(label, {}):
                    goals[f"beam_{runner}_{kind}_ge_10x_{label}"] = by_label[label][kind] >= 10
    line = (
        f"{headline}: "
        + {
            small: f"wall of pipeline.run() to finish at {beam['records']:,} records",
            large: f"wall of pipeline.run() to finish at {large_n or 0:,} records",
            marginal: f"(records added) / (wall added) from {beam['records']:,} to "
            f"{large_n or 0:,} records (fixed start-up costs cancel out)",
        }[headline]
        + (
            "; ratio of the rates from the median walls at each size"
            if headline == marginal
            else "; median of the per-repeat ratios"
        )
    )
    return ratios, goals, line

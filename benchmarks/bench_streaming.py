"""Streaming scoring: Beam throughput, plain-consumer throughput, latency and memory.

All figures come from one run, on one local Kafka broker (``ae_pipeline.local.kafka_broker``),
with one small model (24 features, 24-16-4-16-24) trained and published at start. Repeated
measurements alternate their order and the medians are reported.

(a) Beam flagging throughput: records/s of ``FlagAnomalies`` (JSON records in, one result per
    record out) on the FnApiRunner and on Prism (batch mode), against Beam's own
    ``AnomalyDetection(ZScore)`` in the same runner on the same records (goal >= 10x). Beam's
    ``apache_beam.ml.anomaly`` needs Beam >= 2.64: part (a) runs in a child process of this
    environment (Beam 2.77, Prism v2.77), or of the Beam 2.70 side environment
    (``.venv-beam-anomaly``) under an older Beam, every variant alike. Variants, all reading
    the same JSON-lines files (``FlatMap`` over file names, so the source costs the same) and
    ending in the same counting sink:
    ``beam_zscore`` (the baseline: ``json.loads`` -> ``beam.Row`` -> ``AnomalyDetection(ZScore(
    features=["f0"]))``; univariate, so it does less work than a 24-feature model),
    ``ae`` (``FlagAnomalies`` on one record per element), ``ae_batched`` (the
    same lines as lists of 500, one element per list as ``ReadKafkaRecords`` emits them, with
    ``FlagAnomalies(prebatched=True, emit_batches=True)``: the configuration of
    ``pipelines/stream.py``), ``ae_in_anomaly_detection`` (our detector,
    ``ae_pipeline.beam.anomaly.autoencoder_detector``, inside Beam's ``AnomalyDetection``) and
    ``naive_zscore`` (a per-element ``beam.Map`` with ``json`` and a running mean / std per
    feature, flagging ``max |z| > 3``; the previous baseline). A warm-up run of each (one
    file) precedes the measurements. Every variant runs at 50,000 records (5 repeats), and
    ``beam_zscore``, ``ae`` and ``ae_batched`` at 200,000 too (3 repeats, interleaved with the
    50,000-record runs; the same first 50,000 records). Reported, per runner:

    * end to end at 200,000 records (records / wall of ``pipeline.run()`` to finish; median
      of the per-repeat ratios over the baseline): the headline (``HEADLINE``, named in the
      results as ``beam_headline``; the goals ``beam_<runner>_<variant>_ge_10x_<measure>``).
      At 50,000 records our runs last 0.4-1 s, so a run's fixed costs (pipeline translation,
      runner and SDK harness start-up and shut-down, model load) and the machine's noise
      weigh more; at 200,000 they last seconds;
    * marginal, 50,000 -> 200,000 records: (150,000 records) / (median wall at 200,000 -
      median wall at 50,000), fixed costs cancelling out for the baseline and ours alike (a
      check on the headline; noisier, being a difference of two medians);
    * end to end at 50,000 records (all variants): the figure reported before the large size
      was added, kept (``ratio_..._end_to_end_50k``) so the two can be compared;
    * "active" at 50,000 (records / time from the first output to the last, noted by the sink:
      leaves out the runner's start-up and the model load; the baseline's first stage runs
      before any output, so this favours it).
(b) Plain consumer (``ScoringConsumer``) records/s with each client against the I/O limit (a
    bare poll -> produce -> flush -> commit loop with the same client, batch size and commit
    mode - asynchronous commits with confluent, a synchronous one at the end - no scoring) and
    the compute limit (``orjson`` decode + batched ``Scorer.errors`` of the same records, no Kafka).
    Timed from the first non-empty poll to the last batch committed.
    Goal: confluent consumer >= 0.7x the smaller limit. ``consumer`` is the consumer as
    configured by default (``scoring_process=None``: scoring in a child process where 2 CPUs
    are usable, else inline; ``default_scoring`` names which). With confluent, also the other
    way (``consumer_inline`` or ``consumer_process``), and scoring process / inline run for run,
    and the transactional consumer (``consumer_exactly_once``: ``--processing_guarantee
    exactly_once``, default scoring) against the at-least-once one, run for run (goal >= 0.8x).
(c) Latency, produce to result, at a steady 2,000 records/s: a paced producer stamps the send
    time into each record (``ts``, passed through to the result); a reader of the output topic
    computes receive time - ``ts``. For ``pipelines.consume`` (confluent; goal p99 < 1 s) and
    for ``pipelines.stream`` on Prism streaming (goal p99 < 3 s), and for the transactional
    consumer (``--processing_guarantee exactly_once``; one fifth of the time, at least 30 s;
    the reader is read_committed, so this is the latency to what such a reader sees; goal
    p99 < 1 s). The first seconds after the
    first result are warm-up and left out.
(d) RSS of the consumer process over the latency run (5 minutes; 30 s with ``--quick``),
    sampled every second; the slope of a least-squares line (MiB per minute) over the samples
    from the first result + warm-up (or after the first 20%, whichever is later).

Torch runs with one intra-op thread (``--torch_threads``, also passed to the scorer processes
as ``OMP_NUM_THREADS``): with torch's default on a shared 2-core machine, small-batch forward
passes stall on descheduled worker threads.

Usage::

    python -m benchmarks.bench_streaming            # ~15 minutes
    python -m benchmarks.bench_streaming --quick    # ~3 minutes

Writes ``benchmarks/results/streaming.json`` (``streaming_quick.json`` with ``--quick`` or
``--skip``, which the report leaves out).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.streaming.beam import (
    BEAM_KINDS,
    LARGE_KINDS,
    marginal_rate,
    part_a_ratios,
    run_part_a,
)
from benchmarks.streaming.common import RESULTS, D, publish_model
from benchmarks.streaming.consumer import bench_consumer
from benchmarks.streaming.latency import bench_latency


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part_a_only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--version_dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--beam_n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--beam_repeats", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--beam_large_n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--beam_large_repeats", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c")
    ap.add_argument(
        "--score",
        default="normalized",
        choices=["normalized", "mse"],
        help="the model's anomaly score (the training job's default, or the plain MSE: the "
        "figures before the score function existed)",
    )
    ap.add_argument(
        "--torch_threads",
        type=int,
        default=1,
        help="torch intra-op threads here and in the scorer processes (0: torch's default)",
    )
    args = ap.parse_args(argv)
    if args.torch_threads > 0:
        # On a shared 2-core machine torch's default (one spinning thread per core) makes each
        # small-batch forward pass wait for a descheduled worker: seconds per pipeline run.
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
        import torch

        torch.set_num_threads(args.torch_threads)
    skip = set(filter(None, args.skip.split(",")))
    logging.basicConfig(level=logging.WARNING)
    if args.part_a_only:  # the side-environment half of part (a)
        import apache_beam

        # Through the importable module, not __main__: Beam 2.70 pickles __main__'s classes by
        # value, and the counting sink must write its module's _SEEN.
        from benchmarks.streaming import beam as module

        with tempfile.TemporaryDirectory() as tmpdir:
            beam = module.bench_beam(
                ["fnapi", "prism"],
                args.beam_n,
                args.beam_repeats,
                args.version_dir,
                Path(tmpdir),
                large_n=args.beam_large_n or None,
                large_repeats=args.beam_large_repeats,
            )
        beam["beam_version"] = apache_beam.__version__
        Path(args.part_a_only).write_text(json.dumps(beam))
        return 0
    logging.getLogger("kafka").setLevel(logging.ERROR)
    q = args.quick
    beam_n, beam_repeats = (20_000, 2) if q else (50_000, 5)
    beam_large_n, beam_large_repeats = (60_000, 2) if q else (200_000, 3)
    cons_n, cons_repeats = (20_000, 1) if q else (50_000, 3)
    lat_s, prism_s = (30.0, 20.0) if q else (300.0, 60.0)

    from ae_pipeline.local.kafka_broker import KafkaBroker

    result: dict[str, Any] = {
        "benchmark": "streaming",
        "quick": q,
        "features": D,
        "model": f"{D}-16-4-16-{D}",
        "score": args.score,
        "torch_threads": args.torch_threads or "default",
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()),
        },
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        version_dir, model, scaler = publish_model(tmp / "models", args.score)
        print(f"model published: {version_dir}", flush=True)
        if "a" not in skip:
            beam = run_part_a(
                version_dir,
                beam_n,
                beam_repeats,
                args.torch_threads,
                beam_large_n,
                beam_large_repeats,
            )
            # What part (a)'s goals are judged on, and the goals, ahead of the figures (the
            # report's table shows a result's first rows only).
            _, beam_goals, result["beam_headline"] = part_a_ratios(beam)
            result["beam_goals"] = beam_goals
            result["beam"] = beam
        with KafkaBroker() as broker:
            bootstrap = broker.bootstrap_servers
            print(f"broker at {bootstrap}", flush=True)
            if "b" not in skip:
                result["consumer_throughput"] = bench_consumer(
                    bootstrap, cons_n, cons_repeats, version_dir, model, scaler
                )
            if "c" not in skip:
                cons, eos, prism = bench_latency(bootstrap, version_dir, lat_s, prism_s, tmp)
                result["latency_consumer"] = cons
                result["latency_consumer_exactly_once"] = eos
                result["latency_prism"] = prism
    result["seconds"] = time.perf_counter() - t0

    # headline ratios and goals
    goals: dict[str, Any] = {}
    beam_ratios, beam_goals, _ = part_a_ratios(result.get("beam", {}))
    result.update(beam_ratios)
    goals.update(beam_goals)
    ct = result.get("consumer_throughput")
    if ct:
        for client, key in (("confluent", "confluent"), ("kafka-python", "kafka_python")):
            result[f"ratio_consumer_{key}_over_min_limit"] = ct[client][
                "ratio_consumer_over_min_limit"
            ]
        goals["consumer_confluent_ge_0.7x_min_limit"] = (
            ct["confluent"]["ratio_consumer_over_min_limit"] >= 0.7
        )
        result["consumer_default_scoring"] = ct["default_scoring"]
        for mode in ("process", "inline"):
            ratio = ct["confluent"].get(f"ratio_consumer_{mode}_over_min_limit")
            if ratio is not None:
                result[f"ratio_consumer_confluent_scoring_{mode}_over_min_limit"] = ratio
    lc = result.get("latency_consumer")
    if lc and "p99_s" in lc:
        goals["consumer_p99_lt_1s"] = lc["p99_s"] < 1.0
        result["rss_slope_mib_per_min"] = lc["rss_fit"].get("slope_mib_per_min")
    le = result.get("latency_consumer_exactly_once")
    if le and "p99_s" in le:
        goals["consumer_exactly_once_p99_lt_1s"] = le["p99_s"] < 1.0
    if ct and "ratio_exactly_once_over_at_least_once" in ct["confluent"]:
        ratio = ct["confluent"]["ratio_exactly_once_over_at_least_once"]
        result["ratio_consumer_confluent_exactly_once_over_at_least_once"] = ratio
        goals["consumer_confluent_exactly_once_ge_0.8x_at_least_once"] = ratio >= 0.8
    lp = result.get("latency_prism")
    if lp and "p99_s" in lp:
        goals["prism_p99_lt_3s"] = lp["p99_s"] < 3.0
    result["goals"] = goals
    result["ratio_goals"] = (
        "beam ae and ae_batched / AnomalyDetection(ZScore) >= 10 (records/s; the headline: "
        "beam_headline); consumer (confluent) / min(io, compute) >= 0.7"
    )
    # A smoke run (--quick) or a partial one (--skip) must not replace the full figures.
    out = RESULTS.with_name("streaming_quick.json") if q or skip else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"written to {out} ({result['seconds']:.0f}s)")
    return 0


def print_table(r: dict) -> None:
    print("\n" + "=" * 78)
    if "beam" in r:
        print(f"(a) Beam flagging, {r['beam']['records']:,} JSON records x {D} features")
        print(
            "    records/s end to end (active: first to last output); ratios over Beam's "
            f"AnomalyDetection(ZScore); Beam {r['beam'].get('beam_version')}"
        )
        print(f"    {'runner':7s} {'variant':23s} {'rec/s':>9s} {'ratio':>6s} "
              f"{'active':>9s} {'ratio':>6s}")  # fmt: skip
        for runner in ("fnapi", "prism"):
            b = r["beam"].get(runner)
            if not b:
                continue
            for kind in BEAM_KINDS:
                print(
                    f"    {runner:7s} {kind[:23]:23s} {b[f'{kind}_records_per_s']:9,.0f} "
                    f"{b[f'ratio_{kind}_end_to_end']:6.2f} "
                    f"{b[f'{kind}_active_records_per_s']:9,.0f} {b[f'ratio_{kind}_active']:6.2f}"
                )
            if "large" in b:
                large, marginal = b["large"], b["marginal"]
                print(
                    f"    {runner:7s} at {large['records']:,} records: rec/s end to end (ratio); "
                    f"marginal rec/s {r['beam']['records']:,} -> {large['records']:,} (ratio)"
                )
                for kind in LARGE_KINDS:
                    print(
                        f"    {runner:7s} {kind[:23]:23s} {large[f'{kind}_records_per_s']:9,.0f} "
                        f"{large[f'ratio_{kind}_end_to_end']:6.2f} "
                        f"{marginal[f'{kind}_records_per_s']:9,.0f} "
                        f"{marginal.get(f'ratio_{kind}', float('nan')):6.2f}"
                    )
        if r.get("beam_headline"):
            print(f"    headline: {r['beam_headline']}")
    ct = r.get("consumer_throughput")
    if ct:
        print(f"(b) plain consumer, {ct['records']:,} records; compute limit "
              f"{ct['compute_limit_records_per_s']:,.0f} rec/s; scoring path without Kafka "
              f"{ct['serving_path_records_per_s']:,.0f} rec/s")  # fmt: skip
        for client in ("kafka-python", "confluent"):
            c = ct[client]
            print(
                f"    {client:12s} consumer {c['consumer_records_per_s']:9,.0f}  io limit "
                f"{c['io_limit_records_per_s']:9,.0f}  consumer/min(limits) "
                f"{c['ratio_consumer_over_min_limit']:.2f}"
            )
            if "ratio_consumer_process_over_inline" in c:
                for mode in ("process", "inline"):
                    print(
                        f"    {'':12s} scoring {mode:7s} "
                        f"{c[f'consumer_{mode}_records_per_s']:9,.0f}"
                        f"  /min(limits) {c[f'ratio_consumer_{mode}_over_min_limit']:.2f}"
                    )
                print(
                    f"    {'':12s} process / inline, run for run "
                    f"{c['ratio_consumer_process_over_inline']:.2f} (default here: "
                    f"{ct['default_scoring']})"
                )
            if "ratio_exactly_once_over_at_least_once" in c:
                print(
                    f"    {'':12s} exactly once "
                    f"{c['consumer_exactly_once_records_per_s']:9,.0f}  / at least once, run "
                    f"for run {c['ratio_exactly_once_over_at_least_once']:.2f} (goal >= 0.8)"
                )
    for name in ("latency_consumer", "latency_consumer_exactly_once", "latency_prism"):
        lat = r.get(name)
        if lat and "p99_s" in lat:
            print(
                f"(c) {name:29s} p50 {lat['p50_s'] * 1000:7.1f} ms  p99 {lat['p99_s'] * 1000:7.1f}"
                f" ms  max {lat['max_s'] * 1000:7.1f} ms  ({lat['measured_results']} results, "
                f"{lat['achieved_records_per_s']:.0f} rec/s sent)"
            )
        elif lat:
            print(f"(c) {name}: {lat.get('error', 'no results')}")
    lc = r.get("latency_consumer")
    if lc and "rss_fit" in lc:
        f = lc["rss_fit"]
        if "slope_mib_per_min" in f:
            print(
                f"(d) consumer RSS {f['first_mib']:.0f} -> {f['last_mib']:.0f} MiB over "
                f"{f['span_s']:.0f}s; slope from warm-up: {f['slope_mib_per_min']:+.2f} "
                "MiB/min"
            )
    print(f"goals: {r.get('goals')}")


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BEAM_KINDS", "LARGE_KINDS", "main", "marginal_rate", "part_a_ratios"]

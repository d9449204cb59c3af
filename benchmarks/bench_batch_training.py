"""Beam batch training against a plain script on the same Parquet data, in the same run.

The Beam job is ``pipelines.train`` on the FnApiRunner (read row groups, reject bad rows, hash
split, fit the scaler, write shards, stream them into the trainer, calibrate, publish). The
baseline is what a person would write without Beam: read the same Parquet with pyarrow into
memory, fit the same scaler, train the same model with the same settings, score the validation
rows. Both run in fresh subprocesses, alternating, so each one's peak RSS is its own.

Reported: median wall seconds of each, the ratio Beam / plain (goal <= 1.25), and peak RSS of
the Beam job at N and 4N rows (it must not grow with the row count beyond buffers: the data
is streamed from shards, never collected).

Usage::

    python -m benchmarks.bench_batch_training            # 1M rows x 32, and 4M for RSS
    python -m benchmarks.bench_batch_training --quick    # 100k rows, 400k for RSS

Writes ``benchmarks/results/batch_training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "batch_training.json"
D = 32
MODEL = {"hidden_dims": [16], "latent_dim": 4}
# min_steps None: the same epochs as the plain script (the job's small-data budget off)
TRAIN = {
    "epochs": 2,
    "batch_size": 1024,
    "lr": 1e-3,
    "seed": 0,
    "progress": False,
    "min_steps": None,
}
FNAPI = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def make_data(path: Path, rows: int, files: int = 8) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (path / "_DONE").exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    mixing = np.random.default_rng(1).normal(size=(6, D)).astype(np.float32)
    rng = np.random.default_rng(0)
    for f, ids in enumerate(np.array_split(np.arange(rows), files)):
        x = rng.normal(size=(len(ids), 6)).astype(np.float32) @ mixing
        x += 0.1 * rng.normal(size=x.shape).astype(np.float32)
        cols = {"id": ids, **{f"f{j}": x[:, j] for j in range(D)}}
        pq.write_table(pa.table(cols), path / f"part-{f}.parquet", row_group_size=65536)
    (path / "_DONE").write_text("ok")


def plain(data: Path) -> dict:
    """The baseline: pyarrow into memory, same scaler, same model and trainer settings."""
    import pyarrow.parquet as pq

    from ae_pipeline.beam.parquet import Block, validation_mask
    from ae_pipeline.features import ColumnStats, Scaler
    from ae_pipeline.models import ModelConfig, Scorer, TrainConfig, Trainer, build_model

    table = pq.read_table(data)
    x = np.column_stack([table.column(f"f{j}").to_numpy() for j in range(D)]).astype(np.float32)
    keys = table.column("id").to_numpy()
    val = validation_mask(Block(x, keys), 0.2)
    scaler = Scaler.fit("standard", ColumnStats.of(x[~val]))
    xt, xv = scaler.transform(x[~val]), scaler.transform(x[val])
    model = build_model(ModelConfig(D, **MODEL), seed=0)
    Trainer(TrainConfig.from_dict(TRAIN)).fit(model, xt, val=xv)
    errors = Scorer(model).errors(xv)
    return {"threshold": float(np.quantile(errors, 0.99))}


def beam_job(data: Path, work: Path) -> dict:
    from pipelines import train

    return train.run(
        [
            f"--input={data}",
            f"--model_root={work / 'models'}",
            f"--work_dir={work / 'scratch'}",
            "--key_column=id",
            f"--hidden_dims={','.join(map(str, MODEL['hidden_dims']))}",
            f"--latent_dim={MODEL['latent_dim']}",
            f"--train_config_json={json.dumps(TRAIN)}",
            "--patience=0",
            f"--runner={FNAPI}",
        ]
    )


def child(kind: str, data: str, work: str) -> None:
    """Run one measurement in this (fresh) process; print JSON with wall time and peak RSS."""
    import logging

    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    out = plain(Path(data)) if kind == "plain" else beam_job(Path(data), Path(work))
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ok = bool(out.get("published")) if kind == "beam" else True
    print(json.dumps({"kind": kind, "wall_s": wall, "peak_rss_mib": rss, "ok": ok}))


def measure(kind: str, data: Path, work: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_batch_training", "--child", kind, str(data)]
    proc = subprocess.run(
        [*cmd, str(work)], capture_output=True, text=True, cwd=Path(__file__).parent.parent
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--child", nargs=3, metavar=("KIND", "DATA", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats or (1 if args.quick else 3)
    cache = Path(os.environ.get("AE_PIPELINE_CACHE", Path.home() / ".cache" / "ae-pipeline"))
    small, large = cache / "bench" / f"parquet-{rows}", cache / "bench" / f"parquet-{4 * rows}"
    print(f"data: {rows:,} and {4 * rows:,} rows x {D} features (cached under {cache / 'bench'})")
    make_data(small, rows)
    make_data(large, 4 * rows)
    runs: dict[str, list[dict]] = {"plain": [], "beam": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            order = ("plain", "beam") if r % 2 == 0 else ("beam", "plain")
            for kind in order:
                m = measure(kind, small, Path(tmp) / f"{kind}-{r}")
                runs[kind].append(m)
                print(
                    f"  repeat {r + 1}/{repeats} {kind:5s}: {m['wall_s']:.1f}s, "
                    f"peak RSS {m['peak_rss_mib']:.0f} MiB"
                )
        big = measure("beam", large, Path(tmp) / "beam-large")
        print(f"  beam at {4 * rows:,} rows: {big['wall_s']:.1f}s, ", end="")
        print(f"peak RSS {big['peak_rss_mib']:.0f} MiB")
    plain_s = statistics.median(m["wall_s"] for m in runs["plain"])
    beam_s = statistics.median(m["wall_s"] for m in runs["beam"])
    ratios = [b["wall_s"] / p["wall_s"] for b, p in zip(runs["beam"], runs["plain"], strict=True)]
    rss_small = statistics.median(m["peak_rss_mib"] for m in runs["beam"])
    result = {
        "benchmark": "batch_training",
        "rows": rows,
        "features": D,
        "model": f"{D}-{'-'.join(map(str, MODEL['hidden_dims']))}-{MODEL['latent_dim']}-...-{D}",
        "train": TRAIN,
        "repeats": repeats,
        "quick": args.quick,
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "plain_wall_s_median": plain_s,
        "beam_wall_s_median": beam_s,
        "ratio_beam_over_plain_median": statistics.median(ratios),
        "ratio_goal": "<= 1.25",
        "peak_rss_mib": {
            "beam_at_rows": rss_small,
            "beam_at_4x_rows": big["peak_rss_mib"],
            "plain_at_rows": statistics.median(m["peak_rss_mib"] for m in runs["plain"]),
        },
        "rss_growth_4x_over_1x": big["peak_rss_mib"] / rss_small,
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(
        f"plain {plain_s:.1f}s, beam {beam_s:.1f}s, "
        f"ratio {result['ratio_beam_over_plain_median']:.2f} "
        f"(goal <= 1.25); beam peak RSS {rss_small:.0f} MiB at {rows:,} rows, "
        f"{big['peak_rss_mib']:.0f} MiB at {4 * rows:,}; written to {RESULTS}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

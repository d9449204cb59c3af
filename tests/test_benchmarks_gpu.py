"""benchmarks/gpu.sh stays runnable: its CPU smoke mode runs and the report renders it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_sh_cpu_smoke_run_writes_results_and_report_renders(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable}
    args = ["--device", "cpu", "--quick", "--cpu-threads", "1", "--out", str(out)]
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["benchmark"] == "gpu" and res["smoke_cpu_only"] is True
    cpu = res["cpu"]
    assert {r["batch"] for r in cpu["inference"]} == {256, 1024}
    assert "fp32" in {r["dtype"] for r in cpu["inference"]}
    assert all(r["records_per_s"] > 0 for r in cpu["inference"])
    assert all(r["samples_per_s"] > 0 for r in cpu["training"])

    from benchmarks.report import gpu_section

    text = "\n".join(gpu_section("gpu", res))
    assert "Inference" in text and "samples/s" in text


def test_gpu_bench_without_cuda_measures_nothing(tmp_path):
    import torch

    from benchmarks import bench_gpu

    if torch.cuda.is_available():  # pragma: no cover - GPU machines run the real benchmark
        return
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--quick", "--out", str(out)]) == 0
    assert not out.exists()

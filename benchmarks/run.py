"""Run every benchmark (``make bench``; ``make bench-quick`` passes ``--quick``).

Each ``benchmarks/bench_*.py`` runs in its own process and writes its figures to
``benchmarks/results/<name>.json``; this prints one summary line per result file.
``bench_gpu`` measures nothing (and writes nothing) where there is no CUDA device. A benchmark
that fails is reported and makes the exit status non-zero, the others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# extra arguments per benchmark
EXTRA: dict[str, list[str]] = {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for CI")
    ap.add_argument("only", nargs="*", help="names like model_training (default: all)")
    args = ap.parse_args(argv)
    names = sorted(p.stem[len("bench_") :] for p in HERE.glob("bench_*.py"))
    names = [n for n in names if not args.only or n in args.only]
    failed = []
    for name in names:
        print(f"=== {name}", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", *EXTRA.get(name, [])]
        cmd += ["--quick"] if args.quick else []
        if subprocess.run(cmd, cwd=HERE.parent).returncode != 0:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    print("\nresults:")
    for path in sorted((HERE / "results").glob("*.json")):
        data = json.loads(path.read_text())
        ratios = {
            k: v
            for k, v in data.items()
            if k.startswith("ratio") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        print(f"  {path.name}: " + ", ".join(f"{k}={v:.3g}" for k, v in ratios.items()))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

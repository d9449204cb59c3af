"""Training throughput of our Trainer against a minimal hand-written PyTorch loop.

Both train the 784-128-32-128-784 autoencoder (ReLU, sigmoid output, MSE, Adam 1e-3, batch 256,
reshuffled every epoch) on the same Fashion-MNIST tensor (pixels / 255) on the CPU, in the same
process, interleaved repeat by repeat with alternating order. Reported: median training
samples/s over the repeats (epoch time only, as the trainer's history measures it, and
whole-call wall time, and per CPU-second of the process, which a busy machine disturbs
less), the ratio trainer / hand loop as the median of the per-repeat ratios
(goal >= 0.9; each pair ran under the same machine load), the peak resident memory of each
method (VmHWM, reset before each method where the kernel allows), and, as a side table,
batched scoring records/s of :class:`~ae_pipeline.models.Scorer` against a bare
``inference_mode`` loop.

Usage::

    python -m benchmarks.bench_model_training            # 60k images, 1 epoch, 9 repeats
    python -m benchmarks.bench_model_training --quick    # 10k images, 1 epoch, 5 repeats

Writes ``benchmarks/results/model_training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ae_pipeline.datasets import load_fashion_mnist
from ae_pipeline.models import ModelConfig, Scorer, TrainConfig, Trainer, build_model

RESULTS = Path(__file__).resolve().parent / "results" / "model_training.json"
CONFIG = ModelConfig(784, hidden_dims=[128], latent_dim=32, output_activation="sigmoid")
BATCH = 256
LR = 1e-3


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS counter of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_mib() -> float:
    """Current resident memory of this process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hand_model(seed: int) -> nn.Module:
    """The same architecture written out by hand."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Linear(128, 32),
        nn.Linear(32, 128),
        nn.ReLU(),
        nn.Linear(128, 784),
        nn.Sigmoid(),
    )


def run_hand_loop(x: torch.Tensor, epochs: int, seed: int) -> dict[str, float]:
    """A minimal PyTorch training loop; returns samples/s (epoch time and wall time)."""
    wall, cpu = time.perf_counter(), time.process_time()
    model = hand_model(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(seed)
    n = len(x)
    train_seconds = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, BATCH):
            xb = x[order[i : i + BATCH]]
            optimizer.zero_grad()
            loss = loss_fn(model(xb), xb)
            loss.backward()
            optimizer.step()
        train_seconds += time.perf_counter() - start
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "samples_per_s": n * epochs / train_seconds,
        "wall_samples_per_s": n * epochs / wall,
        "cpu_samples_per_s": n * epochs / cpu,
        "final_loss": float(loss.detach()),
    }


def run_trainer(x: torch.Tensor, epochs: int, seed: int) -> dict[str, float]:
    """Our Trainer on the same tensor; returns samples/s (epoch time and wall time)."""
    wall, cpu = time.perf_counter(), time.process_time()
    model = build_model(CONFIG, seed=seed)
    config = TrainConfig(
        epochs=epochs, batch_size=BATCH, lr=LR, device="cpu", progress=False, seed=seed
    )
    history = Trainer(config).fit(model, x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "samples_per_s": history.samples_per_s,
        "wall_samples_per_s": len(x) * epochs / wall,
        "cpu_samples_per_s": len(x) * epochs / cpu,
        "final_loss": history.train_losses[-1],
    }


def run_scoring(x: np.ndarray, repeats: int) -> dict[str, Any]:
    """Records/s of Scorer.score (codes, errors, contributions) and of a bare forward loop."""
    model = build_model(CONFIG, seed=0).eval()
    scorer = Scorer(model, batch_size=8192)
    tensor = torch.from_numpy(x)

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, len(tensor), 8192):
                xb = tensor[i : i + 8192]
                ((model(xb) - xb) ** 2).mean(dim=1).numpy()

    def ours_errors() -> None:
        scorer.errors(x)

    def ours_full() -> None:
        scorer.score(x, reconstruction=False)

    out: dict[str, Any] = {}
    cases = (
        ("bare_errors_only", bare),
        ("scorer_errors_only", ours_errors),
        ("scorer_codes_errors_contributions", ours_full),
    )
    for name, fn in cases:
        fn()  # warm-up
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            rates.append(len(x) / (time.perf_counter() - start))
        out[name] = {"records_per_s_median": statistics.median(rates), "records_per_s": rates}
    return out


def machine(threads: int) -> dict[str, Any]:
    """The machine and library versions the figures were measured with."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "torch_threads": threads,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="10k images, 1 epoch, 5 repeats")
    parser.add_argument("--samples", type=int, help="training images (default 60000)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default 1)")
    parser.add_argument("--repeats", type=int, help="runs per method (default 9; quick 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    samples = args.samples or (10000 if args.quick else 60000)
    epochs = args.epochs or 1
    repeats = args.repeats or (5 if args.quick else 9)
    torch.set_num_threads(args.threads)

    load_at_start = list(os.getloadavg())
    x_np, _ = load_fashion_mnist("train", limit=samples)
    x = torch.from_numpy(x_np)
    runners = {"trainer": run_trainer, "hand_loop": run_hand_loop}
    for fn in runners.values():  # warm-up: allocator, kernels, first-call costs
        fn(x[:4096], 1, 0)
    baseline_rss = _rss_mib()  # torch, the data set and the warm-up runs
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    peak: dict[str, float] = {}
    resettable = _reset_peak_rss()
    for r in range(repeats):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            if resettable:
                _reset_peak_rss()
            runs[name].append(runners[name](x, epochs, seed=r))
            peak[name] = max(peak.get(name, 0.0), _peak_rss_mib())

    summary: dict[str, Any] = {}
    for name, results in runs.items():
        summary[name] = {
            "samples_per_s_median": statistics.median(r["samples_per_s"] for r in results),
            "wall_samples_per_s_median": statistics.median(
                r["wall_samples_per_s"] for r in results
            ),
            "cpu_samples_per_s_median": statistics.median(r["cpu_samples_per_s"] for r in results),
            "samples_per_s": [r["samples_per_s"] for r in results],
            "final_loss_median": statistics.median(r["final_loss"] for r in results),
            "peak_rss_mib": peak[name],
        }
    # Runs are interleaved (order alternating), so each repeat is a pair measured under the same
    # machine load; the median of the per-pair ratios is the headline, robust to load bursts.
    pair_ratios = [
        t["samples_per_s"] / h["samples_per_s"]
        for t, h in zip(runs["trainer"], runs["hand_loop"], strict=True)
    ]
    ratio = statistics.median(pair_ratios)
    ratio_of_medians = (
        summary["trainer"]["samples_per_s_median"] / summary["hand_loop"]["samples_per_s_median"]
    )
    cpu_ratio = statistics.median(
        t["cpu_samples_per_s"] / h["cpu_samples_per_s"]
        for t, h in zip(runs["trainer"], runs["hand_loop"], strict=True)
    )
    wall_ratio = (
        summary["trainer"]["wall_samples_per_s_median"]
        / summary["hand_loop"]["wall_samples_per_s_median"]
    )
    scoring = run_scoring(load_fashion_mnist("test")[0], repeats)
    result = {
        "benchmark": "model_training",
        "model": "784-128-32-128-784 (relu, sigmoid output), MSE, Adam lr 1e-3, batch 256",
        "data": f"Fashion-MNIST train, first {samples} images, pixels/255",
        "epochs_per_run": epochs,
        "repeats": repeats,
        "quick": args.quick,
        "machine": machine(args.threads),
        "load_average_1_5_15min": {"start": load_at_start, "end": list(os.getloadavg())},
        "peak_rss_reset_per_method": resettable,
        "rss_before_runs_mib": baseline_rss,
        "training": summary,
        "ratio_trainer_over_hand_loop": ratio,
        "ratio_per_repeat": pair_ratios,
        "ratio_of_medians": ratio_of_medians,
        "ratio_wall": wall_ratio,
        "ratio_cpu_time": cpu_ratio,
        "goal_ratio": 0.9,
        "meets_goal": ratio >= 0.9,
        "scoring_10k_test_images": scoring,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _print_table(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.output}")
    return result


def _print_table(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(
        f"\n{result['model']}\n{result['data']}; {result['epochs_per_run']} epochs x "
        f"{result['repeats']} repeats; {m['cores']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} threads\n"
    )
    print(
        f"RSS before the timed runs (torch, data, warm-up): {result['rss_before_runs_mib']:.0f} MiB"
    )
    print(
        f"{'method':<12}{'samples/s (median)':>20}{'wall samples/s':>16}"
        f"{'samples/CPU-s':>15}{'peak RSS MiB':>14}"
    )
    for name, s in result["training"].items():
        print(
            f"{name:<12}{s['samples_per_s_median']:>20,.0f}{s['wall_samples_per_s_median']:>16,.0f}"
            f"{s['cpu_samples_per_s_median']:>15,.0f}{s['peak_rss_mib']:>14,.0f}"
        )
    print(
        f"\nratio trainer / hand loop (median of paired repeats): "
        f"{result['ratio_trainer_over_hand_loop']:.3f}; ratio of medians "
        f"{result['ratio_of_medians']:.3f}; wall {result['ratio_wall']:.3f}; "
        f"per CPU-second {result['ratio_cpu_time']:.3f}; "
        f"goal >= {result['goal_ratio']}"
    )
    for name, s in result["scoring_10k_test_images"].items():
        print(f"scoring {name:<34}{s['records_per_s_median']:>12,.0f} records/s")


if __name__ == "__main__":
    sys.exit(0 if main()["meets_goal"] else 1)

"""GPU benchmark: inference records/s (fp32, bf16) and training samples/s, against the CPU.

Run by ``benchmarks/gpu.sh`` (under 5 minutes on one GPU). Every figure is measured on the
accelerator and then on the CPU by the same code, with the same models and synthetic data
(nothing is downloaded), and written to ``benchmarks/results/gpu.json`` with the GPU named.

Inference: the serving path's computation - a batch of float32 records on the host is copied
to the device, scored (per-row reconstruction MSE, as ``Scorer.errors``) and the scores copied
back - at batch sizes 256 to 65,536, in fp32 and in bf16 (weights and activations in
bfloat16, scores accumulated in float32). ``device_resident`` repeats it with the batch already
on the device (no copies). Training: ``ae_pipeline.models.Trainer`` (the library's loop) on
in-memory data, fp32 and, on CUDA, its float16 mixed precision.

Without a GPU it does nothing (exit 0) unless ``--device cpu`` is given: then it is a smoke run
of the same code on the CPU only (``--quick``: small sizes, seconds), which the test suite
runs so that the script does not rot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ae_pipeline.models import ModelConfig, TrainConfig, Trainer, build_model

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = [256, 1024, 4096, 16384, 65536]
QUICK_BATCHES = [256, 1024]
MODELS = {
    # name: (input width, hidden, latent); "fashion" is the Fashion-MNIST AE of the quality
    # report, "tabular" a typical streaming model (32 features).
    "fashion_784_256_32": (784, [256], 32),
    "tabular_32_64_8": (32, [64], 8),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_loop(fn: Any, device: torch.device, min_s: float, min_iters: int = 3) -> float:
    """Seconds per call of ``fn`` (after one warm-up call), over at least ``min_s``."""
    fn()
    _sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if n >= min_iters and elapsed >= min_s:
            return elapsed / n


def _model(name: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    width, hidden, latent = MODELS[name]
    cfg = ModelConfig(width, hidden_dims=hidden, latent_dim=latent, output_activation="sigmoid")
    model = build_model(cfg, seed=0).eval()
    return model.to(device=device, dtype=dtype)


def _scores(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    rec = model(x)
    return ((rec.float() - x.float()) ** 2).mean(dim=1)


def inference(
    device: torch.device, batches: list[int], min_s: float, dtypes: list[str]
) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for name, (width, _, _) in MODELS.items():
        for dt in dtypes:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dt]
            model = _model(name, device, dtype)
            for b in batches:
                host = torch.from_numpy(rng.random((b, width), dtype=np.float32))
                if device.type == "cuda":
                    host = host.pin_memory()
                dev = host.to(device=device, dtype=dtype)

                @torch.inference_mode()
                def end_to_end(
                    host: torch.Tensor = host, model: Any = model, dtype: Any = dtype
                ) -> None:
                    x = host.to(device, non_blocking=True).to(dtype)
                    _scores(model, x).cpu()

                @torch.inference_mode()
                def resident(dev: torch.Tensor = dev, model: Any = model) -> None:
                    _scores(model, dev)

                t = _time_loop(end_to_end, device, min_s)
                tr = _time_loop(resident, device, min_s)
                rows.append(
                    {
                        "model": name,
                        "dtype": dt,
                        "batch": b,
                        "records_per_s": b / t,
                        "device_resident_records_per_s": b / tr,
                    }
                )
                print(
                    f"  {device.type} infer {name} {dt} batch {b}: {b / t:,.0f} rec/s "
                    f"(resident {b / tr:,.0f})",
                    flush=True,
                )
    return rows


def training(
    device: torch.device, rows_n: int, batches: list[int], epochs: int, amp: list[bool]
) -> list[dict[str, Any]]:
    out = []
    for name, (width, hidden, latent) in MODELS.items():
        x = np.random.default_rng(1).random((rows_n, width), dtype=np.float32)
        cfg = ModelConfig(width, hidden_dims=hidden, latent_dim=latent, output_activation="sigmoid")
        for mixed in amp:
            for b in batches:
                tc = TrainConfig(
                    epochs=epochs,
                    batch_size=b,
                    lr=1e-3,
                    seed=0,
                    device=str(device),
                    mixed_precision=mixed,
                    progress=False,
                )
                model = build_model(cfg, seed=0)
                hist = Trainer(tc).fit(model, x)
                # the first epoch includes warm-up (CUDA context, kernels): report the rest
                eps = hist.epochs[1:] or hist.epochs
                sps = sum(e.samples for e in eps) / sum(e.seconds for e in eps)
                out.append(
                    {
                        "model": name,
                        "precision": "fp16-amp" if mixed else "fp32",
                        "batch": b,
                        "rows": rows_n,
                        "epochs_timed": len(eps),
                        "samples_per_s": sps,
                    }
                )
                print(
                    f"  {device.type} train {name} {'amp' if mixed else 'fp32'} batch {b}: "
                    f"{sps:,.0f} samples/s",
                    flush=True,
                )
    return out


def _bf16_ok(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)
        return True
    except RuntimeError:  # pragma: no cover
        return False


def measure(device: torch.device, quick: bool, cpu_scale: bool) -> dict[str, Any]:
    """All figures on one device. ``cpu_scale``: the CPU half of a GPU run (shorter loops)."""
    batches = QUICK_BATCHES if quick else BATCHES
    min_s = 0.05 if quick else (0.3 if cpu_scale else 0.5)
    dtypes = ["fp32", "bf16"] if _bf16_ok(device) else ["fp32"]
    t0 = time.perf_counter()
    infer = inference(device, batches, min_s, dtypes)
    if quick:
        rows_n, train_batches, epochs = 2048, [256], 2
    elif device.type == "cuda":
        rows_n, train_batches, epochs = 262_144, [256, 4096], 3
    else:
        rows_n, train_batches, epochs = 32_768, [256, 4096], 2
    amp = [False, True] if device.type == "cuda" else [False]
    train = training(device, rows_n, train_batches, epochs, amp)
    return {
        "device": str(device),
        "inference": infer,
        "training": train,
        "wall_s": time.perf_counter() - t0,
    }


def _speedups(gpu: dict[str, Any], cpu: dict[str, Any]) -> dict[str, float]:
    out = {}
    cpu_inf = {(r["model"], r["dtype"], r["batch"]): r for r in cpu["inference"]}
    for r in gpu["inference"]:
        c = cpu_inf.get((r["model"], r["dtype"], r["batch"]))
        if c:
            key = f"ratio_infer_gpu_vs_cpu_{r['model']}_{r['dtype']}_b{r['batch']}"
            out[key] = r["records_per_s"] / c["records_per_s"]
    cpu_tr = {(r["model"], r["batch"]): r for r in cpu["training"] if r["precision"] == "fp32"}
    for r in gpu["training"]:
        c = cpu_tr.get((r["model"], r["batch"]))
        if c and r["precision"] == "fp32":
            key = f"ratio_train_gpu_vs_cpu_{r['model']}_b{r['batch']}"
            out[key] = r["samples_per_s"] / c["samples_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: smoke run)")
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU comparison")
    ap.add_argument("--cpu-threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="result path (default results/gpu.json)")
    args = ap.parse_args(argv)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    accel = torch.device(args.device)
    if accel.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured (use --device cpu for a smoke run)")
        return 0
    res: dict[str, Any] = {
        "benchmark": "gpu",
        "quick": args.quick,
        "smoke_cpu_only": accel.type == "cpu",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpu_threads": torch.get_num_threads(),
            "load_average_1_5_15min": list(os.getloadavg()),
        },
    }
    if accel.type == "cuda":
        props = torch.cuda.get_device_properties(accel)
        res["gpu"] = {
            "name": torch.cuda.get_device_name(accel),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
        }
        print(f"bench_gpu: {res['gpu']['name']}", flush=True)
        res["accelerator"] = measure(accel, args.quick, cpu_scale=False)
    if accel.type == "cpu" or not args.no_cpu:
        res["cpu"] = measure(torch.device("cpu"), args.quick, cpu_scale=accel.type == "cuda")
    if "accelerator" in res and "cpu" in res:
        res.update(_speedups(res["accelerator"], res["cpu"]))
    path = Path(args.out) if args.out else RESULTS / "gpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"bench_gpu: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

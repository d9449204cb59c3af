"""Builds ``benchmarks/results/REPORT.md`` and PNG plots from every ``results/*.json``.

``quality.json`` gets tables (mean +- std over seeds), goal checks and plots (MSE vs d, loss
curves, ROC curves, score histograms); any other result file is summarised as a table of its
scalar figures (nested keys flattened), so new benchmarks show up without changes here.

Usage: ``python -m benchmarks.report``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PLOTS = RESULTS / "plots"
_PREFIX = [""]  # plot-name prefix of the result file being rendered ("" for quality.json)


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:  # pragma: no cover
        return None


def _ms(s: dict[str, Any], fmt: str = ".4f") -> str:
    if s.get("n", 1) > 1:
        return f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"
    return f"{s['mean']:{fmt}}"


def _save(fig: Any, name: str) -> str:
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    name = _PREFIX[0] + name
    fig.savefig(PLOTS / name, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"plots/{name}"


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif (
        isinstance(data, (int, float, str, bool))
        or data is None
        or (
            isinstance(data, list)
            and len(data) <= 4
            and all(isinstance(v, (int, float, str)) for v in data)
        )
    ):
        out.append((prefix, data))
    return out


def generic_section(name: str, data: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    ratios = {k: v for k, v in data.items() if k.startswith("ratio")}
    if ratios:
        lines += [
            "Ratios: "
            + ", ".join(
                f"`{k}` = {v:.3g}" if isinstance(v, float) else f"`{k}` = {v}"
                for k, v in ratios.items()
            ),
            "",
        ]
    rows = [(k, v) for k, v in _flatten(data) if not k.startswith("ratio")]
    # The goals first: the table shows a result's first rows only.
    rows.sort(key=lambda kv: not kv[0].startswith("goals."))
    lines += ["| key | value |", "| --- | --- |"]
    for k, v in rows[:80]:
        val = f"{v:.4g}" if isinstance(v, float) else str(v)
        lines.append(f"| `{k}` | {val} |")
    if len(rows) > 80:
        lines.append(f"| … | {len(rows) - 80} more in `{name}.json` |")
    return [*lines, ""]


def dimred_section(d: dict[str, Any], plt: Any) -> list[str]:
    d = {**d, "by_d": dict(sorted(d["by_d"].items(), key=lambda kv: int(kv[0])))}
    lines = [
        "### Dimensionality reduction (Fashion-MNIST)",
        "",
        f"Train {d['split']['train']} / test {d['split']['test']} images (conv AE trained on "
        f"{d['split']['conv_train']}), {d['epochs']} epochs (conv {d['conv_epochs']}) at lr "
        f"2e-3 + {d.get('decay_epochs', 0)} at 2e-4, hidden {d['hidden_dims']}; stacked AE at "
        f"d in {d.get('stacked_dims', 'all')}, conv AE at d in {d.get('conv_dims', 'all')} "
        "only (cost). Logistic regression on raw pixels: "
        f"**{d['logreg_raw_pixels']:.4f}** accuracy.",
        "",
        "| d | method | test MSE | PSNR dB | logreg acc | train s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for dim, methods in d["by_d"].items():
        for m, v in methods.items():
            lines.append(
                f"| {dim} | {m} | {_ms(v['mse'])} | {_ms(v['psnr'], '.2f')} | "
                f"{_ms(v['acc'], '.3f')} | {_ms(v['train_s'], '.1f')} |"
            )
    if plt:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        names = list(dict.fromkeys(m for ms in d["by_d"].values() for m in ms))
        for m in names:
            dims = [int(k) for k, ms in d["by_d"].items() if m in ms]
            means = [d["by_d"][str(k)][m]["mse"]["mean"] for k in dims]
            stds = [d["by_d"][str(k)][m]["mse"]["std"] for k in dims]
            ax.errorbar(dims, means, yerr=stds, marker="o", label=m, capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("code size d")
        ax.set_ylabel("test MSE")
        ax.legend()
        lines += ["", f"![MSE vs d]({_save(fig, 'dimred_mse.png')})"]
        if d.get("loss_curves"):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for k, v in d["loss_curves"].items():
                ax.plot(range(1, len(v) + 1), v, label=k)
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel("train loss")
            ax.legend(fontsize=7)
            lines += ["", f"![loss curves]({_save(fig, 'dimred_loss_curves.png')})"]
    return [*lines, ""]


def denoise_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "### Denoising (Fashion-MNIST)",
        "",
        f"Train {d['split']['train']} / test {d['split']['test']}, model {d['model']}, "
        f"{d['epochs']} epochs at lr 2e-3 + {d.get('decay_epochs', 0)} at 2e-4, one "
        "noise-matched DAE per corruption; "
        f"PCA with {d['pca_components']} components; median filter via "
        f"{d['median_filter']}.",
        "",
        "| noise | method | MSE | PSNR dB |",
        "| --- | --- | --- | --- |",
    ]
    for noise, methods in d["by_noise"].items():
        for m, v in methods.items():
            bold = "**" if m == "dae" else ""
            lines.append(
                f"| {noise} | {bold}{m}{bold} | {_ms(v['mse'])} | {_ms(v['psnr'], '.2f')} |"
            )
    if d.get("grid_png") and (PLOTS / d["grid_png"]).exists():
        lines += ["", f"![original / noisy / denoised](plots/{d['grid_png']})"]
    return [*lines, ""]


def _cell(ds: dict[str, Any], m: str, key: str, fmt: str = ".4f") -> str:
    return _ms(ds["methods"][m][key], fmt) if m in ds["methods"] else "-"


def anomaly_section(d: dict[str, Any], plt: Any) -> list[str]:
    methods = d["methods"]
    lines = [
        "### Anomaly detection",
        "",
        f"Beam: {d['beam']}",
        "",
        "| data set | " + " | ".join(f"{m} ROC-AUC" for m in methods) + " |",
        "| --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for name, ds in d["datasets"].items():
        if "methods" not in ds:
            lines.append(f"| {name} | skipped: {ds.get('skipped')} |")
            continue
        lines.append(f"| {name} | " + " | ".join(_cell(ds, m, "roc_auc") for m in methods) + " |")
    lines += [
        "",
        "| data set | " + " | ".join(f"{m} AP" for m in methods) + " |",
        "| --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for name, ds in d["datasets"].items():
        if "methods" in ds:
            lines.append(f"| {name} | " + " | ".join(_cell(ds, m, "ap") for m in methods) + " |")
    lines += [
        "",
        "Training (fit) time per model, seconds:",
        "",
        "| data set | " + " | ".join(methods) + " |",
        "| --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for name, ds in d["datasets"].items():
        if "methods" in ds:
            lines.append(
                f"| {name} | " + " | ".join(_cell(ds, m, "train_s", ".2f") for m in methods) + " |"
            )
    lines += ["", "Data sets:", ""]
    for name, ds in d["datasets"].items():
        shape = ds.get("shape", {})
        lines.append(f"- **{name}**: {ds['description']}; {shape}")
    if plt:
        for name, ds in d["datasets"].items():
            curves = ds.get("curves_seed0_task0")
            if not curves:
                continue
            fig, ax = plt.subplots(figsize=(4, 4))
            for m, c in curves.items():
                ax.plot(ds["fpr_grid"], c["roc_tpr"], label=m)
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set_xlabel("FPR")
            ax.set_ylabel("TPR")
            ax.set_title(f"{name} (seed 0, task 0)", fontsize=9)
            ax.legend(fontsize=7)
            roc = _save(fig, f"roc_{name}.png")
            fig, axes = plt.subplots(1, len(curves), figsize=(3 * len(curves), 2.6))
            for ax, (m, c) in zip(axes, curves.items(), strict=False):
                h = c["hist"]
                edges = h["edges"]
                width = edges[1] - edges[0]
                ax.bar(
                    edges[:-1], h["normal"], width=width, align="edge", alpha=0.6, label="normal"
                )
                ax.bar(
                    edges[:-1], h["anomaly"], width=width, align="edge", alpha=0.6, label="anomaly"
                )
                ax.set_yscale("log")
                ax.set_title(m, fontsize=9)
            axes[0].legend(fontsize=7)
            hist = _save(fig, f"hist_{name}.png")
            lines += ["", f"![ROC {name}]({roc}) ![scores {name}]({hist})"]
    return [*lines, ""]


def goals_section(q: dict[str, Any]) -> list[str]:
    lines = ["### Goals (issues 6 and 18)", ""]

    def mark(ok: Any) -> str:
        return "met" if ok else "**NOT met**"

    if "goal_ae32_mse_le_0.75x_pca32" in q:
        lines.append(
            f"- d=32 AE test MSE <= 0.75x PCA-32's: ratio "
            f"{q['ratio_ae32_mse_vs_pca32']:.3f} — {mark(q['goal_ae32_mse_le_0.75x_pca32'])}"
        )
    if "denoise_wins" in q:
        lines.append(
            f"- DAE PSNR beats every baseline: {mark(q['goal_dae_beats_every_baseline_psnr'])}"
        )
        for noise, w in q["denoise_wins"].items():
            verdict = "win" if w["win"] else "**loss**"
            lines.append(
                f"  - {noise}: DAE {w['dae_psnr']:.2f} dB vs best baseline "
                f"{w['best_baseline_psnr']:.2f} dB — {verdict}"
            )
    if "anomaly_default_vs_best_baseline" in q:
        d = q["anomaly_default_vs_best_baseline"]
        core = [n for n, v in d.items() if not v["held_out"]]
        lines.append(
            f"- Default recipe (ae_default) ROC-AUC >= the best baseline on 4 of the 5 original "
            f"data sets and within 0.01 on the fifth: {q['anomaly_default_win_count']} of "
            f"{len(core)} — {mark(q['goal_default_ge_best_on_4_of_5_within_0.01_on_5th'])}; "
            f"no data set below 0.5: {mark(q['goal_default_no_data_set_below_0.5'])} (issue 18)"
        )
        for name, v in d.items():
            verdict = "win" if v["margin"] >= 0 else "**loss**"
            held = " (held out of the selection)" if v["held_out"] else ""
            lines.append(
                f"  - {name}{held}: ae_default {v['ae_default_roc_auc']:.4f} vs "
                f"{v['best_baseline']} {v['best_baseline_roc_auc']:.4f} "
                f"({v['margin']:+.4f}) — {verdict}"
            )
    if "anomaly_wins" in q and "goal_ae_auc_ge_best_on_3_of_5" in q:
        lines.append(
            f"- AE ROC-AUC >= best of PyOD AE and IsolationForest on >= 3 of 5 data sets: "
            f"{q['anomaly_win_count']} of {len(q['anomaly_wins'])} — "
            f"{mark(q['goal_ae_auc_ge_best_on_3_of_5'])}"
        )
        for name, w in q["anomaly_wins"].items():
            verdict = "win" if w["win"] else "**loss**"
            lines.append(
                f"  - {name}: AE {w['ae_roc_auc']:.4f} vs {w['best_pyod_iforest']:.4f} — {verdict}"
            )
    return [*lines, ""]


def losses_section(q: dict[str, Any]) -> list[str]:
    """Every comparison in which our models lose, stated plainly (means over seeds)."""
    out: list[str] = []
    for dim, ms in q.get("dimred", {}).get("by_d", {}).items():
        pca = ms.get("pca", {}).get("mse", {}).get("mean")
        for m in ("ae", "stacked", "conv"):
            if m in ms and pca is not None and ms[m]["mse"]["mean"] >= pca:
                out.append(
                    f"- dimred d={dim}: {m} test MSE {ms[m]['mse']['mean']:.4f} is not below "
                    f"PCA-{dim}'s {pca:.4f}"
                )
        if "pca" in ms and "ae" in ms and ms["ae"]["acc"]["mean"] < ms["pca"]["acc"]["mean"]:
            out.append(
                f"- dimred d={dim}: logistic regression on AE codes "
                f"{ms['ae']['acc']['mean']:.3f} < on PCA codes {ms['pca']['acc']['mean']:.3f}"
            )
    for noise, ms in q.get("denoise", {}).get("by_noise", {}).items():
        if "dae" not in ms:
            continue
        for m, v in ms.items():
            if m != "dae" and v["psnr"]["mean"] >= ms["dae"]["psnr"]["mean"]:
                out.append(
                    f"- denoise {noise}: {m} {v['psnr']['mean']:.2f} dB >= DAE "
                    f"{ms['dae']['psnr']['mean']:.2f} dB"
                )
    for name, ds in q.get("anomaly", {}).get("datasets", {}).items():
        ms = ds.get("methods")
        if not ms:
            continue
        ours = {m: ms[m]["roc_auc"]["mean"] for m in ("ae_default", "ae", "dae") if m in ms}
        best_ours = max(ours.values())
        beaten = [
            f"{m} {v['roc_auc']['mean']:.4f}"
            for m, v in ms.items()
            if m not in ours and v["roc_auc"]["mean"] > best_ours
        ]
        if beaten:
            out.append(
                f"- anomaly {name}: our best ({max(ours, key=ours.get)} {best_ours:.4f}) is "
                f"below {', '.join(beaten)}"
            )
    if not out:
        return []
    return ["### Where we lose", "", *out, ""]


def quality_section(q: dict[str, Any], plt: Any, name: str = "quality") -> list[str]:
    _PREFIX[0] = "" if name == "quality" else f"{name}_"
    lines = [
        f"## {name}",
        "",
        f"Seeds {q['seeds']} ({'--quick' if q['quick'] else 'default run'}); "
        f"wall time {q['wall_s'].get('total', 0):.0f} s ({q['machine']}; load average "
        f"{q.get('load_average_1_5_15min', {})}: timings are inflated on a shared machine). "
        "Every baseline is "
        "computed in the same run on the same split; ± is the standard deviation over seeds.",
        "",
    ]
    if q.get("parallel"):
        walls = ", ".join(
            f"{k} {v:.0f} s" for k, v in q["wall_s"].items() if k != "total" and v is not None
        )
        lines += [
            f"Studies ran as parallel processes (one torch thread each); wall time per study: "
            f"{walls}.",
            "",
        ]
    if q.get("notes"):
        lines += [f"> {q['notes']}", ""]
    if q["quick"]:
        lines += [
            "> **--quick run**: 1 seed, tiny subsets and few epochs, to keep the scripts alive; "
            "the figures are not representative.",
            "",
        ]
    if q.get("partial"):
        lines += [
            "> **Partial run** (fewer seeds, code sizes or studies than the default run; see "
            "`settings`): a check of the default sizes, not the full benchmark.",
            "",
        ]
    lines += goals_section(q)
    lines += losses_section(q)
    if "dimred" in q:
        lines += dimred_section(q["dimred"], plt)
    if "denoise" in q:
        lines += denoise_section(q["denoise"])
    if "anomaly" in q:
        lines += anomaly_section(q["anomaly"], plt)
    return lines


def gpu_section(name: str, g: dict[str, Any]) -> list[str]:
    """Tables of ``benchmarks/gpu.sh``: accelerator vs CPU, same script, same models."""
    gpu = g.get("gpu", {}).get("name", "none (CPU-only smoke run)")
    lines = [
        f"## {name}",
        "",
        f"`benchmarks/gpu.sh`: GPU **{gpu}**; CPU {g['machine'].get('cpu')} "
        f"({g['machine'].get('cpu_threads')} torch threads, load average "
        f"{g['machine'].get('load_average_1_5_15min')}); torch {g['machine'].get('torch')}, "
        f"CUDA {g['machine'].get('cuda')}.",
        "",
    ]
    if g.get("smoke_cpu_only") or g.get("quick"):
        lines += ["> smoke / quick run: the figures only show that the script works.", ""]
    devices = [k for k in ("accelerator", "cpu") if k in g]
    inf: dict[tuple[str, str, int], dict[str, Any]] = {}
    for dev in devices:
        for r in g[dev]["inference"]:
            inf.setdefault((r["model"], r["dtype"], r["batch"]), {})[dev] = r
    head = " | ".join(f"{d} rec/s (resident)" for d in devices)
    lines += [
        "Inference (host batch -> device -> per-row MSE -> host; resident: batch already on the "
        "device):",
        "",
        f"| model | dtype | batch | {head} |" + (" GPU/CPU |" if len(devices) == 2 else ""),
        "| --- | --- | --- | "
        + " | ".join("---" for _ in devices)
        + " |"
        + (" --- |" if len(devices) == 2 else ""),
    ]
    for (model, dtype, batch), per in inf.items():
        cells = [
            f"{per[d]['records_per_s']:,.0f} ({per[d]['device_resident_records_per_s']:,.0f})"
            if d in per
            else "-"
            for d in devices
        ]
        ratio = ""
        if len(devices) == 2 and all(d in per for d in devices):
            ratio = f" {per['accelerator']['records_per_s'] / per['cpu']['records_per_s']:.1f}x |"
        lines.append(f"| {model} | {dtype} | {batch:,} | " + " | ".join(cells) + " |" + ratio)
    lines += ["", "Training (`Trainer`, in-memory data, first epoch excluded):", ""]
    lines += ["| device | model | precision | batch | samples/s |", "| --- " * 5 + "|"]
    for dev in devices:
        for r in g[dev]["training"]:
            lines.append(
                f"| {dev} | {r['model']} | {r['precision']} | {r['batch']:,} | "
                f"{r['samples_per_s']:,.0f} |"
            )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    plt = _plt()
    lines = [
        "# Benchmark report",
        "",
        "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem.endswith("_quick"):  # smoke runs (make bench-quick): not figures to quote
            continue
        data = json.loads(path.read_text())
        if data.get("benchmark") == "quality":
            lines += quality_section(data, plt, path.stem)
        elif data.get("benchmark") == "gpu":
            lines += gpu_section(path.stem, data)
        else:
            lines += generic_section(path.stem, data)
    if not (RESULTS / "gpu.json").exists():
        lines += [
            "## gpu",
            "",
            "No GPU figures yet: `benchmarks/gpu.sh` (inference records/s at batch sizes 256 to "
            "65,536 in fp32 and bf16, training samples/s, against the CPU in the same script) "
            "has not run on a machine with a GPU. Its CPU smoke mode (`benchmarks/gpu.sh "
            "--device cpu --quick`) runs in the test suite (`tests/test_benchmarks_gpu.py`).",
            "",
        ]
    out = RESULTS / "REPORT.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

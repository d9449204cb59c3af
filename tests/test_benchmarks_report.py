"""The quality goals and the report on a small synthetic result (no training; milliseconds)."""

from __future__ import annotations

from benchmarks.bench_quality import goals
from benchmarks.quality.common import summary


def _m(**vals: list[float]) -> dict:
    return {k: summary(v) for k, v in vals.items()}


def _result() -> dict:
    dimred = {
        "split": {"train": 10, "test": 5, "conv_train": 4},
        "epochs": 1,
        "decay_epochs": 1,
        "conv_epochs": 1,
        "hidden_dims": [256],
        "stacked_dims": [32],
        "conv_dims": [32],
        "logreg_raw_pixels": 0.8,
        "loss_curves": {"ae_d32": [0.1, 0.05]},
        "by_d": {
            "8": {  # the expensive variants run at a subset of d only
                "pca": _m(mse=[0.03, 0.03], psnr=[15, 15], acc=[0.7, 0.7], train_s=[1, 1]),
                "ae": _m(mse=[0.025, 0.027], psnr=[16, 16], acc=[0.72, 0.7], train_s=[2, 2]),
            },
            "32": {
                "pca": _m(mse=[0.015, 0.015], psnr=[18, 18], acc=[0.8, 0.8], train_s=[1, 1]),
                "ae": _m(mse=[0.010, 0.011], psnr=[20, 20], acc=[0.78, 0.79], train_s=[2, 2]),
                "stacked": _m(mse=[0.02, 0.02], psnr=[17, 17], acc=[0.8, 0.8], train_s=[3, 3]),
            },
        },
    }
    noise = {
        "median3x3": _m(mse=[0.01, 0.01], psnr=[20.0, 20.0], train_s=[0, 0]),
        "dae": _m(mse=[0.009, 0.009], psnr=[19.0, 19.5], train_s=[5, 5]),
    }
    denoise = {
        "split": {"train": 10, "test": 5},
        "epochs": 1,
        "model": "784-512-128",
        "pca_components": 64,
        "median_filter": "numpy",
        "by_noise": {"salt_pepper_0.1": noise},
    }
    ds = {
        "description": "d",
        "shape": {},
        "methods": {
            "ae": _m(roc_auc=[0.9, 0.92], ap=[0.5, 0.5], train_s=[1, 1]),
            "dae": _m(roc_auc=[0.9, 0.9], ap=[0.5, 0.5], train_s=[1, 1]),
            "pyod_ae": _m(roc_auc=[0.8, 0.8], ap=[0.4, 0.4], train_s=[1, 1]),
            "iforest": _m(roc_auc=[0.95, 0.95], ap=[0.6, 0.6], train_s=[1, 1]),
            "pca": _m(roc_auc=[0.7, 0.7], ap=[0.3, 0.3], train_s=[1, 1]),
        },
    }
    # Beam's detectors run on some data sets only: the others show "-"
    anomaly = {
        "beam": "n/a",
        "methods": [*ds["methods"], "beam_zscore_iqr"],
        "datasets": {"toy": ds},
    }
    res = {
        "benchmark": "quality",
        "quick": False,
        "seeds": [0, 1],
        "machine": {"cpu": "x"},
        "wall_s": {"total": 1.0},
        "dimred": dimred,
        "denoise": denoise,
        "anomaly": anomaly,
    }
    res.update(goals(res))
    return res


def test_goals_ratios_and_wins():
    res = _result()
    assert abs(res["ratio_ae32_mse_vs_pca32"] - 0.0105 / 0.015) < 1e-9
    assert res["goal_ae32_mse_le_0.75x_pca32"] is True
    assert res["goal_dae_beats_every_baseline_psnr"] is False
    assert res["anomaly_win_count"] == 0 and res["goal_ae_auc_ge_best_on_3_of_5"] is False


def test_report_renders_subset_dims_and_says_where_we_lose():
    from benchmarks.report import losses_section, quality_section

    text = "\n".join(quality_section(_result(), None))
    assert "| 32 | stacked |" in text and "| 8 | ae |" in text
    assert "| toy | 0.9100 ± 0.0141 |" in text and text.count(" | - |") >= 2
    lost = "\n".join(losses_section(_result()))
    assert "d=32: stacked test MSE" in lost
    assert "salt_pepper_0.1: median3x3 20.00 dB >= DAE 19.25 dB" in lost
    assert "anomaly toy" in lost and "iforest 0.9500" in lost

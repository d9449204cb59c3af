"""The --drift options of ae-pipeline consume and stream: one line and exit 2 for mistakes."""

from __future__ import annotations

import pytest

from ae_pipeline.cli import main

KAFKA = [
    "--bootstrap_servers=127.0.0.1:1",
    "--input_topic=a",
    "--output_topic=b",
    "--dead_letter_topic=c",
    "--model_root=/nonexistent",
]


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("consume", ["--drift_topic=d"], "--drift_topic needs --drift"),
        ("consume", ["--drift_window_s=5"], "--drift_window_s needs --drift"),
        ("consume", ["--drift", "--drift_for_s=-1"], "drift for_s must be 0 or more seconds"),
        ("consume", ["--drift", "--drift_psi=-0.1"], "--drift_psi must be 0 (not checked)"),
        ("consume", ["--drift", "--mode=encode"], "mode 'encode' has none"),
        ("consume", ["--drift", "--drift_window=0"], "whole number of scores"),
        ("consume", ["--metrics_port=70000"], "metrics_port must be a TCP port"),
        ("stream", ["--drift_topic=d"], "--drift_topic needs --drift"),
        ("stream", ["--drift", "--mode=denoise"], "--mode denoise has none"),
        ("stream", ["--drift", "--drift_period_s=600"], "must not exceed --drift_window_s"),
        ("stream", ["--drift", "--drift_window_s=0"], "--drift_window_s must be a number"),
    ],
)
def test_drift_mistakes_get_one_line_and_exit_2(capsys, command, args, message):
    extra = ["--group_id=g"] if command == "consume" else []
    assert main([command, *KAFKA, *extra, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ae-pipeline {command}: error: "), err
    assert message in err[0]

"""A training job's result for people (:func:`summarize`) and for files (:func:`to_json`).

Example:
    >>> print(summarize({"published": None, "refused": "refused to publish: no rows"}))
    refused to publish: no rows
"""

from __future__ import annotations

import json
from typing import Any


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _stage_line(stage: dict) -> str:
    planned = stage.get("epochs_planned")
    epochs = f"{stage['epochs']}" + (f" of {planned}" if planned else "")
    stop = "early stop" if stage.get("stopped_early") else "no early stop"
    return (
        f"  {stage['name']}: {epochs} epochs, {_fmt(stage.get('steps'), ',')} steps, batch "
        f"{_fmt(stage.get('batch_size'), 'd')}; best epoch {_fmt(stage.get('best_epoch'), 'd')}; "
        f"{stop}"
    )


def summarize(result: dict) -> str:
    """A short block for people: the version (or the refusal and why), rows, per-stage epochs
    and steps, best epoch, early stop, the training budget, validation loss, the threshold and
    the false-positive rate it targets, and warnings."""
    summary = result.get("summary") or {}
    if result.get("published"):
        lines = [
            f"published {result['published']}"
            + (f" at {result['path']}" if result.get("path") else "")
        ]
    else:
        lines = [str(result.get("refused") or "not published")]
    rows = summary.get("rows") or {}
    if rows:
        lines.append(
            f"  rows: {_fmt(rows.get('train'), ',')} train, {_fmt(rows.get('validation'), ',')} "
            f"validation, {_fmt(rows.get('rejected'), ',')} rejected"
        )
    for stage in summary.get("stages") or []:
        lines.append(_stage_line(stage))
        if stage.get("note"):
            lines.append(f"    budget: {stage['note']}")
    if summary.get("val_loss") is not None:
        lines.append(f"  validation loss: {summary['val_loss']:.6g}")
    t = summary.get("threshold")
    if t:
        target = (
            f"flags {t['target_fpr']:.2%} of the records, the expected contamination"
            if t["method"] == "contamination"
            else f"flags {t['target_fpr']:.2%} of normal records"
        )
        lines.append(
            f"  threshold: {t['value']:.6g} ({t['method']} {t['param']:g}: {target}; "
            f"calibrated on {_fmt(t.get('n_calibration'), ',')} validation rows)"
        )
    lines += [f"  warning: {w}" for w in summary.get("warnings") or []]
    return "\n".join(lines)


def to_json(result: dict) -> str:
    """The result as JSON (numpy arrays as lists, anything else unknown as text)."""
    return json.dumps(result, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))

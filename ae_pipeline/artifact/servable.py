"""Can a verified model version serve? :func:`check_servable` is the one place that decides, for
publishing, hot reload and a fixed version alike; every refusal names its reason
(:data:`~ae_pipeline.artifact.REFUSAL_REASONS`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ae_pipeline.artifact.files import MIN_SCALE, ArtifactError, LoadedArtifact, load_artifact
from ae_pipeline.calibration import check_histogram


def features_of(loaded: LoadedArtifact) -> list[str] | int:
    """What records a version reads: its feature column names in order, or its width when it
    records no names. Pass a served version's as ``expect_features`` to
    :func:`check_servable` to refuse a swap that changes the features."""
    columns = loaded.feature_columns
    return [str(c) for c in columns] if columns else loaded.input_dim


SERVING_NEEDS = ("threshold", "calibration")
"""What a serving mode may need a version to have (``OutputMode.needs``): a calibrated anomaly
threshold, or the calibration histogram of scores kept with it."""


def check_servable(
    loaded: LoadedArtifact,
    *,
    needs: Collection[str] | None = None,
    expect_features: Sequence[str] | int | None = None,
    threshold: float | None = None,
) -> None:
    """Raises :class:`ArtifactError` unless a verified version can serve: the one place that
    decides, for publishing, hot reload and a fixed version alike.

    Checks, each refused with its ``reason``:

    * ``threshold``: with ``"threshold"`` in ``needs`` (the ``flag`` mode) a threshold must
      exist; whenever one exists and ``needs`` is None (the use is unknown) it must be a
      finite number (NaN never flags, -inf flags everything, +inf nothing);
    * ``calibration``: with ``"calibration"`` in ``needs`` (the ``explain`` mode) the
      calibration histogram must exist and be well formed;
    * ``weights``: every floating-point parameter and buffer is finite;
    * ``scaler``: offsets finite, divisors finite and above :data:`MIN_SCALE`, one per feature;
    * ``features``: with ``expect_features`` (the served version's :func:`features_of`), the
      same column names in the same order, or the same width.

    Args:
        loaded: the version (:func:`load_artifact`).
        needs: what the serving mode needs (see :data:`SERVING_NEEDS`; ``OutputMode.needs``),
            None when the mode is unknown.
        expect_features: the column names (or width) the version must read, or None.
        threshold: the threshold the caller will use instead of the calibrated one (as
            ``ServingModel.load(threshold=...)``); None: the artifact's own.
    """
    where = loaded.path
    unknown = sorted(set(needs or ()) - set(SERVING_NEEDS))
    if unknown:
        raise ValueError(f"unknown serving needs {unknown}; known: {', '.join(SERVING_NEEDS)}")
    if needs is None or "threshold" in needs:
        if threshold is None:
            threshold = _artifact_threshold(where, loaded.threshold)
        _check_threshold(where, threshold, required=needs is not None)
    if needs is not None and "calibration" in needs:
        _check_calibration(where, loaded.threshold)
    _check_weights(where, loaded.model)
    _check_scaler(where, loaded.scaler, loaded.input_dim, loaded.feature_columns)
    if expect_features is not None:
        _check_features(where, features_of(loaded), expect_features)


def _check_calibration(where: str, threshold: Any) -> None:
    histogram = threshold.get("histogram") if isinstance(threshold, Mapping) else None
    if histogram is None:
        raise ArtifactError(
            f"{where}: no calibration histogram (threshold is null), so it cannot rank scores; "
            "calibrate on more validation rows",
            reason="calibration",
        )
    try:
        check_histogram(histogram)
    except ValueError as err:
        raise ArtifactError(
            f"{where}: invalid calibration histogram: {err}", reason="calibration"
        ) from None


def verify_servable(
    path: str,
    *,
    needs: Collection[str] | None = None,
    expect_features: Sequence[str] | int | None = None,
    threshold: float | None = None,
    device: str = "cpu",
) -> LoadedArtifact:
    """:func:`load_artifact`, then :func:`check_servable` (same arguments); returns the
    loaded version.

    Raises:
        ArtifactError: the version is missing, corrupt or unsafe, or cannot serve.
    """
    loaded = load_artifact(path, device=device)
    check_servable(loaded, needs=needs, expect_features=expect_features, threshold=threshold)
    return loaded


def _artifact_threshold(where: str, threshold: Any) -> Any:
    if threshold is None:
        return None
    if not isinstance(threshold, Mapping) or "value" not in threshold:
        raise ArtifactError(
            f"{where}: the threshold must be an object with a 'value', got {threshold!r}",
            reason="threshold",
        )
    return threshold["value"]


def _check_threshold(where: str, value: Any, *, required: bool) -> None:
    if value is None:
        if required:
            raise ArtifactError(
                f"{where}: no calibrated threshold (threshold is null), so it cannot flag; "
                "calibrate on more validation rows, or serve it with an explicit threshold",
                reason="threshold",
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ArtifactError(
            f"{where}: the threshold must be a number, got {value!r}", reason="threshold"
        )
    if not np.isfinite(float(value)):
        effect = {"nan": "never flags", "inf": "never flags", "-inf": "flags every record"}
        raise ArtifactError(
            f"{where}: the threshold is {float(value)} (it {effect[str(float(value))]}); "
            "a threshold must be a finite number",
            reason="threshold",
        )


def _check_weights(where: str, model: nn.Module) -> None:
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in tensors:
        if not tensor.is_floating_point():
            continue
        bad = int((~torch.isfinite(tensor.detach())).sum())
        if bad:
            raise ArtifactError(
                f"{where}: tensor {name!r} has {bad} non-finite values (NaN or inf) out of "
                f"{tensor.numel()}; such a model scores every record NaN",
                reason="weights",
            )


def _check_scaler(where: str, scaler: Any, width: int, columns: Sequence[str] | None) -> None:
    if scaler is None:
        return
    try:
        offset = np.asarray(scaler["offset"], dtype=np.float64)
        scale = np.asarray(scaler["scale"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(
            f"{where}: the scaler is invalid: {err!r}; expected 'offset' and 'scale' lists",
            reason="scaler",
        ) from None
    if offset.shape != (width,) or scale.shape != (width,):
        raise ArtifactError(
            f"{where}: the scaler has offset shape {offset.shape} and scale shape "
            f"{scale.shape}, the model takes {width} features",
            reason="scaler",
        )
    for label, bad in (
        ("offset is not finite", ~np.isfinite(offset)),
        ("scale is not finite", ~np.isfinite(scale)),
        (f"scale is not above {MIN_SCALE:g}", np.isfinite(scale) & ~(scale > MIN_SCALE)),
    ):
        if bad.any():
            i = int(np.argmax(bad))
            name = columns[i] if columns and i < len(columns) else f"#{i}"
            value = (offset if label.startswith("offset") else scale)[i]
            raise ArtifactError(
                f"{where}: the scaler's {label} for {int(bad.sum())} feature(s), first "
                f"{name!r} ({value:g}); such a scaler turns records into NaN or inf",
                reason="scaler",
            )


def _check_features(where: str, have: list[str] | int, want: Sequence[str] | int) -> None:
    want = want if isinstance(want, int) else [str(c) for c in want]
    if have == want:
        return
    if isinstance(want, int) or isinstance(have, int):

        def show(f: list[str] | int) -> str:
            return f"{f} unnamed features" if isinstance(f, int) else f"columns {f}"

        detail = f"it reads {show(have)}, the served version reads {show(want)}"
    else:
        missing = [c for c in want if c not in have]
        extra = [c for c in have if c not in want]
        detail = (
            f"it lacks {missing} and adds {extra}"
            if missing or extra
            else "same columns in a different order"
        )
    raise ArtifactError(
        f"{where}: its features differ from the served version's: {detail}; refusing to swap "
        "(allow feature changes explicitly to serve it)",
        reason="features",
    )

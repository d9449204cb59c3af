"""The model artifact's format, and saving and loading it: see :mod:`ae_pipeline.artifact` for the
files of a version directory and what loading verifies. No pickle, no ``torch.load``."""

from __future__ import annotations

import datetime as _dt
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ae_pipeline.artifact.errors import ArtifactError
from ae_pipeline.artifact.storage import (
    _join,
    _read,
    _sha256,
    _to_json,
    _write,
    library_versions,
    refuse_links,
)
from ae_pipeline.models.config import ConfigError, ModelConfig, TrainConfig
from ae_pipeline.models.factory import (
    WeightsMismatchError,
    build_model,
    check_state_shapes,
    expected_shapes,
)
from ae_pipeline.models.score_function import ScoreFunction

FORMAT_VERSION = 2
"""The newest format this library writes: 2 adds ``score_function`` (a version scored by
anything but the mean squared error is written as 2, so a library that reads only 1 refuses it
instead of scoring it with the wrong function); a version scored by the MSE is still written
as 1, readable by older libraries."""
READABLE_FORMATS = (1, 2)
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
CHECKSUMS_FILE = "checksums.json"
_CHECKED_FILES = (WEIGHTS_FILE, CONFIG_FILE)
_MAX_HEADER = 100 * 1024 * 1024


MIN_SCALE = 1e-12
"""The smallest scaler divisor a version may carry (a fitted scaler never has less)."""

_MAX_CHECKSUMS = 1024 * 1024
_MAX_UNSIZED = {WEIGHTS_FILE: 8 * 1024**3, CONFIG_FILE: 256 * 1024**2}


@dataclass
class LoadedArtifact:
    """A verified model version.

    Attributes:
        path: the version directory.
        model: the model, in eval mode, on the requested device.
        model_config: its :class:`ModelConfig`.
        train_config: the :class:`TrainConfig` it was trained with, if saved.
        feature_columns: names of the input columns, in order, if saved.
        scaler: the feature scaler's state (opaque dict), if saved.
        threshold: the anomaly threshold and how it was calibrated (opaque dict), if saved.
        metrics: training / evaluation metrics, if saved.
        meta: the whole ``config.json``.

    The score function (how errors and codes become the anomaly score the threshold is
    calibrated on) is :attr:`score_function`.
    """

    path: str
    model: nn.Module
    model_config: ModelConfig
    train_config: TrainConfig | None
    feature_columns: list[str] | None
    scaler: dict[str, Any] | None
    threshold: dict[str, Any] | None
    metrics: dict[str, Any] | None
    meta: dict[str, Any]

    @property
    def variant(self) -> str:
        """The model's variant name, e.g. ``"denoising"``."""
        return self.model_config.variant

    @property
    def score_function(self) -> ScoreFunction:
        """How this version scores records (``mse`` for versions saved without one)."""
        return score_function_of(self.meta, self.model_config)

    @property
    def input_dim(self) -> int:
        """Number of input features the model expects."""
        return int(self.model_config.input_dim)  # type: ignore[arg-type]

    def check_input(
        self,
        expected_input_dim: int | None = None,
        feature_columns: Sequence[str] | None = None,
    ) -> None:
        """Raises :class:`ArtifactError` unless records of this shape fit the model.

        See :func:`check_compatibility`.
        """
        check_compatibility(
            self.meta,
            expected_input_dim=expected_input_dim,
            feature_columns=feature_columns,
            path=self.path,
        )

    def scorer(self, *, batch_size: int = 8192, device: str | None = None) -> Any:
        """Returns a :class:`~ae_pipeline.models.scoring.Scorer` over this model."""
        from ae_pipeline.models.scoring import Scorer

        device = device or str(next(self.model.parameters()).device)
        return Scorer(
            self.model, batch_size=batch_size, device=device, score_function=self.score_function
        )


def score_function_of(meta: Mapping[str, Any], model_config: ModelConfig) -> ScoreFunction:
    """The :class:`ScoreFunction` stored in ``meta``, its shapes checked against the model's
    widths (a ValueError names what is wrong)."""
    return ScoreFunction.from_dict(
        meta.get("score_function"),
        input_dim=int(model_config.input_dim),  # type: ignore[arg-type]
        latent_dim=int(model_config.latent_dim),
    )


# --------------------------------------------------------------------------- save


def save_artifact(
    path: str,
    model: nn.Module,
    model_config: ModelConfig | None = None,
    *,
    feature_columns: Sequence[str] | None = None,
    scaler: Mapping[str, Any] | None = None,
    threshold: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    data_fingerprint: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    score_function: ScoreFunction | None = None,
) -> str:
    """Writes a model version into directory ``path`` (created if needed).

    Files are written in the order weights, config, checksums; a directory without
    ``checksums.json`` is incomplete and will be refused by :func:`load_artifact`. Existing
    files of the same names are overwritten; nothing is renamed or published.

    Args:
        path: the version directory (local path, ``gs://...``, ``s3://...``).
        model: the trained model.
        model_config: its config (default: ``model.config``).
        feature_columns: names of the input columns, one per input feature.
        scaler: the feature scaler's state, JSON-serialisable.
        threshold: the anomaly threshold and its calibration, JSON-serialisable.
        metrics: training / evaluation metrics, JSON-serialisable.
        train_config: the training settings used.
        data_fingerprint: e.g. :func:`data_fingerprint` of the training data.
        extra: any other JSON-serialisable metadata (stored under ``"extra"``).
        score_function: how records are scored (None: the mean squared error); the threshold
            must be calibrated on its scores.

    Returns:
        ``path``.

    Raises:
        ArtifactError: if the model does not match the config, the feature columns do not
            match its width, or a metadata value is not JSON-serialisable.
    """
    import safetensors.torch

    config = model_config if model_config is not None else getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ArtifactError("save_artifact needs a ModelConfig (pass model_config=...)")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    try:
        check_state_shapes(
            expected_shapes(config), {k: tuple(v.shape) for k, v in state.items()}, source="model"
        )
    except WeightsMismatchError as err:
        raise ArtifactError(f"model does not match model_config: {err}") from None
    columns = None if feature_columns is None else [str(c) for c in feature_columns]
    if columns is not None and len(columns) != config.input_dim:
        raise ArtifactError(
            f"{len(columns)} feature_columns given, the model has input_dim={config.input_dim}"
        )
    scoring = score_function.to_dict() if score_function is not None else {"kind": "mse"}
    try:
        score_function_of({"score_function": scoring}, config)
    except ValueError as err:
        raise ArtifactError(f"score_function does not fit the model: {err}") from None
    weights = safetensors.torch.save(state, metadata={"format": "pt"})
    meta = {
        "format_version": 1 if scoring["kind"] == "mse" else FORMAT_VERSION,
        "score_function": scoring,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "variant": config.variant,
        "model_config": config.to_dict(),
        "train_config": None if train_config is None else train_config.to_dict(),
        "feature_columns": columns,
        "scaler": _to_json("scaler", scaler),
        "threshold": _to_json("threshold", threshold),
        "metrics": _to_json("metrics", metrics),
        "data_fingerprint": _to_json("data_fingerprint", data_fingerprint),
        "extra": _to_json("extra", extra),
        "versions": library_versions(),
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in state.items()
        },
    }
    config_bytes = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    checksums = {
        "algorithm": "sha256",
        "files": {WEIGHTS_FILE: _sha256(weights), CONFIG_FILE: _sha256(config_bytes)},
        "sizes": {WEIGHTS_FILE: len(weights), CONFIG_FILE: len(config_bytes)},
    }
    _write(_join(path, WEIGHTS_FILE), weights)
    _write(_join(path, CONFIG_FILE), config_bytes)
    _write(_join(path, CHECKSUMS_FILE), (json.dumps(checksums, indent=2) + "\n").encode())
    return path


# --------------------------------------------------------------------------- load


def _safetensors_header(data: bytes) -> dict | None:
    """The parsed header of a safetensors file (8-byte little-endian length, then a JSON
    object of that length), or None when ``data`` does not start with one."""
    if len(data) < 8:
        return None
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > _MAX_HEADER or 8 + header_len > len(data):
        return None
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return header if isinstance(header, dict) else None


def _check_safetensors(path: str, data: bytes) -> None:
    """Refuses anything but a safetensors file, naming what it is instead (a pickle, a
    ``torch.save`` zip, a truncated file).

    The header (length + JSON object) is parsed first: its first bytes are the length's low
    bytes, which can be anything (a header of 384 bytes starts with ``0x80``, a pickle's
    opcode), so only a file that is not valid safetensors is classified.
    """
    if _safetensors_header(data) is not None:
        return
    where = f"{path}: {WEIGHTS_FILE}"
    if data[:1] == b"\x80" or data[:2] == b"PK":
        kind = "a zip archive (torch.save)" if data[:2] == b"PK" else "a pickle"
        raise ArtifactError(
            f"{where} is {kind}, not safetensors; refusing to load it (unpickling can run "
            "arbitrary code)",
            reason="unsafe",
        )
    if len(data) < 8:
        raise ArtifactError(f"{where} is truncated ({len(data)} bytes, no safetensors header)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > _MAX_HEADER or 8 + header_len > len(data):
        raise ArtifactError(
            f"{where} is truncated or not safetensors: header length {header_len}, "
            f"file length {len(data)}"
        )
    raise ArtifactError(f"{where} is not safetensors: its header is not a JSON object")


def _read_checksums(path: str) -> tuple[dict[str, str], dict[str, int]]:
    """``(sha256 by file, read limit by file)``: the recorded size where checksums.json has
    one (written since sizes were added), else a generous bound."""
    raw = _read(path, CHECKSUMS_FILE, _MAX_CHECKSUMS)
    try:
        checksums = json.loads(raw)
        files = checksums["files"]
        sizes = checksums.get("sizes") or {}
        if checksums.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("expected algorithm 'sha256' and a 'files' map")
        limits = {name: int(sizes.get(name, _MAX_UNSIZED[name])) for name in _CHECKED_FILES}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{path}: {CHECKSUMS_FILE} is corrupt: {err}") from None
    missing = [name for name in _CHECKED_FILES if name not in files]
    if missing:
        raise ArtifactError(f"{path}: {CHECKSUMS_FILE} lists no checksum for {missing}")
    return files, limits


def _verify_checksum(path: str, name: str, data: bytes, expected: str) -> None:
    actual = _sha256(data)
    if actual != expected:
        raise ArtifactError(
            f"{path}: {name} checksum mismatch: expected sha256 {expected}, actual {actual} "
            f"({len(data)} bytes; the file is truncated, corrupt or was modified)"
        )


def verify_artifact(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Reads and verifies a version directory without building the model.

    Checks that a local directory holds no symbolic link or special file (nothing is
    followed), that the files exist, are no larger than the sizes recorded in
    ``checksums.json`` (read bounded) and match their checksums, that the weights are
    safetensors (not pickle), that ``config.json`` holds a valid model config, and that every
    tensor the config implies is present with the expected shape and a floating-point dtype.

    Returns:
        ``(meta, tensors)``: the parsed ``config.json`` and the CPU tensors.

    Raises:
        ArtifactError: naming the file, tensor, shapes or checksums that do not match.
    """
    import safetensors.torch

    refuse_links(path)
    checksums, limits = _read_checksums(path)
    weights = _read(path, WEIGHTS_FILE, limits[WEIGHTS_FILE])
    _check_safetensors(path, weights)
    _verify_checksum(path, WEIGHTS_FILE, weights, checksums[WEIGHTS_FILE])
    config_bytes = _read(path, CONFIG_FILE, limits[CONFIG_FILE])
    _verify_checksum(path, CONFIG_FILE, config_bytes, checksums[CONFIG_FILE])
    try:
        meta = json.loads(config_bytes)
        model_config = ModelConfig.from_dict(meta["model_config"])
    except (ValueError, KeyError, TypeError) as err:
        kind = "invalid model config" if isinstance(err, ConfigError) else "corrupt"
        raise ArtifactError(f"{path}: {CONFIG_FILE}: {kind}: {err}") from None
    if meta.get("format_version") not in READABLE_FORMATS:
        raise ArtifactError(
            f"{path}: {CONFIG_FILE}: format_version {meta.get('format_version')!r}, "
            f"this library reads {', '.join(map(str, READABLE_FORMATS))}"
        )
    try:
        score_function_of(meta, model_config)
    except ValueError as err:
        raise ArtifactError(f"{path}: {CONFIG_FILE}: invalid score_function: {err}") from None
    try:
        tensors = safetensors.torch.load(weights)
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ArtifactError(f"{path}: {WEIGHTS_FILE} is not valid safetensors: {err}") from None
    try:
        check_state_shapes(
            expected_shapes(model_config),
            {k: tuple(v.shape) for k, v in tensors.items()},
            source=f"{path}: {WEIGHTS_FILE}",
        )
    except WeightsMismatchError as err:
        raise ArtifactError(str(err)) from None
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ArtifactError(
                f"{path}: {WEIGHTS_FILE}: tensor {name!r} has dtype {tensor.dtype}, "
                "expected a floating-point dtype"
            )
    return meta, tensors


def load_artifact(
    path: str,
    device: str = "cpu",
    *,
    expected_input_dim: int | None = None,
    feature_columns: Sequence[str] | None = None,
) -> LoadedArtifact:
    """Loads and verifies a model version (see :func:`verify_artifact`).

    Args:
        path: the version directory.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"auto"``).
        expected_input_dim: refuse the model unless it takes this many features.
        feature_columns: refuse the model unless it was trained on these columns in this
            order (checked only when the artifact records its columns).

    Raises:
        ArtifactError: for a missing, corrupt, unsafe or mismatched artifact.
    """
    from ae_pipeline.models.device import resolve_device

    meta, tensors = verify_artifact(path)
    check_compatibility(
        meta, expected_input_dim=expected_input_dim, feature_columns=feature_columns, path=path
    )
    model_config = ModelConfig.from_dict(meta["model_config"])
    model = build_model(model_config)
    model.load_state_dict(tensors, strict=True)
    model.to(resolve_device(device)).eval()
    train_config = meta.get("train_config")
    return LoadedArtifact(
        path=path,
        model=model,
        model_config=model_config,
        train_config=None if train_config is None else TrainConfig.from_dict(train_config),
        feature_columns=meta.get("feature_columns"),
        scaler=meta.get("scaler"),
        threshold=meta.get("threshold"),
        metrics=meta.get("metrics"),
        meta=meta,
    )


def check_compatibility(
    meta: Mapping[str, Any],
    *,
    expected_input_dim: int | None = None,
    feature_columns: Sequence[str] | None = None,
    path: str = "artifact",
) -> None:
    """Raises :class:`ArtifactError` unless records of the given width / columns fit a model.

    Args:
        meta: the artifact's ``config.json`` (``LoadedArtifact.meta``).
        expected_input_dim: the number of features records have.
        feature_columns: the columns records have, in order.
        path: the artifact's path, for the message.
    """
    input_dim = meta["model_config"]["input_dim"]
    if expected_input_dim is not None and expected_input_dim != input_dim:
        raise ArtifactError(
            f"{path}: the model takes {input_dim} features, the records have {expected_input_dim}",
            reason="features",
        )
    saved = meta.get("feature_columns")
    if feature_columns is None:
        return
    wanted = [str(c) for c in feature_columns]
    if len(wanted) != input_dim:
        raise ArtifactError(
            f"{path}: the model takes {input_dim} features, the records have {len(wanted)} columns",
            reason="features",
        )
    if saved is not None and wanted != saved:
        missing = [c for c in saved if c not in wanted]
        extra = [c for c in wanted if c not in saved]
        detail = (
            f"missing {missing}, unexpected {extra}"
            if missing or extra
            else "same columns in a different order"
        )
        raise ArtifactError(
            f"{path}: feature columns differ from the model's: {detail}; model: {saved}",
            reason="features",
        )

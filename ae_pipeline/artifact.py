"""The model artifact: one directory per model version, saved and loaded safely.

A version directory holds

* ``weights.safetensors``: the model's tensors (safetensors: loading never runs code);
* ``config.json``: model config, train config, variant, feature columns, scaler and
  threshold (opaque dicts owned by their layers), metrics, data fingerprint, library versions
  and the name, shape and dtype of every tensor;
* ``checksums.json``: the SHA-256 of the two files above, written last.

All I/O goes through ``apache_beam.io.filesystems.FileSystems`` (imported lazily, so that this
module and ``ae_pipeline.models`` import without Beam), so local paths, ``gs://`` and
``s3://`` work alike. :func:`save_artifact` writes into the directory it is given and nothing
else: publishing a version atomically (temporary name, then visible) is the caller's job.
:func:`load_artifact` verifies checksums, the safetensors header, and that every tensor the
config implies is present with the right shape, and raises :class:`ArtifactError` naming the
first mismatch otherwise. No pickle, no ``torch.load``, anywhere.

Example:
    >>> import tempfile
    >>> from ae_pipeline.models import ModelConfig, build_model
    >>> cfg = ModelConfig(4, hidden_dims=[], latent_dim=2)
    >>> path = save_artifact(tempfile.mkdtemp(), build_model(cfg, seed=0), cfg)
    >>> load_artifact(path).model.latent_dim
    2
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import platform
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import torch
from torch import nn

from ae_pipeline.calibration import check_histogram
from ae_pipeline.models.config import ConfigError, ModelConfig, TrainConfig
from ae_pipeline.models.factory import (
    WeightsMismatchError,
    build_model,
    check_state_shapes,
    expected_shapes,
)

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
CHECKSUMS_FILE = "checksums.json"
_CHECKED_FILES = (WEIGHTS_FILE, CONFIG_FILE)
_MAX_HEADER = 100 * 1024 * 1024


REFUSAL_REASONS = (
    "marker",
    "future",
    "symlink",
    "special_file",
    "too_large",
    "corrupt",
    "unsafe",
    "threshold",
    "calibration",
    "weights",
    "scaler",
    "features",
    "error",
)
"""Why a model version is refused; the ``reason`` of :class:`ArtifactError` and the keys of
:attr:`ae_pipeline.hot_reload.ModelWatcher.refusals`."""

MIN_SCALE = 1e-12
"""The smallest scaler divisor a version may carry (a fitted scaler never has less)."""

_MAX_CHECKSUMS = 1024 * 1024
_MAX_UNSIZED = {WEIGHTS_FILE: 8 * 1024**3, CONFIG_FILE: 256 * 1024**2}


class ArtifactError(ValueError):
    """A model artifact is missing, corrupt, unsafe or does not fit its config or the data.

    Attributes:
        reason: one of :data:`REFUSAL_REASONS` (default ``"corrupt"``).
    """

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


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
        return Scorer(self.model, batch_size=batch_size, device=device)


# --------------------------------------------------------------------------- helpers


def library_versions() -> dict[str, str]:
    """Returns the versions of the libraries a saved model depends on."""
    import safetensors

    import ae_pipeline

    versions = {
        "ae_pipeline": ae_pipeline.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }
    with contextlib.suppress(metadata.PackageNotFoundError):
        versions["apache_beam"] = metadata.version("apache-beam")
    return versions


def data_fingerprint(data: np.ndarray | Iterable[np.ndarray]) -> dict[str, Any]:
    """Returns a SHA-256 fingerprint of training data (an array or an iterable of blocks).

    The hash covers the float32 values row-major, so the same rows in the same order give the
    same fingerprint however they were split into blocks.

    Returns:
        ``{"sha256": ..., "rows": N, "columns": D}``.
    """
    blocks = [data] if isinstance(data, np.ndarray) else data
    digest = hashlib.sha256()
    rows, columns = 0, None
    for block in blocks:
        arr = np.ascontiguousarray(block, dtype=np.float32)
        arr = arr.reshape(len(arr), -1)
        if columns is not None and arr.shape[1] != columns:
            raise ValueError(f"blocks of {columns} and {arr.shape[1]} columns")
        columns = arr.shape[1]
        rows += len(arr)
        digest.update(arr.tobytes())
    return {"sha256": digest.hexdigest(), "rows": rows, "columns": columns}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _to_json(name: str, value: Any) -> Any:
    """Returns ``value`` as plain JSON data, or raises ArtifactError naming the field."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{name} must be JSON-serialisable: {err}") from None


def _join(path: str, name: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(path, name)


def _write(path: str, data: bytes) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def _read(path: str, name: str, limit: int) -> bytes:
    """The bytes of ``path/name``, reading at most ``limit`` bytes (a larger file is refused
    with reason ``too_large`` before it can fill the memory)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    target = _join(path, name)
    try:
        with FileSystems.open(target, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read(limit + 1)
    except Exception as err:  # FileSystems raises BeamIOError, IOError, OSError...
        raise ArtifactError(f"{path}: cannot read {name}: {err}") from err
    if len(data) > limit:
        raise ArtifactError(
            f"{path}: {name} is larger than the {limit} bytes recorded for it; refusing to read "
            "it (the file was replaced or grew after publishing)",
            reason="too_large",
        )
    return data


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def refuse_links(path: str) -> None:
    """Refuses a local version directory holding a symbolic link or a special file (device,
    FIFO, socket) anywhere inside it, following none of them: a ``weights.safetensors`` linked
    to ``/dev/zero`` would otherwise be read until memory runs out. Object stores (``gs://``,
    ``s3://``...) have no links and are not checked.

    Raises:
        ArtifactError: with reason ``symlink`` or ``special_file``, naming the entry.
    """
    import os
    import stat

    if not _is_local(path):
        return
    top = path.removeprefix("file://")
    if not os.path.isdir(top):
        return  # nothing to follow; reading its files reports what is missing
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as err:
            raise ArtifactError(f"{path}: cannot list {directory}: {err}") from err
        for entry in entries:
            where = os.path.relpath(entry.path, top)
            if entry.is_symlink():
                raise ArtifactError(
                    f"{path}: {where} is a symbolic link; refusing to follow it (copy the file "
                    "into the version directory instead)",
                    reason="symlink",
                )
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                pending.append(entry.path)
            elif not stat.S_ISREG(mode):
                raise ArtifactError(
                    f"{path}: {where} is not a regular file (a device, FIFO or socket); "
                    "refusing to read it",
                    reason="special_file",
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
    weights = safetensors.torch.save(state, metadata={"format": "pt"})
    meta = {
        "format_version": FORMAT_VERSION,
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
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: {CONFIG_FILE}: format_version {meta.get('format_version')!r}, "
            f"this library reads {FORMAT_VERSION}"
        )
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


# --------------------------------------------------------------------------- can it serve?


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

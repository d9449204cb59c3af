"""How a version's files are read and written: through Beam's ``FileSystems`` (local paths,
``gs://``, ``s3://``), bounded in size, hashed, and never through a symbolic link."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import platform
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import numpy as np
import torch

from ae_pipeline.artifact.errors import ArtifactError


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

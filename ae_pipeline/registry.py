"""Versioned model locations: publish a new version atomically, list and watch published ones.

A model root (local path, ``gs://…``, ``s3://…``; any Beam filesystem) holds one directory per
version::

    <root>/v20261126T221500Z-3f9a1c/weights.safetensors
    <root>/v20261126T221500Z-3f9a1c/config.json
    <root>/v20261126T221500Z-3f9a1c/checksums.json
    <root>/v20261126T221500Z-3f9a1c/_PUBLISHED        <- written last

A version is *published* once its ``_PUBLISHED`` marker exists and holds a JSON object. The
marker is written after every other file of the version, under a temporary name then renamed,
so a reader that only looks at marked versions (this module, and the streaming side through
:meth:`ModelRegistry.watch_pattern`) never sees a half-written model or a half-written marker,
on object stores too where directory renames are not atomic; an empty or garbled marker (a copy
made by hand, a disk that filled up) is treated as not published. :meth:`ModelRegistry.publish`
refuses a version that cannot serve (:func:`ae_pipeline.artifact.verify_servable`).

Order: versions are ordered by the ``published_at`` time their marker records (falling back to
the time in the name for markers without it), then by name; a version dated more than
:data:`FUTURE_TOLERANCE_S` ahead of the reader's clock does not count until its time comes, so
a future-dated name cannot pin serving. Version names carry a random suffix and are never
reused: publishing refuses a name that already exists.

Example:
    >>> import tempfile, pathlib
    >>> reg = ModelRegistry(tempfile.mkdtemp())
    >>> v = reg.publish(lambda d: pathlib.Path(d, "config.json").write_text("{}"), check=False)
    >>> reg.latest() == v
    True
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

MARKER = "_PUBLISHED"
_MAX_MARKER = 1024 * 1024
FUTURE_TOLERANCE_S = 600.0
"""How far ahead of this machine's clock a version may be dated and still count (clock skew)."""
VERSION_RE = re.compile(r"v\d{8}T\d{6}\d{0,6}Z-[0-9a-f]{6,}")


class RegistryError(ValueError):
    """A version name, marker or model root is not acceptable; the message says why.

    Attributes:
        reason: why a version is refused (see :data:`ae_pipeline.artifact.REFUSAL_REASONS`):
            ``"marker"`` for an empty or garbled marker, ``"invalid"`` otherwise.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class PublishRefused(RegistryError):
    """A version that cannot serve was not published; ``reason`` says which check failed."""


@dataclass(frozen=True)
class Published:
    """A published version: its name, its marker and the time that orders it.

    Attributes:
        name: the version name.
        published_at: when it was published (UTC): the marker's ``published_at``, else (a
            version published before markers carried it) the time in its name.
        marker: the marker's JSON.
    """

    name: str
    published_at: _dt.datetime
    marker: dict

    @property
    def order(self) -> tuple[_dt.datetime, str]:
        """The sort key of the publish order: time, then name."""
        return (self.published_at, self.name)


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _name_time(name: str) -> _dt.datetime:
    """The UTC time a version name carries (``v20261126T221500[ffffff]Z-…``)."""
    stamp = name[1:].split("Z", 1)[0]
    base, fraction = stamp[:15], stamp[15:]
    moment = _dt.datetime.strptime(base, "%Y%m%dT%H%M%S").replace(tzinfo=_dt.timezone.utc)
    return moment + _dt.timedelta(microseconds=int(fraction.ljust(6, "0")) if fraction else 0)


def _utc(text: str) -> _dt.datetime:
    moment = _dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"published_at {text!r} has no time zone")
    return moment.astimezone(_dt.timezone.utc)


def parse_marker(name: str, raw: bytes) -> Published:
    """A version's marker bytes, checked: a JSON object whose ``published_at`` (when present)
    is an ISO time with a zone.

    Raises:
        RegistryError: reason ``marker``: the marker is empty or garbled, so the version is not
            published (an interrupted or non-atomic write).
    """
    if not raw.strip():
        raise RegistryError(
            f"model version {name}: its {MARKER} marker is empty (an interrupted publish); "
            "treated as not published",
            reason="marker",
        )
    try:
        marker = json.loads(raw.decode("utf-8"))
        if not isinstance(marker, dict):
            raise ValueError(f"expected a JSON object, got {type(marker).__name__}")
        at = marker.get("published_at")
        published_at = _name_time(name) if at is None else _utc(str(at))
    except (ValueError, TypeError) as err:
        raise RegistryError(
            f"model version {name}: its {MARKER} marker is garbled ({err}); treated as not "
            "published",
            reason="marker",
        ) from None
    return Published(name, published_at, marker)


def check_version_name(name: str) -> str:
    """Refuse anything but a well-formed version name (no path separators, no ``..``).

    Raises:
        RegistryError: naming the bad value and the expected form.
    """
    if not isinstance(name, str) or not VERSION_RE.fullmatch(name):
        raise RegistryError(
            f"invalid model version name {name!r}: expected e.g. 'v20261126T221500Z-3f9a1c' "
            "(no path separators or '..')"
        )
    return name


def version_of_marker(marker_path: str) -> str:
    """The version directory of a ``…/<version>/_PUBLISHED`` path (as WatchFilePattern yields).

    Raises:
        RegistryError: if the path is not a marker of a well-formed version.
    """
    fs = _fs()
    directory, leaf = fs.split(marker_path)
    if leaf != MARKER:
        raise RegistryError(f"{marker_path!r} is not a {MARKER} marker")
    check_version_name(fs.split(directory)[1])
    return directory


def marker_entry(version_dir: str) -> Published:
    """The checked marker of a version directory (e.g. what ``WatchFilePattern`` announced, via
    :func:`version_of_marker`): for a reader that is handed a directory, not a name.

    Raises:
        RegistryError: the name is not a version name, or the marker is missing, empty or
            garbled (reason ``marker``).
    """
    fs = _fs()
    root, name = fs.split(version_dir.rstrip("/"))
    return ModelRegistry(root).entry(check_version_name(name))


class ModelRegistry:
    """Published model versions under one root.

    Args:
        root: the model location (any Beam filesystem path).
    """

    def __init__(self, root: str) -> None:
        if not root:
            raise RegistryError("model root must be a non-empty path")
        self.root = root.rstrip("/") if len(root) > 1 else root

    def path(self, version: str) -> str:
        """The directory of ``version`` (refusing names that could escape the root)."""
        return _fs().join(self.root, check_version_name(version))

    def new_version_name(self) -> str:
        """A fresh, time-sortable, never-reused version name."""
        now = _dt.datetime.now(_dt.timezone.utc)
        return f"v{now:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(3)}"

    def publish(
        self,
        write: Callable[[str], None],
        *,
        metadata: dict | None = None,
        name: str | None = None,
        needs: Collection[str] | None = ("threshold",),
        check: bool = True,
    ) -> str:
        """Write a new version with ``write(directory)``, check that it can serve, then mark it
        published.

        The marker is written under a temporary name and renamed into place, so a failed write
        (a full disk) never leaves a marker; it records ``published_at`` (UTC), which orders
        versions for :meth:`latest` and the watchers.

        Args:
            write: writes every file of the version into the directory it is given.
            metadata: small JSON stored in the marker (e.g. metrics, who published).
            name: the version name (default :meth:`new_version_name`).
            needs: what the version must have to serve (``OutputMode.needs``; see
                :func:`ae_pipeline.artifact.check_servable`): by default a finite threshold
                (the ``flag`` mode); ``()`` for a version meant only to encode or denoise;
                None when unknown (a threshold, if any, must be finite).
            check: verify the written version with
                :func:`ae_pipeline.artifact.verify_servable` before marking it (False only to
                publish something that is not a model artifact, or a fault on purpose).

        Returns:
            The published version name.

        Raises:
            RegistryError: if the name exists already (names are never reused).
            PublishRefused: the written version cannot serve (``reason`` says why); it is left
                unmarked, so nothing ever serves it.
        """
        fs = _fs()
        name = check_version_name(name or self.new_version_name())
        directory = self.path(name)
        if fs.exists(directory) or fs.exists(fs.join(directory, MARKER)):
            raise RegistryError(f"model version {name!r} already exists under {self.root}")
        if not fs.exists(self.root):
            fs.mkdirs(self.root)
        fs.mkdirs(directory)
        write(directory)
        if check:
            from ae_pipeline.artifact import ArtifactError, verify_servable

            try:
                verify_servable(directory, needs=needs)
            except ArtifactError as err:
                raise PublishRefused(
                    f"refused to publish model version {name} (left unpublished in "
                    f"{directory}): {err}",
                    reason=err.reason,
                ) from None
        now = _dt.datetime.now(_dt.timezone.utc).isoformat()
        marker = {**(metadata or {}), "version": name, "published_at": now}
        _write_atomically(fs.join(directory, MARKER), json.dumps(marker, sort_keys=True).encode())
        return name

    def versions(self) -> list[str]:
        """Names of the versions that have a marker, sorted by name (markers not read)."""
        fs = _fs()
        pattern = fs.join(self.root, "*", MARKER)
        found = []
        for match in fs.match([pattern])[0].metadata_list:
            directory = fs.split(match.path)[0]
            name = fs.split(directory)[1]
            if VERSION_RE.fullmatch(name):
                found.append(name)
        return sorted(set(found))

    def entry(self, version: str) -> Published:
        """A version's checked marker (see :func:`parse_marker`).

        Raises:
            RegistryError: the marker is missing, unreadable, empty or garbled (reason
                ``marker``).
        """
        return parse_marker(version, self._read_marker(version))

    def ordered(self, *, future_tolerance_s: float = FUTURE_TOLERANCE_S) -> list[Published]:
        """Published versions with a valid marker, newest first by publish order
        (:attr:`Published.order`), leaving out those dated more than ``future_tolerance_s``
        ahead of this machine's clock."""
        horizon = time.time() + future_tolerance_s
        entries = []
        for name in self.versions():
            with contextlib.suppress(RegistryError):
                entries.append(self.entry(name))
        return sorted(
            (e for e in entries if e.published_at.timestamp() <= horizon),
            key=lambda e: e.order,
            reverse=True,
        )

    def latest(self) -> str | None:
        """The newest published version (first of :meth:`ordered`), or None."""
        entries = self.ordered()
        return entries[0].name if entries else None

    def marker(self, version: str) -> dict:
        """The JSON stored in a version's marker (checked as :meth:`entry` does)."""
        return self.entry(version).marker

    def _read_marker(self, version: str) -> bytes:
        fs = _fs()
        try:
            with fs.open(fs.join(self.path(version), MARKER)) as f:
                raw = f.read(_MAX_MARKER + 1)
        except Exception as err:  # BeamIOError, OSError...
            raise RegistryError(
                f"model version {version}: cannot read its {MARKER} marker: {err}",
                reason="marker",
            ) from None
        if len(raw) > _MAX_MARKER:
            raise RegistryError(
                f"model version {version}: its {MARKER} marker exceeds {_MAX_MARKER} bytes",
                reason="marker",
            )
        return raw

    def watch_pattern(self) -> str:
        """A file pattern matching the marker of every published version (for WatchFilePattern)."""
        return _fs().join(self.root, "*", MARKER)


def _write_atomically(path: str, data: bytes) -> None:
    """Writes ``path`` so that it appears complete or not at all: into a temporary file beside
    it, then renamed into place (``os.rename`` locally; a copy, which is atomic per object, on
    object stores). A local file is flushed to disk before the rename. On failure the
    temporary file is removed and the error raised."""
    from apache_beam.io.filesystem import CompressionTypes

    fs = _fs()
    temporary = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        with fs.create(temporary, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
        if "://" not in temporary:
            _fsync(temporary)
        fs.rename([temporary], [path])
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete([temporary])
        raise


def _fsync(path: str) -> None:
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

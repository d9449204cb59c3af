"""Versioned model locations: publish a new version atomically, list and watch published ones.

A model root (local path, ``gs://…``, ``s3://…``; any Beam filesystem) holds one directory per
version::

    <root>/v20261126T221500Z-3f9a1c/weights.safetensors
    <root>/v20261126T221500Z-3f9a1c/config.json
    <root>/v20261126T221500Z-3f9a1c/checksums.json
    <root>/v20261126T221500Z-3f9a1c/_PUBLISHED        <- written last

A version is *published* once its ``_PUBLISHED`` marker exists. The marker is written after
every other file of the version, so a reader that only looks at marked versions (this module,
and the streaming side through :meth:`ModelRegistry.watch_pattern`) never sees a half-written
model, on object stores too where directory renames are not atomic. Version names sort by time,
carry a random suffix, and are never reused: publishing refuses a name that already exists.

Example:
    >>> import tempfile, pathlib
    >>> reg = ModelRegistry(tempfile.mkdtemp())
    >>> v = reg.publish(lambda d: pathlib.Path(d, "config.json").write_text("{}"))
    >>> reg.latest() == v
    True
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import secrets
from collections.abc import Callable

MARKER = "_PUBLISHED"
VERSION_RE = re.compile(r"v\d{8}T\d{6}\d{0,6}Z-[0-9a-f]{6,}")


class RegistryError(ValueError):
    """A version name or model root is not acceptable; the message says why."""


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


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
        self, write: Callable[[str], None], *, metadata: dict | None = None, name: str | None = None
    ) -> str:
        """Write a new version with ``write(directory)``, then mark it published.

        Args:
            write: writes every file of the version into the directory it is given.
            metadata: small JSON stored in the marker (e.g. metrics, who published).
            name: the version name (default :meth:`new_version_name`).

        Returns:
            The published version name.

        Raises:
            RegistryError: if the name exists already (names are never reused).
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
        with fs.create(fs.join(directory, MARKER)) as f:
            f.write(json.dumps({"version": name, **(metadata or {})}, sort_keys=True).encode())
        return name

    def versions(self) -> list[str]:
        """Published version names, oldest first."""
        fs = _fs()
        pattern = fs.join(self.root, "*", MARKER)
        found = []
        for match in fs.match([pattern])[0].metadata_list:
            directory = fs.split(match.path)[0]
            name = fs.split(directory)[1]
            if VERSION_RE.fullmatch(name):
                found.append(name)
        return sorted(set(found))

    def latest(self) -> str | None:
        """The newest published version name, or None."""
        versions = self.versions()
        return versions[-1] if versions else None

    def marker(self, version: str) -> dict:
        """The JSON stored in a version's marker."""
        with _fs().open(_fs().join(self.path(version), MARKER)) as f:
            return json.loads(f.read().decode())

    def watch_pattern(self) -> str:
        """A file pattern matching the marker of every published version (for WatchFilePattern)."""
        return _fs().join(self.root, "*", MARKER)

"""Hot reload: which model version serves, and when it changes.

:class:`ModelWatcher` follows a model root: at most every ``interval_s`` seconds it lists the
published versions (:meth:`ae_pipeline.registry.ModelRegistry.versions`) and swaps to the
newest; a version that fails to load is logged and skipped, and the previous model keeps
serving. :class:`FixedModel` serves one version behind the same ``current()`` call, and
:func:`open_model` returns one or the other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ae_pipeline.registry import ModelRegistry
from ae_pipeline.serving import NoModelError, ServingModel

_log = logging.getLogger(__name__)

__all__ = ["FixedModel", "ModelWatcher", "open_model"]


class FixedModel:
    """One model version behind the same :meth:`current` call as a :class:`ModelWatcher`."""

    def __init__(self, model: ServingModel) -> None:
        self.model = model
        self.swaps = 1

    @property
    def version(self) -> str:
        return self.model.version

    def current(self) -> ServingModel:
        return self.model


class ModelWatcher:
    """Serves the newest published version under a model root, swapping when a new one appears.

    :meth:`current` returns the model to score with; at most every ``interval_s`` seconds it
    asks the registry for the newest version and loads it. A version that fails to load (bad
    checksum, truncated file, width mismatch...) is logged once and skipped: the previous model
    keeps serving. Thread-safe; one watcher can be shared by the threads of a process.

    Args:
        root: the model root the training job publishes to.
        interval_s: minimum seconds between two registry polls.
        loader: ``version_dir -> ServingModel`` (default :meth:`ServingModel.load` with
            ``load_kwargs``).
        clock: monotonic clock (for tests).
        **load_kwargs: passed to :meth:`ServingModel.load` (``device``, ``spec``...).
    """

    def __init__(
        self,
        root: str,
        *,
        interval_s: float = 30.0,
        loader: Callable[[str], ServingModel] | None = None,
        clock: Callable[[], float] = time.monotonic,
        **load_kwargs: Any,
    ) -> None:
        self.registry = ModelRegistry(root)
        self.interval_s = float(interval_s)
        self._loader = loader or (lambda d: ServingModel.load(d, **load_kwargs))
        self._clock = clock
        self._lock = threading.Lock()
        self._model: ServingModel | None = None
        self._last_poll: float | None = None
        self.failed: dict[str, str] = {}
        self.swaps = 0

    @property
    def version(self) -> str | None:
        """The version being served, or None before the first load."""
        return self._model.version if self._model is not None else None

    def _due(self) -> bool:
        return (
            self._model is None
            or self._last_poll is None
            or self._clock() - self._last_poll >= self.interval_s
        )

    def current(self) -> ServingModel:
        """The model to score with (polling the registry when ``interval_s`` has passed).

        While one thread polls and loads a new version, the others asking for the model wait
        for it: a version published at least ``interval_s`` before a call is always the one
        that call gets (unless it failed to load).

        Raises:
            NoModelError: nothing usable is published under the root yet.
        """
        if self._due():
            with self._lock:
                if self._due():
                    self._poll_locked()
        model = self._model
        if model is None:
            bad = f"; versions that failed to load: {self.failed}" if self.failed else ""
            raise NoModelError(f"no loadable model version under {self.registry.root}{bad}")
        return model

    def poll(self) -> bool:
        """Asks the registry for the newest version now; returns True if the model changed."""
        with self._lock:
            return self._poll_locked()

    def _poll_locked(self) -> bool:
        started = self._clock()
        try:
            return self._swap_to_newest()
        finally:
            self._last_poll = started

    def _swap_to_newest(self) -> bool:
        try:
            versions = self.registry.versions()
        except Exception as err:  # a flaky object store must not stop serving
            _log.warning("cannot list model versions under %s: %s", self.registry.root, err)
            return False
        current = self.version
        # The newest version that has not failed before and is newer than the current one.
        for version in reversed(versions):
            if current is not None and version <= current:
                return False
            if version in self.failed:
                continue
            path = self.registry.path(version)
            try:
                model = self._loader(path)
            except Exception as err:
                self.failed[version] = f"{type(err).__name__}: {err}"
                _log.error(
                    "model version %s failed to load; still serving %s: %s",
                    version,
                    current or "nothing",
                    err,
                )
                continue
            self._model = model
            self.swaps += 1
            _log.info("now serving model version %s (was %s)", version, current)
            return True
        return False


def open_model(
    *,
    version_dir: str | None = None,
    root: str | None = None,
    interval_s: float = 30.0,
    **load_kwargs: Any,
) -> FixedModel | ModelWatcher:
    """A model provider (``.current()`` returns the model to use): one fixed version
    directory, or a :class:`ModelWatcher` following the newest version under ``root``.

    Raises:
        ValueError: unless exactly one of ``version_dir`` and ``root`` is given.
        ArtifactError: the fixed version cannot be loaded.
    """
    if (version_dir is None) == (root is None):
        raise ValueError("give exactly one of a model version directory and a model root")
    if version_dir is not None:
        return FixedModel(ServingModel.load(version_dir, **load_kwargs))
    return ModelWatcher(root, interval_s=interval_s, **load_kwargs)  # type: ignore[arg-type]

"""Hot reload: which model version serves, and when it changes.

:class:`ModelWatcher` follows a model root and serves the newest version that can serve;
:class:`FixedModel` serves one version behind the same ``current()`` call, and
:func:`open_model` returns one or the other.

What the watcher guarantees:

* **Only a version that can serve is served.** Before a swap, a version must have a valid
  ``_PUBLISHED`` marker, no symbolic link or special file inside its directory, files no larger
  than recorded, matching checksums and safetensors weights, and pass
  :func:`ae_pipeline.artifact.check_servable` (what the mode needs: a finite threshold to
  ``flag``, the calibration histogram to ``explain``; finite weights; a sane scaler; the same
  features as the version being served unless ``allow_feature_change``). Anything else is
  refused: logged with its reason, counted in
  :attr:`ModelWatcher.refusals` by reason, and the current version keeps serving.
* **Newest by publish time.** Versions are ordered by the time their marker records
  (:class:`ae_pipeline.registry.Published`), not by name alone; one dated more than
  ``future_tolerance_s`` ahead of this clock is refused (reason ``future``) until its time
  comes.
* **A refused version is retried**, after ``retry_base_s``, then twice as long each time (up to
  ``retry_max_s``): a copy that landed its marker before its weights is served once complete.
* **Rollback.** When the version being served is removed (or unpublished), the watcher swaps to
  the newest remaining version that can serve, without a restart, and logs it.
* **Quiet topics.** With ``background=True`` a thread polls every ``interval_s`` whether or not
  records arrive; otherwise :meth:`ModelWatcher.current` polls when ``interval_s`` has passed.
  Every swap is logged.

Example:
    >>> import tempfile
    >>> from ae_pipeline.serving import NoModelError
    >>> watcher = open_model(root=tempfile.mkdtemp(), mode="flag", device="cpu")
    >>> type(watcher).__name__, watcher.version
    ('ModelWatcher', None)
    >>> try:  # nothing published under the root yet: ask again later
    ...     watcher.current()
    ... except NoModelError as err:
    ...     print(str(err).split(" under ")[0])
    no loadable model version
    >>> try:
    ...     open_model(mode="flag")
    ... except ValueError as err:
    ...     print(err)
    give exactly one of a model version directory and a model root
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ae_pipeline.artifact import (
    ArtifactError,
    LoadedArtifact,
    check_servable,
    features_of,
    verify_servable,
)
from ae_pipeline.registry import (
    FUTURE_TOLERANCE_S,
    ModelRegistry,
    Published,
    RegistryError,
)

# From the submodules, not the package: ``ae_pipeline.serving`` re-exports this module's names
# (lazily, by ``__getattr__``), and a package import here would make that a cycle.
from ae_pipeline.serving.errors import NoModelError
from ae_pipeline.serving.model import ServingModel
from ae_pipeline.serving.modes import OutputMode, get_mode

_log = logging.getLogger(__name__)

__all__ = ["FixedModel", "ModelWatcher", "check_model", "open_model"]

_MIN_BACKGROUND_INTERVAL_S = 0.05


def check_model(
    model: Any,
    *,
    mode: str | OutputMode | None = None,
    expect_features: list[str] | int | None = None,
) -> None:
    """:func:`~ae_pipeline.artifact.check_servable` on a loaded :class:`ServingModel` (its
    artifact, with the threshold it will really use). An object without a
    :class:`LoadedArtifact` in ``.artifact`` is not checked.

    Raises:
        ArtifactError: the model cannot serve; ``reason`` says why.
    """
    artifact = getattr(model, "artifact", None)
    if not isinstance(artifact, LoadedArtifact):
        return
    check_servable(
        artifact,
        needs=_needs(mode),
        expect_features=expect_features,
        threshold=getattr(model, "threshold", None),
    )


def _needs(mode: str | OutputMode | None) -> frozenset[str] | None:
    """What a version must have to serve ``mode`` (None: the mode is not known)."""
    return None if mode is None else get_mode(mode).needs


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    if isinstance(reason, str):
        return reason
    return "corrupt" if isinstance(err, ArtifactError) else "error"


class FixedModel:
    """One model version behind the same :meth:`current` call as a :class:`ModelWatcher`."""

    def __init__(self, model: ServingModel) -> None:
        self.model = model
        self.swaps = 1
        self.rollbacks = 0
        self.refusals: collections.Counter[str] = collections.Counter()
        self.failed: dict[str, str] = {}

    @property
    def version(self) -> str:
        return self.model.version

    def current(self) -> ServingModel:
        return self.model

    def poll(self) -> bool:
        """Nothing to poll: always False."""
        return False

    def close(self) -> None:
        """Nothing to stop."""


class _Retry:
    """When a refused version may be tried again (exponential backoff)."""

    __slots__ = ("attempts", "next_at")

    def __init__(self) -> None:
        self.attempts = 0
        self.next_at = 0.0


class ModelWatcher:
    """Serves the newest published version under a model root that can serve (see the module
    docstring for what it guarantees).

    :meth:`current` returns the model to score with. Thread-safe; one watcher can be shared by
    the threads of a process.

    Args:
        root: the model root the training job publishes to.
        interval_s: seconds between two registry polls.
        mode: the serving mode (a name or an :class:`~ae_pipeline.serving.modes.OutputMode`);
            versions without what it ``needs`` are refused (``flag``: a threshold,
            ``explain``: the calibration histogram). None: any present threshold must still
            be finite.
        allow_feature_change: serve a newer version whose features (column names or width)
            differ from the served one's; by default it is refused (reason ``features``).
        background: poll in a daemon thread every ``interval_s`` even when :meth:`current` is
            not called; :meth:`current` then never loads (except the very first model).
            Stop it with :meth:`close` (or use the watcher as a context manager).
        retry_base_s / retry_max_s: a refused version is retried after ``retry_base_s``, then
            twice as long each time, at most ``retry_max_s`` apart.
        future_tolerance_s: a version dated further ahead of the wall clock is refused
            (reason ``future``) until its time comes.
        loader: ``version_dir -> ServingModel`` (default :meth:`ServingModel.load` with
            ``load_kwargs``).
        clock: monotonic clock for polls and retries (for tests).
        wall_clock: UTC seconds since the epoch, against which publish times are compared.
        **load_kwargs: passed to :meth:`ServingModel.load` (``device``, ``spec``...).

    Attributes:
        refusals: refused attempts by reason (:data:`ae_pipeline.artifact.REFUSAL_REASONS`),
            for metrics: each refused load counts once, a version dated in the future once.
        failed: ``version -> "reason: message"`` of the versions refused and not (yet) served.
        swaps: how many times the served version changed (the first load included).
        rollbacks: swaps to an older version because the served one disappeared.
    """

    def __init__(
        self,
        root: str,
        *,
        interval_s: float = 30.0,
        mode: str | OutputMode | None = None,
        allow_feature_change: bool = False,
        background: bool = False,
        retry_base_s: float = 60.0,
        retry_max_s: float = 3600.0,
        future_tolerance_s: float = FUTURE_TOLERANCE_S,
        loader: Callable[[str], ServingModel] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **load_kwargs: Any,
    ) -> None:
        self.registry = ModelRegistry(root)
        self.interval_s = float(interval_s)
        self.mode = None if mode is None else get_mode(mode)
        self.allow_feature_change = allow_feature_change
        self.retry_base_s = float(retry_base_s)
        self.retry_max_s = float(retry_max_s)
        self.future_tolerance_s = float(future_tolerance_s)
        self._loader = loader or (lambda d: ServingModel.load(d, **load_kwargs))
        self._threshold = load_kwargs.get("threshold")
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._model: ServingModel | None = None
        self._serving: Published | None = None
        self._features: list[str] | int | None = None
        self._last_poll: float | None = None
        self._entries: dict[str, Published] = {}
        self._retries: dict[str, _Retry] = {}
        self._orphaned = False
        self.failed: dict[str, str] = {}
        self.refusals: collections.Counter[str] = collections.Counter()
        self.swaps = 0
        self.rollbacks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._run, name=f"ModelWatcher({root})", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ public

    @property
    def version(self) -> str | None:
        """The version being served, or None before the first load."""
        return self._model.version if self._model is not None else None

    @property
    def background(self) -> bool:
        """Whether a background thread polls the registry."""
        return self._thread is not None

    def current(self) -> ServingModel:
        """The model to score with.

        Without a background thread it polls the registry when ``interval_s`` has passed;
        while one thread polls and loads a new version, the others asking for the model wait
        for it: a version published at least ``interval_s`` before a call is the one that call
        gets (unless it is refused). With one, only the first call (no model yet) loads.

        Raises:
            NoModelError: no version that can serve is published under the root yet.
        """
        if self._due():
            with self._lock:
                if self._due():
                    self._poll_locked()
        model = self._model
        if model is None:
            bad = f"; versions refused: {self.failed}" if self.failed else ""
            raise NoModelError(f"no loadable model version under {self.registry.root}{bad}")
        return model

    def poll(self) -> bool:
        """Asks the registry for the newest version now; returns True if the model changed."""
        with self._lock:
            return self._poll_locked()

    def close(self) -> None:
        """Stops the background thread (if any); the served model stays usable."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self.interval_s))

    def __enter__(self) -> ModelWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ polling

    def _due(self) -> bool:
        if self._model is None:
            return True
        if self._thread is not None:
            return False
        return self._last_poll is None or self._clock() - self._last_poll >= self.interval_s

    def _run(self) -> None:
        wait = max(self.interval_s, _MIN_BACKGROUND_INTERVAL_S)
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # never let the thread die: the next poll may succeed
                _log.exception("polling model versions under %s failed", self.registry.root)
            self._stop.wait(wait)

    def _poll_locked(self) -> bool:
        started = self._clock()
        try:
            return self._swap_to_newest()
        finally:
            self._last_poll = started

    def _swap_to_newest(self) -> bool:
        try:
            names = self.registry.versions()
        except Exception as err:  # a flaky object store must not stop serving
            _log.warning("cannot list model versions under %s: %s", self.registry.root, err)
            return False
        listed = set(names)
        for gone in (set(self._entries) | set(self.failed) | set(self._retries)) - listed:
            self._entries.pop(gone, None)
            self.failed.pop(gone, None)
            self._retries.pop(gone, None)
        entries = sorted(self._published(names), key=lambda e: e.order, reverse=True)
        serving = self._serving
        orphaned = serving is not None and serving.name not in listed
        for entry in entries:
            if serving is not None and not orphaned and entry.order <= serving.order:
                break
            if self._waiting(entry.name):
                continue
            if self._try(entry, rollback=orphaned):
                self._orphaned = False
                return True
        if orphaned and not self._orphaned:
            self._orphaned = True
            _log.error(
                "model version %s was removed from %s and no other version can serve; "
                "still serving it from memory",
                serving.name,  # type: ignore[union-attr]
                self.registry.root,
            )
        return False

    def _published(self, names: list[str]) -> list[Published]:
        """The entries of listed versions whose marker is valid and whose time has come."""
        horizon = self._wall_clock() + self.future_tolerance_s
        found = []
        for name in names:
            entry = self._entries.get(name)
            if entry is None:
                if self._waiting(name):
                    continue
                try:
                    entry = self.registry.entry(name)
                except RegistryError as err:
                    self._refuse(name, err)
                    continue
                self._entries[name] = entry
            if entry.published_at.timestamp() > horizon:
                if name not in self.failed:
                    self.failed[name] = f"future: published_at {entry.published_at.isoformat()}"
                    self.refusals["future"] += 1
                    _log.error(
                        "model version %s is dated %s, more than %.0fs ahead of this clock; "
                        "not serving it before then (still serving %s)",
                        name,
                        entry.published_at.isoformat(),
                        self.future_tolerance_s,
                        self.version or "nothing",
                    )
                continue
            found.append(entry)
        return found

    def _waiting(self, name: str) -> bool:
        retry = self._retries.get(name)
        return retry is not None and self._clock() < retry.next_at

    def _try(self, entry: Published, *, rollback: bool) -> bool:
        """Checks ``entry`` (:func:`~ae_pipeline.artifact.verify_servable`, on the CPU, so that
        the loader, whatever it is, gets only a version that can serve), loads it, swaps to it
        and returns True; or refuses it."""
        expect = None if self.allow_feature_change else self._features
        path = self.registry.path(entry.name)
        try:
            checked = verify_servable(
                path, needs=_needs(self.mode), expect_features=expect, threshold=self._threshold
            )
            model = self._loader(path)
        except Exception as err:
            self._refuse(entry.name, err)
            return False
        previous = self.version
        self._model, self._serving = model, entry
        self._features = features_of(checked)
        self._retries.pop(entry.name, None)
        self.failed.pop(entry.name, None)
        self.swaps += 1
        if rollback:
            self.rollbacks += 1
            _log.warning(
                "model version %s was removed from %s; rolled back to %s",
                previous,
                self.registry.root,
                entry.name,
            )
        else:
            _log.info("now serving model version %s (was %s)", entry.name, previous)
        return True

    def _refuse(self, name: str, err: BaseException) -> None:
        reason = _reason(err)
        retry = self._retries.setdefault(name, _Retry())
        retry.attempts += 1
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** (retry.attempts - 1))
        retry.next_at = self._clock() + delay
        self.failed[name] = f"{reason}: {err}"
        self.refusals[reason] += 1
        level = logging.ERROR if retry.attempts == 1 else logging.WARNING
        _log.log(
            level,
            "model version %s refused (%s, attempt %d; retrying in %.0fs); still serving %s: %s",
            name,
            reason,
            retry.attempts,
            delay,
            self.version or "nothing",
            err,
        )


def open_model(
    *,
    version_dir: str | None = None,
    root: str | None = None,
    interval_s: float = 30.0,
    mode: str | OutputMode | None = None,
    background: bool = False,
    allow_feature_change: bool = False,
    **load_kwargs: Any,
) -> FixedModel | ModelWatcher:
    """A model provider (``.current()`` returns the model to use): one fixed version
    directory, or a :class:`ModelWatcher` following the newest version under ``root``.

    Args:
        mode: the serving mode; a fixed version that cannot serve in it is refused here, and a
            watcher refuses such versions (see :class:`ModelWatcher`).
        background / allow_feature_change: see :class:`ModelWatcher` (ignored for a fixed
            version).

    Raises:
        ValueError: unless exactly one of ``version_dir`` and ``root`` is given.
        ArtifactError: the fixed version cannot be loaded or cannot serve in ``mode``.
    """
    if (version_dir is None) == (root is None):
        raise ValueError("give exactly one of a model version directory and a model root")
    if version_dir is not None:
        model = ServingModel.load(version_dir, **load_kwargs)
        check_model(model, mode=mode)
        return FixedModel(model)
    return ModelWatcher(
        root,  # type: ignore[arg-type]
        interval_s=interval_s,
        mode=mode,
        background=background,
        allow_feature_change=allow_feature_change,
        **load_kwargs,
    )

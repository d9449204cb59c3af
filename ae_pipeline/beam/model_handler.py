"""A RunInference ``ModelHandler`` for ae-pipeline model artifacts.

:class:`AutoencoderModelHandler` loads a version directory with
:meth:`ae_pipeline.serving.ServingModel.load` (safetensors, checksums verified; never pickle),
on the GPU when the worker has one (``device="auto"``). Its examples are numpy ``N x D`` blocks
of features in original units (a single ``D`` vector is a block of one): Beam's per-element
overhead dominates a small model, so batch early and feed blocks. ``BatchElements`` then groups
blocks (``min_batch_size`` / ``max_batch_size`` count blocks), :meth:`run_inference` scores
them in one pass, and each block gets one ``PredictionResult`` whose ``inference`` is

* ``encode``: the ``N x L`` latent codes;
* ``denoise``: the ``N x D`` reconstruction in original units;
* ``flag``: a dict of ``score`` (N), ``is_anomaly`` (N), ``contributions`` (N x D) and
  ``threshold``;
* ``explain``: a dict of ``score`` (N), ``rank`` (N) and ``feature_errors`` (N x D);
* any other :class:`~ae_pipeline.serving.modes.OutputMode`: its one array, or the dict of its
  arrays (:meth:`OutputMode.compute`);

and whose ``model_id`` is the model's version name.

Model updates: ``update_model_path`` accepts a version directory or a ``…/<version>/_PUBLISHED``
marker path, so RunInference's model-update side input works with
``WatchFilePattern(file_pattern=ModelRegistry(root).watch_pattern())`` on runners that support
it (Dataflow, Flink). A new version that fails verification is logged and refused; the handler
keeps loading the previous one. Beam 2.62's ``WatchFilePattern`` does not run on Prism (its
``PeriodicImpulse`` expands to a ``pickled_python`` ``MaybeReshuffle`` and it uses a repeated
processing-time trigger, both unimplemented in Prism 2.62); there, and on every runner, the
transforms of :mod:`ae_pipeline.beam.transforms` follow a registry root by polling it instead.

Example:
    >>> root = "gs://bucket/models"
    >>> handler = AutoencoderModelHandler.from_registry(root, mode="flag")  # doctest: +SKIP
    >>> preds = blocks | RunInference(                                  # doctest: +SKIP
    ...     handler, watch_model_pattern=ModelRegistry(root).watch_pattern(), interval=60)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from ae_pipeline.artifact import verify_artifact
from ae_pipeline.features import FeatureSpec
from ae_pipeline.hot_reload import check_model
from ae_pipeline.registry import MARKER, ModelRegistry, version_of_marker
from ae_pipeline.serving import OutputMode, ServingModel, get_mode

_log = logging.getLogger(__name__)

NAMESPACE = "ae_pipeline.inference"


def _version_dir(path: str) -> str:
    """A version directory from a version directory or a ``…/_PUBLISHED`` marker path."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.split(path.rstrip("/"))[1] == MARKER:
        return version_of_marker(path)
    return path.rstrip("/")


class AutoencoderModelHandler(ModelHandler[np.ndarray, PredictionResult, ServingModel]):
    """RunInference handler: numpy ``N x D`` blocks in, one ``PredictionResult`` per block out.

    Args:
        model_path: a version directory (or its ``_PUBLISHED`` marker path).
        mode: an output mode by name (``"encode"``, ``"denoise"``, ``"flag"``, ``"explain"``)
            or an :class:`~ae_pipeline.serving.modes.OutputMode`; a version that cannot
            serve it (``flag`` without a threshold) is refused when it is loaded.
        device: ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        min_batch_size: fewest blocks ``BatchElements`` groups into one inference call.
        max_batch_size: most blocks per inference call.
        max_batch_duration_secs: with a value, batch across bundles (stateful, streaming).
        spec: a :class:`FeatureSpec` (or dict) the blocks' columns follow; refused at load if
            it does not fit the model.
        threshold: overrides the calibrated threshold.
        inference_batch_size: rows per forward pass.
        env_vars: environment variables set before loading (Beam convention).
        large_model: share one model between the worker's processes.
        torch_threads: torch's intra-op CPU threads in each worker thread that scores
            (None: torch's default).
    """

    def __init__(
        self,
        model_path: str,
        *,
        mode: str | OutputMode = "flag",
        device: str = "auto",
        min_batch_size: int = 1,
        max_batch_size: int = 64,
        max_batch_duration_secs: float | None = None,
        spec: FeatureSpec | Mapping[str, Any] | None = None,
        threshold: float | None = None,
        inference_batch_size: int = 8192,
        env_vars: Mapping[str, str] | None = None,
        large_model: bool = False,
        torch_threads: int | None = None,
    ) -> None:
        super().__init__()
        self._env_vars = dict(env_vars or {})
        self._model_path = _version_dir(model_path)
        self._mode = get_mode(mode)
        self._device = device
        self._spec = spec.to_dict() if isinstance(spec, FeatureSpec) else spec
        self._threshold = threshold
        self._inference_batch_size = inference_batch_size
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"need 1 <= min_batch_size <= max_batch_size, got {min_batch_size}, "
                f"{max_batch_size}"
            )
        self._batching: dict[str, Any] = {
            "min_batch_size": min_batch_size,
            "max_batch_size": max_batch_size,
        }
        if max_batch_duration_secs is not None:
            self._batching["max_batch_duration_secs"] = max_batch_duration_secs
        self._large_model = large_model
        self._torch_threads = torch_threads
        self._checked: dict[str, bool] = {}

    @classmethod
    def from_registry(cls, root: str, **kwargs: Any) -> AutoencoderModelHandler:
        """A handler starting from the newest version published under ``root``.

        Raises:
            ValueError: when nothing is published under ``root``.
        """
        registry = ModelRegistry(root)
        latest = registry.latest()
        if latest is None:
            raise ValueError(f"no model version is published under {root}")
        return cls(registry.path(latest), **kwargs)

    @property
    def model_path(self) -> str:
        """The version directory :meth:`load_model` loads."""
        return self._model_path

    def load_model(self) -> ServingModel:
        """Loads and verifies the current version directory; refuses one that cannot serve
        the handler's mode (:func:`~ae_pipeline.hot_reload.check_model`)."""
        model = ServingModel.load(
            self._model_path,
            device=self._device,
            spec=FeatureSpec.from_dict(self._spec) if self._spec is not None else None,
            threshold=self._threshold,
            batch_size=self._inference_batch_size,
            top_k=None,
            torch_threads=self._torch_threads,
        )
        check_model(model, mode=self._mode)
        return model

    def update_model_path(self, model_path: str | None = None) -> None:
        """Switch to a new version (a directory or a ``_PUBLISHED`` marker path).

        An empty path (what ``WatchFilePattern`` sends before any new version appears) keeps
        the current one. A version that fails verification is logged and ignored, so that
        RunInference reloads the previous version instead of failing every bundle.
        """
        if not model_path:
            return
        try:
            path = _version_dir(model_path)
        except ValueError as err:
            _log.error("ignoring model update %r: %s", model_path, err)
            return
        if path == self._model_path:
            return
        ok = self._checked.get(path)
        if ok is None:
            try:
                verify_artifact(path)
                ok = True
            except Exception as err:
                _log.error(
                    "model version %s failed verification; keeping %s: %s",
                    path,
                    self._model_path,
                    err,
                )
                ok = False
            self._checked[path] = ok
        if ok:
            _log.info("model update: %s -> %s", self._model_path, path)
            self._model_path = path

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: ServingModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Scores every block of ``batch`` in one pass; one ``PredictionResult`` per block."""
        blocks = [np.asarray(b, dtype=np.float32) for b in batch]
        rows = [b.reshape(1, -1) if b.ndim == 1 else b for b in blocks]
        if not rows:
            return []
        scores = model.score_matrix(np.concatenate(rows) if len(rows) > 1 else rows[0], self._mode)
        results = []
        start = 0
        for block, r in zip(blocks, rows, strict=True):
            stop = start + len(r)
            part = {k: v[start:stop] for k, v in scores.items()}
            if block.ndim == 1:
                part = {k: v[0] for k, v in part.items()}
            if len(part) == 1:  # encode, denoise: the one array itself
                (inference,) = part.values()
            else:
                inference = dict(part)
                if self._mode.flags:
                    inference["threshold"] = model.threshold
            results.append(PredictionResult(block, inference, model.version))
            start = stop
        return results

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        """Bytes of the blocks (``nbytes``; not Beam's default of pickling the batch)."""
        return sum(getattr(b, "nbytes", 0) for b in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return dict(self._batching)

    def share_model_across_processes(self) -> bool:
        return self._large_model

    def __repr__(self) -> str:
        return f"AutoencoderModelHandler({self._model_path!r}, mode={self._mode.name!r})"


__all__ = ["NAMESPACE", "AutoencoderModelHandler"]

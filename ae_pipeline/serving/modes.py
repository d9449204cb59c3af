"""Output modes as objects: what a mode computes from a block of records and what its results hold.

A mode is one class behind a small protocol (as Beam's ``ThresholdFn`` / ``FixedThreshold`` are):

* ``name``: how users pick it (``--mode flag``) and how it travels (pickled Beam DoFns carry
  the object; the scoring child process gets the name);
* ``fields``: the result fields it adds to ``key``, ``model_version`` and the Kafka coordinates;
* ``needs``: what a model version must have to serve it, in the artifact's words
  (``"threshold"``, ``"calibration"``: see :func:`ae_pipeline.artifact.check_servable`);
* ``flags``: whether its results carry ``is_anomaly`` (counted as anomalies in metrics);
* :meth:`OutputMode.compute`: the mode's arrays from a block of scaled features;
* :meth:`OutputMode.results`: one JSON-ready dict per record from those arrays.

Transforms, the RunInference handler, the consumer, the scoring process and the CLI read these
properties, never a mode's name. Adding a mode is one subclass and :func:`register_mode`.

Example:
    >>> flag = get_mode("flag")
    >>> flag.name, flag.flags, sorted(flag.needs)
    ('flag', True, ['threshold'])
    >>> get_mode(flag) is flag
    True
    >>> mode_names()
    ('encode', 'denoise', 'flag', 'explain')
    >>> try:
    ...     get_mode("flgg")
    ... except ServingError as err:
    ...     print(err)
    mode 'flgg' is not one of encode, denoise, flag, explain (did you mean 'flag'?)
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ae_pipeline.serving.errors import ServingError

if TYPE_CHECKING:  # pragma: no cover
    from ae_pipeline.serving.model import ServingModel

# Fields every result may carry (a passthrough field may not reuse one, nor a mode's field).
_BASE_FIELDS = ("key", "model_version", "topic", "partition", "offset", "timestamp_ms")


class OutputMode:
    """One output mode. Subclass it, set the class attributes, implement :meth:`compute` and
    :meth:`results`, and :func:`register_mode` an instance.

    Instances compare equal by class and name, so a mode pickled into a Beam worker is the
    same mode there.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # what its results hold, in a few words (CLI help)
    fields: ClassVar[tuple[str, ...]]
    needs: ClassVar[frozenset[str]] = frozenset()
    flags: ClassVar[bool] = False

    def compute(self, model: ServingModel, scaled: np.ndarray) -> dict[str, np.ndarray]:
        """The mode's arrays for an ``N x D`` block of scaled features (one row per record).

        Raises:
            ServingError: the model cannot serve this mode (not the records' fault).
        """
        raise NotImplementedError

    def results(
        self,
        model: ServingModel,
        keys: Sequence[Any],
        extras: Sequence[Mapping[str, Any]] | None,
        arrays: Mapping[str, np.ndarray],
    ) -> list[dict[str, Any]]:
        """One result per row of ``arrays``: ``{"key", "model_version", **extra, <fields>}``.

        ``extras`` holds each record's Kafka coordinates and passthrough fields, or is None
        when no record has any (the hot path of bare records: build the dicts without them).
        """
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.name))

    def __repr__(self) -> str:
        return f"<output mode {self.name!r}>"

    def __str__(self) -> str:
        return self.name


_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})


def _rows(extras: Sequence[Mapping[str, Any]] | None, n: int) -> Sequence[Mapping[str, Any]]:
    return extras if extras is not None else [_NO_FIELDS] * n


def _by_feature(model: ServingModel, rows: list[list[float]]) -> list[Any]:
    """Per-feature values keyed by feature name (a list when the features have no names)."""
    names = model.feature_names
    return [dict(zip(names, r, strict=True)) for r in rows] if names else rows


class Encode(OutputMode):
    """``latent``: the record's code (list of floats)."""

    name = "encode"
    summary = "latent vectors"
    fields = ("latent",)

    def compute(self, model: ServingModel, scaled: np.ndarray) -> dict[str, np.ndarray]:
        return {"latent": model.scorer.encode(scaled)}

    def results(self, model, keys, extras, arrays):
        version = model.version
        rows = zip(keys, _rows(extras, len(keys)), arrays["latent"].tolist(), strict=True)
        return [{"key": k, "model_version": version, **e, "latent": z} for k, e, z in rows]


class Denoise(OutputMode):
    """``reconstruction``: the record as the model rebuilds it, in original units (the scaler
    inverted), keyed by feature name (a list without names)."""

    name = "denoise"
    summary = "reconstructions in original units"
    fields = ("reconstruction",)

    def compute(self, model: ServingModel, scaled: np.ndarray) -> dict[str, np.ndarray]:
        return {"reconstruction": model.scaler.inverse(model.scorer.reconstruct(scaled))}

    def results(self, model, keys, extras, arrays):
        version = model.version
        values = _by_feature(model, arrays["reconstruction"].tolist())
        rows = zip(keys, _rows(extras, len(keys)), values, strict=True)
        return [{"key": k, "model_version": version, **e, "reconstruction": r} for k, e, r in rows]


class Flag(OutputMode):
    """``score`` (the version's anomaly score: its
    :class:`~ae_pipeline.models.score_function.ScoreFunction` of the scaled record, the mean
    squared reconstruction error for versions without one), ``threshold``, ``is_anomaly``
    (``score > threshold``) and ``contributions`` (the ``top_k`` largest per-feature squared
    errors, largest first)."""

    name = "flag"
    summary = "score, threshold, is_anomaly, per-feature contributions"
    fields = ("score", "threshold", "is_anomaly", "contributions")
    needs = frozenset({"threshold"})
    flags = True

    def compute(self, model: ServingModel, scaled: np.ndarray) -> dict[str, np.ndarray]:
        if model.threshold is None:
            raise ServingError(
                f"model {model.version} has no calibrated threshold; pass threshold=... to flag"
            )
        result = model.scorer.score(scaled, latent=False, reconstruction=False)
        return {
            "score": result.score,
            "is_anomaly": result.score > model.threshold,
            "contributions": result.contributions,
        }

    def results(self, model, keys, extras, arrays):
        version = model.version
        threshold = float(model.threshold)  # type: ignore[arg-type]
        columns = (
            arrays["score"].tolist(),
            arrays["is_anomaly"].tolist(),
            *model.top_contributions(arrays["contributions"]),
        )
        # One dict display per result (sized once): the hot path of every scoring step.
        if extras is None:  # bare records: the same dicts without merging empty extras
            return [
                {
                    "key": k,
                    "model_version": version,
                    "score": s,
                    "threshold": threshold,
                    "is_anomaly": a,
                    "contributions": dict(zip(n, c)),  # noqa: B905 (equal by construction)
                }
                for k, s, a, n, c in zip(keys, *columns, strict=True)
            ]
        return [
            {
                "key": k,
                "model_version": version,
                **e,
                "score": s,
                "threshold": threshold,
                "is_anomaly": a,
                "contributions": dict(zip(n, c)),  # noqa: B905 (equal by construction)
            }
            for k, e, s, a, n, c in zip(keys, extras, *columns, strict=True)
        ]


class Explain(OutputMode):
    """Why a record scores as it does: ``score`` (as ``flag``), ``rank`` (the fraction of the
    calibration records that scored at or below it, from the histogram kept with the model: 0.5
    is a typical record, 1.0 beyond every one) and ``feature_errors`` (every feature's squared
    error, keyed by feature name; a list without names). Needs no threshold."""

    name = "explain"
    summary = "score, its rank among the calibration scores, every feature's squared error"
    fields = ("score", "rank", "feature_errors")
    needs = frozenset({"calibration"})

    def compute(self, model: ServingModel, scaled: np.ndarray) -> dict[str, np.ndarray]:
        ranks = model.score_ranks
        if ranks is None:
            raise ServingError(
                f"model {model.version} keeps no calibration histogram; train it with a "
                "validation split to explain its scores"
            )
        result = model.scorer.score(scaled, latent=False, reconstruction=False)
        return {
            "score": result.score,
            "rank": ranks.rank(result.score),
            "feature_errors": result.contributions,
        }

    def results(self, model, keys, extras, arrays):
        version = model.version
        errors = _by_feature(model, arrays["feature_errors"].tolist())
        rows = zip(
            keys,
            _rows(extras, len(keys)),
            arrays["score"].tolist(),
            arrays["rank"].tolist(),
            errors,
            strict=True,
        )
        return [
            {"key": k, "model_version": version, **e, "score": s, "rank": r, "feature_errors": f}
            for k, e, s, r, f in rows
        ]


_REGISTRY: dict[str, OutputMode] = {}


def register_mode(mode: OutputMode) -> OutputMode:
    """Makes ``mode`` selectable by its name everywhere (CLI choices, ``mode="..."``).

    Register at import time of the module that defines the mode, so Beam workers and the
    scoring child process, which import that module, know it too.

    Raises:
        ValueError: the name is taken by another mode, or a field is one of every result's.
    """
    if not isinstance(mode, OutputMode):
        raise ValueError(f"an output mode must be an OutputMode instance, got {mode!r}")
    taken = _REGISTRY.get(mode.name)
    if taken is not None and taken != mode:
        raise ValueError(f"output mode name {mode.name!r} is taken by {taken!r}")
    clash = set(mode.fields) & set(_BASE_FIELDS)
    if clash:
        raise ValueError(f"output mode {mode.name!r} reuses base result fields {sorted(clash)}")
    _REGISTRY[mode.name] = mode
    return mode


for _mode in (Encode(), Denoise(), Flag(), Explain()):
    register_mode(_mode)

MODES = tuple(_REGISTRY)
"""The names of the built-in modes (:func:`mode_names` includes modes registered later)."""


def mode_names() -> tuple[str, ...]:
    """Every registered mode's name, built-in ones first."""
    return tuple(_REGISTRY)


def describe_modes() -> str:
    """One line for ``--help``: each registered mode's name and what its results hold."""
    return "; ".join(f"{m.name}: {m.summary}" for m in _REGISTRY.values())


def get_mode(mode: str | OutputMode) -> OutputMode:
    """The registered mode named ``mode`` (a mode object is returned as it is).

    Raises:
        ServingError: no mode has that name (the closest name is suggested).
    """
    if isinstance(mode, OutputMode):
        return mode
    found = _REGISTRY.get(mode) if isinstance(mode, str) else None
    if found is None:
        names = mode_names()
        close = difflib.get_close_matches(str(mode), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ServingError(f"mode {mode!r} is not one of {', '.join(names)}{hint}")
    return found


def check_mode(mode: str | OutputMode) -> str:
    """The name of a registered mode (see :func:`get_mode`)."""
    return get_mode(mode).name


def result_fields(mode: str | OutputMode) -> tuple[str, ...]:
    """The fields a result of ``mode`` may carry (besides passed-through ones)."""
    return _BASE_FIELDS + get_mode(mode).fields


def check_passthrough(fields: Iterable[str], mode: str | OutputMode) -> tuple[str, ...]:
    """Refuses passthrough fields that would overwrite a result's own field.

    A passed-through ``offset`` would replace the record's real offset (and ``key`` the
    message key, ``model_version`` the version header): call this before any work starts.

    Returns:
        The fields, as a tuple.

    Raises:
        ServingError: naming the first field that is empty, repeated, or the name of a result
            field of ``mode`` (:func:`result_fields`).
    """
    fields = tuple(fields)
    mode = get_mode(mode)
    taken = result_fields(mode)
    seen: set[str] = set()
    for name in fields:
        if not isinstance(name, str) or not name:
            raise ServingError(f"passthrough field names must be non-empty text, got {name!r}")
        if name in taken:
            raise ServingError(
                f"passthrough field {name!r} would overwrite the result field of that name "
                f"(a {mode.name} result has {', '.join(taken)}); pass through other fields"
            )
        if name in seen:
            raise ServingError(f"passthrough field {name!r} is given twice")
        seen.add(name)
    return fields


_checked_passthrough = functools.lru_cache(maxsize=256)(check_passthrough)

__all__ = [
    "MODES",
    "Denoise",
    "Encode",
    "Explain",
    "Flag",
    "OutputMode",
    "check_mode",
    "check_passthrough",
    "describe_modes",
    "get_mode",
    "mode_names",
    "register_mode",
    "result_fields",
]

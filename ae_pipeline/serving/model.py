"""The model as it serves: :class:`ServingModel` loads a published version and scores
records in every mode.

Size (about 500 lines): one class, the scoring path with its batch fallback and message
bounds; the modes, inputs and message format are modules of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ae_pipeline.artifact import ArtifactError, LoadedArtifact, load_artifact
from ae_pipeline.calibration import ScoreRanks
from ae_pipeline.features import (
    INTERNAL,
    NON_FINITE,
    DecodedBatch,
    FeatureSpec,
    RecordError,
    Scaler,
    decode_records,
    internal_detail,
)
from ae_pipeline.registry import MARKER, version_of_marker
from ae_pipeline.serving.errors import ServingError
from ae_pipeline.serving.inputs import _coordinates, _dead_letter, _json_safe, _key_text, as_inputs
from ae_pipeline.serving.messages import (
    _IS_ANOMALY,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MESSAGE_KEY,
    ScoredMessages,
    _raw_key,
    _serialise,
    check_max_message_bytes,
    check_message_key,
)
from ae_pipeline.serving.modes import OutputMode, _checked_passthrough, get_mode
from ae_pipeline.serving.threads import _torch_threads_here, set_torch_threads

_log = logging.getLogger(__name__)


def _drop_unscalable(batch: DecodedBatch, scaler: Scaler) -> DecodedBatch:
    """Moves records whose features overflow float32 once scaled (finite, but near the limit)
    to the errors as ``non_finite``: the model would score them NaN and never flag them."""
    if not len(batch.matrix):
        return batch
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.isfinite(scaler.transform(batch.matrix)).all(axis=1)
    if ok.all():
        return batch
    errors = list(batch.errors)
    for row in np.flatnonzero(~ok):
        detail = "a feature overflows float32 after scaling (value too extreme)"
        errors.append(RecordError(batch.index[row], NON_FINITE, detail))
    errors.sort(key=lambda e: e.index)
    keep = [bool(k) for k in ok]

    def kept(items: list) -> list:
        return [x for x, k in zip(items, keep, strict=True) if k]

    return DecodedBatch(
        batch.matrix[ok], kept(batch.index), kept(batch.keys), errors, kept(batch.records)
    )


def _score_ranks(artifact: LoadedArtifact) -> ScoreRanks | None:
    """The version's calibration histogram as :class:`ScoreRanks` (None without a usable one;
    :func:`~ae_pipeline.artifact.check_servable` refuses it where a mode needs it)."""
    histogram = (artifact.threshold or {}).get("histogram")
    try:
        return ScoreRanks(histogram) if histogram is not None else None
    except ValueError:
        return None


def version_name(version_dir: str) -> str:
    """The version name of a version directory: its last path component (local paths and
    ``gs://`` / ``s3://`` URLs alike)."""
    return version_dir.rstrip("/").rsplit("/", 1)[-1]


class ServingModel:
    """One model version, ready to score records.

    Build it with :meth:`load`.

    Attributes:
        artifact: the verified artifact.
        spec: how records carry the features.
        scaler: the feature scaler (identity when the artifact has none).
        threshold: the anomaly threshold (``None`` when not calibrated; ``flag`` is refused).
        version: the version name (last component of the directory).
        path: the version directory.
        top_k: number of per-feature contributions a ``flag`` result carries (``None``: all).
    """

    def __init__(
        self,
        artifact: LoadedArtifact,
        spec: FeatureSpec,
        scaler: Scaler,
        threshold: float | None,
        *,
        version: str,
        batch_size: int = 8192,
        top_k: int | None = 5,
        torch_threads: int | None = None,
    ) -> None:
        self.artifact = artifact
        self.torch_threads = torch_threads or None
        self.spec = spec
        self.scaler = scaler
        self.threshold = threshold
        self.version = version
        self.path = artifact.path
        self.top_k = top_k
        self.scorer = artifact.scorer(batch_size=batch_size)
        self.input_dim = artifact.input_dim
        self.feature_names: list[str] | None = list(spec.columns) or None
        self._names_array: np.ndarray | None = None  # feature names as objects (contributions)
        self.score_ranks = _score_ranks(artifact)

    @classmethod
    def load(
        cls,
        version_dir: str,
        *,
        device: str = "auto",
        spec: FeatureSpec | None = None,
        threshold: float | None = None,
        batch_size: int = 8192,
        top_k: int | None = 5,
        torch_threads: int | None = None,
    ) -> ServingModel:
        """Loads and verifies a version directory (checksums, safetensors, shapes).

        Args:
            version_dir: the version directory (a ``…/_PUBLISHED`` marker path is accepted too).
            device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            spec: how records carry the features; default: the spec saved with the model
                (``extra.feature_spec``), else its ``feature_columns``. A spec whose width or
                columns differ from the model's is refused.
            threshold: override the calibrated threshold.
            batch_size: rows per forward pass.
            top_k: per-feature contributions kept in ``flag`` results (``None``: all).
            torch_threads: torch's intra-op CPU threads, in every thread that scores with
                this model (see :func:`set_torch_threads`); ``None`` or 0 keeps torch's default.

        Raises:
            ArtifactError: the artifact is missing, corrupt or unsafe, or the spec does not fit.
        """
        set_torch_threads(torch_threads)
        if version_name(version_dir) == MARKER:
            version_dir = version_of_marker(version_dir.rstrip("/"))
        artifact = load_artifact(version_dir, device=device)
        saved = (artifact.meta.get("extra") or {}).get("feature_spec")
        if spec is None:
            if saved is not None:
                spec = FeatureSpec.from_dict(saved)
            elif artifact.feature_columns:
                spec = FeatureSpec(columns=list(artifact.feature_columns))
            else:
                spec = FeatureSpec(width=artifact.input_dim)
        try:
            dim = spec.dim
        except ValueError as err:
            raise ArtifactError(f"{version_dir}: {err}") from None
        artifact.check_input(expected_input_dim=dim, feature_columns=list(spec.columns) or None)
        if artifact.scaler is None:
            scaler = Scaler.identity(dim)
        else:
            try:
                scaler = Scaler.from_dict(artifact.scaler)
            except (ValueError, KeyError, TypeError) as err:
                raise ArtifactError(f"{version_dir}: invalid scaler: {err}") from None
            if scaler.offset.shape[0] != dim:
                raise ArtifactError(
                    f"{version_dir}: the scaler has {scaler.offset.shape[0]} features, "
                    f"the model takes {dim}"
                )
        if threshold is None and artifact.threshold is not None:
            try:
                threshold = float(artifact.threshold["value"])
            except (KeyError, TypeError, ValueError) as err:
                raise ArtifactError(f"{version_dir}: invalid threshold: {err}") from None
        return cls(
            artifact,
            spec,
            scaler,
            threshold,
            version=version_name(version_dir),
            batch_size=batch_size,
            top_k=top_k,
            torch_threads=torch_threads,
        )

    # ------------------------------------------------------------------ matrices

    def score_matrix(self, x: np.ndarray, mode: str | OutputMode) -> dict[str, np.ndarray]:
        """Scores an ``N x D`` block of features in original units.

        Returns:
            the mode's arrays (:meth:`OutputMode.compute`), e.g. ``encode``:
            ``{"latent": N x L}``; ``denoise``: ``{"reconstruction": N x D}`` in original
            units; ``flag``: ``{"score": N, "is_anomaly": N (bool), "contributions": N x D}``;
            ``explain``: ``{"score": N, "rank": N, "feature_errors": N x D}``.

        Raises:
            ServingError: for an unknown mode, a block of the wrong width, or a mode the
                model cannot serve (``flag`` without a threshold).
        """
        mode = get_mode(mode)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ServingError(
                f"model {self.version} takes N x {self.input_dim} blocks, got shape {x.shape}"
            )
        scaled = self.scaler.transform(x)
        _torch_threads_here(self.torch_threads)
        return mode.compute(self, scaled)

    # ------------------------------------------------------------------ records

    def score_records(
        self,
        values: Sequence[Any],
        mode: str | OutputMode,
        *,
        sources: Sequence[Any] | None = None,
        passthrough: Sequence[str] = (),
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Scores a batch of records; every record becomes a result or a dead letter.

        Whatever bytes a record holds, the worst it earns is a dead letter: the batch is scored
        in one go, and only if that raises, record by record; a record that still fails is
        dead-lettered with reason ``internal`` and the exception type in ``detail``, and the
        other records get their results.

        Args:
            values: JSON bytes/str, mappings or ``beam.Row``-like records. Elements that are
                Kafka records or ``(key, value)`` tuples are unpacked with :func:`as_input`
                unless ``sources`` is given.
            mode: a mode's name (``"encode"``, ``"denoise"``, ``"flag"``, ``"explain"``) or
                an :class:`~ae_pipeline.serving.modes.OutputMode`.
            sources: Kafka coordinates per value (same length; :class:`Source` objects or
                anything with the same attributes, such as ``KafkaRecord``), copied into the
                outputs.
            passthrough: record fields copied into each result (see :func:`check_passthrough`).

        Returns:
            ``(results, dead_letters)``, each in input order; JSON-serialisable dicts.

        Raises:
            ServingError: the mode is unknown, a passthrough field collides with a result
                field, or the model cannot serve the mode (``flag`` without a threshold): not
                the records' fault.
        """
        mode, values, sources = self._inputs(values, mode, sources, passthrough)
        results, _, dead, _ = self._score_isolated(values, sources, mode, passthrough)
        return results, dead

    def score_messages(
        self,
        values: Sequence[Any],
        mode: str | OutputMode,
        *,
        sources: Sequence[Any] | None = None,
        passthrough: Sequence[str] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        message_key: str = DEFAULT_MESSAGE_KEY,
    ) -> ScoredMessages:
        """:meth:`score_records`, then each output as a Kafka message (:func:`to_messages`),
        bounded in size; never raises because of a record.

        A result that cannot be serialised (reason ``internal``) or whose message would exceed
        ``max_message_bytes`` (reason ``too_large``) becomes a dead letter holding the original
        value; a dead letter's original value is cut to fit (``value_truncated``, with
        ``value_length`` and ``value_sha256`` of the whole).

        Args:
            values, mode, sources, passthrough: as for :meth:`score_records`.
            max_message_bytes: the most bytes (key + value + headers) of one message.
            message_key: a result's message key: ``"input"`` (default), the input message's
                key as it was (None where it had none; a record with no Kafka source: its key
                field), or ``"record"``, the record's key field (the result's ``key``). Dead
                letters always carry the input message's key.

        Returns:
            :class:`ScoredMessages`; ``len(results) + len(dead_letters) == len(values)``.
        """
        check_message_key(message_key)
        check_max_message_bytes(max_message_bytes)
        mode, values, sources = self._inputs(values, mode, sources, passthrough)
        results, index, dead, dead_index = self._score_isolated(values, sources, mode, passthrough)
        keys = None
        if message_key == "input":
            keys = [
                results[j].get("key") if sources[i] is None else sources[i].key
                for j, i in enumerate(index)
            ]
        messages, failed = _serialise(results, keys, max_message_bytes)
        if failed:
            moved = {}
            for j, reason, detail in failed:
                i = index[j]
                moved[j] = (i, _dead_letter(reason, detail, self.version, values[i], sources[i]))
            results = [r for j, r in enumerate(results) if j not in moved]
            dead = [*dead, *(letter for _, letter in moved.values())]
            dead_index = [*dead_index, *(i for i, _ in moved.values())]
            if len(moved) < len(dead):  # back in input order
                order = sorted(range(len(dead)), key=dead_index.__getitem__)
                dead = [dead[k] for k in order]
                dead_index = [dead_index[k] for k in order]
        dead_keys = [_raw_key(sources[i]) for i in dead_index]
        letters, _ = _serialise(dead, dead_keys, max_message_bytes)
        anomalies = sum(map(_IS_ANOMALY, results)) if mode.flags else 0
        scores = [r["score"] for r in results] if "score" in mode.fields else ()
        return ScoredMessages(
            messages, letters, [d["reason"] for d in dead], anomalies, self.version, scores
        )

    def _inputs(
        self,
        values: Sequence[Any],
        mode: str | OutputMode,
        sources: Sequence[Any] | None,
        passthrough: Sequence[str],
    ) -> tuple[OutputMode, Sequence[Any], Sequence[Any]]:
        """Checks the mode and passthrough fields; the mode, the values and their sources."""
        mode = get_mode(mode)
        _checked_passthrough(tuple(passthrough), mode)
        if sources is None:
            return (mode, *as_inputs(values))
        if len(sources) != len(values):
            raise ValueError(f"{len(values)} values but {len(sources)} sources")
        return mode, values, sources

    def _score_isolated(
        self,
        values: Sequence[Any],
        sources: Sequence[Any],
        mode: OutputMode,
        passthrough: Sequence[str],
    ) -> tuple[list[dict], list[int], list[dict], list[int]]:
        """:meth:`_score_batch` of the whole batch; if it raises (anything but a
        :class:`ServingError`), of each record alone, a record that still fails becoming an
        ``internal`` dead letter. Only a failed batch costs the fallback."""
        try:
            return self._score_batch(values, sources, mode, passthrough)
        except ServingError:
            raise
        except Exception as err:
            first = err
        results: list[dict] = []
        index: list[int] = []
        dead: list[dict] = []
        dead_index: list[int] = []
        failed = 0
        for i in range(len(values)):
            try:
                r, _, d, _ = self._score_batch([values[i]], [sources[i]], mode, passthrough)
            except ServingError:
                raise
            except Exception as err:
                failed += 1
                r = []
                d = [
                    _dead_letter(
                        INTERNAL, internal_detail(err), self.version, values[i], sources[i]
                    )
                ]
            results += r
            index += [i] * len(r)
            dead += d
            dead_index += [i] * len(d)
        _log.warning(
            "a batch of %d records failed to score (%s); scored record by record, %d "
            "dead-lettered as %r",
            len(values),
            internal_detail(first),
            failed,
            INTERNAL,
        )
        return results, index, dead, dead_index

    def _score_batch(
        self,
        values: Sequence[Any],
        sources: Sequence[Any],
        mode: OutputMode,
        passthrough: Sequence[str],
    ) -> tuple[list[dict], list[int], list[dict], list[int]]:
        """Scores a batch: ``(results, their input indices, dead letters, their indices)``."""
        batch = _drop_unscalable(decode_records(values, self.spec, fields=passthrough), self.scaler)
        version = self.version
        dead = [
            _dead_letter(err.reason, err.detail, version, values[err.index], sources[err.index])
            for err in batch.errors
        ]
        dead_index = [err.index for err in batch.errors]
        if not batch.index:
            return [], [], dead, dead_index
        return self._results(batch, sources, mode, passthrough), batch.index, dead, dead_index

    def _results(
        self,
        batch: DecodedBatch,
        sources: Sequence[Any],
        mode: OutputMode,
        passthrough: Sequence[str],
    ) -> list[dict[str, Any]]:
        """The results of a batch's usable records."""
        arrays = self.score_matrix(batch.matrix, mode)
        keys, extras = self._keys_and_extras(batch, sources, passthrough)
        return mode.results(self, keys, extras, arrays)

    @staticmethod
    def _keys_and_extras(
        batch: DecodedBatch, sources: Sequence[Any], passthrough: Sequence[str]
    ) -> tuple[list[Any], list[dict[str, Any]] | None]:
        """Each scored record's key (the record's key field, else the Kafka key) and the fields
        that follow ``model_version`` in its result: Kafka coordinates, then the passthrough
        fields (None when no record has any)."""
        keys = batch.keys
        # Bare records only (a C-speed check for the lists the callers pass; the first element
        # is looked at first, as list.count would call a Kafka record's __eq__ per element).
        if (
            (not sources or sources[0] is None) and sources.count(None) == len(sources)
            if isinstance(sources, (list, tuple))
            else all(source is None for source in sources)
        ):
            if not passthrough:
                return keys, None
            chosen: list[Any] = [None] * len(keys)
            extras = [{} for _ in chosen]
        else:
            chosen = [sources[i] for i in batch.index]
            keys = [
                _key_text(source.key) if key is None and source is not None else key
                for key, source in zip(keys, chosen, strict=True)
            ]
            extras = [_coordinates(source) for source in chosen]
        if passthrough:
            for extra, record in zip(extras, batch.records, strict=True):
                extra.update({f: _json_safe(record.get(f)) for f in passthrough})
        return keys, extras

    def anomaly_scores(self, values: Sequence[Any]) -> tuple[np.ndarray, dict[int, str]]:
        """Reconstruction-error score of each record, in input order (the ``flag`` score
        without the threshold: for detectors that threshold scores themselves).

        Returns:
            ``(scores, reasons)``: an ``N`` float array, NaN where a record cannot be scored,
            and ``{index: "reason: detail"}`` for those records.
        """
        try:
            return self._anomaly_scores(values)
        except Exception:  # isolate the records that fail: one at a time
            pass
        scores = np.full(len(values), np.nan, dtype=np.float64)
        reasons: dict[int, str] = {}
        for i in range(len(values)):
            try:
                one, why = self._anomaly_scores([values[i]])
            except Exception as err:
                reasons[i] = f"{INTERNAL}: {internal_detail(err)}"
                continue
            scores[i] = one[0]
            if 0 in why:
                reasons[i] = why[0]
        return scores, reasons

    def _anomaly_scores(self, values: Sequence[Any]) -> tuple[np.ndarray, dict[int, str]]:
        batch = _drop_unscalable(decode_records(values, self.spec, fields=()), self.scaler)
        scores = np.full(len(values), np.nan, dtype=np.float64)
        reasons = {err.index: f"{err.reason}: {err.detail}" for err in batch.errors}
        if batch.index:
            scaled = self.scaler.transform(batch.matrix)
            _torch_threads_here(self.torch_threads)
            error = self.scorer.scores(scaled)
            scores[np.asarray(batch.index)] = error
        return scores, reasons

    def top_contributions(self, contributions: np.ndarray) -> tuple[Iterator, Iterator]:
        """Per row, the names and values of the ``top_k`` largest per-feature contributions,
        largest first (two iterators of tuples, one per row; the ``flag`` mode's)."""
        dim = contributions.shape[1]
        k = dim if self.top_k is None else min(self.top_k, dim)
        if k < dim:
            top = np.argpartition(-contributions, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(contributions, top, axis=1).argsort(axis=1)[:, ::-1]
            top = np.take_along_axis(top, order, axis=1)
        else:
            top = np.argsort(-contributions, axis=1, kind="stable")
        values = np.take_along_axis(contributions, top, axis=1).ravel().tolist()
        names = self._names_array
        if names is None or len(names) != dim:
            names = np.asarray(self.feature_names or [str(j) for j in range(dim)], dtype=object)
            self._names_array = names
        # Rows as tuples made one at a time from flat lists (one list of names, one of values):
        # no per-row list stays alive for the garbage collector to count and traverse.
        if k == 0:
            return iter([()] * len(contributions)), iter([()] * len(contributions))
        flat_names = names[top].ravel().tolist()
        return zip(*[iter(flat_names)] * k), zip(*[iter(values)] * k)  # noqa: B905

"""Scoring records with a published model: the one path shared by Beam and the Kafka consumer.

:class:`ServingModel` holds one verified model version together with everything needed to turn
records into results: the :class:`~ae_pipeline.features.FeatureSpec` the model was trained on,
its :class:`~ae_pipeline.features.Scaler`, its anomaly threshold and its version name.
:meth:`ServingModel.score_records` takes a batch of records (JSON bytes, dicts, ``beam.Row``,
Kafka records) and returns one result per usable record and one dead letter per rejected one,
so ``len(results) + len(dead_letters) == len(records)`` always holds. Four output modes, each an
:class:`~ae_pipeline.serving.modes.OutputMode` (add one with :func:`register_mode`):

* ``encode``: ``latent`` (list of floats);
* ``denoise``: ``reconstruction`` in the records' original units (the scaler is inverted), keyed
  by feature name (a list when the features have no names, e.g. a ``vector_field`` of pixels);
* ``flag``: ``score`` (the version's anomaly score: its
  :class:`~ae_pipeline.models.score_function.ScoreFunction`, stored in the artifact, the same
  number :class:`~ae_pipeline.models.Scorer` computes offline; ``normalized`` for newly trained
  versions, ``mse``, the mean squared reconstruction error of the scaled record, for versions
  saved without one), ``threshold``, ``is_anomaly`` (``score > threshold``) and
  ``contributions``: the ``top_k`` features with the largest squared errors,
  ``{feature: squared error}`` in descending order (with ``mse``, over all features they sum
  to ``score * D``);
* ``explain``: ``score`` (as in ``flag``), ``rank`` (the fraction of calibration records that
  scored at or below it, from the histogram kept with the model) and ``feature_errors`` (every
  feature's squared error, keyed by name).

Every result and dead letter carries ``model_version`` and the record's ``key``; when the
record came from Kafka, ``topic``, ``partition`` and ``offset`` too. A dead letter has the
``reason`` (one of :data:`ae_pipeline.features.REASONS`), a ``detail`` and the original value
(``value_b64`` for bytes, ``value`` otherwise; with ``value_length`` and ``value_sha256`` of the
original bytes and ``value_truncated``).

Whatever bytes a record holds, the worst it earns is a dead letter: a failure while decoding,
scoring or serialising is isolated to the records that caused it (the batch is retried record by
record; a record that still fails becomes a dead letter with reason ``internal`` and the
exception type in ``detail``). :meth:`ServingModel.score_messages` turns the outputs into Kafka
messages of at most ``max_message_bytes`` (:data:`DEFAULT_MAX_MESSAGE_BYTES`): a dead letter's
original value is cut to fit, and a result too large to write becomes a ``too_large`` dead
letter. A result's message key is the input message's key by default (``message_key="input"``),
so results and dead letters join and are partitioned like the input; the record's own key field
stays in the body as ``key``.

Hot reload (which version serves, and when it changes) is :mod:`ae_pipeline.hot_reload`; its
:class:`~ae_pipeline.hot_reload.FixedModel`, :class:`~ae_pipeline.hot_reload.ModelWatcher` and
:func:`~ae_pipeline.hot_reload.open_model` still import from here, loaded on first use (that
module builds on this package, so importing it here at once would be a cycle).

This module imports nothing from Apache Beam itself; the registry and artifact modules it uses
read files through Beam's ``FileSystems`` (so ``gs://`` and ``s3://`` roots work).

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from ae_pipeline.artifact import save_artifact
    >>> from ae_pipeline.models import ModelConfig, build_model
    >>> cfg = ModelConfig(2, hidden_dims=[], latent_dim=1)
    >>> path = save_artifact(tempfile.mkdtemp(), build_model(cfg, seed=0), cfg,
    ...                      feature_columns=["a", "b"], threshold={"value": 0.5})
    >>> model = ServingModel.load(path, device="cpu")
    >>> results, dead = model.score_records([b'{"a": 1, "b": 2}', b'{"a": 1}'], "flag")
    >>> sorted(results[0]), dead[0]["reason"]
    (['contributions', 'is_anomaly', 'key', 'model_version', 'score', 'threshold'], 'missing_field')
"""

from typing import Any

from ae_pipeline.serving.errors import NoModelError, ServingError
from ae_pipeline.serving.inputs import Source, as_input, as_inputs
from ae_pipeline.serving.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MESSAGE_KEY,
    MESSAGE_KEYS,
    MIN_MAX_MESSAGE_BYTES,
    Message,
    ScoredMessages,
    check_max_message_bytes,
    check_message_key,
    message_headers,
    to_json,
    to_message,
    to_messages,
)
from ae_pipeline.serving.model import ServingModel, version_name
from ae_pipeline.serving.modes import (
    MODES,
    OutputMode,
    check_mode,
    check_passthrough,
    describe_modes,
    get_mode,
    mode_names,
    register_mode,
    result_fields,
)
from ae_pipeline.serving.threads import set_torch_threads

# Names that moved to ae_pipeline.hot_reload (which imports this package's modules), loaded by
# __getattr__ when first asked for (PEP 562).
_HOT_RELOAD = ("FixedModel", "ModelWatcher", "open_model")


def __getattr__(name: str) -> Any:
    if name in _HOT_RELOAD:
        from ae_pipeline import hot_reload

        return getattr(hot_reload, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MESSAGE_KEY",
    "MESSAGE_KEYS",
    "MIN_MAX_MESSAGE_BYTES",
    "MODES",
    "FixedModel",
    "Message",
    "ModelWatcher",
    "NoModelError",
    "OutputMode",
    "ScoredMessages",
    "ServingError",
    "ServingModel",
    "Source",
    "as_input",
    "as_inputs",
    "check_max_message_bytes",
    "check_message_key",
    "check_mode",
    "check_passthrough",
    "describe_modes",
    "get_mode",
    "message_headers",
    "mode_names",
    "open_model",
    "register_mode",
    "result_fields",
    "set_torch_threads",
    "to_json",
    "to_message",
    "to_messages",
    "version_name",
]

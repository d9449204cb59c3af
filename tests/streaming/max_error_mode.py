"""A mode of one's own, in a module of its own that registers it when imported, as a user's
module would: the scoring child process imports this module (the mode's ``mode_module``) before
it looks the mode up by name. ``tests/streaming/test_streaming_modes.py`` imports it in a
fixture and unregisters it afterwards (the built-in modes alone elsewhere in the session)."""

from __future__ import annotations

from ae_pipeline.serving import OutputMode, register_mode


class MaxError(OutputMode):
    """The largest per-feature squared error and its feature (a mode a user might add)."""

    name = "max_error"
    summary = "the largest per-feature squared error and its feature"
    fields = ("max_error", "worst_feature")

    def compute(self, model, scaled):
        errors = model.scorer.score(scaled, latent=False, reconstruction=False).contributions
        return {"max_error": errors.max(axis=1), "worst": errors.argmax(axis=1)}

    def results(self, model, keys, extras, arrays):
        names = model.feature_names
        rows = zip(keys, arrays["max_error"].tolist(), arrays["worst"].tolist(), strict=True)
        extras = extras if extras is not None else [{}] * len(keys)
        return [
            {
                "key": k,
                "model_version": model.version,
                **e,
                "max_error": m,
                "worst_feature": names[w],
            }
            for (k, m, w), e in zip(rows, extras, strict=True)
        ]


MAX_ERROR = register_mode(MaxError())

"""Why a model version is refused: :class:`ArtifactError` and its reasons."""

from __future__ import annotations

REFUSAL_REASONS = (
    "marker",
    "future",
    "symlink",
    "special_file",
    "too_large",
    "corrupt",
    "unsafe",
    "threshold",
    "calibration",
    "weights",
    "scaler",
    "features",
    "error",
)
"""Why a model version is refused; the ``reason`` of :class:`ArtifactError` and the keys of
:attr:`ae_pipeline.hot_reload.ModelWatcher.refusals`."""


class ArtifactError(ValueError):
    """A model artifact is missing, corrupt, unsafe or does not fit its config or the data.

    Attributes:
        reason: one of :data:`REFUSAL_REASONS` (default ``"corrupt"``).
    """

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason

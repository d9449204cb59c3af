"""Batched scoring: the one implementation the Beam DoFns and the Kafka consumer share.

:class:`Scorer` takes numpy ``N x D`` float32 blocks (image models also take
``N x C x H x W``) and returns latent codes, reconstructions, per-record reconstruction
errors (mean squared error of each row), per-feature contributions (squared error of each
feature; a row's error is their mean) and anomaly scores by the version's
:class:`~ae_pipeline.models.score_function.ScoreFunction` (the error itself unless one is
given). It runs without gradients, in eval mode, in batches of
a configurable size, on the device it was given; a VAE is scored through its mean path.

Example:
    >>> import numpy as np
    >>> from ae_pipeline.models import ModelConfig, build_model
    >>> scorer = Scorer(build_model(ModelConfig(6, hidden_dims=[], latent_dim=2), seed=0))
    >>> result = scorer.score(np.zeros((4, 6), dtype=np.float32))
    >>> result.latent.shape, result.error.shape, result.contributions.shape
    ((4, 2), (4,), (4, 6))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ae_pipeline.models.device import resolve_device
from ae_pipeline.models.score_function import (
    TERMS,
    FeatureErrorStats,
    LatentStats,
    ScoreFunction,
)


@dataclass
class ScoreResult:
    """Scores of a block of records (arrays are ``None`` when not asked for).

    Attributes:
        error: ``N`` per-record reconstruction errors (mean squared error of the row).
        latent: ``N x latent_dim`` codes.
        reconstruction: ``N x D`` reconstructions.
        contributions: ``N x D`` squared error of each feature.
        score: ``N`` anomaly scores by the scorer's score function (``error`` for ``mse``).
    """

    error: np.ndarray
    latent: np.ndarray | None = None
    reconstruction: np.ndarray | None = None
    contributions: np.ndarray | None = None
    score: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.error)


class Scorer:
    """Scores numpy blocks with a trained autoencoder.

    The model is moved to ``device`` and put in eval mode.

    Args:
        model: an autoencoder with ``encode``, ``decode`` and ``input_dim``.
        batch_size: rows per forward pass (bounds memory for large blocks).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        score_function: how per-feature errors and codes become the anomaly score (None: the
            mean squared error, ``ScoreFunction()``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int = 8192,
        device: str = "cpu",
        score_function: ScoreFunction | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.input_dim: int = model.input_dim  # type: ignore[assignment]
        self.latent_dim: int = model.latent_dim  # type: ignore[assignment]
        self.score_function = score_function or ScoreFunction()
        self._score_fn = self.score_function.torch_scorer(self.device)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"expected an N x {self.input_dim} block, got shape {x.shape}")
        x = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        if x.shape[1] != self.input_dim:
            raise ValueError(
                f"records have {x.shape[1]} features, the model expects {self.input_dim} "
                f"(block shape {x.shape})"
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    def _tensor(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rows).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def score(
        self,
        x: np.ndarray,
        *,
        latent: bool = True,
        reconstruction: bool = True,
        contributions: bool = True,
    ) -> ScoreResult:
        """Scores a block in one pass per batch.

        Args:
            x: ``N x D`` records (any float dtype; converted to float32).
            latent: also return the codes.
            reconstruction: also return the reconstructions.
            contributions: also return the per-feature squared errors.

        Raises:
            ValueError: if the block does not have the model's width.
        """
        rows = self._rows(x)
        n = rows.shape[0]
        mse = self.score_function.kind == "mse"
        out = ScoreResult(
            error=np.empty(n, np.float32),
            latent=np.empty((n, self.latent_dim), np.float32) if latent else None,
            reconstruction=np.empty((n, self.input_dim), np.float32) if reconstruction else None,
            contributions=np.empty((n, self.input_dim), np.float32) if contributions else None,
        )
        out.score = out.error if mse else np.empty(n, np.float32)
        for i in range(0, n, self.batch_size):
            xb = self._tensor(rows[i : i + self.batch_size])
            z = self.model.encode(xb)
            recon = self.model.decode(z).reshape(xb.shape[0], -1).float()
            sq = (recon - xb).square_()
            j = i + xb.shape[0]
            out.error[i:j] = sq.mean(dim=1).cpu().numpy()
            if not mse:
                out.score[i:j] = self._score_fn(sq, z).cpu().numpy()
            if out.latent is not None:
                out.latent[i:j] = z.float().cpu().numpy()
            if out.reconstruction is not None:
                out.reconstruction[i:j] = recon.cpu().numpy()
            if out.contributions is not None:
                out.contributions[i:j] = sq.cpu().numpy()
        return out

    def errors(self, x: np.ndarray) -> np.ndarray:
        """Returns the ``N`` per-record reconstruction errors (mean squared error per row)."""
        return self.score(x, latent=False, reconstruction=False, contributions=False).error

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Returns the ``N`` anomaly scores by the score function (the errors for ``mse``)."""
        result = self.score(x, latent=False, reconstruction=False, contributions=False)
        return result.score  # type: ignore[return-value]

    def with_score_function(self, score_function: ScoreFunction | None) -> Scorer:
        """This scorer's model, batch size and device with another score function."""
        return Scorer(
            self.model,
            batch_size=self.batch_size,
            device=str(self.device),
            score_function=score_function,
        )

    def feature_error_stats(self, x: np.ndarray) -> FeatureErrorStats:
        """The per-feature squared errors of rows ``x``, summed (for :meth:`ScoreFunction.fit`)."""
        result = self.score(x, latent=False, reconstruction=False, contributions=True)
        return FeatureErrorStats.of(result.contributions)  # type: ignore[arg-type]

    def latent_stats(self, x: np.ndarray) -> LatentStats:
        """The moments of the codes of rows ``x`` (for :meth:`ScoreFunction.fit`)."""
        return LatentStats.of(self.encode(x))

    def term_values(self, score_function: ScoreFunction, x: np.ndarray) -> list[np.ndarray]:
        """Each term's raw value on rows ``x`` (for :meth:`ScoreFunction.with_medians`)."""
        result = self.score(x, latent=True, reconstruction=False, contributions=True)
        return score_function.terms_of(result.contributions, result.latent)  # type: ignore[arg-type]

    @torch.inference_mode()
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Returns the ``N x latent_dim`` codes (a VAE's latent means)."""
        rows = self._rows(x)
        parts = [
            self.model.encode(self._tensor(rows[i : i + self.batch_size])).float().cpu().numpy()
            for i in range(0, len(rows), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.empty((0, self.latent_dim), np.float32)

    @torch.inference_mode()
    def decode(self, z: np.ndarray) -> np.ndarray:
        """Returns the ``N x D`` reconstructions decoded from codes ``z``."""
        codes = np.ascontiguousarray(z, dtype=np.float32)
        if codes.ndim != 2 or codes.shape[1] != self.latent_dim:
            raise ValueError(f"expected N x {self.latent_dim} codes, got shape {codes.shape}")
        parts = [
            self.model.decode(self._tensor(codes[i : i + self.batch_size]))
            .reshape(-1, self.input_dim)
            .float()
            .cpu()
            .numpy()
            for i in range(0, len(codes), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.empty((0, self.input_dim), np.float32)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Returns the ``N x D`` reconstructions (denoised records for a denoising model)."""
        result = self.score(x, latent=False, reconstruction=True, contributions=False)
        return result.reconstruction  # type: ignore[return-value]

    @torch.inference_mode()
    def classify(self, x: np.ndarray) -> np.ndarray:
        """Returns ``N x num_classes`` logits of the classification head."""
        rows = self._rows(x)
        parts = [
            self.model.classify(self._tensor(rows[i : i + self.batch_size])).float().cpu().numpy()
            for i in range(0, len(rows), self.batch_size)
        ]
        return np.concatenate(parts)


def fit_score_function(
    scorer: Scorer,
    train: np.ndarray,
    validation: np.ndarray,
    kind: str = "normalized",
    terms: tuple[str, ...] = TERMS,
) -> ScoreFunction:
    """The score function of a trained model, from in-memory scaled rows: the latent term's
    statistics from the ``train`` codes, the feature scales and the terms' medians from the
    ``validation`` rows (the Beam training job does the same over shards).

    Example:
        >>> from ae_pipeline.models import ModelConfig, build_model
        >>> scorer = Scorer(build_model(ModelConfig(6, hidden_dims=[], latent_dim=2), seed=0))
        >>> x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
        >>> fn = fit_score_function(scorer, x[:150], x[150:])
        >>> fn.kind, round(float(np.median(scorer.with_score_function(fn).scores(x[150:]))))
        ('normalized', 2)
    """
    if kind == "mse":
        return ScoreFunction()
    latent = scorer.latent_stats(train) if "latent" in terms else None
    fn = ScoreFunction.fit(scorer.feature_error_stats(validation), latent, terms)
    return fn.with_medians(*scorer.term_values(fn, validation))

"""Training objectives: what the trainer minimises for one batch.

An objective is a callable ``(model, x, y, *, training) -> (loss, parts)`` where ``parts``
maps the name of each term (``reconstruction``, ``kl``, ``sparsity``, ...) to its value, for
the per-epoch history. :class:`ReconstructionObjective` assembles the terms a
:class:`~ae_pipeline.models.config.ModelConfig` asks for; :class:`ClassificationObjective` is
the supervised fine-tuning objective.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch
import torch.nn.functional as F

from ae_pipeline.models.base import Autoencoder
from ae_pipeline.models.config import ModelConfig
from ae_pipeline.models.corruption import corrupt
from ae_pipeline.models.losses import LossFn, get_loss, total_variation
from ae_pipeline.models.regularizers import sparsity_penalty, weight_penalty

Parts = dict[str, torch.Tensor]


def _full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """Turns autocast off for loss terms (BCE is unsafe under autocast); free when it is off."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class Objective(Protocol):
    """The interface the trainer calls for every batch."""

    def __call__(
        self,
        model: Autoencoder,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        training: bool,
    ) -> tuple[torch.Tensor, Parts]: ...


class ReconstructionObjective:
    """Reconstruction loss plus every penalty the model config asks for.

    ``loss = recon(f(corrupt(x)), x) + tv_weight * TV + sparsity + beta * KL / input_dim
    + l1 * sum|W| + l2 * sum W^2``. Corruption applies only when ``training`` is true, and the
    loss is always taken against the clean input. The reconstruction loss averages over every
    element, so the VAE's KL (a sum over latent units) is divided by ``input_dim`` to keep the
    ELBO's balance. Loss terms are computed in float32 outside autocast.

    Args:
        config: the model config.
        loss_fn: overrides ``config.loss`` with a ``(reconstruction, target) -> scalar``
            callable (the custom-loss hook for losses that need no name in the config).
    """

    def __init__(self, config: ModelConfig, *, loss_fn: LossFn | None = None) -> None:
        self.config = config
        self.loss_fn = loss_fn if loss_fn is not None else get_loss(config.loss)

    def __call__(
        self,
        model: Autoencoder,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        training: bool,
    ) -> tuple[torch.Tensor, Parts]:
        cfg = self.config
        inp = corrupt(x, cfg.corruption) if training and cfg.corruption is not None else x
        out = model.forward_all(inp)
        with _full_precision(x):
            recon = out.reconstruction.float()
            total = self.loss_fn(recon, x.float().reshape(recon.shape))
            parts: Parts = {"reconstruction": total}
            if cfg.tv_weight > 0:
                parts["tv"] = cfg.tv_weight * total_variation(recon, cfg.input_shape or [])
            if cfg.sparsity is not None:
                parts["sparsity"] = sparsity_penalty(out.latent, cfg.sparsity)
            for name, (value, term) in model.extra_loss_terms(out, cfg).items():  # e.g. a VAE's KL
                parts[name] = value
                total = total + term
            if cfg.weight_l1 > 0 or cfg.weight_l2 > 0:
                parts["weights"] = weight_penalty(model, cfg.weight_l1, cfg.weight_l2)
            for name in ("tv", "sparsity", "weights"):
                if name in parts:
                    total = total + parts[name]
        return total, parts


class ClassificationObjective:
    """Cross-entropy of the classification head on the code (supervised fine-tuning).

    Args:
        reconstruction_weight: adds this multiple of the model's reconstruction objective, so
            that the code keeps describing the input while it learns to separate classes.
        loss_fn: custom reconstruction loss, as for :class:`ReconstructionObjective`.
    """

    def __init__(self, reconstruction_weight: float = 0.0, *, loss_fn: LossFn | None = None):
        self.reconstruction_weight = reconstruction_weight
        self.loss_fn = loss_fn

    def __call__(
        self,
        model: Autoencoder,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        training: bool,
    ) -> tuple[torch.Tensor, Parts]:
        if y is None:
            raise ValueError("supervised fine-tuning needs labels with every batch")
        logits = model.classify(x)
        with _full_precision(x):
            total = F.cross_entropy(logits.float(), y)
            parts: Parts = {
                "cross_entropy": total,
                "accuracy": (logits.argmax(dim=1) == y).float().mean(),
            }
        if self.reconstruction_weight > 0:
            recon = ReconstructionObjective(model.config, loss_fn=self.loss_fn)
            rec, _ = recon(model, x, training=training)
            parts["reconstruction"] = rec
            total = total + self.reconstruction_weight * rec
        return total, parts

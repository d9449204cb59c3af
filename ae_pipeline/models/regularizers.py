"""Penalties added to the reconstruction loss: weights, sparsity of codes, VAE KL."""

from __future__ import annotations

import torch
from torch import nn

from ae_pipeline.models.config import SparsityConfig

_EPS = 1e-6


def penalised_weights(model: nn.Module) -> list[torch.Tensor]:
    """Returns the weight matrices / kernels of ``model`` (biases are not penalised)."""
    return [
        p for name, p in model.named_parameters() if p.ndim >= 2 and not name.startswith("head.")
    ]


def weight_penalty(model: nn.Module, l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
    """Returns ``l1 * sum|w| + l2 * sum w^2`` over the weights of ``model``."""
    weights = penalised_weights(model)
    total = weights[0].new_zeros(())
    for w in weights:
        if l1:
            total = total + l1 * w.abs().sum()
        if l2:
            total = total + l2 * w.pow(2).sum()
    return total


def kl_sparsity(codes: torch.Tensor, rho: float) -> torch.Tensor:
    """Returns ``sum_j KL(rho || rho_hat_j)``, ``rho_hat_j`` the batch mean of code unit j.

    Args:
        codes: ``N x K`` activations in (0, 1) (e.g. after a sigmoid).
        rho: target mean activation in (0, 1).
    """
    rho_hat = codes.float().mean(dim=0).clamp(_EPS, 1.0 - _EPS)
    return (
        rho * torch.log(rho / rho_hat) + (1.0 - rho) * torch.log((1.0 - rho) / (1.0 - rho_hat))
    ).sum()


def l1_activity(codes: torch.Tensor) -> torch.Tensor:
    """Returns the mean absolute activation of ``codes``."""
    return codes.float().abs().mean()


def sparsity_penalty(codes: torch.Tensor, config: SparsityConfig) -> torch.Tensor:
    """Returns ``beta`` times the KL or L1 sparsity penalty of ``codes``."""
    if config.kind == "kl":
        return config.beta * kl_sparsity(codes, config.rho)
    return config.beta * l1_activity(codes)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Returns KL(N(mu, exp(logvar)) || N(0, I)) summed over latent units, mean over the batch."""
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()

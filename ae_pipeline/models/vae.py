"""Variational autoencoder with a diagonal Gaussian latent."""

from __future__ import annotations

import torch
from torch import nn

from ae_pipeline.models.base import AEOutput, Autoencoder
from ae_pipeline.models.config import ModelConfig, register_architecture
from ae_pipeline.models.layers import mlp
from ae_pipeline.models.regularizers import gaussian_kl


class VariationalAutoencoder(Autoencoder):
    """A VAE: the encoder outputs the mean and log-variance of q(z|x).

    In training mode :meth:`forward_all` samples ``z = mu + sigma * eps``
    (reparameterisation); in eval mode it decodes the mean, so scoring is deterministic.
    :meth:`encode` always returns the mean. The KL term is added by the objective with
    weight ``config.beta``.

    Example:
        >>> from ae_pipeline.models.config import ModelConfig
        >>> vae = VariationalAutoencoder(ModelConfig(64, architecture="vae", latent_dim=4))
        >>> vae.sample(3).shape
        torch.Size([3, 64])
    """

    accepts = frozenset({"decoder_dims"})  # no sparsity: the KL term already shapes the code

    @classmethod
    def variant_name(cls, config: ModelConfig) -> str:
        return "variational"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        widths = [self.input_dim, *config.hidden_dims]
        self.body = mlp(widths, [config.activation] * len(config.hidden_dims))
        self.mu = nn.Linear(widths[-1], config.latent_dim)
        self.logvar = nn.Linear(widths[-1], config.latent_dim)
        self.decoder = mlp(
            [config.latent_dim, *config.decoder_widths(), self.input_dim],
            config.decoder_activations(),
        )
        self._add_head()

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(mu, logvar)`` of q(z|x)."""
        h = self.body(x.flatten(1))
        return self.mu(h), self.logvar(h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.moments(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward_all(self, x: torch.Tensor) -> AEOutput:
        mu, logvar = self.moments(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return AEOutput(reconstruction=self.decode(z), latent=z, mu=mu, logvar=logvar)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Returns ``n`` new samples decoded from the N(0, I) prior, shape ``n x input_dim``."""
        device = self.mu.weight.device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.decode(z)

    def extra_loss_terms(
        self, out: AEOutput, config: ModelConfig
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The KL divergence of q(z|x) from N(0, I), weighted by ``config.beta`` and divided by
        ``input_dim`` (the reconstruction loss is a mean per element)."""
        if out.mu is None or out.logvar is None:
            return {}
        kl = gaussian_kl(out.mu, out.logvar)
        return {"kl": (kl, config.beta * kl / self.input_dim)}


register_architecture("vae", VariationalAutoencoder)

"""Fully connected autoencoder (undercomplete, sparse, denoising and stacked variants)."""

from __future__ import annotations

import torch

from ae_pipeline.models.base import Autoencoder
from ae_pipeline.models.config import ModelConfig, register_architecture
from ae_pipeline.models.layers import mlp


class MLPAutoencoder(Autoencoder):
    """Encoder and decoder made of :class:`~ae_pipeline.models.layers.Dense` layers.

    The encoder maps ``input_dim -> hidden_dims... -> latent_dim``; the decoder maps
    ``latent_dim -> decoder widths... -> input_dim`` (mirrored unless ``decoder_dims`` is set).

    Example:
        >>> from ae_pipeline.models.config import ModelConfig
        >>> model = MLPAutoencoder(ModelConfig(784, hidden_dims=[128], latent_dim=32))
        >>> model(torch.zeros(5, 784)).shape
        torch.Size([5, 784])
    """

    accepts = frozenset({"decoder_dims", "sparsity"})

    @classmethod
    def variant_name(cls, config: ModelConfig) -> str:
        return "undercomplete" if config.latent_dim < config.input_dim else "overcomplete"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.encoder = mlp(
            [self.input_dim, *config.hidden_dims, config.latent_dim],
            config.encoder_activations(),
        )
        self.decoder = mlp(
            [config.latent_dim, *config.decoder_widths(), self.input_dim],
            config.decoder_activations(),
        )
        self._add_head()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


register_architecture("mlp", MLPAutoencoder)

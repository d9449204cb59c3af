"""The contract every autoencoder of the library fulfils."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ae_pipeline.models.config import ModelConfig


@dataclass
class AEOutput:
    """Everything one forward pass produces, for losses and regularisers.

    Attributes:
        reconstruction: the reconstruction, same shape as the input.
        latent: the code the reconstruction was decoded from (a sample for a VAE in training).
        mu: mean of the latent Gaussian (VAE only).
        logvar: log-variance of the latent Gaussian (VAE only).
    """

    reconstruction: torch.Tensor
    latent: torch.Tensor
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None


class Autoencoder(nn.Module):
    """Base class: ``encode``, ``decode``, ``forward`` and an optional classification head.

    Subclasses implement :meth:`encode` and :meth:`decode`; a VAE also overrides
    :meth:`forward_all`. Inputs are ``N x input_dim`` (image models also take
    ``N x C x H x W``).

    A variant is one module: its subclass, with ``accepts`` (the optional architecture fields
    of :class:`ModelConfig` it reads), :meth:`check_config` (its own settings) and, if it adds
    loss terms, :meth:`extra_loss_terms`, registered with
    :func:`~ae_pipeline.models.config.register_architecture`.

    Attributes:
        config: the :class:`ModelConfig` the model was built from.
        input_dim: number of input features.
        latent_dim: width of the code.
        head: linear classification head on the code, or ``None``.
    """

    #: The optional architecture fields of :class:`ModelConfig` this variant reads
    #: (``decoder_dims``, ``layers``, ``sparsity``); the others must stay unset.
    accepts: ClassVar[frozenset[str]] = frozenset({"sparsity"})

    @classmethod
    def variant_name(cls, config: ModelConfig) -> str:
        """The variant's name in summaries (``ModelConfig.variant``); default: its
        architecture's name."""
        return config.architecture

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """Checks the variant's own settings (after the common checks); raises
        :class:`~ae_pipeline.models.config.ConfigError` naming the setting. None by default."""

    def extra_loss_terms(
        self, out: AEOutput, config: ModelConfig
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Loss terms of this variant besides reconstruction (and the config's penalties), for
        the objective's ``config``: ``{name: (value reported in the history, term added to the
        loss)}``. None by default."""
        return {}

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_dim: int = int(config.input_dim)  # type: ignore[arg-type]
        self.latent_dim: int = config.latent_dim
        self.head: nn.Linear | None = None

    def _add_head(self) -> None:
        """Adds the classification head when the config asks for one (call last in init)."""
        if self.config.num_classes is not None:
            self.head = nn.Linear(self.latent_dim, self.config.num_classes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the code of ``x`` (for a VAE, the mean of the latent Gaussian)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Returns the reconstruction decoded from code ``z``."""
        raise NotImplementedError

    def forward_all(self, x: torch.Tensor) -> AEOutput:
        """Returns the reconstruction with the intermediate values losses need."""
        z = self.encode(x)
        return AEOutput(reconstruction=self.decode(z), latent=z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the reconstruction of ``x`` (deterministic in eval mode)."""
        return self.forward_all(x).reconstruction

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Returns class logits from the classification head on the code of ``x``.

        Raises:
            ValueError: if the model was built without ``num_classes``.
        """
        if self.head is None:
            raise ValueError("model has no classification head: set ModelConfig.num_classes")
        return self.head(self.encode(x))

    def extra_repr(self) -> str:
        return (
            f"variant={self.config.variant!r}, input_dim={self.input_dim}, "
            f"latent_dim={self.latent_dim}"
        )

"""Convolutional autoencoder for image-shaped input (e.g. 1 x 28 x 28)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ae_pipeline.models.base import AEOutput, Autoencoder
from ae_pipeline.models.checks import _check_positive_ints, _require
from ae_pipeline.models.config import ModelConfig, register_architecture
from ae_pipeline.models.layers import Dense, activation


def _halved(size: int) -> int:
    """Spatial size after a stride-2 convolution with 'same' padding."""
    return (size + 1) // 2


class ConvAutoencoder(Autoencoder):
    """Stride-2 convolutions down to a dense code, transposed convolutions back up.

    The input may be ``N x C x H x W`` or flat ``N x (C*H*W)`` (as records arrive from a
    stream); the reconstruction has the same shape as the input, and :meth:`encode` returns
    ``N x latent_dim``.

    Example:
        >>> from ae_pipeline.models.config import ModelConfig
        >>> cfg = ModelConfig(architecture="conv", input_shape=[1, 28, 28], latent_dim=16)
        >>> ConvAutoencoder(cfg)(torch.zeros(2, 784)).shape
        torch.Size([2, 784])
    """

    @classmethod
    def variant_name(cls, config: ModelConfig) -> str:
        return "convolutional"

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """An image shape, at least one convolution, an odd kernel."""
        owner = "ModelConfig"
        _require(
            config.input_shape is not None,
            f"{owner}: architecture='conv' with tv_weight={config.tv_weight} "
            "needs input_shape=[channels, height, width]",
        )
        _check_positive_ints(owner, "conv_channels", config.conv_channels, allow_empty=False)
        _require(
            isinstance(config.kernel_size, int) and config.kernel_size % 2 == 1,
            f"{owner}.kernel_size must be an odd int, got {config.kernel_size!r}",
        )

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        channels, height, width = config.input_shape  # type: ignore[misc]
        self.image_shape = (channels, height, width)
        k, pad = config.kernel_size, config.kernel_size // 2
        chans = [channels, *config.conv_channels]
        sizes = [(height, width)]
        down: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(chans):
            down += [
                nn.Conv2d(c_in, c_out, k, stride=2, padding=pad),
                activation(config.activation),
            ]
            h, w = sizes[-1]
            sizes.append((_halved(h), _halved(w)))
        self.bottom_shape = (chans[-1], *sizes[-1])
        flat = chans[-1] * sizes[-1][0] * sizes[-1][1]
        self.encoder = nn.Sequential(
            *down, nn.Flatten(1), Dense(flat, config.latent_dim, config.latent_activation)
        )
        up: list[nn.Module] = [Dense(config.latent_dim, flat, config.activation)]
        up.append(nn.Unflatten(1, self.bottom_shape))
        n = len(config.conv_channels)
        for i in reversed(range(n)):
            (h_in, w_in), (h_out, w_out) = sizes[i + 1], sizes[i]
            pad_out = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))
            up.append(
                nn.ConvTranspose2d(
                    chans[i + 1], chans[i], k, stride=2, padding=pad, output_padding=pad_out
                )
            )
            up.append(activation(config.output_activation if i == 0 else config.activation))
        self.decoder = nn.Sequential(*up)
        self._add_head()

    def _as_image(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.image_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._as_image(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Returns the reconstruction as ``N x C x H x W``."""
        return self.decoder(z)

    def forward_all(self, x: torch.Tensor) -> AEOutput:
        out = super().forward_all(x)
        out.reconstruction = out.reconstruction.reshape(x.shape)
        return out


register_architecture("conv", ConvAutoencoder)

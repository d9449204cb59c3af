"""Input corruption for denoising autoencoders (used only while training)."""

from __future__ import annotations

import torch

from ae_pipeline.models.config import CorruptionConfig


def corrupt(
    x: torch.Tensor,
    config: CorruptionConfig,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Returns a corrupted copy of ``x``; ``x`` itself is left untouched.

    Args:
        x: a batch of inputs.
        config: kind and strength of the corruption.
        generator: optional random generator (default: torch's global one).

    Example:
        >>> from ae_pipeline.models.config import CorruptionConfig
        >>> x = torch.ones(1000, 10)
        >>> masked = corrupt(x, CorruptionConfig("masking", fraction=0.3))
        >>> 0.2 < float((masked == 0).float().mean()) < 0.4
        True
    """
    if config.kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        out = x + config.sigma * noise
    else:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if config.kind == "masking":
            out = x * (u >= config.fraction).to(x.dtype)
        else:  # salt_and_pepper
            half = config.fraction / 2
            out = torch.where(u < half, torch.full_like(x, config.pepper), x)
            out = torch.where(
                (u >= half) & (u < config.fraction), torch.full_like(x, config.salt), out
            )
    if config.clip is not None:
        out = out.clamp(config.clip[0], config.clip[1])
    return out

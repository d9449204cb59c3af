"""Reconstruction losses, the custom-loss hook and the total-variation penalty.

A loss is a function ``(reconstruction, target) -> scalar tensor`` that averages over every
element, so that losses of different data widths and variants are on the same scale. Register
a custom loss under a name with :func:`register_loss` and put the name in
``ModelConfig.loss``; the config then stays JSON-serialisable.

Example:
    >>> import torch
    >>> register_loss("mae", lambda r, t: (r - t).abs().mean())
    >>> float(get_loss("mae")(torch.zeros(2, 3), torch.ones(2, 3)))
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_EPS = 1e-7


def mse_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element."""
    return F.mse_loss(reconstruction, target)


def check_unit_interval(x: torch.Tensor, what: str = "BCE loss targets") -> None:
    """Raises ValueError naming the observed range unless every value of ``x`` is in [0, 1]."""
    lo, hi = torch.aminmax(x.detach())
    lo_f, hi_f = float(lo), float(hi)
    if not (lo_f >= 0.0 and hi_f <= 1.0):  # also catches NaN
        raise ValueError(
            f"{what} must lie in [0, 1]; observed min={lo_f:.6g}, max={hi_f:.6g}. "
            "Scale the data to [0, 1] (e.g. min-max scaling) or use loss='mse'."
        )


def bce_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over every element.

    Raises:
        ValueError: if a target lies outside [0, 1]; the message gives the observed min/max.
    """
    check_unit_interval(target)
    return F.binary_cross_entropy(reconstruction.clamp(_EPS, 1.0 - _EPS), target)


_LOSSES: dict[str, LossFn] = {"mse": mse_loss, "bce": bce_loss}


def register_loss(name: str, fn: LossFn, *, overwrite: bool = False) -> None:
    """Makes ``fn`` available as ``ModelConfig.loss = name``.

    Args:
        name: the name to use in configs.
        fn: ``(reconstruction, target) -> scalar tensor``, differentiable.
        overwrite: replace an existing registration of ``name``.

    Raises:
        ValueError: if ``name`` is taken and ``overwrite`` is false.
    """
    if name in _LOSSES and not overwrite and _LOSSES[name] is not fn:
        raise ValueError(f"loss {name!r} is already registered; pass overwrite=True")
    _LOSSES[name] = fn


def get_loss(name: str) -> LossFn:
    """Returns the loss function registered as ``name``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; known: {sorted(_LOSSES)} (register_loss adds more)"
        ) from None


def total_variation(x: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Anisotropic total variation of images: mean |vertical diff| + mean |horizontal diff|.

    Args:
        x: ``N x C x H x W`` or flat ``N x (C*H*W)`` images.
        image_shape: ``[C, H, W]``.
    """
    img = x.reshape(x.shape[0], *image_shape)
    dv = (img[:, :, 1:, :] - img[:, :, :-1, :]).abs().mean()
    dh = (img[:, :, :, 1:] - img[:, :, :, :-1]).abs().mean()
    return dv + dh

"""Building blocks shared by every architecture: activations and fully connected stacks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "linear": nn.Identity,
    "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """Returns the activation module called ``name``.

    Args:
        name: ``relu``, ``sigmoid``, ``tanh``, ``gelu``, ``linear`` or ``identity``.

    Raises:
        ValueError: for an unknown name.
    """
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


class Dense(nn.Module):
    """A linear layer followed by an activation.

    Attributes:
        linear: the ``nn.Linear`` layer.
        act: the activation module.
    """

    def __init__(self, in_features: int, out_features: int, act: str) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


def mlp(widths: Sequence[int], activations: Sequence[str]) -> nn.Sequential:
    """Returns a stack of :class:`Dense` layers.

    Args:
        widths: ``[in, h1, ..., out]``; one layer per consecutive pair.
        activations: one activation name per layer (``len(widths) - 1``).

    Raises:
        ValueError: if the number of activations does not match the number of layers.
    """
    if len(activations) != len(widths) - 1:
        raise ValueError(f"{len(widths) - 1} layers need as many activations, got {activations}")
    return nn.Sequential(
        *(Dense(a, b, act) for a, b, act in zip(widths[:-1], widths[1:], activations, strict=True))
    )

"""Building a model from its config, and loading weights into it with shape checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ae_pipeline.models.base import Autoencoder
from ae_pipeline.models.config import ModelConfig, TrainConfig, architecture_class
from ae_pipeline.models.conv import ConvAutoencoder
from ae_pipeline.models.mlp import MLPAutoencoder
from ae_pipeline.models.stacked import StackedAutoencoder
from ae_pipeline.models.trainer import History, Trainer
from ae_pipeline.models.vae import VariationalAutoencoder

# The built-in variants register themselves when their modules are imported (here).
_BUILT_IN = (MLPAutoencoder, StackedAutoencoder, VariationalAutoencoder, ConvAutoencoder)


class WeightsMismatchError(ValueError):
    """Weights do not fit a model: a tensor is missing, unexpected or has the wrong shape."""


def build_model(config: ModelConfig | Mapping[str, Any], *, seed: int | None = None) -> Autoencoder:
    """Returns a freshly initialised model for ``config``.

    Args:
        config: a :class:`ModelConfig` or its dict form.
        seed: seeds the initial weights (the global RNG state is left untouched).

    Example:
        >>> model = build_model({"input_dim": 64, "hidden_dims": [32], "latent_dim": 8}, seed=0)
        >>> type(model).__name__, model.latent_dim
        ('MLPAutoencoder', 8)
    """
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    cls = architecture_class(config.architecture)
    if seed is None:
        return cls(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Returns the name and shape of every tensor a model built from ``config`` holds.

    Builds the model on the ``meta`` device, so no memory is allocated for weights.
    """
    with torch.device("meta"):
        model = architecture_class(config.architecture)(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_state_shapes(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    *,
    source: str = "weights",
) -> None:
    """Raises :class:`WeightsMismatchError` naming the first differences between two layouts.

    Args:
        expected: tensor name -> shape the model needs.
        found: tensor name -> shape the weights have.
        source: what the weights are, for the message (e.g. a file name).
    """
    problems = [
        f"missing tensor {n!r} (expected shape {tuple(s)})"
        for n, s in expected.items()
        if n not in found
    ]
    problems += [
        f"unexpected tensor {n!r} (shape {tuple(s)})" for n, s in found.items() if n not in expected
    ]
    problems += [
        f"tensor {n!r} has shape {tuple(found[n])}, the config expects {tuple(s)}"
        for n, s in expected.items()
        if n in found and tuple(found[n]) != tuple(s)
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightsMismatchError(f"{source}: " + "; ".join(problems[:5]) + more)


def load_weights(
    model: nn.Module,
    source: Mapping[str, torch.Tensor] | nn.Module,
    *,
    strict: bool = True,
) -> nn.Module:
    """Copies weights into ``model`` after checking names and shapes (warm start).

    Args:
        model: the model to initialise.
        source: a state dict or a model with the same architecture.
        strict: refuse missing and unexpected tensors (shapes are always checked).

    Returns:
        ``model``.

    Raises:
        WeightsMismatchError: naming the missing, unexpected or mis-shaped tensors.
    """
    state = source.state_dict() if isinstance(source, nn.Module) else source
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    found = {n: tuple(t.shape) for n, t in state.items()}
    if not strict:
        found = {n: s for n, s in found.items() if n in expected}
        expected = {n: s for n, s in expected.items() if n in found}
    check_state_shapes(expected, found)
    model.load_state_dict(dict(state), strict=strict)
    return model


warm_start = load_weights


def fit(
    model_config: Any,
    data: Any,
    train_config: TrainConfig | None = None,
    **fit_kwargs: Any,
) -> tuple[nn.Module, History]:
    """Builds a model from ``model_config`` (seeded by ``train_config.seed``) and trains it.

    Returns:
        ``(model, history)``.
    """
    train_config = train_config or TrainConfig()
    model = build_model(model_config, seed=train_config.seed)
    history = Trainer(train_config).fit(model, data, **fit_kwargs)
    return model, history

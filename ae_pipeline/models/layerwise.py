"""Greedy layer-wise pretraining of a :class:`~ae_pipeline.models.stacked.StackedAutoencoder`,
then end-to-end fine-tuning (supervised when labels exist).

Each step is a separate function so that a batch pipeline can run every layer as its own
stage: layer ``i`` is trained on the codes of layer ``i - 1`` (an array or a stream of
batches), the data is encoded with it, and so on; then the layers are assembled into one
stack and fine-tuned end to end (or supervised, with labels)::

    layers = []
    codes = x
    for i in range(n_layers(config)):
        layer, _ = train_layer(config, i, codes, train_config)
        codes = encode_with_layer(layer, codes)
        layers.append(layer)
    stack = assemble_stack(config, layers)
    fine_tune(stack, x, train_config)

:func:`pretrain_stack` runs that loop in one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ae_pipeline.models.config import ModelConfig, TrainConfig
from ae_pipeline.models.factory import build_model, load_weights
from ae_pipeline.models.mlp import MLPAutoencoder
from ae_pipeline.models.objective import ClassificationObjective
from ae_pipeline.models.scoring import Scorer
from ae_pipeline.models.stacked import StackedAutoencoder, layer_config, n_layers, require_stacked
from ae_pipeline.models.trainer import History, Trainer


def train_layer(
    config: ModelConfig,
    index: int,
    data: Any,
    train_config: TrainConfig | None = None,
    *,
    val: Any = None,
    init: Mapping[str, torch.Tensor] | nn.Module | None = None,
    n_rows: int | None = None,
) -> tuple[MLPAutoencoder, History]:
    """Pretrains stacked layer ``index`` as an autoencoder of ``data``.

    Args:
        config: the stacked model config.
        index: which layer (0 = the one that reads the input).
        data: the codes of layer ``index - 1`` (the input for layer 0): an array or any batch
            source :meth:`Trainer.fit` takes.
        train_config: training settings for this layer.
        val: optional validation codes.
        init: optional weights to start from (warm start).
        n_rows: rows of a streamed ``data``, for the training budget (see
            :meth:`Trainer.fit`).

    Returns:
        The trained one-layer autoencoder and its training history.
    """
    train_config = train_config or TrainConfig()
    model = build_model(layer_config(config, index), seed=train_config.seed)
    if init is not None:
        load_weights(model, init)
    history = Trainer(train_config).fit(model, data, val=val, n_rows=n_rows)
    return model, history  # type: ignore[return-value]


def encode_with_layer(
    layer: nn.Module, data: np.ndarray, *, batch_size: int = 8192, device: str = "cpu"
) -> np.ndarray:
    """Returns the codes of ``data`` under a pretrained layer (the next layer's input)."""
    return Scorer(layer, batch_size=batch_size, device=device).encode(data)  # type: ignore[arg-type]


def assemble_stack(
    config: ModelConfig,
    layers: Sequence[nn.Module | Mapping[str, torch.Tensor]],
) -> StackedAutoencoder:
    """Builds the stacked autoencoder from its pretrained layers.

    Args:
        config: the stacked model config.
        layers: one pretrained layer (model or state dict) per stack layer, input side first.

    Raises:
        ValueError: if the number of layers or a layer's shapes do not fit ``config``.
    """
    require_stacked(config)
    if len(layers) != n_layers(config):
        raise ValueError(f"config has {n_layers(config)} layers, got {len(layers)}")
    stack = StackedAutoencoder(config)
    n = stack.n_layers
    for i, layer in enumerate(layers):
        state = layer.state_dict() if isinstance(layer, nn.Module) else layer
        load_weights(stack.encoder[i], _sub_state(state, "encoder.0."))
        load_weights(stack.decoder[n - 1 - i], _sub_state(state, "decoder.0."))
    return stack


def _sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def fine_tune(
    stack: StackedAutoencoder,
    data: Any,
    train_config: TrainConfig | None = None,
    *,
    labels: Any = None,
    val: Any = None,
    val_labels: Any = None,
    reconstruction_weight: float = 0.0,
    supervised: bool = False,
    n_rows: int | None = None,
) -> History:
    """Trains the assembled stack end to end.

    Without labels it minimises the stack's reconstruction objective. With labels (and a
    config with ``num_classes``) it trains the encoder and the classification head with
    cross-entropy, plus ``reconstruction_weight`` times the reconstruction objective.

    Args:
        stack: the assembled stack (changed in place).
        data: training inputs: an array, or a batch source (yielding ``(x, y)`` when
            supervised).
        train_config: training settings.
        labels: integer class labels for an array ``data``.
        val: optional validation inputs.
        val_labels: labels of ``val``.
        reconstruction_weight: weight of the reconstruction term when supervised.
        supervised: train the head even though ``labels`` is ``None`` (a stream source that
            yields ``(x, y)`` batches).
        n_rows: rows of a streamed ``data``, for the training budget (see
            :meth:`Trainer.fit`).
    """
    train_config = train_config or TrainConfig()
    supervised = supervised or labels is not None
    if supervised and stack.head is None:
        raise ValueError("labels given but the stack has no head: set ModelConfig.num_classes")
    objective = ClassificationObjective(reconstruction_weight) if supervised else None
    trainer = Trainer(train_config, objective=objective)
    return trainer.fit(stack, data, labels=labels, val=val, val_labels=val_labels, n_rows=n_rows)


def pretrain_stack(
    config: ModelConfig,
    data: np.ndarray,
    train_config: TrainConfig | None = None,
    *,
    layer_train_configs: Sequence[TrainConfig] | None = None,
) -> tuple[StackedAutoencoder, list[History]]:
    """Runs greedy layer-wise pretraining in one process and assembles the stack.

    Args:
        config: the stacked model config.
        data: the training inputs, ``N x input_dim``.
        train_config: training settings for every layer.
        layer_train_configs: per-layer training settings (override ``train_config``).

    Returns:
        The assembled (not yet fine-tuned) stack and each layer's history.
    """
    histories: list[History] = []
    layers = []
    codes = data
    for i in range(n_layers(config)):
        tc = layer_train_configs[i] if layer_train_configs else train_config
        layer, history = train_layer(config, i, codes, tc)
        codes = encode_with_layer(layer, codes)
        layers.append(layer)
        histories.append(history)
    return assemble_stack(config, layers), histories

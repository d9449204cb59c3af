"""Stacked autoencoder: the model, and the one-layer autoencoders that pretrain its layers.

Its training procedure (greedy layer-wise pretraining, then end-to-end fine-tuning) is in
:mod:`ae_pipeline.models.layerwise`.
"""

from __future__ import annotations

from ae_pipeline.models.config import ConfigError, ModelConfig, register_architecture
from ae_pipeline.models.mlp import MLPAutoencoder


class StackedAutoencoder(MLPAutoencoder):
    """A fully connected autoencoder whose layers can be pretrained one at a time.

    It has the structure of a mirrored :class:`MLPAutoencoder`: ``encoder[i]`` is the encoder
    of layer ``i`` and ``decoder[n - 1 - i]`` its decoder.
    """

    accepts = frozenset({"layers", "sparsity"})

    @classmethod
    def variant_name(cls, config: ModelConfig) -> str:
        return "stacked"

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """``layers``, when given, holds one entry per layer of the stack."""
        if config.layers is not None and len(config.layers) != len(config.hidden_dims) + 1:
            raise ConfigError(
                f"ModelConfig.layers has {len(config.layers)} entries; the stack has "
                f"{len(config.hidden_dims) + 1} layers (hidden_dims + latent)"
            )

    @property
    def n_layers(self) -> int:
        """Number of encoder layers (hidden layers plus the code)."""
        return len(self.encoder)


register_architecture("stacked", StackedAutoencoder)


def require_stacked(config: ModelConfig) -> None:
    if config.architecture != "stacked":
        raise ValueError(f"needs architecture='stacked', got {config.architecture!r}")


def n_layers(config: ModelConfig) -> int:
    """Returns the number of layers to pretrain for a stacked ``config``."""
    require_stacked(config)
    return len(config.stack_widths)


def layer_config(config: ModelConfig, index: int) -> ModelConfig:
    """Returns the config of the one-layer autoencoder that pretrains stacked layer ``index``.

    Its input is the code of layer ``index - 1`` (the data for layer 0) and its code is
    layer ``index``'s. Options come from ``config.layers[index]``; unset ones default to the
    model's loss for layer 0 and MSE above it, and no penalties.
    """
    require_stacked(config)
    widths = [config.input_dim, *config.stack_widths]
    if not 0 <= index < len(widths) - 1:
        raise ValueError(f"layer index {index} out of range 0..{len(widths) - 2}")
    opts = config.layer_options(index)
    out_act = config.layer_output_activation(index)
    loss = opts.loss or (config.loss if index == 0 else "mse")
    if loss == "bce" and out_act != "sigmoid":
        loss = "mse"
    return ModelConfig(
        input_dim=widths[index],
        architecture="mlp",
        hidden_dims=[],
        latent_dim=widths[index + 1],
        latent_activation=config.encoder_activations()[index],
        output_activation=out_act,
        loss=loss,
        sparsity=opts.sparsity,
        corruption=opts.corruption,
        weight_l1=opts.weight_l1,
        weight_l2=opts.weight_l2,
    )

"""Configs: validation, dict/JSON round trips, unknown keys refused."""

from __future__ import annotations

import json

import pytest

from ae_pipeline.models import (
    ConfigError,
    CorruptionConfig,
    LayerOptions,
    ModelConfig,
    SparsityConfig,
    TrainConfig,
)
from ae_pipeline.models.config import VARIANTS

ALL_CONFIGS = [
    ModelConfig(784, hidden_dims=[128], latent_dim=32, output_activation="sigmoid"),
    ModelConfig(
        30,
        hidden_dims=[16],
        latent_dim=64,
        latent_activation="sigmoid",
        sparsity=SparsityConfig("kl", rho=0.05, beta=3.0),
    ),
    ModelConfig(784, corruption=CorruptionConfig("masking", fraction=0.3, clip=[0, 1])),
    ModelConfig(
        64,
        architecture="stacked",
        hidden_dims=[32],
        latent_dim=8,
        layers=[LayerOptions(corruption=CorruptionConfig()), LayerOptions(weight_l2=1e-4)],
        num_classes=10,
    ),
    ModelConfig(64, architecture="vae", hidden_dims=[32], latent_dim=4, beta=0.5),
    ModelConfig(architecture="conv", input_shape=[1, 28, 28], latent_dim=16, tv_weight=0.1),
]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda c: c.variant)
def test_round_trip_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_json(config.to_json()) == config


def test_train_config_round_trip():
    cfg = TrainConfig(epochs=3, optimizer="adamw", patience=2, device="cpu", seed=7)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_unknown_key_refused_with_names_and_valid_keys():
    data = ModelConfig(10).to_dict()
    data["latnt_dim"] = 3
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict(data)
    message = str(err.value)
    assert "latnt_dim" in message and "latent_dim" in message and "hidden_dims" in message


def test_unknown_nested_key_refused():
    data = ModelConfig(10, corruption=CorruptionConfig()).to_dict()
    data["corruption"]["sigmaa"] = 0.2
    with pytest.raises(ConfigError, match="sigmaa"):
        ModelConfig.from_dict(data)


def test_unknown_train_key_refused():
    with pytest.raises(ConfigError, match=r"learning_rate.*valid keys.*lr"):
        TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "swish"}, "activation"),
        ({"loss": "bce"}, "output_activation='sigmoid'"),
        ({"sparsity": SparsityConfig("kl")}, "latent_activation='sigmoid'"),
        ({"architecture": "conv"}, "input_shape"),
        ({"tv_weight": 0.1}, "input_shape"),
        ({"architecture": "transformer"}, "architecture"),
        ({"hidden_dims": [0]}, "hidden_dims"),
        ({"input_shape": [1, 2, 2]}, "does not match"),
        ({"layers": [LayerOptions()]}, "only for architecture 'stacked'"),
        ({"architecture": "stacked", "layers": [LayerOptions()]}, "2 layers"),
    ],
)
def test_invalid_values_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(10, **kwargs)


def test_invalid_train_values_refused():
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match="device"):
        TrainConfig(device="tpu")


def test_for_variant_gives_each_variant():
    for name in VARIANTS:
        extra = {"input_shape": [1, 8, 8]} if name == "convolutional" else {}
        cfg = ModelConfig.for_variant(name, 64, **extra)
        assert cfg.variant.split("+")[0] == name
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.for_variant("sparse", 64, rho=0.1)


def test_conv_input_dim_derived_from_shape():
    assert ModelConfig(architecture="conv", input_shape=[3, 8, 8]).input_dim == 192


def test_stacked_layer_options_drive_activations():
    cfg = ModelConfig(
        20,
        architecture="stacked",
        hidden_dims=[10],
        latent_dim=4,
        activation="tanh",
        output_activation="sigmoid",
        layers=[LayerOptions(activation="sigmoid"), LayerOptions()],
    )
    assert cfg.encoder_activations() == ["sigmoid", "linear"]
    assert cfg.decoder_activations() == ["sigmoid", "sigmoid"]

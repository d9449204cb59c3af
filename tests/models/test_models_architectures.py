"""Every architecture: shapes of encode / decode / forward, and configurable blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ae_pipeline.models import (
    ConvAutoencoder,
    MLPAutoencoder,
    ModelConfig,
    StackedAutoencoder,
    VariationalAutoencoder,
    build_model,
    expected_shapes,
    load_weights,
)
from ae_pipeline.models.factory import WeightsMismatchError

CASES = [
    (ModelConfig(784, hidden_dims=[128], latent_dim=32), MLPAutoencoder),
    (
        ModelConfig(50, architecture="stacked", hidden_dims=[20, 10], latent_dim=3),
        StackedAutoencoder,
    ),
    (ModelConfig(50, architecture="vae", hidden_dims=[20], latent_dim=3), VariationalAutoencoder),
    (ModelConfig(architecture="conv", input_shape=[1, 28, 28], latent_dim=8), ConvAutoencoder),
    (
        ModelConfig(architecture="conv", input_shape=[3, 9, 7], conv_channels=[4, 4, 4]),
        ConvAutoencoder,
    ),
]


@pytest.mark.parametrize(("config", "cls"), CASES, ids=lambda c: getattr(c, "variant", ""))
def test_contract(config, cls):
    model = build_model(config, seed=0)
    assert isinstance(model, cls)
    assert (model.input_dim, model.latent_dim) == (config.input_dim, config.latent_dim)
    x = torch.rand(5, config.input_dim)
    model.eval()
    z = model.encode(x)
    assert z.shape == (5, config.latent_dim)
    assert model.decode(z).reshape(5, -1).shape == (5, config.input_dim)
    assert model(x).shape == x.shape
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_shapes(config)


def test_conv_takes_images_and_rows():
    model = build_model(ModelConfig(architecture="conv", input_shape=[1, 28, 28]), seed=0).eval()
    images = torch.rand(3, 1, 28, 28)
    assert model(images).shape == images.shape
    torch.testing.assert_close(model(images.reshape(3, -1)), model(images).reshape(3, -1))


def test_mirrored_and_explicit_decoder_widths():
    mirrored = build_model(ModelConfig(784, hidden_dims=[256, 128], latent_dim=32))
    assert [m.linear.out_features for m in mirrored.decoder] == [128, 256, 784]
    explicit = build_model(
        ModelConfig(784, hidden_dims=[256], latent_dim=32, decoder_dims=[64, 512])
    )
    assert [m.linear.out_features for m in explicit.decoder] == [64, 512, 784]


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("relu", nn.ReLU),
        ("sigmoid", nn.Sigmoid),
        ("tanh", nn.Tanh),
        ("gelu", nn.GELU),
        ("linear", nn.Identity),
    ],
)
def test_activations(name, module):
    model = build_model(ModelConfig(10, hidden_dims=[6], latent_dim=2, activation=name))
    assert isinstance(model.encoder[0].act, module)
    assert isinstance(model.decoder[0].act, module)


def test_sigmoid_output_in_unit_interval():
    model = build_model(ModelConfig(10, hidden_dims=[6], latent_dim=2, output_activation="sigmoid"))
    out = model(torch.randn(100, 10) * 10)
    assert out.min() >= 0 and out.max() <= 1


def test_seeded_build_is_reproducible_and_leaves_global_rng():
    cfg = ModelConfig(20, hidden_dims=[10], latent_dim=3)
    state = torch.random.get_rng_state()
    a, b = build_model(cfg, seed=1), build_model(cfg, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    c = build_model(cfg, seed=2)
    assert not torch.equal(a.encoder[0].linear.weight, c.encoder[0].linear.weight)


def test_classification_head():
    model = build_model(ModelConfig(20, hidden_dims=[10], latent_dim=3, num_classes=4))
    assert model.classify(torch.rand(6, 20)).shape == (6, 4)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(ModelConfig(20)).classify(torch.rand(2, 20))


def test_warm_start_copies_and_checks_shapes():
    cfg = ModelConfig(20, hidden_dims=[10], latent_dim=3)
    source, target = build_model(cfg, seed=1), build_model(cfg, seed=2)
    load_weights(target, source)
    assert torch.equal(target.encoder[0].linear.weight, source.encoder[0].linear.weight)
    other = build_model(ModelConfig(20, hidden_dims=[12], latent_dim=3))
    with pytest.raises(
        WeightsMismatchError, match=r"encoder\.0\.linear\.weight.*\(12, 20\).*\(10, 20\)"
    ):
        load_weights(target, other)


def test_vae_sampling_and_mean_path():
    vae = build_model(ModelConfig(12, architecture="vae", hidden_dims=[8], latent_dim=2), seed=0)
    assert vae.sample(7).shape == (7, 12)
    x = torch.rand(4, 12)
    vae.eval()
    torch.testing.assert_close(vae(x), vae(x))
    torch.testing.assert_close(vae(x), vae.decode(vae.encode(x)))
    vae.train()
    assert not torch.equal(vae(x), vae(x))

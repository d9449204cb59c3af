"""Stacked autoencoders: greedy layer-wise pretraining, fine-tuning, supervised fine-tuning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ae_pipeline.models import (
    CorruptionConfig,
    LayerOptions,
    ModelConfig,
    Scorer,
    SparsityConfig,
    Trainer,
    assemble_stack,
    encode_with_layer,
    fine_tune,
    layer_config,
    n_layers,
    pretrain_stack,
    train_layer,
)

CFG = ModelConfig(
    64,
    architecture="stacked",
    hidden_dims=[32],
    latent_dim=8,
    latent_activation="relu",
    output_activation="sigmoid",
    num_classes=10,
    layers=[LayerOptions(corruption=CorruptionConfig("masking", fraction=0.2)), LayerOptions()],
)


@pytest.fixture(scope="module")
def pretrained(digits):
    torch.set_num_threads(2)
    x = digits[0][:1400]
    train_config = Trainer().config.replace(
        epochs=30, lr=5e-3, batch_size=64, device="cpu", progress=False
    )
    stack, histories = pretrain_stack(CFG, x, train_config)
    return stack, histories, train_config


def test_layer_configs_carry_their_own_options():
    first, second = layer_config(CFG, 0), layer_config(CFG, 1)
    assert (first.input_dim, first.latent_dim, second.input_dim, second.latent_dim) == (
        64,
        32,
        32,
        8,
    )
    assert first.corruption is not None and second.corruption is None
    assert (first.output_activation, second.output_activation) == ("sigmoid", "relu")
    sparse = CFG.replace(
        activation="sigmoid",
        layers=[LayerOptions(sparsity=SparsityConfig("kl", rho=0.1)), LayerOptions(weight_l2=1e-3)],
    )
    assert layer_config(sparse, 0).sparsity.rho == 0.1 and layer_config(sparse, 1).weight_l2 == 1e-3
    assert n_layers(CFG) == 2
    with pytest.raises(ValueError, match="out of range"):
        layer_config(CFG, 2)


def test_pretraining_lowers_each_layers_loss(pretrained):
    _, histories, _ = pretrained
    assert len(histories) == 2
    for history in histories:
        assert history.train_losses[-1] < 0.7 * history.train_losses[0]


def test_assembled_stack_composes_the_layers(digits, quick):
    x = digits[0][:300]
    layer0, _ = train_layer(CFG, 0, x, quick(epochs=1))
    codes = encode_with_layer(layer0, x)
    # a later stage trains on the codes as a stream of chunks, as a Beam stage would
    layer1, history = train_layer(
        CFG, 1, lambda: (codes[i : i + 50] for i in range(0, len(codes), 50)), quick(epochs=2)
    )
    assert history.epochs[0].samples == 300
    stack = assemble_stack(CFG, [layer0, layer1.state_dict()])
    np.testing.assert_allclose(
        Scorer(stack).encode(x), encode_with_layer(layer1, codes), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="2 layers"):
        assemble_stack(CFG, [layer0])


def test_fine_tuning_lowers_end_to_end_loss(pretrained, digits):
    stack, _, train_config = pretrained
    stack = copy.deepcopy(stack)
    x, xt = digits[0][:1400], digits[0][1400:]
    trainer = Trainer(train_config)
    before = trainer.evaluate(stack, xt)["loss"]
    history = fine_tune(stack, x, train_config)
    after = trainer.evaluate(stack, xt)["loss"]
    assert after < 0.8 * before, (before, after)
    assert history.train_losses[-1] < history.train_losses[0]


def test_supervised_fine_tuning_beats_chance(pretrained, digits):
    stack, _, train_config = pretrained
    stack = copy.deepcopy(stack)
    (x, y) = digits
    history = fine_tune(stack, x[:1400], train_config.replace(lr=3e-3), labels=y[:1400])
    accuracy = float((Scorer(stack).classify(x[1400:]).argmax(axis=1) == y[1400:]).mean())
    assert accuracy > 0.7, accuracy  # chance: 0.1
    assert "cross_entropy" in history.epochs[0].train_parts


def test_labels_without_head_refused(pretrained, digits):
    stack, _, train_config = pretrained
    no_head = copy.deepcopy(stack)
    no_head.head = None
    with pytest.raises(ValueError, match="num_classes"):
        fine_tune(no_head, digits[0][:100], train_config, labels=digits[1][:100])

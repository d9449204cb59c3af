"""Losses, the custom-loss hook, penalties and corruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ae_pipeline.models import (
    CorruptionConfig,
    ModelConfig,
    ReconstructionObjective,
    SparsityConfig,
    Trainer,
    bce_loss,
    build_model,
    corrupt,
    get_loss,
    mse_loss,
    register_loss,
    total_variation,
)
from ae_pipeline.models.regularizers import kl_sparsity, weight_penalty


def test_mse_and_bce_values():
    r, t = torch.full((2, 3), 0.25), torch.ones(2, 3)
    assert float(mse_loss(r, t)) == pytest.approx(0.5625)
    assert float(bce_loss(r, t)) == pytest.approx(-np.log(0.25), rel=1e-6)


def test_bce_refuses_out_of_range_targets_naming_min_max():
    with pytest.raises(ValueError, match=r"min=-0\.5, max=3"):
        bce_loss(torch.full((2, 2), 0.5), torch.tensor([[-0.5, 0.2], [3.0, 1.0]]))


def test_trainer_refuses_bce_on_out_of_range_data(quick):
    cfg = ModelConfig(4, hidden_dims=[], latent_dim=2, loss="bce", output_activation="sigmoid")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"BCE loss targets must lie in \[0, 1\]; observed min=-"):
        Trainer(quick(epochs=1)).fit(build_model(cfg), x)


def test_custom_loss_by_name_and_by_callable(quick):
    register_loss("test_mae", lambda r, t: (r - t).abs().mean(), overwrite=True)
    assert float(get_loss("test_mae")(torch.zeros(2), torch.ones(2))) == 1.0
    with pytest.raises(ValueError, match=r"unknown loss 'nope'.*mse"):
        get_loss("nope")
    x = np.random.default_rng(0).random((128, 6), dtype=np.float32)
    model = build_model(ModelConfig(6, hidden_dims=[], latent_dim=3, loss="test_mae"), seed=0)
    history = Trainer(quick(epochs=2)).fit(model, x)
    assert history.epochs[-1].train_loss > 0
    calls = []

    def hook(r, t):
        calls.append(1)
        return ((r - t) ** 4).mean()

    Trainer(quick(epochs=1), loss_fn=hook).fit(
        build_model(ModelConfig(6, hidden_dims=[], latent_dim=3)), x
    )
    assert calls


def test_total_variation():
    shape = [1, 4, 4]
    assert float(total_variation(torch.ones(2, 16), shape)) == 0.0
    checker = torch.tensor([[(i + j) % 2 for j in range(4)] for i in range(4)], dtype=torch.float32)
    assert float(total_variation(checker.reshape(1, 16), shape)) == pytest.approx(2.0)


def test_tv_penalty_enters_objective():
    cfg = ModelConfig(16, hidden_dims=[], latent_dim=2, tv_weight=0.5, input_shape=[1, 4, 4])
    model = build_model(cfg, seed=0)
    loss, parts = ReconstructionObjective(cfg)(model, torch.rand(8, 16), training=False)
    assert parts["tv"] > 0
    torch.testing.assert_close(loss, parts["reconstruction"] + parts["tv"])


def test_weight_penalties_skip_biases():
    cfg = ModelConfig(3, hidden_dims=[], latent_dim=2)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    # two weight matrices of 6 entries each (12 x 0.5); biases excluded
    assert float(weight_penalty(model, l1=1.0).detach()) == pytest.approx(6.0)
    assert float(weight_penalty(model, l2=2.0).detach()) == pytest.approx(6.0)
    objective = ReconstructionObjective(cfg.replace(weight_l1=0.1, weight_l2=0.1))
    _, parts = objective(model, torch.rand(4, 3), training=True)
    assert float(parts["weights"].detach()) == pytest.approx(0.1 * 6 + 0.1 * 3)


def test_kl_sparsity():
    assert float(kl_sparsity(torch.full((10, 4), 0.05), 0.05)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_sparsity(torch.full((10, 4), 0.5), 0.05)) > 1.0


@pytest.mark.parametrize(
    ("config", "check"),
    [
        (
            CorruptionConfig("gaussian", sigma=0.5),
            lambda x, c: abs(float((c - x).std()) - 0.5) < 0.02,
        ),
        (
            CorruptionConfig("masking", fraction=0.3),
            lambda x, c: abs(float((c == 0).float().mean()) - 0.3) < 0.02,
        ),
        (
            CorruptionConfig("salt_and_pepper", fraction=0.2),
            lambda x, c: (
                abs(float((c == 0).float().mean()) - 0.1) < 0.02
                and abs(float((c == 1).float().mean()) - 0.1) < 0.02
            ),
        ),
        (
            CorruptionConfig("gaussian", sigma=2.0, clip=[0, 1]),
            lambda x, c: float(c.min()) >= 0 and float(c.max()) <= 1,
        ),
    ],
    ids=["gaussian", "masking", "salt_and_pepper", "clip"],
)
def test_corruption_kinds(config, check):
    x = torch.full((200, 100), 0.5)
    corrupted = corrupt(x, config, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.full((200, 100), 0.5))
    assert check(x, corrupted)


def test_corruption_only_while_training_and_loss_against_clean():
    cfg = ModelConfig(
        8, hidden_dims=[], latent_dim=8, corruption=CorruptionConfig("gaussian", sigma=1.0)
    )
    model = build_model(cfg, seed=0)
    objective = ReconstructionObjective(cfg)
    x = torch.rand(16, 8)
    seen = []
    model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    model.train()
    objective(model, x, training=True)
    objective(model, x, training=False)
    assert not torch.equal(seen[0], x)
    assert torch.equal(seen[1], x)
    eval_loss, _ = objective(model, x, training=False)
    torch.testing.assert_close(eval_loss, torch.nn.functional.mse_loss(model(x), x))


def test_sparsity_l1_term():
    cfg = ModelConfig(8, hidden_dims=[], latent_dim=4, sparsity=SparsityConfig("l1", beta=2.0))
    model = build_model(cfg, seed=0)
    x = torch.rand(10, 8)
    _, parts = ReconstructionObjective(cfg)(model, x, training=False)
    torch.testing.assert_close(parts["sparsity"], 2.0 * model.encode(x).abs().mean())

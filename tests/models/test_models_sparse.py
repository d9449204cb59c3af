"""Sparse autoencoders: mean code activations land near rho; L1 shrinks activations."""

from __future__ import annotations

import numpy as np

from ae_pipeline.models import ModelConfig, Scorer, SparsityConfig, fit

BASE = ModelConfig(
    64, hidden_dims=[], latent_dim=32, latent_activation="sigmoid", output_activation="sigmoid"
)


def test_kl_sparse_ae_mean_activations_near_rho(digits, quick):
    x = digits[0]
    cfg = BASE.replace(sparsity=SparsityConfig("kl", rho=0.05, beta=3.0))
    assert cfg.variant == "sparse"
    model, history = fit(cfg, x, quick(epochs=30, lr=5e-3, batch_size=64))
    rho_hat = Scorer(model).encode(x).mean(axis=0)
    assert abs(float(rho_hat.mean()) - 0.05) < 0.01, rho_hat.mean()
    assert np.all(np.abs(rho_hat - 0.05) < 0.03), rho_hat
    dense, _ = fit(BASE, x, quick(epochs=30, lr=5e-3, batch_size=64))
    assert Scorer(dense).encode(x).mean() > 0.2
    assert history.epochs[-1].train_parts["sparsity"] < history.epochs[0].train_parts["sparsity"]


def test_l1_activity_penalty_shrinks_codes(digits, quick):
    x = digits[0]
    cfg = BASE.replace(latent_activation="relu", sparsity=SparsityConfig("l1", beta=0.5))
    sparse, _ = fit(cfg, x, quick(epochs=15, lr=5e-3, batch_size=64))
    plain, _ = fit(cfg.replace(sparsity=None), x, quick(epochs=15, lr=5e-3, batch_size=64))
    sparse_codes, plain_codes = Scorer(sparse).encode(x), Scorer(plain).encode(x)
    assert np.abs(sparse_codes).mean() < 0.5 * np.abs(plain_codes).mean()
    assert (sparse_codes == 0).mean() > (plain_codes == 0).mean()

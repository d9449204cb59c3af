"""Variational autoencoder: positive KL, samples of the input's shape, learning."""

from __future__ import annotations

import numpy as np
import torch

from ae_pipeline.models import ModelConfig, ReconstructionObjective, Scorer, build_model, fit


def test_vae_trains_with_positive_kl_and_samples_input_shape(digits, quick):
    x = digits[0]
    cfg = ModelConfig(
        64,
        architecture="vae",
        hidden_dims=[32],
        latent_dim=4,
        output_activation="sigmoid",
        loss="bce",
    )
    assert cfg.variant == "variational"
    model, history = fit(cfg, x, quick(epochs=15, lr=3e-3, batch_size=64, validation_fraction=0.2))
    assert all(e.train_parts["kl"] > 0 and e.val_parts["kl"] > 0 for e in history.epochs)
    assert history.val_losses[-1] < history.val_losses[0]
    samples = model.sample(10, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (10, 64)
    assert float(samples.min()) >= 0 and float(samples.max()) <= 1
    codes = Scorer(model).encode(x)
    assert codes.shape == (len(x), 4) and np.isfinite(codes).all()


def test_beta_weights_the_kl_term(digits):
    x = torch.from_numpy(digits[0][:64])
    cfg = ModelConfig(64, architecture="vae", hidden_dims=[16], latent_dim=3)
    model = build_model(cfg, seed=0).eval()
    plain, parts = ReconstructionObjective(cfg.replace(beta=0.0))(model, x, training=False)
    weighted, _ = ReconstructionObjective(cfg.replace(beta=4.0))(model, x, training=False)
    assert float(parts["kl"].detach()) > 0
    torch.testing.assert_close(weighted - plain, 4.0 * parts["kl"] / 64)

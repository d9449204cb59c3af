"""Denoising autoencoders reconstruct clean images from corrupted ones."""

from __future__ import annotations

import pytest
import torch

from ae_pipeline.models import CorruptionConfig, ModelConfig, Scorer, corrupt, fit


def _denoise_errors(fashion, quick, corruption, n, epochs):
    x, _, xt, _ = fashion
    cfg = ModelConfig(
        784, hidden_dims=[128], latent_dim=32, output_activation="sigmoid", corruption=corruption
    )
    assert cfg.variant == "denoising"
    model, _ = fit(cfg, x[:n], quick(epochs=epochs, lr=2e-3))
    noisy = corrupt(
        torch.from_numpy(xt), corruption, generator=torch.Generator().manual_seed(1)
    ).numpy()
    denoised = Scorer(model).reconstruct(noisy)
    return float(((noisy - xt) ** 2).mean()), float(((denoised - xt) ** 2).mean())


@pytest.mark.slow
def test_gaussian_dae_output_much_closer_to_clean_than_noisy_input(fashion, quick):
    noisy_mse, denoised_mse = _denoise_errors(
        fashion, quick, CorruptionConfig("gaussian", sigma=0.5, clip=[0.0, 1.0]), 10000, 10
    )
    assert noisy_mse > 0.1
    assert denoised_mse < 0.35 * noisy_mse, (denoised_mse, noisy_mse)


@pytest.mark.parametrize(
    "corruption",
    [CorruptionConfig("masking", fraction=0.5), CorruptionConfig("salt_and_pepper", fraction=0.2)],
    ids=["masking", "salt_and_pepper"],
)
def test_masking_and_salt_and_pepper_daes_denoise(fashion, quick, corruption):
    noisy_mse, denoised_mse = _denoise_errors(fashion, quick, corruption, 4000, 6)
    assert denoised_mse < 0.5 * noisy_mse, (denoised_mse, noisy_mse)

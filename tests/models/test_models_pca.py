"""A linear autoencoder trained with MSE spans the principal subspace (Baldi & Hornik)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from ae_pipeline.models import ModelConfig, fit


def _decoder_span(model) -> np.ndarray:
    return model.decoder[0].linear.weight.detach().numpy()  # D x k: its columns span the output


def test_linear_ae_learns_pca_subspace_on_synthetic_data(quick):
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(20, 3)))[0].T
    x = (rng.normal(size=(2000, 3)) * [3.0, 2.0, 1.5]) @ basis + rng.normal(size=(2000, 20)) * 0.1
    x = x.astype(np.float32)
    cfg = ModelConfig(20, hidden_dims=[], latent_dim=3, latent_activation="linear")
    model, _ = fit(cfg, x, quick(epochs=20, lr=1e-2, batch_size=64))
    pca = PCA(3).fit(x)
    angles = np.degrees(subspace_angles(_decoder_span(model), pca.components_.T))
    assert angles.max() < 3.0, angles
    # and a random 3-d subspace is far from it
    random_angles = np.degrees(subspace_angles(rng.normal(size=(20, 3)), pca.components_.T))
    assert random_angles.max() > 30.0


@pytest.mark.slow
def test_linear_ae_learns_pca_subspace_on_digits(digits, quick):
    x = digits[0] - digits[0].mean(axis=0)
    cfg = ModelConfig(64, hidden_dims=[], latent_dim=4)
    model, _ = fit(cfg, x, quick(epochs=60, lr=5e-3, batch_size=64))
    pca = PCA(4).fit(x)
    angles = np.degrees(subspace_angles(_decoder_span(model), pca.components_.T))
    assert angles.max() < 5.0, angles

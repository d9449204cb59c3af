"""On Fashion-MNIST: a 784-128-32-128-784 AE beats PCA-32; a convolutional AE learns."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from ae_pipeline.models import ModelConfig, Scorer, fit


@pytest.mark.slow
def test_mlp_ae_beats_pca_32_on_test_mse(fashion, quick):
    x, _, xt, _ = fashion
    pca = PCA(32, random_state=0).fit(x)
    pca_mse = float(((pca.inverse_transform(pca.transform(xt)) - xt) ** 2).mean())
    cfg = ModelConfig(784, hidden_dims=[128], latent_dim=32, output_activation="sigmoid")
    model, history = fit(cfg, x, quick(epochs=20, lr=2e-3, batch_size=256))
    ae_mse = float(Scorer(model).errors(xt).mean())
    assert ae_mse < 0.95 * pca_mse, (ae_mse, pca_mse)
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss


@pytest.mark.slow
def test_conv_ae_learns_images(fashion, quick):
    x, _, xt, _ = fashion
    cfg = ModelConfig(
        architecture="conv", input_shape=[1, 28, 28], latent_dim=32, output_activation="sigmoid"
    )
    model, history = fit(
        cfg, x[:5000].reshape(-1, 1, 28, 28), quick(epochs=3, lr=2e-3, batch_size=128)
    )
    assert history.train_losses[-1] < 0.5 * history.train_losses[0]
    mean_image_mse = float(((xt - x.mean(axis=0)) ** 2).mean())
    assert float(Scorer(model).errors(xt).mean()) < 0.5 * mean_image_mse
    assert np.isfinite(history.samples_per_s)

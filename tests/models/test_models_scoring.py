"""The shared batch scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ae_pipeline.models import ModelConfig, Scorer, build_model


@pytest.fixture(scope="module")
def block():
    return np.random.default_rng(0).random((300, 20), dtype=np.float32)


def test_scores_match_a_direct_computation(block):
    model = build_model(ModelConfig(20, hidden_dims=[10], latent_dim=4), seed=0)
    result = Scorer(model, batch_size=64).score(block)
    with torch.no_grad():
        x = torch.from_numpy(block)
        z = model.encode(x)
        recon = model.decode(z)
    np.testing.assert_allclose(result.latent, z.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.reconstruction, recon.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        result.contributions, ((recon - x) ** 2).numpy(), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(result.error, result.contributions.mean(axis=1), rtol=1e-5)
    assert result.error.dtype == np.float32 and len(result) == 300


def test_batch_size_does_not_change_scores(block):
    model = build_model(ModelConfig(20, hidden_dims=[10], latent_dim=4), seed=0)
    a = Scorer(model, batch_size=7).score(block)
    b = Scorer(model, batch_size=1000).score(block)
    np.testing.assert_allclose(a.error, b.error, rtol=1e-5)
    np.testing.assert_allclose(a.latent, b.latent, rtol=1e-5, atol=1e-6)


def test_helpers_agree_with_score(block):
    scorer = Scorer(build_model(ModelConfig(20, hidden_dims=[10], latent_dim=4), seed=0))
    result = scorer.score(block)
    # Separate calls: equal up to float rounding (BLAS kernels may differ with buffer
    # alignment), never compared bit for bit.
    np.testing.assert_allclose(scorer.errors(block), result.error, rtol=1e-6)
    np.testing.assert_allclose(scorer.encode(block), result.latent, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        scorer.reconstruct(block), result.reconstruction, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(scorer.decode(result.latent), result.reconstruction, rtol=1e-6)
    partial = scorer.score(block, latent=False, reconstruction=False, contributions=False)
    assert partial.latent is None and partial.contributions is None


def test_eval_mode_and_no_grad(block):
    model = build_model(ModelConfig(20, architecture="vae", hidden_dims=[10], latent_dim=3), seed=0)
    model.train()
    scorer = Scorer(model)
    assert not model.training
    first, second = scorer.score(block), scorer.score(block)
    # The VAE is scored on its mean path: no sampling noise (equal up to float rounding).
    np.testing.assert_allclose(first.error, second.error, rtol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_wrong_width_refused(block):
    scorer = Scorer(build_model(ModelConfig(20, hidden_dims=[], latent_dim=4)))
    with pytest.raises(ValueError, match="records have 19 features, the model expects 20"):
        scorer.score(block[:, :19])
    with pytest.raises(ValueError, match="N x 20 block"):
        scorer.score(block[0])


def test_empty_block_and_float64_input(block):
    scorer = Scorer(build_model(ModelConfig(20, hidden_dims=[], latent_dim=4)))
    empty = scorer.score(np.empty((0, 20), np.float32))
    assert empty.error.shape == (0,) and empty.latent.shape == (0, 4)
    assert scorer.encode(np.empty((0, 20))).shape == (0, 4)
    np.testing.assert_allclose(
        scorer.errors(block.astype(np.float64)), scorer.errors(block), rtol=1e-6
    )


def test_conv_model_scores_flat_rows_and_images():
    model = build_model(
        ModelConfig(architecture="conv", input_shape=[1, 8, 8], latent_dim=4), seed=0
    )
    images = np.random.default_rng(1).random((10, 1, 8, 8), dtype=np.float32)
    scorer = Scorer(model)
    np.testing.assert_allclose(
        scorer.errors(images), scorer.errors(images.reshape(10, 64)), rtol=1e-6
    )
    assert scorer.score(images).reconstruction.shape == (10, 64)

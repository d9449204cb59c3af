"""CUDA paths (device selection, mixed precision, scoring); skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ae_pipeline.models import ModelConfig, Scorer, TrainConfig, build_model, fit, resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CFG = ModelConfig(64, hidden_dims=[32], latent_dim=8, output_activation="sigmoid", loss="bce")


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).random((2048, 64), dtype=np.float32)


def test_auto_picks_cuda():
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_training_on_cuda(data, amp):
    cfg = TrainConfig(epochs=3, device="cuda", mixed_precision=amp, progress=False, seed=0)
    model, history = fit(CFG, data, cfg)
    assert history.device.startswith("cuda")
    assert history.train_losses[-1] < history.train_losses[0]
    assert next(model.parameters()).device.type == "cuda"


def test_same_seed_same_weights_on_cuda(data):
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = TrainConfig(epochs=2, device="cuda", progress=False, seed=3)
    a, _ = fit(CFG, data, cfg)
    b, _ = fit(CFG, data, cfg)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name


def test_cuda_scores_match_cpu(data):
    model = build_model(CFG, seed=0)
    cpu = Scorer(model, device="cpu").score(data)
    gpu = Scorer(model, device="cuda").score(data)
    np.testing.assert_allclose(gpu.error, cpu.error, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(gpu.latent, cpu.latent, rtol=1e-3, atol=1e-5)

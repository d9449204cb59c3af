"""A model variant is one class and its registration: its own config checks and loss terms,
built, trained, saved and loaded with no edit elsewhere (``config.py``, ``factory.py``,
``objective.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ae_pipeline.models import (
    ConfigError,
    MLPAutoencoder,
    ModelConfig,
    ReconstructionObjective,
    TrainConfig,
    build_model,
    fit,
)
from ae_pipeline.models import config as config_module
from ae_pipeline.models.base import AEOutput


class CodePenaltyAutoencoder(MLPAutoencoder):
    """An MLP autoencoder whose codes are pulled towards 0 (a variant a user might add)."""

    accepts = frozenset()  # neither decoder_dims nor sparsity

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        if config.latent_dim > 8:
            raise ConfigError(f"ModelConfig.latent_dim must be <= 8 here, got {config.latent_dim}")

    def extra_loss_terms(self, out: AEOutput, config: ModelConfig):
        penalty = out.latent.pow(2).mean()
        return {"code": (penalty, 0.5 * penalty)}


@pytest.fixture
def registered():
    config_module.register_architecture("code_penalty", CodePenaltyAutoencoder)
    try:
        yield
    finally:
        config_module._ARCHITECTURE_CLASSES.pop("code_penalty", None)


def test_a_registered_variant_builds_trains_and_adds_its_loss_term(registered, tmp_path):
    from ae_pipeline.artifact import load_artifact, save_artifact

    cfg = ModelConfig(6, architecture="code_penalty", hidden_dims=[8], latent_dim=2)
    model = build_model(cfg, seed=0)
    assert type(model) is CodePenaltyAutoencoder
    x = torch.randn(32, 6)
    total, parts = ReconstructionObjective(cfg)(model, x, training=False)
    assert set(parts) == {"reconstruction", "code"}
    torch.testing.assert_close(total, parts["reconstruction"] + 0.5 * parts["code"])
    trained, history = fit(
        cfg, np.random.default_rng(0).normal(size=(256, 6)).astype(np.float32),
        TrainConfig(epochs=2, batch_size=32, progress=False, device="cpu", min_steps=None),
    )  # fmt: skip
    assert len(history.train_losses) == 2
    path = save_artifact(str(tmp_path / "v"), trained, cfg)
    assert type(load_artifact(path).model) is CodePenaltyAutoencoder  # built from its config


def test_a_variant_checks_its_own_settings_and_refuses_fields_it_does_not_read(registered):
    with pytest.raises(ConfigError, match="latent_dim must be <= 8"):
        ModelConfig(6, architecture="code_penalty", latent_dim=9)
    with pytest.raises(ConfigError, match=r"decoder_dims is only for architecture 'mlp' or 'vae'"):
        ModelConfig(6, architecture="code_penalty", decoder_dims=[4])
    with pytest.raises(ValueError, match="is taken"):
        config_module.register_architecture("mlp", CodePenaltyAutoencoder)


def test_the_built_in_variants_refuse_what_they_do_not_read():
    from ae_pipeline.models import SparsityConfig

    with pytest.raises(ConfigError, match=r"sparsity is only for architecture .*not 'vae'"):
        ModelConfig(6, architecture="vae", sparsity=SparsityConfig("l1"))
    with pytest.raises(ConfigError, match="kernel_size must be an odd int"):
        ModelConfig(architecture="conv", input_shape=[1, 4, 4], conv_channels=[2], kernel_size=2)
    assert config_module.architecture_names()[:4] == ("mlp", "stacked", "vae", "conv")

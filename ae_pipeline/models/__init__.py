"""Autoencoders in pure PyTorch: building blocks, objectives, training and scoring.

No Beam or Kafka here: this package depends on torch and numpy only, so that the Beam
DoFns, the plain Kafka consumer and notebooks all share one implementation.

Example:
    >>> import numpy as np
    >>> from ae_pipeline.models import ModelConfig, TrainConfig, Scorer, fit
    >>> x = np.random.default_rng(0).random((256, 16), dtype=np.float32)
    >>> cfg = ModelConfig(16, hidden_dims=[8], latent_dim=4, output_activation="sigmoid")
    >>> model, history = fit(cfg, x, TrainConfig(epochs=2, progress=False, device="cpu"))
    >>> Scorer(model).errors(x).shape
    (256,)
"""

from ae_pipeline.models.base import AEOutput, Autoencoder
from ae_pipeline.models.budget import Budget, plan_budget
from ae_pipeline.models.config import (
    ConfigError,
    CorruptionConfig,
    LayerOptions,
    ModelConfig,
    SparsityConfig,
    TrainConfig,
)
from ae_pipeline.models.conv import ConvAutoencoder
from ae_pipeline.models.corruption import corrupt
from ae_pipeline.models.device import resolve_device
from ae_pipeline.models.factory import (
    WeightsMismatchError,
    build_model,
    check_state_shapes,
    expected_shapes,
    fit,
    load_weights,
    warm_start,
)
from ae_pipeline.models.layerwise import (
    assemble_stack,
    encode_with_layer,
    fine_tune,
    pretrain_stack,
    train_layer,
)
from ae_pipeline.models.losses import bce_loss, get_loss, mse_loss, register_loss, total_variation
from ae_pipeline.models.mlp import MLPAutoencoder
from ae_pipeline.models.objective import ClassificationObjective, ReconstructionObjective
from ae_pipeline.models.score_function import FeatureErrorStats, LatentStats, ScoreFunction
from ae_pipeline.models.scoring import Scorer, ScoreResult, fit_score_function
from ae_pipeline.models.stacked import StackedAutoencoder, layer_config, n_layers
from ae_pipeline.models.trainer import EpochStats, History, Trainer
from ae_pipeline.models.vae import VariationalAutoencoder

__all__ = [
    "AEOutput",
    "Autoencoder",
    "Budget",
    "ClassificationObjective",
    "ConfigError",
    "ConvAutoencoder",
    "CorruptionConfig",
    "EpochStats",
    "FeatureErrorStats",
    "History",
    "LatentStats",
    "LayerOptions",
    "MLPAutoencoder",
    "ModelConfig",
    "ReconstructionObjective",
    "ScoreFunction",
    "ScoreResult",
    "Scorer",
    "SparsityConfig",
    "StackedAutoencoder",
    "TrainConfig",
    "Trainer",
    "VariationalAutoencoder",
    "WeightsMismatchError",
    "assemble_stack",
    "bce_loss",
    "build_model",
    "check_state_shapes",
    "corrupt",
    "encode_with_layer",
    "expected_shapes",
    "fine_tune",
    "fit",
    "fit_score_function",
    "get_loss",
    "layer_config",
    "load_weights",
    "mse_loss",
    "n_layers",
    "plan_budget",
    "pretrain_stack",
    "register_loss",
    "resolve_device",
    "total_variation",
    "train_layer",
    "warm_start",
]

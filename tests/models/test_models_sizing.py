"""The default model size follows the data's width, and never overrides what the user set."""

from __future__ import annotations

import pytest

from ae_pipeline.models import ModelConfig
from ae_pipeline.models.sizing import default_size, sized


@pytest.mark.parametrize(
    ("width", "hidden", "latent"),
    [
        (1, [16], 2),
        (9, [16], 3),
        (30, [16], 6),
        (64, [32], 8),
        (301, [128], 18),
        (784, [256], 28),
        (5000, [256], 32),
    ],
)
def test_size_grows_with_the_width_within_bounds(width, hidden, latent):
    size = default_size(width)
    assert size == {"hidden_dims": hidden, "latent_dim": latent}
    ModelConfig(width, **size)  # a valid model of that width


def test_given_sizes_win_and_other_architectures_are_left_alone():
    assert sized({"hidden_dims": [4], "latent_dim": 2}, 784) == {
        "hidden_dims": [4],
        "latent_dim": 2,
    }
    assert sized({"hidden_dims": [], "latent_dim": None}, 100)["hidden_dims"] == []
    conv = {"architecture": "conv", "input_shape": [1, 28, 28]}
    assert sized(conv, 784) == conv
    with pytest.raises(ValueError, match="input_dim must be >= 1"):
        default_size(0)

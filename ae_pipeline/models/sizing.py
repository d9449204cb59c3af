"""The default size of an autoencoder, from the width of the data: what ``ae-pipeline train``
builds when ``--hidden_dims`` and ``--latent_dim`` are not given.

* the code: ``ceil(sqrt(D))`` units, between 2 and 32;
* one hidden layer of the power of two nearest ``D / 2``, between 16 and 256 (and never
  narrower than the code).

Chosen on validation folds of the benchmark's training data
(``benchmarks/quality/recipe_selection.py``); a fixed ``[64]``/8 network lost to it on data of
every width, being too wide for 9 columns and too narrow for 784.

Example:
    >>> default_size(30)
    {'hidden_dims': [16], 'latent_dim': 6}
    >>> default_size(784)
    {'hidden_dims': [256], 'latent_dim': 28}
    >>> sized({"architecture": "vae", "latent_dim": 4}, 64)
    {'architecture': 'vae', 'latent_dim': 4, 'hidden_dims': [32]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: Architectures whose size :func:`sized` fills in (the others have their own settings).
SIZED_ARCHITECTURES = ("mlp", "stacked", "vae")


def default_size(input_dim: int) -> dict[str, Any]:
    """``{"hidden_dims": [h], "latent_dim": l}`` for data ``input_dim`` wide."""
    if input_dim < 1:
        raise ValueError(f"input_dim must be >= 1, got {input_dim}")
    latent = int(min(32, max(2, math.ceil(math.sqrt(input_dim)))))
    hidden = int(min(256, max(16, 2 ** round(math.log2(max(input_dim / 2, 1))))))
    return {"hidden_dims": [max(hidden, latent)], "latent_dim": latent}


def sized(model_config: Mapping[str, Any], input_dim: int) -> dict[str, Any]:
    """``model_config`` with ``hidden_dims`` and ``latent_dim`` filled in by
    :func:`default_size` where it leaves them out (or sets them to None)."""
    out = {k: v for k, v in model_config.items() if v is not None}
    if out.get("architecture", "mlp") not in SIZED_ARCHITECTURES or out.get("layers"):
        return out
    default = default_size(input_dim)
    for key in ("latent_dim", "hidden_dims"):
        out.setdefault(key, default[key])
    return out

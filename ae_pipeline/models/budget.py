"""A training budget that fits the data: enough optimiser steps for small data, no more for big.

With a fixed batch size and number of epochs, small data trains badly without a word: 250 rows
at the default batch size of 256 make one optimiser step per epoch, so 30 epochs are 30 steps.
:func:`plan_budget` turns a :class:`~ae_pipeline.models.config.TrainConfig` and the number of
training rows into the settings actually used:

* the batch size is capped at ``max_batch_fraction`` of the rows (not below
  ``min_batch_size``), so that an epoch is several steps;
* the epochs are raised (never lowered) until they make at least ``min_steps`` optimiser steps;
  early stopping on the validation loss can still end the run sooner, and ``patience`` grows in
  the same proportion as the epochs, so that it stays the same share of the run.

Big data is left alone: 1M rows at batch 256 make 3,907 steps per epoch, far above any
``min_steps``, so the epochs asked for are the epochs run.

Example:
    >>> from ae_pipeline.models.config import TrainConfig
    >>> cfg = TrainConfig(epochs=20, batch_size=256, patience=5, min_steps=2000,
    ...                   max_batch_fraction=0.125)
    >>> b = plan_budget(cfg, 250)
    >>> b.batch_size, b.steps_per_epoch, b.epochs, b.patience
    (31, 9, 223, 56)
    >>> plan_budget(cfg, 1_000_000).epochs
    20
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ae_pipeline.models.config import TrainConfig


@dataclass(frozen=True)
class Budget:
    """The settings a training run uses for a given number of rows.

    Attributes:
        rows: training rows the plan is for (``None``: unknown, nothing changed).
        batch_size: rows per optimiser step.
        epochs: maximum passes over the data.
        patience: early-stopping patience in epochs (``None``: no early stopping).
        steps_per_epoch: optimiser steps per epoch (``None`` when ``rows`` is unknown).
        note: what was changed from the config and why, for the log (``None``: nothing).
    """

    rows: int | None
    batch_size: int
    epochs: int
    patience: int | None
    steps_per_epoch: int | None
    note: str | None = None

    @property
    def max_steps(self) -> int | None:
        """Optimiser steps if no early stop fires."""
        return None if self.steps_per_epoch is None else self.steps_per_epoch * self.epochs

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` with this plan's batch size, epochs and patience."""
        return dataclasses.replace(
            config, batch_size=self.batch_size, epochs=self.epochs, patience=self.patience
        )


def _share(fraction: float) -> str:
    """``0.125`` as ``1/8``; other fractions as they are."""
    inverse = 1.0 / fraction
    return f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-9 else f"{fraction:g}"


def plan_budget(config: TrainConfig, rows: int | None) -> Budget:
    """The batch size, epochs and patience to train ``rows`` rows with ``config``.

    Guarantees: the batch size is never larger and the epochs never fewer than the config's;
    with ``min_steps`` set and ``rows`` known, ``epochs * steps_per_epoch >= min_steps``; with
    ``max_batch_fraction`` set, ``batch_size <= max(min_batch_size, rows * fraction)``.
    """
    if rows is None or rows <= 0:
        return Budget(rows, config.batch_size, config.epochs, config.patience, None)
    changes = []
    batch = config.batch_size
    if config.max_batch_fraction is not None:
        cap = max(config.min_batch_size, math.floor(rows * config.max_batch_fraction))
        if cap < batch:
            changes.append(
                f"batch size {batch} -> {cap} (at most {_share(config.max_batch_fraction)} "
                "of the rows)"
            )
            batch = cap
    steps = math.ceil(rows / batch)
    epochs, patience = config.epochs, config.patience
    if config.min_steps is not None and epochs * steps < config.min_steps:
        epochs = math.ceil(config.min_steps / steps)
        changes.append(
            f"epochs {config.epochs} -> {epochs} to make at least {config.min_steps} "
            f"optimiser steps ({steps} per epoch)"
        )
        if patience is not None:
            patience = max(patience, math.ceil(patience * epochs / config.epochs))
            changes.append(f"patience {config.patience} -> {patience} epochs")
    note = None
    if changes:
        stop = "; early stopping may end sooner" if patience is not None else ""
        note = f"{rows} training rows: " + "; ".join(changes) + stop
    return Budget(rows, batch, epochs, patience, steps, note)

"""Training settings (:class:`TrainConfig`): the optimiser, the loop, the step budget and early
stopping."""

from __future__ import annotations

from dataclasses import dataclass

from ae_pipeline.models.checks import (
    _check_choice,
    _check_in_range,
    _check_int_at_least,
    _check_non_negative,
    _is_number,
    _require,
    _Serializable,
)

OPTIMIZERS = ("adam", "adamw")


@dataclass
class TrainConfig(_Serializable):
    """Settings of the training loop (:class:`ae_pipeline.models.trainer.Trainer`).

    Attributes:
        epochs: maximum number of passes over the training data.
        batch_size: samples per optimiser step.
        lr: learning rate.
        optimizer: ``"adam"`` or ``"adamw"``.
        weight_decay: decoupled weight decay (AdamW) or L2 in the gradient (Adam).
        patience: stop after this many epochs without an improvement of the validation loss
            (of the training loss when there is no validation data; ``None`` or 0: never stop
            early; 0 is stored as ``None``). When ``min_steps`` raises the epochs, patience
            is raised in the same proportion.
        min_delta: smallest decrease of the validation loss that counts as an improvement.
        restore_best: after training, load the weights of the epoch with the best monitored
            loss (validation loss, else training loss).
        validation_fraction: share of an in-memory training array held out for validation
            when no validation data is given.
        shuffle: reshuffle in-memory data every epoch (streamed chunks are shuffled within
            themselves).
        seed: seeds shuffling, corruption and sampling; the same seed and data give
            bit-identical weights on the same device and thread count. ``None``: not seeded.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
        mixed_precision: float16 autocast with loss scaling; used on CUDA only.
        num_threads: torch CPU threads to use while training, restored afterwards (``None``:
            leave as is).
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        progress: show a tqdm progress bar over epochs.
        min_steps: train for at least this many optimiser steps when the number of training
            rows is known (arrays, or ``Trainer.fit(..., n_rows=...)``): ``epochs`` is raised
            (never lowered) so that small data gets enough updates; early stopping can still
            end sooner. ``None``: train by ``epochs`` only. See :func:`plan_budget`.
        max_batch_fraction: cap the batch size at this share of the training rows (not below
            ``min_batch_size``), so that an epoch of small data is more than one step.
        min_batch_size: the smallest batch ``max_batch_fraction`` may lead to.
    """

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    validation_fraction: float = 0.0
    shuffle: bool = True
    seed: int | None = 0
    device: str = "auto"
    mixed_precision: bool = False
    num_threads: int | None = None
    grad_clip: float | None = None
    progress: bool = True
    min_steps: int | None = None
    max_batch_fraction: float | None = None
    min_batch_size: int = 16

    def __post_init__(self) -> None:
        owner = "TrainConfig"
        _check_int_at_least(owner, "epochs", self.epochs, 1)
        _check_int_at_least(owner, "batch_size", self.batch_size, 1)
        _require(
            _is_number(self.lr) and self.lr > 0,
            f"lr must be a finite number > 0, got {self.lr!r} ({owner}.lr): try 1e-3",
        )
        _check_choice(owner, "optimizer", self.optimizer, OPTIMIZERS)
        _check_non_negative(owner, "weight_decay", self.weight_decay)
        if self.patience is not None:
            _check_int_at_least(
                owner, "patience", self.patience, 0, "use 0 (or None) to turn early stopping off"
            )
            if self.patience == 0:
                self.patience = None
        _check_non_negative(owner, "min_delta", self.min_delta)
        _check_in_range(
            owner, "validation_fraction", self.validation_fraction, 0.0, 1.0, closed="[)"
        )
        _require(
            isinstance(self.device, str)
            and (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")),
            f"{owner}.device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}",
        )
        if self.num_threads is not None:
            _check_int_at_least(owner, "num_threads", self.num_threads, 1)
        if self.grad_clip is not None:
            _require(
                _is_number(self.grad_clip) and self.grad_clip > 0,
                f"grad_clip must be a finite number > 0, got {self.grad_clip!r} "
                f"({owner}.grad_clip): or None for no clipping",
            )
        if self.min_steps is not None:
            _check_int_at_least(
                owner, "min_steps", self.min_steps, 1, "use None to train by epochs only"
            )
        if self.max_batch_fraction is not None:
            _check_in_range(
                owner, "max_batch_fraction", self.max_batch_fraction, 0.0, 1.0, closed="(]"
            )
        _check_int_at_least(owner, "min_batch_size", self.min_batch_size, 1)

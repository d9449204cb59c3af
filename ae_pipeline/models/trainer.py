"""The training loop: optimiser, early stopping, seeding, devices, mixed precision, history."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ae_pipeline.models.budget import plan_budget
from ae_pipeline.models.config import TrainConfig
from ae_pipeline.models.data import BatchSource, as_source
from ae_pipeline.models.device import resolve_device
from ae_pipeline.models.losses import LossFn
from ae_pipeline.models.objective import ClassificationObjective, Objective, ReconstructionObjective

_EVAL_BATCH = 4096

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    """What one epoch did.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: mean training loss over the epoch's samples.
        val_loss: validation loss after the epoch (``None`` without validation data).
        seconds: wall time of the training pass (validation excluded).
        samples: training samples seen.
        samples_per_s: ``samples / seconds``.
        train_parts: mean of each loss term (and metric) over the epoch.
        val_parts: the same on the validation data.
        steps: optimiser steps taken in the epoch.
    """

    epoch: int
    train_loss: float
    val_loss: float | None
    seconds: float
    samples: int
    samples_per_s: float
    train_parts: dict[str, float] = field(default_factory=dict)
    val_parts: dict[str, float] = field(default_factory=dict)
    steps: int = 0


@dataclass
class History:
    """Per-epoch record of a training run.

    Attributes:
        epochs: one :class:`EpochStats` per epoch run.
        best_epoch: epoch with the lowest monitored loss (validation loss, or training loss
            without validation data).
        best_loss: that loss.
        stopped_early: whether early stopping ended the run.
        restored_best: whether the best epoch's weights were loaded at the end.
        device: the device trained on.
        rows: training rows the budget was planned for (``None``: unknown).
        batch_size: the batch size used (after the budget).
        epochs_planned: the most epochs the run could take (after the budget).
        patience: the early-stopping patience used (after the budget).
        budget_note: what the budget changed from the config, or ``None``.
    """

    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_loss: float | None = None
    stopped_early: bool = False
    restored_best: bool = False
    device: str = "cpu"
    rows: int | None = None
    batch_size: int | None = None
    epochs_planned: int | None = None
    patience: int | None = None
    budget_note: str | None = None

    @property
    def steps(self) -> int:
        """Optimiser steps taken over all epochs."""
        return sum(e.steps for e in self.epochs)

    @property
    def train_losses(self) -> list[float]:
        """Training loss of each epoch."""
        return [e.train_loss for e in self.epochs]

    @property
    def val_losses(self) -> list[float | None]:
        """Validation loss of each epoch."""
        return [e.val_loss for e in self.epochs]

    @property
    def samples_per_s(self) -> float:
        """Training throughput over all epochs."""
        seconds = sum(e.seconds for e in self.epochs)
        return sum(e.samples for e in self.epochs) / seconds if seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Returns the history as a JSON-serialisable dict (with ``steps``)."""
        return {**asdict(self), "steps": self.steps}


Callback = Callable[[EpochStats, nn.Module], "bool | None"]


class Trainer:
    """Trains an autoencoder (or its classification head) on arrays or streams of batches.

    Args:
        config: training settings.
        objective: what to minimise per batch; default: the model's
            :class:`ReconstructionObjective`, or a :class:`ClassificationObjective` when
            labels are given.
        loss_fn: custom reconstruction loss ``(reconstruction, target) -> scalar`` for the
            default objective.
        callbacks: called after every epoch with ``(stats, model)``; returning ``True``
            stops training.

    Example:
        >>> import numpy as np
        >>> from ae_pipeline.models import ModelConfig, TrainConfig, build_model
        >>> model = build_model(ModelConfig(8, hidden_dims=[], latent_dim=2), seed=0)
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
        >>> history = Trainer(TrainConfig(epochs=2, progress=False)).fit(model, x)
        >>> len(history.epochs)
        2
    """

    def __init__(
        self,
        config: TrainConfig | None = None,
        *,
        objective: Objective | None = None,
        loss_fn: LossFn | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config or TrainConfig()
        self.objective = objective
        self.loss_fn = loss_fn
        self.callbacks = list(callbacks)

    def _objective(self, model: nn.Module, supervised: bool) -> Objective:
        if self.objective is not None:
            return self.objective
        if supervised:
            return ClassificationObjective(loss_fn=self.loss_fn)
        return ReconstructionObjective(model.config, loss_fn=self.loss_fn)  # type: ignore[arg-type]

    def fit(
        self,
        model: nn.Module,
        data: Any,
        *,
        labels: Any = None,
        val: Any = None,
        val_labels: Any = None,
        n_rows: int | None = None,
    ) -> History:
        """Trains ``model`` in place and returns the history; the model ends in eval mode.

        Args:
            model: an autoencoder from :func:`~ae_pipeline.models.factory.build_model` (its
                current weights are the starting point, so a warm-started model continues).
            data: training data, see :func:`~ae_pipeline.models.data.as_source`.
            labels: class labels of an array ``data`` (supervised objective).
            val: validation data in the same forms (a one-shot iterator is not allowed).
            val_labels: labels of an array ``val``.
            n_rows: number of training rows of a streamed ``data`` (known for arrays), for
                the budget of ``min_steps`` / ``max_batch_fraction``
                (:func:`~ae_pipeline.models.budget.plan_budget`); what it changes is logged
                and kept in the history.

        Raises:
            ValueError: for data of the wrong width, empty data, a one-shot iterator with more
                than one epoch, or a loss that became NaN/inf.
        """
        cfg = self.config
        device = resolve_device(cfg.device)
        threads = torch.get_num_threads()
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        try:
            return self._fit(model, data, labels, val, val_labels, device, n_rows)
        finally:
            torch.set_num_threads(threads)

    def _fit(
        self,
        model: nn.Module,
        data: Any,
        labels: Any,
        val: Any,
        val_labels: Any,
        device: torch.device,
        n_rows: int | None,
    ) -> History:
        cfg = self.config
        train_src = as_source(data, labels)
        val_src = None if val is None else as_source(val, val_labels)
        if train_src.one_shot and cfg.epochs > 1:
            raise ValueError(
                f"epochs={cfg.epochs} but the training data is a one-shot iterator; pass a "
                "callable that returns a fresh iterator per epoch"
            )
        if val_src is not None and val_src.one_shot:
            raise ValueError("validation data must be re-iterable (an array, list or callable)")
        objective = self._objective(model, supervised=labels is not None)
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            generator = None
            if cfg.seed is not None:
                torch.manual_seed(cfg.seed)
                generator = torch.Generator().manual_seed(cfg.seed)
            if val_src is None and cfg.validation_fraction > 0:
                if not hasattr(train_src, "split"):
                    raise ValueError("validation_fraction needs in-memory data; pass val=...")
                train_src, val_src = train_src.split(cfg.validation_fraction, generator)  # type: ignore[attr-defined]
            if hasattr(train_src, "__len__"):
                n_rows = len(train_src)  # type: ignore[arg-type]
            budget = plan_budget(cfg, n_rows)
            if budget.note:
                log.info("training budget: %s", budget.note)
            history = History(
                device=str(device),
                rows=budget.rows,
                batch_size=budget.batch_size,
                epochs_planned=budget.epochs,
                patience=budget.patience,
                budget_note=budget.note,
            )
            return self._run(
                model, objective, train_src, val_src, device, generator, budget.apply(cfg), history
            )

    def _run(
        self,
        model: nn.Module,
        objective: Objective,
        train_src: BatchSource,
        val_src: BatchSource | None,
        device: torch.device,
        generator: torch.Generator | None,
        cfg: TrainConfig,
        history: History,
    ) -> History:
        """The epochs of one run with ``cfg`` (the config after the budget)."""
        model.to(device)
        optimizer = _make_optimizer(model, cfg)
        scaler = (
            torch.amp.GradScaler("cuda") if cfg.mixed_precision and device.type == "cuda" else None
        )
        best_state: dict[str, torch.Tensor] | None = None
        bad_epochs = 0
        bar = tqdm(range(1, cfg.epochs + 1), desc="train", unit="epoch", disable=not cfg.progress)
        for epoch in bar:
            stats = self._train_epoch(
                epoch, model, objective, optimizer, scaler, train_src, device, generator, cfg
            )
            if val_src is not None:
                val_metrics = self._evaluate(model, objective, val_src, device)
                stats.val_loss = val_metrics.pop("loss")
                stats.val_parts = val_metrics
            history.epochs.append(stats)
            monitored = stats.val_loss if stats.val_loss is not None else stats.train_loss
            if history.best_loss is None or monitored < history.best_loss - cfg.min_delta:
                history.best_loss, history.best_epoch, bad_epochs = monitored, epoch, 0
                if cfg.restore_best:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            bar.set_postfix(
                loss=f"{stats.train_loss:.4g}",
                val="-" if stats.val_loss is None else f"{stats.val_loss:.4g}",
            )
            if any(cb(stats, model) for cb in self.callbacks):
                break
            if cfg.patience is not None and bad_epochs >= cfg.patience:
                history.stopped_early = True
                break
        bar.close()
        if best_state is not None and history.best_epoch != history.epochs[-1].epoch:
            model.load_state_dict(best_state)
            history.restored_best = True
        model.eval()
        return history

    def _train_epoch(
        self,
        epoch: int,
        model: nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        source: BatchSource,
        device: torch.device,
        generator: torch.Generator | None,
        cfg: TrainConfig,
    ) -> EpochStats:
        """One pass over the training data; ``scaler`` is set for mixed precision."""
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        part_sums: dict[str, torch.Tensor] = {}
        seen = steps = 0
        for x, y in source.batches(cfg.batch_size, shuffle=cfg.shuffle, generator=generator):
            _check_width(model, x)
            x = x.to(device, non_blocking=True)
            y = None if y is None else y.to(device, non_blocking=True)
            if scaler is None:
                loss, parts = objective(model, x, y, training=True)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
            else:
                with torch.autocast("cuda", dtype=torch.float16):
                    loss, parts = objective(model, x, y, training=True)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            n = x.shape[0]
            seen += n
            steps += 1
            loss_sum += loss.detach() * n
            for key, value in parts.items():
                # a term that is the whole loss shares its running sum (one op less per batch)
                part_sums[key] = (
                    loss_sum if value is loss else part_sums.get(key, 0.0) + value.detach() * n
                )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if seen == 0:
            raise ValueError("the training data yielded no batches")
        train_loss = float(loss_sum) / seen
        if not math.isfinite(train_loss):
            raise ValueError(
                f"training loss became {train_loss} at epoch {epoch}; lower the learning rate "
                "or check the data for NaN/inf"
            )
        return EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=None,
            seconds=seconds,
            samples=seen,
            samples_per_s=seen / seconds if seconds > 0 else float("inf"),
            train_parts={k: float(v) / seen for k, v in part_sums.items()},
            steps=steps,
        )

    def evaluate(self, model: nn.Module, data: Any, *, labels: Any = None) -> dict[str, float]:
        """Returns the mean loss (``"loss"``) and loss terms of ``model`` on ``data``.

        Evaluation runs in eval mode without corruption or gradients, on the config's device.
        """
        device = resolve_device(self.config.device)
        model.to(device)
        objective = self._objective(model, supervised=labels is not None)
        return self._evaluate(model, objective, as_source(data, labels), device)

    @torch.no_grad()
    def _evaluate(
        self, model: nn.Module, objective: Objective, source: BatchSource, device: torch.device
    ) -> dict[str, float]:
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), device=device)
        part_sums: dict[str, torch.Tensor] = {}
        seen = 0
        for x, y in source.batches(max(self.config.batch_size, _EVAL_BATCH)):
            _check_width(model, x)
            x = x.to(device, non_blocking=True)
            y = None if y is None else y.to(device, non_blocking=True)
            loss, parts = objective(model, x, y, training=False)
            n = x.shape[0]
            seen += n
            loss_sum += loss * n
            for key, value in parts.items():
                part_sums[key] = part_sums.get(key, 0.0) + value * n
        model.train(was_training)
        if seen == 0:
            raise ValueError("the validation data yielded no batches")
        return {
            "loss": float(loss_sum) / seen,
            **{k: float(v) / seen for k, v in part_sums.items()},
        }


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _check_width(model: nn.Module, x: torch.Tensor) -> None:
    expected = getattr(model, "input_dim", None)
    width = math.prod(x.shape[1:])
    if expected is not None and width != expected:
        raise ValueError(
            f"batch of shape {tuple(x.shape)} has {width} features per row; the model expects "
            f"{expected}"
        )

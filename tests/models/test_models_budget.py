"""The training budget (enough steps for small data, nothing more for big) and the one-line
validation of training settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ae_pipeline.models import (
    ConfigError,
    CorruptionConfig,
    ModelConfig,
    SparsityConfig,
    TrainConfig,
    Trainer,
    build_model,
    plan_budget,
)
from ae_pipeline.models.layerwise import fine_tune, pretrain_stack

BUDGET = {"min_steps": 2000, "max_batch_fraction": 0.125}


def test_small_data_gets_a_smaller_batch_and_enough_steps():
    cfg = TrainConfig(epochs=20, batch_size=256, patience=5, **BUDGET)
    b = plan_budget(cfg, 250)
    assert b.batch_size == 31  # floor(250 / 8)
    assert b.steps_per_epoch == math.ceil(250 / 31)
    assert b.epochs * b.steps_per_epoch >= 2000
    assert (b.epochs - 1) * b.steps_per_epoch < 2000  # no more epochs than needed
    assert b.patience == math.ceil(5 * b.epochs / 20)  # the same share of the run
    assert "250 training rows" in b.note and "batch size 256 -> 31" in b.note
    assert "epochs 20 -> " in b.note and "early stopping may end sooner" in b.note


def test_big_data_trains_the_epochs_asked_for():
    cfg = TrainConfig(epochs=20, batch_size=256, patience=5, **BUDGET)
    b = plan_budget(cfg, 1_000_000)
    assert (b.batch_size, b.epochs, b.patience, b.note) == (256, 20, 5, None)
    assert b.max_steps == 20 * 3907


def test_batch_never_below_the_minimum_and_epochs_never_lowered():
    cfg = TrainConfig(epochs=50, batch_size=64, **BUDGET)
    tiny = plan_budget(cfg, 40)
    assert tiny.batch_size == 16 and tiny.steps_per_epoch == 3
    assert tiny.epochs == math.ceil(2000 / 3) and tiny.patience is None
    assert "early stopping" not in tiny.note
    assert plan_budget(cfg, 100_000).epochs == 50
    # Off by default (the library's behaviour), and for unknown row counts.
    plain = TrainConfig(epochs=3, batch_size=256)
    assert plan_budget(plain, 250).epochs == 3 and plan_budget(plain, 250).batch_size == 256
    assert plan_budget(TrainConfig(**BUDGET), None).note is None


def test_trainer_runs_the_planned_steps_on_a_small_array():
    x = np.random.default_rng(0).normal(size=(120, 6)).astype("float32")
    cfg = TrainConfig(
        epochs=2, batch_size=256, progress=False, min_steps=60, max_batch_fraction=0.125
    )
    model = build_model(ModelConfig(6, hidden_dims=[], latent_dim=2), seed=0)
    history = Trainer(cfg).fit(model, x)
    assert history.batch_size == 16 and history.rows == 120
    assert history.steps == len(history.epochs) * 8 >= 60
    assert history.epochs_planned == len(history.epochs) == 8
    assert history.to_dict()["steps"] == history.steps
    assert history.budget_note and "epochs 2 -> 8" in history.budget_note


def test_early_stopping_still_ends_a_stretched_run():
    x = np.random.default_rng(1).normal(size=(200, 5)).astype("float32")
    # min_delta=10: nothing after epoch 1 counts as an improvement.
    cfg = TrainConfig(epochs=4, patience=1, min_delta=10.0, progress=False, min_steps=300)
    cfg = cfg.replace(max_batch_fraction=0.5)
    model = build_model(ModelConfig(5, hidden_dims=[], latent_dim=5), seed=0)
    history = Trainer(cfg).fit(model, x[:150], val=x[150:])
    assert history.epochs_planned == 150 and history.patience == 38
    assert history.stopped_early and len(history.epochs) == 1 + 38


def test_streamed_data_uses_the_row_count_it_is_given():
    x = np.random.default_rng(2).normal(size=(100, 4)).astype("float32")
    cfg = TrainConfig(
        epochs=1, batch_size=256, progress=False, min_steps=40, max_batch_fraction=0.125
    )
    model = build_model(ModelConfig(4, hidden_dims=[], latent_dim=2), seed=0)
    history = Trainer(cfg).fit(model, lambda: iter([x[:50], x[50:]]), n_rows=100)
    assert history.batch_size == 16 and history.steps >= 40
    unknown = Trainer(cfg).fit(
        build_model(ModelConfig(4, hidden_dims=[], latent_dim=2), seed=0), lambda: iter([x])
    )
    assert unknown.steps == 1 and unknown.budget_note is None


def test_stacked_pretraining_and_fine_tuning_follow_the_budget():
    x = np.random.default_rng(3).normal(size=(96, 8)).astype("float32")
    cfg = ModelConfig(8, architecture="stacked", hidden_dims=[6], latent_dim=3)
    tc = TrainConfig(epochs=1, progress=False, min_steps=24, max_batch_fraction=0.25)
    stack, histories = pretrain_stack(cfg, x, tc)
    assert [h.steps for h in histories] == [24, 24]
    assert fine_tune(stack, x, tc).steps == 24


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"epochs": -3}, ["epochs must be an integer >= 1", "-3", "set it to 1 or more"]),
        ({"epochs": 0}, ["epochs must be an integer >= 1"]),
        ({"batch_size": 0}, ["batch_size must be an integer >= 1"]),
        ({"lr": 0.0}, ["lr must be a finite number > 0"]),
        ({"lr": float("inf")}, ["lr must be a finite number > 0"]),
        ({"lr": float("nan")}, ["lr must be"]),
        ({"patience": -1}, ["patience must be an integer >= 0", "turn early stopping off"]),
        ({"min_delta": -0.1}, ["min_delta must be a finite number >= 0"]),
        ({"validation_fraction": 1.0}, ["validation_fraction must be in [0, 1)"]),
        ({"min_steps": 0}, ["min_steps must be an integer >= 1"]),
        ({"max_batch_fraction": 0.0}, ["max_batch_fraction must be in (0, 1]"]),
        ({"num_threads": 0}, ["num_threads must be an integer >= 1"]),
        ({"grad_clip": -1.0}, ["grad_clip must be a finite number > 0"]),
    ],
)
def test_train_settings_refused_in_one_line_naming_the_setting(kwargs, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**kwargs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_patience_zero_means_no_early_stopping():
    assert TrainConfig(patience=0).patience is None
    assert TrainConfig(patience=3).patience == 3


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: ModelConfig(10, latent_dim=0), ["latent_dim must be an integer >= 1"]),
        (lambda: ModelConfig(0), ["input_dim must be an integer >= 1"]),
        (lambda: ModelConfig(10, hidden_dims=[64, -1]), ["hidden_dims must be a list of positive"]),
        (lambda: CorruptionConfig("masking", fraction=1.5), ["fraction must be in [0, 1]"]),
        (lambda: CorruptionConfig("gaussian", sigma=-0.1), ["sigma must be a finite number >= 0"]),
        (lambda: CorruptionConfig("gaussian", sigma=float("inf")), ["sigma must be a finite"]),
        (lambda: SparsityConfig("kl", rho=1.0), ["rho must be in (0, 1)"]),
        (lambda: SparsityConfig("kl", beta=-1.0), ["beta must be a finite number >= 0"]),
    ],
)
def test_model_settings_refused_naming_the_setting(make, words):
    with pytest.raises(ConfigError) as err:
        make()
    for word in words:
        assert word in str(err.value), str(err.value)

"""The trainer: seeding, early stopping, streams of batches, warm start, history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ae_pipeline.models import (
    CorruptionConfig,
    ModelConfig,
    Trainer,
    build_model,
    fit,
    load_weights,
)

CFG = ModelConfig(16, hidden_dims=[12], latent_dim=4, output_activation="sigmoid")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(4, 16))
    x = 1 / (1 + np.exp(-(rng.normal(size=(600, 4)) @ basis)))
    return x.astype(np.float32)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "config",
    [
        CFG.replace(corruption=CorruptionConfig("masking", fraction=0.2)),
        ModelConfig(16, architecture="vae", hidden_dims=[8], latent_dim=2),
    ],
    ids=["denoising", "vae"],
)
def test_same_seed_gives_bit_identical_weights(config, data, quick):
    a, _ = fit(config, data, quick(epochs=3, seed=11))
    b, _ = fit(config, data, quick(epochs=3, seed=11))
    c, _ = fit(config, data, quick(epochs=3, seed=12))
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert any(not torch.equal(t, c.state_dict()[n]) for n, t in a.state_dict().items())


def test_training_does_not_touch_global_rng(data, quick):
    state = torch.random.get_rng_state()
    fit(CFG, data, quick(epochs=1))
    assert torch.equal(state, torch.random.get_rng_state())


def test_early_stopping_restores_best_weights(data, quick):
    snapshots = {}

    def sabotage(stats, model):
        # After epoch 3, remember the weights, then wreck them: later epochs are worse.
        if stats.epoch == 3:
            snapshots["best"] = _state(model)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 5)

    model = build_model(CFG, seed=0)
    trainer = Trainer(quick(epochs=50, patience=2, lr=1e-3), callbacks=[sabotage])
    history = trainer.fit(model, data[:400], val=data[400:])
    assert history.stopped_early and history.restored_best
    assert history.best_epoch == 3 and len(history.epochs) == 5
    assert min(history.val_losses) == history.best_loss == history.epochs[2].val_loss
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots["best"][name]), name
    assert trainer.evaluate(model, data[400:])["loss"] == pytest.approx(history.best_loss, rel=1e-5)
    assert not model.training


def test_without_restore_keeps_last_weights(data, quick):
    model = build_model(CFG, seed=0)
    history = Trainer(quick(epochs=4, restore_best=False)).fit(model, data, val=data[:100])
    assert not history.restored_best
    last = Trainer(quick()).evaluate(model, data[:100])["loss"]
    assert last == pytest.approx(history.epochs[-1].val_loss, rel=1e-5)


def test_history_records_every_epoch(data, quick):
    _, history = fit(CFG, data, quick(epochs=4, validation_fraction=0.2))
    assert [e.epoch for e in history.epochs] == [1, 2, 3, 4]
    first, last = history.epochs[0], history.epochs[-1]
    assert last.train_loss < first.train_loss and last.val_loss < first.val_loss
    assert first.samples == 480 and first.seconds > 0 and first.samples_per_s > 0
    assert "reconstruction" in first.train_parts and "reconstruction" in first.val_parts
    assert history.to_dict()["epochs"][0]["epoch"] == 1


def test_streamed_batches_from_a_callable(data, quick):
    chunks_per_epoch = []

    def chunks():
        chunks_per_epoch.append(0)
        for i in range(0, len(data), 70):  # chunk size unrelated to the batch size
            chunks_per_epoch[-1] += 1
            yield data[i : i + 70]

    model = build_model(CFG, seed=0)
    history = Trainer(quick(epochs=3, batch_size=64)).fit(
        model, chunks, val=[data[:100], data[100:200]]
    )
    assert len(chunks_per_epoch) == 3
    assert all(e.samples == len(data) for e in history.epochs)
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss


def test_one_shot_iterator_only_for_one_epoch(data, quick):
    with pytest.raises(ValueError, match="one-shot iterator"):
        Trainer(quick(epochs=2)).fit(build_model(CFG), iter([data]))
    history = Trainer(quick(epochs=1)).fit(build_model(CFG), iter([data[:300], data[300:]]))
    assert history.epochs[0].samples == len(data)


def test_warm_start_continues_from_weights(data, quick):
    trained, _ = fit(CFG, data, quick(epochs=30, lr=1e-2, batch_size=32))
    fresh_history = Trainer(quick(epochs=1)).fit(build_model(CFG, seed=5), data)
    warm = load_weights(build_model(CFG, seed=5), trained)
    warm_history = Trainer(quick(epochs=1)).fit(warm, data)
    assert warm_history.epochs[0].train_loss < 0.5 * fresh_history.epochs[0].train_loss


def test_adamw_grad_clip_and_mixed_precision_flag_on_cpu(data, quick):
    cfg = quick(epochs=2, optimizer="adamw", weight_decay=0.01, grad_clip=1.0, mixed_precision=True)
    _, history = fit(CFG, data, cfg)
    assert history.device == "cpu" and history.epochs[-1].train_loss > 0


def test_wrong_width_and_nan_refused(data, quick):
    with pytest.raises(ValueError, match="has 15 features per row; the model expects 16"):
        fit(CFG, data[:, :15], quick(epochs=1))
    bad = data.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="nan"):
        fit(CFG.replace(output_activation="identity"), bad, quick(epochs=1))


def test_callback_can_stop(data, quick):
    trainer = Trainer(quick(epochs=10), callbacks=[lambda stats, model: stats.epoch == 2])
    history = trainer.fit(build_model(CFG), data)
    assert len(history.epochs) == 2


def test_progress_bar_can_be_shown_or_hidden(data, quick, capsys):
    fit(CFG, data[:64], quick(epochs=1, progress=True))
    assert "train" in capsys.readouterr().err
    fit(CFG, data[:64], quick(epochs=1, progress=False))
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_refused_without_cuda(data, quick):
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        fit(CFG, data, quick(epochs=1, device="cuda"))

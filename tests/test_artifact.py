"""Model artifacts: bit-exact round trips; truncated, tampered, mismatched, pickled refused."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ae_pipeline.artifact import (
    CHECKSUMS_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    check_compatibility,
    data_fingerprint,
    load_artifact,
    save_artifact,
    verify_artifact,
)
from ae_pipeline.models import (
    CorruptionConfig,
    ModelConfig,
    Scorer,
    TrainConfig,
    build_model,
    fit,
)

torch.set_num_threads(2)

CONFIGS = [
    ModelConfig(12, hidden_dims=[8], latent_dim=3, corruption=CorruptionConfig()),
    ModelConfig(12, architecture="stacked", hidden_dims=[8], latent_dim=3, num_classes=4),
    ModelConfig(12, architecture="vae", hidden_dims=[8], latent_dim=3),
    ModelConfig(architecture="conv", input_shape=[1, 6, 6], conv_channels=[4], latent_dim=3),
]
COLUMNS = [f"f{i}" for i in range(12)]


def _rewrite_checksums(path: Path) -> None:
    files = {
        name: hashlib.sha256((path / name).read_bytes()).hexdigest()
        for name in (WEIGHTS_FILE, CONFIG_FILE)
    }
    (path / CHECKSUMS_FILE).write_text(json.dumps({"algorithm": "sha256", "files": files}))


@pytest.fixture
def saved(tmp_path):
    cfg = CONFIGS[0]
    x = np.random.default_rng(0).random((200, 12), dtype=np.float32)
    train_config = TrainConfig(epochs=2, device="cpu", progress=False)
    model, history = fit(cfg, x, train_config)
    path = tmp_path / "v1"
    save_artifact(
        str(path),
        model,
        cfg,
        feature_columns=COLUMNS,
        scaler={"kind": "standard", "mean": np.zeros(12, np.float32)},
        threshold={"value": np.float32(0.25), "quantile": 0.99},
        metrics={"train_loss": history.train_losses[-1]},
        train_config=train_config,
        data_fingerprint=data_fingerprint(x),
        extra={"run": "test"},
    )
    return path, model, x


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.variant)
def test_round_trip_is_bit_exact(tmp_path, config):
    model = build_model(config, seed=3)
    save_artifact(str(tmp_path), model, config)
    loaded = load_artifact(str(tmp_path))
    assert loaded.model_config == config and not loaded.model.training
    original = model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    x = np.random.default_rng(1).random((50, config.input_dim), dtype=np.float32)
    np.testing.assert_array_equal(loaded.scorer().errors(x), Scorer(model).errors(x))


def test_metadata_is_saved(saved):
    path, _, x = saved
    loaded = load_artifact(str(path))
    assert loaded.feature_columns == COLUMNS
    assert loaded.scaler == {"kind": "standard", "mean": [0.0] * 12}
    assert loaded.threshold == {"value": 0.25, "quantile": 0.99}
    assert loaded.train_config.epochs == 2
    assert loaded.variant == "denoising" == loaded.meta["variant"]
    meta = loaded.meta
    assert set(meta["versions"]) >= {"torch", "numpy", "ae_pipeline", "safetensors", "python"}
    assert meta["data_fingerprint"] == data_fingerprint([x[:50], x[50:]])
    assert meta["tensors"]["encoder.0.linear.weight"] == {"shape": [8, 12], "dtype": "float32"}
    assert meta["extra"] == {"run": "test"}
    assert sorted(p.name for p in path.iterdir()) == [CHECKSUMS_FILE, CONFIG_FILE, WEIGHTS_FILE]


def test_truncated_weights_refused(saved):
    path, _, _ = saved
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ArtifactError,
        match=r"weights\.safetensors checksum mismatch: expected sha256 [0-9a-f]{64}, actual",
    ):
        load_artifact(str(path))
    _rewrite_checksums(path)
    with pytest.raises(ArtifactError, match=r"weights\.safetensors"):
        load_artifact(str(path))


def test_tampered_config_refused(saved):
    path, _, _ = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["threshold"]["value"] = 99.0
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"config\.json checksum mismatch"):
        load_artifact(str(path))


def test_flipped_weight_byte_refused(saved):
    path, _, _ = saved
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0xFF
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(str(path))


def test_config_weights_mismatch_refused_naming_tensor_and_shapes(saved):
    path, _, _ = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["model_config"]["hidden_dims"] = [9]
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    _rewrite_checksums(path)
    with pytest.raises(
        ArtifactError,
        match=r"tensor 'encoder\.0\.linear\.weight' has shape \(8, 12\), "
        r"the config expects \(9, 12\)",
    ):
        load_artifact(str(path))


def test_missing_tensor_refused(saved, tmp_path):
    path, model, _ = saved
    import safetensors.torch

    state = {k: v for k, v in model.state_dict().items() if k != "decoder.1.linear.bias"}
    (path / WEIGHTS_FILE).write_bytes(safetensors.torch.save(state))
    _rewrite_checksums(path)
    with pytest.raises(ArtifactError, match=r"missing tensor 'decoder\.1\.linear\.bias'"):
        load_artifact(str(path))


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickle_refused_even_with_valid_checksums(saved, kind):
    path, model, _ = saved
    if kind == "pickle":
        payload = pickle.dumps({k: v.numpy() for k, v in model.state_dict().items()})
    else:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)  # saving only; nothing here ever loads a pickle
        payload = buffer.getvalue()
    (path / WEIGHTS_FILE).write_bytes(payload)
    _rewrite_checksums(path)
    with pytest.raises(ArtifactError, match="not safetensors; refusing"):
        load_artifact(str(path))


def test_incomplete_or_missing_artifact_refused(saved, tmp_path):
    path, _, _ = saved
    (path / CHECKSUMS_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"cannot read checksums\.json"):
        load_artifact(str(path))
    with pytest.raises(ArtifactError, match="cannot read"):
        load_artifact(str(tmp_path / "nothing-here"))


def test_unknown_config_key_refused(saved):
    path, _, _ = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["model_config"]["dropout"] = 0.5
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    _rewrite_checksums(path)
    with pytest.raises(ArtifactError, match=r"unknown key\(s\) \['dropout'\]"):
        load_artifact(str(path))


def test_width_and_columns_checks(saved):
    path, _, _ = saved
    loaded = load_artifact(str(path), expected_input_dim=12, feature_columns=COLUMNS)
    loaded.check_input(12)
    with pytest.raises(ArtifactError, match="takes 12 features, the records have 11"):
        load_artifact(str(path), expected_input_dim=11)
    with pytest.raises(ArtifactError, match=r"missing \['f11'\], unexpected \['g'\]"):
        loaded.check_input(feature_columns=[*COLUMNS[:-1], "g"])
    with pytest.raises(ArtifactError, match="different order"):
        check_compatibility(loaded.meta, feature_columns=list(reversed(COLUMNS)))


def test_save_refuses_bad_inputs(tmp_path):
    cfg = ModelConfig(12, hidden_dims=[8], latent_dim=3)
    model = build_model(cfg)
    with pytest.raises(ArtifactError, match="3 feature_columns given, the model has input_dim=12"):
        save_artifact(str(tmp_path), model, cfg, feature_columns=["a", "b", "c"])
    with pytest.raises(ArtifactError, match="metrics must be JSON-serialisable"):
        save_artifact(str(tmp_path), model, cfg, metrics={"f": object()})
    with pytest.raises(ArtifactError, match="does not match model_config"):
        save_artifact(str(tmp_path), model, cfg.replace(latent_dim=4))


def test_save_into_nested_directory_and_overwrite(tmp_path):
    cfg = ModelConfig(12, hidden_dims=[8], latent_dim=3)
    target = tmp_path / "a" / "b" / ".tmp-v7"
    save_artifact(str(target), build_model(cfg, seed=1), cfg)
    second = build_model(cfg, seed=2)
    save_artifact(str(target), second, cfg)
    meta, tensors = verify_artifact(str(target))
    assert torch.equal(tensors["encoder.0.linear.weight"], second.encoder[0].linear.weight.detach())
    assert meta["format_version"] == 1


def test_artifact_module_does_not_import_beam_at_import_time():
    import subprocess
    import sys

    code = (
        "import sys, ae_pipeline.artifact, ae_pipeline.models; print('apache_beam' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""Model artifacts: bit-exact round trips; truncated, tampered, mismatched, pickled refused."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
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
    check_servable,
    data_fingerprint,
    features_of,
    load_artifact,
    save_artifact,
    verify_artifact,
    verify_servable,
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


# ----------------------------------------------------------------- safetensors header (issue 16)


def _weights_with_header_length(model, first: bytes) -> bytes:
    """Safetensors bytes of ``model`` whose 8-byte header length starts with ``first``
    (padding the metadata until it does)."""
    import safetensors.torch

    state = {k: v.contiguous() for k, v in model.state_dict().items()}

    def save(pad: int) -> bytes:
        return safetensors.torch.save(state, metadata={"format": "pt", "pad": "x" * pad})

    base = struct.unpack("<Q", save(0)[:8])[0]
    # "PK": the length 0x4B50; else the next length whose low byte is first[0]
    target = 0x4B50 if first == b"PK" else base + ((first[0] - base) % 256)
    for pad in range(max(0, target - base - 16), target - base + 16):
        data = save(pad)
        if data.startswith(first):
            return data
    raise AssertionError(f"no padding gives a header length starting with {first!r}")


@pytest.mark.parametrize("first", [b"\x80", b"PK"], ids=["low-byte-0x80", "PK"])
def test_valid_safetensors_whose_header_length_looks_like_a_pickle_or_zip_loads(tmp_path, first):
    cfg = ModelConfig(12, hidden_dims=[8], latent_dim=3)
    model = build_model(cfg, seed=0)
    save_artifact(str(tmp_path), model, cfg)
    data = _weights_with_header_length(model, first)
    (tmp_path / WEIGHTS_FILE).write_bytes(data)
    _rewrite_checksums(tmp_path)
    loaded = load_artifact(str(tmp_path))
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


STACKED = ModelConfig(784, architecture="stacked", hidden_dims=[512, 256, 128])
REAL_CASES = [
    STACKED,
    *(
        ModelConfig(d_in, hidden_dims=[], latent_dim=d_out)
        for d_in, d_out in [(784, 512), (512, 256), (256, 128)]
    ),
    ModelConfig(100, architecture="vae", hidden_dims=[64, 32], latent_dim=4),
]


@pytest.mark.parametrize("config", REAL_CASES, ids=lambda c: f"{c.architecture}-{c.input_dim}")
def test_the_models_refused_as_pickles_in_issue_16_save_and_load(tmp_path, config):
    model = build_model(config, seed=0)
    save_artifact(str(tmp_path), model, config)
    loaded = load_artifact(str(tmp_path))
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    if config.architecture == "vae":  # the case of the issue: header length 1152 = 0x480
        assert (tmp_path / WEIGHTS_FILE).read_bytes()[:1] == b"\x80"


def test_a_header_that_is_not_a_json_object_is_refused(saved):
    path, _, _ = saved
    body = b"[1, 2, 3]"
    (path / WEIGHTS_FILE).write_bytes(struct.pack("<Q", len(body)) + body)
    _rewrite_checksums(path)
    with pytest.raises(ArtifactError, match="header is not a JSON object"):
        load_artifact(str(path))


# ----------------------------------------------------------------- bounded reads, links


def test_checksums_record_sizes_and_a_larger_file_is_refused_unread(saved):
    path, _, _ = saved
    sums = json.loads((path / CHECKSUMS_FILE).read_text())
    assert sums["sizes"][WEIGHTS_FILE] == (path / WEIGHTS_FILE).stat().st_size
    with open(path / WEIGHTS_FILE, "ab") as f:
        f.write(b"\0" * 1000)
    with pytest.raises(ArtifactError, match=r"larger than the \d+ bytes recorded") as err:
        load_artifact(str(path))
    assert err.value.reason == "too_large"


def test_a_weights_link_to_dev_zero_is_refused_without_reading(saved):
    path, _, _ = saved
    (path / WEIGHTS_FILE).unlink()
    os.symlink("/dev/zero", path / WEIGHTS_FILE)
    with pytest.raises(ArtifactError, match=r"weights\.safetensors is a symbolic link") as err:
        load_artifact(str(path))
    assert err.value.reason == "symlink"


def test_a_link_deep_inside_the_version_is_refused(saved, tmp_path):
    path, _, _ = saved
    (path / "report" / "plots").mkdir(parents=True)
    os.symlink(tmp_path, path / "report" / "plots" / "elsewhere")
    with pytest.raises(ArtifactError, match="report/plots/elsewhere is a symbolic link"):
        verify_artifact(str(path))


def test_a_fifo_in_place_of_the_weights_is_refused_without_blocking(saved):
    path, _, _ = saved
    (path / WEIGHTS_FILE).unlink()
    os.mkfifo(path / WEIGHTS_FILE)  # opening it for reading would block forever
    with pytest.raises(ArtifactError, match="not a regular file") as err:
        load_artifact(str(path))
    assert err.value.reason == "special_file"


def test_checksums_without_sizes_still_load(saved):
    path, _, _ = saved
    _rewrite_checksums(path)  # the format written before sizes were recorded
    assert "sizes" not in json.loads((path / CHECKSUMS_FILE).read_text())
    load_artifact(str(path))


# ----------------------------------------------------------------- can it serve?

SMALL = ModelConfig(3, hidden_dims=[], latent_dim=2)
GOOD_SCALER = {"kind": "standard", "offset": [0.0, 1.0, 2.0], "scale": [1.0, 2.0, 0.5]}


def _servable(tmp_path, *, threshold=0.5, scaler=GOOD_SCALER, columns=("a", "b", "c"), model=None):
    model = model if model is not None else build_model(SMALL, seed=0)
    path = str(tmp_path / "version")
    save_artifact(
        path,
        model,
        SMALL,
        feature_columns=None if columns is None else list(columns),
        scaler=scaler,
        threshold=None if threshold is None else {"value": threshold, "method": "quantile"},
    )
    return load_artifact(path)


def test_a_good_version_can_serve_in_every_mode(tmp_path):
    loaded = _servable(tmp_path)
    for needs in (None, ("threshold",), ()):
        check_servable(loaded, needs=needs, expect_features=["a", "b", "c"])
    assert features_of(loaded) == ["a", "b", "c"]
    assert verify_servable(loaded.path, needs=("threshold",)).threshold["value"] == 0.5


def _refused(loaded, reason, match, **kwargs):
    with pytest.raises(ArtifactError, match=match) as err:
        check_servable(loaded, **kwargs)
    assert err.value.reason == reason, err.value
    return err.value


def test_no_threshold_cannot_flag_but_can_encode(tmp_path):
    loaded = _servable(tmp_path, threshold=None)
    _refused(loaded, "threshold", "no calibrated threshold", needs=("threshold",))
    check_servable(loaded, needs=())
    check_servable(loaded)  # use unknown: a missing threshold is not an error
    check_servable(loaded, needs=("threshold",), threshold=0.7)  # an explicit threshold serves


def _with_histogram(tmp_path, histogram):
    model = build_model(SMALL, seed=0)
    path = str(tmp_path / "calibrated")
    threshold = {"value": 0.5, "method": "quantile"}
    if histogram is not None:
        threshold["histogram"] = histogram
    save_artifact(path, model, SMALL, feature_columns=["a", "b", "c"], threshold=threshold)
    return load_artifact(path)


def test_explaining_needs_a_well_formed_calibration_histogram(tmp_path):
    good = _with_histogram(tmp_path / "good", {"edges": [0.0, 1.0, 2.0], "counts": [3, 1]})
    check_servable(good, needs=("calibration",))
    _refused(
        _with_histogram(tmp_path / "none", None),
        "calibration",
        "no calibration histogram",
        needs=("calibration",),
    )
    for histogram, match in [
        ({"edges": [0.0, 1.0], "counts": [1, 2]}, "one count fewer"),
        ({"edges": [1.0, 0.0], "counts": [1]}, "edges must increase"),
        ({"edges": [0.0, 1.0], "counts": [0]}, "nor all zero"),
        ({"edges": [0.0, 1.0]}, "'edges' and 'counts'"),
    ]:
        bad = _with_histogram(tmp_path / match.replace(" ", "_").replace("'", ""), histogram)
        _refused(bad, "calibration", match, needs=("calibration",))
        check_servable(bad, needs=("threshold",))  # flagging never reads the histogram
    with pytest.raises(ValueError, match="unknown serving needs"):
        check_servable(good, needs=("thresold",))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (float("nan"), r"threshold is nan \(it never flags\)"),
        (float("inf"), r"threshold is inf \(it never flags\)"),
        (float("-inf"), r"threshold is -inf \(it flags every record\)"),
        ("0.5", "must be a number"),
        (True, "must be a number"),
    ],
)
def test_a_threshold_that_is_not_a_finite_number_is_refused(tmp_path, value, match):
    loaded = _servable(tmp_path, threshold=value)  # saved and reloaded through JSON
    for needs in (("threshold",), None):
        _refused(loaded, "threshold", match, needs=needs)
    check_servable(loaded, needs=())  # denoising never reads the threshold
    _refused(loaded, "threshold", "threshold is nan", needs=("threshold",), threshold=float("nan"))


@pytest.mark.parametrize("how", ["all-nan", "one-inf"])
def test_non_finite_weights_are_refused(tmp_path, how):
    model = build_model(SMALL, seed=0)
    with torch.no_grad():
        weight = model.state_dict()["encoder.0.linear.weight"]
        if how == "all-nan":
            for tensor in model.parameters():
                tensor.fill_(float("nan"))
        else:
            weight.view(-1)[1] = float("inf")
    loaded = _servable(tmp_path, model=model)
    err = _refused(loaded, "weights", "non-finite values", needs=())
    bad = "6 non-finite values" if how == "all-nan" else "1 non-finite values"
    assert f"'encoder.0.linear.weight' has {bad}" in str(err)


@pytest.mark.parametrize(
    ("offset", "scale", "match"),
    [
        ([0.0, 1.0, 2.0], [1.0, 1e-40, 1.0], r"scale is not above 1e-12 .* first 'b'"),
        ([0.0, 1.0, 2.0], [0.0, 1.0, 1.0], r"scale is not above 1e-12 .* first 'a'"),
        ([0.0, 1.0, 2.0], [1.0, 1.0, -2.0], "scale is not above"),
        ([0.0, 1.0, 2.0], [1.0, float("nan"), 1.0], "scale is not finite"),
        ([0.0, float("inf"), 2.0], [1.0, 1.0, 1.0], "offset is not finite"),
        ([float("nan")] * 3, [1.0, 1.0, 1.0], r"offset is not finite for 3 feature"),
        ([0.0, 1.0], [1.0, 1.0], "the model takes 3 features"),
    ],
)
def test_a_scaler_that_would_turn_records_into_nan_or_inf_is_refused(
    tmp_path, offset, scale, match
):
    loaded = _servable(tmp_path, scaler={"kind": "standard", "offset": offset, "scale": scale})
    _refused(loaded, "scaler", match, needs=())


def test_a_version_with_other_features_is_refused(tmp_path):
    loaded = _servable(tmp_path)
    _refused(loaded, "features", r"lacks \['x'\] and adds \['c'\]", expect_features=["a", "b", "x"])
    _refused(loaded, "features", "different order", expect_features=["c", "b", "a"])
    _refused(loaded, "features", "the served version reads 3 unnamed", expect_features=3)
    unnamed = _servable(tmp_path / "u", columns=None)
    assert features_of(unnamed) == 3
    check_servable(unnamed, expect_features=3)
    _refused(unnamed, "features", "it reads 3 unnamed", expect_features=["a", "b", "c"])
    _refused(unnamed, "features", "reads 4 unnamed", expect_features=4)


def test_score_function_is_saved_applied_and_bumps_the_format(tmp_path):
    from ae_pipeline.models import ScoreFunction, fit_score_function

    cfg = ModelConfig(6, hidden_dims=[8], latent_dim=2)
    model = build_model(cfg, seed=0)
    x = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    fn = fit_score_function(Scorer(model), x[:200], x[200:])
    save_artifact(str(tmp_path / "n"), model, cfg, score_function=fn)
    save_artifact(str(tmp_path / "m"), model, cfg)
    normalized, plain = load_artifact(str(tmp_path / "n")), load_artifact(str(tmp_path / "m"))
    # an older library reads only format 1: a version it would score wrongly says 2
    assert normalized.meta["format_version"] == 2 and plain.meta["format_version"] == 1
    assert normalized.score_function == fn and plain.score_function == ScoreFunction()
    np.testing.assert_allclose(
        normalized.scorer().scores(x), Scorer(model, score_function=fn).scores(x), rtol=1e-6
    )
    np.testing.assert_array_equal(plain.scorer().scores(x), Scorer(model).errors(x))


def test_a_score_function_that_does_not_fit_the_model_is_refused(tmp_path):
    from ae_pipeline.models import fit_score_function

    cfg = ModelConfig(6, hidden_dims=[8], latent_dim=2)
    model = build_model(cfg, seed=0)
    x = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    fn = fit_score_function(Scorer(model), x[:200], x[200:])
    other = build_model(ModelConfig(5, hidden_dims=[8], latent_dim=2), seed=0)
    with pytest.raises(ArtifactError, match="score_function does not fit the model"):
        save_artifact(str(tmp_path / "x"), other, other.config, score_function=fn)
    path = tmp_path / "v"
    save_artifact(str(path), model, cfg, score_function=fn)
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["score_function"]["latent_mean"] = [0.0, 0.0, 0.0]
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    _rewrite_checksums(path)
    with pytest.raises(ArtifactError, match=r"invalid score_function: .*latent_mean has shape"):
        load_artifact(str(path))


def test_a_future_format_is_refused_naming_what_this_library_reads(tmp_path):
    cfg = ModelConfig(6, hidden_dims=[8], latent_dim=2)
    save_artifact(str(tmp_path), build_model(cfg, seed=0), cfg)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["format_version"] = 3
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    _rewrite_checksums(tmp_path)
    with pytest.raises(ArtifactError, match="format_version 3, this library reads 1, 2"):
        load_artifact(str(tmp_path))

"""ModelWatcher: no version that cannot serve is ever served.

Each kind of version that cannot serve (issue 15) is published beside a good one; the watcher
refuses it with its reason in the log and in ``refusals``, keeps serving the good one, and
still picks up a later good version. Also: publish order (a future-dated name does not pin
serving), retries with backoff, rollback when the served version is removed, and the
background thread that polls while no records arrive. Real artifacts, real files; no Kafka.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from ae_pipeline.artifact import ArtifactError, save_artifact
from ae_pipeline.hot_reload import ModelWatcher, open_model
from ae_pipeline.models import ModelConfig, build_model
from ae_pipeline.registry import MARKER, ModelRegistry
from ae_pipeline.serving import NoModelError

torch.set_num_threads(1)

CFG = ModelConfig(3, hidden_dims=[], latent_dim=2)
COLUMNS = ["a", "b", "c"]
SCALER = {"kind": "standard", "offset": [0.0, 1.0, 2.0], "scale": [1.0, 2.0, 0.5]}
RECORD = b'{"a": 1.0, "b": 2.0, "c": 3.0}'


def files(d: str, *, threshold=0.5, scaler=SCALER, columns=COLUMNS, cfg=CFG, nan=False) -> None:
    """Writes a model version into ``d`` (``nan``: every weight NaN)."""
    model = build_model(cfg, seed=0)
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(math.nan)
    save_artifact(
        d,
        model,
        cfg,
        feature_columns=columns,
        scaler=scaler,
        threshold=None if threshold is None else {"value": threshold, "method": "quantile"},
    )


def publish(root: str, **kwargs) -> str:
    """Publishes a version (unchecked: the bad ones stand for versions that reached the root
    another way: an older library, a copy made by hand)."""
    return ModelRegistry(root).publish(lambda d: files(d, **kwargs), check=False)


def by_hand(root: str, marker: bytes | None = b"{}", name: str | None = None, **kwargs) -> str:
    """A version copied into the root by hand (files, then the marker given)."""
    reg = ModelRegistry(root)
    name = name or reg.new_version_name()
    files(reg.path(name), **kwargs)
    if marker is not None:
        Path(reg.path(name), MARKER).write_bytes(marker)
    return name


def _weights_to_dev_zero(root: str) -> str:
    v = publish(root)
    weights = Path(ModelRegistry(root).path(v), "weights.safetensors")
    weights.unlink()
    os.symlink("/dev/zero", weights)
    return v


def _grown_weights(root: str) -> str:
    v = publish(root)
    with open(Path(ModelRegistry(root).path(v), "weights.safetensors"), "ab") as f:
        f.write(b"\0" * 4096)
    return v


def _flipped(root: str) -> str:
    v = publish(root)
    path = Path(ModelRegistry(root).path(v), "weights.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return v


# kind -> (make the bad version under root, reason, what failed[...] must say)
BAD = {
    "threshold null (flag mode)": (
        lambda r: publish(r, threshold=None),
        "threshold",
        "no calibrated threshold",
    ),
    "NaN threshold": (lambda r: publish(r, threshold=math.nan), "threshold", "threshold is nan"),
    "+inf threshold": (lambda r: publish(r, threshold=math.inf), "threshold", "threshold is inf"),
    "-inf threshold": (
        lambda r: publish(r, threshold=-math.inf),
        "threshold",
        "flags every record",
    ),
    "all-NaN weights": (lambda r: publish(r, nan=True), "weights", "non-finite values"),
    "scaler scale 1e-40": (
        lambda r: publish(r, scaler={**SCALER, "scale": [1.0, 1e-40, 1.0]}),
        "scaler",
        "scale is not above 1e-12",
    ),
    "scaler scale 0": (
        lambda r: publish(r, scaler={**SCALER, "scale": [0.0, 1.0, 1.0]}),
        "scaler",
        "scale is not above 1e-12",
    ),
    "scaler scale inf": (
        lambda r: publish(r, scaler={**SCALER, "scale": [1.0, math.inf, 1.0]}),
        "scaler",
        "scale is not finite",
    ),
    "scaler mean NaN": (
        lambda r: publish(r, scaler={**SCALER, "offset": [0.0, math.nan, 1.0]}),
        "scaler",
        "offset is not finite",
    ),
    "other feature columns": (
        lambda r: publish(r, columns=["a", "b", "x"]),
        "features",
        "lacks ['c'] and adds ['x']",
    ),
    "other width": (
        lambda r: publish(
            r,
            cfg=ModelConfig(4, hidden_dims=[], latent_dim=2),
            columns=[*COLUMNS, "d"],
            scaler={"kind": "none", "offset": [0.0] * 4, "scale": [1.0] * 4},
        ),
        "features",
        "adds ['d']",
    ),
    "weights linked to /dev/zero": (
        _weights_to_dev_zero,
        "symlink",
        "weights.safetensors is a symbolic link",
    ),
    "empty marker (disk full)": (lambda r: by_hand(r, b""), "marker", "marker is empty"),
    "garbled marker": (lambda r: by_hand(r, b'{"version": "v'), "marker", "marker is garbled"),
    "weights larger than recorded": (_grown_weights, "too_large", "larger than the"),
    "checksum mismatch": (lambda r: _flipped(r), "corrupt", "checksum mismatch"),
}


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watcher(root: str, clock: Clock | None = None, **kwargs) -> ModelWatcher:
    kwargs.setdefault("mode", "flag")
    return ModelWatcher(
        root, interval_s=0, clock=clock or Clock(), retry_base_s=10, device="cpu", **kwargs
    )


def messages(caplog, version: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if version in r.getMessage()]


@pytest.mark.parametrize("kind", list(BAD))
def test_a_version_that_cannot_serve_is_refused_and_the_current_keeps_serving(
    tmp_path, caplog, kind
):
    make, reason, says = BAD[kind]
    root = str(tmp_path / "models")
    good = publish(root)
    w = watcher(root)
    assert w.current().version == good
    bad = make(root)
    with caplog.at_level(logging.WARNING, logger="ae_pipeline.hot_reload"):
        assert w.current().version == good
        assert w.current().version == good  # not retried before its backoff
    assert w.failed[bad].startswith(f"{reason}: ") and says in w.failed[bad], w.failed
    assert w.refusals == collections.Counter({reason: 1})
    (logged,) = messages(caplog, bad)
    assert f"refused ({reason}" in logged and f"still serving {good}" in logged and says in logged
    results, dead = w.current().score_records([RECORD], "flag")
    assert not dead and results[0]["model_version"] == good
    newer = publish(root)
    assert w.current().version == newer and w.swaps == 2
    assert w.refusals == collections.Counter({reason: 1})


def test_no_version_that_can_serve_yet_says_why(tmp_path):
    root = str(tmp_path / "models")
    bad = publish(root, threshold=None)
    w = watcher(root)
    with pytest.raises(NoModelError, match=f"{bad}.*no calibrated threshold"):
        w.current()
    assert watcher(root, mode="encode").current().version == bad  # encoding needs none


def test_a_threshold_given_to_the_watcher_replaces_the_calibrated_one(tmp_path):
    root = str(tmp_path / "models")
    v = publish(root, threshold=math.nan)
    w = watcher(root, threshold=0.25)
    assert w.current().version == v and w.current().threshold == 0.25


def test_a_feature_change_is_served_when_explicitly_allowed(tmp_path):
    root = str(tmp_path / "models")
    publish(root)
    w = watcher(root, allow_feature_change=True)
    w.current()
    wider = BAD["other width"][0](root)
    assert w.current().version == wider and not w.refusals


# ----------------------------------------------------------------- order


def test_a_future_dated_name_does_not_pin_serving(tmp_path):
    root = str(tmp_path / "models")
    reg = ModelRegistry(root)
    pinned = reg.publish(lambda d: files(d), name="v20991231T235959Z-ffffff")
    w = watcher(root)
    assert w.current().version == pinned
    later = publish(root)  # sorts before the future name, but was published after it
    assert w.current().version == later


def test_a_version_dated_in_the_future_waits_for_its_time(tmp_path, caplog):
    root = str(tmp_path / "models")
    good = publish(root)
    future = by_hand(root, json.dumps({"published_at": "2099-01-01T00:00:00+00:00"}).encode())
    wall = [time.time()]
    w = watcher(root, wall_clock=lambda: wall[0])
    with caplog.at_level(logging.ERROR, logger="ae_pipeline.hot_reload"):
        assert w.current().version == good
        assert w.current().version == good
    assert w.failed[future].startswith("future: ") and w.refusals == {"future": 1}
    assert len(messages(caplog, future)) == 1 and "ahead of this clock" in caplog.text
    newer = publish(root)
    assert w.current().version == newer
    wall[0] = dt.datetime(2099, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc).timestamp()
    assert w.current().version == future and future not in w.failed


# ----------------------------------------------------------------- retry


def test_a_version_copied_marker_first_is_served_once_complete(tmp_path):
    """A non-atomic copy (``gsutil cp -r``, ``aws s3 sync``) can land ``_PUBLISHED`` before
    the weights: refused while incomplete, retried after a backoff, then served."""
    root = str(tmp_path / "models")
    good = publish(root)
    clock = Clock()
    w = watcher(root, clock)
    assert w.current().version == good
    staged = str(tmp_path / "staged")
    files(staged)
    reg = ModelRegistry(root)
    copying = reg.new_version_name()
    Path(reg.path(copying)).mkdir()
    Path(reg.path(copying), MARKER).write_text("{}")
    shutil.copy(Path(staged, "config.json"), reg.path(copying))
    assert w.current().version == good and w.failed[copying].startswith("corrupt: ")
    for name in ("weights.safetensors", "checksums.json"):
        shutil.copy(Path(staged, name), reg.path(copying))
    clock.now = 9.9
    assert w.current().version == good  # backing off (retry_base_s=10)
    clock.now = 10.0
    assert w.current().version == copying and not w.failed
    assert w.refusals == {"corrupt": 1}


def test_retries_back_off_exponentially(tmp_path):
    root = str(tmp_path / "models")
    publish(root)
    clock = Clock()
    w = watcher(root, clock, retry_max_s=35)
    w.current()
    bad = publish(root, threshold=math.nan)
    attempts = []
    for t in range(0, 200):
        clock.now = float(t)
        w.current()
        if w.refusals["threshold"] > len(attempts):
            attempts.append(t)
    assert attempts == [0, 10, 30, 65, 100, 135, 170]  # +10, +20, +35 (cap), +35...
    assert bad in w.failed


# ----------------------------------------------------------------- rollback


def test_removing_the_served_version_rolls_back_to_the_newest_good_one(tmp_path, caplog):
    root = str(tmp_path / "models")
    reg = ModelRegistry(root)
    first = publish(root)
    spoiled = publish(root, threshold=math.inf)
    second = publish(root)
    w = watcher(root)
    assert w.current().version == second and not w.refusals  # never needed the others
    shutil.rmtree(reg.path(second))
    with caplog.at_level(logging.WARNING, logger="ae_pipeline.hot_reload"):
        assert w.current().version == first
    assert w.rollbacks == 1 and w.refusals == {"threshold": 1} and spoiled in w.failed
    assert f"model version {second} was removed from {root}; rolled back to {first}" in (
        caplog.text
    )
    caplog.clear()
    Path(reg.path(first), MARKER).unlink()  # unpublished: nothing else can serve
    with caplog.at_level(logging.ERROR, logger="ae_pipeline.hot_reload"):
        assert w.current().version == first
        assert w.current().version == first
    assert len(messages(caplog, "still serving it from memory")) == 1
    third = publish(root)
    assert w.current().version == third


# ----------------------------------------------------------------- quiet topics


def _wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_background_watcher_swaps_while_no_records_arrive(tmp_path, caplog):
    root = str(tmp_path / "models")
    caplog.set_level(logging.INFO, logger="ae_pipeline.hot_reload")
    with ModelWatcher(root, interval_s=0.05, background=True, mode="flag", device="cpu") as w:
        assert w.background
        thread = next(t for t in threading.enumerate() if t.name == f"ModelWatcher({root})")
        first = publish(root)
        assert _wait_for(lambda: w.version == first)  # loaded without a call to current()
        second = publish(root)
        assert _wait_for(lambda: w.version == second)
        bad = publish(root, threshold=None)
        assert _wait_for(lambda: bad in w.failed) and w.version == second
        assert w.current().version == second
    assert not thread.is_alive() and not w.background
    assert f"now serving model version {second} (was {first})" in caplog.text


def test_open_model_refuses_a_fixed_version_that_cannot_serve(tmp_path):
    root = str(tmp_path / "models")
    path = ModelRegistry(root).path(publish(root, threshold=None))
    with pytest.raises(ArtifactError, match="no calibrated threshold") as err:
        open_model(version_dir=path, mode="flag", device="cpu")
    assert err.value.reason == "threshold"
    fixed = open_model(version_dir=path, mode="encode", device="cpu")
    assert fixed.current().path == path and fixed.refusals == {} and not fixed.poll()
    fixed.close()
    followed = open_model(root=root, mode="encode", device="cpu", background=True)
    try:
        assert isinstance(followed, ModelWatcher) and followed.background
    finally:
        followed.close()

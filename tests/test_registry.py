"""Model version publishing: atomic visibility (marker included), unique names, no path
traversal, versions that cannot serve refused, publish order."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ae_pipeline.artifact import save_artifact
from ae_pipeline.models import ModelConfig, build_model
from ae_pipeline.registry import (
    MARKER,
    ModelRegistry,
    PublishRefused,
    RegistryError,
    marker_entry,
    parse_marker,
    version_of_marker,
)


def test_publish_list_latest(tmp_path):
    reg = ModelRegistry(str(tmp_path / "models"))
    assert reg.latest() is None
    a = reg.publish(
        lambda d: Path(d, "config.json").write_text("{}"), metadata={"loss": 1.0}, check=False
    )
    b = reg.publish(lambda d: Path(d, "config.json").write_text("{}"), check=False)
    assert reg.versions() == [a, b] and reg.latest() == b and a < b
    assert reg.marker(a)["loss"] == 1.0
    assert version_of_marker(str(tmp_path / "models" / a / MARKER)) == reg.path(a)


def test_half_written_version_is_invisible(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    seen_during_write = []

    def slow_write(directory):
        Path(directory, "weights.safetensors").write_bytes(b"x" * 100)
        seen_during_write.append(reg.versions())

    v = reg.publish(slow_write, check=False)
    assert seen_during_write == [[]]
    assert reg.versions() == [v]


def test_failed_write_never_publishes(tmp_path):
    reg = ModelRegistry(str(tmp_path))

    def broken(directory):
        Path(directory, "weights.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        reg.publish(broken)
    assert reg.versions() == []


def test_concurrent_publishes_get_distinct_complete_versions(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    names, lock = [], threading.Lock()

    def publish(i):
        def write(d):
            for k in range(20):
                Path(d, f"part-{k}").write_text(str(i))

        v = reg.publish(write, check=False)
        with lock:
            names.append(v)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 8 and sorted(names) == reg.versions()
    for v in names:
        assert len(list(Path(reg.path(v)).glob("part-*"))) == 20


def test_names_are_never_reused_and_cannot_escape_the_root(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    v = reg.publish(lambda d: None, check=False)
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish(lambda d: None, name=v, check=False)
    for bad in [
        "../etc",
        "v1/../../x",
        "/abs",
        "",
        "v20261126T221500Z-zz",
        "v20261126T221500Z-abcdef\n",
    ]:
        with pytest.raises(RegistryError, match="invalid model version name"):
            reg.path(bad)


# ----------------------------------------------------------------- what publish refuses

CFG = ModelConfig(3, hidden_dims=[], latent_dim=2)
SCALER = {"kind": "standard", "offset": [0.0, 0.0, 0.0], "scale": [1.0, 1.0, 1.0]}


def _artifact(threshold=0.5, model=None, scaler=SCALER):
    def write(d):
        save_artifact(
            d,
            model if model is not None else build_model(CFG, seed=0),
            CFG,
            feature_columns=["a", "b", "c"],
            scaler=scaler,
            threshold=None if threshold is None else {"value": threshold},
        )

    return write


def test_publish_checks_that_a_model_can_serve(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    good = reg.publish(_artifact(), metadata={"val_loss": 0.1})
    marker = reg.marker(good)
    assert marker["val_loss"] == 0.1 and marker["version"] == good
    published_at = dt.datetime.fromisoformat(marker["published_at"])
    assert abs((dt.datetime.now(dt.timezone.utc) - published_at).total_seconds()) < 60
    assert sorted(p.name for p in Path(reg.path(good)).iterdir()) == [
        MARKER,
        "checksums.json",
        "config.json",
        "weights.safetensors",
    ]  # no temporary marker left behind


@pytest.mark.parametrize(
    ("kind", "write", "reason", "match"),
    [
        ("threshold null (one-row partition)", _artifact(None), "threshold", "no calibrated"),
        ("NaN threshold", _artifact(math.nan), "threshold", "threshold is nan"),
        ("-inf threshold", _artifact(-math.inf), "threshold", "flags every record"),
        (
            "NaN weights",
            _artifact(
                model=build_model(CFG, seed=0).apply(
                    lambda m: [p.data.fill_(math.nan) for p in m.parameters(recurse=False)]
                )
            ),
            "weights",
            "non-finite values",
        ),
        (
            "scaler 1e-40",
            _artifact(scaler={**SCALER, "scale": [1.0, 1e-40, 1.0]}),
            "scaler",
            "scale is not above",
        ),
        ("not a model", lambda d: Path(d, "config.json").write_text("{}"), "corrupt", "cannot"),
    ],
)
def test_publish_refuses_a_version_that_cannot_serve(tmp_path, kind, write, reason, match):
    reg = ModelRegistry(str(tmp_path))
    with pytest.raises(PublishRefused, match=f"refused to publish model version .*{match}") as err:
        reg.publish(write)
    assert err.value.reason == reason, kind
    assert reg.versions() == [] and reg.latest() is None
    assert not list(tmp_path.glob(f"*/{MARKER}*"))


def test_a_model_without_threshold_publishes_for_encoding_only(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    v = reg.publish(_artifact(None), needs=())
    assert reg.versions() == [v]
    with pytest.raises(PublishRefused, match="threshold is nan"):
        reg.publish(_artifact(math.nan), needs=None)  # a broken threshold is never published


# ----------------------------------------------------------------- the marker


def test_a_disk_full_while_writing_the_marker_leaves_no_marker(tmp_path):
    """A real write error after partial output: RLIMIT_FSIZE caps the size of any file the
    process writes, so the marker's write fails with EFBIG part-way (as on a full disk). The
    limit is set after the model files are written, in a child process."""
    root = tmp_path / "models"
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_registry import _artifact
        from ae_pipeline.registry import ModelRegistry

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of a signal
        write = _artifact()

        def write_then_fill_the_disk(d):
            write(d)
            resource.setrlimit(resource.RLIMIT_FSIZE, (20, 20))

        try:
            ModelRegistry({str(root)!r}).publish(write_then_fill_the_disk)
        except OSError as err:
            print("publish failed:", err)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "publish failed:" in out.stdout and "File too large" in out.stdout, out.stderr
    (version,) = list(root.iterdir())
    assert (version / "weights.safetensors").exists()
    assert not list(version.glob(f"{MARKER}*")), "a marker (or its temporary) was left"
    assert ModelRegistry(str(root)).versions() == []


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "marker is empty"),
        (b"  \n", "marker is empty"),
        (b'{"version": "v1", "val_lo', "marker is garbled"),
        (b"[1, 2]", "expected a JSON object"),
        (b"\xff\xfe", "marker is garbled"),
        (b'{"published_at": "yesterday"}', "marker is garbled"),
        (b'{"published_at": "2026-12-01T10:00:00"}', "has no time zone"),
    ],
)
def test_an_empty_or_garbled_marker_is_not_published(tmp_path, raw, match):
    reg = ModelRegistry(str(tmp_path))
    good = reg.publish(lambda d: None, check=False)
    bad = "v20261201T100000Z-abcdef"
    Path(reg.path(bad)).mkdir()
    Path(reg.path(bad), MARKER).write_bytes(raw)
    with pytest.raises(RegistryError, match=match) as err:
        reg.entry(bad)
    assert err.value.reason == "marker"
    with pytest.raises(RegistryError, match=match):
        marker_entry(reg.path(bad))
    assert marker_entry(reg.path(good)).name == good
    assert bad in reg.versions()  # listed (it has a marker file) but never counted:
    assert reg.latest() == good and [e.name for e in reg.ordered()] == [good]


# ----------------------------------------------------------------- order


def _hand_made(reg: ModelRegistry, name: str, marker: dict) -> None:
    """A version copied into the root by hand, with the marker it came with."""
    Path(reg.path(name)).mkdir(parents=True)
    Path(reg.path(name), MARKER).write_text(json.dumps(marker))


def test_versions_are_ordered_by_publish_time_not_by_name(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    far = "v20990101T000000Z-aaaaaa"  # a future-dated name, published now
    assert reg.publish(lambda d: None, name=far, check=False) == far
    later = reg.publish(lambda d: None, check=False)
    assert reg.versions() == [later, far]  # by name: the future name looks newest
    assert [e.name for e in reg.ordered()] == [later, far]  # by publish time it is not
    assert reg.latest() == later


def test_a_version_dated_in_the_future_does_not_count_until_its_time(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    now = reg.publish(lambda d: None, check=False)
    _hand_made(reg, "v20990101T000000Z-bbbbbb", {})  # no published_at: the name's time
    _hand_made(reg, "v20000101T000000Z-cccccc", {"published_at": "2099-01-01T00:00:00+00:00"})
    _hand_made(reg, "v20000101T000000Z-dddddd", {})  # an old version, copied in by hand
    assert [e.name for e in reg.ordered()] == [now, "v20000101T000000Z-dddddd"]
    assert reg.entry("v20990101T000000Z-bbbbbb").published_at.year == 2099
    assert [e.name for e in reg.ordered(future_tolerance_s=1e12)][:2] == [
        "v20990101T000000Z-bbbbbb",
        "v20000101T000000Z-cccccc",
    ]


def test_marker_metadata_cannot_forge_the_version_or_its_time(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    v = reg.publish(
        lambda d: None,
        metadata={"version": "x", "published_at": "2099-01-01T00:00:00+00:00"},
        check=False,
    )
    assert reg.marker(v)["version"] == v and reg.entry(v).published_at.year < 2099


def test_parse_marker_reads_the_time_of_old_markers_from_the_name():
    entry = parse_marker(
        "v20261126T221500123Z-3f9a1c", b'{"version": "v20261126T221500123Z-3f9a1c"}'
    )
    assert entry.published_at == dt.datetime(
        2026, 11, 26, 22, 15, 0, 123000, tzinfo=dt.timezone.utc
    )

"""Model version publishing: atomic visibility, unique names, no path traversal."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ae_pipeline.registry import MARKER, ModelRegistry, RegistryError, version_of_marker


def test_publish_list_latest(tmp_path):
    reg = ModelRegistry(str(tmp_path / "models"))
    assert reg.latest() is None
    a = reg.publish(lambda d: Path(d, "config.json").write_text("{}"), metadata={"loss": 1.0})
    b = reg.publish(lambda d: Path(d, "config.json").write_text("{}"))
    assert reg.versions() == [a, b] and reg.latest() == b and a < b
    assert reg.marker(a)["loss"] == 1.0
    assert version_of_marker(str(tmp_path / "models" / a / MARKER)) == reg.path(a)


def test_half_written_version_is_invisible(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    seen_during_write = []

    def slow_write(directory):
        Path(directory, "weights.safetensors").write_bytes(b"x" * 100)
        seen_during_write.append(reg.versions())

    v = reg.publish(slow_write)
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

        v = reg.publish(write)
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
    v = reg.publish(lambda d: None)
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish(lambda d: None, name=v)
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

"""Fixtures of the reliability suite, the ``soak`` marker, and the fault table at the end.

The suite starts its own Kafka broker (not the session one: its tests stop, kill and restart
it), with a SASL_PLAINTEXT listener beside the PLAINTEXT one for the security tests.

``soak`` tests run only when selected (``pytest -m soak``, as ``make soak`` does) or with
``AE_SOAK=1``; ``AE_SOAK_SECONDS`` shortens them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import time

import kit
import pytest
import reliability_kit as rel
from kit.logs import (
    all_logs,  # noqa: F401 (a fixture)
    quiet_abandoned_kafka_clients,
)

from ae_pipeline.local.kafka_broker import KafkaBroker


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "soak: long-running soak test (make soak; skipped unless selected)"
    )


def _soak_selected(config) -> bool:
    if os.environ.get("AE_SOAK") == "1":
        return True
    markexpr = config.option.markexpr or ""
    return bool(re.search(r"(?<!not )\bsoak\b", markexpr))


def pytest_collection_modifyitems(config, items):
    if _soak_selected(config):
        return
    skip = pytest.mark.skip(reason="soak test: run with `make soak` (-m soak) or AE_SOAK=1")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def trained():
    return kit.train(epochs=6)  # enough for these tests, and half the time


@pytest.fixture
def model_root(tmp_path, trained):
    """``(root, version)``: a registry root holding one published version of ``trained``."""
    root = str(tmp_path / "models")
    return root, kit.publish(root, trained)


@pytest.fixture(scope="session")
def _rel_broker():
    broker = KafkaBroker()
    broker.add_sasl_plain_listener({rel.SASL_USER: rel.SASL_PASSWORD})
    broker.start()
    yield broker
    quiet_abandoned_kafka_clients()  # the session's tests are over
    broker.stop()


@pytest.fixture
def broker(_rel_broker):
    """The suite's own broker, running (restarted if an earlier test left it down)."""
    if _rel_broker.proc is None or _rel_broker.proc.poll() is not None:
        _rel_broker.start()
    return _rel_broker


# ---------------------------------------------------------------------------- report

_COLUMNS = (
    "fault",
    "target",
    "records_in",
    "records_out",
    "duplicated",
    "lost",
    "pending",
    "outcome",
)


def _table() -> list[str]:
    rows = [list(_COLUMNS)] + [[str(r.get(c, "-"))[:70] for c in _COLUMNS] for r in rel.FAULTS]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(w) if 2 <= i < 7 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(rows[0]).rstrip(), "-" * len(line(rows[0]).rstrip())]
    out.extend(line(r).rstrip() for r in rows[1:])
    return out


def _write_results() -> None:
    data: dict = {}
    if rel.RESULTS_PATH.exists():
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(rel.RESULTS_PATH.read_text())
    # Rows of this session replace those of the same (fault, target); others are kept with
    # their own measured_at, so a partial run (-k ...) does not erase the rest.
    fresh = {(r["fault"], r["target"]) for r in rel.FAULTS}
    kept = [r for r in data.get("faults", []) if (r.get("fault"), r.get("target")) not in fresh]
    data["faults"] = kept + rel.FAULTS
    if rel.FUZZ:
        data["fuzz"] = dict(rel.FUZZ)
    if rel.SOAK:
        data["soak"] = rel.SOAK
    data["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rel.RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    tmp = rel.RESULTS_PATH.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(rel.RESULTS_PATH)


def pytest_terminal_summary(terminalreporter):
    if not (rel.FAULTS or rel.FUZZ or rel.SOAK):
        return
    tr = terminalreporter
    tr.section("reliability: faults tried")
    if rel.FAULTS:
        for line in _table():
            tr.write_line(line)
    if rel.FUZZ:
        f = rel.FUZZ
        tr.write_line(
            f"fuzz: {f['examples']} examples, {f['records']} records through decode_records + "
            f"score_records: {f['results']} results, {f['dead_letters']} dead letters, "
            f"{f['unaccounted']} unaccounted, {f['crashes']} crashes"
        )
        tr.write_line(
            f"fuzz: {f['non_finite_results']} results with NaN/inf numbers, "
            f"{f['non_finite_not_flagged']} of them flagged normal"
        )
    if rel.SOAK:
        s = rel.SOAK
        tr.write_line(
            f"soak: {s['seconds']:.0f}s at {s['target_rate']:.0f} rec/s "
            f"(80% of max {s['max_rate']:.0f}); RSS slope {s['rss_slope_kib_per_min']:+.1f} "
            f"KiB/min, lag slope {s['lag_slope_records_per_min']:+.1f} records/min"
        )
    _write_results()
    tr.write_line(f"written to {rel.RESULTS_PATH.relative_to(kit.REPO)}")

"""Session fixtures: the real Kafka broker and the Beam runners every test runs against."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from ae_pipeline.local.kafka_broker import KafkaBroker
from ae_pipeline.local.runners import pipeline_options

_RUNNERS_USED: Counter[str] = Counter()
_BROKER_INFO: list[str] = []


@pytest.fixture(scope="session")
def kafka_broker():
    """A real Apache Kafka broker (KRaft, single node) on 127.0.0.1; fails loudly if it can't
    start (the error carries the broker's log tail)."""
    broker = KafkaBroker().start()
    _BROKER_INFO.append(
        f"Kafka broker {broker.bootstrap_servers} started in {broker.started_in:.1f}s "
        f"(log {broker.log_path})"
    )
    yield broker
    broker.stop()


@pytest.fixture
def bootstrap_servers(kafka_broker) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture
def beam_options():
    """``beam_options(runner, streaming=False, **extra)``: options for a named local runner;
    records which runners the session really used."""

    def make(runner: str, *, streaming: bool = False, **extra):
        _RUNNERS_USED[runner] += 1
        return pipeline_options(runner, streaming=streaming, **extra)

    return make


def pytest_terminal_summary(terminalreporter):
    names = {"fnapi": "FnApiRunner", "prism": "PrismRunner", "flink": "FlinkRunner"}
    if _RUNNERS_USED:
        used = ", ".join(f"{names[r]} x{n}" for r, n in sorted(_RUNNERS_USED.items()))
        terminalreporter.write_line(f"Beam runners that ran pipelines: {used}")
    for line in _BROKER_INFO:
        terminalreporter.write_line(line)


def pytest_configure(config):
    # `import apache_beam` installs a root handler at WARNING; keep test logs readable.
    logging.getLogger("kafka").setLevel(logging.WARNING)


def pytest_unconfigure(config):
    """At exit, the SDK worker threads that LOOPBACK jobs (Prism, Flink) left behind lose their
    job servers as those shut down: their gRPC streams end with UNAVAILABLE ("Socket closed")
    or CANCELLED ("Runner closed connection"), and their Kafka clients lose the broker:
    expected then, not test failures. Registered now, the quieting runs before the exit
    handlers that stop the job servers (atexit runs last in, first out) and after pytest has
    restored its own thread-exception hook. Other thread exceptions are still printed."""
    import atexit

    atexit.register(_quiet_worker_shutdown)


def _quiet_worker_shutdown() -> None:
    import threading

    logging.raiseExceptions = False  # no "--- Logging error ---" for writes to closed streams
    # ... and Kafka clients those workers still hold retry the broker the session stopped.
    for name in ("apache_beam.runners.worker", "kafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    previous = threading.excepthook

    def hook(args):
        code = getattr(args.exc_value, "code", None)
        gone = callable(code) and getattr(code(), "name", "") in ("UNAVAILABLE", "CANCELLED")
        if not gone:
            previous(args)

    threading.excepthook = hook

"""Session fixtures: the real Kafka broker and the Beam runners every test runs against; and
the quieting of what jobs that tests cancelled leave behind (see :func:`pytest_configure`)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
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
    from kit.logs import quiet_abandoned_kafka_clients

    quiet_abandoned_kafka_clients()  # the session's tests are over
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


@pytest.fixture(autouse=True)
def _logging_restored():
    """Every test leaves logging as it found it: the root logger's handlers and level, and
    the level of every logger. The jobs' ``main()`` configure logging for their process
    (``basicConfig(force=True)``); in a test, that points the root logger at the test's
    captured stderr for the rest of the session, and what clients of cancelled jobs log
    there later is printed after the session's summary."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = _logger_levels()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, now in _logger_levels().items():
        if name in levels and levels[name] != now:
            logging.getLogger(name).setLevel(levels[name])


def _logger_levels() -> dict[str, int]:
    loggers = list(logging.Logger.manager.loggerDict.items())
    return {name: lg.level for name, lg in loggers if isinstance(lg, logging.Logger)}


def pytest_terminal_summary(terminalreporter):
    names = {"fnapi": "FnApiRunner", "prism": "PrismRunner", "flink": "FlinkRunner"}
    if _RUNNERS_USED:
        used = ", ".join(f"{names[r]} x{n}" for r, n in sorted(_RUNNERS_USED.items()))
        terminalreporter.write_line(f"Beam runners that ran pipelines: {used}")
    for line in _BROKER_INFO:
        terminalreporter.write_line(line)


@pytest.hookimpl(trylast=True)  # after pytest's own thread-exception hook is in place
def pytest_configure(config):
    """Keeps Kafka's client logs at WARNING, and drops one kind of thread exception: an SDK
    worker thread of a LOOPBACK job (in this process) whose gRPC stream ends CANCELLED or
    UNAVAILABLE because its runner hung up, as Prism and Flink do when a test cancels the
    job. The job's own state says whether it failed; every other thread exception is still
    reported (by pytest, as a warning on the test that was running)."""
    logging.getLogger("kafka").setLevel(logging.WARNING)
    report = threading.excepthook

    def hook(args):
        if not (_stream_gone(args.exc_value) and _in_beam_worker(args.exc_traceback)):
            report(args)

    threading.excepthook = hook


def _stream_gone(exc: BaseException | None) -> bool:
    """A gRPC stream that ended because the other side went away (CANCELLED, UNAVAILABLE)."""
    code = getattr(exc, "code", None)
    return callable(code) and getattr(code(), "name", "") in ("UNAVAILABLE", "CANCELLED")


def _in_beam_worker(tb) -> bool:
    while tb is not None:
        if "apache_beam/runners/worker/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


def pytest_unconfigure(config):
    """At exit, the SDK worker threads that LOOPBACK jobs (Prism, Flink) left behind lose their
    job servers as those shut down: their gRPC streams end with UNAVAILABLE ("Socket closed")
    or CANCELLED ("Runner closed connection"), a bundle still waiting for its input fails
    with "Channel closed prematurely" (Beam prints its traceback), and their Kafka clients
    lose the broker: expected then, not test failures. Registered now, the quieting runs
    before the exit handlers that stop the job servers (atexit runs last in, first out) and
    after pytest has restored its own thread-exception hook. Other thread exceptions and
    other output are still printed."""
    import atexit

    atexit.register(_quiet_worker_shutdown)
    _exit_watchdog(int(getattr(config, "_ae_exitstatus", 0)))


def pytest_sessionfinish(session, exitstatus):
    session.config._ae_exitstatus = exitstatus


EXIT_GRACE_S = float(os.environ.get("AE_TEST_EXIT_GRACE_S", "180"))


def _exit_watchdog(status: int) -> None:
    """A thread that never ends (a non-daemon thread stuck in a library call, a
    ``concurrent.futures`` worker the interpreter joins at exit) must not hold the process
    after the session: CI once waited an hour for one. After ``EXIT_GRACE_S`` the stacks of
    every thread still running are printed, to name the culprit, and the process exits with
    the session's status."""
    import faulthandler

    def watch() -> None:
        time.sleep(EXIT_GRACE_S)
        sys.stderr.write(
            f"\nthe test process has not exited {EXIT_GRACE_S:g}s after the session ended "
            "(a defect: a thread that never ends); the threads still running:\n"
        )
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(status)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()


def _quiet_worker_shutdown() -> None:
    logging.raiseExceptions = False  # no "--- Logging error ---" for writes to closed streams
    # ... and Kafka clients those workers still hold retry the broker the session stopped.
    for name in ("apache_beam.runners.worker", "kafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    logs = sys.modules.get("kit.logs")  # not loaded: no test made Kafka clients
    if logs is not None:
        logs.quiet_abandoned_kafka_clients()
    previous = threading.excepthook

    def hook(args):
        if not _stream_gone(args.exc_value):
            previous(args)

    threading.excepthook = hook
    sys.stderr = WithoutChannelClosedTracebacks(sys.stderr)


class WithoutChannelClosedTracebacks:
    """``stream``, less the tracebacks Beam's SDK harness prints (``print(traceback,
    file=sys.stderr)``: the traceback, then a newline) for a bundle that failed with
    "Channel closed prematurely", i.e. whose runner went away while it waited for input.
    Everything else is written as it comes."""

    END = "RuntimeError: Channel closed prematurely."

    def __init__(self, stream):
        self._stream = stream
        self._dropped = threading.local()

    def write(self, text: str) -> int:
        dropped, self._dropped.last = getattr(self._dropped, "last", False), False
        if text.startswith("Traceback (most recent call last):") and (
            text.rstrip().endswith(self.END)
        ):
            self._dropped.last = True
            return len(text)
        if dropped and text == "\n":  # the end of that print()
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def pytest_collection_modifyitems(config, items):
    """Tests that need the Beam Java jars ``make setup`` resolves (markers ``flink`` and
    ``beam_jars``: the Flink runner, the KafkaIO expansion service) run only on the Beam those
    jars are for, 2.62.0 (``.venv-beam-2.62``); elsewhere they are skipped, saying where they
    run. README "Beam versions"."""
    gated = [i for i in items if i.get_closest_marker("flink") or i.get_closest_marker("beam_jars")]
    if not gated:
        return
    from kit.beam_envs import FLINK, INSTALLED, has_the_java_jars

    if has_the_java_jars():
        return
    skip = pytest.mark.skip(
        reason=f"needs Beam {FLINK}'s Java jars (Flink runner / KafkaIO expansion service); "
        f"this is Beam {INSTALLED}: `make test` runs it in .venv-beam-2.62"
    )
    for item in gated:
        item.add_marker(skip)

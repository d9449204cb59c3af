"""tests/conftest.py quiets exactly what cancelled LOOPBACK jobs leave behind, and nothing
else: a session of a few generated tests runs under a copy of it in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

GENERATED = '''
import atexit
import logging
import sys
import threading
import traceback

import grpc


class Gone(grpc.RpcError):
    """A gRPC stream the runner hung up on."""

    def code(self):
        return grpc.StatusCode.CANCELLED


def _in_thread(target):
    t = threading.Thread(target=target)
    t.start()
    t.join()


def _channel_closed_traceback():
    try:
        raise RuntimeError("Channel closed prematurely.")
    except RuntimeError:
        return traceback.format_exc()


def _at_exit():
    # Beam's SdkHarness._execute prints a failed bundle's traceback like this.
    print(_channel_closed_traceback(), file=sys.stderr)
    print("MARK other exit output", file=sys.stderr)
    print("Traceback (most recent call last):\\nValueError: MARK real", file=sys.stderr)


atexit.register(_at_exit)  # runs after the conftest's quieting (registered later)


def test_worker_stream_ended_by_its_runner():
    # An SDK worker thread's stream (its code in apache_beam/runners/worker/) ends CANCELLED.
    namespace = {"Gone": Gone}
    code = compile("def run():\\n    raise Gone()\\n", "/x/apache_beam/runners/worker/w.py", "exec")
    exec(code, namespace)
    _in_thread(namespace["run"])


def test_the_same_error_elsewhere_is_reported():
    def run():
        raise Gone()

    _in_thread(run)


def test_other_thread_exceptions_are_reported():
    def run():
        raise ValueError("MARK thread")

    _in_thread(run)


def test_a_job_configures_logging():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True)


def test_the_next_test_gets_logging_back():
    root = logging.getLogger()
    assert root.level == logging.WARNING
    assert not [h for h in root.handlers if type(h) is logging.StreamHandler]
'''


def test_conftest_quiets_only_what_cancelled_jobs_leave(tmp_path: Path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_generated.py").write_text(textwrap.dedent(GENERATED))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "5 passed, 2 warnings" in out, out
    # Reported: the same gRPC error outside Beam's worker, and any other thread exception.
    assert out.count("PytestUnhandledThreadExceptionWarning: Exception in thread") == 2, out
    assert "test_the_same_error_elsewhere_is_reported" in out
    assert "ValueError: MARK thread" in out
    # Not reported: the worker stream's end, Beam's "Channel closed prematurely" traceback.
    assert "apache_beam/runners/worker/w.py" not in out
    assert "Channel closed prematurely" not in out
    # Printed at exit as before: other output, other tracebacks.
    assert "MARK other exit output" in run.stderr
    assert "ValueError: MARK real" in run.stderr


STUCK = """
import threading


def test_passes_but_leaves_a_thread_that_never_ends():
    threading.Thread(target=threading.Event().wait, name="never-ends").start()
"""


def test_a_thread_that_never_ends_does_not_hold_the_session(tmp_path: Path):
    """The exit watchdog: the session's result stands, the stuck thread is named."""
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_stuck.py").write_text(STUCK)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "AE_TEST_EXIT_GRACE_S": "2"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert "has not exited 2s after the session ended" in run.stderr
    assert "never-ends" in run.stderr or "in wait" in run.stderr, run.stderr

"""The watchdog around librdkafka's transactional calls (confluentinc/librdkafka#5456): a call
that never returns is abandoned without keeping the process alive."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("confluent_kafka")

from ae_pipeline.kafka.confluent_client import call_with_deadline


def test_a_call_that_returns_is_waited_for_and_its_error_raised():
    got = []
    assert call_with_deadline(got.append, [1], 5.0, name="t")
    assert got == [1]
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, [], 5.0, name="t")


def test_a_call_that_never_returns_is_abandoned_after_its_deadline():
    forever = threading.Event()
    started = time.monotonic()
    assert not call_with_deadline(forever.wait, [], 0.2, name="stuck")
    assert 0.15 <= time.monotonic() - started < 5.0
    forever.set()


def test_an_abandoned_call_does_not_keep_the_interpreter_alive():
    """Before: a ThreadPoolExecutor ran the call; the interpreter joins its workers at exit,
    so a process whose producer was abandoned never exited (a CI run hung for an hour)."""
    script = textwrap.dedent(
        """
        import threading
        from ae_pipeline.kafka.confluent_client import call_with_deadline
        assert not call_with_deadline(threading.Event().wait, [], 0.1, name="stuck")
        print("main done", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "main done" in done.stdout

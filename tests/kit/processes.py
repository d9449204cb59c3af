"""The plain consumer (``python -m pipelines.consume``) as a process, for crash/soak tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def start_consumer(
    bootstrap: str,
    root: str,
    inp: str,
    out: str,
    dlq: str,
    group: str,
    *extra: str,
    max_batch: int,
    client: str | None = None,
    kafka_config: str | Path | None = None,
) -> subprocess.Popen:
    """Starts the consumer (flag mode, CPU, WARNING logs) on ``inp``; stdout and stderr piped
    (its last stdout line is its stats, see :func:`last_stats`)."""
    cmd = [
        sys.executable,
        "-m",
        "pipelines.consume",
        f"--bootstrap_servers={bootstrap}",
        f"--group_id={group}",
        f"--input_topic={inp}",
        f"--output_topic={out}",
        f"--dead_letter_topic={dlq}",
        "--mode=flag",
        f"--model_root={root}",
        "--device=cpu",
        f"--max_batch={max_batch}",
        "--log_level=WARNING",
    ]
    if client is not None:
        cmd.append(f"--client={client}")
    if kafka_config is not None:
        cmd.append(f"--kafka_config={kafka_config}")
    cmd.extend(extra)
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def process_alive(proc: subprocess.Popen, what: str = "the consumer") -> Callable[[], str | None]:
    """For :func:`kit.kafka.wait_until`'s ``alive``: None while ``proc`` runs, else why not."""

    def alive() -> str | None:
        if proc.poll() is None:
            return None
        return f"{what} exited ({proc.returncode}): {proc.stderr.read().decode()[-3000:]}"

    return alive


def last_stats(stdout: bytes) -> dict[str, Any]:
    """The consumer's stats: the JSON object on its last stdout line."""
    return json.loads(stdout.decode().strip().splitlines()[-1])


def stream_job_args(
    bootstrap: str, inp: str, out: str, dlq: str, group: str, root: str, *extra: str
) -> list[str]:
    """Options of ``pipelines.stream`` (flag mode, CPU) for these topics, group and model
    root; put the runner's options before them."""
    return [
        "--mode=flag",
        f"--bootstrap_servers={bootstrap}",
        f"--input_topic={inp}",
        f"--output_topic={out}",
        f"--dead_letter_topic={dlq}",
        f"--group_id={group}",
        f"--model_root={root}",
        "--device=cpu",
        *extra,
    ]


def pipeline_alive(result: Any) -> Callable[[], str | None]:
    """For :func:`kit.kafka.wait_until`'s ``alive``: None while a Beam pipeline runs."""
    from apache_beam.runners.runner import PipelineState

    def alive() -> str | None:
        state = result.state
        return f"the pipeline ended: {state}" if PipelineState.is_terminal(state) else None

    return alive

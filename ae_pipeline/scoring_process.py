"""Scoring batches of Kafka records into output messages, here or in a child process.

The plain consumer (:class:`ae_pipeline.consumer.ScoringConsumer`) is one Python process: its
Kafka I/O (polling, producing, waiting for acknowledgements) and its scoring (decoding JSON,
the forward pass, building results, serialising them) take turns on one core, because they
share the interpreter lock. :class:`ScoringProcess` moves the scoring to a child process (a
fresh interpreter running this module: the parent's Kafka client threads must not be forked),
so that, with a spare core, batch ``k + 1`` is scored while batch ``k``'s outputs are produced
and committed.
:class:`InlineScorer` scores in the calling thread, behind the same ``submit`` / ``collect``
calls. Both return :class:`ScoredBatch` objects from :func:`score_batch`, so the outputs are the
same messages either way.

The child loads the model itself (a fixed version, or a
:class:`~ae_pipeline.hot_reload.ModelWatcher` that hot-reloads), and the two processes exchange
typed messages over its stdin and stdout (:mod:`ae_pipeline.scoring_protocol`: ``msgspec``
structs as length-prefixed MessagePack frames): record values and coordinates one way, message
keys and values the other. Nothing is unpickled. The child gets the mode's name and the module
that defines it, which it imports first (:func:`mode_module`): a mode of one's own serves there
too when its module registers it. The child's log records come back with its replies and are
emitted through this process's loggers (same names and levels), so one logging configuration
covers both. The child ignores SIGINT and SIGTERM (the parent decides when to stop and drains
its batches first) and exits when the parent closes the pipe or dies.

Example:
    >>> scorer = ScoringProcess(                                       # doctest: +SKIP
    ...     {"version_dir": "/models/v1", "device": "cpu"}, mode="flag")
    >>> scorer.open()                                                  # doctest: +SKIP
    'v1'
    >>> scorer.submit(records); batch = scorer.collect()               # doctest: +SKIP
    >>> scorer.close()                                                 # doctest: +SKIP

Size (over 500 lines): the two scorers behind one interface (inline and the child
process), the child's main loop and its restart handling belong together: each side of the
pipe is read against the other.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from ae_pipeline import scoring_protocol as protocol
from ae_pipeline.hot_reload import FixedModel, ModelWatcher, open_model
from ae_pipeline.serving import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MESSAGE_KEY,
    NoModelError,
    OutputMode,
    Source,
    check_max_message_bytes,
    check_message_key,
    check_mode,
    check_passthrough,
    get_mode,
    message_headers,
)

_log = logging.getLogger(__name__)

Message = tuple[Any, bytes, Any]


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> float:
    """The CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's ``--cpus`` or a Kubernetes CPU limit, which the affinity does not show).

    Reads cgroup v2's ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) or cgroup v1's
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us``; no quota: the affinity alone.
    """
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    root = Path(cgroup_root)
    for read in (
        lambda: (root / "cpu.max").read_text().split(),  # v2
        lambda: [(root / "cpu" / f"cpu.cfs_{n}_us").read_text() for n in ("quota", "period")],
    ):
        with contextlib.suppress(OSError, ValueError, IndexError):
            quota, period = read()[:2]
            if quota != "max" and int(quota) > 0:
                return min(cpus, int(quota) / int(period))
            return cpus  # a cgroup without a quota
    return cpus


def default_scoring_process() -> bool:
    """Whether a consumer scores in a child process when not told (``scoring_process=None``,
    ``--scoring_process=auto``): where it may use 2 CPUs or more. Then batch ``k + 1`` is scored
    on the second core while batch ``k``'s outputs are produced; on one CPU the two processes
    would only take turns. The child is a second interpreter with its own torch and model: about
    twice the consumer's memory (RSS 1.3 GiB against 0.67 GiB in ``benchmarks/bench_streaming.py``);
    pass ``scoring_process=False`` where memory is tighter than CPU."""
    return usable_cpus() >= 2


class ScoringProcessError(RuntimeError):
    """The scoring child process failed or exited; the message says how. The batches it held
    were not produced nor committed: they are replayed by the next consumer of the partitions."""


@dataclass
class ScoredBatch:
    """The outputs of one batch of records.

    Attributes:
        outputs: ``(key, value, headers)`` result messages (:func:`ae_pipeline.serving.to_message`).
        letters: the same for dead letters.
        dead_reasons: each dead letter's reason, in order.
        anomalies: results flagged anomalous (``flag`` mode).
        version: the model version that scored the batch.
        swaps: how many times the model provider has (re)loaded a model so far.
        scores: the results' scores (``flag``, ``explain``; empty for other modes).
        seconds: how long the scoring took, where it ran.
        refusals: versions the model provider refused so far, by reason.
    """

    outputs: list[Message]
    letters: list[Message]
    dead_reasons: list[str] = field(default_factory=list)
    anomalies: int = 0
    version: str | None = None
    swaps: int = 0
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    seconds: float | None = None
    refusals: dict[str, int] = field(default_factory=dict)


def score_batch(
    provider: FixedModel | ModelWatcher,
    records: Sequence[Any],
    mode: str | OutputMode,
    passthrough: Sequence[str] = (),
    sources: Sequence[Any] | None = None,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    message_key: str = DEFAULT_MESSAGE_KEY,
) -> ScoredBatch:
    """Scores ``records`` (Kafka records, or values with ``sources``) with the provider's
    current model into messages (:meth:`ae_pipeline.serving.ServingModel.score_messages`:
    every record a result or a dead letter, none over ``max_message_bytes``)."""
    start = time.perf_counter()
    model = provider.current()
    scored = model.score_messages(
        records,
        mode,
        sources=sources,
        passthrough=passthrough,
        max_message_bytes=max_message_bytes,
        message_key=message_key,
    )
    return ScoredBatch(
        scored.results,
        scored.dead_letters,
        scored.dead_reasons,
        scored.anomalies,
        scored.version,
        provider.swaps,
        np.asarray(scored.scores, dtype=np.float64),
        time.perf_counter() - start,
        dict(provider.refusals),
    )


def mode_module(mode: str | OutputMode) -> str:
    """The module that defines a registered mode's class, which the scoring child imports
    before it looks the mode up by name (the module registers it when imported); empty for a
    built-in mode.

    Example:
        >>> from ae_pipeline.serving import get_mode
        >>> mode_module("explain"), mode_module(get_mode("flag"))
        ('', '')
    """
    module = type(get_mode(mode)).__module__
    return "" if module == OutputMode.__module__ else module  # built-ins live beside it


def refresh(provider: FixedModel | ModelWatcher) -> tuple[str | None, int]:
    """Lets a hot-reloading provider check for a new version now (cheap when its interval has
    not passed: :meth:`~ae_pipeline.hot_reload.ModelWatcher.current`), so that a quiet topic
    still swaps; returns ``(version, swaps)``. A version that cannot be loaded is the
    provider's to log; the one serving stays."""
    try:
        return provider.current().version, provider.swaps
    except NoModelError:
        return provider.version, provider.swaps


class _Scorer:
    """What both scorers take: :func:`ae_pipeline.hot_reload.open_model` arguments (``version_dir``
    or ``root``, ``interval_s``, ``device``, ``top_k``, ``torch_threads``...), the mode, the
    passthrough fields, the most bytes of one output message and which key results carry
    (:meth:`ae_pipeline.serving.ServingModel.score_messages`). ``depth``: batches the consumer
    keeps submitted before collecting."""

    depth = 0

    def __init__(
        self,
        model_args: dict[str, Any],
        *,
        mode: str | OutputMode,
        passthrough: Sequence[str] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        message_key: str = DEFAULT_MESSAGE_KEY,
    ) -> None:
        self.model_args = dict(model_args)
        self.mode = check_mode(mode)
        self.mode_module = mode_module(mode)
        self.passthrough = check_passthrough(passthrough, mode)
        self.max_message_bytes = check_max_message_bytes(max_message_bytes)
        self.message_key = check_message_key(message_key)

    def _options(self) -> dict[str, Any]:
        return {"max_message_bytes": self.max_message_bytes, "message_key": self.message_key}


class InlineScorer(_Scorer):
    """Scores each submitted batch at once, in the calling thread (``depth`` 0: collect each
    batch right after submitting it)."""

    def __init__(self, model_args: dict[str, Any], **options: Any) -> None:
        super().__init__(model_args, **options)
        self.provider: FixedModel | ModelWatcher | None = None
        self._done: deque[ScoredBatch] = deque()

    def open(self) -> str | None:
        """Loads the model (raises :class:`~ae_pipeline.serving.NoModelError` while none is
        published); returns its version."""
        if self.provider is None:
            self.provider = open_model(**self.model_args)
        return self.provider.current().version

    def submit(self, records: Sequence[Any]) -> None:
        assert self.provider is not None, "open() first"
        self._done.append(
            score_batch(self.provider, records, self.mode, self.passthrough, **self._options())
        )

    def refresh(self) -> tuple[str | None, int]:
        """:func:`refresh` of the provider: ``(version, swaps)``."""
        assert self.provider is not None, "open() first"
        return refresh(self.provider)

    def collect(self) -> ScoredBatch:
        return self._done.popleft()

    @property
    def pending(self) -> int:
        return len(self._done)

    def close(self) -> None:
        self._done.clear()


# ------------------------------------------------------------------------------ the child


class _ForwardHandler(logging.Handler):
    """The child's log handler: keeps ``[level, logger name, message]`` rows for the next reply
    (the message with its traceback, if any); what no reply carries is written to stderr when the
    child exits."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, str]] = []
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.rows.append((record.levelno, record.name, self.format(record)))
        except Exception:  # pragma: no cover - logging must not break scoring
            self.handleError(record)

    def take(self) -> list[protocol.LogRow]:
        rows, self.rows = self.rows, []
        return rows  # type: ignore[return-value]

    def flush_to_stderr(self) -> None:
        for level, name, message in self.take():
            print(f"{logging.getLevelName(level)} {name}: {message}", file=sys.stderr)


def _emit_child_logs(rows: list[protocol.LogRow], pid: int | None) -> None:
    """Emits the child's log rows through this process's loggers (same names and levels)."""
    for level, name, message in rows:
        logger = logging.getLogger(name)
        if logger.isEnabledFor(level):
            logger.log(level, "%s", message, extra={"scoring_process_pid": pid})


def _child_main() -> None:
    """The child (``python -m ae_pipeline.scoring_process``): a settings frame, then ``open``
    and ``score`` requests on stdin, replies on stdout in order, until stdin closes. Its own stdout
    (prints, library chatter) goes to stderr, so that only frames travel on the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, after draining
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    settings = protocol.read_frame(requests, protocol.decode_request)
    if not isinstance(settings, protocol.Settings):
        raise SystemExit(f"the first frame must be the settings, got {type(settings).__name__}")
    # Log records travel to the parent with the next reply and are emitted there, through the
    # parent's own logging configuration (handlers, format, level).
    forward = _ForwardHandler()
    root = logging.getLogger()
    root.handlers[:] = [forward]
    root.setLevel(settings.log_level)
    model_args, mode, passthrough = settings.model, settings.mode, settings.passthrough
    options = settings.options
    # A reader thread keeps stdin drained: the parent may be writing the next batch while this
    # process writes a reply, and two processes each blocked on a full pipe would deadlock.
    inbox: queue.SimpleQueue[protocol.Request | Exception | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                try:
                    inbox.put(protocol.read_frame(requests, protocol.decode_request))
                except protocol.DecodeError as err:  # answered, in order, as a failure
                    inbox.put(err)
        except (EOFError, OSError):  # the parent closed the pipe or died
            inbox.put(None)

    threading.Thread(target=read, name="requests", daemon=True).start()
    atexit.register(forward.flush_to_stderr)
    provider: FixedModel | ModelWatcher | None = None
    while True:
        request = inbox.get()
        if request is None:
            return
        reply: protocol.Reply
        try:
            if isinstance(request, Exception):
                raise request
            if isinstance(request, protocol.Close):
                return
            if provider is None:
                if settings.mode_module:  # a mode of the user's: its module registers it
                    importlib.import_module(settings.mode_module)
                provider = open_model(**model_args)
                # This process only scores: its long-lived objects (torch, the model) need not
                # be traced by every collection the per-record result dicts trigger.
                gc.freeze()
            if isinstance(request, protocol.Open):
                reply = protocol.Ready(provider.current().version)
            elif isinstance(request, protocol.Refresh):
                reply = protocol.Refreshed(*refresh(provider))
            elif isinstance(request, protocol.Score):
                sources = list(
                    map(
                        Source,
                        request.topics,
                        request.partitions,
                        request.offsets,
                        request.keys,
                        request.timestamps,
                    )
                )
                scored = score_batch(
                    provider, request.values, mode, passthrough, sources=sources, **options
                )
                reply = protocol.Scored(
                    keys=[m[0] for m in scored.outputs],
                    values=[m[1] for m in scored.outputs],
                    dead_keys=[m[0] for m in scored.letters],
                    dead_values=[m[1] for m in scored.letters],
                    reasons=scored.dead_reasons,
                    anomalies=scored.anomalies,
                    version=scored.version,
                    swaps=scored.swaps,
                    scores=scored.scores.tobytes(),
                    seconds=scored.seconds,
                    refusals=scored.refusals,
                )
            else:
                raise TypeError(f"unexpected request {type(request).__name__}")
        except NoModelError as err:
            reply = protocol.NoModel(str(err))
        except Exception as err:
            reply = protocol.Failed(f"{type(err).__name__}: {err}", traceback.format_exc())
        reply.logs = forward.take()
        try:
            protocol.write_frame(replies, reply)
        except (BrokenPipeError, OSError):
            return


class ScoringProcess(_Scorer):
    """Scores batches in a child process; see the module docstring.

    :meth:`submit` sends a batch and returns at once; :meth:`collect` returns the oldest
    submitted batch's :class:`ScoredBatch` (waiting for it). ``depth`` 1: the consumer keeps one
    batch in the child while it produces the previous one.

    Args:
        model_args: :func:`ae_pipeline.hot_reload.open_model` arguments (``version_dir`` or
            ``root``, ``interval_s``, ``device``, ``top_k``, ``torch_threads``...).
        mode: an output mode, by name or as an :class:`~ae_pipeline.serving.modes.OutputMode`
            (the child gets its name and the module that defines it, :func:`mode_module`, and
            imports that module first: a mode of your own must be registered when its module
            is imported).
        passthrough: record fields copied into each result.
    """

    depth = 1

    def __init__(self, model_args: dict[str, Any], **options: Any) -> None:
        super().__init__(model_args, **options)
        if self.mode_module == "__main__":
            raise ValueError(
                f"output mode {self.mode!r} is defined in __main__, which the scoring process "
                "cannot import: define it in a module that registers it, or score inline "
                "(scoring_process=False)"
            )
        self._process: subprocess.Popen | None = None
        self._submitted = 0
        self._headers: dict[tuple[str | None, str | None], list[tuple[str, bytes]]] = {}

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it starts)."""
        return self._process.pid if self._process is not None else None

    def _start(self) -> subprocess.Popen:
        # A fresh interpreter running this module (not multiprocessing's spawn, which would
        # re-import the caller's __main__ in the child).
        process = subprocess.Popen(
            [sys.executable, "-m", "ae_pipeline.scoring_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._process = process
        for stream in (process.stdin, process.stdout):
            protocol.widen_pipe(stream)
        settings = protocol.Settings(
            model=self.model_args,
            mode=self.mode,
            passthrough=list(self.passthrough),
            options=self._options(),
            log_level=logging.getLogger().getEffectiveLevel(),
            mode_module=self.mode_module,
        )
        self._request(settings)
        _log.info("scoring process started (pid %d)", process.pid)
        return process

    def _request(self, request: protocol.Request) -> None:
        process = self._process or self._start()
        try:
            protocol.write_frame(process.stdin, request)
        except (BrokenPipeError, OSError, ValueError) as err:
            raise ScoringProcessError(self._died(f"cannot send to it ({err})")) from None

    def _reply(self, expected: type[protocol.Reply]) -> Any:
        assert self._process is not None
        try:
            reply = protocol.read_frame(self._process.stdout, protocol.decode_reply)
        except (EOFError, OSError, ValueError):
            raise ScoringProcessError(self._died("it closed the pipe")) from None
        except protocol.DecodeError as err:
            raise ScoringProcessError(f"the scoring process sent a bad reply: {err}") from None
        _emit_child_logs(reply.logs, self._process.pid)
        if isinstance(reply, protocol.NoModel):
            raise NoModelError(reply.message)
        if isinstance(reply, protocol.Failed):
            _log.error("scoring process failed:\n%s", reply.traceback)
            raise ScoringProcessError(f"the scoring process failed: {reply.message}")
        if not isinstance(reply, expected):
            raise ScoringProcessError(
                f"the scoring process answered {type(reply).__name__}, expected {expected.__name__}"
            )
        return reply

    def _died(self, what: str) -> str:
        assert self._process is not None
        try:
            code = self._process.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        return f"the scoring process exited unexpectedly (exit code {code}): {what}"

    def open(self) -> str | None:
        """Starts the child (once) and has it load the model; returns the version.

        Raises:
            NoModelError: nothing is published under the model root yet (ask again later).
            ScoringProcessError: the child failed (e.g. the model is corrupt) or died.
        """
        self._request(protocol.Open())
        return self._reply(protocol.Ready).version

    def refresh(self) -> tuple[str | None, int]:
        """Has the child check for a new model version (see :func:`refresh`); only between
        batches (none submitted and not collected). Returns ``(version, swaps)``."""
        if self._submitted:
            raise RuntimeError("refresh() with batches in the scoring process")
        self._request(protocol.Refresh())
        reply = self._reply(protocol.Refreshed)
        return reply.version, reply.swaps

    def submit(self, records: Sequence[Any]) -> None:
        """Sends a batch of Kafka records (``KafkaRecord`` or anything with its attributes)."""
        self._request(
            protocol.Score(
                values=[r.value for r in records],
                topics=[r.topic for r in records],
                partitions=[r.partition for r in records],
                offsets=[r.offset for r in records],
                keys=[r.key for r in records],
                timestamps=[r.timestamp_ms for r in records],
            )
        )
        self._submitted += 1

    @property
    def pending(self) -> int:
        return self._submitted

    def collect(self) -> ScoredBatch:
        """The oldest submitted batch's outputs (waits for the child)."""
        if not self._submitted:
            raise RuntimeError("collect() without a submitted batch")
        self._submitted -= 1
        reply: protocol.Scored = self._reply(protocol.Scored)
        version = reply.version
        headers = self._header(version, None)
        values = reply.values
        outputs = list(zip(reply.keys, values, repeat(headers, len(values)), strict=True))
        letters = [
            (k, v, self._header(version, reason))
            for k, v, reason in zip(reply.dead_keys, reply.dead_values, reply.reasons, strict=True)
        ]
        return ScoredBatch(
            outputs,
            letters,
            reply.reasons,
            reply.anomalies,
            version,
            reply.swaps,
            np.frombuffer(reply.scores, dtype=np.float64),
            reply.seconds,
            reply.refusals,
        )

    def _header(self, version: str | None, reason: str | None) -> list[tuple[str, bytes]]:
        """:func:`~ae_pipeline.serving.message_headers`, one shared list per version and
        reason (as :func:`~ae_pipeline.serving.to_messages` shares them)."""
        headers = self._headers.get((version, reason))
        if headers is None:
            headers = self._headers[(version, reason)] = message_headers(version or "", reason)
        return headers

    def close(self) -> None:
        """Stops the child (after the batch it is scoring) and waits for it."""
        process, self._process = self._process, None
        self._submitted = 0
        if process is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            protocol.write_frame(process.stdin, protocol.Close())
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


__all__ = [
    "InlineScorer",
    "ScoredBatch",
    "ScoringProcess",
    "ScoringProcessError",
    "mode_module",
    "score_batch",
]

if __name__ == "__main__":
    _child_main()

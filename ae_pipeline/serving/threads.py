"""Torch's CPU threads per scoring thread (:func:`set_torch_threads`)."""

from __future__ import annotations

import logging
import threading

import torch

_log = logging.getLogger(__name__)


def set_torch_threads(threads: int | None) -> None:
    """Sets torch's intra-op CPU thread count (``torch.set_num_threads``) from the calling thread.

    Torch defaults to one thread per core. A Beam worker or a consumer host scores many small
    batches, often beside other busy processes; there, threads that wait on each other cost more
    than they give, and 1-2 threads per process usually score faster (``benchmarks/
    bench_streaming.py`` measures it). ``None`` or 0 keeps torch's default.

    Part of what ``torch.set_num_threads`` sets belongs to the calling thread (OpenMP's and
    MKL's per-thread settings), and Beam's SDK harness runs bundles on a pool of threads; so
    :class:`ServingModel` makes the call again, once, in each thread that scores with it
    (:func:`_torch_threads_here`).

    Raises:
        ValueError: a negative count.
    """
    if threads is None or threads == 0:
        return
    if threads < 0:
        raise ValueError(f"torch_threads must be >= 0 (0: torch's default), got {threads}")
    if torch.get_num_threads() != threads:
        _log.info("torch intra-op threads: %d -> %d", torch.get_num_threads(), threads)
    torch.set_num_threads(threads)
    _THREAD.torch_threads = threads


_THREAD = threading.local()  # per thread: the torch_threads set in it


def _torch_threads_here(threads: int | None) -> None:
    """Calls ``torch.set_num_threads(threads)`` once in each thread that is about to score.

    Measured on Prism with LOOPBACK workers (2 cores, ``benchmarks/bench_streaming.py``'s
    ``ae_batched`` pipeline, 200,000 records): with the call made only in the main thread, the
    bundle thread scored them in 3.2-3.8 s; with the call made in the bundle thread, 1.2-1.4 s
    (torch's default, 2 threads: 1.4-1.8 s)."""
    if threads and getattr(_THREAD, "torch_threads", None) != threads:
        torch.set_num_threads(threads)
        _THREAD.torch_threads = threads

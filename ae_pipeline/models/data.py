"""Batch sources: what the trainer iterates over, from arrays or from streams of chunks.

Training data can be

* an in-memory array (``N x D`` or ``N x C x H x W``; numpy or torch), optionally with labels;
* a callable that returns a fresh iterable of chunks every time it is called (one call per
  epoch): data larger than memory, e.g. Parquet row groups read one after another;
* a re-iterable (a list of chunks, or any object whose ``__iter__`` starts over);
* a one-shot iterator (a generator): usable for a single epoch only.

A chunk is an array of rows or an ``(x, y)`` tuple; chunks of any size are re-cut into
batches of the requested size. A top-level 2-tuple of arrays always means ``(x, labels)``: pass
several chunks as a list (or a callable), not a tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

Batch = tuple[torch.Tensor, "torch.Tensor | None"]


def to_float_tensor(x: Any) -> torch.Tensor:
    """Returns ``x`` as a float32 CPU tensor, sharing memory with a float32 numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().float()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def to_label_tensor(y: Any) -> torch.Tensor:
    """Returns integer class labels as an int64 tensor."""
    if isinstance(y, torch.Tensor):
        return y.detach().long()
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


class BatchSource(Protocol):
    """Something the trainer can draw batches from, epoch after epoch."""

    one_shot: bool

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Yields ``(x, y)`` batches for one epoch (``y`` is ``None`` without labels)."""
        ...


class ArraySource:
    """Batches from in-memory arrays, reshuffled every epoch.

    Args:
        x: inputs, ``N x ...``.
        y: optional labels, length ``N``.
    """

    one_shot = False

    def __init__(self, x: Any, y: Any = None) -> None:
        self.x = to_float_tensor(x)
        self.y = None if y is None else to_label_tensor(y)
        if self.x.ndim < 2:
            raise ValueError(
                f"inputs must be N x D (or N x C x H x W), got shape {tuple(self.x.shape)}"
            )
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        n = len(self.x)
        if shuffle:
            order = torch.randperm(n, generator=generator)
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                yield self.x[idx], None if self.y is None else self.y[idx]
        else:
            for i in range(0, n, batch_size):
                yield (
                    self.x[i : i + batch_size],
                    None if self.y is None else self.y[i : i + batch_size],
                )

    def split(
        self, fraction: float, generator: torch.Generator | None = None
    ) -> tuple[ArraySource, ArraySource]:
        """Returns ``(train, holdout)`` with a random ``fraction`` of the rows held out."""
        n = len(self.x)
        n_val = max(1, round(n * fraction))
        if n_val >= n:
            raise ValueError(f"validation_fraction={fraction} leaves no training rows out of {n}")
        order = torch.randperm(n, generator=generator)
        tr, va = order[n_val:], order[:n_val]
        pick = (lambda idx: None) if self.y is None else (lambda idx: self.y[idx])  # type: ignore[index]
        return ArraySource(self.x[tr], pick(tr)), ArraySource(self.x[va], pick(va))


def _split_chunk(chunk: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(chunk, (tuple, list)) and len(chunk) == 2:
        return to_float_tensor(chunk[0]), to_label_tensor(chunk[1])
    return to_float_tensor(chunk), None


class StreamSource:
    """Batches re-cut from a stream of chunks.

    Args:
        factory: returns a fresh iterable of chunks; called once per epoch.
        one_shot: the factory returns the same iterator every time, so only one epoch works.
    """

    def __init__(self, factory: Callable[[], Iterable[Any]], *, one_shot: bool = False) -> None:
        self.factory = factory
        self.one_shot = one_shot
        self._used = False

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        if self.one_shot and self._used:
            raise ValueError(
                "the data is a one-shot iterator and was consumed by the first epoch; pass a "
                "callable that returns a fresh iterator per epoch"
            )
        self._used = True
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor | None] = []
        pending = 0
        for chunk in self.factory():
            x, y = _split_chunk(chunk)
            if len(x) == 0:
                continue
            if shuffle and len(x) > 1:
                perm = torch.randperm(len(x), generator=generator)
                x, y = x[perm], None if y is None else y[perm]
            xs.append(x)
            ys.append(y)
            pending += len(x)
            if pending >= batch_size:
                x_all, y_all = _concat(xs, ys)
                full = pending - pending % batch_size
                for i in range(0, full, batch_size):
                    yield (
                        x_all[i : i + batch_size],
                        None if y_all is None else y_all[i : i + batch_size],
                    )
                xs = [x_all[full:]]
                ys = [None if y_all is None else y_all[full:]]
                pending -= full
        if pending:
            yield _concat(xs, ys)


def _concat(xs: list[torch.Tensor], ys: list[torch.Tensor | None]) -> Batch:
    have = [y is not None for y in ys]
    if any(have) and not all(have):
        raise ValueError("some chunks carry labels and some do not")
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    if not all(have):
        return x, None
    y = ys[0] if len(ys) == 1 else torch.cat(ys)  # type: ignore[arg-type]
    return x, y


def as_source(data: Any, labels: Any = None) -> BatchSource:
    """Wraps training or validation data in the matching :class:`BatchSource`.

    Args:
        data: an array, an ``(x, y)`` tuple of arrays, a callable returning an iterable of
            chunks, a re-iterable of chunks, or a one-shot iterator of chunks.
        labels: labels of an in-memory ``data`` array.

    Raises:
        TypeError: for anything else.
        ValueError: for labels with a streamed source.
    """
    if isinstance(data, (ArraySource, StreamSource)):
        return data
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return ArraySource(data, labels)
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and isinstance(data[0], (np.ndarray, torch.Tensor))
    ):
        return ArraySource(data[0], data[1] if labels is None else labels)
    if labels is not None:
        raise ValueError("labels=... is for in-memory arrays; a stream yields (x, y) chunks")
    if callable(data):
        return StreamSource(data)
    if isinstance(data, Iterable):
        if iter(data) is data:
            return StreamSource(lambda: data, one_shot=True)
        return StreamSource(lambda: iter(data))
    raise TypeError(
        f"cannot train on {type(data).__name__}: pass an array, a callable or an iterable"
    )

r"""What the consumer and its scoring child process say to each other: typed messages.

Requests (parent to child) and replies (child to parent) are ``msgspec`` structs, sent as
length-prefixed MessagePack frames over the child's stdin and stdout. On the wire a message is
an array, its tag first (``["score", values, topics, ...]``): compact and fast, but each side
reads named, typed fields, and a frame that is not one of the messages below is refused when it
is decoded, not misread by position. Nothing is pickled.

Example:
    >>> frame = encode(Refreshed(version="v1", swaps=2))
    >>> frame
    b'\x94\xa9refreshed\xa2v1\x02\x90'
    >>> decode_reply(frame)
    Refreshed(version='v1', swaps=2, logs=[])
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any, BinaryIO

import msgspec

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

LogRow = tuple[int, str, str]
"""A log record of the child: ``(level, logger name, message)``."""


class _Message(msgspec.Struct, array_like=True, tag=True):
    """A message on the wire: an array, its tag (the class's ``tag``) first."""


# ---------------------------------------------------------------- requests (parent -> child)


class Settings(_Message, tag="settings"):
    """The first frame: how to open the model and score (``open_model`` arguments, the mode,
    passthrough fields, ``score_messages`` options), the parent's log level, and the module that
    defines the mode (empty for a built-in one): the child imports it before it looks the mode
    up by name, so a mode registered when its module is imported serves there too."""

    model: dict[str, Any]
    mode: str
    passthrough: list[str]
    options: dict[str, Any]
    log_level: int
    mode_module: str = ""


class Open(_Message, tag="open"):
    """Load the model (once); the reply is :class:`Ready`."""


class Refresh(_Message, tag="refresh"):
    """Check for a new model version now; the reply is :class:`Refreshed`."""


class Close(_Message, tag="close"):
    """Exit after the batch in hand (no reply)."""


class Score(_Message, tag="score"):
    """One batch of Kafka records, column by column; the reply is :class:`Scored`."""

    values: list[Any]
    topics: list[str | None]
    partitions: list[int | None]
    offsets: list[int | None]
    keys: list[Any]
    timestamps: list[int | None]


Request = Settings | Open | Refresh | Close | Score

# ------------------------------------------------------------------ replies (child -> parent)


class Ready(_Message, tag="ready"):
    """The model is loaded: the version that serves."""

    version: str | None
    logs: list[LogRow] = []


class Refreshed(_Message, tag="refreshed"):
    """After :class:`Refresh`: the version that serves and how many times it was (re)loaded."""

    version: str | None
    swaps: int
    logs: list[LogRow] = []


class Scored(_Message, tag="scored"):
    """A batch's messages: result keys and values, dead-letter keys, values and reasons (the
    headers are rebuilt from the version and reasons on the other side), the anomalies, the
    version that scored it, the provider's swaps so far, the results' scores, the seconds the
    scoring took and the versions the provider refused so far."""

    keys: list[Any]
    values: list[bytes]
    dead_keys: list[Any]
    dead_values: list[bytes]
    reasons: list[str]
    anomalies: int
    version: str | None
    swaps: int
    scores: bytes = b""  # float64, native order (the same machine)
    seconds: float | None = None
    refusals: dict[str, int] = {}
    logs: list[LogRow] = []


class NoModel(_Message, tag="no_model"):
    """No version can serve yet (ask again later)."""

    message: str
    logs: list[LogRow] = []


class Failed(_Message, tag="failed"):
    """The request failed in the child: the error in one line and its traceback."""

    message: str
    traceback: str = ""
    logs: list[LogRow] = []


Reply = Ready | Refreshed | Scored | NoModel | Failed

# ------------------------------------------------------------------------------ frames

encode = msgspec.msgpack.Encoder().encode
_LENGTH = struct.Struct("!I")
_requests = msgspec.msgpack.Decoder(Request)
_replies = msgspec.msgpack.Decoder(Reply)
decode_request = _requests.decode
decode_reply = _replies.decode

DecodeError = msgspec.MsgspecError
"""Raised by :func:`read_frame` for bytes that are not one of the expected messages."""


def write_frame(stream: BinaryIO, message: _Message) -> None:
    """Writes one message as a length-prefixed frame and flushes."""
    data = encode(message)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def read_frame(stream: BinaryIO, decode: Any) -> Any:
    """The next message, decoded with ``decode`` (:func:`decode_request` or
    :func:`decode_reply`).

    Raises:
        EOFError: the other end closed the pipe.
        DecodeError: the frame is not one of the expected messages.
    """
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("pipe closed")
    size = _LENGTH.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("pipe closed in a frame")
    return decode(data)


def widen_pipe(stream: Any, size: int = 1 << 20) -> None:
    """Raises a pipe's capacity (Linux, up to ``/proc/sys/fs/pipe-max-size``; 1 MiB by
    default) so that a batch's frame is written in one go: through a 64 KiB pipe, each chunk
    waits for the reader's thread to get the interpreter lock (milliseconds per chunk)."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if setpipe is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), setpipe, size)


__all__ = [
    "Close",
    "DecodeError",
    "Failed",
    "LogRow",
    "NoModel",
    "Open",
    "Ready",
    "Refresh",
    "Refreshed",
    "Reply",
    "Request",
    "Score",
    "Scored",
    "Settings",
    "decode_reply",
    "decode_request",
    "encode",
    "read_frame",
    "widen_pipe",
    "write_frame",
]

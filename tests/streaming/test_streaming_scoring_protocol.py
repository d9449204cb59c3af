"""The scoring child process's protocol: typed messages in frames, a frame that is not one of
them refused by name, not misread by position."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from ae_pipeline import scoring_protocol as protocol

SCORE = protocol.Score(
    values=[b'{"a": 1}', None],
    topics=["t", "t"],
    partitions=[0, 1],
    offsets=[7, 8],
    keys=[b"k", None],
    timestamps=[1_700_000_000_000, None],
)
REPLIES = [
    protocol.Ready("v1"),
    protocol.Refreshed("v2", 3, logs=[(20, "ae_pipeline.hot_reload", "swapped")]),
    protocol.Scored([b"k"], [b"{}"], [None], [b"{}"], ["bad_json"], 0, "v2", 3),
    protocol.NoModel("nothing published"),
    protocol.Failed("ValueError: x", "Traceback ..."),
]


@pytest.mark.parametrize(
    "message",
    [
        protocol.Settings({"version_dir": "/m"}, "flag", ["site"], {"message_key": "input"}, 20),
        protocol.Settings({"root": "/m"}, "max_error", [], {}, 20, mode_module="my.modes"),
        protocol.Open(),
        protocol.Refresh(),
        protocol.Close(),
        SCORE,
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_request_goes_through_a_frame_unchanged(message):
    stream = io.BytesIO()
    protocol.write_frame(stream, message)
    stream.seek(0)
    assert protocol.read_frame(stream, protocol.decode_request) == message
    with pytest.raises(EOFError):
        protocol.read_frame(stream, protocol.decode_request)


@pytest.mark.parametrize("message", REPLIES, ids=lambda m: type(m).__name__)
def test_every_reply_goes_through_a_frame_unchanged(message):
    stream = io.BytesIO()
    protocol.write_frame(stream, message)
    stream.seek(0)
    assert protocol.read_frame(stream, protocol.decode_reply) == message


def test_a_reply_is_not_a_request_and_a_wrong_field_is_named():
    with pytest.raises(protocol.DecodeError, match="Invalid value 'ready'"):
        protocol.decode_request(protocol.encode(protocol.Ready("v1")))
    bad = protocol.encode(["score", [b"x"], ["t"], ["zero"], [1], [None], [None]])
    with pytest.raises(protocol.DecodeError, match=r"Expected `int \| null`, got `str`"):
        protocol.decode_request(bad)


def test_a_truncated_frame_is_the_end_of_the_pipe():
    stream = io.BytesIO()
    protocol.write_frame(stream, SCORE)
    data = stream.getvalue()
    with pytest.raises(EOFError, match="in a frame"):
        protocol.read_frame(io.BytesIO(data[:-3]), protocol.decode_request)


def test_the_child_answers_a_frame_it_cannot_read_with_a_failure(version_dir):
    """A garbled request costs its own reply (``Failed``), in order; the child goes on."""
    child = subprocess.Popen(
        [sys.executable, "-m", "ae_pipeline.scoring_process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        settings = protocol.Settings(
            {"version_dir": version_dir, "device": "cpu"}, "flag", [], {}, 30
        )
        protocol.write_frame(child.stdin, settings)
        garbage = protocol.encode(["score", "not columns"])
        child.stdin.write(protocol._LENGTH.pack(len(garbage)) + garbage)
        protocol.write_frame(child.stdin, protocol.Open())
        child.stdin.flush()
        failed = protocol.read_frame(child.stdout, protocol.decode_reply)
        assert isinstance(failed, protocol.Failed) and "Expected `array`" in failed.message
        ready = protocol.read_frame(child.stdout, protocol.decode_reply)
        assert isinstance(ready, protocol.Ready) and ready.version
        protocol.write_frame(child.stdin, protocol.Close())
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()

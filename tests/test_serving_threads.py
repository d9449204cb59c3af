"""``torch_threads``: the serving path's control of torch's CPU threads."""

from __future__ import annotations

import pytest
import torch

from ae_pipeline.serving import set_torch_threads
from pipelines import consume, stream


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_sets_torch_threads(restore_threads):
    set_torch_threads(1)
    assert torch.get_num_threads() == 1
    set_torch_threads(2)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("value", [None, 0])
def test_none_and_zero_keep_the_default(restore_threads, value):
    torch.set_num_threads(2)
    set_torch_threads(value)
    assert torch.get_num_threads() == 2


def test_negative_is_refused():
    with pytest.raises(ValueError, match="torch_threads must be >= 0"):
        set_torch_threads(-1)


def test_jobs_take_the_option():
    opts = stream.StreamOptions(["--torch_threads=1"])
    assert opts.torch_threads == 1
    args = consume.build_parser().parse_args(
        [
            "--bootstrap_servers=x:1",
            "--group_id=g",
            "--input_topic=i",
            "--output_topic=o",
            "--dead_letter_topic=d",
            "--model_root=/tmp/m",
            "--torch_threads=2",
        ]
    )
    assert args.torch_threads == 2

"""The jobs' Beam options can coexist: Beam parses every PipelineOptions subclass together."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import pipelines.encode
import pipelines.stream
import pipelines.train
from ae_pipeline.cli import COMMANDS, main


def test_all_option_classes_parse_together_without_conflicts():
    options = PipelineOptions(["--model_root=/m", "--mode=flag", "--epochs=3", "--output=/o"])
    assert options.get_all_options()["model_root"] == "/m"  # raises on a conflicting flag
    assert options.view_as(pipelines.train.TrainOptions).epochs == 3
    assert options.view_as(pipelines.stream.StreamOptions).mode == "flag"
    assert options.view_as(pipelines.encode.EncodeOptions).output == "/o"


FLAG_OF = {
    "train": "--threshold_method",
    "encode": "--with_errors",
    "stream": "--dead_letter_topic",
    "consume": "--dead_letter_topic",
    "demo": "--records",
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_lists_its_own_options_in_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert FLAG_OF[command] in capsys.readouterr().out


def test_missing_flag_is_named():
    with pytest.raises(ValueError, match="missing --input"):
        pipelines.train.run(["--model_root=/tmp/x"])

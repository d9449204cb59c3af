"""The jobs' Beam options can coexist: Beam parses every PipelineOptions subclass together."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from apache_beam.io.filesystem import FileSystem
from apache_beam.options.pipeline_options import PipelineOptions

import pipelines.consume
import pipelines.encode
import pipelines.score
import pipelines.stream
import pipelines.train
from ae_pipeline.beam.options import add_switch, parse_bool, read_json_config
from ae_pipeline.cli import COMMANDS, main


def test_all_option_classes_parse_together_without_conflicts():
    options = PipelineOptions(["--model_root=/m", "--mode=flag", "--epochs=3", "--output=/o"])
    assert options.get_all_options()["model_root"] == "/m"  # raises on a conflicting flag
    assert options.view_as(pipelines.train.TrainOptions).epochs == 3
    assert options.view_as(pipelines.stream.StreamOptions).mode == "flag"
    assert options.view_as(pipelines.encode.EncodeOptions).output == "/o"


def test_runners_see_every_job_flag_as_known(caplog):
    """Portable runners (Prism, Flink) list the options with ``retain_unknown_options``, which
    only asks the direct subclasses of PipelineOptions: each job's options class is one, so
    its flags are neither reported as unknown nor sent as untyped strings."""
    argv = [
        "--model_root=/m",
        "--mode=flag",
        "--bootstrap_servers=h:9092",
        "--bounded",
        "--epochs=3",
        "--hidden_dims=8",
        "--with_errors",
        "--output=/o",
        "--input=/i",
    ]
    for options_class in (
        pipelines.stream.StreamOptions,
        pipelines.train.TrainOptions,
        pipelines.encode.EncodeOptions,
        pipelines.score.ScoreOptions,
    ):
        assert PipelineOptions in options_class.__bases__, options_class
    with caplog.at_level("WARNING", logger="apache_beam.options.pipeline_options"):
        found = PipelineOptions(argv).get_all_options(retain_unknown_options=True)
    assert not [r for r in caplog.records if "Unknown pipeline options" in r.getMessage()]
    assert found["epochs"] == 3 and found["bounded"] is True and found["mode"] == "flag"


FLAG_OF = {
    "train": "--threshold_method",
    "encode": "--with_errors",
    "stream": "--dead_letter_topic",
    "consume": "--dead_letter_topic",
    "demo": "--records",
    "score": "--label_column",
    "retrain-on-drift": "--cooldown_s",
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


# --- on/off flags: bare --flag, --flag=true, --flag=false (Dataflow Flex passes --flag=value) ---


@pytest.mark.parametrize(
    ("word", "value"),
    [
        *[(w, True) for w in ("true", "TRUE", "True", "yes", "Y", "on", "1", " true ")],
        *[(w, False) for w in ("false", "FALSE", "No", "n", "off", "0")],
    ],
)
def test_parse_bool_takes_the_usual_words_in_any_case(word, value):
    assert parse_bool(word) is value


@pytest.mark.parametrize("word", ["", "maybe", "2", "truee", "t rue"])
def test_parse_bool_refuses_other_words_naming_them(word):
    with pytest.raises(argparse.ArgumentTypeError, match=f"expected true or false.*{word!r}"):
        parse_bool(word)


def _plain_parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_switch(parser, "--on", **kwargs)
    parser.add_argument("--other", default=None)
    return parser


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], False),
        (["--on"], True),
        (["--on=true"], True),
        (["--on=false"], False),
        (["--on=No"], False),
        (["--on", "--other", "x"], True),  # a bare switch does not take the next option
        (["--other", "x", "--on"], True),
        (["--on=true", "--on=false"], False),  # the last one wins, as for any option
    ],
)
def test_switch_on_a_plain_argparse_parser(argv, expected):
    assert _plain_parser().parse_args(argv).on is expected


def test_switch_default_true_can_be_turned_off():
    parser = _plain_parser(default=True)
    assert parser.parse_args([]).on is True
    assert parser.parse_args(["--on=false"]).on is False
    assert parser.parse_args(["--on"]).on is True


def test_switch_with_an_auto_default_takes_auto_as_none():
    parser = _plain_parser(default=None)
    assert parser.parse_args([]).on is None
    assert parser.parse_args(["--on=auto"]).on is None
    assert parser.parse_args(["--on=AUTO", "--on"]).on is True
    assert parser.parse_args(["--on=false"]).on is False
    assert "(default auto; --on alone: true)" in parser.format_help()
    with pytest.raises(argparse.ArgumentError, match="--on: expected true, false or auto"):
        parser.parse_args(["--on=sure"])
    # consume's --scoring_process is such a switch: auto unless told.
    consume = pipelines.consume.build_parser()
    argv = ["--bootstrap_servers=h:1", "--group_id=g", "--input_topic=i", "--output_topic=o"]
    argv += ["--dead_letter_topic=d", "--model_root=/m"]
    assert consume.parse_args(argv).scoring_process is None
    assert consume.parse_args([*argv, "--scoring_process=false"]).scoring_process is False
    assert consume.parse_args([*argv, "--scoring_process"]).scoring_process is True


def test_switch_with_a_bad_value_is_a_clear_error(capsys):
    parser = argparse.ArgumentParser(prog="t")
    add_switch(parser.add_argument_group("g"), "--on")
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--on=sure"])
    assert done.value.code == 2
    assert "argument --on: expected true or false" in capsys.readouterr().err
    with pytest.raises(ValueError, match="long option"):
        add_switch(parser, "on")


SWITCHES = {
    pipelines.train.TrainOptions: {"--warm_start": False, "--progress": True},
    pipelines.encode.EncodeOptions: {"--with_errors": False},
    pipelines.stream.StreamOptions: {"--bounded": False, "--drift": False},
}


@pytest.mark.parametrize(
    ("options_class", "flag"),
    [(cls, flag) for cls, flags in SWITCHES.items() for flag in flags],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_every_jobs_switch_takes_all_three_spellings(options_class, flag):
    dest = flag[2:]

    def parsed(*argv):
        return getattr(PipelineOptions(list(argv)).view_as(options_class), dest)

    assert parsed() is SWITCHES[options_class][flag]
    assert parsed(flag) is True
    assert parsed(f"{flag}=true") is True
    assert parsed(f"{flag}=True") is True
    assert parsed(f"{flag}=false") is False
    assert parsed(f"{flag}=FALSE") is False
    assert parsed(f"{flag}=0") is False
    assert parsed(flag, "--model_root=/m") is True  # followed by another option


def test_a_jobs_switch_with_a_bad_value_stops_with_the_flag_named(capsys):
    with pytest.raises(SystemExit):
        _ = PipelineOptions(["--warm_start=maybe"]).view_as(pipelines.train.TrainOptions).warm_start
    assert "argument --warm_start: expected true or false" in capsys.readouterr().err


def test_every_on_off_flag_of_the_jobs_is_a_switch():
    """No job keeps a store_true / store_false option (it would refuse --flag=true), and the
    table above lists every switch of the Beam jobs."""
    for cls in SWITCHES:
        parser = argparse.ArgumentParser(add_help=False)
        for c in reversed(cls.mro()):
            if "_add_argparse_args" in c.__dict__ and c is not PipelineOptions:
                c._add_argparse_args(parser)
        stored = [a for a in parser._actions if isinstance(a.const, bool) or a.nargs == 0]
        assert {s for a in stored for s in a.option_strings} == set(SWITCHES[cls]), cls
        assert all(a.type is parse_bool for a in stored), cls
    consume = pipelines.consume.build_parser()
    assert not [
        a for a in consume._actions if a.nargs == 0 and a.option_strings != ["-h", "--help"]
    ]


def test_switches_survive_a_round_trip_through_pipeline_options_dicts():
    # Beam turns {flag: True} into a bare --flag and drops {flag: False}.
    on = PipelineOptions.from_dictionary({"bounded": True})
    off = PipelineOptions.from_dictionary({"bounded": False})
    assert on.view_as(pipelines.stream.StreamOptions).bounded is True
    assert off.view_as(pipelines.stream.StreamOptions).bounded is False


# --- --kafka_config read through Beam's FileSystems ---


class _MemoryFileSystem(FileSystem):
    """A Beam filesystem for the ``aetestmem://`` scheme (Beam 2.62 registers no in-memory
    filesystem, and gs:// needs the GCP extras and the network): subclassing FileSystem is how
    every Beam filesystem registers, so ``FileSystems.open`` routes this scheme here."""

    FILES: dict[str, bytes] = {}
    OPENED: list[str] = []

    @classmethod
    def scheme(cls):
        return "aetestmem"

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        self.OPENED.append(path)
        if path not in self.FILES:
            raise FileNotFoundError(f"no such object: {path}")
        return io.BytesIO(self.FILES[path])

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError

    join = split = mkdirs = has_dirs = _list = create = copy = rename = _unsupported
    exists = size = last_updated = metadata = delete = checksum = _unsupported


SECRET = "pw-never-in-messages-7f3a"


def test_kafka_config_from_a_local_file(tmp_path):
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"security.protocol": "SASL_PLAINTEXT", "sasl.password": SECRET}))
    assert read_json_config(str(path))["sasl.password"] == SECRET


def test_kafka_config_from_a_non_local_beam_filesystem():
    _MemoryFileSystem.FILES["aetestmem://bucket/secure/kafka.json"] = json.dumps(
        {"sasl.password": SECRET}
    ).encode()
    _MemoryFileSystem.OPENED.clear()
    config = read_json_config("aetestmem://bucket/secure/kafka.json")
    assert config == {"sasl.password": SECRET}
    assert _MemoryFileSystem.OPENED == ["aetestmem://bucket/secure/kafka.json"]


def test_both_kafka_jobs_read_kafka_config_through_beam_filesystems(monkeypatch):
    path = "aetestmem://bucket/jobs/kafka.json"
    _MemoryFileSystem.FILES[path] = json.dumps({"sasl.password": SECRET, "group.id": "x"}).encode()
    opts = PipelineOptions(
        [f"--kafka_config={path}", "--bootstrap_servers=h:1", "--group_id=g"]
    ).view_as(pipelines.stream.StreamOptions)
    config = pipelines.stream._kafka_config(opts)
    assert config == {"sasl.password": SECRET, "bootstrap.servers": "h:1", "group.id": "g"}

    seen = {}

    class Consumer:
        def __init__(self, config, **kwargs):
            seen.update(config)

        def install_signal_handlers(self):
            pass

        def run(self, **kwargs):
            raise SystemExit(0)

        def close(self):
            pass

    monkeypatch.setattr(pipelines.consume, "ScoringConsumer", Consumer)
    argv = ["--bootstrap_servers=h:1", "--group_id=g", "--input_topic=i", "--output_topic=o"]
    argv += ["--dead_letter_topic=d", "--model_root=/m", f"--kafka_config={path}"]
    with pytest.raises(SystemExit):
        pipelines.consume.main(argv)
    assert seen == {"sasl.password": SECRET, "bootstrap.servers": "h:1", "group.id": "g"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f'{{"sasl.password": "{SECRET}",}}', "not a JSON file at line 1"),
        (f'["{SECRET}"]', "expected a JSON object, got list"),
        (b"\xff\xfe" + SECRET.encode(), "not a JSON file"),
    ],
)
def test_bad_kafka_config_errors_name_the_path_not_the_content(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=expected) as err:
        read_json_config(str(path))
    text = str(err.value)
    assert text.startswith(f"--kafka_config {path}: ") and SECRET not in text
    # No chained exception (a JSONDecodeError keeps the whole document) shows in a traceback.
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_unreadable_or_unknown_scheme_kafka_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"--kafka_config .*missing\.json: cannot read it"):
        read_json_config(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"aetestmem://bucket/none\.json: cannot read it"):
        read_json_config("aetestmem://bucket/none.json")
    with pytest.raises(ValueError, match=r"nosuchfs://b/k\.json: no Beam filesystem"):
        read_json_config("nosuchfs://b/k.json")


def test_streaming_jobs_are_watched_longer_than_beams_60s_default():
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

    from ae_pipeline.beam.compat import default_job_server_timeout_s
    from ae_pipeline.beam.options import (
        STREAMING_JOB_SERVER_TIMEOUT_S,
        keep_watching_streaming_jobs,
    )
    from ae_pipeline.local.runners import runner_args

    beams_default = PortableOptions([]).job_server_timeout
    assert default_job_server_timeout_s() == beams_default
    streaming = PipelineOptions(["--streaming"])
    keep_watching_streaming_jobs(streaming)
    assert streaming.view_as(PortableOptions).job_server_timeout == STREAMING_JOB_SERVER_TIMEOUT_S
    batch = PipelineOptions([])
    keep_watching_streaming_jobs(batch)
    assert batch.view_as(PortableOptions).job_server_timeout == default_job_server_timeout_s()
    # Beam's own default, whatever this Beam's is (60 s up to some release, 300 s in 2.77).
    streaming = PipelineOptions(["--streaming", f"--job_server_timeout={beams_default}"])
    keep_watching_streaming_jobs(streaming)
    assert streaming.view_as(PortableOptions).job_server_timeout == STREAMING_JOB_SERVER_TIMEOUT_S
    chosen = PipelineOptions(["--streaming", "--job_server_timeout=120"])
    keep_watching_streaming_jobs(chosen)
    assert chosen.view_as(PortableOptions).job_server_timeout == 120
    args = PipelineOptions(runner_args("prism", streaming=True))
    assert args.view_as(PortableOptions).job_server_timeout == STREAMING_JOB_SERVER_TIMEOUT_S

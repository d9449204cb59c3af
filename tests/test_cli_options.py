"""The command line answers a mistake with one line and exit status 2, before any work starts.

Each case runs ``ae-pipeline COMMAND ...`` in-process through :func:`ae_pipeline.cli.main` and
checks the exit status, that stderr is exactly one line naming the option (and what to change),
and that nothing was written. Nothing here builds a pipeline.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

import pipelines.encode
import pipelines.stream  # registers stream's options: train must still refuse them
import pipelines.train
from ae_pipeline.beam.options import (
    StrictArgumentParser,
    UsageError,
    configure_logging,
    given_options,
    parse_options,
)
from ae_pipeline.calibration import DEFAULT_PARAMS, calibrate, check_threshold
from ae_pipeline.cli import main


@pytest.fixture
def data(tmp_path):
    """A small Parquet file: 12 numeric features, an id and a timestamp column."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    cols = {f"f{i}": x[:, i] for i in range(12)}
    cols["id"] = np.arange(300)
    cols["ts"] = np.arange(300) * 1.0
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table(cols), path)
    return path


def _train_args(tmp_path, data, *extra):
    return [
        "train",
        f"--input={data}",
        f"--model_root={tmp_path / 'models'}",
        "--key_column=id",
        *extra,
    ]


def _one_line_error(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


# --- unknown options: refused, naming the closest valid one --------------------------------


@pytest.mark.parametrize(
    ("argv", "wrong", "right"),
    [
        (["--epohcs", "2"], "--epohcs", "--epochs"),
        (["--epohcs=2"], "--epohcs", "--epochs"),
        (["--epoch", "2"], "--epoch", "--epochs"),  # no abbreviations
        (["--hiden_dims=8"], "--hiden_dims", "--hidden_dims"),
        (["--treshold_method=fpr"], "--treshold_method", "--threshold_method"),
        (["--mode=flag"], "--mode", None),  # stream's option is not train's
    ],
)
def test_train_refuses_an_unknown_option_naming_the_closest(
    tmp_path, data, capsys, argv, wrong, right
):
    assert main(_train_args(tmp_path, data, *argv)) == 2
    line = _one_line_error(capsys, "ae-pipeline train")
    assert f"unrecognized option {wrong}" in line
    if right:
        assert f"did you mean {right}?" in line
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    ("command", "wrong", "right"),
    [
        ("train", "--laten_dim", "--latent_dim"),
        ("encode", "--with_erorrs", "--with_errors"),
        ("score", "--top_kk", "--top_k"),
        ("score", "--lable_column", "--label_column"),
        ("demo", "--histroy_rows", "--history_rows"),
        ("stream", "--mdoe", "--mode"),
        ("stream", "--checkpointing_intervall", "--checkpointing_interval"),
    ],
)
def test_every_command_refuses_an_unknown_option(tmp_path, capsys, command, wrong, right):
    argv = [command, f"{wrong}=1"]
    if command != "demo":  # the jobs would publish or read here
        argv.append(f"--model_root={tmp_path / 'm'}")
    assert main(argv) == 2
    line = _one_line_error(capsys, f"ae-pipeline {command}")
    assert f"unrecognized option {wrong} (did you mean {right}?)" in line
    assert not (tmp_path / "m").exists()


def test_several_unknown_options_are_named_in_one_line(tmp_path, data, capsys):
    assert main(_train_args(tmp_path, data, "--epohcs=2", "--lr_rate=0.1")) == 2
    line = _one_line_error(capsys, "ae-pipeline train")
    assert "--epohcs (did you mean --epochs?)" in line and "--lr_rate" in line


def test_a_stray_argument_is_refused(tmp_path, data, capsys):
    assert main(_train_args(tmp_path, data, "--epochs", "2", "3")) == 2
    assert "unexpected argument '3'" in _one_line_error(capsys, "ae-pipeline train")


def test_a_value_argparse_cannot_take_is_one_line(tmp_path, data, capsys):
    assert main(_train_args(tmp_path, data, "--epochs=abc")) == 2
    assert "--epochs: invalid int value: 'abc'" in _one_line_error(capsys, "ae-pipeline train")


def test_beam_options_still_pass():
    argv = [
        "--runner=DirectRunner",
        "--temp_location=/tmp/somewhere",
        "--direct_num_workers=2",
        "--experiments=a",
        "--experiments=b",
        "--epochs=3",
        "--log_level=debug",
    ]
    options = parse_options(argv, pipelines.train.TrainOptions, "ae-pipeline train")
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    assert options.view_as(GoogleCloudOptions).temp_location == "/tmp/somewhere"
    opts = options.view_as(pipelines.train.TrainOptions)
    assert opts.epochs == 3 and opts.log_level == "DEBUG"


@pytest.mark.parametrize(
    "argv",
    [
        ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"],
        ["--runner=PrismRunner", "--prism_location=/p/prism", "--environment_type=LOOPBACK"],
        [
            "--runner=FlinkRunner",
            "--flink_master=[local]",
            "--flink_job_server_jar=/j/flink.jar",
            "--environment_type=LOOPBACK",
            "--parallelism=1",
        ],
    ],
)
def test_the_options_of_the_local_runners_pass(argv):
    """The runners ae_pipeline.local.runners.runner_args selects (without needing them here)."""
    options = parse_options([*argv, "--epochs=3"], pipelines.train.TrainOptions, "t")
    assert options.view_as(StandardOptions).runner == argv[0].split("=", 1)[1]


def test_dataflow_options_pass():
    argv = [
        "--runner=DataflowRunner",
        "--project=p",
        "--region=europe-west1",
        "--staging_location=gs://b/staging",
        "--job_name=ae-train-1",
        "--sdk_container_image=img:1",
        "--sdk_location=container",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1",
        "--output=gs://b/out",
    ]
    options = parse_options(argv, pipelines.encode.EncodeOptions, "ae-pipeline encode")
    assert options.view_as(GoogleCloudOptions).project == "p"


def test_given_options_are_the_flags_on_the_command_line():
    argv = ["--epochs=20", "--latent_dim", "4", "--warm_start", "--runner=DirectRunner"]
    assert given_options(argv, pipelines.train.TrainOptions) == {
        "epochs",
        "latent_dim",
        "warm_start",
    }


def test_strict_argument_parser_reports_instead_of_exiting():
    parser = StrictArgumentParser(prog="x")
    parser.add_argument("--count", type=int, default=3)
    assert parser.parse_args(["--count=4"]).count == 4
    with pytest.raises(UsageError, match=r"--cuont \(did you mean --count\?\)"):
        parser.parse_args(["--cuont=4"])
    with pytest.raises(UsageError, match="invalid int value"):
        parser.parse_args(["--count=four"])
    assert "(default: 3)" in parser.format_help()


# --- values checked before anything is read or built ---------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs=-3"], "--epochs must be >= 1, got -3"),
        (["--batch_size=0"], "--batch_size must be >= 1, got 0"),
        (["--lr=0"], "--lr must be > 0, got 0"),
        (["--latent_dim=0"], "--latent_dim must be >= 1, got 0"),
        (["--hidden_dims=64,x"], "--hidden_dims: expected comma-separated integers"),
        (["--validation_fraction=1"], "--validation_fraction must be between 0 and 1"),
        (["--patience=-1"], "--patience must be >= 0"),
        (["--model_config_json={bad"], "--model_config_json: not valid JSON"),
        (["--pretrain_epochs=2"], "--pretrain_epochs is for --architecture stacked"),
        (["--num_classes=3"], "--num_classes needs --label_column"),
        (["--exclude_columns=tss"], "--exclude_columns: no column 'tss'"),
        (["--exclude_columns=" + ",".join(f"f{i}" for i in range(12)) + ",ts"], "leaves no"),
    ],
)
def test_a_bad_value_is_one_line_before_any_work(tmp_path, data, capsys, argv, message):
    assert main(_train_args(tmp_path, data, *argv)) == 2
    assert message in _one_line_error(capsys, "ae-pipeline train")
    assert not (tmp_path / "models").exists()


def test_bce_with_the_default_scaler_names_the_flags_to_change(tmp_path, data, capsys):
    assert main(_train_args(tmp_path, data, "--loss=bce")) == 2
    line = _one_line_error(capsys, "ae-pipeline train")
    assert "--loss bce" in line and "--scaler minmax" in line
    assert "--output_activation sigmoid" in line


def test_missing_input_is_one_line(tmp_path, capsys):
    assert main(["train", f"--model_root={tmp_path}"]) == 2
    assert "missing --input" in _one_line_error(capsys, "ae-pipeline train")


def test_input_without_parquet_files_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["train", f"--input={tmp_path / 'empty'}", f"--model_root={tmp_path / 'm'}"]
    assert main(argv) == 2
    assert "no Parquet files" in _one_line_error(capsys, "ae-pipeline train")


def test_log_level_debug_adds_the_traceback(tmp_path, data, capsys):
    assert main(_train_args(tmp_path, data, "--epochs=-3", "--log_level", "DEBUG")) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == "ae-pipeline train: error: --epochs must be >= 1, got -3"


# --- thresholds: each method has its own default; out-of-range parameters refused -----------


@pytest.mark.parametrize(("method", "param"), sorted(DEFAULT_PARAMS.items()))
def test_each_threshold_method_takes_its_own_default(tmp_path, data, method, param):
    argv = _train_args(tmp_path, data, f"--threshold_method={method}")[1:]
    options = parse_options(argv, pipelines.train.TrainOptions, "t")
    _, job = pipelines.train.build_job(options.view_as(pipelines.train.TrainOptions))
    assert job.threshold_param == param


def test_default_fpr_flags_about_one_percent_of_normal_data():
    errors = np.random.default_rng(0).exponential(size=100_000)
    for method in ("fpr", "contamination", "quantile"):
        t = calibrate(errors, method)
        assert 0.009 < np.mean(errors > t["value"]) < 0.011, method


@pytest.mark.parametrize(
    ("method", "param"),
    [("fpr", 0.99), ("contamination", 0.9), ("quantile", 0.2), ("fpr", 0.0), ("quantile", 1.0)],
)
def test_out_of_range_threshold_param_is_refused_up_front(tmp_path, data, capsys, method, param):
    argv = _train_args(tmp_path, data, f"--threshold_method={method}", f"--threshold_param={param}")
    assert main(argv) == 2
    line = _one_line_error(capsys, "ae-pipeline train")
    assert f"--threshold_param {param:g} is out of range for --threshold_method {method}" in line
    assert f"default {DEFAULT_PARAMS[method]:g}" in line
    with pytest.raises(ValueError, match="out of range"):
        check_threshold(method, param)


def test_train_help_shows_every_default_and_the_per_method_threshold_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "--epochs EPOCHS maximum passes over the data (default: 20)",
        "--batch_size BATCH_SIZE",
        "(default: 256)",
        "quantile 0.99, fpr 0.01, contamination 0.01",
        "--pretrain_epochs",
        "--finetune_epochs",
        "--exclude_columns",
        "never a feature",
        "--log_level",
    ):
        assert text in out, text


@pytest.mark.parametrize("command", ["encode", "score", "demo"])
def test_help_names_the_subcommand_and_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ae-pipeline {command} ")
    assert "(default: " in out


def test_a_misspelled_command_is_one_line_naming_the_closest(capsys):
    assert main(["trian", "--epochs=2"]) == 2
    line = _one_line_error(capsys, "ae-pipeline")
    assert "unknown command 'trian' (did you mean train?)" in line


def test_top_level_help_lists_score(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "  score " in out and "is_anomaly" in out


# --- a successful run reads as success -----------------------------------------------------


def _emit(logger: logging.Logger, pathname: str, level: int, msg: str) -> None:
    record = logger.makeRecord(logger.name, level, pathname, 1, msg, (), None)
    if logger.isEnabledFor(level):
        logger.handle(record)


def test_beam_info_lines_are_hidden_unless_debug(capsys):
    beam_file = "/x/site-packages/apache_beam/typehints/native_type_compatibility.py"
    for level, shown in (("INFO", False), ("DEBUG", True)):
        configure_logging(level)
        _emit(logging.getLogger("apache_beam.typehints"), beam_file, logging.INFO, "type hint")
        _emit(logging.getLogger(), beam_file, logging.INFO, "Missing pipeline option (runner)")
        _emit(logging.getLogger(), "apache_beam/runners/common.py", logging.INFO, "compiled")
        _emit(logging.getLogger("apache_beam.x"), beam_file, logging.WARNING, "a warning")
        _emit(logging.getLogger("ae_pipeline.x"), "/w/ae_pipeline/x.py", logging.INFO, "ours")
        err = capsys.readouterr().err
        assert ("type hint" in err) is shown and ("Missing pipeline option" in err) is shown
        assert ("compiled" in err) is shown
        assert "a warning" in err and "ours" in err


def test_stream_passes_the_java_flink_options_on(tmp_path):
    """Java-only Flink options reach Beam (which hands them to the job server); ours are
    still checked."""
    from ae_pipeline.beam.options import FLINK_JAVA_FLAGS, parse_options

    argv = [
        "--runner=FlinkRunner",
        "--checkpointing_interval=10000",
        "--finish_bundle_before_checkpointing",
        "--state_backend",
        "rocksdb",
        f"--model_root={tmp_path}",
    ]
    options = parse_options(
        argv, pipelines.stream.StreamOptions, "ae-pipeline stream", java_flags=FLINK_JAVA_FLAGS
    )
    retained = options.get_all_options(retain_unknown_options=True)
    assert retained["checkpointing_interval"] == "10000"  # passed on as text, as Beam does
    assert retained["state_backend"] == "rocksdb"
    with pytest.raises(UsageError, match="--mdoe"):
        parse_options(
            [*argv, "--mdoe=flag"],
            pipelines.stream.StreamOptions,
            "ae-pipeline stream",
            java_flags=FLINK_JAVA_FLAGS,
        )


def test_the_java_flink_options_are_those_of_the_flink_runner_jar():
    """Each flag of FLINK_JAVA_FLAGS is a getter of FlinkPipelineOptions in the Flink job
    server's jars (resolved by make setup)."""
    import re
    import zipfile

    from ae_pipeline.beam.options import FLINK_JAVA_FLAGS
    from ae_pipeline.local.paths import classpath_dir

    getters = set()
    for jar in (classpath_dir("flink") / "lib").glob("beam-runners-flink*.jar"):
        with zipfile.ZipFile(jar) as zf:
            for entry in zf.namelist():
                if entry.endswith("FlinkPipelineOptions.class"):
                    getters.update(re.findall(rb"get([A-Z][A-Za-z0-9]*)", zf.read(entry)))
    snake = {
        "--" + re.sub(r"(?<!^)(?=[A-Z])", "_", g.decode()[0].lower() + g.decode()[1:]).lower()
        for g in getters
    }
    assert snake >= FLINK_JAVA_FLAGS, sorted(FLINK_JAVA_FLAGS - snake)
    assert "--checkpointing_interval" in FLINK_JAVA_FLAGS

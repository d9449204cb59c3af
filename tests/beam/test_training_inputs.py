"""Bad training input is refused before the pipeline runs, naming the file and the column.

Real files on disk: an empty directory, a CSV, a truncated Parquet file, duplicate column
names, an all-null column. Each is caught on the driver (no Beam stage runs) by the training
job and by :func:`ae_pipeline.beam.parquet.resolve_spec`, which every batch job uses.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ae_pipeline.beam.parquet import resolve_spec
from ae_pipeline.features import FeatureSpec, SchemaError
from ae_pipeline.local.runners import runner_args
from pipelines import train as train_job


def _table(n=40, **extra):
    rng = np.random.default_rng(0)
    cols = {f"f{i}": rng.normal(size=n) for i in range(3)}
    cols["id"] = np.arange(n)
    cols.update(extra)
    return pa.table(cols)


def _train(tmp_path, location, **kw):
    args = {
        "input": str(location),
        "model_root": str(tmp_path / "models"),
        "key_column": "id",
        "hidden_dims": "4",
        "latent_dim": "2",
        "progress": "false",
        "work_dir": str(tmp_path / "work"),
        **kw,
    }
    return train_job.run([f"--{k}={v}" for k, v in args.items()] + runner_args("fnapi"))


def _refused(tmp_path, location, *words, **kw):
    """The job refuses before running (no model root or work is written) naming ``words``."""
    with pytest.raises((ValueError, OSError)) as err:
        _train(tmp_path, location, **kw)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    assert not (tmp_path / "models").exists()
    return message


def test_an_empty_directory_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    message = _refused(tmp_path, tmp_path / "empty", "no Parquet files in directory", "empty")
    assert "IsADirectory" not in message


def test_a_csv_given_as_input_is_named(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("f0,f1,f2,id\n1,2,3,0\n4,5,6,1\n")
    _refused(tmp_path, csv, str(csv), "not a readable Parquet file", "CSV")


def test_a_truncated_parquet_file_is_named_among_good_ones(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(_table(), data / "part-0.parquet")
    whole = (data / "part-0.parquet").read_bytes()
    (data / "part-1.parquet").write_bytes(whole[: len(whole) // 2])
    _refused(tmp_path, data, "part-1.parquet", "truncated")


def test_duplicate_column_names_are_named(tmp_path):
    table = pa.Table.from_arrays(
        [pa.array([1.0, 2.0]), pa.array([3.0, 4.0]), pa.array([0, 1])], names=["f0", "f0", "id"]
    )
    pq.write_table(table, tmp_path / "dup.parquet")
    message = _refused(tmp_path, tmp_path / "dup.parquet", "dup.parquet", "'f0'", "more than once")
    assert "does not exist" not in message


def test_an_all_null_column_is_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for s in range(2):
        table = _table(f3=pa.array([None] * 40, type=pa.float64()))
        pq.write_table(table, data / f"part-{s}.parquet")
    _refused(tmp_path, data, "'f3'", "null in every row", "part-")
    # Left out of the features, the same data trains.
    files, spec = resolve_spec(str(data), FeatureSpec(columns=["f0", "f1", "f2"], key_column="id"))
    assert len(files) == 2 and spec.columns == ["f0", "f1", "f2"]


def test_a_column_null_in_one_file_only_is_a_warning(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(_table(f3=pa.array([1.0] * 40)), data / "part-0.parquet")
    pq.write_table(_table(f3=pa.array([None] * 40, type=pa.float64())), data / "part-1.parquet")
    with caplog.at_level(logging.WARNING, logger="ae_pipeline.beam.parquet"):
        _, spec = resolve_spec(str(data), FeatureSpec(key_column="id"))
    assert "f3" in spec.columns
    assert "'f3' is null in every row of 1 file(s)" in caplog.text and "part-1" in caplog.text


def test_files_without_rows_are_refused(tmp_path):
    pq.write_table(_table(0), tmp_path / "empty.parquet")
    with pytest.raises(SchemaError, match="hold no rows"):
        resolve_spec(str(tmp_path / "empty.parquet"), FeatureSpec(key_column="id"))

"""Batch encode job: latent codes (and reconstruction errors) of a Parquet dataset, to Parquet.

The batch twin of streaming ``encode``: dimensionality reduction of historical data with a
published model::

    python -m pipelines.encode --input data/ --model_root models/ --output codes/ \\
        --runner apache_beam.runners.portability.fn_api_runner.FnApiRunner

Each output file has the key column (if any), ``z0 … z{d-1}`` and, with ``--with_errors``,
``reconstruction_error``. Rows the model cannot take (null, NaN, inf) are counted and
written to ``<output>/rejected/`` as JSON lines with the reason.
"""

from __future__ import annotations

import io
import json
import sys
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from ae_pipeline.beam.options import (
    LoggingOptions,
    ModelLocationOptions,
    ParquetInputOptions,
    ParquetOutputOptions,
    UsageError,
    add_switch,
    configure_logging,
    parse_options,
    requested_log_level,
    require,
    run_command,
)
from ae_pipeline.beam.parquet import REJECTED, Block, ReadFeatureBlocks
from ae_pipeline.features import FeatureSpec, Scaler

PROG = "ae-pipeline encode"


class EncodeOptions(
    LoggingOptions, ModelLocationOptions, ParquetInputOptions, ParquetOutputOptions, PipelineOptions
):
    """Options of the encode job (plus every Beam pipeline option)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        add_switch(parser, "--with_errors", help="add a reconstruction_error column")


def resolve_model_dir(model_root: str | None, version_dir: str | None) -> str:
    """The model version directory from ``--model_version_dir`` or the newest under the root."""
    from ae_pipeline.registry import ModelRegistry

    if version_dir:
        return version_dir
    if not model_root:
        raise UsageError("give --model_root (newest version) or --model_version_dir")
    registry = ModelRegistry(model_root)
    latest = registry.latest()
    if latest is None:
        raise UsageError(f"--model_root {model_root}: no published model version there")
    return registry.path(latest)


class _EncodeBlock(beam.DoFn):
    def __init__(self, model_dir: str, output: str, key_column: str | None, with_errors: bool):
        self.model_dir, self.output = model_dir, output
        self.key_column, self.with_errors = key_column, with_errors

    def setup(self):
        from ae_pipeline.artifact import load_artifact
        from ae_pipeline.models.scoring import Scorer

        art = load_artifact(self.model_dir)
        self.scaler = Scaler.from_dict(art.scaler) if art.scaler else None
        self.scorer = Scorer(art.model)

    def process(self, block: Block):
        import pyarrow as pa
        import pyarrow.parquet as pq

        x = self.scaler.transform(block.x) if self.scaler else block.x
        scores = self.scorer.score(x, reconstruction=False, contributions=False)
        cols = {}
        if self.key_column and block.keys is not None:
            cols[self.key_column] = block.keys
        for j in range(scores.latent.shape[1]):
            cols[f"z{j}"] = scores.latent[:, j]
        if self.with_errors:
            cols["reconstruction_error"] = scores.error
        buf = io.BytesIO()
        pq.write_table(pa.table(cols), buf)
        path = FileSystems.join(self.output, f"part-{uuid.uuid4().hex}.parquet")
        with FileSystems.create(path) as f:
            f.write(buf.getvalue())
        yield len(block)


def prepare(
    argv: list[str] | None,
) -> tuple[PipelineOptions, EncodeOptions, str, ReadFeatureBlocks]:
    """Parse and check the options, load the model and check the input's schema against its
    feature columns (no pipeline is built).

    Returns:
        ``(options, opts, model_dir, read)``: ``read`` is the input's transform.

    Raises:
        UsageError: an unknown option, a missing flag, a model that cannot be loaded, or input
            without the model's columns.
    """
    options = parse_options(argv, EncodeOptions, PROG, __doc__)
    opts = options.view_as(EncodeOptions)
    require(opts.input, "input", "the Parquet file, glob or directory to encode")
    require(opts.output, "output", "the directory to write the codes to")
    if opts.block_rows < 1:
        raise UsageError(f"--block_rows must be >= 1, got {opts.block_rows}")
    try:
        model_dir = resolve_model_dir(opts.model_root, opts.model_version_dir)
        from ae_pipeline.artifact import load_artifact

        art = load_artifact(model_dir)
        spec = FeatureSpec(columns=list(art.feature_columns or []), key_column=opts.key_column)
        read = ReadFeatureBlocks(opts.input, spec, block_rows=opts.block_rows)
    except UsageError:
        raise
    except (ValueError, OSError) as e:  # ArtifactError, SchemaError, no files, unreadable
        raise UsageError(str(e)) from e
    return options, opts, model_dir, read


def run(argv: list[str] | None = None) -> dict:
    """Run the encode job; returns ``{"rows": n, "rejected": m, "model": dir}``.

    Raises:
        UsageError: before any work, for a mistake on the command line.
    """
    options, opts, model_dir, read_input = prepare(argv)
    FileSystems.mkdirs(opts.output) if not FileSystems.exists(opts.output) else None
    summary = FileSystems.join(opts.output, "_SUMMARY.json")
    with beam.Pipeline(options=options) as p:
        read = p | "Read" >> read_input
        rows = (
            read["blocks"]
            | "Encode"
            >> beam.ParDo(_EncodeBlock(model_dir, opts.output, opts.key_column, opts.with_errors))
            | "Rows" >> beam.CombineGlobally(sum)
        )
        rejected = read[REJECTED]
        (
            rejected
            | "RejectedJson" >> beam.Map(json.dumps)
            | "WriteRejected"
            >> beam.io.WriteToText(
                FileSystems.join(opts.output, "rejected", "part"), file_name_suffix=".jsonl"
            )
        )
        n_rejected = rejected | "CountRejected" >> beam.combiners.Count.Globally()
        rows | "Summary" >> beam.Map(
            _write_summary, beam.pvalue.AsSingleton(n_rejected), summary, model_dir
        )
    with FileSystems.open(summary) as f:
        return json.loads(f.read())


def _write_summary(rows: int, rejected: int, path: str, model_dir: str) -> None:
    with FileSystems.create(path) as f:
        f.write(
            json.dumps({"rows": int(rows), "rejected": int(rejected), "model": model_dir}).encode()
        )


def _main(argv: list[str]) -> int:
    configure_logging(requested_log_level(argv))
    result = run(argv)
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``ae-pipeline encode``: 0 done, 2 a usage error (one line)."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

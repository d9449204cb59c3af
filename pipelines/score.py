"""Batch flag job: every row of a Parquet dataset scored against a published model's threshold.

The batch twin of streaming ``flag``, through the same scoring code
(:meth:`ae_pipeline.serving.ServingModel.score_matrix`)::

    ae-pipeline score --input data/ --model_root models/ --output flags/ \\
        --runner apache_beam.runners.portability.fn_api_runner.FnApiRunner

Each output file has the key column (if any), ``score``, ``threshold``, ``is_anomaly``
(``score > threshold``), ``top_features`` and ``top_contributions`` (the ``--top_k`` features
with the largest share of the score, largest first), and the label column when one is given.
Rows the model cannot take (null, NaN, inf) are counted and written to ``<output>/rejected/``
as JSON lines with the reason.

Evaluate mode: with ``--label_column`` (an anomaly is a label other than 0, or exactly
``--positive_label``), the job also writes ROC-AUC, PR-AUC (average precision) and the ROC and
precision-recall curves to ``--report_dir`` (default ``<output>/report``) and prints them.
"""

from __future__ import annotations

import io
import json
import sys
import uuid
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from ae_pipeline.beam.options import (
    LabelOptions,
    LoggingOptions,
    ModelLocationOptions,
    ParquetInputOptions,
    ParquetOutputOptions,
    ScoringOptions,
    UsageError,
    configure_logging,
    parse_options,
    requested_log_level,
    require,
    run_command,
)
from ae_pipeline.beam.parquet import REJECTED, Block, ReadFeatureBlocks
from ae_pipeline.features import FeatureSpec

PROG = "ae-pipeline score"


class ScoreOptions(
    LoggingOptions,
    ModelLocationOptions,
    ParquetInputOptions,
    ParquetOutputOptions,
    LabelOptions,
    ScoringOptions,
    PipelineOptions,
):
    """Options of the batch flag job (plus every Beam pipeline option)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        # --top_k and --threshold come from ScoringOptions (shared with ``ae-pipeline stream``:
        # Beam parses every command's options together, so each flag has one definition).
        g = parser.add_argument_group("evaluation (with --label_column)")
        g.add_argument(
            "--positive_label",
            type=int,
            default=None,
            help="the label value of an anomaly (default: any label other than 0)",
        )
        g.add_argument(
            "--report_dir",
            default=None,
            help="where ROC/PR curves and evaluation.json go (default: <output>/report)",
        )


def resolve_model_dir(model_root: str | None, version_dir: str | None) -> str:
    """The model version directory from ``--model_version_dir`` or the newest under the root.

    Raises:
        UsageError: neither flag, or no published version under the root.
    """
    from ae_pipeline.registry import ModelRegistry

    if version_dir:
        return version_dir
    if not model_root:
        raise UsageError("give --model_root (newest version) or --model_version_dir")
    latest = ModelRegistry(model_root).latest()
    if latest is None:
        raise UsageError(f"--model_root {model_root}: no published model version there")
    return ModelRegistry(model_root).path(latest)


def _load(model_dir: str, opts) -> Any:
    """The :class:`~ae_pipeline.serving.ServingModel` the job scores with (threshold checked)."""
    from ae_pipeline.serving import ServingModel

    model = ServingModel.load(
        model_dir,
        device=opts.device,
        threshold=opts.threshold,
        top_k=opts.top_k or None,
    )
    if model.threshold is None or not np.isfinite(model.threshold):
        raise UsageError(
            f"model {model.version} has no usable threshold ({model.threshold}); pass --threshold"
        )
    return model


def top_contributions(
    contributions: np.ndarray, names: list[str], k: int | None
) -> tuple[list[list[str]], list[list[float]]]:
    """Per row, the names and values of the ``k`` largest contributions, largest first
    (``None``: all)."""
    dim = contributions.shape[1]
    k = dim if k is None else min(k, dim)
    top = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(contributions, top, axis=1)
    labels = np.asarray(names, dtype=object)[top]
    return labels.tolist(), values.astype(np.float64).tolist()


class _ScoreBlock(beam.DoFn):
    """Scores a block with the serving model, writes it as one Parquet part file, and emits
    ``(scores, labels)`` for the evaluation."""

    def __init__(self, model_dir: str, opts: dict, output: str, spec: FeatureSpec):
        self.model_dir, self.opts, self.output, self.spec = model_dir, opts, output, spec

    def setup(self):
        from types import SimpleNamespace

        self.model = _load(self.model_dir, SimpleNamespace(**self.opts))

    def process(self, block: Block):
        import pyarrow as pa
        import pyarrow.parquet as pq

        model, spec = self.model, self.spec
        scores = model.score_matrix(block.x, "flag")
        names, values = top_contributions(scores["contributions"], list(spec.columns), model.top_k)
        cols: dict[str, Any] = {}
        if spec.key_column and block.keys is not None:
            cols[spec.key_column] = block.keys
        cols["score"] = scores["score"].astype(np.float64)
        cols["threshold"] = np.full(len(block), float(model.threshold))
        cols["is_anomaly"] = scores["is_anomaly"]
        cols["top_features"] = pa.array(names, type=pa.list_(pa.string()))
        cols["top_contributions"] = pa.array(values, type=pa.list_(pa.float64()))
        if spec.label_column and block.labels is not None:
            cols[spec.label_column] = block.labels
        buf = io.BytesIO()
        pq.write_table(pa.table(cols), buf)
        path = FileSystems.join(self.output, f"part-{uuid.uuid4().hex}.parquet")
        with FileSystems.create(path) as f:
            f.write(buf.getvalue())
        yield scores["score"], block.labels, int(np.count_nonzero(scores["is_anomaly"]))


class _Gather(beam.CombineFn):
    """Rows, anomalies, and (with labels) every score and label, for the summary."""

    def __init__(self, keep: bool):
        self.keep = keep

    def create_accumulator(self):
        return [0, 0, [], []]

    def add_input(self, acc, item):
        scores, labels, flagged = item
        acc[0] += len(scores)
        acc[1] += flagged
        if self.keep:
            acc[2].append(np.asarray(scores, dtype=np.float64))
            acc[3].append(np.asarray(labels, dtype=np.int64))
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out[0] += a[0]
            out[1] += a[1]
            out[2] += a[2]
            out[3] += a[3]
        return out

    def extract_output(self, acc):
        return acc


def _finish(gathered, rejected: int, ctx: dict) -> None:
    """Writes ``_SUMMARY.json`` (and the evaluation report with labels)."""
    rows, anomalies, scores, labels = gathered
    summary: dict[str, Any] = {
        "rows": int(rows),
        "rejected": int(rejected),
        "anomalies": int(anomalies),
        "threshold": ctx["threshold"],
        "model": ctx["model"],
        "version": ctx["version"],
        "output": ctx["output"],
    }
    if ctx.get("label_column"):
        summary["evaluation"] = _evaluate(scores, labels, ctx)
    with FileSystems.create(FileSystems.join(ctx["output"], "_SUMMARY.json")) as f:
        f.write(json.dumps(summary, default=float).encode())


def _evaluate(scores: list, labels: list, ctx: dict) -> dict:
    from ae_pipeline.report import write_evaluation_report

    s = np.concatenate(scores) if scores else np.empty(0)
    y = np.concatenate(labels) if labels else np.empty(0, np.int64)
    positive = ctx["positive_label"]
    positives = (y != 0) if positive is None else (y == positive)
    rule = "label != 0" if positive is None else f"label == {positive}"
    try:
        metrics = write_evaluation_report(
            ctx["report_dir"],
            s,
            positives,
            ctx["threshold"],
            extra={"label_column": ctx["label_column"], "anomaly_is": rule},
        )
    except ValueError as err:
        return {"error": str(err), "label_column": ctx["label_column"], "anomaly_is": rule}
    return metrics


def prepare(argv: list[str] | None) -> tuple[PipelineOptions, Any, str, Any, ReadFeatureBlocks]:
    """Parse and check the options, load the model (its threshold checked) and check the
    input's schema against its feature columns; no pipeline is built.

    Returns:
        ``(options, opts, model_dir, model, read)``.

    Raises:
        UsageError: an unknown option, a missing flag, a model that cannot flag, or input
            without the model's (or the label's) columns.
    """
    options = parse_options(argv, ScoreOptions, PROG, __doc__)
    opts = options.view_as(ScoreOptions)
    require(opts.input, "input", "the Parquet file, glob or directory to score")
    require(opts.output, "output", "the directory to write the scores to")
    if opts.block_rows < 1:
        raise UsageError(f"--block_rows must be >= 1, got {opts.block_rows}")
    if opts.top_k < 0:
        raise UsageError(f"--top_k must be 0 (all) or more, got {opts.top_k}")
    if opts.positive_label is not None and not opts.label_column:
        raise UsageError("--positive_label needs --label_column (the column with the labels)")
    try:
        model_dir = resolve_model_dir(opts.model_root, opts.model_version_dir)
        model = _load(model_dir, opts)
        spec = FeatureSpec(
            columns=list(model.spec.columns),
            key_column=opts.key_column,
            label_column=opts.label_column,
        )
        if not spec.columns:
            raise UsageError(f"model {model.version} has no feature column names to read")
        read = ReadFeatureBlocks(opts.input, spec, block_rows=opts.block_rows)
    except UsageError:
        raise
    except (ValueError, OSError) as e:  # ArtifactError, SchemaError, no files, unreadable
        raise UsageError(str(e)) from e
    return options, opts, model_dir, model, read


def run(argv: list[str] | None = None) -> dict:
    """Run the score job; returns the summary: ``rows``, ``rejected``, ``anomalies``,
    ``threshold``, ``model``, ``version``, ``output`` and, with ``--label_column``,
    ``evaluation`` (``roc_auc``, ``pr_auc``, ``at_threshold``, ``files``; or ``error``).

    Raises:
        UsageError: before any work, for a mistake on the command line.
    """
    options, opts, model_dir, model, read_input = prepare(argv)
    output = opts.output
    FileSystems.mkdirs(output) if not FileSystems.exists(output) else None
    ctx = {
        "threshold": float(model.threshold),
        "model": model_dir,
        "version": model.version,
        "output": output,
        "label_column": opts.label_column,
        "positive_label": opts.positive_label,
        "report_dir": opts.report_dir or FileSystems.join(output, "report"),
    }
    scorer_opts = {"device": opts.device, "threshold": opts.threshold, "top_k": opts.top_k}
    spec = read_input.resolved_spec
    with beam.Pipeline(options=options) as p:
        read = p | "Read" >> read_input
        gathered = (
            read["blocks"]
            | "Score" >> beam.ParDo(_ScoreBlock(model_dir, scorer_opts, output, spec))
            | "Gather" >> beam.CombineGlobally(_Gather(bool(opts.label_column)))
        )
        rejected = read[REJECTED]
        (
            rejected
            | "RejectedJson" >> beam.Map(json.dumps)
            | "WriteRejected"
            >> beam.io.WriteToText(
                FileSystems.join(output, "rejected", "part"), file_name_suffix=".jsonl"
            )
        )
        n_rejected = rejected | "CountRejected" >> beam.combiners.Count.Globally()
        gathered | "Summary" >> beam.Map(_finish, beam.pvalue.AsSingleton(n_rejected), ctx)
    with FileSystems.open(FileSystems.join(output, "_SUMMARY.json")) as f:
        return json.loads(f.read())


def describe(summary: dict) -> str:
    """The summary as a few lines for people."""
    lines = [
        f"scored {summary['rows']:,} rows with model {summary['version']} "
        f"({summary['rejected']:,} rejected): {summary['anomalies']:,} anomalies at threshold "
        f"{summary['threshold']:.6g}; output {summary['output']}"
    ]
    ev = summary.get("evaluation")
    if ev and ev.get("error"):
        lines.append(f"evaluation ({ev['label_column']}, {ev['anomaly_is']}): {ev['error']}")
    elif ev:
        lines.append(
            f"evaluation on {ev['label_column']!r} ({ev['anomaly_is']}: {ev['anomalies']:,} "
            f"anomalies, {ev['normal']:,} normal): ROC-AUC {ev['roc_auc']:.4f}, "
            f"PR-AUC {ev['pr_auc']:.4f}"
        )
        at = ev.get("at_threshold")
        if at:
            precision = "-" if at["precision"] is None else f"{at['precision']:.4f}"
            lines.append(
                f"  at the threshold: precision {precision}, recall {at['recall']:.4f}, "
                f"false-positive rate {at['fpr']:.4f}"
            )
        lines.append(f"  report: {', '.join(ev['files'].values())}")
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    configure_logging(requested_log_level(argv))
    summary = run(argv)
    sys.stderr.flush()
    print(describe(summary), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``ae-pipeline score``: 0 done, 2 a usage error (one line)."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Read historical Parquet data as blocks of validated feature rows.

:class:`ReadFeatureBlocks` takes a file, a glob or a directory of shards on any Beam filesystem,
checks the schema before the pipeline runs (a missing or non-numeric column is a
:class:`~ae_pipeline.features.SchemaError` naming it), then reads every row group in parallel with
pyarrow and emits :class:`Block` elements of at most ``block_rows`` rows: Beam's per-element
overhead is paid per block, not per row. Rows with null, NaN or inf leave on the ``rejected``
output with a reason, and every row is counted in Beam metrics.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from ae_pipeline.features import FeatureSpec, check_arrow_schema, table_to_matrix

NAMESPACE = "ae_pipeline"
REJECTED = "rejected"


@dataclass
class Block:
    """A block of feature rows.

    Attributes:
        x: float32 ``N x D`` features, unscaled.
        keys: the key column's values (or None).
        labels: int64 labels (or None).
    """

    x: np.ndarray
    keys: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def take(self, mask: np.ndarray) -> Block:
        return Block(
            self.x[mask],
            None if self.keys is None else self.keys[mask],
            None if self.labels is None else self.labels[mask],
        )


def resolve_files(location: str) -> list[str]:
    """The Parquet files of a file, glob, or directory (``*.parquet`` under it, recursively).

    Raises:
        FileNotFoundError: when nothing matches, naming the location.
    """
    pattern = location
    if not any(c in location for c in "*?[") and not location.endswith(".parquet"):
        pattern = FileSystems.join(location.rstrip("/"), "**.parquet")
    matched = FileSystems.match([pattern])[0].metadata_list
    files = sorted(m.path for m in matched if m.size_in_bytes > 0)
    if not files and pattern != location:  # a single file whose name lacks the suffix
        matched = FileSystems.match([location])[0].metadata_list
        files = sorted(m.path for m in matched if m.size_in_bytes > 0)
    if not files:
        raise FileNotFoundError(f"no Parquet files at {location!r} (pattern {pattern!r})")
    return files


def _open(path: str):
    import pyarrow.parquet as pq

    return pq.ParquetFile(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED))


def read_schema(path: str):
    """The Arrow schema of one Parquet file."""
    return _open(path).schema_arrow


def resolve_spec(location: str, spec: FeatureSpec) -> tuple[list[str], FeatureSpec]:
    """Files at ``location`` and the spec checked against (and completed from) their schema.

    Every file must have the feature, key and label columns.

    Raises:
        FileNotFoundError: nothing at the location.
        ae_pipeline.features.SchemaError: a column missing or not numeric, naming it and the file.
    """
    from ae_pipeline.features import SchemaError

    files = resolve_files(location)
    resolved = check_arrow_schema(read_schema(files[0]), spec)
    for path in files[1:]:
        try:
            check_arrow_schema(read_schema(path), resolved)
        except SchemaError as e:
            raise SchemaError(f"{path}: {e}") from None
    return files, resolved


def _splitmix64(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (h + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def stable_hash(block: Block) -> np.ndarray:
    """A per-row 64-bit hash of the key (or of the features when there is no key), stable
    across runs, processes and machines: the basis of the deterministic train/validation split.
    """
    if block.keys is not None:
        keys = block.keys
        if keys.dtype.kind in "iub":
            return _splitmix64(keys.astype(np.int64).view(np.uint64))
        if keys.dtype.kind == "f":
            return _splitmix64(keys.astype(np.float64).view(np.uint64))
        return np.fromiter(
            (zlib.crc32(str(k).encode()) for k in keys), dtype=np.uint64, count=len(keys)
        )
    h = np.zeros(len(block.x), dtype=np.uint64)
    bits = np.ascontiguousarray(block.x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    for j in range(bits.shape[1]):
        h = _splitmix64(h ^ bits[:, j])
    return h


def validation_mask(block: Block, fraction: float) -> np.ndarray:
    """True for the rows that belong to the validation split (``fraction`` of them, by hash)."""
    if fraction <= 0:
        return np.zeros(len(block), dtype=bool)
    return (stable_hash(block) % np.uint64(1_000_000)) < np.uint64(round(fraction * 1_000_000))


class _ExpandRowGroups(beam.DoFn):
    def process(self, path: str):
        for i in range(_open(path).metadata.num_row_groups):
            yield path, i


class _ReadRowGroup(beam.DoFn):
    def __init__(self, spec: FeatureSpec, block_rows: int):
        self.spec, self.block_rows = spec, block_rows
        self.rows_read = Metrics.counter(NAMESPACE, "rows_read")
        self.rows_rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, item: tuple[str, int]):
        path, group = item
        spec = self.spec
        columns = list(dict.fromkeys([*spec.columns, spec.key_column, spec.label_column]))
        table = _open(path).read_row_group(group, columns=[c for c in columns if c])
        for start in range(0, table.num_rows, self.block_rows):
            part = table.slice(start, self.block_rows)
            x, errors = table_to_matrix(part, spec.columns)
            self.rows_read.inc(part.num_rows)
            keep = np.ones(part.num_rows, dtype=bool)
            for err in errors:
                keep[err.index] = False
                self.rows_rejected.inc()
                Metrics.counter(NAMESPACE, f"rows_rejected_{err.reason}").inc()
                yield beam.pvalue.TaggedOutput(
                    REJECTED,
                    {
                        "file": path,
                        "row_group": group,
                        "row": start + err.index,
                        "reason": err.reason,
                        "detail": err.detail,
                    },
                )
            if not len(x):
                continue
            keys = labels = None
            if spec.key_column:
                keys = np.asarray(part.column(spec.key_column).to_numpy(zero_copy_only=False))[keep]
            if spec.label_column:
                labels = part.column(spec.label_column).to_numpy(zero_copy_only=False)[keep]
                labels = np.asarray(labels).astype(np.int64)
            yield Block(x, keys, labels)


class ReadFeatureBlocks(beam.PTransform):
    """Parquet files -> :class:`Block` elements, plus a ``rejected`` output of bad rows.

    Args:
        location: a file, glob or directory (local, gs://, s3://, ...).
        spec: feature columns (empty: all numeric), key and label columns.
        block_rows: maximum rows per block.

    The schema is checked when the transform is constructed, so a bad column fails before the
    pipeline starts. ``resolved_spec`` holds the spec with the column list filled in.

    Returns (from ``expand``):
        A tuple-like ``DoOutputsTuple`` with the blocks as main output and ``rejected``.
    """

    def __init__(self, location: str, spec: FeatureSpec, *, block_rows: int = 65536):
        super().__init__()
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.files, self.resolved_spec = resolve_spec(location, spec)
        self.block_rows = block_rows

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self.files)
            | "RowGroups" >> beam.ParDo(_ExpandRowGroups())
            | "Spread" >> beam.Reshuffle()
            | "Read"
            >> beam.ParDo(_ReadRowGroup(self.resolved_spec, self.block_rows)).with_outputs(
                REJECTED, main="blocks"
            )
        )

"""Read historical Parquet data as blocks of validated feature rows.

:class:`ReadFeatureBlocks` takes a file, a glob or a directory of shards on any Beam filesystem,
checks every file before the pipeline runs (an empty directory, a file that is not Parquet or is
truncated, duplicate column names, a missing, non-numeric or all-null column: each a
:class:`~ae_pipeline.features.SchemaError` or ``FileNotFoundError`` naming the file and the
column), then reads every row group in parallel with
pyarrow and emits :class:`Block` elements of at most ``block_rows`` rows: Beam's per-element
overhead is paid per block, not per row. Rows with null, NaN or inf leave on the ``rejected``
output with a reason, and every row is counted in Beam metrics.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import Counter
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from ae_pipeline.features import FeatureSpec, SchemaError, check_arrow_schema, table_to_matrix

NAMESPACE = "ae_pipeline"
REJECTED = "rejected"
PARQUET_MAGIC = b"PAR1"

log = logging.getLogger(__name__)


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
        FileNotFoundError: when nothing matches, naming the location (and saying when it is a
            directory without ``.parquet`` files).
    """
    pattern = location
    if not any(c in location for c in "*?[") and not location.endswith(".parquet"):
        pattern = FileSystems.join(location.rstrip("/"), "**.parquet")
    matched = FileSystems.match([pattern])[0].metadata_list
    files = sorted(m.path for m in matched if m.size_in_bytes > 0 and not os.path.isdir(m.path))
    if not files and pattern != location:  # a single file whose name lacks the suffix
        matched = FileSystems.match([location])[0].metadata_list
        files = sorted(m.path for m in matched if m.size_in_bytes > 0 and not os.path.isdir(m.path))
    if not files:
        if os.path.isdir(location):
            raise FileNotFoundError(
                f"no Parquet files in directory {location!r} (looked for *.parquet under it); "
                "point --input at a Parquet file, glob or directory of Parquet files"
            )
        raise FileNotFoundError(f"no Parquet files at {location!r} (pattern {pattern!r})")
    return files


def _arrow_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    return (pa.ArrowException, OSError, ValueError)


def _not_parquet(path: str, err: BaseException) -> SchemaError:
    """The error for a file pyarrow cannot open, naming it and guessing why."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head != PARQUET_MAGIC:
        why = "it does not start with Parquet's magic bytes: is it a CSV or another format?"
    else:
        why = "its footer is missing or corrupt: is the file truncated or still being written?"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return SchemaError(f"{path} is not a readable Parquet file: {why} (pyarrow: {first})")


def _open(path: str):
    """The ``pyarrow.parquet.ParquetFile`` at ``path``.

    Raises:
        SchemaError: the file is not Parquet or is truncated, naming the file.
    """
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(
            FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        )
    except _arrow_errors() as err:
        raise _not_parquet(path, err) from None


def read_schema(path: str):
    """The Arrow schema of one Parquet file (see :func:`_open` for the errors)."""
    return _open(path).schema_arrow


def _check_unique_names(path: str, schema) -> None:
    twice = sorted(name for name, n in Counter(schema.names).items() if n > 1)
    if twice:
        raise SchemaError(
            f"{path}: column name(s) {twice} appear more than once; column names must be "
            "unique: rename the duplicates when writing the file"
        )


def _null_columns(parquet_file, columns: list[str]) -> set[str]:
    """Of ``columns``, those that the file's statistics say are null in every row (a column
    without statistics in some row group is never reported)."""
    md = parquet_file.metadata
    if md.num_rows == 0:
        return set()
    nulls = dict.fromkeys(columns, 0)
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        for j in range(group.num_columns):
            chunk = group.column(j)
            name = chunk.path_in_schema
            if name not in nulls or nulls[name] is None:
                continue
            stats = chunk.statistics
            if stats is None or not stats.has_null_count:
                nulls[name] = None
            else:
                nulls[name] += stats.null_count
    return {c for c, n in nulls.items() if n is not None and n == md.num_rows}


def resolve_spec(location: str, spec: FeatureSpec) -> tuple[list[str], FeatureSpec]:
    """Files at ``location`` and the spec checked against (and completed from) their schema.

    Every file must be readable Parquet with unique column names and have the feature, key and
    label columns; a feature column that is null in every row of every file is refused (its
    rows could only be rejected), one that is all-null in some files is logged.

    Raises:
        FileNotFoundError: nothing at the location, or an empty directory.
        ae_pipeline.features.SchemaError: a file that is not Parquet or is truncated, a duplicate
            column name, a column missing, not numeric or all null: naming the file and column.
    """
    files = resolve_files(location)
    opened = {}
    resolved = spec
    for i, path in enumerate(files):
        pf = opened[path] = _open(path)
        _check_unique_names(path, pf.schema_arrow)
        try:
            checked = check_arrow_schema(pf.schema_arrow, resolved)
        except SchemaError as e:
            raise SchemaError(f"{path}: {e}") from None
        if i == 0:
            resolved = checked
    if sum(pf.metadata.num_rows for pf in opened.values()) == 0:
        raise SchemaError(f"the Parquet files at {location!r} hold no rows ({len(files)} files)")
    _check_null_columns(opened, list(resolved.columns))
    return files, resolved


def _check_null_columns(opened: dict, columns: list[str]) -> None:
    with_rows = {path: pf for path, pf in opened.items() if pf.metadata.num_rows}
    null_in = {path: _null_columns(pf, columns) for path, pf in with_rows.items()}
    for col in columns:
        files = [path for path, cols in null_in.items() if col in cols]
        if files and len(files) == len(with_rows):
            where = files[0] if len(files) == 1 else f"all {len(files)} files, e.g. {files[0]}"
            raise SchemaError(
                f"feature column {col!r} is null in every row ({where}): every row would be "
                "rejected; leave it out of the features (--feature_columns or "
                "--exclude_columns) or fill it"
            )
        if files:
            log.warning(
                "feature column %r is null in every row of %d file(s), e.g. %s: those rows "
                "will be rejected",
                col,
                len(files),
                files[0],
            )


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
        source = _open(path)
        try:
            table = source.read_row_group(group, columns=[c for c in columns if c])
        except _arrow_errors() as err:
            raise SchemaError(f"{path}: cannot read row group {group}: {err}") from None
        for start in range(0, table.num_rows, self.block_rows):
            part = table.slice(start, self.block_rows)
            x, errors = table_to_matrix(part, spec.columns)
            self.rows_read.inc(part.num_rows)
            keep = np.ones(part.num_rows, dtype=bool)
            labelled = [(e, False) for e in errors]
            labelled += [(e, True) for e in self._null_labels(part, errors)]
            for err, in_x in labelled:
                if in_x:  # its features are in x (at the position of the rows kept before it)
                    x = np.delete(x, int(np.count_nonzero(keep[: err.index])), axis=0)
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

    def _null_labels(self, part, errors) -> list:
        """A :class:`~ae_pipeline.features.RecordError` per row whose label is null (and whose
        features are fine): such a row would otherwise get a meaningless integer label."""
        from ae_pipeline.features import NULL_VALUE, RecordError

        label = self.spec.label_column
        if not label or not part.column(label).null_count:
            return []
        bad = {e.index for e in errors}
        nulls = np.flatnonzero(part.column(label).is_null().to_numpy(zero_copy_only=False))
        return [
            RecordError(int(i), NULL_VALUE, f"null label in {label!r}")
            for i in nulls
            if int(i) not in bad
        ]


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

"""Helpers shared by the test suites (streaming, reliability, kafka, deploy).

* :mod:`kit.models`: a small trained autoencoder, publishing it to a registry root, records on
  its manifold and one poison record per dead-letter reason.
* :mod:`kit.kafka`: fresh topics, producing, reading back, totals, committed offsets, waiting.
* :mod:`kit.processes`: the plain consumer (``python -m pipelines.consume``) as a process.

``tests/`` is on ``sys.path`` in every pytest run (pytest's default "prepend" import mode puts
the folder of ``tests/conftest.py``, a rootdir conftest outside any package, there), so the test
modules import this package as ``import kit``.
"""

from kit.kafka import (
    committed_total,
    copy_with_beam,
    fast_client,
    new_topics,
    produce,
    read_all,
    read_records,
    round_trip,
    total,
    wait_until,
)
from kit.models import (
    COLUMNS,
    POISON,
    POISON_VALUES,
    SPEC,
    Trained,
    normal_rows,
    publish,
    publish_files,
    record,
    records_with_poison,
    stream_values,
    train,
)
from kit.processes import (
    REPO,
    last_stats,
    pipeline_alive,
    process_alive,
    start_consumer,
    stream_job_args,
)

__all__ = [
    "COLUMNS",
    "POISON",
    "POISON_VALUES",
    "REPO",
    "SPEC",
    "Trained",
    "committed_total",
    "copy_with_beam",
    "fast_client",
    "last_stats",
    "new_topics",
    "normal_rows",
    "pipeline_alive",
    "process_alive",
    "produce",
    "publish",
    "publish_files",
    "read_all",
    "read_records",
    "record",
    "records_with_poison",
    "round_trip",
    "start_consumer",
    "stream_job_args",
    "stream_values",
    "total",
    "train",
    "wait_until",
]

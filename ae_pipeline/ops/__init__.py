"""Operating the scoring service: Prometheus metrics, health probes, log lines, drift.

* :mod:`ae_pipeline.ops.metrics`: :class:`ScoringMetrics`, named like the Beam metrics.
* :mod:`ae_pipeline.ops.http`: :class:`OpsServer` (``/metrics``, ``/healthz``, ``/readyz``).
* :mod:`ae_pipeline.ops.logs`: ``--log_format json``.
* :mod:`ae_pipeline.ops.monitor`: :class:`ConsumerMonitor`, what the plain consumer reports.

The drift figures themselves are :mod:`ae_pipeline.drift` (no server, no Kafka).
"""

from ae_pipeline.ops.http import OpsServer
from ae_pipeline.ops.logs import LOG_FORMATS, JsonFormatter, use_log_format
from ae_pipeline.ops.metrics import ScoringMetrics
from ae_pipeline.ops.monitor import ConsumerMonitor, consumer_lag

__all__ = [
    "LOG_FORMATS",
    "ConsumerMonitor",
    "JsonFormatter",
    "OpsServer",
    "ScoringMetrics",
    "consumer_lag",
    "use_log_format",
]

"""The ``--drift*`` options that ``ae-pipeline consume`` and ``ae-pipeline stream`` share.

The consumer judges the last ``--drift_window`` scores (or those of ``--drift_window_s``
seconds); the streaming job judges Beam windows of event time (``--drift_window_s`` long,
one starting every ``--drift_period_s``). The limits are the same (:class:`DriftLimits`).
"""

from __future__ import annotations

import math
from typing import Any

from ae_pipeline.beam.options import add_switch
from ae_pipeline.drift import DriftLimits

_LIMITS = (
    ("psi", "population stability index over the calibration's deciles"),
    ("anomaly_rate_ratio", "live anomaly rate over the rate the threshold targets"),
    ("ks_pvalue", "KS p-value below which the scores differ"),
)


def add_drift_options(parser: Any, *, streaming: bool) -> None:
    """Adds the drift options to ``parser`` (an argparse parser, or Beam's) as a group."""
    g = (
        parser.add_argument_group("score drift")
        if hasattr(parser, "add_argument_group")
        else parser
    )
    add_switch(
        g,
        "--drift",
        default=False,
        help="compare the live scores with the serving version's calibration (PSI, KS, anomaly "
        "rate): figures as metrics, events (JSON) to --drift_topic",
    )
    g.add_argument("--drift_topic", default=None, help="where drift events go (needs --drift)")
    if streaming:
        g.add_argument(
            "--drift_window_s",
            type=float,
            default=300.0,
            help="each drift window's length, in seconds of event time (default %(default)s)",
        )
        g.add_argument(
            "--drift_period_s",
            type=float,
            default=60.0,
            help="a drift window starts this often (sliding; default %(default)s)",
        )
    else:
        g.add_argument(
            "--drift_window",
            type=int,
            default=2000,
            help="judge the last N scores (default %(default)s)",
        )
        g.add_argument(
            "--drift_window_s",
            type=float,
            default=None,
            help="or judge the scores of the last N seconds (instead of --drift_window)",
        )
    limits = DriftLimits()
    for name, text in _LIMITS:
        g.add_argument(
            f"--drift_{name}",
            type=float,
            default=getattr(limits, name),
            help=f"limit: {text}; 0: not checked (default %(default)s)",
        )
    g.add_argument(
        "--drift_for_s",
        type=float,
        default=limits.for_s,
        help="a limit crossed this long makes a drift event (default %(default)s)",
    )
    g.add_argument(
        "--drift_min_records",
        type=int,
        default=limits.min_records,
        help="the fewest scores a window needs to be judged (default %(default)s)",
    )


def drift_limits(args: Any) -> DriftLimits | None:
    """The :class:`DriftLimits` the options ask for; None without ``--drift``.

    Raises:
        ValueError: a drift option without ``--drift``, or a value that cannot work (one
            line naming the option).
    """
    if not args.drift:
        if args.drift_topic is not None:
            raise ValueError("--drift_topic needs --drift")
        return None
    for name, _ in _LIMITS:
        value = getattr(args, f"drift_{name}")
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--drift_{name} must be 0 (not checked) or a number above 0")
    try:
        return DriftLimits(
            psi=args.drift_psi or None,
            anomaly_rate_ratio=args.drift_anomaly_rate_ratio or None,
            ks_pvalue=args.drift_ks_pvalue or None,
            for_s=args.drift_for_s,
            min_records=args.drift_min_records,
        )
    except ValueError as err:  # "drift for_s must be ...": the option is --drift_for_s
        raise ValueError(f"{err} (the --drift_... options)") from None

"""Which Python runs the benchmarks' parts that need Beam's own anomaly detectors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: The Beam 2.70 side environment ``make bench-deps`` builds, for a main environment whose Beam
#: predates ``apache_beam.ml.anomaly`` (Beam >= 2.64).
SIDE_PYTHON = Path(__file__).resolve().parents[1] / ".venv-beam-anomaly" / "bin" / "python"


def anomaly_beam_python() -> str:
    """A Python whose Beam has ``apache_beam.ml.anomaly``: this one (the main environment runs
    Beam 2.77), else the side environment's.

    Raises:
        FileNotFoundError: neither has it.
    """
    if importlib.util.find_spec("apache_beam.ml.anomaly") is not None:
        return sys.executable
    if not SIDE_PYTHON.exists():
        raise FileNotFoundError(f"{SIDE_PYTHON} (make bench-deps builds the Beam 2.70 side env)")
    return str(SIDE_PYTHON)

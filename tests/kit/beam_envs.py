"""The two Beam versions the suite runs on (README "Beam versions"), read from the lock files.

``NEWEST``: requirements/lock.txt, the main environment ``.venv`` (unit, FnApiRunner, Prism,
AnomalyDetection tests). ``FLINK``: requirements/beam-2.62.txt, ``.venv-beam-2.62``, the newest
Beam whose Java artifacts (Flink runner, KafkaIO expansion service) Maven serves here; the
Flink and Java cross-language tests run there, and ``deploy/``'s Flink images and job server
pin it (every other image runs ``NEWEST``).
"""

from __future__ import annotations

import re
from pathlib import Path

import apache_beam

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"


def _beam_pin(name: str) -> str:
    text = (REQUIREMENTS / name).read_text()
    return re.search(r"^apache-beam==(\S+)$", text, flags=re.M)[1]


NEWEST = _beam_pin("lock.txt")
FLINK = _beam_pin("beam-2.62.txt")
INSTALLED = apache_beam.__version__


def has_the_java_jars() -> bool:
    """Whether the installed Beam is the one the Java jars of ``make setup`` are for."""
    return INSTALLED == FLINK

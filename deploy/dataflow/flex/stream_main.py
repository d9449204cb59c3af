"""Flex Template entry point of the streaming job (``FLEX_TEMPLATE_PYTHON_PY_FILE``).

Runs ``pipelines/stream.py`` with the template's parameters and returns once Dataflow has
accepted the job (a streaming job runs until it is drained or cancelled). On/off options take
``--bounded=false`` as the launcher passes them, and ``kafka_config`` may name a ``gs://`` file:
the job reads it through Beam's ``FileSystems`` (never logging it).
"""

from __future__ import annotations

import sys

from pipelines import stream


def main(argv: list[str]) -> int:
    stream.main(argv, wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

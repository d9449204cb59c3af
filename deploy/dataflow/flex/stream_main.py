"""Flex Template entry point of the streaming job (``FLEX_TEMPLATE_PYTHON_PY_FILE``).

Runs ``pipelines/stream.py`` with the template's parameters and returns once Dataflow has
accepted the job (a streaming job runs until it is drained or cancelled). ``kafka_config`` may
name a ``gs://`` file: it is copied to a private local file first.
"""

from __future__ import annotations

import sys

from flex_args import fix_switches, localize_file_option, switches

from pipelines import stream


def main(argv: list[str]) -> int:
    argv = fix_switches(argv, switches(stream.StreamOptions))
    argv = localize_file_option(argv, "--kafka_config")
    stream.main(argv, wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

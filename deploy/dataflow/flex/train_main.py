"""Flex Template entry point of the batch training job (``FLEX_TEMPLATE_PYTHON_PY_FILE``).

Runs ``pipelines/train.py`` with the template's parameters. The launcher passes every parameter
as ``--name=value``; the job's on/off options take ``--warm_start=true`` / ``=false`` as they
are (``ae_pipeline.beam.options.add_switch``). It waits for the Dataflow job (the job's result
says whether a version was published or refused); the job itself publishes the model, so it
completes even if the launcher stops waiting.
"""

from __future__ import annotations

import sys

from pipelines import train


def main(argv: list[str]) -> int:
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

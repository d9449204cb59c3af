"""The pip constraints an image installs ae-pipeline with: ``requirements/lock.txt`` (the newest
tested Beam), or, given an overlay such as ``requirements/beam-2.62.txt`` (the Flink images),
the lock with the overlay's pins in place of the same names or added, as
``deploy/local/bootstrap.sh`` composes ``.venv-beam-2.62``.

    python deploy/dataflow/constraints.py requirements/lock.txt [OVERLAY] > constraints.txt
"""

from __future__ import annotations

import re
import sys


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", requirement.split("==")[0].split("[")[0]).strip().lower()


def pins_of(text: str) -> dict[str, str]:
    """``name -> "name==version"`` of every pinned line of a requirements text."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            out[_name(line)] = line
    return out


def pins(path: str) -> dict[str, str]:
    """``pins_of`` a requirements file."""
    with open(path) as f:
        return pins_of(f.read())


def compose(lock: str, overlay: str | None = None) -> str:
    """The lock's pins, the overlay's replacing those of the same name; sorted, one a line."""
    merged = pins(lock)
    if overlay:
        merged.update(pins(overlay))
    return "".join(f"{line}\n" for _, line in sorted(merged.items()))


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    sys.stdout.write(compose(*sys.argv[1:]))

"""The ``ae-pipeline`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ae-pipeline", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args, _ = parser.parse_known_args(argv)
    if args.version:
        from ae_pipeline import __version__

        print(__version__)
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

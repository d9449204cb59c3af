"""Argument fixes between Dataflow's Flex Template launcher and the ae-pipeline jobs.

The launcher passes every template parameter as ``--name=value``. Two kinds of job option do
not take that form as they are:

* switches (``store_true`` options such as ``--warm_start``, ``--bounded``): argparse refuses
  ``--warm_start=true``, so ``--x=true`` becomes ``--x`` and ``--x=false`` is dropped;
* ``--kafka_config``: the streaming job opens it as a local file, so a ``gs://`` (or any other
  Beam ``FileSystems``) path is copied to a private local temporary file first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence

TRUE = {"true", "1", "yes", "y", "on"}
FALSE = {"false", "0", "no", "n", "off", ""}


def switches(options_class: type) -> set[str]:
    """The ``store_true`` flags (``--name``) of ``options_class`` and the option classes it
    inherits, and of Beam's standard options."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    parser = argparse.ArgumentParser(add_help=False)
    for cls in {*options_class.mro(), StandardOptions}:
        if "_add_argparse_args" in cls.__dict__ and cls is not PipelineOptions:
            cls._add_argparse_args(parser)
    return {
        flag
        for action in parser._actions
        if isinstance(action, argparse._StoreTrueAction)
        for flag in action.option_strings
    }


def fix_switches(argv: Sequence[str], flags: set[str]) -> list[str]:
    """``--flag=true`` -> ``--flag``; ``--flag=false`` dropped, for every flag in ``flags``.

    Raises:
        ValueError: for a switch whose value is not a boolean word.
    """
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if eq and name in flags:
            word = value.strip().lower()
            if word in TRUE:
                out.append(name)
            elif word not in FALSE:
                raise ValueError(f"{name} is a switch: give true or false, not {value!r}")
            continue
        out.append(arg)
    return out


def localize_file_option(argv: Sequence[str], flag: str) -> list[str]:
    """Copy the file that ``--flag=PATH`` names to a local temporary file (mode 0600) when
    PATH is not a local file (``gs://``, ``s3://``, ...), and point the flag at the copy."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if eq and name == flag and value and not os.path.exists(value):
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.open(value) as src:
                data = src.read()
            fd, local = tempfile.mkstemp(prefix="ae-pipeline-", suffix=os.path.basename(value))
            with os.fdopen(fd, "wb") as dst:  # mkstemp creates it with mode 0600
                dst.write(data)
            arg = f"{flag}={local}"
        out.append(arg)
    return out

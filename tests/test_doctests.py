"""Every docstring example in the package and the jobs runs (those that need a broker or a
runner say ``# doctest: +SKIP``); ``tests/models/test_models_package.py`` does the same for
``ae_pipeline.models`` with its own checks."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import ae_pipeline
import pipelines


def _modules() -> list[str]:
    names = []
    for package in (ae_pipeline, pipelines):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if not info.name.startswith("ae_pipeline.models"):
                names.append(info.name)
    return sorted(names)


MODULES = _modules()


def test_the_walk_finds_the_layers():
    assert {"ae_pipeline.serving.model", "ae_pipeline.beam.kafka_read", "pipelines.stream"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

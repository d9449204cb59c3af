"""Package-level guarantees: runnable docstring examples, no Beam/Kafka, no pickle."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import ae_pipeline.artifact
import ae_pipeline.models

MODULES = [
    importlib.import_module(f"ae_pipeline.models.{info.name}")
    for info in pkgutil.iter_modules(ae_pipeline.models.__path__)
]
SOURCES = [Path(m.__file__) for m in [ae_pipeline.models, *MODULES, ae_pipeline.artifact]]


@pytest.mark.parametrize(
    "module", [ae_pipeline.models, *MODULES, ae_pipeline.artifact], ids=lambda m: m.__name__
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_pickle_no_torch_load_no_beam_or_kafka_in_models(path):
    text = path.read_text()
    assert not re.search(
        r"(?<!safetensors\.)torch\.load\(|^\s*import pickle|^\s*from pickle|cloudpickle|dill",
        text,
        re.M,
    )
    if path.parent.name == "models":
        assert not re.search(r"^\s*(import|from) (apache_beam|kafka|confluent_kafka)", text, re.M)

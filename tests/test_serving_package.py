"""The names ``ae_pipeline.serving`` had still import from it: hot reload's, which moved to
:mod:`ae_pipeline.hot_reload`, load lazily (that module builds on the package)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ae_pipeline.hot_reload
import ae_pipeline.serving


def test_hot_reload_names_still_import_from_serving():
    from ae_pipeline.serving import FixedModel, ModelWatcher, open_model

    assert FixedModel is ae_pipeline.hot_reload.FixedModel
    assert ModelWatcher is ae_pipeline.hot_reload.ModelWatcher
    assert open_model is ae_pipeline.hot_reload.open_model
    assert {"FixedModel", "ModelWatcher", "open_model"} <= set(ae_pipeline.serving.__all__)
    namespace: dict = {}
    exec("from ae_pipeline.serving import *", namespace)
    assert set(ae_pipeline.serving.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'ModelWatchers'"):
        ae_pipeline.serving.ModelWatchers  # noqa: B018


def test_importing_serving_alone_does_not_load_hot_reload_and_the_names_load_on_use():
    code = (
        "import sys, ae_pipeline.serving as s; "
        "print('ae_pipeline.hot_reload' in sys.modules); "
        "from ae_pipeline.serving import FixedModel, ModelWatcher, open_model; "
        "import ae_pipeline.hot_reload as h; "
        "print(FixedModel is h.FixedModel and ModelWatcher is h.ModelWatcher "
        "and open_model is h.open_model)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]

"""``ARCHITECTURE.md`` stays true as modules come and go: every module of ``ae_pipeline/`` is
named in its table of modules, and every module the table names exists.

A row's first cell names modules in backticks; a name without a folder is in the folder of the
name before it in the cell (``models/base.py``, ``mlp.py``). ``local/`` (the local broker,
runners and jars for tests and demos, which the library never imports) is described as a whole
in the layers, not module by module.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ae_pipeline"
DOC = REPO / "ARCHITECTURE.md"
AS_A_WHOLE = ("local/",)


def named_in_table(text: str) -> set[str]:
    """The module paths (relative to ``ae_pipeline/``) that the table's first cells name."""
    named = set()
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        folder = ""
        for name in re.findall(r"`([\w/]+\.py)`", line.split("|")[1]):
            if "/" in name:
                folder = name.rpartition("/")[0] + "/"
                named.add(name)
            else:
                named.add(folder + name)
    return named


def modules() -> set[str]:
    return {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }


def test_the_reader_resolves_names_against_the_folder_before_them():
    text = "| `models/base.py`, `mlp.py` | x |\n| `registry.py` | y |\n| module | owns |\n"
    assert named_in_table(text) == {"models/base.py", "models/mlp.py", "registry.py"}


def test_every_module_is_named_in_the_architecture_doc():
    text = DOC.read_text()
    for folder in AS_A_WHOLE:
        assert f"ae_pipeline/{folder}" in text, f"the layers no longer describe {folder}"
    found = modules()
    assert len(found) > 80
    missing = sorted(m for m in found - named_in_table(text) if not m.startswith(AS_A_WHOLE))
    assert not missing, f"ARCHITECTURE.md's table of modules lacks {missing}"


def test_every_module_the_doc_names_exists():
    stale = sorted(named_in_table(DOC.read_text()) - modules())
    assert not stale, f"ARCHITECTURE.md names modules that are gone: {stale}"

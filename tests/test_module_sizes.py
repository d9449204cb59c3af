"""One concept per module: a module of ``ae_pipeline`` over 500 lines says why in its docstring
(a paragraph starting "Size ("), so that growth past it is a decision, not drift."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ae_pipeline"
LIMIT = 500


def test_a_module_over_500_lines_says_why():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines <= LIMIT:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "Size (" not in doc:
            unexplained.append(f"{path.relative_to(PACKAGE.parent)} ({lines} lines)")
    assert not unexplained, "split these modules or say why in their docstring: " + ", ".join(
        unexplained
    )

"""Two checkouts on one machine each run their own code from one shared venv.

deploy/local/checkout_venv.sh layers a small ``.venv`` per checkout on the shared (cached) venv
that holds the dependencies; this test builds two such checkouts on the venv running it and
asks each interpreter where ``ae_pipeline`` comes from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "local" / "checkout_venv.sh"


def _shared_venv() -> Path:
    """The venv holding the dependencies: this checkout's base, or (old layout) sys.prefix."""
    base = Path(sys.prefix) / ".base"
    return Path(base.read_text().strip()) if base.exists() else Path(sys.prefix)


def _checkout(folder: Path, name: str) -> Path:
    """A minimal checkout: this project's pyproject.toml and two one-line packages."""
    folder.mkdir()
    (folder / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (folder / "README.md").write_text(name)
    for package in ("ae_pipeline", "pipelines"):
        (folder / package).mkdir()
        (folder / package / "__init__.py").write_text(f"CHECKOUT = {name!r}\n")
    return folder


def _ask(python: Path, code: str, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(
        [str(python), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_each_checkout_runs_its_own_code_on_the_shared_venv(tmp_path):
    base = _shared_venv()
    checkouts = [_checkout(tmp_path / n, n) for n in ("clone_a", "clone_b")]
    for checkout in checkouts:
        done = subprocess.run(
            ["bash", str(SCRIPT), str(base), str(checkout)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"  # not a checkout: the working directory is no help
    elsewhere.mkdir()
    code = (
        "import json, sys, ae_pipeline, pipelines, msgspec; "
        "print(json.dumps([ae_pipeline.CHECKOUT, pipelines.CHECKOUT, msgspec.__file__, "
        "sys.prefix]))"
    )
    for checkout in checkouts:
        venv = checkout / ".venv"
        own, own_pipelines, dependency, prefix = _ask(venv / "bin" / "python", code, elsewhere)
        assert (own, own_pipelines) == (checkout.name, checkout.name)
        assert Path(prefix) == venv
        assert Path(dependency).resolve().is_relative_to(base.resolve())  # shared, not copied
        # The tools: the CLI and pip run this venv's interpreter; ruff is the shared binary.
        for tool in ("ae-pipeline", "pip"):
            first = (venv / "bin" / tool).read_text().splitlines()[0]
            assert first == f"#!{venv}/bin/python", (tool, first)
        ruff = subprocess.run([str(venv / "bin" / "ruff"), "--version"], capture_output=True)
        assert ruff.returncode == 0
    # Running it again changes nothing and keeps each checkout's own code.
    again = subprocess.run(["bash", str(SCRIPT), str(base), str(checkouts[0])], timeout=120)
    assert again.returncode == 0
    python = checkouts[0] / ".venv" / "bin" / "python"
    assert _ask(python, code, elsewhere)[0] == "clone_a"

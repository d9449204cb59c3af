"""The package as its users get it: an sdist and a wheel built with ``python -m build`` and
checked with ``twine check``; the wheel installed (not editable, the checkout nowhere on the
path) into a fresh virtual environment with the newest Beam, where ``ae-pipeline --help``, a
small training job and a bounded scoring pipeline on FnApiRunner run.

The fresh environment holds only what ``pip install "ae-pipeline[fast]"`` brings, resolved by
pip from the wheel's metadata (``deploy/local/wheel_env.sh``, built once by ``make setup`` and
cached; torch is not downloaded again). Each test run installs the wheel it just built into a
hard-link copy of it.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kit.beam_envs import NEWEST
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
FNAPI = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def _run(cmd: list[str], timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def _cache() -> Path:
    return Path(os.environ.get("AE_PIPELINE_CACHE", Path.home() / ".cache" / "ae-pipeline"))


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel, built from a copy of the checkout's files (git's view: tracked
    and new, not ignored), the wheel from the sdist (``python -m build``'s default)."""
    src = tmp_path_factory.mktemp("src")
    files = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (setuptools, pinned in the lock) is already here;
    # the test downloads nothing.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)])
    (sdist,) = out.glob("ae_pipeline-*.tar.gz")
    (wheel,) = out.glob("ae_pipeline-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_twine_check_passes(dist):
    done = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.values())])
    assert done.stdout.count("PASSED") == 2


def test_the_wheel_holds_the_code_and_declares_ranges_not_pins(dist):
    with zipfile.ZipFile(dist["wheel"]) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(info).decode())
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"ae_pipeline", "pipelines"}, tops  # no tests, no deploy/, no data
    # Every module of the checkout's packages is in it (nothing lost by package discovery).
    ours = {str(p.relative_to(ROOT)) for d in tops for p in (ROOT / d).rglob("*.py")}
    assert ours <= set(names), sorted(ours - set(names))[:10]
    assert "ae-pipeline = ae_pipeline.cli:main" in entry_points
    requires = meta.get_all("Requires-Dist")
    beam = [r for r in requires if r.startswith("apache-beam")]
    assert beam and ">=2.62.0" in beam[0] and "<3" in beam[0], beam
    pinned = [
        r for r in requires if any(s.operator in ("==", "===") for s in Requirement(r).specifier)
    ]
    assert not pinned, f"a plugin does not pin, it takes ranges: {pinned}"
    assert set(meta.get_all("Provides-Extra")) >= {"fast", "test"}
    assert meta["Requires-Python"] and meta["License-Expression"] == "Apache-2.0"


def test_the_sdist_builds_the_same_package(dist):
    with tarfile.open(dist["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "ae_pipeline/__init__.py", "pipelines/train.py"} <= names


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """A fresh venv with ``ae-pipeline[fast]`` installed from the wheel; returns its bin/."""
    built = _run(
        ["bash", str(ROOT / "deploy" / "local" / "wheel_env.sh"), sys.prefix], timeout=1800
    ).stdout.strip()
    venv = tmp_path_factory.mktemp("wheelenv") / "venv"
    # Hard links: seconds for a few GB. pip and Python replace files, never edit them in place.
    _run(["cp", "-al", built, str(venv)])
    python = venv / "bin" / "python"
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(_cache() / "wheels"),
            "-c",
            str(LOCK),
            f"{dist['wheel']}[fast]",
        ]
    )
    _run([str(python), "-m", "pip", "check"])
    return venv / "bin"


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH, no venv of ours: only the installed package can answer."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_installed_wheel_is_not_the_checkout(installed, tmp_path):
    code = (
        "import json, sys, apache_beam, ae_pipeline, confluent_kafka; "
        "print(json.dumps([ae_pipeline.__file__, apache_beam.__version__, sys.path]))"
    )
    where, beam, path = json.loads(
        _run([str(installed / "python"), "-c", code], cwd=tmp_path, env=_clean_env()).stdout
    )
    assert Path(where).resolve().is_relative_to(installed.parent.resolve())
    assert not Path(where).resolve().is_relative_to(ROOT)
    assert not any(p and Path(p).resolve().is_relative_to(ROOT) for p in path)
    assert beam == NEWEST


def test_installed_wheel_keeps_its_logs_in_the_users_cache(installed, tmp_path):
    """Installed, the checkout's ``logs/`` would be ``site-packages/logs``: the local tools'
    logs go to ``$AE_PIPELINE_CACHE/logs`` instead."""
    code = (
        "import json; from ae_pipeline.local import paths; "
        "print(json.dumps([str(paths.checkout_root()), str(paths.logs_dir())]))"
    )
    env = {**_clean_env(), "AE_PIPELINE_CACHE": str(tmp_path / "cache")}
    env.pop("AE_PIPELINE_LOGS", None)
    root, logs = json.loads(
        _run([str(installed / "python"), "-c", code], cwd=tmp_path, env=env).stdout
    )
    assert root == "None"
    assert Path(logs) == tmp_path / "cache" / "logs" and Path(logs).is_dir()
    assert not any(installed.parent.glob("lib/python*/site-packages/logs"))


def test_installed_cli_trains_and_scores_on_fnapi(installed, tmp_path):
    rng = np.random.default_rng(0)
    n, cols = 400, [f"f{i}" for i in range(6)]
    latent = rng.normal(size=(n, 2))
    values = latent @ rng.normal(size=(2, 6)) + 0.05 * rng.normal(size=(n, 6))
    data = tmp_path / "data"
    data.mkdir()
    table = pa.table({"id": np.arange(n), **{c: values[:, i] for i, c in enumerate(cols)}})
    pq.write_table(table, data / "part-0.parquet")
    cli = str(installed / "ae-pipeline")
    env = _clean_env()

    help_text = _run([cli, "--help"], cwd=tmp_path, env=env).stdout
    assert "train" in help_text and "score" in help_text

    _run(
        [
            cli,
            "train",
            "--input",
            str(data),
            "--model_root",
            str(tmp_path / "models"),
            "--key_column",
            "id",
            "--hidden_dims",
            "8",
            "--latent_dim",
            "2",
            "--epochs",
            "3",
            "--runner",
            FNAPI,
        ],
        cwd=tmp_path,
        env=env,
    )
    versions = [p for p in (tmp_path / "models").iterdir() if not p.name.startswith((".", "_"))]
    assert versions, "training published no version"

    done = _run(
        [
            cli,
            "score",
            "--input",
            str(data),
            "--model_root",
            str(tmp_path / "models"),
            "--output",
            str(tmp_path / "flags"),
            "--key_column",
            "id",
            "--runner",
            FNAPI,
        ],
        cwd=tmp_path,
        env=env,
    )
    assert f"scored {n} rows" in done.stdout + done.stderr
    scored = pq.read_table(sorted((tmp_path / "flags").glob("*.parquet"))).to_pydict()
    assert sorted(scored["id"]) == list(range(n))
    assert all(np.isfinite(scored["score"]))

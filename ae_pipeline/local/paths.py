"""Where ``deploy/local/bootstrap.sh`` put the local tools: jars, the Prism binary, logs."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_LOCAL = REPO_ROOT / "deploy" / "local"


class LocalToolMissing(RuntimeError):
    """A local tool (jar classpath, Prism binary) is not installed; says how to install it."""


def cache_dir() -> Path:
    """The ae-pipeline cache: ``$AE_PIPELINE_CACHE`` or ``~/.cache/ae-pipeline``."""
    return Path(os.environ.get("AE_PIPELINE_CACHE", Path.home() / ".cache" / "ae-pipeline"))


def checkout_root() -> Path | None:
    """The repository this code runs from, or None when it runs installed (from the wheel).

    ``REPO_ROOT`` is two levels above this file: the checkout when ae-pipeline runs from one,
    ``site-packages`` when it is installed, where neither ``pyproject.toml`` nor ``deploy/``
    sits beside the package.
    """
    if (REPO_ROOT / "pyproject.toml").is_file() and DEPLOY_LOCAL.is_dir():
        return REPO_ROOT
    return None


def logs_dir() -> Path:
    """Where local servers keep their logs, created if missing.

    ``$AE_PIPELINE_LOGS`` if set; else ``<repo>/logs`` when running from a checkout; else
    (installed from the wheel, where ``<repo>`` would be ``site-packages``)
    ``<cache_dir()>/logs``, which the user can write.
    """
    if "AE_PIPELINE_LOGS" in os.environ:
        path = Path(os.environ["AE_PIPELINE_LOGS"])
    else:
        root = checkout_root()
        path = root / "logs" if root is not None else cache_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def classpath_dir(name: str) -> Path:
    """The resolved classpath directory for ``deploy/local/<name>/pom.xml``.

    Raises:
        LocalToolMissing: when ``make setup`` has not resolved it yet.
    """
    pom = DEPLOY_LOCAL / name / "pom.xml"
    root = cache_dir() / "jars"
    if pom.exists():
        key = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
        candidate = root / f"{name}-{key}"
        if (candidate / ".complete").exists():
            return candidate
    else:  # installed without the repository: take the newest complete one
        # exactly <name>-<12 hex digits>: "flink" must not match "flink-dist-..."
        exact = re.compile(rf"{re.escape(name)}-[0-9a-f]{{12}}")
        found = sorted(
            (
                p
                for p in root.glob(f"{name}-*")
                if exact.fullmatch(p.name) and (p / ".complete").exists()
            ),
            key=lambda p: p.stat().st_mtime,
        )
        if found:
            return found[-1]
    raise LocalToolMissing(
        f"the {name!r} Java classpath is not in {root}; run `make setup` "
        f"(deploy/local/bootstrap.sh) to resolve it from Maven"
    )


def classpath(name: str) -> str:
    """A ``java -cp`` string with every jar of the named classpath."""
    lib = classpath_dir(name) / "lib"
    return os.pathsep.join(str(p) for p in sorted(lib.glob("*.jar")))


def launcher_jar(name: str) -> Path:
    """The thin launcher jar (manifest Class-Path) for a Java server Beam starts with -jar."""
    jar = classpath_dir(name) / f"{name}-launcher.jar"
    if not jar.exists():
        raise LocalToolMissing(f"{jar} is missing; run `make setup`")
    return jar


def prism_binary(beam_version: str | None = None) -> Path:
    """The Prism runner binary built for the installed Beam version."""
    if beam_version is None:
        import apache_beam

        beam_version = apache_beam.__version__
    path = cache_dir() / "bin" / f"prism-v{beam_version}"
    if not path.exists():
        raise LocalToolMissing(
            f"Prism v{beam_version} is not at {path}; run `make setup` to build it with go install"
        )
    return path

#!/usr/bin/env bash
# The environment the installed-wheel test (tests/packaging) runs in: a fresh venv (not layered,
# no checkout, no test tools) holding only what `pip install ae-pipeline` brings next to the
# newest Beam: `pip install "ae-pipeline[fast]"`'s dependencies, resolved by pip from the wheel's own metadata, offline,
# from a wheelhouse of PyPI downloads, at the versions of requirements/lock.txt (which pins
# apache-beam==2.77.0). ae-pipeline itself is uninstalled again: the test installs the wheel it
# builds from the checkout into a hard-link copy of this venv (seconds, no download).
#
# Cached: $CACHE/venvs/wheel-py<ver>-<hash of this file, lock.txt, pyproject's dependencies>; the wheelhouse
# $CACHE/wheels keeps every download (torch's few GB once), so a new lock fetches only new pins.
# Usage: wheel_env.sh VENV   (VENV: a venv with `build` and pip; prints the env's path)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${AE_PIPELINE_CACHE:-$HOME/.cache/ae-pipeline}"
VENV="$1"
PY="$(readlink -f "$VENV/bin/python")"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
# The key: this recipe, the lock and what pyproject.toml says the wheel depends on (not its
# markers, ruff settings...).
KEY="$({ cat "${BASH_SOURCE[0]}" "$ROOT/requirements/lock.txt"; "$PY" - "$ROOT/pyproject.toml" <<'PY'
import json, sys
try:
    import tomllib
    project = tomllib.load(open(sys.argv[1], "rb"))["project"]
    keep = ("dependencies", "optional-dependencies", "requires-python", "scripts")
    print(json.dumps({k: project.get(k) for k in keep}, sort_keys=True))
except ImportError:  # Python 3.10: the whole file
    print(open(sys.argv[1]).read())
PY
} | sha256sum | cut -c1-12)"
ENV="$CACHE/venvs/wheel-py$PYVER-$KEY"
WHEELS="$CACHE/wheels"
if [ ! -f "$ENV/.complete" ]; then
  echo "bootstrap: creating $ENV (the installed-wheel test's environment)" >&2
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  # The wheel, built from a copy of the checkout's files (the checkout stays clean).
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- pyproject.toml \
     README.md ae_pipeline pipelines | xargs -0 cp --parents -t "$TMP" 2>/dev/null) \
    || cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/ae_pipeline" "$ROOT/pipelines" "$TMP"
  "$VENV/bin/python" -m build --wheel --no-isolation --outdir "$TMP/dist" "$TMP" >/dev/null
  WHEEL="$(ls "$TMP"/dist/ae_pipeline-*.whl)"
  mkdir -p "$WHEELS"
  # Only what is not in the wheelhouse yet is downloaded (pip says "already downloaded").
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check -d "$WHEELS" \
    -c "$ROOT/requirements/lock.txt" "$WHEEL[fast]" >&2
  rm -rf "$ENV"
  "$PY" -m venv "$ENV"
  "$ENV/bin/pip" install --quiet --disable-pip-version-check --no-index --find-links "$WHEELS" \
    -c "$ROOT/requirements/lock.txt" "$WHEEL[fast]" >&2
  "$ENV/bin/pip" check --disable-pip-version-check >&2
  "$ENV/bin/pip" uninstall --quiet --disable-pip-version-check -y ae-pipeline >&2
  touch "$ENV/.complete"
fi
echo "$ENV"

#!/usr/bin/env bash
# This checkout's own virtual environment, ROOT/.venv: a small venv layered on a shared one.
# Usage: checkout_venv.sh BASE_VENV [ROOT [NAME]]   (bootstrap.sh calls it; idempotent, seconds)
# NAME (default .venv) is the folder under ROOT: bootstrap.sh also makes .venv-beam-2.62.
#
# BASE_VENV (in the cache, keyed by requirements/lock.txt) holds the dependencies and never a
# checkout. ROOT/.venv is a venv of the same Python whose site-packages name BASE_VENV's through
# a .pth file (site.addsitedir), hold this checkout in editable mode, and whose bin/ has
# BASE_VENV's tools (ruff, pytest, pip...) pointed at ROOT/.venv/bin/python. So two clones on one
# machine share the base (torch is downloaded once) and each runs its own code; packages added
# later with ROOT/.venv/bin/pip land in ROOT/.venv, never in the shared base.
set -euo pipefail
BASE="$(cd "$1" && pwd -P)"
ROOT="$(cd "${2:-$(dirname "${BASH_SOURCE[0]}")/../..}" && pwd -P)"
LOCAL="$ROOT/${3:-.venv}"
[ -x "$BASE/bin/python" ] || { echo "checkout_venv: $BASE is not a virtual environment" >&2; exit 1; }

if [ -L "$LOCAL" ]; then
  rm "$LOCAL"  # the old layout: a link to the shared venv, which held one checkout for all
fi
if [ ! -x "$LOCAL/bin/python" ] || [ "$(cat "$LOCAL/.base" 2>/dev/null)" != "$BASE" ]; then
  rm -rf "$LOCAL"
  "$(readlink -f "$BASE/bin/python")" -m venv --without-pip "$LOCAL"
  echo "$BASE" > "$LOCAL/.base"
fi

purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
SITE="$(purelib "$LOCAL/bin/python")"
echo "import site; site.addsitedir('$(purelib "$BASE/bin/python")')" > "$SITE/zz_ae_pipeline_base.pth"

# The base's tools: scripts re-pointed at this venv's interpreter, binaries linked.
for tool in "$BASE"/bin/*; do
  name="$(basename "$tool")"
  case "$name" in python* | activate* | Activate.ps1 | ae-pipeline) continue ;; esac
  dest="$LOCAL/bin/$name"
  if head -n 1 "$tool" 2>/dev/null | grep -qF "#!$BASE/bin/python"; then
    { echo "#!$LOCAL/bin/python"; tail -n +2 "$tool"; } > "$dest.tmp"
    chmod +x "$dest.tmp"
    mv "$dest.tmp" "$dest"
  else
    ln -sfn "$tool" "$dest"
  fi
done

# This checkout, in editable mode, in its own venv only.
HERE="$("$LOCAL/bin/python" -c 'import ae_pipeline, pathlib; print(pathlib.Path(ae_pipeline.__file__).resolve().parent.parent)' 2>/dev/null || true)"
if [ "$HERE" != "$ROOT" ] || [ ! -x "$LOCAL/bin/ae-pipeline" ]; then
  "$LOCAL/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e "$ROOT"
fi

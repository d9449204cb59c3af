#!/usr/bin/env bash
# A side virtual environment with Beam 2.70 for apache_beam.ml.anomaly (see
# requirements/beam-anomaly.txt), linked as ./.venv-beam-anomaly. Its own site-packages come
# first; the main venv's (torch, ae-pipeline in editable mode, ...) follow through a .pth file.
# Usage: beam_anomaly_env.sh MAIN_VENV [--prism]   (bootstrap.sh calls it; idempotent, ~1 min
# the first time). --prism also builds Prism at the side Beam version (benchmarks; ~3 min once).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${AE_PIPELINE_CACHE:-$HOME/.cache/ae-pipeline}"
MAIN="$1"
WITH_PRISM="${2:-}"
KEY="$(cat "$ROOT/requirements/beam-anomaly.txt" | sha256sum | cut -c1-12)"
ENV="$CACHE/venvs/beam-anomaly-$KEY"
if [ ! -f "$ENV/.complete" ]; then
  echo "bootstrap: creating $ENV (Beam 2.70 side environment for apache_beam.ml.anomaly)"
  rm -rf "$ENV"
  "$(readlink -f "$MAIN/bin/python")" -m venv "$ENV"
  "$ENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    -r "$ROOT/requirements/beam-anomaly.txt"
  touch "$ENV/.complete"
fi
SITE="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
MAIN_SITE="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$MAIN_SITE')" > "$SITE/zz_ae_pipeline_main.pth"
ln -sfn "$ENV" "$ROOT/.venv-beam-anomaly"
"$ROOT/.venv-beam-anomaly/bin/python" -c \
  'import apache_beam.ml.anomaly, torch, ae_pipeline' \
  || { echo "bootstrap: the Beam anomaly side environment is broken: rm -rf $ENV" >&2; exit 1; }

if [ "$WITH_PRISM" = "--prism" ]; then
  SIDE_BEAM="$("$ROOT/.venv-beam-anomaly/bin/python" -c 'import apache_beam; print(apache_beam.__version__)')"
  bash "$ROOT/deploy/local/build_prism.sh" "$SIDE_BEAM"
fi

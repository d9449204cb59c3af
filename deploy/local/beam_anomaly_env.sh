#!/usr/bin/env bash
# A side virtual environment with Beam 2.70 for apache_beam.ml.anomaly (see
# requirements/beam-anomaly.txt), kept in the cache, and this checkout's ./.venv-beam-anomaly on
# top of it: the side packages come first; the checkout's main venv (torch, ae-pipeline in
# editable mode, ...) follows through a .pth file.
# Usage: beam_anomaly_env.sh MAIN_VENV [--prism]   (`make bench-deps` calls it for the benchmarks
# that still compare against Beam 2.70; the tests no longer need it: .venv has Beam 2.77, which
# has apache_beam.ml.anomaly. Idempotent, ~1 min the first time). --prism also builds Prism at
# the side Beam version (~3 min once).
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
# This checkout's own small venv, ./.venv-beam-anomaly: the side environment's packages first
# (Beam 2.70), then this checkout's main venv (its editable ae-pipeline, torch, ...), both named
# through a .pth file. Nothing of a checkout is written into the shared side environment, so two
# clones on one machine each run their own code here too.
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
rm -f "$(purelib "$ENV/bin/python")/zz_ae_pipeline_main.pth"  # the old layout wrote one there
LOCAL="$ROOT/.venv-beam-anomaly"
[ -L "$LOCAL" ] && rm "$LOCAL"  # the old layout: a link to the shared side environment
if [ ! -x "$LOCAL/bin/python" ] || [ "$(cat "$LOCAL/.base" 2>/dev/null)" != "$ENV" ]; then
  rm -rf "$LOCAL"
  "$(readlink -f "$ENV/bin/python")" -m venv --without-pip "$LOCAL"
  echo "$ENV" > "$LOCAL/.base"
fi
{
  echo "import site; site.addsitedir('$(purelib "$ENV/bin/python")')"
  echo "import site; site.addsitedir('$(purelib "$MAIN/bin/python")')"
} > "$(purelib "$LOCAL/bin/python")/zz_ae_pipeline_side.pth"
"$ROOT/.venv-beam-anomaly/bin/python" -c \
  'import apache_beam.ml.anomaly, torch, ae_pipeline' \
  || { echo "bootstrap: the Beam anomaly side environment is broken: rm -rf $ENV" >&2; exit 1; }

if [ "$WITH_PRISM" = "--prism" ]; then
  SIDE_BEAM="$("$ROOT/.venv-beam-anomaly/bin/python" -c 'import apache_beam; print(apache_beam.__version__)')"
  bash "$ROOT/deploy/local/build_prism.sh" "$SIDE_BEAM"
fi

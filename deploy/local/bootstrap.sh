#!/usr/bin/env bash
# Sets up everything `make test` and `make demo` need, idempotently and fast on a second run:
#   1. a Python virtual environment built from requirements/lock.txt, kept in the cache
#      (keyed by the lock file's hash, so a clean clone reuses it instead of re-downloading torch),
#      linked as ./.venv, with this checkout installed into it in editable mode;
#   2. the Java classpaths of the Kafka broker, the Beam Flink job server and the Beam KafkaIO
#      expansion service, resolved by Maven from deploy/local/*/pom.xml (fetch_jars.py);
#   3. the Prism runner binary, built from the Go module proxy at the pinned Beam version.
# Cache: $AE_PIPELINE_CACHE, default ~/.cache/ae-pipeline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${AE_PIPELINE_CACHE:-$HOME/.cache/ae-pipeline}"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$CACHE"

need() { command -v "$1" >/dev/null 2>&1 || { echo "bootstrap: '$1' not found: $2" >&2; exit 1; }; }
need "$PYTHON" "install Python 3.11 (or set PYTHON=/path/to/python3.x, 3.10-3.12)"
need java "install Java 17 (OpenJDK)"
need mvn "install Apache Maven 3.8+"
need go "install Go 1.22+"

# ---- 0. offline data sets from Debian's packages (Fashion-MNIST for tests and benchmarks) ------
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing Debian package dataset-fashion-mnist"
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
      { apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; })
  else
    echo "bootstrap: Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2
    exit 1
  fi
fi

# ---- 1. virtual environment -------------------------------------------------------------------
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
KEY="$(cat "$ROOT/requirements/lock.txt" | sha256sum | cut -c1-12)"
VENV="$CACHE/venvs/py$PYVER-$KEY"
if [ ! -f "$VENV/.complete" ]; then
  echo "bootstrap: creating $VENV (first run downloads torch, a few GB; later runs reuse it)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements/lock.txt"
  touch "$VENV/.complete"
fi
ln -sfn "$VENV" "$ROOT/.venv"
# Editable install of this checkout (cheap; re-pointed when the cached venv served another clone).
HERE="$("$VENV/bin/python" -c 'import ae_pipeline, pathlib; print(pathlib.Path(ae_pipeline.__file__).resolve().parent.parent)' 2>/dev/null || true)"
if [ "$HERE" != "$ROOT" ] || [ ! -x "$VENV/bin/ae-pipeline" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
fi

# ---- 2. Java classpaths -----------------------------------------------------------------------
"$VENV/bin/python" "$ROOT/deploy/local/fetch_jars.py" --cache "$CACHE"

# ---- 3. Prism ---------------------------------------------------------------------------------
BEAM_VERSION="$("$VENV/bin/python" -c 'import apache_beam; print(apache_beam.__version__)')"
bash "$ROOT/deploy/local/build_prism.sh" "$BEAM_VERSION"
# ---- 4. Beam side environment for apache_beam.ml.anomaly (Beam 2.70; see its script) ---------
bash "$ROOT/deploy/local/beam_anomaly_env.sh" "$VENV"
echo "bootstrap: ready (venv $VENV, cache $CACHE)"

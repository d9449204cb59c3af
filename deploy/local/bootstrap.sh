#!/usr/bin/env bash
# Sets up everything `make test` and `make demo` need, idempotently and fast on a second run:
#   1. a Python virtual environment built from requirements/lock.txt, kept in the cache
#      (keyed by the lock file's hash, so a clean clone reuses it instead of re-downloading torch),
#      and this checkout's own ./.venv layered on it, with this checkout in editable mode
#      (two clones on one machine each run their own code); `--venv-only` stops after this;
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

# ---- 1. virtual environments -------------------------------------------------------------------
# The dependencies live in a venv in the cache, keyed by the lock file's hash and shared by every
# checkout (it never holds a checkout); each checkout gets its own small ./.venv on top of it
# (checkout_venv.sh), with itself in editable mode. A new lock's venv starts as hard links of the
# newest cached one, so only the pins that changed are downloaded (not torch again).
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
KEY="$(cat "$ROOT/requirements/lock.txt" | sha256sum | cut -c1-12)"
BASE="$CACHE/venvs/py$PYVER-$KEY"
if [ ! -f "$BASE/.complete" ]; then
  rm -rf "$BASE"
  mkdir -p "$CACHE/venvs"
  SEED="$(ls -td "$CACHE"/venvs/py"$PYVER"-*/.complete 2>/dev/null | head -n 1 | xargs -r dirname)"
  if [ -n "$SEED" ] && cp -al "$SEED" "$BASE" 2>/dev/null; then
    echo "bootstrap: creating $BASE from $SEED (hard links; only changed pins are downloaded)"
    rm -f "$BASE/.complete"
    # Files are shared with the seed: replace (never edit in place) what names the seed's path.
    grep -lF "$SEED/bin/python" "$BASE"/bin/* 2>/dev/null | while read -r f; do
      sed "s|$SEED/bin/python|$BASE/bin/python|" "$f" > "$f.tmp" && chmod +x "$f.tmp" && mv "$f.tmp" "$f"
    done
    find "$BASE" -name __pycache__ -type d -prune -exec rm -rf {} +
  else
    rm -rf "$BASE"
    echo "bootstrap: creating $BASE (first run downloads torch, a few GB; later runs reuse it)"
    "$PYTHON" -m venv "$BASE"
  fi
  "$BASE/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements/lock.txt"
  # Only what the lock names (plus pip/setuptools/wheel): no seed leftovers, no checkout.
  EXTRA="$("$BASE/bin/python" - "$ROOT/requirements/lock.txt" <<'PY'
import importlib.metadata as md, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(l.split("==")[0]) for l in open(sys.argv[1]) if "==" in l}
installed = {norm(d.metadata["Name"]) for d in md.distributions()}
print(" ".join(sorted(installed - locked - {"pip", "setuptools", "wheel"})))
PY
)"
  if [ -n "$EXTRA" ]; then
    "$BASE/bin/pip" uninstall --quiet --disable-pip-version-check -y $EXTRA
  fi
  touch "$BASE/.complete"
fi
bash "$ROOT/deploy/local/checkout_venv.sh" "$BASE" "$ROOT"
VENV="$ROOT/.venv"
if [ "${1:-}" = "--venv-only" ]; then
  echo "bootstrap: venv ready ($VENV on $BASE)"
  exit 0
fi

# ---- 2. Java classpaths -----------------------------------------------------------------------
"$VENV/bin/python" "$ROOT/deploy/local/fetch_jars.py" --cache "$CACHE"

# ---- 3. Prism ---------------------------------------------------------------------------------
BEAM_VERSION="$("$VENV/bin/python" -c 'import apache_beam; print(apache_beam.__version__)')"
bash "$ROOT/deploy/local/build_prism.sh" "$BEAM_VERSION"
# ---- 4. Beam side environment for apache_beam.ml.anomaly (Beam 2.70; see its script) ---------
bash "$ROOT/deploy/local/beam_anomaly_env.sh" "$VENV"
echo "bootstrap: ready (venv $VENV on $BASE, cache $CACHE)"

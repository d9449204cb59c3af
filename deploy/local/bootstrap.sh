#!/usr/bin/env bash
# Sets up everything `make test` and `make demo` need, idempotently and fast on a second run:
#   1. two Python virtual environments, each kept in the cache (keyed by its lock's hash, so a
#      clean clone reuses it instead of re-downloading torch), with this checkout's own small
#      venv layered on it, this checkout in editable mode (two clones on one machine each run
#      their own code): ./.venv (Beam 2.77.0, requirements/lock.txt) and ./.venv-beam-2.62 (the
#      Flink-compatible Beam 2.62.0, requirements/beam-2.62.txt over the lock); `pip check` passes
#      in each; `--venv-only` stops after this;
#   2. the Java classpaths of the Kafka broker, the Beam Flink job server and the Beam KafkaIO
#      expansion service (Beam 2.62.0), resolved by Maven from deploy/local/*/pom.xml;
#   3. the Prism runner binary at each environment's Beam version, from the Go module proxy;
#   4. the cached environment the installed-wheel test runs in (deploy/local/wheel_env.sh);
#   5. the Airflow side environment for the DAG import test (deploy/local/airflow_env.sh).
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
# Two environments, each a venv in the cache keyed by its lock's hash and shared by every checkout
# (it never holds a checkout), with this checkout's own small venv on top of it (checkout_venv.sh,
# itself in editable mode):
#   .venv            requirements/lock.txt: Beam 2.77.0, the newest release (most of the tests);
#   .venv-beam-2.62  requirements/lock.txt with requirements/beam-2.62.txt laid over it: Beam
#                    2.62.0, the newest whose Flink and KafkaIO Java jars Maven serves here (the
#                    Flink and Java cross-language tests).
# A new lock's venv starts as hard links of the newest cached one, so only the pins that differ
# are downloaded (not torch again). `pip check` must pass in each.
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
mkdir -p "$CACHE/venvs" "$CACHE/locks"

# compose_lock OVERLAY: requirements/lock.txt with OVERLAY's pins in place of the same names (or
# added), written to the cache; prints its path.
compose_lock() {
  "$PYTHON" - "$ROOT/requirements/lock.txt" "$1" "$CACHE/locks" <<'PY'
import hashlib, pathlib, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
def pins(path):
    out = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            out[norm(line.split("==")[0].split("[")[0])] = line
    return out
lock = pins(sys.argv[1])
lock.update(pins(sys.argv[2]))
text = "".join(f"{line}\n" for _, line in sorted(lock.items()))
key = hashlib.sha256(text.encode()).hexdigest()[:12]
path = pathlib.Path(sys.argv[3]) / f"{pathlib.Path(sys.argv[2]).stem}-{key}.txt"
path.write_text(text)
print(path)
PY
}

# base_venv LOCK: the cached venv holding exactly LOCK's pins (plus pip/setuptools/wheel); prints
# its path (progress goes to stderr).
base_venv() {
  local lock="$1" key base seed extra
  key="$(sha256sum < "$lock" | cut -c1-12)"
  base="$CACHE/venvs/py$PYVER-$key"
  if [ ! -f "$base/.complete" ]; then
    rm -rf "$base"
    seed="$(ls -td "$CACHE"/venvs/py"$PYVER"-*/.complete 2>/dev/null | head -n 1 | xargs -r dirname)"
    if [ -n "$seed" ] && cp -al "$seed" "$base" 2>/dev/null; then
      echo "bootstrap: creating $base from $seed (hard links; only changed pins are downloaded)" >&2
      rm -f "$base/.complete"
      # Files are shared with the seed: replace (never edit in place) what names the seed's path.
      grep -lF "$seed/bin/python" "$base"/bin/* 2>/dev/null | while read -r f; do
        sed "s|$seed/bin/python|$base/bin/python|" "$f" > "$f.tmp" && chmod +x "$f.tmp" && mv "$f.tmp" "$f"
      done
      find "$base" -name __pycache__ -type d -prune -exec rm -rf {} +
    else
      rm -rf "$base"
      echo "bootstrap: creating $base (first run downloads torch, a few GB; later runs reuse it)" >&2
      "$PYTHON" -m venv "$base"
    fi
    "$base/bin/pip" install --quiet --disable-pip-version-check -r "$lock" >&2
    # Only what the lock names (plus pip/setuptools/wheel): no seed leftovers, no checkout.
    extra="$("$base/bin/python" - "$lock" <<'PY'
import importlib.metadata as md, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(l.split("#")[0].split("==")[0]) for l in open(sys.argv[1]) if "==" in l.split("#")[0]}
installed = {norm(d.metadata["Name"]) for d in md.distributions()}
print(" ".join(sorted(installed - locked - {"pip", "setuptools", "wheel"})))
PY
)"
    if [ -n "$extra" ]; then
      # shellcheck disable=SC2086
      "$base/bin/pip" uninstall --quiet --disable-pip-version-check -y $extra >&2
    fi
    "$base/bin/pip" check --disable-pip-version-check >&2 \
      || { echo "bootstrap: pip check failed in $base (built from $lock)" >&2; exit 1; }
    cp "$lock" "$base/lock.txt"
    touch "$base/.complete"
  fi
  echo "$base"
}

# checkout_env BASE NAME: this checkout's NAME venv on BASE, and pip check there (that is where
# ae-pipeline's own requirements meet the lock).
checkout_env() {
  bash "$ROOT/deploy/local/checkout_venv.sh" "$1" "$ROOT" "$2"
  "$ROOT/$2/bin/python" -m pip check --disable-pip-version-check >/dev/null \
    || { "$ROOT/$2/bin/python" -m pip check; echo "bootstrap: pip check failed in $2" >&2; exit 1; }
}

BASE="$(base_venv "$ROOT/requirements/lock.txt")"
checkout_env "$BASE" .venv
VENV="$ROOT/.venv"
BASE_262="$(base_venv "$(compose_lock "$ROOT/requirements/beam-2.62.txt")")"
checkout_env "$BASE_262" .venv-beam-2.62
VENV_262="$ROOT/.venv-beam-2.62"
if [ "${1:-}" = "--venv-only" ]; then
  echo "bootstrap: venvs ready ($VENV on $BASE, $VENV_262 on $BASE_262)"
  exit 0
fi

# ---- 2. Java classpaths -----------------------------------------------------------------------
"$VENV/bin/python" "$ROOT/deploy/local/fetch_jars.py" --cache "$CACHE"

# ---- 3. Prism, at the Beam version of each environment ---------------------------------------
for venv in "$VENV" "$VENV_262"; do
  bash "$ROOT/deploy/local/build_prism.sh" \
    "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("apache-beam"))')"
done

# ---- 4. the installed-wheel environment (tests/packaging): ae-pipeline's dependencies only ----
bash "$ROOT/deploy/local/wheel_env.sh" "$VENV" >/dev/null
# ---- 5. the Airflow side environment (tests/deploy/test_deploy_schedule.py loads the DAGs) -----
bash "$ROOT/deploy/local/airflow_env.sh" "$PYTHON"
echo "bootstrap: ready (venvs $VENV on $BASE and $VENV_262 on $BASE_262, cache $CACHE)"

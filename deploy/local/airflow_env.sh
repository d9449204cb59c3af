#!/usr/bin/env bash
# A side virtual environment with Apache Airflow 3 and the provider packages the DAGs of
# deploy/schedule/ use (requirements/airflow.txt), kept in the cache and linked as this
# checkout's ./.venv-airflow. The tests import the DAG files there (DagBag); nothing of
# ae-pipeline is installed in it (the DAGs import only Airflow and its providers).
# Usage: airflow_env.sh PYTHON   (bootstrap.sh calls it; idempotent; ~5 minutes the first time,
# 2.2 GB, seconds afterwards).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${AE_PIPELINE_CACHE:-$HOME/.cache/ae-pipeline}"
PYTHON="$1"
KEY="$(sha256sum < "$ROOT/requirements/airflow.txt" | cut -c1-12)"
ENV="$CACHE/venvs/airflow-$KEY"
if [ ! -f "$ENV/.complete" ]; then
  echo "bootstrap: creating $ENV (Airflow and its providers, for the DAG import tests)"
  rm -rf "$ENV"
  "$PYTHON" -m venv "$ENV"
  "$ENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    -r "$ROOT/requirements/airflow.txt"
  "$ENV/bin/pip" check >/dev/null \
    || { echo "bootstrap: pip check failed in $ENV" >&2; "$ENV/bin/pip" check >&2; exit 1; }
  touch "$ENV/.complete"
fi
LINK="$ROOT/.venv-airflow"
if [ "$(readlink "$LINK" 2>/dev/null)" != "$ENV" ]; then
  rm -rf "$LINK"
  ln -s "$ENV" "$LINK"
fi
"$LINK/bin/python" -c 'import airflow.providers.apache.beam, airflow.providers.apache.kafka, airflow.providers.google' \
  || { echo "bootstrap: the Airflow side environment is broken: rm -rf $ENV" >&2; exit 1; }

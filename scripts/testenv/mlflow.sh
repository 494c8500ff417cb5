#!/usr/bin/env bash
# Print the path of a real `mlflow` command for tests (tests/integration/test_tracking.py), installed once into
# its OWN virtual environment:
#
#   bash scripts/testenv/mlflow.sh        -> /root/.cache/flowdpo/mlflow/3.17.2/venv/bin/mlflow
#
# Why not in the project's venv: the MLflow server (flask, sqlalchemy, alembic, pandas, scikit-learn, ...) is
# ~850 MB, and flowdpo itself talks to MLflow through its REST API (flowdpo/tracking.py) with no MLflow
# package. The venv is cached under ${FLOWDPO_CACHE:-$HOME/.cache/flowdpo}/mlflow/<version>/; set
# MLFLOW_VERSION to pin another release. Progress goes to stderr; stdout is only the path.
set -euo pipefail

version=${MLFLOW_VERSION:-3.17.2}
root=${FLOWDPO_CACHE:-$HOME/.cache/flowdpo}/mlflow/$version
bin=$root/venv/bin/mlflow
log() { echo "[mlflow.sh] $*" >&2; }

# `complete` is written last: a venv left by an interrupted install is rebuilt.
if [[ -x $bin && -f $root/complete ]]; then
  echo "$bin"; exit 0
fi
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [[ -x $bin && -f $root/complete ]]; then
  echo "$bin"; exit 0
fi
rm -rf "$root/venv"
log "installing mlflow==$version into its own venv (first time: a few minutes, ~850 MB)"
python3 -m venv "$root/venv"
"$root/venv/bin/pip" install -q --disable-pip-version-check "mlflow==$version" >&2
"$bin" --version >&2
touch "$root/complete"
log "cached $bin"
echo "$bin"

#!/usr/bin/env bash
# From a fresh clone: set up the environment (cached) and run the embedded default run
# (SmolLM2-135M-Instruct on reasoning-gym arithmetic, local storage under ./runs/quickstart).
#   bash scripts/quickstart.sh [flowdpo run args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/flowdpo run "$@"

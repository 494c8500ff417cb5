#!/usr/bin/env bash
# The whole pipeline on one run file: train the flow (online DPO), compile its traces into one model by SFT
# (plus the ground-truth and self-generated baselines), evaluate, and write the report.
#   bash scripts/reproduce.sh [RUN.yaml]        (default: docs/results/cpu-repro/run.yaml)
# Every step resumes where it stopped, so the script can be rerun after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-docs/results/cpu-repro/run.yaml}
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1
flowdpo=.venv/bin/flowdpo
start=$(date +%s)
$flowdpo run "$run" --no-report
$flowdpo compile "$run"
$flowdpo eval "$run"
$flowdpo report "$run"
echo "total wall time: $(( $(date +%s) - start )) s"

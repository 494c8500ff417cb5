#!/usr/bin/env bash
# The steps of run.sh after the main run, with the two evaluations side by side (one core each):
#   control run (returns at once when finished)
#   main run's compile, ALONE: its SFT takes 20-24 GB of this 24 GB machine (measured; beside another model
#   process it was killed for memory)
#   control run's eval (trained-flow row) + report  |  main run's eval (every row) + report
# then analyze.py. The same commands with the same files and settings as run.sh; only the order across the
# two runs differs (nothing of one run is read by the other's steps before analyze.py). Every step resumes
# from storage (a flow eval row block by block), so rerun it after an interruption.
#   bash docs/results/learning-experiment/run-parallel.sh [CHECKOUT]   (CHECKOUT: where run.sh ran; default here)
set -uo pipefail
root=${1:-$(cd "$(dirname "$0")/../../.." && pwd)}
cd "$root"
here=docs/results/learning-experiment
f=.venv/bin/flowdpo
export HF_HUB_OFFLINE=1
mkdir -p runs/logs
start=$(date +%s)
$f run $here/control.yaml --no-report --no-progress >> runs/logs/control-chain.log 2>&1 || exit 1
$f compile $here/run.yaml --no-progress >> runs/logs/main-chain.log 2>&1 || exit 1
(
  set -e
  $f eval $here/control.yaml --rows flow-trained --no-progress
  $f report $here/control.yaml --out $here/control-report
) >> runs/logs/control-chain.log 2>&1 &
control=$!
(
  set -e
  $f eval $here/run.yaml --no-progress
  $f report $here/run.yaml --out $here/main-report
) >> runs/logs/main-chain.log 2>&1 &
main=$!
wait $control; rc_control=$?
wait $main; rc_main=$?
echo "control chain rc=$rc_control, main chain rc=$rc_main; wall $(( $(date +%s) - start )) s (logs: runs/logs/)"
[ "$rc_control" = 0 ] && [ "$rc_main" = 0 ] || exit 1
.venv/bin/python $here/analyze.py --main runs/learn-main --control runs/learn-control

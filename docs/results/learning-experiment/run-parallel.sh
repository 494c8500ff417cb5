#!/usr/bin/env bash
# The steps of run.sh after the two training runs, spread over both cores:
#   control run (returns at once when finished)
#   control run's eval (trained-flow row) + report
#   main run's flow rows (trained, untrained: they need the training run, not the compile)
#   main run's compile (its SFT takes up to 10 GB), then its one-pass rows: the sampled 0-shot row first (the
#   longest: 1,600 answers; a row a session's end interrupts starts again, so it goes first), then 0-shot, SFT
#   when all have finished: the main run's whole table (every row from storage, Stop AUC), its report,
#   analyze.py.
# The same commands with the same files and settings as run.sh; only the order across the two runs and the
# split of the main run's rows across processes differ. That changes no answer: every row seeds its own random
# streams at its start (compile/eval.py), nothing of one run is read by the other's steps before analyze.py,
# and the last `flowdpo eval` of the main run reuses every stored row. Every step resumes from storage (a flow
# row block by block; a finished row or SFT is never redone), so rerun this after an interruption.
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
(
  set -e
  $f eval $here/control.yaml --rows flow-trained --no-progress
  $f report $here/control.yaml --out $here/control-report
) >> runs/logs/control-chain.log 2>&1 &
control=$!
$f eval $here/run.yaml --rows flow-untrained,flow-trained --no-progress >> runs/logs/main-eval-flows.log 2>&1 &
flows=$!
(
  set -e
  # A compile started earlier may still be running: let it finish (a second one would train the same SFT beside
  # it). Rerunning compile afterwards is a no-op once every source is trained.
  while pgrep -f "flowdpo compile $here/run.yaml" > /dev/null; do sleep 60; done
  $f compile $here/run.yaml --no-progress
  $f eval $here/run.yaml --no-progress --rows zero-shot-sampled
  $f eval $here/run.yaml --no-progress --rows zero-shot,sft-ground-truth,sft-self-generated,sft-flow-generated
) >> runs/logs/main-chain.log 2>&1 &
onepass=$!
wait $control; rc_control=$?
wait $flows; rc_flows=$?
wait $onepass; rc_onepass=$?
echo "control rc=$rc_control, main flow rows rc=$rc_flows, main compile + one-pass rows rc=$rc_onepass;" \
  "wall $(( $(date +%s) - start )) s (logs: runs/logs/)"
[ "$rc_control" = 0 ] && [ "$rc_flows" = 0 ] && [ "$rc_onepass" = 0 ] || exit 1
(
  set -e
  $f eval $here/run.yaml --no-progress # the whole table from the stored rows
  $f report $here/run.yaml --out $here/main-report
) >> runs/logs/main-chain.log 2>&1 || exit 1
# --archive-to: every row the analysis reads, in one file to commit (runs/ is not in git and dies with the machine)
.venv/bin/python $here/analyze.py --main runs/learn-main --control runs/learn-control --archive-to $here/rows.json.gz
